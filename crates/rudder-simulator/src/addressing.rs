//! The simulated nodes' fake addresses: a pod CIDR per node, a node IP
//! inside it, and pod IPs handed out from it. Nothing is ever sent to
//! these addresses; they only have to be plausible and unique.

use std::net::Ipv4Addr;

use crate::OptionsError;

/// The ranges of 10.0.0.0/8 that pod CIDRs are cut from, in the order they
/// are used. The first range starts at 10.244.0.0 so that small clusters
/// look like the usual flannel/kubeadm layout (node 1 gets 10.244.1.0/24);
/// large ones continue below it. 10.96.0.0/12, the customary Service range,
/// is left out so that pod and Service addresses never collide.
const POD_RANGES: [(Ipv4Addr, Ipv4Addr); 3] = [
    (
        Ipv4Addr::new(10, 244, 0, 0),
        Ipv4Addr::new(10, 255, 255, 255),
    ),
    (Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 95, 255, 255)),
    (
        Ipv4Addr::new(10, 112, 0, 0),
        Ipv4Addr::new(10, 243, 255, 255),
    ),
];

/// The widest pod CIDR a node gets (a /16: 65533 pods).
const WIDEST_PREFIX: u8 = 16;

/// The narrowest pod CIDR a node gets, whatever its pod count.
const NARROWEST_PREFIX: u8 = 24;

/// Addresses of a block that pods cannot have: the network address, the
/// node's own address (the first host) and the broadcast address.
const RESERVED_PER_BLOCK: u32 = 3;

/// How pod CIDRs are laid out: every node gets a block of the same size,
/// the smallest one (but at least a /24) that holds its maximum pod count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddressPlan {
    prefix_len: u8,
}

impl AddressPlan {
    pub(crate) fn for_max_pods(max_pods: u32) -> Result<Self, OptionsError> {
        let mut prefix_len = NARROWEST_PREFIX;
        loop {
            let plan = AddressPlan { prefix_len };
            if plan.pod_capacity() >= max_pods {
                return Ok(plan);
            }
            if prefix_len == WIDEST_PREFIX {
                return Err(OptionsError::TooManyPods {
                    pods: max_pods,
                    max: plan.pod_capacity(),
                });
            }
            prefix_len -= 1;
        }
    }

    fn block_size(self) -> u32 {
        1 << (32 - u32::from(self.prefix_len))
    }

    /// How many pods one node's block can address.
    pub(crate) fn pod_capacity(self) -> u32 {
        self.block_size() - RESERVED_PER_BLOCK
    }

    fn block_count(self) -> u64 {
        POD_RANGES
            .iter()
            .map(|(first, last)| u64::from(u32::from(*last)) - u64::from(u32::from(*first)) + 1)
            .sum::<u64>()
            / u64::from(self.block_size())
    }

    /// The highest node index that gets a block of its own. Block 0
    /// (10.244.0.0/24 for /24 blocks) is never handed out, as in the usual
    /// layouts where it belongs to the first control-plane node.
    pub(crate) fn max_nodes(self) -> usize {
        usize::try_from(self.block_count() - 1).unwrap_or(usize::MAX)
    }

    /// The addresses of the node with 1-based `index`.
    ///
    /// Panics if `index` is 0 or above [`max_nodes`](Self::max_nodes); the
    /// options are checked against that before any node is built.
    pub(crate) fn node_addresses(self, index: usize) -> NodeAddresses {
        assert!(
            (1..=self.max_nodes()).contains(&index),
            "node index {index} is outside 1..={}",
            self.max_nodes()
        );
        let mut offset = index as u64 * u64::from(self.block_size());
        for (first, last) in POD_RANGES {
            let (first, last) = (u64::from(u32::from(first)), u64::from(u32::from(last)));
            let len = last - first + 1;
            if offset < len {
                let network = u32::try_from(first + offset).expect("inside 10.0.0.0/8");
                return NodeAddresses {
                    pod_cidr: Ipv4Cidr {
                        network: Ipv4Addr::from(network),
                        prefix_len: self.prefix_len,
                    },
                    node_ip: Ipv4Addr::from(network + 1),
                };
            }
            offset -= len;
        }
        unreachable!("index {index} was checked against max_nodes")
    }
}

/// An IPv4 network, as in `spec.podCIDR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// One simulated node's addresses. The node IP is the first host of its
/// pod CIDR (where a bridge such as `cni0` would sit on a real node), so
/// that node IPs stay distinct and derived from the index however many
/// nodes there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeAddresses {
    pub pod_cidr: Ipv4Cidr,
    pub node_ip: Ipv4Addr,
}

/// Whether [`PodIpPool::claim`] took the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    Claimed,
    /// Another pod holds it already.
    InUse,
    /// Not an address this pool hands out.
    Outside,
}

/// The pod IPs of one node's CIDR: every address but the network, the
/// node's own and the broadcast address. Allocation goes round-robin so
/// that a freed address is reused as late as possible, which makes stale
/// endpoints easier to tell apart in tests.
#[derive(Clone, Debug)]
pub(crate) struct PodIpPool {
    /// The first pod address.
    first: u32,
    size: u32,
    /// One bit per pod address, set while a pod holds it.
    in_use: Vec<u64>,
    /// Where the next search starts.
    cursor: u32,
}

impl PodIpPool {
    pub(crate) fn new(cidr: Ipv4Cidr) -> Self {
        let block = 1u32 << (32 - u32::from(cidr.prefix_len));
        let size = block.saturating_sub(RESERVED_PER_BLOCK);
        PodIpPool {
            first: u32::from(cidr.network) + 2,
            size,
            in_use: vec![0; size.div_ceil(64) as usize],
            cursor: 0,
        }
    }

    /// A free address, marked as in use; `None` when all are taken.
    pub(crate) fn allocate(&mut self) -> Option<Ipv4Addr> {
        for step in 0..self.size {
            let slot = (self.cursor + step) % self.size;
            if !self.is_set(slot) {
                self.set(slot, true);
                self.cursor = (slot + 1) % self.size;
                return Some(Ipv4Addr::from(self.first + slot));
            }
        }
        None
    }

    /// Marks `ip` as in use, for pods that already had it (from an earlier
    /// run of the simulator).
    pub(crate) fn claim(&mut self, ip: Ipv4Addr) -> Claim {
        let Some(slot) = self.slot(ip) else {
            return Claim::Outside;
        };
        if self.is_set(slot) {
            return Claim::InUse;
        }
        self.set(slot, true);
        Claim::Claimed
    }

    pub(crate) fn release(&mut self, ip: Ipv4Addr) {
        if let Some(slot) = self.slot(ip) {
            self.set(slot, false);
        }
    }

    fn slot(&self, ip: Ipv4Addr) -> Option<u32> {
        u32::from(ip)
            .checked_sub(self.first)
            .filter(|slot| *slot < self.size)
    }

    fn is_set(&self, slot: u32) -> bool {
        self.in_use[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    fn set(&mut self, slot: u32, in_use: bool) {
        let word = &mut self.in_use[(slot / 64) as usize];
        if in_use {
            *word |= 1 << (slot % 64);
        } else {
            *word &= !(1 << (slot % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn addresses(max_pods: u32, index: usize) -> (String, Ipv4Addr) {
        let node = AddressPlan::for_max_pods(max_pods)
            .unwrap()
            .node_addresses(index);
        (node.pod_cidr.to_string(), node.node_ip)
    }

    #[test]
    fn small_clusters_use_the_familiar_layout() {
        assert_eq!(
            addresses(110, 1),
            ("10.244.1.0/24".into(), Ipv4Addr::new(10, 244, 1, 1))
        );
        assert_eq!(
            addresses(110, 255),
            ("10.244.255.0/24".into(), Ipv4Addr::new(10, 244, 255, 1))
        );
        assert_eq!(
            addresses(253, 2),
            ("10.244.2.0/24".into(), Ipv4Addr::new(10, 244, 2, 1))
        );
    }

    #[test]
    fn large_clusters_continue_past_10_255_and_skip_the_service_range() {
        assert_eq!(addresses(110, 256).0, "10.245.0.0/24");
        assert_eq!(addresses(110, 12 * 256 - 1).0, "10.255.255.0/24");
        assert_eq!(addresses(110, 12 * 256).0, "10.0.0.0/24");
        assert_eq!(addresses(110, 12 * 256 + 96 * 256 - 1).0, "10.95.255.0/24");
        assert_eq!(addresses(110, 12 * 256 + 96 * 256).0, "10.112.0.0/24");
        let plan = AddressPlan::for_max_pods(110).unwrap();
        assert_eq!(plan.max_nodes(), 240 * 256 - 1);
        assert_eq!(
            plan.node_addresses(plan.max_nodes()).pod_cidr.to_string(),
            "10.243.255.0/24"
        );
    }

    #[test]
    fn every_node_gets_distinct_addresses() {
        let plan = AddressPlan::for_max_pods(110).unwrap();
        let mut networks = HashSet::new();
        let mut node_ips = HashSet::new();
        for index in 1..=plan.max_nodes() {
            let node = plan.node_addresses(index);
            assert!(networks.insert(node.pod_cidr.network), "{index}");
            assert!(node_ips.insert(node.node_ip), "{index}");
        }
    }

    #[test]
    fn more_pods_than_a_slash_24_holds_get_wider_blocks() {
        let plan = AddressPlan::for_max_pods(254).unwrap();
        assert_eq!(plan.pod_capacity(), 509);
        assert_eq!(
            addresses(254, 1),
            ("10.244.2.0/23".into(), Ipv4Addr::new(10, 244, 2, 1))
        );
        assert_eq!(addresses(254, 2).0, "10.244.4.0/23");
        assert_eq!(AddressPlan::for_max_pods(0).unwrap().pod_capacity(), 253);
        assert_eq!(
            AddressPlan::for_max_pods(70_000),
            Err(OptionsError::TooManyPods {
                pods: 70_000,
                max: 65_533
            })
        );
    }

    fn pool() -> PodIpPool {
        PodIpPool::new(
            AddressPlan::for_max_pods(110)
                .unwrap()
                .node_addresses(3)
                .pod_cidr,
        )
    }

    #[test]
    fn pod_ips_skip_the_network_node_and_broadcast_addresses() {
        let mut pool = pool();
        let all: Vec<Ipv4Addr> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], Ipv4Addr::new(10, 244, 3, 2));
        assert_eq!(all[252], Ipv4Addr::new(10, 244, 3, 254));
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 253);
        assert_eq!(pool.allocate(), None);
        pool.release(Ipv4Addr::new(10, 244, 3, 77));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(10, 244, 3, 77)));
    }

    #[test]
    fn freed_addresses_are_reused_last() {
        let mut pool = pool();
        let first = pool.allocate().unwrap();
        pool.release(first);
        let second = pool.allocate().unwrap();
        assert_ne!(first, second);
        assert_eq!(second, Ipv4Addr::new(10, 244, 3, 3));
    }

    #[test]
    fn claimed_addresses_are_not_handed_out_again() {
        let mut pool = pool();
        assert_eq!(pool.claim(Ipv4Addr::new(10, 244, 3, 2)), Claim::Claimed);
        assert_eq!(pool.claim(Ipv4Addr::new(10, 244, 3, 2)), Claim::InUse);
        assert_eq!(pool.claim(Ipv4Addr::new(10, 244, 3, 1)), Claim::Outside);
        assert_eq!(pool.claim(Ipv4Addr::new(10, 244, 3, 255)), Claim::Outside);
        assert_eq!(pool.claim(Ipv4Addr::new(10, 244, 4, 2)), Claim::Outside);
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(10, 244, 3, 3)));
    }
}
