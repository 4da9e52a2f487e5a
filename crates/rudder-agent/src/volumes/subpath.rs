//! `subPath` mounts: the sub path is created inside the volume when missing
//! (directories with the volume root's mode, as `SafeMakeDir`), and resolved
//! one component at a time so that no symlink can lead outside the volume.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why a sub path is refused.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    #[error("error SubPath `{0}` must not be an absolute path")]
    Absolute(String),
    #[error("unable to provision SubPath `{0}`: must not contain '..'")]
    Backsteps(String),
    #[error("subpath {path:?} not within volume path {volume:?}")]
    Escapes { path: PathBuf, volume: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks a sub path's syntax (`ValidatePathNoBacksteps`, not absolute).
pub fn validate(sub_path: &str) -> Result<(), SubPathError> {
    if sub_path.starts_with('/') {
        return Err(SubPathError::Absolute(sub_path.into()));
    }
    if sub_path.split('/').any(|p| p == "..") {
        return Err(SubPathError::Backsteps(sub_path.into()));
    }
    Ok(())
}

/// The host path of `sub_path` inside `volume`, created (as directories) if
/// missing. Every symlink met on the way must resolve inside the volume.
pub fn prepare(volume: &Path, sub_path: &str) -> Result<PathBuf, SubPathError> {
    validate(sub_path)?;
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| SubPathError::Io { op, path, source }
    };
    let root = fs::canonicalize(volume).map_err(io_err("resolve", volume))?;
    let perm = fs::metadata(&root)
        .map_err(io_err("stat", &root))?
        .permissions()
        .mode()
        & 0o7777;
    let mut current = root.clone();
    for component in Path::new(sub_path).components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let next = current.join(name);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let resolved = fs::canonicalize(&next).map_err(io_err("resolve", &next))?;
                if !resolved.starts_with(&root) {
                    return Err(SubPathError::Escapes {
                        path: next,
                        volume: root,
                    });
                }
                current = resolved;
            }
            Ok(_) => current = next,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(perm).create(&next) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(io_err("mkdir", &next)(err)),
                }
                // The lstat after mkdir: a symlink raced in is refused.
                let meta = fs::symlink_metadata(&next).map_err(io_err("lstat", &next))?;
                if !meta.is_dir() {
                    return Err(SubPathError::Escapes {
                        path: next,
                        volume: root,
                    });
                }
                fs::set_permissions(&next, fs::Permissions::from_mode(perm))
                    .map_err(io_err("chmod", &next))?;
                current = next;
            }
            Err(err) => return Err(io_err("lstat", &next)(err)),
        }
    }
    if !current.starts_with(&root) {
        return Err(SubPathError::Escapes {
            path: current,
            volume: root,
        });
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn creates_missing_sub_paths_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("vol");
        fs::create_dir(&volume).unwrap();
        fs::set_permissions(&volume, fs::Permissions::from_mode(0o777)).unwrap();
        let path = prepare(&volume, "a/b").unwrap();
        assert_eq!(path, fs::canonicalize(&volume).unwrap().join("a/b"));
        assert!(path.is_dir());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o777
        );
        // An existing file as the sub path.
        fs::write(volume.join("file"), "x").unwrap();
        assert!(prepare(&volume, "file").unwrap().is_file());
        // A symlink that stays inside is followed.
        symlink("a", volume.join("inside")).unwrap();
        assert_eq!(
            prepare(&volume, "inside/b").unwrap(),
            fs::canonicalize(&volume).unwrap().join("a/b")
        );
    }

    #[test]
    fn refuses_to_escape_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("vol");
        let outside = dir.path().join("outside");
        fs::create_dir(&volume).unwrap();
        fs::create_dir(&outside).unwrap();
        symlink(&outside, volume.join("out")).unwrap();
        symlink("../outside", volume.join("rel")).unwrap();
        symlink("/etc", volume.join("etc")).unwrap();
        for sub in ["out", "out/new", "rel", "etc/passwd"] {
            let err = prepare(&volume, sub).unwrap_err();
            assert!(matches!(err, SubPathError::Escapes { .. }), "{sub}: {err}");
        }
        // Nothing was created outside.
        assert!(!outside.join("new").exists());
        assert!(matches!(
            prepare(&volume, "../outside").unwrap_err(),
            SubPathError::Backsteps(_)
        ));
        assert!(matches!(
            prepare(&volume, "/etc").unwrap_err(),
            SubPathError::Absolute(_)
        ));
    }
}
