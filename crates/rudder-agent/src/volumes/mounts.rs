//! The host's mount table as the agent sees it (`/proc/self/mountinfo`), and
//! unmounting what the volume manager mounted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

/// One line of mountinfo: where, and what file system type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPoint {
    pub path: PathBuf,
    pub fs_type: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountPoint> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields.get(4)?;
            let separator = fields.iter().position(|f| *f == "-")?;
            let fs_type = fields.get(separator + 1)?;
            Some(MountPoint {
                path: PathBuf::from(unescape(mount_point)),
                fs_type: (*fs_type).to_string(),
            })
        })
        .collect()
}

/// The current mount table.
pub fn mount_table() -> io::Result<Vec<MountPoint>> {
    Ok(parse_mountinfo(&fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The type of the file system mounted exactly at `dir` (the topmost one),
/// or `None` when `dir` is not a mount point.
pub fn fs_type_at(dir: &Path) -> io::Result<Option<String>> {
    let dir = fs::canonicalize(dir)?;
    Ok(mount_table()?
        .into_iter()
        .rev()
        .find(|m| m.path == dir)
        .map(|m| m.fs_type))
}

/// The mount points at or below `root`, deepest first.
pub fn mounts_under(root: &Path) -> io::Result<Vec<PathBuf>> {
    let root = match fs::canonicalize(root) {
        Ok(root) => root,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut found: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.path)
        .filter(|p| p.starts_with(&root))
        .collect();
    // Each stacked mount is listed once per layer; later lines are on top.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// Unmounts every mount at or below `root`, deepest first; a busy mount is
/// detached lazily.
pub fn unmount_all_under(root: &Path) -> io::Result<()> {
    for path in mounts_under(root)? {
        match umount2(&path, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::EBUSY) => {
                umount2(&path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
            }
            Err(err) => return Err(io::Error::from(err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 0:50 / /var/lib/pods/u/volumes/kubernetes.io~empty-dir/with\\040space rw,relatime - tmpfs tmpfs rw,size=1024k
99 22 0:51 / /mnt/x rw master:3 shared:7 - overlay overlay rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].path, PathBuf::from("/"));
        assert_eq!(mounts[0].fs_type, "ext4");
        assert_eq!(
            mounts[1].path,
            PathBuf::from("/var/lib/pods/u/volumes/kubernetes.io~empty-dir/with space")
        );
        assert_eq!(mounts[1].fs_type, "tmpfs");
        assert_eq!(mounts[2].fs_type, "overlay");
    }
}
