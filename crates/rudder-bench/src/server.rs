//! Starting the processes under test: `rudder server` (or a running
//! server's URL) and, for the scheduler benchmark, `rudder scheduler`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A process that is killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Server {
    pub process: Option<Process>,
    pub url: String,
    /// The data directory of a started server (its kubeconfig is there).
    pub dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }

    pub fn kubeconfig(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("kubeconfig.yaml"))
    }

    /// A client as the admin: from a started server's kubeconfig (HTTPS,
    /// client certificate), else for the URL given.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = match self.kubeconfig() {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
            }
            None => kube::Config::new(self.url.parse()?),
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// The `rudder` binary: the given one, or the one beside `rudder-bench`.
pub fn rudder_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(bin) => Ok(bin.to_owned()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("no directory for rudder-bench")?
            .join("rudder")),
    }
}

/// Uses `url` when given; otherwise starts `rudder server --disable-agent`
/// on a free port with `extra` and the user's `flags`.
pub fn start(
    url: Option<&str>,
    bin: Option<&Path>,
    flags: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<Server> {
    start_logged(url, bin, flags, extra, None)
}

/// Where a started process's output goes: appended to `name` in `dir`, or
/// nowhere.
pub fn log_output(dir: Option<&Path>, name: &str) -> anyhow::Result<Stdio> {
    match dir {
        Some(dir) => {
            let path = dir.join(name);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Ok(file.into())
        }
        None => Ok(Stdio::null()),
    }
}

/// As [`start`], with the server's output appended to `log` if given.
pub fn start_logged(
    url: Option<&str>,
    bin: Option<&Path>,
    flags: Option<&str>,
    extra: &[&str],
    log: Option<&Path>,
) -> anyhow::Result<Server> {
    if let Some(url) = url {
        return Ok(Server {
            process: None,
            url: url.to_owned(),
            dir: None,
        });
    }
    let bin = rudder_bin(bin)?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut command = Command::new(&bin);
    command
        .args([
            "server",
            "--disable-agent",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .args(extra);
    match log.and_then(|l| Some((l.parent()?, l.file_name()?.to_str()?))) {
        Some((dir, name)) => command
            .stdout(log_output(Some(dir), name)?)
            .stderr(log_output(Some(dir), name)?),
        None => command.stdout(Stdio::null()).stderr(Stdio::null()),
    };
    if let Some(flags) = flags {
        command.args(flags.split_whitespace());
    }
    let child = command.spawn().with_context(|| {
        format!(
            "starting {} (build it with cargo build --release)",
            bin.display()
        )
    })?;
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("kubeconfig.yaml").exists() {
        if Instant::now() > deadline {
            bail!("the server did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server {
        process: Some(process),
        url: format!("https://127.0.0.1:{port}"),
        dir: Some(dir),
    })
}
