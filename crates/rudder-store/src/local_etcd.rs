//! A single-member etcd (Debian's `etcd-server`) started on free loopback
//! ports, for the etcd backend's tests and benchmarks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EtcdConfig, EtcdStore, Result, StoreError};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The etcd binary, or an error telling how to install it.
pub fn etcd_binary() -> Result<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| StoreError::Open {
            location: "/usr/bin/etcd".into(),
            reason: "etcd is not installed (apt-get install etcd-server)".into(),
        })
}

/// One etcd member, killed when dropped.
pub struct LocalEtcd {
    child: Option<Child>,
    data_dir: PathBuf,
    pub client_port: u16,
    peer_port: u16,
}

impl LocalEtcd {
    /// Starts a member keeping its data in `dir/etcd`.
    pub fn start(dir: &Path) -> Result<LocalEtcd> {
        let mut etcd = LocalEtcd {
            child: None,
            data_dir: dir.join("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// (Re)starts the member on the same ports and data.
    pub fn spawn(&mut self) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let open_error = |reason: String| StoreError::Open {
            location: client.clone(),
            reason,
        };
        let log = std::fs::File::create(self.data_dir.with_extension("log"))
            .map_err(|e| open_error(format!("cannot create the etcd log: {e}")))?;
        let child = Command::new(etcd_binary()?)
            .arg("--name=local")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=local={peer}"))
            // Room for a value at the store's limit plus the request's
            // envelope, as production etcds for Kubernetes are configured.
            .arg("--max-request-bytes=2097152")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| open_error(format!("cannot start etcd: {e}")))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn config(&self) -> EtcdConfig {
        EtcdConfig::from_endpoints(&self.endpoint())
    }

    /// Connects with `config`, waiting up to 30 s for the member to come up.
    pub async fn connect_with(&self, config: EtcdConfig) -> Result<EtcdStore> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match EtcdStore::connect(config.clone()).await {
                Ok(store) => return Ok(store),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}
