//! Unpacks one layer tarball into a directory in overlayfs form, so the layers
//! can be stacked as overlay lower dirs: a `.wh.NAME` whiteout becomes a 0:0
//! character device `NAME`, and a `.wh..wh..opq` marker makes its directory
//! opaque (xattr `trusted.overlay.opaque=y`), as the OCI image spec's
//! "whiteouts" section maps them.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{makedev, mknodat, FileType, Mode, XattrFlags, CWD};

/// The xattr that marks a directory opaque for overlayfs.
pub const WHITEOUT_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Unpacks the (uncompressed) tar stream `layer` into the empty directory `dest`,
/// converting whiteouts. Fails on entries that would escape `dest`.
pub fn unpack_layer(layer: impl Read, dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    // Directory times change as their contents are written: set them last.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw_path = entry.path()?.into_owned();
        let Some(relative) = clean_path(&raw_path)? else {
            continue; // the layer's root itself: its attributes belong to the rootfs
        };
        let name = relative.file_name().unwrap_or_default();
        let parent = relative.parent().unwrap_or(Path::new(""));
        if name == OsStr::new(WHITEOUT_OPAQUE) {
            let dir = ensure_dir(dest, parent)?;
            rustix::fs::lsetxattr(&dir, WHITEOUT_OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| with_path(e.into(), "marking opaque", &dir))?;
            continue;
        }
        if name.as_bytes().starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            continue; // aufs bookkeeping (hard link dirs), meaningless to overlayfs
        }
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let dir = ensure_dir(dest, parent)?;
            let target = dir.join(OsStr::from_bytes(hidden));
            remove_existing(&target)?;
            mknodat(
                CWD,
                &target,
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| with_path(e.into(), "creating whiteout", &target))?;
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let target = dest.join(&relative);
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            // The tar crate writes these as regular files; make the real node.
            let dir = ensure_dir(dest, parent)?;
            let target = dir.join(name);
            let (file_type, dev) = if kind.is_fifo() {
                (FileType::Fifo, 0)
            } else {
                let major = header.device_major()?.unwrap_or(0);
                let minor = header.device_minor()?.unwrap_or(0);
                let file_type = if kind.is_character_special() {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (file_type, makedev(major, minor))
            };
            let mode = header.mode()? & 0o7777;
            remove_existing(&target)?;
            mknodat(CWD, &target, file_type, Mode::empty(), dev)
                .map_err(|e| with_path(e.into(), "creating device node", &target))?;
            lchown(
                &target,
                Some(header.uid()? as u32),
                Some(header.gid()? as u32),
            )
            .map_err(|e| with_path(e, "setting owner of", &target))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| with_path(e, "setting mode of", &target))?;
        } else {
            if kind.is_dir() {
                dir_times.push((target.clone(), header.mtime().unwrap_or(0)));
            }
            if !entry.unpack_in(dest)? {
                return Err(io::Error::other(format!(
                    "entry {} lies outside the layer",
                    raw_path.display()
                )));
            }
        }
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                if let Some(xattr) = extension
                    .key_bytes()
                    .strip_prefix(PAX_XATTR_PREFIX.as_bytes())
                {
                    rustix::fs::lsetxattr(
                        &target,
                        OsStr::from_bytes(xattr),
                        extension.value_bytes(),
                        XattrFlags::empty(),
                    )
                    .map_err(|e| with_path(e.into(), "setting xattr on", &target))?;
                }
            }
        }
    }
    for (dir, mtime) in dir_times.into_iter().rev() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
        if let Ok(handle) = fs::File::open(&dir) {
            let _ = handle.set_modified(time);
        }
    }
    Ok(())
}

/// The entry's path relative to the layer root, or `None` for the root itself.
/// Leading `/` and `./` are dropped (tar writers differ); `..` is refused.
fn clean_path(path: &Path) -> io::Result<Option<PathBuf>> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::other(format!(
                    "entry {} lies outside the layer",
                    path.display()
                )))
            }
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// Creates `relative` under `root` (mode 0755 where missing), refusing to pass
/// through symlinks so that no entry can write outside the layer.
fn ensure_dir(root: &Path, relative: &Path) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for part in relative.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory inside the layer",
                    dir.display()
                )))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(|e| with_path(e, "creating", &dir))?;
            }
            Err(error) => return Err(with_path(error, "inspecting", &dir)),
        }
    }
    Ok(dir)
}

fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn with_path(error: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A layer built in memory: (path, kind) entries.
    enum Item<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Symlink(&'a str, &'a str),
        CharDevice(&'a str, u32, u32),
    }

    fn layer(items: &[Item]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            match item {
                Item::Dir(path) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, path, io::empty()).unwrap();
                }
                Item::File(path, content) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(content.len() as u64);
                    builder
                        .append_data(&mut header, path, content.as_bytes())
                        .unwrap();
                }
                Item::Symlink(path, target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).unwrap();
                }
                Item::CharDevice(path, major, minor) => {
                    header.set_entry_type(tar::EntryType::Char);
                    header.set_mode(0o666);
                    header.set_size(0);
                    header.set_device_major(*major).unwrap();
                    header.set_device_minor(*minor).unwrap();
                    builder.append_data(&mut header, path, io::empty()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn is_whiteout(path: &Path) -> bool {
        let meta = fs::symlink_metadata(path).unwrap();
        meta.file_type().is_char_device() && meta.rdev() == 0
    }

    fn opaque(path: &Path) -> bool {
        let mut value = [0u8; 8];
        rustix::fs::lgetxattr(path, WHITEOUT_OPAQUE_XATTR, &mut value)
            .is_ok_and(|n| &value[..n] == b"y")
    }

    #[test]
    fn whiteout_files_become_char_devices() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            Item::Dir("data/"),
            Item::File("data/motd", "v2\n"),
            Item::File("data/.wh.gone.txt", ""),
            Item::File("./data/.wh.old", ""),
            Item::File("elsewhere/.wh.missing-parent", ""),
        ]);
        unpack_layer(&tar[..], dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("data/motd")).unwrap(),
            "v2\n"
        );
        assert!(is_whiteout(&dir.path().join("data/gone.txt")));
        assert!(is_whiteout(&dir.path().join("data/old")));
        assert!(is_whiteout(&dir.path().join("elsewhere/missing-parent")));
        assert!(!dir.path().join("data/.wh.gone.txt").exists());
    }

    #[test]
    fn opaque_markers_become_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            Item::Dir("etc/"),
            Item::Dir("etc/conf.d/"),
            Item::File("etc/conf.d/.wh..wh..opq", ""),
            Item::File("etc/conf.d/new.conf", "x"),
            Item::File("etc/.wh..wh.plnk", ""),
        ]);
        unpack_layer(&tar[..], dir.path()).unwrap();
        assert!(opaque(&dir.path().join("etc/conf.d")));
        assert!(!opaque(&dir.path().join("etc")));
        assert!(dir.path().join("etc/conf.d/new.conf").is_file());
        assert!(!dir.path().join("etc/conf.d/.wh..wh..opq").exists());
        assert!(!dir.path().join("etc/.wh..wh.plnk").exists());
    }

    #[test]
    fn keeps_symlinks_devices_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            Item::Dir("bin/"),
            Item::File("bin/busybox", "#!"),
            Item::Symlink("bin/sh", "busybox"),
            Item::Dir("dev/"),
            Item::CharDevice("dev/null", 1, 3),
        ]);
        unpack_layer(&tar[..], dir.path()).unwrap();
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let null = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert_eq!(null.mode() & 0o777, 0o666);
        let busybox = fs::metadata(dir.path().join("bin/busybox")).unwrap();
        assert_eq!(busybox.mode() & 0o777, 0o644);
        assert_eq!(
            fs::metadata(dir.path().join("bin")).unwrap().mtime(),
            1_700_000_000
        );
    }

    #[test]
    fn refuses_entries_escaping_the_layer() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let escape = outside.path().to_str().unwrap().to_string();
        let tar = layer(&[
            Item::Symlink("link", &escape),
            Item::File("link/.wh.victim", ""),
        ]);
        let error = unpack_layer(&tar[..], dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not a directory inside the layer"),
            "{error}"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

        let mut raw = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..", so write the name bytes directly
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        raw.append(&header, &b"x"[..]).unwrap();
        let tar = raw.into_inner().unwrap();
        assert!(unpack_layer(&tar[..], dir.path()).is_err());
    }
}
