//! `rudder-bench`: measures Rudder's components and prints one closing line
//! of figures per run. Benchmarks print; they never pass or fail on speed.

mod api;
mod scheduler;
mod server;
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rudder-bench", about = "Benchmarks for Rudder")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes, reads and watches against a store backend.
    Store(store::StoreArgs),
    /// Creates, GETs, LISTs and watch fan-out against the API server.
    Api(api::ApiArgs),
    /// Scheduling throughput (upstream scheduler_perf cases).
    Scheduler(scheduler::SchedulerArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Store(args) => store::run(args).await,
        Command::Api(args) => api::run(args).await,
        Command::Scheduler(args) => scheduler::run(args).await,
    }
}

/// Resident set size of a process, in MiB, from /proc.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The `p`th percentile (0–100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
