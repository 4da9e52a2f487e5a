//! The node side of the pod network: a Linux bridge holding the gateway
//! address of the pod CIDR (as the CNI `bridge` plugin with `isGateway`),
//! and IPv4 forwarding on.

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cmd::Tool;
use crate::NetworkError;

const SYS_CLASS_NET: &str = "/sys/class/net";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether a network interface of this name exists in our namespace.
pub(crate) fn link_exists(name: &str) -> bool {
    fs::symlink_metadata(sys_path(name)).is_ok()
}

/// Whether `name` exists and is a bridge.
pub(crate) fn is_bridge(name: &str) -> bool {
    sys_path(name).join("bridge").is_dir()
}

/// The interfaces attached to the bridge `name` (none if it does not exist).
pub(crate) fn ports(name: &str) -> Result<Vec<String>, NetworkError> {
    let dir = sys_path(name).join("brif");
    match fs::read_dir(&dir) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(NetworkError::Io {
            context: format!("listing {}", dir.display()),
            source,
        }),
    }
}

fn sys_path(name: &str) -> PathBuf {
    Path::new(SYS_CLASS_NET).join(name)
}

/// Creates the bridge if needed, gives it `gateway/prefix` and `mtu`, and
/// brings it up. Re-running changes nothing.
pub(crate) fn ensure(
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<(), NetworkError> {
    if link_exists(name) {
        if !is_bridge(name) {
            return Err(NetworkError::InvalidConfig(format!(
                "network interface {name} exists and is not a bridge"
            )));
        }
    } else {
        let created = Tool::new("ip")
            .args(["link", "add", "name", name, "type", "bridge"])
            .run();
        // Another caller may have created it in between.
        if let Err(e) = created {
            if !is_bridge(name) {
                return Err(e);
            }
        }
    }
    let mtu = mtu.to_string();
    Tool::new("ip")
        .args(["link", "set", "dev", name, "mtu", &mtu])
        .run()?;
    let ours = format!("{gateway}/{prefix}");
    Tool::new("ip")
        .args(["addr", "replace", &ours, "brd", "+", "dev", name])
        .run()?;
    // An address left from an earlier pod CIDR would route the old range to
    // the bridge: the bridge is ours, the node's pod CIDR decides.
    let listing = Tool::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", name])
        .run()?;
    for stale in ipv4_addresses(&listing).into_iter().filter(|a| *a != ours) {
        tracing::info!(bridge = name, address = %stale, "removing a stale bridge address");
        Tool::new("ip")
            .args(["addr", "del", &stale, "dev", name])
            .run()?;
    }
    Tool::new("ip")
        .args(["link", "set", "dev", name, "up"])
        .run()?;
    Ok(())
}

/// The `ADDRESS/PREFIX`es in the output of `ip -4 -o addr show`.
fn ipv4_addresses(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// Deletes the bridge (its ports are detached, not deleted); nothing if it
/// does not exist.
pub(crate) fn delete(name: &str) -> Result<(), NetworkError> {
    if !link_exists(name) {
        return Ok(());
    }
    if !is_bridge(name) {
        return Err(NetworkError::InvalidConfig(format!(
            "network interface {name} is not a bridge: not deleting it"
        )));
    }
    delete_link(name)
}

/// `ip link del dev NAME`, where a link that vanished meanwhile is success.
pub(crate) fn delete_link(name: &str) -> Result<(), NetworkError> {
    match Tool::new("ip").args(["link", "del", "dev", name]).run() {
        Ok(_) => Ok(()),
        Err(_) if !link_exists(name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Turns IPv4 forwarding on (`net.ipv4.ip_forward=1`), which routing the
/// pods' traffic off the node needs.
pub(crate) fn enable_ip_forward() -> Result<(), NetworkError> {
    let current = fs::read_to_string(IP_FORWARD).map_err(|source| NetworkError::Io {
        context: format!("reading {IP_FORWARD}"),
        source,
    })?;
    if current.trim() == "1" {
        return Ok(());
    }
    fs::write(IP_FORWARD, "1").map_err(|source| NetworkError::Io {
        context: format!("writing 1 to {IP_FORWARD}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_addr_show() {
        let listing = "7: rudder0    inet 10.42.0.1/24 brd 10.42.0.255 scope global rudder0\\       valid_lft forever preferred_lft forever\n\
                       7: rudder0    inet 10.41.0.1/24 brd 10.41.0.255 scope global rudder0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(ipv4_addresses(listing), ["10.42.0.1/24", "10.41.0.1/24"]);
        assert!(ipv4_addresses("").is_empty());
    }
}

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Whether bridged IPv4 traffic passes netfilter in this network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeNetfilter {
    /// `net.bridge.bridge-nf-call-iptables` is 1 (it was, or we set it).
    Enabled,
    /// No `br_netfilter` (not built in, module not loadable).
    Unavailable,
}

/// Makes bridged IPv4 traffic pass the netfilter hooks: loads
/// `br_netfilter` if its sysctls are missing, then sets
/// `net.bridge.bridge-nf-call-iptables=1` in this network namespace
/// (per namespace on current kernels). Without it two pods of one bridge
/// talk past both the Service proxy's conntrack (replies from a DNATed
/// peer skip the host) and NetworkPolicy's `forward` chain.
pub fn ensure_bridge_netfilter() -> Result<BridgeNetfilter, NetworkError> {
    let path = Path::new(BRIDGE_NF_CALL_IPTABLES);
    if !path.exists() {
        match Tool::new("modprobe").arg("br_netfilter").run() {
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "modprobe br_netfilter"),
        }
        if !path.exists() {
            return Ok(BridgeNetfilter::Unavailable);
        }
    }
    let current = fs::read_to_string(path).map_err(|source| NetworkError::Io {
        context: format!("reading {BRIDGE_NF_CALL_IPTABLES}"),
        source,
    })?;
    if current.trim() != "1" {
        fs::write(path, "1").map_err(|source| NetworkError::Io {
            context: format!("writing 1 to {BRIDGE_NF_CALL_IPTABLES}"),
            source,
        })?;
    }
    Ok(BridgeNetfilter::Enabled)
}
