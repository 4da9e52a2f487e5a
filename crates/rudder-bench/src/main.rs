//! `rudder-bench`: measures Rudder's components and prints one closing line
//! of figures per run. Benchmarks print; they never pass or fail on speed.

mod api;
mod controllers;
mod pods;
mod proxy;
mod rbac;
mod runtime;
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
    /// The controller manager: Deployments created to Running, then a
    /// rolling update of them all, on simulated nodes.
    Controllers(controllers::ControllersArgs),
    /// Pod startup on one real node (server + agent): time to Ready and the
    /// agent's memory, then density.
    Pods(pods::PodsArgs),
    /// The Service proxy: nftables programming of `--services` Services
    /// with `--endpoints` endpoints, one endpoint change at that size, and
    /// HTTP requests per second through a cluster IP against the pod IP.
    Proxy(proxy::ProxyArgs),
    /// The container runtime: create, start, wait, delete of /bin/true,
    /// against crun and runc on the same bundle.
    Runtime(runtime::RuntimeArgs),
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // The runtime benchmark changes its mount namespace: no thread may exist yet.
    if let Command::Runtime(args) = command {
        return runtime::run(args);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Runtime(_) => unreachable!("handled before the async runtime starts"),
        Command::Store(args) => store::run(args).await,
        Command::Pods(args) => pods::run(args).await,
        Command::Api(args) => api::run(args).await,
        Command::Scheduler(args) => scheduler::run(args).await,
        Command::Controllers(args) => controllers::run(args).await,
        Command::Proxy(args) => proxy::run(args).await,
    }
}

/// Resident set size of a process, in MiB, from /proc.
pub fn rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

/// The largest resident set size a process has had, in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user and system, all threads) a process has used, in seconds.
pub fn cpu_s(pid: u32) -> Option<f64> {
    cpu_s_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second of /proc/PID/stat: USER_HZ, which Linux fixes at
/// 100 for user space on every architecture.
const USER_HZ: f64 = 100.0;

/// `utime + stime` of a /proc/PID/stat line, in seconds.
fn cpu_s_of_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces;
    // field 3 (state) follows the last `)`, so utime and stime (fields 14
    // and 15) are the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The `p`th percentile (0–100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "4242 (rudder (cm) x) S 1 4242 4242 0 -1 4194560 3711 0 0 0 1234 56 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_s_of_stat(stat), Some(12.9));
        assert_eq!(cpu_s_of_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_and_a_peak_rss() {
        let pid = std::process::id();
        assert!(cpu_s(pid).is_some());
        assert!(rss_mb(pid).unwrap() > 0.0);
        assert!(peak_rss_mb(pid).unwrap() > 0.0);
    }

    #[test]
    fn the_controllers_benchmark_takes_the_issue_s_sizes() {
        let cli = Cli::try_parse_from([
            "rudder-bench",
            "controllers",
            "--nodes",
            "500",
            "--deployments",
            "100",
            "--replicas",
            "50",
        ]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Controllers(_))
        ));
        assert!(Cli::try_parse_from(["rudder-bench", "controllers", "--replicas", "x"]).is_err());
    }
}
