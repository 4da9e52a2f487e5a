//! Host-local address management, as the CNI `host-local` IPAM plugin does
//! it: one file per allocated address in a directory, named by the address
//! and holding the owner's sandbox id, so the allocations survive restarts
//! of the agent and two allocators (threads or processes) never hand out the
//! same address.
//!
//! An address file is created by hard-linking a fully written temporary file
//! to the address's name: the link fails if the name exists, so the creation
//! is exclusive (like `O_CREAT|O_EXCL`) and a reader never sees a file
//! without its owner. Addresses are handed out round-robin after the last one
//! reserved (recorded in `last_reserved_ip.0`, as host-local does), so a
//! released address is not reused at once. The range is the pod CIDR minus
//! its network address, its gateway (the first host) and its broadcast
//! address.

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Ipv4Cidr, NetworkError};

/// The file recording the last address handed out (host-local's name).
const LAST_RESERVED: &str = "last_reserved_ip.0";
/// The interface name written after the owner, as host-local does.
const IFNAME: &str = "eth0";

/// Allocations of a pod CIDR's addresses, in a state directory.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Cidr,
    gateway: Ipv4Addr,
}

impl Ipam {
    /// Addresses of `cidr` (whose first host is the gateway), recorded in
    /// `dir` (created when the first address is allocated).
    pub fn new(dir: impl Into<PathBuf>, cidr: Ipv4Cidr) -> Result<Ipam, NetworkError> {
        let gateway = match (cidr.first_host(), cidr.last_host()) {
            (Some(first), Some(last)) if first < last => first,
            _ => {
                return Err(NetworkError::InvalidConfig(format!(
                    "pod CIDR {cidr} has no room for a gateway and a pod (its prefix must be /30 or shorter)"
                )))
            }
        };
        Ok(Ipam {
            dir: dir.into(),
            cidr,
            gateway,
        })
    }

    /// The gateway: the pod CIDR's first host, which the bridge holds.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The directory holding the allocations.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The address of `id`: its existing one, or a free one now reserved.
    pub fn allocate(&self, id: &str) -> Result<Ipv4Addr, NetworkError> {
        validate_id(id)?;
        if let Some(ip) = self.lookup(id)? {
            return Ok(ip);
        }
        fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        let first = u32::from(self.gateway) + 1;
        let last = u32::from(self.cidr.broadcast()) - 1;
        let count = last - first + 1;
        let start = match self.last_reserved() {
            Some(prev) if (first..=last).contains(&u32::from(prev)) => {
                if u32::from(prev) == last {
                    first
                } else {
                    u32::from(prev) + 1
                }
            }
            _ => first,
        };
        let temp = self.write_temp(&format!("{id}\n{IFNAME}"))?;
        let result = (|| {
            for i in 0..count {
                let ip = Ipv4Addr::from(first + (start - first + i) % count);
                let path = self.dir.join(ip.to_string());
                if fs::symlink_metadata(&path).is_ok() {
                    continue;
                }
                match fs::hard_link(&temp, &path) {
                    Ok(()) => return Ok(Some(ip)),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io(format!("reserving {}", path.display()))(e)),
                }
            }
            Ok(None)
        })();
        let _ = fs::remove_file(&temp);
        let Some(ip) = result? else {
            return Err(NetworkError::Exhausted {
                cidr: self.cidr.to_string(),
            });
        };
        self.set_last_reserved(ip)?;
        // Another allocator may have reserved an address for the same id at
        // the same time: all of them keep the lowest one and drop the rest.
        let mine: Vec<Ipv4Addr> = self
            .allocations()?
            .into_iter()
            .filter_map(|(addr, owner)| (owner == id).then_some(addr))
            .collect();
        let keep = mine.iter().copied().min().unwrap_or(ip);
        if keep != ip {
            remove_if_exists(&self.dir.join(ip.to_string()))?;
        }
        Ok(keep)
    }

    /// The address reserved for `id`, if any.
    pub fn lookup(&self, id: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, owner)| owner == id)
            .map(|(ip, _)| ip)
            .min())
    }

    /// Releases every address reserved for `id`; returns them (none if `id`
    /// held none).
    pub fn release(&self, id: &str) -> Result<Vec<Ipv4Addr>, NetworkError> {
        let mut released = Vec::new();
        for (ip, owner) in self.allocations()? {
            if owner == id {
                remove_if_exists(&self.dir.join(ip.to_string()))?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Every reserved address with its owner, in address order.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, NetworkError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("reading {}", self.dir.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(format!("reading {}", self.dir.display())))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let content = match fs::read_to_string(entry.path()) {
                Ok(c) => c,
                // Released between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("reading {}", entry.path().display()))(e)),
            };
            let owner = content.lines().next().unwrap_or("").trim().to_string();
            out.push((ip, owner));
        }
        out.sort();
        Ok(out)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn set_last_reserved(&self, ip: Ipv4Addr) -> Result<(), NetworkError> {
        let temp = self.write_temp(&ip.to_string())?;
        let path = self.dir.join(LAST_RESERVED);
        fs::rename(&temp, &path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            io(format!("writing {}", path.display()))(e)
        })
    }

    /// A new uniquely named file in the directory holding `content`.
    fn write_temp(&self, content: &str) -> Result<PathBuf, NetworkError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!(".tmp.{}.{n}", std::process::id()));
            let mut file = match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
            };
            if let Err(e) = file.write_all(content.as_bytes()) {
                let _ = fs::remove_file(&path);
                return Err(io(format!("writing {}", path.display()))(e));
            }
            return Ok(path);
        }
    }
}

fn validate_id(id: &str) -> Result<(), NetworkError> {
    if id.is_empty() || id.trim() != id || id.contains(['\n', '\r', '/', '\0']) {
        return Err(NetworkError::InvalidSandboxId(id.to_string()));
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), NetworkError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> NetworkError {
    move |source| NetworkError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::new(dir.join("ipam"), cidr.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_skips_network_gateway_and_broadcast() {
        let tmp = tempfile::tempdir().unwrap();
        let ipam = ipam(tmp.path(), "10.9.0.0/29");
        assert_eq!(ipam.gateway(), ip("10.9.0.1"));
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("pod{i}")).unwrap())
            .collect();
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"].map(ip)
        );
        match ipam.allocate("pod5") {
            Err(NetworkError::Exhausted { cidr }) => assert_eq!(cidr, "10.9.0.0/29"),
            other => panic!("expected exhaustion, got {other:?}"),
        }
    }

    #[test]
    fn same_id_gets_the_same_address() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.9.0.0/24");
        let first = a.allocate("sandbox-a").unwrap();
        assert_eq!(a.allocate("sandbox-a").unwrap(), first);
        // Another allocator on the same directory (an agent restart) too.
        let b = ipam(tmp.path(), "10.9.0.0/24");
        assert_eq!(b.allocate("sandbox-a").unwrap(), first);
        assert_eq!(b.lookup("sandbox-a").unwrap(), Some(first));
        assert_eq!(b.allocations().unwrap(), vec![(first, "sandbox-a".into())]);
    }

    #[test]
    fn the_file_looks_like_host_local() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.9.0.0/24");
        a.allocate("abc").unwrap();
        let dir = tmp.path().join("ipam");
        assert_eq!(
            fs::read_to_string(dir.join("10.9.0.2")).unwrap(),
            "abc\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join(LAST_RESERVED)).unwrap(),
            "10.9.0.2"
        );
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "temporary files left: {names:?}");
    }

    #[test]
    fn release_frees_and_round_robin_reuses_later() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.9.0.0/29");
        assert_eq!(a.allocate("p1").unwrap(), ip("10.9.0.2"));
        assert_eq!(a.allocate("p2").unwrap(), ip("10.9.0.3"));
        assert_eq!(a.release("p1").unwrap(), vec![ip("10.9.0.2")]);
        assert_eq!(a.lookup("p1").unwrap(), None);
        assert_eq!(a.release("p1").unwrap(), Vec::<Ipv4Addr>::new());
        // Round-robin: the released .2 comes back only after the rest.
        assert_eq!(a.allocate("p3").unwrap(), ip("10.9.0.4"));
        assert_eq!(a.allocate("p4").unwrap(), ip("10.9.0.5"));
        assert_eq!(a.allocate("p5").unwrap(), ip("10.9.0.6"));
        assert_eq!(a.allocate("p6").unwrap(), ip("10.9.0.2"));
        assert!(matches!(
            a.allocate("p7"),
            Err(NetworkError::Exhausted { .. })
        ));
        a.release("p4").unwrap();
        assert_eq!(a.allocate("p7").unwrap(), ip("10.9.0.5"));
    }

    #[test]
    fn a_stale_last_reserved_outside_the_range_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.9.0.0/29");
        fs::create_dir_all(a.dir()).unwrap();
        fs::write(a.dir().join(LAST_RESERVED), "192.168.0.9").unwrap();
        assert_eq!(a.allocate("p").unwrap(), ip("10.9.0.2"));
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let tmp = tempfile::tempdir().unwrap();
        let threads = 8;
        let per_thread = 20;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                // Separate allocators, as separate processes would have.
                let a = ipam(tmp.path(), "10.9.0.0/24");
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..per_thread)
                        .map(|i| {
                            (
                                format!("t{t}-{i}"),
                                a.allocate(&format!("t{t}-{i}")).unwrap(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<(String, Ipv4Addr)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<Ipv4Addr> = all.iter().map(|(_, ip)| *ip).collect();
        assert_eq!(distinct.len(), threads * per_thread);
        let recorded = ipam(tmp.path(), "10.9.0.0/24").allocations().unwrap();
        let mut expected: Vec<(Ipv4Addr, String)> =
            all.into_iter().map(|(id, ip)| (ip, id)).collect();
        expected.sort();
        assert_eq!(recorded, expected);
    }

    #[test]
    fn concurrent_requests_for_one_id_agree() {
        for round in 0..20 {
            let tmp = tempfile::tempdir().unwrap();
            let barrier = Arc::new(Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let a = ipam(tmp.path(), "10.9.0.0/24");
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        a.allocate("same").unwrap()
                    })
                })
                .collect();
            let got: HashSet<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(got.len(), 1, "round {round}: {got:?}");
            let recorded = ipam(tmp.path(), "10.9.0.0/24").allocations().unwrap();
            assert_eq!(recorded.len(), 1, "round {round}: {recorded:?}");
        }
    }

    #[test]
    fn bad_ids_and_tiny_ranges_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.9.0.0/24");
        for bad in ["", "a\nb", " a", "a/b"] {
            assert!(
                matches!(a.allocate(bad), Err(NetworkError::InvalidSandboxId(_))),
                "{bad:?}"
            );
        }
        for tiny in ["10.9.0.0/31", "10.9.0.0/32"] {
            assert!(matches!(
                Ipam::new(tmp.path(), tiny.parse().unwrap()),
                Err(NetworkError::InvalidConfig(_))
            ));
        }
        let slash30 = ipam(tmp.path(), "10.9.0.0/30");
        assert_eq!(slash30.allocate("only").unwrap(), ip("10.9.0.2"));
        assert!(matches!(
            slash30.allocate("two"),
            Err(NetworkError::Exhausted { .. })
        ));
    }
}
