//! Who the container's process runs as, with the semantics of Kubernetes on containerd:
//! `runAsUser`/`runAsGroup` override the image's `USER`; user and group names are looked up in
//! the container's own `/etc/passwd` and `/etc/group` (never the host's); without a group the
//! user's primary group from `/etc/passwd` applies (0 when the uid has no entry); the additional
//! groups are the primary group, the groups of `/etc/group` that list the user's name, and the
//! pod's `supplementalGroups`.

use std::io;
use std::path::Path;

use oci_spec::runtime::User;

use super::ProcessError;

/// One line of `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of `/etc/group`: `name:password:gid:member,member`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves the process user of a container.
///
/// `image_user` is the image config's `USER`: `"1000"`, `"1000:1000"`, `"app"`, `"app:staff"` or
/// `""`/`None` for root. When `run_as_user` is set the image's `USER` is ignored entirely (as
/// containerd does), so its group then comes from `run_as_group` or from `/etc/passwd`.
pub fn resolve_user(
    rootfs: &Path,
    image_user: Option<&str>,
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    supplemental_groups: &[u32],
) -> Result<User, ProcessError> {
    let passwd = read_passwd(&rootfs.join("etc/passwd"))?;
    let groups = read_group(&rootfs.join("etc/group"))?;

    let image_user = image_user.map(str::trim).filter(|spec| !spec.is_empty());
    let (image_user_part, image_group_part) = match image_user {
        None => (None, None),
        Some(spec) => match spec.split_once(':') {
            Some((user, group)) => (Some(user), Some(group).filter(|g| !g.is_empty())),
            None => (Some(spec), None),
        },
    };
    if let Some(spec) = image_user {
        if image_user_part == Some("") {
            return Err(ProcessError::InvalidUser {
                spec: spec.to_string(),
                reason: "a group without a user".to_string(),
            });
        }
    }

    let entry: Option<&PasswdEntry>;
    let uid = match (run_as_user, image_user_part) {
        (Some(uid), _) => {
            entry = passwd.iter().find(|e| e.uid == uid);
            uid
        }
        (None, Some(user)) => match user.parse::<u32>() {
            Ok(uid) => {
                entry = passwd.iter().find(|e| e.uid == uid);
                uid
            }
            Err(_) => {
                let found = passwd
                    .iter()
                    .find(|e| e.name == user)
                    .ok_or_else(|| ProcessError::UnknownUser(user.to_string()))?;
                entry = Some(found);
                found.uid
            }
        },
        (None, None) => {
            entry = passwd.iter().find(|e| e.uid == 0);
            0
        }
    };

    // The image's group only counts when the image's user does.
    let image_group_part = if run_as_user.is_some() {
        None
    } else {
        image_group_part
    };
    let gid = match (run_as_group, image_group_part) {
        (Some(gid), _) => gid,
        (None, Some(group)) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .ok_or_else(|| ProcessError::UnknownGroup(group.to_string()))?
                    .gid
            }
        },
        (None, None) => entry.map_or(0, |e| e.gid),
    };

    // containerd puts the primary group first so that it survives setgroups().
    let mut additional_gids = vec![gid];
    if let Some(entry) = entry {
        for group in &groups {
            if group.members.iter().any(|member| member == &entry.name) {
                additional_gids.push(group.gid);
            }
        }
    }
    additional_gids.extend_from_slice(supplemental_groups);
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|gid| seen.insert(*gid));

    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    user.set_additional_gids(Some(additional_gids));
    user.set_username(entry.map(|e| e.name.clone()));
    Ok(user)
}

/// The text of a file of the container, or an empty one when it does not exist: images such as
/// `scratch`-based ones have no `/etc/passwd`, and numeric users still work there.
fn read_optional(path: &Path) -> Result<String, ProcessError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ProcessError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Lines that are neither blank nor comments; malformed ones are skipped as libc does.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').collect())
}

fn read_passwd(path: &Path) -> Result<Vec<PasswdEntry>, ProcessError> {
    Ok(parse_passwd(&read_optional(path)?))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter_map(|fields| {
            if fields.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
            })
        })
        .collect()
}

fn read_group(path: &Path) -> Result<Vec<GroupEntry>, ProcessError> {
    Ok(parse_group(&read_optional(path)?))
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter_map(|fields| {
            if fields.len() < 3 {
                return None;
            }
            let members = fields
                .get(3)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1001:App:/home/app:/bin/sh
broken line without fields
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1001:
staff:x:50:app
audio:x:29:daemon
nogroup:x:65534:
";

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        if let Some(passwd) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        }
        if let Some(group) = group {
            std::fs::write(dir.path().join("etc/group"), group).unwrap();
        }
        dir
    }

    fn ids(user: &User) -> (u32, u32, Vec<u32>) {
        (
            user.uid(),
            user.gid(),
            user.additional_gids().clone().unwrap_or_default(),
        )
    }

    #[test]
    fn no_user_means_root_with_roots_groups() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        for image_user in [None, Some(""), Some("  ")] {
            let user = resolve_user(fs.path(), image_user, None, None, &[]).unwrap();
            assert_eq!(ids(&user), (0, 0, vec![0, 10]));
            assert_eq!(user.username().as_deref(), Some("root"));
        }
    }

    #[test]
    fn named_user_takes_its_primary_group_and_memberships() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let user = resolve_user(fs.path(), Some("app"), None, None, &[]).unwrap();
        assert_eq!(ids(&user), (1000, 1001, vec![1001, 10, 50]));
        assert_eq!(user.username().as_deref(), Some("app"));
    }

    #[test]
    fn numeric_user_is_looked_up_for_its_group_and_name() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let user = resolve_user(fs.path(), Some("1000"), None, None, &[]).unwrap();
        assert_eq!(ids(&user), (1000, 1001, vec![1001, 10, 50]));
    }

    #[test]
    fn numeric_user_without_entry_gets_group_zero() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let user = resolve_user(fs.path(), Some("4242"), None, None, &[]).unwrap();
        assert_eq!(ids(&user), (4242, 0, vec![0]));
        assert_eq!(user.username(), &None);
    }

    #[test]
    fn user_and_group_pairs() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let user = resolve_user(fs.path(), Some("app:staff"), None, None, &[]).unwrap();
        assert_eq!(ids(&user), (1000, 50, vec![50, 10]));
        let user = resolve_user(fs.path(), Some("1000:1000"), None, None, &[]).unwrap();
        assert_eq!(ids(&user), (1000, 1000, vec![1000, 10, 50]));
        let user = resolve_user(fs.path(), Some("5000:7000"), None, None, &[]).unwrap();
        assert_eq!(ids(&user), (5000, 7000, vec![7000]));
    }

    #[test]
    fn run_as_user_overrides_the_image_user_and_its_group() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let user = resolve_user(fs.path(), Some("app:staff"), Some(1), None, &[]).unwrap();
        assert_eq!(ids(&user), (1, 1, vec![1, 29]));
        assert_eq!(user.username().as_deref(), Some("daemon"));
    }

    #[test]
    fn run_as_group_overrides_any_group() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let user = resolve_user(fs.path(), Some("app:staff"), None, Some(3000), &[]).unwrap();
        assert_eq!(ids(&user), (1000, 3000, vec![3000, 10, 50]));
        let user = resolve_user(fs.path(), None, Some(2000), Some(3000), &[]).unwrap();
        assert_eq!(ids(&user), (2000, 3000, vec![3000]));
    }

    #[test]
    fn supplemental_groups_are_appended_without_duplicates() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let user = resolve_user(fs.path(), Some("app"), None, None, &[50, 4000, 1001]).unwrap();
        assert_eq!(ids(&user), (1000, 1001, vec![1001, 10, 50, 4000]));
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let err = resolve_user(fs.path(), Some("ghost"), None, None, &[]).unwrap_err();
        assert!(matches!(&err, ProcessError::UnknownUser(name) if name == "ghost"));
        assert!(err.to_string().contains("ghost"), "{err}");
        let err = resolve_user(fs.path(), Some("app:ghosts"), None, None, &[]).unwrap_err();
        assert!(matches!(&err, ProcessError::UnknownGroup(name) if name == "ghosts"));
        let err = resolve_user(fs.path(), Some(":50"), None, None, &[]).unwrap_err();
        assert!(matches!(err, ProcessError::InvalidUser { .. }));
    }

    #[test]
    fn images_without_passwd_files_accept_numeric_users_only() {
        let fs = rootfs(None, None);
        let user = resolve_user(fs.path(), Some("65532:65532"), None, None, &[7]).unwrap();
        assert_eq!(ids(&user), (65532, 65532, vec![65532, 7]));
        let user = resolve_user(fs.path(), None, None, None, &[]).unwrap();
        assert_eq!(ids(&user), (0, 0, vec![0]));
        let err = resolve_user(fs.path(), Some("nonroot"), None, None, &[]).unwrap_err();
        assert!(matches!(err, ProcessError::UnknownUser(_)));
    }

    #[test]
    fn unreadable_passwd_is_an_error() {
        let fs = rootfs(None, Some(GROUP));
        // A directory where the file should be cannot be read.
        std::fs::create_dir(fs.path().join("etc/passwd")).unwrap();
        let err = resolve_user(fs.path(), Some("app"), None, None, &[]).unwrap_err();
        assert!(matches!(err, ProcessError::Read { .. }), "{err}");
    }
}
