//! The kubelet's atomic writer (`pkg/volume/util/atomic_writer.go`): the
//! files of a configMap, secret, downward API or projected volume live in a
//! hidden timestamped directory (`..2024_05_01_10_20_30.123456789`); the
//! `..data` symlink points at it and every top-level name of the payload is a
//! symlink `name -> ..data/name`. An update writes a new timestamped
//! directory and swaps `..data` with one `rename`, so readers see either the
//! old or the new set of files, never a mix; an unchanged payload writes
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The symlink to the current data directory.
pub const DATA_DIR_NAME: &str = "..data";
/// The symlink renamed over [`DATA_DIR_NAME`].
pub const NEW_DATA_DIR_NAME: &str = "..data_tmp";

const MAX_FILE_NAME_LENGTH: usize = 255;
const MAX_PATH_LENGTH: usize = 4096;

/// One file of a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (`defaultMode`, an item's `mode`).
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Applies ownership and permissions to the target directory (fsGroup).
pub type SetPerms<'a> = &'a dyn Fn(&Path) -> io::Result<()>;

#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AtomicWriteError + 'a {
    move |source| AtomicWriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes payloads into one target directory (which must exist). Not
/// synchronised: the caller serialises writes to one directory.
pub struct AtomicWriter {
    target_dir: PathBuf,
}

/// What a [`AtomicWriter::write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new data directory was written and `..data` swapped to it.
    Written,
    /// The payload equals what is on disk; nothing was written.
    Unchanged,
}

impl AtomicWriter {
    pub fn new(target_dir: impl Into<PathBuf>) -> AtomicWriter {
        AtomicWriter {
            target_dir: target_dir.into(),
        }
    }

    /// Projects `payload` into the target directory. `set_perms` runs on the
    /// target directory once the new data is written and before it becomes
    /// visible (the kubelet applies fsGroup ownership there).
    pub fn write(
        &self,
        payload: &Payload,
        set_perms: Option<SetPerms<'_>>,
    ) -> Result<WriteOutcome, AtomicWriteError> {
        let payload = validate_payload(payload)?;
        let data_dir_path = self.target_dir.join(DATA_DIR_NAME);
        let old_ts_dir = match fs::read_link(&data_dir_path) {
            Ok(target) => Some(target),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(io_err("readlink", &data_dir_path)(err)),
        };
        let old_ts_path = old_ts_dir.as_ref().map(|d| self.target_dir.join(d));

        let mut paths_to_remove = BTreeSet::new();
        if let Some(old) = &old_ts_path {
            paths_to_remove = paths_to_remove_after(&payload, old)?;
            if !should_write_payload(&payload, old) && paths_to_remove.is_empty() {
                // Pod restarts: the data is current, but make sure the
                // user-visible links exist.
                self.create_user_visible_files(&payload)?;
                return Ok(WriteOutcome::Unchanged);
            }
        }

        let ts_dir = self.new_timestamp_dir()?;
        let ts_name = ts_dir
            .file_name()
            .expect("a timestamped dir has a name")
            .to_os_string();
        let cleanup = |err: AtomicWriteError| {
            let _ = fs::remove_dir_all(&ts_dir);
            err
        };
        write_payload_to_dir(&payload, &ts_dir).map_err(cleanup)?;
        if let Some(set_perms) = set_perms {
            set_perms(&self.target_dir)
                .map_err(io_err("set permissions on", &self.target_dir))
                .map_err(cleanup)?;
        }

        let new_data_dir_path = self.target_dir.join(NEW_DATA_DIR_NAME);
        // A leftover from an interrupted write would make symlink() fail.
        let _ = fs::remove_file(&new_data_dir_path);
        std::os::unix::fs::symlink(&ts_name, &new_data_dir_path)
            .map_err(io_err("symlink", &new_data_dir_path))
            .map_err(cleanup)?;
        if let Err(err) = fs::rename(&new_data_dir_path, &data_dir_path) {
            let _ = fs::remove_file(&new_data_dir_path);
            return Err(cleanup(io_err("rename", &new_data_dir_path)(err)));
        }

        self.create_user_visible_files(&payload)?;
        self.remove_user_visible_paths(&paths_to_remove)?;
        if let Some(old) = old_ts_path {
            // `..data` may have pointed at the new name already only if the
            // clock and the random suffix repeated; never remove the live dir.
            if old_ts_dir.as_deref() != Some(Path::new(&ts_name)) {
                fs::remove_dir_all(&old).map_err(io_err("remove", &old))?;
            }
        }
        Ok(WriteOutcome::Written)
    }

    /// A fresh `..YYYY_MM_DD_HH_MM_SS.<random>` directory, mode 0755.
    fn new_timestamp_dir(&self) -> Result<PathBuf, AtomicWriteError> {
        let prefix = jiff::Timestamp::now()
            .strftime("..%Y_%m_%d_%H_%M_%S.")
            .to_string();
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0)
            ^ std::process::id().rotate_left(16);
        for _ in 0..10_000 {
            // A xorshift step per attempt, as MkdirTemp retries on collision.
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let path = self.target_dir.join(format!("{prefix}{seed}"));
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &path))?;
                    return Ok(path);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(io_err("mkdir", &path)(err)),
            }
        }
        Err(AtomicWriteError::Io {
            op: "mkdir",
            path: self.target_dir.join(prefix),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "no free name"),
        })
    }

    /// `name -> ..data/name` for each top-level name of the payload.
    fn create_user_visible_files(&self, payload: &Payload) -> Result<(), AtomicWriteError> {
        for path in payload.keys() {
            let top = path.split('/').next().expect("split yields one item");
            let visible = self.target_dir.join(top);
            match fs::symlink_metadata(&visible) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    std::os::unix::fs::symlink(Path::new(DATA_DIR_NAME).join(top), &visible)
                        .map_err(io_err("symlink", &visible))?;
                }
                Err(err) => return Err(io_err("lstat", &visible)(err)),
            }
        }
        Ok(())
    }

    /// Removes the top-level links of paths no longer in the payload.
    fn remove_user_visible_paths(&self, paths: &BTreeSet<String>) -> Result<(), AtomicWriteError> {
        let mut last = Ok(());
        for path in paths.iter().filter(|p| !p.contains('/')) {
            let visible = self.target_dir.join(path);
            if let Err(err) = fs::remove_file(&visible) {
                if err.kind() != io::ErrorKind::NotFound {
                    last = Err(io_err("remove", &visible)(err));
                }
            }
        }
        last
    }
}

/// Checks every path and returns the payload with cleaned paths.
fn validate_payload(payload: &Payload) -> Result<Payload, AtomicWriteError> {
    let mut clean = Payload::new();
    for (path, file) in payload {
        validate_path(path)?;
        clean.insert(clean_path(path), file.clone());
    }
    Ok(clean)
}

/// A payload path may not be empty, absolute, longer than 4096 bytes,
/// contain `..` or a name longer than 255 bytes, or start with `..`.
pub fn validate_path(path: &str) -> Result<(), AtomicWriteError> {
    if path.is_empty() {
        return Err(AtomicWriteError::InvalidPath(format!(
            "must not be empty: {path:?}"
        )));
    }
    if path.starts_with('/') {
        return Err(AtomicWriteError::InvalidPath(format!(
            "must be relative path: {path}"
        )));
    }
    if path.len() > MAX_PATH_LENGTH {
        return Err(AtomicWriteError::InvalidPath(format!(
            "must be less than or equal to {MAX_PATH_LENGTH} characters"
        )));
    }
    let items: Vec<&str> = path.split('/').collect();
    for item in &items {
        if *item == ".." {
            return Err(AtomicWriteError::InvalidPath(format!(
                "must not contain '..': {path}"
            )));
        }
        if item.len() > MAX_FILE_NAME_LENGTH {
            return Err(AtomicWriteError::InvalidPath(format!(
                "filenames must be less than or equal to {MAX_FILE_NAME_LENGTH} characters"
            )));
        }
    }
    if items[0].starts_with("..") && items[0].len() > 2 {
        return Err(AtomicWriteError::InvalidPath(format!(
            "must not start with '..': {path}"
        )));
    }
    Ok(())
}

/// `filepath.Clean` for a validated relative path.
fn clean_path(path: &str) -> String {
    let parts: Vec<&str> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// Whether any file of the payload differs from (or is missing in) the
/// current data directory. Like the kubelet, only contents are compared.
fn should_write_payload(payload: &Payload, old_ts_dir: &Path) -> bool {
    payload.iter().any(|(path, file)| {
        let on_disk = old_ts_dir.join(path);
        match fs::symlink_metadata(&on_disk) {
            Err(_) => true,
            Ok(_) => fs::read(&on_disk).map_or(true, |data| data != file.data),
        }
    })
}

/// The paths of the current data directory that the payload no longer has
/// (directories that still hold payload files excepted).
fn paths_to_remove_after(
    payload: &Payload,
    old_ts_dir: &Path,
) -> Result<BTreeSet<String>, AtomicWriteError> {
    let mut existing = BTreeSet::new();
    if let Err(err) = walk(old_ts_dir, old_ts_dir, &mut existing) {
        if err.kind() == io::ErrorKind::NotFound {
            return Ok(BTreeSet::new());
        }
        return Err(io_err("walk", old_ts_dir)(err));
    }
    let mut wanted = BTreeSet::new();
    for path in payload.keys() {
        let mut sub = path.as_str();
        loop {
            wanted.insert(sub.to_string());
            match sub.rfind('/') {
                Some(i) => sub = &sub[..i],
                None => break,
            }
        }
    }
    Ok(existing.difference(&wanted).cloned().collect())
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if let Ok(relative) = path.strip_prefix(root) {
            out.insert(relative.to_string_lossy().into_owned());
        }
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

fn write_payload_to_dir(payload: &Payload, dir: &Path) -> Result<(), AtomicWriteError> {
    for (path, file) in payload {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).map_err(io_err("mkdir", parent))?;
        }
        fs::write(&full, &file.data).map_err(io_err("write", &full))?;
        // The mode regardless of the umask.
        fs::set_permissions(&full, fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io_err("chmod", &full))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn data_target(dir: &Path) -> PathBuf {
        fs::read_link(dir.join(DATA_DIR_NAME)).unwrap()
    }

    #[test]
    fn writes_the_kubelet_layout_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        let payload = Payload::from([
            ("mode".to_string(), file("fast", 0o644)),
            ("token".to_string(), file("s3cret", 0o400)),
            ("nested/deep/file".to_string(), file("x", 0o600)),
        ]);
        assert_eq!(writer.write(&payload, None).unwrap(), WriteOutcome::Written);

        let ts = data_target(dir.path());
        let ts_name = ts.to_str().unwrap();
        assert!(ts_name.starts_with("..20"), "{ts_name}");
        // ..YYYY_MM_DD_HH_MM_SS.<random>
        assert_eq!(ts_name.split('.').nth(2).unwrap().len(), 19, "{ts_name}");
        assert_eq!(
            fs::read_link(dir.path().join("mode")).unwrap(),
            Path::new("..data/mode")
        );
        assert_eq!(
            fs::read_link(dir.path().join("nested")).unwrap(),
            Path::new("..data/nested")
        );
        assert_eq!(fs::read_to_string(dir.path().join("mode")).unwrap(), "fast");
        assert_eq!(
            fs::read_to_string(dir.path().join("nested/deep/file")).unwrap(),
            "x"
        );
        let mode = |p: &str| fs::metadata(dir.path().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("mode"), 0o644);
        assert_eq!(mode("token"), 0o400);
        assert_eq!(mode("nested/deep/file"), 0o600);
        assert_eq!(
            fs::metadata(dir.path().join(&ts)).unwrap().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn an_update_swaps_data_and_an_unchanged_payload_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        let first = Payload::from([
            ("mode".to_string(), file("fast", 0o644)),
            ("level".to_string(), file("3", 0o644)),
        ]);
        writer.write(&first, None).unwrap();
        let ts1 = data_target(dir.path());

        // The same payload again: no new directory, same target.
        assert_eq!(writer.write(&first, None).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(data_target(dir.path()), ts1);

        // A changed value and a removed key: a new directory, the old one gone,
        // the removed key's link gone.
        let second = Payload::from([("mode".to_string(), file("slow", 0o644))]);
        assert_eq!(writer.write(&second, None).unwrap(), WriteOutcome::Written);
        let ts2 = data_target(dir.path());
        assert_ne!(ts1, ts2);
        assert!(!dir.path().join(&ts1).exists());
        assert_eq!(fs::read_to_string(dir.path().join("mode")).unwrap(), "slow");
        assert!(fs::symlink_metadata(dir.path().join("level")).is_err());
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected = vec![
            "..data".to_string(),
            ts2.to_str().unwrap().to_string(),
            "mode".to_string(),
        ];
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn restores_missing_user_visible_links_without_rewriting() {
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        let payload = Payload::from([("a".to_string(), file("1", 0o644))]);
        writer.write(&payload, None).unwrap();
        let ts = data_target(dir.path());
        fs::remove_file(dir.path().join("a")).unwrap();
        assert_eq!(
            writer.write(&payload, None).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(data_target(dir.path()), ts);
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "1");
    }

    #[test]
    fn set_perms_runs_before_the_swap() {
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        let payload = Payload::from([("a".to_string(), file("1", 0o644))]);
        let seen = std::cell::Cell::new(false);
        let check = |target: &Path| {
            // The new data exists, `..data` does not point at it yet.
            assert!(fs::read_link(target.join(DATA_DIR_NAME)).is_err());
            seen.set(true);
            Ok(())
        };
        writer.write(&payload, Some(&check)).unwrap();
        assert!(seen.get());
    }

    #[test]
    fn rejects_invalid_paths() {
        for bad in ["", "/abs", "a/../b", "..", "..hidden", "../x"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b", "a..b", ".dot", "a/.."[..2].as_ref()] {
            assert!(validate_path(good).is_ok(), "{good:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        let payload = Payload::from([("../escape".to_string(), file("x", 0o644))]);
        assert!(matches!(
            writer.write(&payload, None),
            Err(AtomicWriteError::InvalidPath(_))
        ));
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
