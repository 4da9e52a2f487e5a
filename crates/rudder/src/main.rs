//! The `rudder` binary: wires the components into one program.

mod agent;
mod client;
mod ctr;
mod ctr_containers;
mod kubeconfig;
mod secrets_encrypt;
mod security;
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
    /// Runs a node agent (kubelet) against an API server.
    Agent(agent::AgentArgs),
    /// Runs the scheduler on its own against an API server.
    Scheduler(client::SchedulerArgs),
    /// Runs the controller manager on its own against an API server.
    ControllerManager(client::ControllerManagerArgs),
    /// Registers simulated nodes and acts as their kubelet (like kwok).
    Simulate(client::SimulateArgs),
    /// Operates the node's container runtime: images and containers (like ctr/crictl).
    Ctr(ctr::CtrArgs),
    /// The server's certificates: `rotate` re-issues every leaf certificate
    /// (serving, clients) under the same CAs; restart the server after.
    Certificate {
        #[command(subcommand)]
        action: CertificateAction,
        /// The server's data directory.
        #[arg(
            long,
            global = true,
            env = "RUDDER_DATA_DIR",
            default_value = "/var/lib/rudder/server"
        )]
        data_dir: std::path::PathBuf,
    },
    /// The join token: `rotate` replaces its secret (agents that already
    /// joined keep their certificates); restart the server after.
    Token {
        #[command(subcommand)]
        action: TokenAction,
        /// The server's data directory.
        #[arg(
            long,
            global = true,
            env = "RUDDER_DATA_DIR",
            default_value = "/var/lib/rudder/server"
        )]
        data_dir: std::path::PathBuf,
    },
    /// Manages the encryption of Secrets at rest (offline: stop the server first).
    SecretsEncrypt(secrets_encrypt::SecretsEncryptArgs),
    /// Stops every container of the node and removes all its data: containers, mounts, cgroups, images.
    Reset {
        /// The node agent's data directory.
        #[arg(long, env = "RUDDER_DATA_DIR", default_value = "/var/lib/rudder/agent")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum CertificateAction {
    /// Re-issues the serving and client certificates (new keys, a new
    /// year); the CAs, and so every kubeconfig's trust, stay.
    Rotate,
}

#[derive(Subcommand)]
enum TokenAction {
    /// A new join token secret, written to DATA_DIR/node-token.
    Rotate,
}

/// The running `rudder` executable, as the runtime's shims are started:
/// `/proc/self/exe` names this very binary even after an upgrade replaced
/// the file on disk (a path would then name the new one, or nothing).
pub fn self_exe() -> std::path::PathBuf {
    std::path::PathBuf::from("/proc/self/exe")
}

fn main() -> anyhow::Result<()> {
    // The container runtime's hidden stages (shim, init, exec) run before
    // anything else: they change namespaces and credentials, which needs a
    // single-threaded process, and init's stderr belongs to the container.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if rudder_container::entry::is_container_process(&args) {
        if let Some(code) = rudder_container::entry::dispatch(&args) {
            std::process::exit(code);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUDDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(code) = rudder_container::entry::dispatch(&args) {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(args) => runtime.block_on(server::run(args)),
        Command::Agent(args) => runtime.block_on(agent::run(args)),
        Command::Scheduler(args) => runtime.block_on(client::run_scheduler(args)),
        Command::ControllerManager(args) => runtime.block_on(client::run_controller_manager(args)),
        Command::Simulate(args) => runtime.block_on(client::run_simulate(args)),
        Command::Ctr(args) => {
            let code = runtime.block_on(ctr::run(args))?;
            drop(runtime);
            std::process::exit(code);
        }
        Command::Certificate {
            action: CertificateAction::Rotate,
            data_dir,
        } => security::rotate_certificates(&data_dir),
        Command::Token {
            action: TokenAction::Rotate,
            data_dir,
        } => security::rotate_token(&data_dir),
        Command::SecretsEncrypt(args) => runtime.block_on(secrets_encrypt::run(args)),
        Command::Reset { data_dir } => ctr_containers::reset(&data_dir),
    }
}
