//! Switching the init process to the container's identity and privileges, in the order runc
//! uses, just before `execve`.

use std::str::FromStr;

use nix::sys::prctl;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, LinuxSeccomp, User};

use super::{seccomp, ProcessError};

/// The identity and privileges of a container's process (the `process` part of an OCI spec
/// that concerns security).
#[derive(Debug, Clone, Copy)]
pub struct ProcessSecurity<'a> {
    pub user: &'a User,
    /// `None` leaves the capability sets alone (the kernel's rules for `setuid` then apply: a
    /// non-root user ends up with none).
    pub capabilities: Option<&'a LinuxCapabilities>,
    pub no_new_privileges: bool,
    pub seccomp: Option<&'a LinuxSeccomp>,
}

/// Applies `security` to the calling process. Meant for the single-threaded init of a
/// container: `setresuid`/`setresgid` change the whole process, capabilities and seccomp only the
/// calling thread.
///
/// The order matters, as in runc:
/// 1. the seccomp profile is compiled first, so an unsupported profile fails before anything
///    changes;
/// 2. the umask is set;
/// 3. the bounding set is reduced while the process is still root with `CAP_SETPCAP`;
/// 4. `PR_SET_KEEPCAPS` keeps the permitted set across the change of user, then the additional
///    groups, the group and the user are set (`setgroups`, `setresgid`, `setresuid`) and
///    `PR_SET_KEEPCAPS` is cleared again;
/// 5. the inheritable, effective and permitted sets are set (in that order, each a subset of
///    what the previous step allows), then the ambient set;
/// 6. `no_new_privs` when asked;
/// 7. the seccomp filter, last, so that it need not allow the syscalls of the steps above.
///
/// Loading a filter requires `no_new_privs` or `CAP_SYS_ADMIN`; runc therefore loads it before
/// dropping capabilities when it must not set `no_new_privs`. Rudder's installation goes through
/// seccompiler's safe `apply_filter`, which always sets `no_new_privs` before loading, so the
/// filter can always come last, and a container with a seccomp profile always runs with
/// `no_new_privs` (a set-user-ID program in it gains no privileges), even when
/// `no_new_privileges` is false.
pub fn apply(security: &ProcessSecurity) -> Result<(), ProcessError> {
    let program = security.seccomp.map(seccomp::compile).transpose()?;
    let user = security.user;

    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }

    if let Some(capabilities) = security.capabilities {
        reduce_bounding_set(&to_caps(capabilities.bounding())?)?;
        prctl::set_keepcaps(true).map_err(|e| ProcessError::system("prctl(PR_SET_KEEPCAPS)", e))?;
    }

    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|gid| Gid::from_raw(*gid))
        .collect();
    if setgroups_allowed() {
        nix::unistd::setgroups(&groups)
            .map_err(|e| ProcessError::system(format!("setgroups({groups:?})"), e))?;
    } else if !groups.is_empty() {
        // As runc: in a user namespace whose setgroups(2) was denied to allow an unprivileged
        // gid mapping, the process keeps the groups it has.
        tracing::warn!(
            "setgroups is denied in this user namespace; additional groups {groups:?} not set"
        );
    }
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| ProcessError::system(format!("setresgid({gid})"), e))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| ProcessError::system(format!("setresuid({uid})"), e))?;

    if let Some(capabilities) = security.capabilities {
        prctl::set_keepcaps(false)
            .map_err(|e| ProcessError::system("prctl(PR_SET_KEEPCAPS)", e))?;
        set_capability_sets(capabilities)?;
    }

    if security.no_new_privileges {
        prctl::set_no_new_privs()
            .map_err(|e| ProcessError::system("prctl(PR_SET_NO_NEW_PRIVS)", e))?;
    }

    if let Some(program) = &program {
        seccomp::install(program)?;
    }
    Ok(())
}

/// False in a user namespace where `/proc/self/setgroups` says `deny`.
fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups")
        .map(|text| text.trim() != "deny")
        .unwrap_or(true)
}

/// The caps crate's set for an OCI set; an absent set is empty, as in the OCI spec.
fn to_caps(set: &Option<Capabilities>) -> Result<caps::CapsHashSet, ProcessError> {
    set.iter()
        .flatten()
        .map(|cap| {
            caps::Capability::from_str(&format!("CAP_{cap}"))
                .map_err(|_| ProcessError::UnknownCapability(cap.to_string()))
        })
        .collect()
}

fn caps_error(operation: &str, err: caps::errors::CapsError) -> ProcessError {
    ProcessError::Capabilities {
        operation: operation.to_string(),
        message: err.to_string(),
    }
}

fn reduce_bounding_set(keep: &caps::CapsHashSet) -> Result<(), ProcessError> {
    let current = caps::read(None, caps::CapSet::Bounding)
        .map_err(|e| caps_error("reading the bounding set", e))?;
    for cap in current.difference(keep) {
        caps::drop(None, caps::CapSet::Bounding, *cap)
            .map_err(|e| caps_error(&format!("dropping {cap} from the bounding set"), e))?;
    }
    Ok(())
}

fn set_capability_sets(capabilities: &LinuxCapabilities) -> Result<(), ProcessError> {
    // Each capset(2) call must keep effective ⊆ permitted and inheritable ⊆ old permitted ∪ old
    // inheritable: widen nothing, and shrink permitted last.
    let steps = [
        (caps::CapSet::Inheritable, capabilities.inheritable()),
        (caps::CapSet::Effective, capabilities.effective()),
        (caps::CapSet::Permitted, capabilities.permitted()),
        (caps::CapSet::Ambient, capabilities.ambient()),
    ];
    for (set, wanted) in steps {
        let wanted = to_caps(wanted)?;
        caps::set(None, set, &wanted)
            .map_err(|e| caps_error(&format!("setting the {set:?} capabilities"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! These tests change the identity of a process, which must never be the shared,
    //! multi-threaded test runner: each test re-executes the test binary to run only itself in a
    //! child process (told so by an environment variable), which applies the security settings
    //! and checks their effects; the parent checks that the child passed.

    use std::process::Command;

    use nix::errno::Errno;
    use nix::sched::CloneFlags;
    use oci_spec::runtime::{LinuxSeccompAction, LinuxSyscall};

    use super::*;
    use crate::process::{container_capabilities, DEFAULT_CAPABILITIES};

    const CHILD_ENV: &str = "RUDDER_PROCESS_SECURITY_TEST_CHILD";
    const DONE: &str = "rudder-process-security-child-checks-passed";

    /// In the parent: runs `test` (its name within the test binary) in a child process and
    /// returns true. In that child: returns false, and the test body runs.
    fn ran_in_child(test: &str) -> bool {
        if std::env::var(CHILD_ENV).as_deref() == Ok(test) {
            return false;
        }
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("process::identity::tests::{test}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, test)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "child {test} failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        assert!(
            stdout.contains(DONE),
            "child {test} did not run its checks:\n{stdout}\n{stderr}"
        );
        true
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn user(uid: u32, gid: u32, additional: &[u32]) -> User {
        let mut user = User::default();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_additional_gids(Some(additional.to_vec()));
        user
    }

    fn read_set(set: caps::CapSet) -> caps::CapsHashSet {
        caps::read(None, set).unwrap()
    }

    fn seccomp_mode() -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("Seccomp:"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn non_root_user_with_default_capabilities_and_runtime_default() {
        if !is_root() {
            println!("skipped: changing users needs root");
            return;
        }
        if ran_in_child("non_root_user_with_default_capabilities_and_runtime_default") {
            return;
        }
        let capabilities = container_capabilities(&[], &[], false).unwrap();
        let profile = seccomp::runtime_default();
        let user = user(1000, 1000, &[1000, 2000]);
        apply(&ProcessSecurity {
            user: &user,
            capabilities: Some(&capabilities),
            no_new_privileges: true,
            seccomp: Some(&profile),
        })
        .unwrap();

        let uids = nix::unistd::getresuid().unwrap();
        assert_eq!(
            (
                uids.real.as_raw(),
                uids.effective.as_raw(),
                uids.saved.as_raw()
            ),
            (1000, 1000, 1000)
        );
        let gids = nix::unistd::getresgid().unwrap();
        assert_eq!(
            (
                gids.real.as_raw(),
                gids.effective.as_raw(),
                gids.saved.as_raw()
            ),
            (1000, 1000, 1000)
        );
        let groups: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(groups, vec![1000, 2000]);

        let expected: caps::CapsHashSet = DEFAULT_CAPABILITIES
            .iter()
            .map(|name| caps::Capability::from_str(name).unwrap())
            .collect();
        assert_eq!(read_set(caps::CapSet::Bounding), expected);
        assert_eq!(read_set(caps::CapSet::Effective), expected);
        assert_eq!(read_set(caps::CapSet::Permitted), expected);
        assert!(read_set(caps::CapSet::Inheritable).is_empty());
        assert!(read_set(caps::CapSet::Ambient).is_empty());
        assert!(prctl::get_no_new_privs().unwrap());
        assert!(!prctl::get_keepcaps().unwrap());
        assert_eq!(seccomp_mode(), "2");

        // Denied by the profile (and by the missing CAP_SYS_ADMIN).
        assert_eq!(
            nix::sched::unshare(CloneFlags::CLONE_NEWUTS),
            Err(Errno::EPERM)
        );
        assert_eq!(
            nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH),
            Err(Errno::EPERM)
        );
        println!("{DONE}");
    }

    #[test]
    fn seccomp_denies_what_root_with_all_capabilities_could_do() {
        if !is_root() {
            println!("skipped: needs root");
            return;
        }
        if ran_in_child("seccomp_denies_what_root_with_all_capabilities_could_do") {
            return;
        }
        // Control: as root with CAP_SYS_ADMIN, unshare works before the filter.
        nix::sched::unshare(CloneFlags::CLONE_NEWUTS).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut unshare = LinuxSyscall::default();
        unshare.set_names(vec!["unshare".to_string(), "chown32".to_string()]);
        unshare.set_action(LinuxSeccompAction::ScmpActErrno);
        unshare.set_errno_ret(Some(libc::EOPNOTSUPP as u32));
        let mut mkdir = LinuxSyscall::default();
        mkdir.set_names(vec![
            "mkdir".to_string(),
            "mkdirat".to_string(),
            "no_such_syscall".to_string(),
        ]);
        mkdir.set_action(LinuxSeccompAction::ScmpActErrno);
        let mut profile = LinuxSeccomp::default();
        profile.set_default_action(LinuxSeccompAction::ScmpActAllow);
        profile.set_syscalls(Some(vec![unshare, mkdir]));

        let user = user(0, 0, &[0]);
        apply(&ProcessSecurity {
            user: &user,
            capabilities: None,
            no_new_privileges: false,
            seccomp: Some(&profile),
        })
        .unwrap();

        assert!(read_set(caps::CapSet::Effective).contains(&caps::Capability::CAP_SYS_ADMIN));
        assert_eq!(
            nix::sched::unshare(CloneFlags::CLONE_NEWUTS),
            Err(Errno::EOPNOTSUPP)
        );
        let err = std::fs::create_dir(dir.path().join("denied")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(!dir.path().join("denied").exists());
        // Other syscalls are allowed.
        std::fs::write(dir.path().join("allowed"), b"ok").unwrap();
        // seccompiler sets no_new_privs before loading the filter (documented on `apply`).
        assert!(prctl::get_no_new_privs().unwrap());
        assert_eq!(seccomp_mode(), "2");
        println!("{DONE}");
    }

    #[test]
    fn root_without_capabilities_cannot_chown() {
        if !is_root() {
            println!("skipped: needs root");
            return;
        }
        if ran_in_child("root_without_capabilities_cannot_chown") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();

        let capabilities = container_capabilities(
            &["NET_BIND_SERVICE".to_string()],
            &["ALL".to_string()],
            false,
        )
        .unwrap();
        let user = user(0, 0, &[]);
        apply(&ProcessSecurity {
            user: &user,
            capabilities: Some(&capabilities),
            no_new_privileges: true,
            seccomp: None,
        })
        .unwrap();

        let only = caps::CapsHashSet::from([caps::Capability::CAP_NET_BIND_SERVICE]);
        assert_eq!(read_set(caps::CapSet::Bounding), only);
        assert_eq!(read_set(caps::CapSet::Effective), only);
        assert_eq!(read_set(caps::CapSet::Permitted), only);
        assert!(nix::unistd::getgroups().unwrap().is_empty());
        assert_eq!(
            nix::unistd::chown(&file, Some(Uid::from_raw(1234)), None),
            Err(Errno::EPERM)
        );
        assert_eq!(seccomp_mode(), "0");
        assert!(prctl::get_no_new_privs().unwrap());
        println!("{DONE}");
    }

    #[test]
    fn unsupported_profiles_fail_before_anything_changes() {
        // Safe in the test runner: compiling fails before apply touches the process.
        let mut rule = LinuxSyscall::default();
        rule.set_names(vec!["getpid".to_string()]);
        rule.set_action(LinuxSeccompAction::ScmpActNotify);
        let mut profile = LinuxSeccomp::default();
        profile.set_syscalls(Some(vec![rule]));
        let before = nix::unistd::getresuid().unwrap();
        let root = user(4321, 4321, &[]);
        let err = apply(&ProcessSecurity {
            user: &root,
            capabilities: None,
            no_new_privileges: false,
            seccomp: Some(&profile),
        })
        .unwrap_err();
        assert!(matches!(err, ProcessError::Unsupported(_)), "{err}");
        assert_eq!(
            nix::unistd::getresuid().unwrap().effective,
            before.effective
        );
    }
}
