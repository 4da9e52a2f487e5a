//! `rudder ctr run|ps|exec|logs|stop|rm`: containers on the node's runtime,
//! the same state the agent uses.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rudder_container::logs::{read_logs, ReadOptions, Stream};
use rudder_container::spec::Limits;
use rudder_container::Status;
use rudder_cri::node::{RunOptions, LABEL_COMMAND, LABEL_IMAGE};
use rudder_cri::{BundleRequest, NodeRuntime};

#[derive(Args)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// The container's id (default: a random one).
    #[arg(long)]
    name: Option<String>,
    /// Run in the background: print the id and return.
    #[arg(short, long)]
    detach: bool,
    /// Memory limit in bytes (suffixes k, m, g: powers of 1024).
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit in cores (CFS quota over a 100 ms period), e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Environment variables NAME=VALUE.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Bind mounts SRC:DST[:ro].
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// Share the host's network namespace.
    #[arg(long)]
    net_host: bool,
    /// Run with every capability and no confinement.
    #[arg(long)]
    privileged: bool,
    /// Run as UID[:GID] (numeric; default: the image's USER).
    #[arg(short, long)]
    user: Option<String>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Capabilities to add to the default set (NET_ADMIN, ALL, ...).
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Capabilities to drop from the default set.
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// Replaces the image's Entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    image: String,
    /// Replaces the image's Cmd.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    id: String,
    /// Environment variables NAME=VALUE added to the container's.
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    id: String,
    #[arg(short, long)]
    follow: bool,
    #[arg(long)]
    tail: Option<usize>,
    #[arg(short, long)]
    timestamps: bool,
}

#[derive(Args)]
pub struct StopArgs {
    #[arg(required = true)]
    ids: Vec<String>,
    /// Seconds to wait after the stop signal before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    time: u64,
}

#[derive(Args)]
pub struct RmArgs {
    #[arg(required = true)]
    ids: Vec<String>,
    /// Kill a running container first.
    #[arg(short, long)]
    force: bool,
}

fn node(data_dir: &std::path::Path) -> anyhow::Result<NodeRuntime> {
    let binary = crate::self_exe();
    NodeRuntime::open(data_dir, binary)
        .with_context(|| format!("opening the runtime in {}", data_dir.display()))
}

/// Bytes with an optional binary suffix.
fn parse_bytes(text: &str) -> anyhow::Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches('b').trim_end_matches('i');
    let (digits, factor) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let value: i64 = digits
        .parse()
        .with_context(|| format!("invalid byte count {text:?}"))?;
    Ok(value * factor)
}

pub fn run(data_dir: &std::path::Path, args: RunArgs) -> anyhow::Result<i32> {
    let node = node(data_dir)?;
    let image = node.images().image(&args.image).with_context(|| {
        format!(
            "image {:?} is not in the store; pull it with `rudder ctr images pull {}`",
            args.image, args.image
        )
    })?;
    let id = match args.name.clone() {
        Some(name) => name,
        None => rudder_cri::sandbox::random_id()?,
    };
    let mut request = BundleRequest::new(&id, image);
    request.args = args.command.clone();
    if let Some(entrypoint) = &args.entrypoint {
        request.command = vec![entrypoint.clone()];
        request.args = args.command.clone();
    }
    for kv in &args.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        request.env.push((k.to_string(), v.to_string()));
    }
    for m in &args.mounts {
        let parts: Vec<&str> = m.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            _ => bail!("invalid --mount {m:?}: use SRC:DST or SRC:DST:ro"),
        };
        let src = std::fs::canonicalize(src).with_context(|| format!("mount source {src}"))?;
        request
            .mounts
            .push(rudder_container::spec::bind_mount(src, dst, ro));
    }
    request.limits = Limits {
        memory_limit: args.memory.as_deref().map(parse_bytes).transpose()?,
        cpu_quota: args.cpus.map(|c| (c * 100_000.0).round() as i64),
        cpu_period: args.cpus.map(|_| 100_000),
        ..Limits::default()
    };
    request.privileged = args.privileged;
    request.readonly_rootfs = args.read_only;
    request.cap_add = args.cap_add.clone();
    request.cap_drop = args.cap_drop.clone();
    if let Some(user) = &args.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        request.run_as_user = Some(uid.parse().with_context(|| {
            format!("--user {user:?}: give a numeric UID[:GID] (names come from the image's USER)")
        })?);
        request.run_as_group = gid
            .map(|g| {
                g.parse()
                    .with_context(|| format!("--user {user:?}: invalid GID"))
            })
            .transpose()?;
    }
    request.cgroups_path = Some(PathBuf::from(format!("rudder/ctr/{id}")));
    if args.net_host {
        let mut config = rudder_container::spec::ContainerConfig::new(Vec::new());
        config
            .namespaces
            .retain(|ns| ns.typ() != oci_spec_network());
        request.namespaces = Some(config.namespaces);
    }
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(LABEL_COMMAND.to_string(), args.command.join(" "));
    let attach = !args.detach;
    node.create_container(
        &request,
        RunOptions {
            log_path: None,
            stdin: attach,
            // `ctr run` ends the container's input when its own ends.
            stdin_keep_open: false,
            labels,
        },
    )?;
    let runtime = node.containers();

    let stdin = if attach {
        Some(runtime.open_stdin(&id)?)
    } else {
        None
    };
    let started = runtime.start(&id);
    if let Err(e) = started {
        let code = match &e {
            rudder_container::ContainerError::StartFailed { exit_code, .. } => *exit_code,
            _ => 128,
        };
        eprintln!("rudder ctr run: {e}");
        if args.rm {
            let _ = node.remove_container(&id, true);
        }
        return Ok(code);
    }
    if args.detach {
        println!("{id}");
        return Ok(0);
    }

    // Foreground: our stdin to the container, its log to our stdout/stderr,
    // signals passed on, its exit code ours.
    if let Some(mut fifo) = stdin {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut fifo);
            // Dropping the FIFO's last writer gives the container EOF.
        });
    }
    let log_path = runtime.state(&id)?.log_path.context("no log path")?;
    let stopped = Arc::new(AtomicBool::new(false));
    let followers: Vec<_> = [Stream::Stdout, Stream::Stderr]
        .into_iter()
        .map(|stream| {
            let path = log_path.clone();
            let stopped = stopped.clone();
            std::thread::spawn(move || {
                let options = ReadOptions {
                    follow: true,
                    tail: None,
                    timestamps: false,
                    since_rfc3339: None,
                    limit_bytes: None,
                    streams: Some(stream),
                };
                let stop = || stopped.load(Ordering::SeqCst);
                let _ = match stream {
                    Stream::Stdout => read_logs(&path, &options, &mut std::io::stdout(), &stop),
                    Stream::Stderr => read_logs(&path, &options, &mut std::io::stderr(), &stop),
                };
            })
        })
        .collect();
    forward_signals(runtime.clone(), id.clone());
    let state = runtime.wait(&id)?;
    stopped.store(true, Ordering::SeqCst);
    for follower in followers {
        let _ = follower.join();
    }
    let _ = std::io::stdout().flush();
    let code = state.exit.as_ref().map(|e| e.exit_code).unwrap_or(255);
    if args.rm {
        node.remove_container(&id, true)?;
    }
    Ok(code)
}

fn oci_spec_network() -> oci_spec::runtime::LinuxNamespaceType {
    oci_spec::runtime::LinuxNamespaceType::Network
}

/// SIGINT and SIGTERM to `rudder ctr run` go to the container (as
/// `docker run`'s signal proxy does).
fn forward_signals(runtime: rudder_container::Runtime, id: String) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => nix::sys::signal::Signal::SIGINT,
                    _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
                };
                let _ = runtime.kill(&id, sig);
            }
        });
    });
}

pub fn ps(data_dir: &std::path::Path, all: bool, quiet: bool) -> anyhow::Result<()> {
    let node = node(data_dir)?;
    let states = node.containers().list()?;
    if quiet {
        for s in states.iter().filter(|s| all || s.status == Status::Running) {
            println!("{}", s.id);
        }
        return Ok(());
    }
    println!(
        "{:<32}  {:<40}  {:<16}  {:>7}  COMMAND",
        "CONTAINER", "IMAGE", "STATUS", "PID"
    );
    for s in states {
        if !all && s.status != Status::Running {
            continue;
        }
        let status = match (&s.status, &s.exit) {
            (Status::Stopped, Some(exit))
                if exit.reason == "Completed" || exit.reason == "Error" =>
            {
                format!("exited ({})", exit.exit_code)
            }
            (Status::Stopped, Some(exit)) => {
                format!("exited ({}, {})", exit.exit_code, exit.reason)
            }
            (status, _) => status.to_string(),
        };
        let pid = s
            .init
            .filter(|p| s.status == Status::Running && p.is_alive())
            .map(|p| p.pid.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32}  {:<40}  {:<16}  {:>7}  {}",
            s.id,
            s.labels.get(LABEL_IMAGE).map(String::as_str).unwrap_or("-"),
            status,
            pid,
            s.labels
                .get(LABEL_COMMAND)
                .map(String::as_str)
                .unwrap_or("")
        );
    }
    Ok(())
}

pub fn exec(data_dir: &std::path::Path, args: ExecArgs) -> anyhow::Result<i32> {
    let node = node(data_dir)?;
    let runtime = node.containers();
    let mut process = runtime.process(&args.id)?;
    process.set_args(Some(args.command.clone()));
    if !args.env.is_empty() {
        let extra: Vec<(String, String)> = args
            .env
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let env =
            rudder_container::spec::merge_env(&process.env().clone().unwrap_or_default(), &extra);
        process.set_env(Some(env));
    }
    let status = runtime
        .exec(&args.id, &process)?
        .status()
        .context("running the exec helper")?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

pub fn logs(data_dir: &std::path::Path, args: LogsArgs) -> anyhow::Result<()> {
    let node = node(data_dir)?;
    let runtime = node.containers().clone();
    let state = runtime.state(&args.id)?;
    let path = state.log_path.context("the container keeps no log")?;
    let options = ReadOptions {
        follow: args.follow,
        tail: args.tail,
        timestamps: args.timestamps,
        since_rfc3339: None,
        limit_bytes: None,
        streams: None,
    };
    let id = args.id.clone();
    let stop = move || {
        runtime
            .state(&id)
            .map(|s| s.status != Status::Running)
            .unwrap_or(true)
    };
    read_logs(&path, &options, &mut std::io::stdout().lock(), &stop)?;
    Ok(())
}

pub fn stop(data_dir: &std::path::Path, args: StopArgs) -> anyhow::Result<()> {
    let node = node(data_dir)?;
    for id in args.ids {
        let state = node.stop_container(&id, Duration::from_secs(args.time))?;
        let code = state.exit.map(|e| e.exit_code).unwrap_or(255);
        println!("{id} exited ({code})");
    }
    Ok(())
}

pub fn rm(data_dir: &std::path::Path, args: RmArgs) -> anyhow::Result<()> {
    let node = node(data_dir)?;
    for id in args.ids {
        node.remove_container(&id, args.force)?;
        println!("{id}");
    }
    Ok(())
}

/// `rudder reset`: everything the node's agent and runtime made, gone:
/// containers and pod sandboxes, their mounts and cgroups, the pod network
/// (veths, bridge, rules), the routes to other nodes, the NetworkPolicy and
/// Service proxy tables and the agent's data. `data_dir` is an agent's
/// data dir, or a server's (whose agent lives in `agent/`); a server's own
/// store is kept.
pub fn reset(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let agent_dir = if data_dir.join("agent").is_dir() {
        data_dir.join("agent")
    } else {
        data_dir.to_path_buf()
    };
    if !agent_dir.exists() {
        println!("nothing to reset at {}", agent_dir.display());
        return Ok(());
    }
    // Under `ip netns exec` the cgroup filesystems are hidden, as for the agent.
    rudder_agent::restore_cgroup_mounts()?;
    // The network's record, read before the data dir goes.
    let network = std::fs::read_to_string(agent_dir.join("network/config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    let node = node(&agent_dir)?;
    let report = node.reset()?;
    for error in &report.errors {
        eprintln!("rudder reset: {error}");
    }
    let mut network_removed = false;
    if let Some(record) = &network {
        let bridge = record["bridge"].as_str().unwrap_or("rudder0").to_string();
        let cidr: Option<rudder_network::Ipv4Cidr> =
            record["podCIDR"].as_str().and_then(|c| c.parse().ok());
        if let Some(cidr) = cidr {
            let mut config = rudder_network::NetworkConfig::new(cidr, agent_dir.join("network"));
            config.bridge = bridge;
            match rudder_network::PodNetwork::new(config).and_then(|n| n.reset()) {
                Ok(()) => network_removed = true,
                Err(e) => eprintln!("rudder reset: pod network: {e}"),
            }
            // Routes to other nodes' pods and the VXLAN device.
            if let Err(e) = rudder_network::routes::remove_all() {
                eprintln!("rudder reset: routes to other nodes: {e}");
            }
        }
    }
    // The NetworkPolicy table outlives the agent on purpose (rules stay in
    // force across restarts); reset is what removes it.
    let bridge = network
        .as_ref()
        .and_then(|record| record["bridge"].as_str())
        .unwrap_or(rudder_network::DEFAULT_BRIDGE)
        .to_string();
    let policy_table = rudder_agent::node_table(rudder_network::policy::DEFAULT_TABLE, &bridge);
    if let Err(e) = rudder_network::policy::remove(&policy_table) {
        eprintln!("rudder reset: NetworkPolicy rules: {e}");
    }
    // The Service proxy's table (it holds no state of its own on disk).
    let mut proxy_removed = false;
    let proxy_table = rudder_agent::node_table(rudder_network::proxy::DEFAULT_TABLE, &bridge);
    match rudder_network::proxy::remove(&proxy_table) {
        Ok(removed) => proxy_removed = removed,
        Err(e) => eprintln!("rudder reset: service proxy rules: {e}"),
    }
    if !report.errors.is_empty() {
        bail!("reset incomplete; {} kept", agent_dir.display());
    }
    // The cgroup parents the runtime made (empty once its containers went).
    if let Ok(layout) = rudder_cgroups::Layout::detect() {
        for parent in [
            "rudder/ctr",
            "rudder/kubepods/burstable",
            "rudder/kubepods/besteffort",
            "rudder/kubepods/guaranteed",
            "rudder/kubepods",
            "rudder",
        ] {
            let _ = rudder_cgroups::Cgroup::new(layout.clone(), parent).delete();
        }
    }
    println!(
        "removed {} container(s), unmounted {} leftover mount(s){}{}, deleted {}",
        report.containers_removed,
        report.unmounted,
        if network_removed {
            ", removed the pod network"
        } else {
            ""
        },
        if proxy_removed {
            ", removed the service proxy rules"
        } else {
            ""
        },
        agent_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert!(parse_bytes("lots").is_err());
    }
}
