//! The `rudder` binary: wires the components into one program.

mod client;
mod ctr;
mod kubeconfig;
mod server;

use clap::{Parser, Subcommand};

/// The API server and the scheduler allocate and free many small JSON
/// values; mimalloc does that far faster than glibc's allocator and
/// returns memory to the system more readily.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rudder",
    version,
    about = "A Kubernetes-compatible container orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the control plane (API server on the embedded store or etcd).
    Server(server::ServerArgs),
    /// Runs the scheduler on its own against an API server.
    Scheduler(client::SchedulerArgs),
    /// Runs the controller manager on its own against an API server.
    ControllerManager(client::ControllerManagerArgs),
    /// Registers simulated nodes and acts as their kubelet (like kwok).
    Simulate(client::SimulateArgs),
    /// Operates the node's container runtime: images (like ctr/crictl).
    Ctr(ctr::CtrArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUDDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(args) => runtime.block_on(server::run(args)),
        Command::Scheduler(args) => runtime.block_on(client::run_scheduler(args)),
        Command::ControllerManager(args) => runtime.block_on(client::run_controller_manager(args)),
        Command::Simulate(args) => runtime.block_on(client::run_simulate(args)),
        Command::Ctr(args) => runtime.block_on(ctr::run(args)),
    }
}
