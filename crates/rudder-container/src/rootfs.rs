//! The container's filesystem, set up by the init stage inside its new mount
//! namespace: the bundle's rootfs (an overlayfs the caller mounted) becomes
//! `/` by `pivot_root`, with the spec's mounts, device nodes, masked and
//! read-only paths.

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{ContainerError, IoContext, Result};

/// The cgroup directories of the container, so that `/sys/fs/cgroup` inside
/// it shows its own cgroup (v1: one bind per hierarchy, as runc does).
#[derive(Clone, Debug, Default)]
pub(crate) struct CgroupView {
    pub v2: bool,
    /// (hierarchy name as mounted on the host, e.g. `memory`, the container's dir)
    pub dirs: Vec<(String, PathBuf)>,
}

/// Devices every Linux container gets (the OCI runtime spec's default set).
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

/// Sets up the mount namespace and pivots into `rootfs`.
pub(crate) fn prepare(spec: &Spec, rootfs: &Path, cgroups: &CgroupView) -> Result<()> {
    let linux = spec.linux().as_ref();
    // Mount events of the host may reach the container (rslave, runc's
    // default), but nothing done here propagates back to the host.
    let propagation = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .map(|p| propagation_flag(p).ok_or_else(|| unsupported_propagation(p)))
        .transpose()?
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .context(|| "making / a slave mount".into())?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .context(|| format!("bind-mounting the rootfs {}", rootfs.display()))?;

    for m in spec.mounts().iter().flatten() {
        mount_one(rootfs, m, cgroups)?;
    }
    if has_dev_tmpfs(spec) {
        create_devices(rootfs, linux.and_then(|l| l.devices().as_ref()))?;
        dev_symlinks(rootfs)?;
    }

    pivot(rootfs)?;

    if let Some(linux) = linux {
        for path in linux.masked_paths().iter().flatten() {
            mask(path)?;
        }
        for path in linux.readonly_paths().iter().flatten() {
            make_readonly(path)?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .context(|| "making the root filesystem read-only".into())?;
    }
    Ok(())
}

fn unsupported_propagation(p: &str) -> ContainerError {
    ContainerError::Unsupported(format!("rootfsPropagation {p:?}"))
}

fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// fstab-style options split into mount flags, propagation flags and the
/// file-system specific data string.
#[derive(Debug, PartialEq)]
pub(crate) struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
}

pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            other => {
                if let Some(p) = propagation_flag(other) {
                    parsed.propagation.push(p);
                } else {
                    parsed.data.push(other.to_string());
                }
                continue;
            }
        };
        parsed.flags.insert(set);
        parsed.flags.remove(clear);
    }
    parsed
}

/// Joins `path` under `root` resolving symlinks inside `root`, so a
/// malicious image cannot point a mount destination at the host (what
/// runc's securejoin does).
pub(crate) fn secure_join(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut links = 0;
    while let Some(current) = pending.pop() {
        let mut components = current.components();
        while let Some(component) = components.next() {
            match component {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(name) => {
                    let candidate = resolved.join(name);
                    match fs::read_link(root.join(&candidate)) {
                        Ok(target) if links < 255 => {
                            links += 1;
                            if target.is_absolute() {
                                resolved = PathBuf::new();
                            }
                            pending.push(components.as_path().to_path_buf());
                            pending.push(target);
                            break;
                        }
                        _ => resolved = candidate,
                    }
                }
            }
        }
    }
    root.join(resolved)
}

fn mount_one(rootfs: &Path, m: &Mount, cgroups: &CgroupView) -> Result<()> {
    let dest = secure_join(rootfs, m.destination());
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let kind = m.typ().as_deref().unwrap_or("");
    let is_bind = kind == "bind" || options.flags.contains(MsFlags::MS_BIND);
    let describe = || format!("mounting {} at {}", kind, m.destination().display());

    if kind == "cgroup" || kind == "cgroup2" {
        return mount_cgroups(&dest, &options, cgroups);
    }
    if is_bind {
        let source = m
            .source()
            .as_deref()
            .ok_or_else(|| ContainerError::InvalidSpec {
                path: m.destination().clone(),
                reason: "a bind mount needs a source".into(),
            })?;
        let meta =
            fs::metadata(source).context(|| format!("bind mount source {}", source.display()))?;
        create_mount_point(&dest, meta.is_dir())?;
        let recursive = options.flags & MsFlags::MS_REC;
        mount(
            Some(source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | recursive,
            None::<&str>,
        )
        .context(|| {
            format!(
                "bind-mounting {} at {}",
                source.display(),
                m.destination().display()
            )
        })?;
        // Flags of a bind mount only take effect on a remount.
        let extra = options.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | recursive | extra,
                None::<&str>,
            )
            .context(|| format!("remounting {} with its options", m.destination().display()))?;
        }
    } else {
        create_mount_point(&dest, true)?;
        let data = options.data.join(",");
        let source = m
            .source()
            .as_deref()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| kind.into());
        mount(
            Some(&source),
            &dest,
            Some(kind),
            options.flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .context(describe)?;
    }
    for flag in &options.propagation {
        mount(None::<&str>, &dest, None::<&str>, *flag, None::<&str>)
            .context(|| format!("setting the propagation of {}", m.destination().display()))?;
    }
    Ok(())
}

/// `/sys/fs/cgroup` inside the container. v2: a cgroup2 mount (the
/// container's cgroup namespace roots it at its own cgroup). v1: a tmpfs with
/// each hierarchy's container directory bound in, as runc does.
fn mount_cgroups(dest: &Path, options: &MountOptions, cgroups: &CgroupView) -> Result<()> {
    create_mount_point(dest, true)?;
    let readonly = options.flags.contains(MsFlags::MS_RDONLY);
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if cgroups.v2 {
        let flags = if readonly {
            base | MsFlags::MS_RDONLY
        } else {
            base
        };
        return mount(Some("cgroup2"), dest, Some("cgroup2"), flags, None::<&str>)
            .context(|| "mounting cgroup2 at /sys/fs/cgroup".into());
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .context(|| "mounting a tmpfs at /sys/fs/cgroup".into())?;
    for (name, dir) in &cgroups.dirs {
        let target = dest.join(name);
        fs::create_dir_all(&target).context(|| format!("creating {}", target.display()))?;
        mount(
            Some(dir.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .context(|| format!("binding cgroup {} at /sys/fs/cgroup/{name}", dir.display()))?;
        if readonly {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
                None::<&str>,
            )
            .context(|| format!("making /sys/fs/cgroup/{name} read-only"))?;
        }
    }
    if readonly {
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
            Some("mode=755"),
        )
        .context(|| "making /sys/fs/cgroup read-only".into())?;
    }
    Ok(())
}

fn create_mount_point(dest: &Path, dir: bool) -> Result<()> {
    if dir {
        fs::create_dir_all(dest).context(|| format!("creating mount point {}", dest.display()))
    } else {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .context(|| format!("creating mount point {}", parent.display()))?;
        }
        if fs::symlink_metadata(dest).is_err() {
            fs::File::create(dest)
                .context(|| format!("creating mount point {}", dest.display()))?;
        }
        Ok(())
    }
}

fn has_dev_tmpfs(spec: &Spec) -> bool {
    spec.mounts()
        .iter()
        .flatten()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs"))
}

/// A device node to create in the container's /dev.
struct DeviceNode {
    path: PathBuf,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
}

fn create_devices(rootfs: &Path, extra: Option<&Vec<LinuxDevice>>) -> Result<()> {
    let mut devices: Vec<DeviceNode> = default_devices()
        .into_iter()
        .map(|(path, major, minor)| DeviceNode {
            path: PathBuf::from(path),
            kind: SFlag::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: None,
            gid: None,
        })
        .collect();
    for d in extra.into_iter().flatten() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(ContainerError::Unsupported(format!(
                    "device {} of type 'a'",
                    d.path().display()
                )))
            }
        };
        devices.retain(|existing| existing.path != *d.path());
        devices.push(DeviceNode {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid(),
            gid: d.gid(),
        });
    }
    for device in devices {
        let DeviceNode {
            path,
            kind,
            major,
            minor,
            mode,
            uid,
            gid,
        } = device;
        let dest = secure_join(rootfs, &path);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
        }
        let _ = fs::remove_file(&dest);
        mknod(
            &dest,
            kind,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .context(|| format!("creating device {}", path.display()))?;
        // mknod is subject to the umask; set the mode the spec asked for.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &dest,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .context(|| format!("setting the mode of {}", path.display()))?;
        if uid.is_some() || gid.is_some() {
            nix::unistd::chown(
                &dest,
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
            )
            .context(|| format!("setting the owner of {}", path.display()))?;
        }
    }
    Ok(())
}

fn dev_symlinks(rootfs: &Path) -> Result<()> {
    let mut links = vec![
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ];
    if rootfs.join("dev/pts").is_dir() {
        links.push(("pts/ptmx", "dev/ptmx"));
    }
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "dev/core"));
    }
    for (target, link) in links {
        let path = rootfs.join(link);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        symlink(target, &path).context(|| format!("creating the symlink /{link}"))?;
    }
    Ok(())
}

fn pivot(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).context(|| format!("entering {}", rootfs.display()))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; it is
    // then detached without needing a directory for it in the image.
    nix::unistd::pivot_root(".", ".").context(|| "pivot_root into the rootfs".into())?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .context(|| "making the old root a slave before detaching it".into())?;
    umount2(".", MntFlags::MNT_DETACH).context(|| "detaching the old root".into())?;
    nix::unistd::chdir("/").context(|| "entering the new root".into())
}

/// Hides a path: `/dev/null` over a file, an empty read-only tmpfs over a
/// directory. Paths that do not exist need no hiding.
fn mask(path: &str) -> Result<()> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(|| format!("masking {path}")),
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .context(|| format!("masking {path}"))
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .context(|| format!("masking {path}"))
    }
}

fn make_readonly(path: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() || meta.file_type().is_socket() => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(|| format!("making {path} read-only")),
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .context(|| format!("binding {path} to make it read-only"))?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_REC
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context(|| format!("making {path} read-only"))
}

/// Mounts an overlayfs of image layers (`lower`, bottom layer first) with a
/// writable `upper` and its `work` dir at `target`, in the caller's mount
/// namespace: the rootfs of a bundle, as containerd's snapshotter prepares it.
pub fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    if lower.is_empty() {
        return Err(ContainerError::Unsupported(
            "an image without layers cannot be a container's rootfs".into(),
        ));
    }
    for dir in [upper, work, target] {
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    }
    // overlayfs lists lower dirs top first.
    let lowers: Vec<String> = lower.iter().rev().map(|p| escape_overlay_path(p)).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        escape_overlay_path(upper),
        escape_overlay_path(work)
    );
    if data.len() >= 4096 {
        return Err(ContainerError::Unsupported(format!(
            "an image of {} layers: the overlay mount options exceed a page ({} bytes); \
             use a shorter --data-dir",
            lower.len(),
            data.len()
        )));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .context(|| format!("mounting the overlay rootfs at {}", target.display()))
}

/// overlayfs splits its options on ',' and lower dirs on ':'; both are
/// escaped with a backslash.
fn escape_overlay_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Unmounts a rootfs (lazily, so a process still inside cannot block it).
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).context(|| format!("unmounting {}", target.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let parsed = parse_options(&[
            "nosuid".into(),
            "strictatime".into(),
            "mode=755".into(),
            "size=65536k".into(),
            "rprivate".into(),
            "ro".into(),
        ]);
        assert_eq!(
            parsed.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY
        );
        assert_eq!(
            parsed.propagation,
            vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]
        );
        assert_eq!(parsed.data, vec!["mode=755", "size=65536k"]);
        let rw = parse_options(&["ro".into(), "rw".into(), "rbind".into()]);
        assert_eq!(rw.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }

    #[test]
    fn secure_join_keeps_symlinks_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("/etc", r.join("escape")).unwrap();
        symlink("../../..", r.join("usr/lib/up")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/escape/passwd")),
            r.join("etc/passwd")
        );
        assert_eq!(secure_join(r, Path::new("/usr/lib/up/x")), r.join("x"));
        assert_eq!(secure_join(r, Path::new("/../../x")), r.join("x"));
        assert_eq!(secure_join(r, Path::new("/lib/y")), r.join("usr/lib/y"));
        symlink("loop", r.join("loop")).unwrap();
        // A symlink loop ends after a bounded number of resolutions.
        let _ = secure_join(r, Path::new("/loop/z"));
    }

    #[test]
    fn overlay_paths_escape_separators() {
        assert_eq!(escape_overlay_path(Path::new("/a,b:c")), "/a\\,b\\:c");
    }
}
