//! Packet filtering for the pod network: pods' traffic leaving the cluster
//! network is masqueraded (source-NATed to the node's address, as flannel's
//! `ipMasq` does), and forwarding to and from the bridge is accepted.
//!
//! Two backends: nftables (a table `ip rudder-<bridge>` holding both
//! chains, replaced atomically by one `nft -f` transaction) when `nft` works,
//! else iptables (chains `RUDDER-NAT-<bridge>` in `nat`, jumped to from
//! `POSTROUTING`, and `RUDDER-FWD-<bridge>` in `filter`, jumped to first
//! from `FORWARD`). Names carry the bridge so that two pod networks on one
//! host (a test beside a node) never touch each other's rules. Re-running
//! leaves exactly one copy of every rule.
//!
//! With nftables, an `accept` in our table does not override a `drop` in
//! another table: when iptables' `FORWARD` policy is `DROP` (Docker sets
//! it), the iptables forward chain is added as well.

use crate::cmd::{find_tool, Tool};
use crate::{Ipv4Cidr, NetworkError};

/// Multicast is never masqueraded (flannel leaves it alone too).
const MULTICAST: &str = "224.0.0.0/4";

/// Which tool programs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `nft`, table family `ip`.
    Nftables,
    /// `iptables`.
    Iptables,
}

impl Backend {
    /// nftables if `nft` is installed and answers, else iptables.
    pub fn detect() -> Result<Backend, NetworkError> {
        if find_tool("nft").is_some() && Tool::new("nft").args(["list", "tables"]).run().is_ok() {
            return Ok(Backend::Nftables);
        }
        if find_tool("iptables").is_some() {
            return Ok(Backend::Iptables);
        }
        Err(NetworkError::ToolMissing {
            tool: "nft or iptables",
        })
    }
}

/// The rules of one pod network.
pub(crate) struct Rules<'a> {
    pub bridge: &'a str,
    pub pod_cidr: Ipv4Cidr,
    pub cluster_cidr: Ipv4Cidr,
}

impl Rules<'_> {
    pub(crate) fn nft_table(&self) -> String {
        format!("rudder-{}", self.bridge)
    }

    fn nat_chain(&self) -> String {
        format!("RUDDER-NAT-{}", self.bridge)
    }

    fn forward_chain(&self) -> String {
        format!("RUDDER-FWD-{}", self.bridge)
    }

    /// Installs (or refreshes) the rules with `backend`.
    pub(crate) fn ensure(&self, backend: Backend) -> Result<(), NetworkError> {
        match backend {
            Backend::Nftables => {
                Tool::new("nft")
                    .args(["-f", "-"])
                    .stdin(self.nft_script())
                    .run()?;
                if find_tool("iptables").is_some() && iptables_forward_drops()? {
                    self.ensure_iptables_forward()?;
                }
            }
            Backend::Iptables => {
                self.ensure_iptables_nat()?;
                self.ensure_iptables_forward()?;
            }
        }
        Ok(())
    }

    /// Removes the rules of both backends, whichever exist.
    pub(crate) fn remove(&self) -> Result<(), NetworkError> {
        if find_tool("nft").is_some() {
            let table = self.nft_table();
            let exists = Tool::new("nft")
                .args(["list", "table", "ip", &table])
                .run()
                .is_ok();
            if exists {
                Tool::new("nft")
                    .args(["delete", "table", "ip", &table])
                    .run()?;
            }
        }
        if find_tool("iptables").is_some() {
            remove_iptables_chain("nat", "POSTROUTING", &self.nat_chain())?;
            remove_iptables_chain("filter", "FORWARD", &self.forward_chain())?;
        }
        Ok(())
    }

    /// The whole table, declared then flushed then filled: applied by `nft`
    /// as one transaction, so rules are never doubled nor briefly missing.
    pub(crate) fn nft_script(&self) -> String {
        let table = self.nft_table();
        let bridge = self.bridge;
        let pod = self.pod_cidr;
        let cluster = self.cluster_cidr;
        format!(
            "table ip {table} {{}}\n\
             flush table ip {table}\n\
             table ip {table} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {pod} ip daddr != {cluster} ip daddr != {MULTICAST} masquerade fully-random comment \"rudder: pods of {bridge} leaving the cluster network\"\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{bridge}\" accept comment \"rudder: from pods of {bridge}\"\n\
             \t\toifname \"{bridge}\" accept comment \"rudder: to pods of {bridge}\"\n\
             \t}}\n\
             }}\n"
        )
    }

    fn ensure_iptables_nat(&self) -> Result<(), NetworkError> {
        let chain = self.nat_chain();
        let comment = format!(
            "rudder: pods of {} leaving the cluster network",
            self.bridge
        );
        ensure_iptables_chain("nat", &chain)?;
        iptables(
            "nat",
            [
                "-A",
                &chain,
                "-d",
                &self.cluster_cidr.to_string(),
                "-j",
                "RETURN",
            ],
        )?;
        iptables("nat", ["-A", &chain, "-d", MULTICAST, "-j", "RETURN"])?;
        iptables(
            "nat",
            [
                "-A",
                &chain,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "MASQUERADE",
                "--random-fully",
            ],
        )?;
        let jump = [
            "-s".to_string(),
            self.pod_cidr.to_string(),
            "-j".into(),
            chain.clone(),
        ];
        ensure_jump("nat", "POSTROUTING", &jump, false)
    }

    fn ensure_iptables_forward(&self) -> Result<(), NetworkError> {
        let chain = self.forward_chain();
        ensure_iptables_chain("filter", &chain)?;
        iptables("filter", ["-A", &chain, "-i", self.bridge, "-j", "ACCEPT"])?;
        iptables("filter", ["-A", &chain, "-o", self.bridge, "-j", "ACCEPT"])?;
        ensure_jump(
            "filter",
            "FORWARD",
            &["-j".to_string(), chain.clone()],
            true,
        )
    }
}

fn iptables<I, S>(table: &str, args: I) -> Result<String, NetworkError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Tool::new("iptables")
        .args(["-w", "-t", table])
        .args(args)
        .run()
}

fn iptables_chain_exists(table: &str, chain: &str) -> bool {
    iptables(table, ["-S", chain]).is_ok()
}

/// Creates `chain` if needed and empties it.
fn ensure_iptables_chain(table: &str, chain: &str) -> Result<(), NetworkError> {
    if !iptables_chain_exists(table, chain) {
        if let Err(e) = iptables(table, ["-N", chain]) {
            if !iptables_chain_exists(table, chain) {
                return Err(e);
            }
        }
    }
    iptables(table, ["-F", chain])?;
    Ok(())
}

/// Adds the rule `spec` to the built-in `from` chain unless it is there.
fn ensure_jump(table: &str, from: &str, spec: &[String], first: bool) -> Result<(), NetworkError> {
    let present = iptables(
        table,
        ["-C", from]
            .into_iter()
            .map(String::from)
            .chain(spec.iter().cloned()),
    )
    .is_ok();
    if !present {
        let add: Vec<String> = if first {
            vec!["-I".into(), from.into(), "1".into()]
        } else {
            vec!["-A".into(), from.into()]
        };
        iptables(table, add.into_iter().chain(spec.iter().cloned()))?;
    }
    Ok(())
}

/// Deletes every rule of `from` jumping to `chain`, then `chain` itself.
fn remove_iptables_chain(table: &str, from: &str, chain: &str) -> Result<(), NetworkError> {
    if !iptables_chain_exists(table, chain) {
        return Ok(());
    }
    let listing = iptables(table, ["-S", from])?;
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let jumps = words.windows(2).any(|w| w[0] == "-j" && w[1] == chain);
        if words.first() == Some(&"-A") && jumps {
            // `-S` prints the rule as `-A FROM SPEC`; `-D FROM SPEC` deletes it.
            iptables(table, ["-D"].into_iter().chain(words[1..].iter().copied()))?;
        }
    }
    iptables(table, ["-F", chain])?;
    iptables(table, ["-X", chain])?;
    Ok(())
}

/// Whether iptables' `filter FORWARD` policy is `DROP`.
fn iptables_forward_drops() -> Result<bool, NetworkError> {
    Ok(policy_drops(&iptables("filter", ["-S", "FORWARD"])?))
}

/// Whether an `iptables -S FORWARD` listing sets the policy to `DROP`.
fn policy_drops(listing: &str) -> bool {
    listing.lines().any(|l| l.trim() == "-P FORWARD DROP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_script_declares_flushes_and_fills_one_table() {
        let rules = Rules {
            bridge: "rudder0",
            pod_cidr: "10.42.1.0/24".parse().unwrap(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        };
        let script = rules.nft_script();
        assert!(script.starts_with("table ip rudder-rudder0 {}\nflush table ip rudder-rudder0\n"));
        assert!(script.contains(
            "ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"
        ));
        assert!(script.contains("type nat hook postrouting priority srcnat;"));
        assert!(script.contains("iifname \"rudder0\" accept"));
        assert!(script.contains("oifname \"rudder0\" accept"));
        assert_eq!(rules.nat_chain(), "RUDDER-NAT-rudder0");
        // iptables allows chain names of up to 28 characters.
        let longest = Rules {
            bridge: "abcdefghijklmno",
            ..rules
        };
        assert!(longest.nat_chain().len() <= 28 && longest.forward_chain().len() <= 28);
    }

    #[test]
    fn reads_the_forward_policy() {
        assert!(policy_drops("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"));
        assert!(!policy_drops("-P FORWARD ACCEPT\n-A FORWARD -j DROP\n"));
    }

    fn iptables_rules(bridge: &str) -> String {
        let nat = Tool::new("iptables")
            .args(["-w", "-t", "nat", "-S"])
            .run()
            .unwrap();
        let filter = Tool::new("iptables")
            .args(["-w", "-t", "filter", "-S"])
            .run()
            .unwrap();
        (nat + &filter)
            .lines()
            .filter(|l| l.contains(bridge))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The iptables backend on the real kernel (root): installed twice,
    /// every rule once; removed, nothing left.
    #[test]
    fn iptables_backend_is_idempotent_and_removable() {
        let bridge = format!("rdi{:06x}", std::process::id() & 0xff_ffff);
        let rules = Rules {
            bridge: &bridge,
            pod_cidr: "10.197.3.0/24".parse().unwrap(),
            cluster_cidr: "10.197.0.0/16".parse().unwrap(),
        };
        struct Guard<'a>(&'a Rules<'a>);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                let _ = self.0.remove();
            }
        }
        let _guard = Guard(&rules);
        rules.ensure(Backend::Iptables).unwrap();
        rules.ensure(Backend::Iptables).unwrap();
        let listing = iptables_rules(&bridge);
        let expected = [
            format!("-N RUDDER-NAT-{bridge}"),
            format!("-A POSTROUTING -s 10.197.3.0/24 -j RUDDER-NAT-{bridge}"),
            format!("-A RUDDER-NAT-{bridge} -d 10.197.0.0/16 -j RETURN"),
            format!("-A RUDDER-NAT-{bridge} -d 224.0.0.0/4 -j RETURN"),
            format!("-N RUDDER-FWD-{bridge}"),
            format!("-A FORWARD -j RUDDER-FWD-{bridge}"),
            format!("-A RUDDER-FWD-{bridge} -i {bridge} -j ACCEPT"),
            format!("-A RUDDER-FWD-{bridge} -o {bridge} -j ACCEPT"),
        ];
        for rule in &expected {
            assert_eq!(
                listing.lines().filter(|l| l == rule).count(),
                1,
                "{rule} in\n{listing}"
            );
        }
        let masq: Vec<&str> = listing
            .lines()
            .filter(|l| l.contains("MASQUERADE"))
            .collect();
        assert_eq!(masq.len(), 1, "{listing}");
        assert!(masq[0].contains("--random-fully"), "{listing}");
        assert_eq!(listing.lines().count(), expected.len() + 1, "{listing}");
        rules.remove().unwrap();
        assert_eq!(iptables_rules(&bridge), "");
        rules.remove().unwrap();
    }

    /// The nftables backend on the real kernel (root).
    #[test]
    fn nft_backend_is_idempotent_and_removable() {
        let bridge = format!("rdn{:06x}", std::process::id() & 0xff_ffff);
        let rules = Rules {
            bridge: &bridge,
            pod_cidr: "10.197.4.0/24".parse().unwrap(),
            cluster_cidr: "10.197.0.0/16".parse().unwrap(),
        };
        struct Guard<'a>(&'a Rules<'a>);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                let _ = self.0.remove();
            }
        }
        let _guard = Guard(&rules);
        rules.ensure(Backend::Nftables).unwrap();
        rules.ensure(Backend::Nftables).unwrap();
        let table = rules.nft_table();
        let listing = Tool::new("nft")
            .args(["list", "table", "ip", &table])
            .run()
            .unwrap();
        assert_eq!(listing.matches("masquerade").count(), 1, "{listing}");
        assert_eq!(
            listing
                .matches(&format!("iifname \"{bridge}\" accept"))
                .count(),
            1,
            "{listing}"
        );
        assert_eq!(
            listing
                .matches(&format!("oifname \"{bridge}\" accept"))
                .count(),
            1,
            "{listing}"
        );
        rules.remove().unwrap();
        assert!(Tool::new("nft")
            .args(["list", "table", "ip", &table])
            .run()
            .is_err());
        rules.remove().unwrap();
    }
}
