//! Reading and writing cgroup control files.

use std::io::{self, Write};
use std::path::Path;

use crate::CgroupError;

fn io_error(path: &Path, source: io::Error) -> CgroupError {
    if source.kind() == io::ErrorKind::NotFound {
        CgroupError::MissingControlFile {
            path: path.to_path_buf(),
        }
    } else {
        CgroupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes a value to a control file. The file is never created: on cgroupfs a missing file means
/// the kernel does not offer the knob, and creating a plain file would hide that (runc opens the
/// same way: write-only, truncating, no O_CREAT). One write call, since the kernel parses each
/// write(2) as one value.
pub(crate) fn write_control(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| io_error(path, e))?;
    tracing::trace!(path = %path.display(), value, "wrote cgroup control file");
    Ok(())
}

/// Reads a control file that must exist.
pub(crate) fn read_control(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

/// Reads a control file that may be absent (a controller not enabled, a kernel feature missing).
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Parses a single unsigned number such as `memory.usage_in_bytes`.
pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        detail: format!("expected an unsigned number, found {:?}", text.trim()),
    })
}

/// The value of `key` in a flat keyed file (`key value` per line: memory.stat, cpu.stat,
/// memory.events, memory.oom_control). None when the key is absent.
pub(crate) fn keyed_value(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(key) {
            let value = fields.next().unwrap_or("");
            return parse_u64(path, value).map(Some);
        }
    }
    Ok(None)
}

/// Parses a pid list (`cgroup.procs`).
pub(crate) fn parse_pids(path: &Path, text: &str) -> Result<Vec<u32>, CgroupError> {
    text.split_whitespace()
        .map(|pid| {
            pid.parse().map_err(|_| CgroupError::Parse {
                path: path.to_path_buf(),
                detail: format!("expected a process id, found {pid:?}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let path = Path::new("memory.stat");
        let text = "inactive_file 4096\ntotal_inactive_file 8192\n";
        assert_eq!(
            keyed_value(path, text, "inactive_file").unwrap(),
            Some(4096)
        );
        assert_eq!(
            keyed_value(path, text, "total_inactive_file").unwrap(),
            Some(8192)
        );
        assert_eq!(keyed_value(path, text, "active_file").unwrap(), None);
        assert!(keyed_value(path, "inactive_file x\n", "inactive_file").is_err());
    }

    #[test]
    fn writing_never_creates_a_missing_control_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.max");
        let err = write_control(&path, "max").unwrap_err();
        assert!(
            matches!(err, CgroupError::MissingControlFile { .. }),
            "{err}"
        );
        assert!(!path.exists());
        std::fs::write(&path, "123456789").unwrap();
        write_control(&path, "max").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "max");
    }

    #[test]
    fn pid_lists_parse() {
        let path = Path::new("cgroup.procs");
        assert_eq!(parse_pids(path, "12\n7\n").unwrap(), vec![12, 7]);
        assert_eq!(parse_pids(path, "").unwrap(), Vec::<u32>::new());
        assert!(parse_pids(path, "12\nabc\n").is_err());
    }
}
