//! The node's resolver configuration (`/etc/resolv.conf`): where the
//! cluster DNS forwards names outside the cluster domain, and what pods
//! with `dnsPolicy: Default` get.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The usual resolver configuration file.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the real upstream servers, used when
/// /etc/resolv.conf only names the local stub (127.0.0.53).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// What a resolv.conf says, in the parts the kubelet and DNS use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text as the kubelet reads it: every `nameserver`
    /// line adds a server, the last `search` line wins (trailing dots
    /// trimmed, a lone "." dropped), `options` accumulate with a later
    /// value of the same option replacing the earlier one. `domain` lines
    /// are ignored, as the kubelet ignores them.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().map(String::from)),
                Some("search") => {
                    conf.searches = words
                        .filter(|w| *w != ".")
                        .map(|w| w.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => {
                    for option in words {
                        merge_option(&mut conf.options, option.to_string());
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// Reads and parses a file; a missing or unreadable file is empty.
    pub fn read(path: &Path) -> ResolvConf {
        ResolvConf::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// The nameservers that are IP addresses.
    pub fn nameserver_ips(&self) -> Vec<IpAddr> {
        self.nameservers
            .iter()
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .collect()
    }

    /// Whether every nameserver is a loopback address (a local stub such as
    /// systemd-resolved's 127.0.0.53), which a pod cannot reach from its
    /// own network namespace.
    pub fn only_loopback(&self) -> bool {
        let ips = self.nameserver_ips();
        !ips.is_empty() && ips.iter().all(IpAddr::is_loopback)
    }
}

/// Adds an `options` entry, replacing an earlier one of the same name
/// (`ndots:2` replaces `ndots:1`), keeping the first one's position.
pub fn merge_option(options: &mut Vec<String>, option: String) {
    let name = option_name(&option);
    match options.iter_mut().find(|o| option_name(o) == name) {
        Some(existing) => *existing = option,
        None => options.push(option),
    }
}

fn option_name(option: &str) -> &str {
    option.split(':').next().unwrap_or(option)
}

/// The resolv.conf that describes the node's real resolvers: /etc/resolv.conf,
/// unless it only names loopback servers and systemd-resolved's upstream
/// list exists (k3s makes the same choice for its pods and CoreDNS).
pub fn host_resolv_conf_path() -> PathBuf {
    choose_path(Path::new(RESOLV_CONF), Path::new(SYSTEMD_RESOLV_CONF))
}

/// The choice of [`host_resolv_conf_path`], between any two files.
pub fn choose_path(main: &Path, systemd: &Path) -> PathBuf {
    if ResolvConf::read(main).only_loopback() && !ResolvConf::read(systemd).nameservers.is_empty() {
        return systemd.to_path_buf();
    }
    main.to_path_buf()
}

/// The node's resolver configuration (see [`host_resolv_conf_path`]).
pub fn host_resolv_conf() -> ResolvConf {
    ResolvConf::read(&host_resolv_conf_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_the_kubelet_does() {
        let conf = ResolvConf::parse(
            "# generated\n; comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
             domain corp.example\nsearch old.example\nsearch a.example. . b.example\n\
             options ndots:2 rotate\noptions ndots:3 timeout:1\n",
        );
        assert_eq!(conf.nameservers, ["10.0.0.2", "fe80::1%eth0"]);
        assert_eq!(conf.searches, ["a.example", "b.example"]);
        assert_eq!(conf.options, ["ndots:3", "rotate", "timeout:1"]);
        assert_eq!(
            conf.nameserver_ips(),
            ["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_loopback_stub_defers_to_systemd_resolved_s_list() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("resolv.conf");
        let systemd = dir.path().join("systemd.conf");
        std::fs::write(&main, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        // No systemd file: the stub is all there is (the agent itself can
        // still reach it).
        assert_eq!(choose_path(&main, &systemd), main);
        std::fs::write(&systemd, "nameserver 192.0.2.53\nsearch lan\n").unwrap();
        assert_eq!(choose_path(&main, &systemd), systemd);
        // A real server in /etc/resolv.conf is used as it is.
        std::fs::write(&main, "nameserver 127.0.0.53\nnameserver 192.0.2.1\n").unwrap();
        assert_eq!(choose_path(&main, &systemd), main);
    }
}
