//! Which cgroup layout the host uses, read from `/proc/self/mountinfo`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::CgroupError;

/// The controllers a cgroup v1 hierarchy can carry. Mount options of a `cgroup` mount mix these
/// with flags (`rw`, `noprefix`, `clone_children`, `xattr`, `name=…`, `release_agent=…`); only
/// these names say which resource controllers the hierarchy holds.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// Where the cgroup filesystems of this host are mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Controller hierarchies of cgroup v1 (including hybrid hosts, whose extra cgroup2 mount is
    /// ignored because the controllers live in the v1 hierarchies).
    V1 {
        /// Controller name -> mount point of its hierarchy, e.g. "memory" ->
        /// /sys/fs/cgroup/memory. Co-mounted controllers ("cpu,cpuacct") map every name to the
        /// same mount point.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// The unified cgroup v2 hierarchy.
    V2 {
        /// Mount point of the cgroup2 filesystem, e.g. /sys/fs/cgroup.
        root: PathBuf,
    },
}

impl Layout {
    /// Reads `/proc/self/mountinfo` and decides with [`Layout::from_mountinfo`].
    pub fn detect() -> Result<Layout, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Layout::from_mountinfo(&text)
    }

    /// Decides the layout from the text of a mountinfo file.
    ///
    /// Any v1 hierarchy carrying a resource controller makes the layout V1: on a hybrid host the
    /// cgroup2 mount (usually /sys/fs/cgroup/unified) cannot get the controllers the v1
    /// hierarchies hold, so it is useless for resource limits. Named hierarchies without
    /// controllers (`name=systemd`) do not count. Without v1 controllers, the cgroup2 mount at
    /// /sys/fs/cgroup is preferred, else the first cgroup2 mount listed.
    pub fn from_mountinfo(text: &str) -> Result<Layout, CgroupError> {
        let mut v1: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut v2_mounts: Vec<PathBuf> = Vec::new();
        for (line_number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry = parse_mountinfo_line(line).ok_or_else(|| CgroupError::Parse {
                path: PathBuf::from("/proc/self/mountinfo"),
                detail: format!(
                    "line {} is not a mountinfo entry: {line:?}",
                    line_number + 1
                ),
            })?;
            match entry.fstype {
                "cgroup2" => v2_mounts.push(entry.mount_point),
                "cgroup" => {
                    for option in entry.super_options.split(',') {
                        if !V1_CONTROLLERS.contains(&option) {
                            continue;
                        }
                        // A controller can be visible twice (a bind mount of a subtree, e.g.
                        // inside a container); the conventional /sys/fs/cgroup mount wins,
                        // otherwise the first one listed.
                        let replace = match v1.get(option) {
                            None => true,
                            Some(existing) => {
                                !existing.starts_with("/sys/fs/cgroup")
                                    && entry.mount_point.starts_with("/sys/fs/cgroup")
                            }
                        };
                        if replace {
                            v1.insert(option.to_string(), entry.mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        if !v1.is_empty() {
            return Ok(Layout::V1 { mounts: v1 });
        }
        let conventional = Path::new("/sys/fs/cgroup");
        if let Some(root) = v2_mounts.iter().find(|m| m.as_path() == conventional) {
            return Ok(Layout::V2 { root: root.clone() });
        }
        match v2_mounts.into_iter().next() {
            Some(root) => Ok(Layout::V2 { root }),
            None => Err(CgroupError::NoCgroupFs),
        }
    }

    /// True for the unified (v2) hierarchy.
    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }

    /// Mounts in this mount namespace the cgroup filesystems that
    /// `reference` (another namespace's mountinfo, normally
    /// `/proc/1/mountinfo`) has at the same places: the tmpfs holding them,
    /// then each v1 hierarchy with its controllers and the cgroup2
    /// filesystem. The hierarchies are the host's own (mounting a v1
    /// controller set again attaches to its existing hierarchy), so cgroups
    /// made here are the host's.
    ///
    /// Needed when the agent runs under `ip netns exec`, which gives it a
    /// private mount namespace with a fresh /sys that hides
    /// /sys/fs/cgroup. Returns how many filesystems were mounted.
    pub fn restore_mounts_from(reference: &str) -> Result<usize, CgroupError> {
        let entries: Vec<MountinfoEntry<'_>> =
            reference.lines().filter_map(parse_mountinfo_line).collect();
        let cgroup_dirs: Vec<&MountinfoEntry<'_>> = entries
            .iter()
            .filter(|e| matches!(e.fstype, "cgroup" | "cgroup2"))
            .collect();
        let mut mounted = 0;
        // The tmpfs that holds the v1 hierarchies' mount points.
        for parent in entries.iter().filter(|e| {
            e.fstype == "tmpfs"
                && cgroup_dirs
                    .iter()
                    .any(|c| c.mount_point.parent() == Some(&e.mount_point))
        }) {
            mount_fs(
                "tmpfs",
                &parent.mount_point,
                "tmpfs",
                &keep_options(parent.super_options),
            )?;
            mounted += 1;
        }
        for entry in cgroup_dirs {
            std::fs::create_dir_all(&entry.mount_point).map_err(|source| CgroupError::Io {
                path: entry.mount_point.clone(),
                source,
            })?;
            mount_fs(
                entry.fstype,
                &entry.mount_point,
                entry.fstype,
                &keep_options(entry.super_options),
            )?;
            mounted += 1;
        }
        Ok(mounted)
    }
}

/// Super options worth passing again (controllers, `name=`, `mode=`,
/// `nsdelegate`…): all but the read-write flag and sizes the kernel reports.
fn keep_options(super_options: &str) -> String {
    super_options
        .split(',')
        .filter(|o| {
            !matches!(*o, "rw" | "ro")
                && !o.starts_with("size=")
                && !o.starts_with("nr_inodes=")
                && !o.starts_with("inode64")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn mount_fs(source: &str, target: &Path, fstype: &str, data: &str) -> Result<(), CgroupError> {
    nix::mount::mount(
        Some(source),
        target,
        Some(fstype),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        (!data.is_empty()).then_some(data),
    )
    .map_err(|errno| CgroupError::Io {
        path: target.to_path_buf(),
        source: std::io::Error::from(errno),
    })
}

struct MountinfoEntry<'a> {
    mount_point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

/// Parses one line of mountinfo (proc(5)): `id parent major:minor root mount-point options
/// [optional fields...] - fstype source super-options`.
fn parse_mountinfo_line(line: &str) -> Option<MountinfoEntry<'_>> {
    let (before, after) = line.split_once(" - ")?;
    let mut before_fields = before.split(' ');
    let mount_point = before_fields.nth(4)?;
    let mut after_fields = after.split(' ');
    let fstype = after_fields.next()?;
    let _source = after_fields.next()?;
    let super_options = after_fields.next().unwrap_or("");
    Some(MountinfoEntry {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fstype,
        super_options,
    })
}

/// The kernel writes space, tab, newline and backslash in mount points as `\ooo` octal escapes.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn only_controllers_and_modes_are_passed_again() {
        assert_eq!(keep_options("rw,cpu,cpuacct"), "cpu,cpuacct");
        assert_eq!(keep_options("rw,name=systemd"), "name=systemd");
        assert_eq!(
            keep_options("rw,size=4096k,nr_inodes=1024,mode=755,inode64"),
            "mode=755"
        );
        assert_eq!(keep_options("rw"), "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: v1 controllers each in its own hierarchy, a named systemd hierarchy and a
    /// cgroup2 mount at /sys/fs/cgroup/unified (hybrid).
    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd host with the unified hierarchy only (Fedora, Ubuntu 22.04+).
    const PURE_V2: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
24 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
36 24 0:31 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

    /// An older systemd host (CentOS 7 style): cpu and cpuacct co-mounted, named systemd
    /// hierarchy with xattr, optional fields present.
    const V1_COMOUNTED: &str = "\
25 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
29 25 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
30 25 0:26 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,net_cls,net_prio
31 25 0:27 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,pids
32 25 0:28 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpuset,clone_children
";

    #[test]
    fn hybrid_host_is_v1_with_every_controller_hierarchy() {
        let layout = Layout::from_mountinfo(HYBRID).unwrap();
        assert!(!layout.is_v2());
        let Layout::V1 { mounts } = layout else {
            panic!("expected V1")
        };
        let names: Vec<&str> = mounts.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids"]
        );
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(mounts["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpuacct"));
    }

    #[test]
    fn pure_v2_host_is_v2_at_sys_fs_cgroup() {
        let layout = Layout::from_mountinfo(PURE_V2).unwrap();
        assert!(layout.is_v2());
        assert_eq!(
            layout,
            Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup")
            }
        );
    }

    #[test]
    fn co_mounted_controllers_share_one_mount_point() {
        let Layout::V1 { mounts } = Layout::from_mountinfo(V1_COMOUNTED).unwrap() else {
            panic!("expected V1")
        };
        let both = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(mounts["cpu"], both);
        assert_eq!(mounts["cpuacct"], both);
        assert_eq!(mounts["net_cls"], mounts["net_prio"]);
        assert_eq!(mounts["cpuset"], PathBuf::from("/sys/fs/cgroup/cpuset"));
        assert!(!mounts.contains_key("systemd"));
        assert!(!mounts.contains_key("name=systemd"));
        assert!(!mounts.contains_key("clone_children"));
        assert_eq!(mounts.len(), 7);
    }

    #[test]
    fn named_hierarchy_beside_cgroup2_stays_v2() {
        // Docker-in-v2 setups mount a name=systemd v1 hierarchy for old images; it carries no
        // controllers, so the host is still v2.
        let text = format!(
            "{PURE_V2}40 35 0:40 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        );
        assert!(Layout::from_mountinfo(&text).unwrap().is_v2());
    }

    #[test]
    fn cgroup2_elsewhere_is_used_when_alone() {
        let text = "50 1 0:50 / /run/my\\040cgroup rw - cgroup2 none rw\n";
        assert_eq!(
            Layout::from_mountinfo(text).unwrap(),
            Layout::V2 {
                root: PathBuf::from("/run/my cgroup")
            }
        );
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n";
        assert!(matches!(
            Layout::from_mountinfo(text),
            Err(CgroupError::NoCgroupFs)
        ));
    }

    #[test]
    fn garbage_line_is_a_parse_error() {
        assert!(matches!(
            Layout::from_mountinfo("not a mountinfo line\n"),
            Err(CgroupError::Parse { .. })
        ));
    }

    #[test]
    fn detect_reads_this_host() {
        // Every Linux host running these tests has some cgroup filesystem mounted.
        let layout = Layout::detect().unwrap();
        match layout {
            Layout::V1 { mounts } => assert!(!mounts.is_empty()),
            Layout::V2 { root } => assert!(root.join("cgroup.procs").exists()),
        }
    }
}
