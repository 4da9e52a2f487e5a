//! Pod networking on a node (see ARCHITECTURE.md).
//!
//! What k3s gets from flannel's CNI `bridge` + `host-local` plugins: every
//! pod sandbox gets an address from the node's pod CIDR and a veth pair to a
//! bridge that holds the gateway address; traffic leaving the cluster network
//! is masqueraded. The kernel is driven through `ip` (iproute2), `nsenter`
//! (util-linux) and `nft` or `iptables`.
//!
//! One module per concern, so that Services, DNS and routes to other nodes'
//! pod CIDRs can be added beside them: [`cidr`] (the address type), [`ipam`]
//! (host-local allocation), `bridge` (the node side), `veth` (a pod's link),
//! [`masquerade`] (NAT and forwarding rules), [`routes`] (other nodes' pod
//! CIDRs over host-gw or VXLAN), [`policy`] (NetworkPolicy), [`proxy`]
//! (Services: the nftables rules of the node's Service proxy).

mod bridge;
pub mod cidr;
mod cmd;
pub mod ipam;
pub mod masquerade;
pub mod policy;
pub mod proxy;
pub mod routes;
mod veth;

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use bridge::{ensure_bridge_netfilter, BridgeNetfilter};
pub use cidr::Ipv4Cidr;
pub use ipam::Ipam;
pub use masquerade::Backend;
pub use routes::{NodeRoutes, PeerNode, PodNetworkBackend};
pub use veth::{host_name as host_veth_name, pod_mac, POD_IFNAME};

/// The bridge's name unless configured (flannel's is `cni0`).
pub const DEFAULT_BRIDGE: &str = "rudder0";
/// The links' MTU unless configured.
pub const DEFAULT_MTU: u32 = 1500;

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid CIDR {0}")]
    InvalidCidr(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid pod sandbox id {0:?}")]
    InvalidSandboxId(String),
    #[error("`{tool}` is not installed (looked in $PATH, /usr/sbin and /sbin)")]
    ToolMissing { tool: &'static str },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended (`exit status: 2`).
        status: String,
        /// What it wrote on stderr (or stdout when stderr was empty).
        stderr: String,
        /// What it was given on stdin (`nft -f -`, `ip -batch -`).
        input: Option<String>,
    },
    #[error("network namespace {}: {reason}", path.display())]
    Netns { path: PathBuf, reason: String },
    #[error("no free address left in pod CIDR {cidr}")]
    Exhausted { cidr: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the node's pod network looks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkConfig {
    /// The bridge's name (at most 15 characters).
    pub bridge: String,
    /// The node's pod CIDR (`Node.spec.podCIDR`); its first host is the
    /// gateway, held by the bridge.
    pub pod_cidr: Ipv4Cidr,
    /// Where the address allocations are kept (`<data-dir>/network`).
    pub state_dir: PathBuf,
    /// The whole cluster's pod network (`--cluster-cidr`): traffic to it is
    /// not masqueraded. `None` means the pod CIDR alone.
    pub cluster_cidr: Option<Ipv4Cidr>,
    /// The MTU of the bridge and the veth pairs.
    pub mtu: u32,
}

impl NetworkConfig {
    /// The defaults (bridge `rudder0`, MTU 1500, no wider cluster CIDR) for a
    /// pod CIDR and a state directory.
    pub fn new(pod_cidr: Ipv4Cidr, state_dir: impl Into<PathBuf>) -> NetworkConfig {
        NetworkConfig {
            bridge: DEFAULT_BRIDGE.to_string(),
            pod_cidr,
            state_dir: state_dir.into(),
            cluster_cidr: None,
            mtu: DEFAULT_MTU,
        }
    }
}

/// A pod's address on the pod network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodIp {
    pub ip: Ipv4Addr,
    /// The pod CIDR's prefix length.
    pub prefix: u8,
    /// The bridge's address: the pod's default route.
    pub gateway: Ipv4Addr,
}

/// The node's pod network.
#[derive(Debug)]
pub struct PodNetwork {
    config: NetworkConfig,
    cluster_cidr: Ipv4Cidr,
    ipam: Ipam,
    backend: OnceLock<Backend>,
}

impl PodNetwork {
    /// Checks the configuration; touches nothing on the host.
    pub fn new(config: NetworkConfig) -> Result<PodNetwork, NetworkError> {
        validate_ifname(&config.bridge)?;
        if !(68..=65535).contains(&config.mtu) {
            return Err(NetworkError::InvalidConfig(format!(
                "MTU {} is outside 68..=65535",
                config.mtu
            )));
        }
        let cluster_cidr = config.cluster_cidr.unwrap_or(config.pod_cidr);
        if !cluster_cidr.contains_cidr(&config.pod_cidr) {
            return Err(NetworkError::InvalidConfig(format!(
                "the cluster CIDR {cluster_cidr} does not contain the pod CIDR {}",
                config.pod_cidr
            )));
        }
        let ipam = Ipam::new(config.state_dir.join("ipam"), config.pod_cidr)?;
        Ok(PodNetwork {
            config,
            cluster_cidr,
            ipam,
            backend: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The bridge's address, the pods' default route.
    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }

    /// The rules' backend: nftables if `nft` works, else iptables.
    pub fn backend(&self) -> Result<Backend, NetworkError> {
        if let Some(b) = self.backend.get() {
            return Ok(*b);
        }
        let detected = Backend::detect()?;
        Ok(*self.backend.get_or_init(|| detected))
    }

    fn rules(&self) -> masquerade::Rules<'_> {
        masquerade::Rules {
            bridge: &self.config.bridge,
            pod_cidr: self.config.pod_cidr,
            cluster_cidr: self.cluster_cidr,
        }
    }

    /// The node side: the bridge with the gateway address, up; IPv4
    /// forwarding on; forwarding to and from the bridge accepted; pods'
    /// traffic to outside the cluster CIDR masqueraded. Re-running changes
    /// nothing.
    pub fn ensure_node(&self) -> Result<(), NetworkError> {
        bridge::ensure(
            &self.config.bridge,
            self.gateway(),
            self.config.pod_cidr.prefix(),
            self.config.mtu,
        )?;
        bridge::enable_ip_forward()?;
        self.rules().ensure(self.backend()?)?;
        tracing::info!(
            bridge = %self.config.bridge,
            pod_cidr = %self.config.pod_cidr,
            cluster_cidr = %self.cluster_cidr,
            "pod network ready"
        );
        Ok(())
    }

    /// Gives a pod sandbox its network: its address (the one it already has,
    /// or a new one), a veth pair from the bridge to `eth0` in the network
    /// namespace at `netns_path` (`/proc/PID/ns/net` or a bind mount of it),
    /// the address on `eth0`, `eth0` and `lo` up, a default route via the
    /// gateway. Calling it again rebuilds the pair with the same address.
    pub fn setup_pod(&self, sandbox_id: &str, netns_path: &Path) -> Result<PodIp, NetworkError> {
        if !netns_path.exists() {
            return Err(NetworkError::Netns {
                path: netns_path.to_path_buf(),
                reason: "it does not exist (has the sandbox's process exited?)".into(),
            });
        }
        let existing = self.ipam.lookup(sandbox_id)?;
        let ip = self.ipam.allocate(sandbox_id)?;
        let host = veth::host_name(sandbox_id);
        let link = veth::PodLink {
            host: &host,
            netns: netns_path,
            bridge: &self.config.bridge,
            mtu: self.config.mtu,
            ip,
            prefix: self.config.pod_cidr.prefix(),
            gateway: self.gateway(),
        };
        if let Err(e) = veth::create(&link) {
            if existing.is_none() {
                if let Err(release) = self.ipam.release(sandbox_id) {
                    tracing::warn!(sandbox_id, "releasing {ip} after a failed setup: {release}");
                }
            }
            return Err(e);
        }
        tracing::debug!(sandbox_id, %ip, veth = %host, "pod network set up");
        Ok(PodIp {
            ip,
            prefix: self.config.pod_cidr.prefix(),
            gateway: self.gateway(),
        })
    }

    /// Deletes the sandbox's veth pair and releases its address. Nothing to
    /// do is success: a second call, or a namespace already gone.
    pub fn teardown_pod(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        veth::delete(&veth::host_name(sandbox_id))?;
        let released = self.ipam.release(sandbox_id)?;
        tracing::debug!(sandbox_id, ?released, "pod network torn down");
        Ok(())
    }

    /// The address allocated to a sandbox, if any (to re-adopt a running pod
    /// after a restart of the agent).
    pub fn pod_ip(&self, sandbox_id: &str) -> Option<Ipv4Addr> {
        match self.ipam.lookup(sandbox_id) {
            Ok(ip) => ip,
            Err(e) => {
                tracing::warn!(sandbox_id, "reading the address allocations: {e}");
                None
            }
        }
    }

    /// Every sandbox holding an address, with it.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, NetworkError> {
        self.ipam.allocations()
    }

    /// `rudder reset`: deletes the veths of our pods (the bridge's `veth`
    /// ports and those named after allocated sandboxes), the bridge, the
    /// rules, and the state directory.
    pub fn reset(&self) -> Result<(), NetworkError> {
        let mut veths: Vec<String> = bridge::ports(&self.config.bridge)?
            .into_iter()
            .filter(|p| p.starts_with("veth"))
            .collect();
        for (_, owner) in self.ipam.allocations()? {
            veths.push(veth::host_name(&owner));
        }
        veths.sort();
        veths.dedup();
        for v in &veths {
            veth::delete(v)?;
        }
        bridge::delete(&self.config.bridge)?;
        self.rules().remove()?;
        match fs::remove_dir_all(&self.config.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetworkError::Io {
                    context: format!("removing {}", self.config.state_dir.display()),
                    source,
                })
            }
        }
        tracing::info!(bridge = %self.config.bridge, veths = veths.len(), "pod network reset");
        Ok(())
    }
}

/// A Linux interface name: 1 to 15 characters, no `/`, `:` or whitespace;
/// here also only ASCII letters, digits, `-`, `_` and `.` so that it is
/// safe in nft and iptables rules.
fn validate_ifname(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidConfig(format!(
            "bridge name {name:?}: expected 1 to 15 ASCII letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> NetworkConfig {
        NetworkConfig::new("10.42.1.0/24".parse().unwrap(), dir)
    }

    #[test]
    fn defaults() {
        let c = config(Path::new("/var/lib/rudder/network"));
        assert_eq!(c.bridge, "rudder0");
        assert_eq!(c.mtu, 1500);
        let n = PodNetwork::new(c).unwrap();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 42, 1, 1));
        assert_eq!(n.cluster_cidr.to_string(), "10.42.1.0/24");
    }

    #[test]
    fn config_is_checked() {
        let dir = Path::new("/nonexistent");
        let bad = |f: fn(&mut NetworkConfig)| {
            let mut c = config(dir);
            f(&mut c);
            PodNetwork::new(c).unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.bridge = "a-much-too-long-bridge".into()),
            NetworkError::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(|c| c.bridge = "br 0".into()),
            NetworkError::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(|c| c.bridge = String::new()),
            NetworkError::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(|c| c.mtu = 10),
            NetworkError::InvalidConfig(_)
        ));
        let e = bad(|c| c.cluster_cidr = Some("10.43.0.0/16".parse().unwrap()));
        assert!(
            e.to_string()
                .contains("does not contain the pod CIDR 10.42.1.0/24"),
            "{e}"
        );
        assert!(matches!(
            bad(|c| c.pod_cidr = "10.42.1.0/31".parse().unwrap()),
            NetworkError::InvalidConfig(_)
        ));
        let mut ok = config(dir);
        ok.cluster_cidr = Some("10.42.0.0/16".parse().unwrap());
        PodNetwork::new(ok).unwrap();
    }

    #[test]
    fn config_serializes_cidrs_as_strings() {
        let json = serde_json::to_value(config(Path::new("/d"))).unwrap();
        assert_eq!(json["pod_cidr"], "10.42.1.0/24");
        assert_eq!(json["cluster_cidr"], serde_json::Value::Null);
    }

    #[test]
    fn setup_needs_an_existing_namespace_and_allocates_nothing_then() {
        let tmp = tempfile::tempdir().unwrap();
        let n = PodNetwork::new(config(tmp.path())).unwrap();
        let e = n
            .setup_pod("sb", Path::new("/proc/999999999/ns/net"))
            .unwrap_err();
        assert!(matches!(e, NetworkError::Netns { .. }), "{e}");
        assert_eq!(n.pod_ip("sb"), None);
    }
}
