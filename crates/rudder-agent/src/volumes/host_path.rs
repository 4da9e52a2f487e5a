//! `hostPath` volumes (and hostPath PersistentVolumes): the host's path
//! itself, after the kubelet's type check (`checkType`): `DirectoryOrCreate`
//! and `FileOrCreate` create what is missing (0755 directories, an empty 0644
//! file), the other types only check.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The kubelet's name for what is at a path (`hu.GetFileType`).
fn file_type(path: &Path) -> io::Result<&'static str> {
    let kind = fs::metadata(path)?.file_type();
    Ok(if kind.is_dir() {
        "Directory"
    } else if kind.is_file() {
        "File"
    } else if kind.is_socket() {
        "Socket"
    } else if kind.is_char_device() {
        "CharDevice"
    } else if kind.is_block_device() {
        "BlockDevice"
    } else {
        "Unknown"
    })
}

/// Validates `path` (no `..` elements, as `ValidatePathNoBacksteps`) and
/// checks or creates it according to `path_type` (`None` or `""`: nothing).
/// Errors are worded as the kubelet's.
pub fn check(path: &str, path_type: Option<&str>) -> Result<(), String> {
    if path.split('/').any(|part| part == "..") {
        return Err(format!("invalid HostPath `{path}`: must not contain '..'"));
    }
    let path_type = path_type.unwrap_or("");
    let p = Path::new(path);
    let exists = fs::metadata(p).is_ok();
    let (expected, description) = match path_type {
        "" => return Ok(()),
        "DirectoryOrCreate" => {
            if !exists {
                return make_dir(p);
            }
            ("Directory", "directory")
        }
        "Directory" => ("Directory", "directory"),
        "FileOrCreate" => {
            if !exists {
                return make_file(p);
            }
            ("File", "file")
        }
        "File" => ("File", "file"),
        "Socket" => ("Socket", "socket file"),
        "CharDevice" => ("CharDevice", "character device"),
        "BlockDevice" => ("BlockDevice", "block device"),
        other => return Err(format!("{other} is an invalid volume type")),
    };
    if !exists {
        return Err(format!("hostPath {path} doesn't exist"));
    }
    match file_type(p) {
        Ok(actual) if actual == expected => Ok(()),
        Ok(actual) => Err(format!(
            "hostPath type check failed: {path} is not a {description}, it's a {actual}"
        )),
        Err(err) => Err(format!(
            "hostPath type check failed, {path} is not a {description}, unable to determine its type: {err}"
        )),
    }
}

fn make_dir(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(format!("mkdir {}: {err}", path.display())),
    }
}

fn make_file(path: &Path) -> Result<(), String> {
    match fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(format!("open {}: {err}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn or_create_types_create_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b/c");
        check(d.to_str().unwrap(), Some("DirectoryOrCreate")).unwrap();
        assert!(d.is_dir());
        // 0755, less the umask.
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o7777 & !0o755,
            0
        );
        // Existing: checked, not recreated.
        check(d.to_str().unwrap(), Some("DirectoryOrCreate")).unwrap();

        let f = dir.path().join("file");
        check(f.to_str().unwrap(), Some("FileOrCreate")).unwrap();
        assert!(f.is_file());
        fs::write(&f, "kept").unwrap();
        check(f.to_str().unwrap(), Some("FileOrCreate")).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "kept");

        // OrCreate on the wrong kind of existing thing fails.
        let err = check(f.to_str().unwrap(), Some("DirectoryOrCreate")).unwrap_err();
        assert_eq!(
            err,
            format!(
                "hostPath type check failed: {} is not a directory, it's a File",
                f.display()
            )
        );
        let err = check(d.to_str().unwrap(), Some("FileOrCreate")).unwrap_err();
        assert!(err.contains("is not a file, it's a Directory"), "{err}");
    }

    #[test]
    fn strict_types_only_check() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = check(missing.to_str().unwrap(), Some("Directory")).unwrap_err();
        assert_eq!(err, format!("hostPath {} doesn't exist", missing.display()));
        assert!(!missing.exists());
        assert!(check(missing.to_str().unwrap(), Some("File")).is_err());

        check(dir.path().to_str().unwrap(), Some("Directory")).unwrap();
        let err = check(dir.path().to_str().unwrap(), Some("File")).unwrap_err();
        assert!(err.ends_with("is not a file, it's a Directory"), "{err}");

        let sock_path = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        check(sock_path.to_str().unwrap(), Some("Socket")).unwrap();
        let err = check(sock_path.to_str().unwrap(), Some("File")).unwrap_err();
        assert!(err.ends_with("it's a Socket"), "{err}");

        check("/dev/null", Some("CharDevice")).unwrap();
        let err = check("/dev/null", Some("BlockDevice")).unwrap_err();
        assert_eq!(
            err,
            "hostPath type check failed: /dev/null is not a block device, it's a CharDevice"
        );
        let err = check(dir.path().to_str().unwrap(), Some("Socket")).unwrap_err();
        assert!(err.contains("is not a socket file"), "{err}");

        // No type: nothing is checked, even for a missing path.
        check(missing.to_str().unwrap(), None).unwrap();
        check(missing.to_str().unwrap(), Some("")).unwrap();
        assert_eq!(
            check("/tmp", Some("Bogus")).unwrap_err(),
            "Bogus is an invalid volume type"
        );
        assert!(check("/tmp/../etc", None).unwrap_err().contains("'..'"));
    }
}
