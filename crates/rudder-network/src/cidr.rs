//! An IPv4 network in CIDR notation ("10.42.0.0/24").

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::NetworkError;

/// An IPv4 network: a base address and a prefix length (0 to 32).
///
/// Parsing accepts host bits and clears them, as Go's `net.ParseCIDR`
/// (which Kubernetes uses for `podCIDR`/`--cluster-cidr`) does:
/// `"10.42.0.7/24"` is `10.42.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network holding `addr` with this prefix length.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, NetworkError> {
        if prefix > 32 {
            return Err(NetworkError::InvalidCidr(format!(
                "{addr}/{prefix}: the prefix length is more than 32"
            )));
        }
        Ok(Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// The network address (all host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask (`255.255.255.0` for a /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The broadcast address (all host bits one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether every address of `other` lies in this network.
    pub fn contains_cidr(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// The first usable host address (network + 1), if the network has room
    /// for hosts besides its network and broadcast addresses (prefix ≤ 30).
    pub fn first_host(&self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| Ipv4Addr::from(u32::from(self.network) + 1))
    }

    /// The last usable host address (broadcast − 1), for prefix ≤ 30.
    pub fn last_host(&self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| Ipv4Addr::from(u32::from(self.broadcast()) - 1))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Ipv4Cidr, NetworkError> {
        let invalid = |why: &str| NetworkError::InvalidCidr(format!("{s:?}: {why}"));
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| invalid("the address is not a dotted-quad IPv4 address"))?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the prefix length is not a number from 0 to 32"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid("the prefix length is not a number from 0 to 32"))?;
        if prefix > 32 {
            return Err(invalid("the prefix length is more than 32"));
        }
        Ipv4Cidr::new(addr, prefix)
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        let c = cidr("10.42.0.0/24");
        assert_eq!(c.network(), Ipv4Addr::new(10, 42, 0, 0));
        assert_eq!(c.prefix(), 24);
        assert_eq!(c.to_string(), "10.42.0.0/24");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 42, 0, 255));
        assert_eq!(c.first_host(), Some(Ipv4Addr::new(10, 42, 0, 1)));
        assert_eq!(c.last_host(), Some(Ipv4Addr::new(10, 42, 0, 254)));
    }

    #[test]
    fn clears_host_bits_like_go() {
        assert_eq!(cidr("10.42.3.77/16").to_string(), "10.42.0.0/16");
        assert_eq!(cidr("192.168.1.1/32").to_string(), "192.168.1.1/32");
        assert_eq!(cidr("1.2.3.4/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "10.42.0.0",
            "10.42.0.0/",
            "10.42.0.0/33",
            "10.42.0.0/-1",
            "10.42.0.0/+8",
            "10.42.0/24",
            "10.42.0.0.0/24",
            "::1/128",
            "10.42.0.0/24 ",
            "/24",
            "10.42.0.0/024x",
        ] {
            let err = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(
                matches!(err, NetworkError::InvalidCidr(ref m) if m.contains(&format!("{bad:?}"))),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn containment() {
        let cluster = cidr("10.42.0.0/16");
        let node = cidr("10.42.7.0/24");
        assert!(cluster.contains(Ipv4Addr::new(10, 42, 255, 255)));
        assert!(!cluster.contains(Ipv4Addr::new(10, 43, 0, 0)));
        assert!(cluster.contains_cidr(&node));
        assert!(!node.contains_cidr(&cluster));
        assert!(node.contains_cidr(&node));
        assert!(!node.contains_cidr(&cidr("10.42.8.0/24")));
        assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn tiny_networks_have_no_hosts() {
        assert_eq!(cidr("10.0.0.0/31").first_host(), None);
        assert_eq!(cidr("10.0.0.0/32").last_host(), None);
        let c = cidr("10.0.0.4/30");
        assert_eq!(c.first_host(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(c.last_host(), Some(Ipv4Addr::new(10, 0, 0, 6)));
    }

    #[test]
    fn serde_as_a_string() {
        let c = cidr("10.42.0.0/24");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"10.42.0.0/24\"");
        let back: Ipv4Cidr = serde_json::from_str("\"10.42.0.0/24\"").unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Ipv4Cidr>("\"10.42.0.0\"").is_err());
    }
}
