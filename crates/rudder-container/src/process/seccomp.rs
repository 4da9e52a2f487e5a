//! Seccomp: Rudder's `RuntimeDefault` profile, a compiler from OCI `LinuxSeccomp` profiles to
//! classic BPF, and the installation of the compiled filter.
//!
//! The compiler writes the BPF program itself (seccompiler's own front end gives one action to
//! all the rules of a filter, while OCI profiles give each rule its own), using seccompiler for
//! the program type, the action encodings and the safe `seccomp(2)` call. It supports x86_64
//! only: the program checks the architecture and kills a process that makes a syscall through
//! another ABI (i386 `int 0x80`, x32), as libseccomp does for architectures absent from a
//! filter; otherwise a deny list for x86_64 could be bypassed through the 32-bit tables.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSyscall,
};
use seccompiler::{sock_filter, BpfProgram, SeccompAction};

use super::ProcessError;

/// `EPERM`, the errno of `SCMP_ACT_ERRNO` when the profile gives none (as runc).
const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// The syscalls of Rudder's `RuntimeDefault` profile that fail with `EPERM`, each with the
/// capabilities under which Docker's default profile (moby `profiles/seccomp/default.json`,
/// which containerd's `DefaultProfile` mirrors) allows it after all. A syscall with no
/// capability listed is never allowed.
///
/// Docker's profile is an allow list (default `SCMP_ACT_ERRNO`); this is the complement of it on
/// x86_64, for the syscalls that existed when it was taken, with these differences:
/// - argument conditions are not supported by [`compile`], so `personality`, `socket` and
///   `clone` are allowed whatever their arguments (Docker allows only some personalities, no
///   `AF_VSOCK` sockets, and `clone` without namespace flags unless `CAP_SYS_ADMIN`); the
///   kernel still refuses new namespaces other than user namespaces to a process without
///   `CAP_SYS_ADMIN`;
/// - `io_uring_*` are denied, as in moby and containerd since 2023 (older profiles allowed them);
/// - syscalls newer than the profile (Linux 6.4 and later: `cachestat`, `futex_wait`,
///   `statmount`, `mseal`, `*xattrat`, `file_getattr`…) are allowed because they are allowed by a
///   deny list, except `open_tree_attr`, which belongs with the mount API that Docker denies.
const DENIED_SYSCALLS: &[(&str, &[Capability])] = &[
    ("_sysctl", &[]),
    ("acct", &[Capability::SysPacct]),
    ("add_key", &[]),
    ("afs_syscall", &[]),
    ("bpf", &[Capability::SysAdmin, Capability::Bpf]),
    ("chroot", &[Capability::SysChroot]),
    ("clock_settime", &[Capability::SysTime]),
    ("create_module", &[]),
    ("delete_module", &[Capability::SysModule]),
    ("fanotify_init", &[Capability::SysAdmin]),
    ("finit_module", &[Capability::SysModule]),
    ("fsconfig", &[Capability::SysAdmin]),
    ("fsmount", &[Capability::SysAdmin]),
    ("fsopen", &[Capability::SysAdmin]),
    ("fspick", &[Capability::SysAdmin]),
    ("get_kernel_syms", &[]),
    ("get_mempolicy", &[Capability::SysNice]),
    ("getpmsg", &[]),
    ("init_module", &[Capability::SysModule]),
    ("io_uring_enter", &[]),
    ("io_uring_register", &[]),
    ("io_uring_setup", &[]),
    ("ioperm", &[Capability::SysRawio]),
    ("iopl", &[Capability::SysRawio]),
    ("kcmp", &[Capability::SysPtrace]),
    ("kexec_file_load", &[]),
    ("kexec_load", &[]),
    ("keyctl", &[]),
    ("lookup_dcookie", &[Capability::SysAdmin]),
    ("mbind", &[Capability::SysNice]),
    ("migrate_pages", &[]),
    ("mount", &[Capability::SysAdmin]),
    ("mount_setattr", &[Capability::SysAdmin]),
    ("move_mount", &[Capability::SysAdmin]),
    ("move_pages", &[]),
    ("nfsservctl", &[]),
    ("open_by_handle_at", &[Capability::DacReadSearch]),
    ("open_tree", &[Capability::SysAdmin]),
    ("open_tree_attr", &[Capability::SysAdmin]),
    (
        "perf_event_open",
        &[Capability::SysAdmin, Capability::Perfmon],
    ),
    ("pidfd_getfd", &[Capability::SysPtrace]),
    ("pivot_root", &[]),
    ("process_madvise", &[Capability::SysPtrace]),
    ("putpmsg", &[]),
    ("query_module", &[]),
    ("quotactl", &[Capability::SysAdmin]),
    ("quotactl_fd", &[Capability::SysAdmin]),
    ("reboot", &[Capability::SysBoot]),
    ("request_key", &[]),
    ("security", &[]),
    ("set_mempolicy", &[Capability::SysNice]),
    ("set_mempolicy_home_node", &[Capability::SysNice]),
    ("setdomainname", &[Capability::SysAdmin]),
    ("sethostname", &[Capability::SysAdmin]),
    ("setns", &[Capability::SysAdmin]),
    ("settimeofday", &[Capability::SysTime]),
    ("swapoff", &[]),
    ("swapon", &[]),
    ("sysfs", &[]),
    ("syslog", &[Capability::SysAdmin, Capability::Syslog]),
    ("tuxcall", &[]),
    ("umount2", &[Capability::SysAdmin]),
    ("unshare", &[Capability::SysAdmin]),
    ("uselib", &[]),
    ("userfaultfd", &[]),
    ("ustat", &[]),
    ("vhangup", &[Capability::SysTtyConfig]),
    ("vserver", &[]),
];

/// Rudder's `RuntimeDefault` seccomp profile for a container with the default capabilities
/// ([`super::DEFAULT_CAPABILITIES`]): see [`runtime_default_for`].
pub fn runtime_default() -> LinuxSeccomp {
    let defaults: Capabilities = super::DEFAULT_CAPABILITIES
        .iter()
        .filter_map(|name| super::capabilities::parse_capability(name).ok())
        .collect();
    runtime_default_for(&defaults)
}

/// Rudder's `RuntimeDefault` seccomp profile for a container whose bounding set is `bounding`.
///
/// It is a deny list modelled on Docker's and containerd's default profile, for x86_64 only:
/// default action `SCMP_ACT_ALLOW`, and `SCMP_ACT_ERRNO` (`EPERM`) for the syscalls that profile
/// does not allow to a container without the matching capabilities (module loading, `kexec`,
/// `reboot`, swap, mounts and the new mount API, `pivot_root`, `unshare`/`setns`, clock setting,
/// `bpf`, `perf_event_open`, keyrings, `userfaultfd`, `ptrace`-like `kcmp`/`pidfd_getfd`, raw
/// I/O ports, `syslog`, NUMA policies, `io_uring`…). As in Docker's profile, `clone3` fails with
/// `ENOSYS` instead for a container without `CAP_SYS_ADMIN`, so that libc falls back to `clone`.
/// See `DENIED_SYSCALLS` for where it differs from Docker's profile.
pub fn runtime_default_for(bounding: &Capabilities) -> LinuxSeccomp {
    let denied: Vec<String> = DENIED_SYSCALLS
        .iter()
        .filter(|(_, lifted_by)| !lifted_by.iter().any(|cap| bounding.contains(cap)))
        .map(|(name, _)| name.to_string())
        .collect();
    let mut syscalls = Vec::new();
    if !denied.is_empty() {
        let mut rule = LinuxSyscall::default();
        rule.set_names(denied);
        rule.set_action(LinuxSeccompAction::ScmpActErrno);
        rule.set_errno_ret(Some(EPERM));
        syscalls.push(rule);
    }
    if !bounding.contains(&Capability::SysAdmin) {
        let mut rule = LinuxSyscall::default();
        rule.set_names(vec!["clone3".to_string()]);
        rule.set_action(LinuxSeccompAction::ScmpActErrno);
        rule.set_errno_ret(Some(ENOSYS));
        syscalls.push(rule);
    }
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActAllow);
    profile.set_architectures(Some(vec![Arch::ScmpArchX86_64]));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// The seccompiler action for an OCI action; `errno_ret` is the profile's errno for
/// `SCMP_ACT_ERRNO`, `EPERM` when absent.
fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    context: &str,
) -> Result<SeccompAction, ProcessError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno_ret.unwrap_or(EPERM)),
        // SCMP_ACT_KILL is libseccomp's old name for killing the thread.
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify | LinuxSeccompAction::ScmpActTrace => {
            return Err(ProcessError::Unsupported(format!(
                "seccomp action {action} ({context}): Rudder has no seccomp agent or tracer"
            )))
        }
    })
}

// Classic BPF opcodes (linux/bpf_common.h), each the sum of its class, size/operation and
// source: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64` (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// x32 syscalls are x86_64 syscalls with this bit set in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit on the length of a seccomp program (`BPF_MAXINSNS`).
const BPF_MAX_LEN: usize = 4096;

fn statement(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Compiles an OCI seccomp profile to a BPF program for x86_64.
///
/// Supported: `defaultAction` (with `defaultErrnoRet`), and per-syscall rules with actions
/// `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO` (with `errnoRet`, default `EPERM`), `SCMP_ACT_KILL`,
/// `SCMP_ACT_KILL_THREAD`, `SCMP_ACT_KILL_PROCESS`, `SCMP_ACT_TRAP` and `SCMP_ACT_LOG`. Rules
/// with argument conditions, `SCMP_ACT_NOTIFY`/`SCMP_ACT_TRACE`, filter flags and listener
/// sockets are [`ProcessError::Unsupported`]. Syscall names unknown on x86_64 (those of other
/// architectures, such as `chown32`) are skipped with a warning, as libseccomp does. When a
/// syscall appears in several rules the first rule wins. The `architectures` list is not
/// consulted: the program filters x86_64 and kills a process using any other syscall ABI.
pub fn compile(profile: &LinuxSeccomp) -> Result<BpfProgram, ProcessError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(ProcessError::Unsupported(
            "seccomp profiles are only supported on x86_64".to_string(),
        ));
    }
    if let Some(flags) = profile.flags().as_ref().filter(|flags| !flags.is_empty()) {
        return Err(ProcessError::Unsupported(format!(
            "seccomp filter flags {flags:?}"
        )));
    }
    if profile.listener_path().is_some() {
        return Err(ProcessError::Unsupported(
            "seccomp listenerPath (user notification agents)".to_string(),
        ));
    }
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;

    let mut actions: BTreeMap<i64, (SeccompAction, &str)> = BTreeMap::new();
    let mut unknown: Vec<&str> = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let first_name = rule.names().first().map(String::as_str).unwrap_or("");
        if rule.args().as_ref().is_some_and(|args| !args.is_empty()) {
            return Err(ProcessError::Unsupported(format!(
                "seccomp argument conditions (rule for syscall {first_name})"
            )));
        }
        let rule_action = action(
            rule.action(),
            rule.errno_ret(),
            &format!("rule for syscall {first_name}"),
        )?;
        for name in rule.names() {
            let Some(nr) = syscall_number(name) else {
                unknown.push(name);
                continue;
            };
            match actions.get(&nr) {
                None => {
                    actions.insert(nr, (rule_action.clone(), name));
                }
                Some((earlier, _)) if *earlier != rule_action => tracing::warn!(
                    syscall = %name,
                    "seccomp profile gives {name} several actions; the first ({earlier:?}) applies"
                ),
                Some(_) => {}
            }
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(
            syscalls = ?unknown,
            "seccomp profile names syscalls unknown on x86_64; their rules are skipped"
        );
    }

    let default_ret = u32::from(default.clone());
    let mut program: BpfProgram = vec![
        // Another ABI than x86_64 (i386) gets its process killed.
        statement(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        statement(BPF_RET_K, u32::from(SeccompAction::KillProcess)),
        statement(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        // So does the x32 ABI (and the invalid numbers above it), which shares the arch value.
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        statement(BPF_RET_K, u32::from(SeccompAction::KillProcess)),
    ];
    for (nr, (rule_action, _)) in &actions {
        let ret = u32::from(rule_action.clone());
        if ret == default_ret {
            continue;
        }
        // Syscall numbers on x86_64 are small and non-negative.
        let nr = u32::try_from(*nr).expect("x86_64 syscall numbers fit in u32");
        program.push(jump(BPF_JMP_JEQ_K, nr, 0, 1));
        program.push(statement(BPF_RET_K, ret));
    }
    program.push(statement(BPF_RET_K, default_ret));
    if program.len() > BPF_MAX_LEN {
        return Err(ProcessError::Unsupported(format!(
            "a seccomp program of {} instructions (the kernel takes {BPF_MAX_LEN})",
            program.len()
        )));
    }
    Ok(program)
}

/// Installs a compiled filter on the calling thread. seccompiler's safe installation sets
/// `no_new_privs` first (`prctl(PR_SET_NO_NEW_PRIVS)`), so a process with a seccomp filter always
/// runs with `no_new_privs`: set-user-ID programs in such a container do not gain privileges.
pub fn install(program: &BpfProgram) -> Result<(), ProcessError> {
    seccompiler::apply_filter(program).map_err(ProcessError::Seccomp)
}

/// The x86_64 number of a syscall by name.
pub fn syscall_number(name: &str) -> Option<i64> {
    X86_64_SYSCALLS
        .binary_search_by(|(candidate, _)| candidate.cmp(&name))
        .ok()
        .map(|index| X86_64_SYSCALLS[index].1)
}

/// The x86_64 syscall table, sorted by name: Linux's `arch/x86/entry/syscalls/syscall_64.tbl`
/// up to Linux 6.17, numbers from the libc crate where it has them.
#[cfg(target_arch = "x86_64")]
const X86_64_SYSCALLS: &[(&str, i64)] = &[
    ("_sysctl", libc::SYS__sysctl),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("access", libc::SYS_access),
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("adjtimex", libc::SYS_adjtimex),
    ("afs_syscall", libc::SYS_afs_syscall),
    ("alarm", libc::SYS_alarm),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("bind", libc::SYS_bind),
    ("bpf", libc::SYS_bpf),
    ("brk", libc::SYS_brk),
    ("cachestat", 451),
    ("capget", libc::SYS_capget),
    ("capset", libc::SYS_capset),
    ("chdir", libc::SYS_chdir),
    ("chmod", libc::SYS_chmod),
    ("chown", libc::SYS_chown),
    ("chroot", libc::SYS_chroot),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_getres", libc::SYS_clock_getres),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("clock_settime", libc::SYS_clock_settime),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("close", libc::SYS_close),
    ("close_range", libc::SYS_close_range),
    ("connect", libc::SYS_connect),
    ("copy_file_range", libc::SYS_copy_file_range),
    ("creat", libc::SYS_creat),
    ("create_module", 174),
    ("delete_module", libc::SYS_delete_module),
    ("dup", libc::SYS_dup),
    ("dup2", libc::SYS_dup2),
    ("dup3", libc::SYS_dup3),
    ("epoll_create", libc::SYS_epoll_create),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_ctl_old", libc::SYS_epoll_ctl_old),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_pwait2", libc::SYS_epoll_pwait2),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_wait_old", libc::SYS_epoll_wait_old),
    ("eventfd", libc::SYS_eventfd),
    ("eventfd2", libc::SYS_eventfd2),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("fadvise64", libc::SYS_fadvise64),
    ("fallocate", libc::SYS_fallocate),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("fanotify_mark", libc::SYS_fanotify_mark),
    ("fchdir", libc::SYS_fchdir),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchmodat2", libc::SYS_fchmodat2),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("fcntl", libc::SYS_fcntl),
    ("fdatasync", libc::SYS_fdatasync),
    ("fgetxattr", libc::SYS_fgetxattr),
    ("file_getattr", 468),
    ("file_setattr", 469),
    ("finit_module", libc::SYS_finit_module),
    ("flistxattr", libc::SYS_flistxattr),
    ("flock", libc::SYS_flock),
    ("fork", libc::SYS_fork),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("fstat", libc::SYS_fstat),
    ("fstatfs", libc::SYS_fstatfs),
    ("fsync", libc::SYS_fsync),
    ("ftruncate", libc::SYS_ftruncate),
    ("futex", libc::SYS_futex),
    ("futex_requeue", 456),
    ("futex_wait", 455),
    ("futex_waitv", libc::SYS_futex_waitv),
    ("futex_wake", 454),
    ("futimesat", libc::SYS_futimesat),
    ("get_kernel_syms", 177),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("get_robust_list", libc::SYS_get_robust_list),
    ("get_thread_area", libc::SYS_get_thread_area),
    ("getcpu", libc::SYS_getcpu),
    ("getcwd", libc::SYS_getcwd),
    ("getdents", libc::SYS_getdents),
    ("getdents64", libc::SYS_getdents64),
    ("getegid", libc::SYS_getegid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getgroups", libc::SYS_getgroups),
    ("getitimer", libc::SYS_getitimer),
    ("getpeername", libc::SYS_getpeername),
    ("getpgid", libc::SYS_getpgid),
    ("getpgrp", libc::SYS_getpgrp),
    ("getpid", libc::SYS_getpid),
    ("getpmsg", libc::SYS_getpmsg),
    ("getppid", libc::SYS_getppid),
    ("getpriority", libc::SYS_getpriority),
    ("getrandom", libc::SYS_getrandom),
    ("getresgid", libc::SYS_getresgid),
    ("getresuid", libc::SYS_getresuid),
    ("getrlimit", libc::SYS_getrlimit),
    ("getrusage", libc::SYS_getrusage),
    ("getsid", libc::SYS_getsid),
    ("getsockname", libc::SYS_getsockname),
    ("getsockopt", libc::SYS_getsockopt),
    ("gettid", libc::SYS_gettid),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("getuid", libc::SYS_getuid),
    ("getxattr", libc::SYS_getxattr),
    ("getxattrat", 464),
    ("init_module", libc::SYS_init_module),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("inotify_init", libc::SYS_inotify_init),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
    ("io_cancel", libc::SYS_io_cancel),
    ("io_destroy", libc::SYS_io_destroy),
    ("io_getevents", libc::SYS_io_getevents),
    ("io_pgetevents", 333),
    ("io_setup", libc::SYS_io_setup),
    ("io_submit", libc::SYS_io_submit),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("ioctl", libc::SYS_ioctl),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("ioprio_get", libc::SYS_ioprio_get),
    ("ioprio_set", libc::SYS_ioprio_set),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("kill", libc::SYS_kill),
    ("landlock_add_rule", libc::SYS_landlock_add_rule),
    ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    ("lchown", libc::SYS_lchown),
    ("lgetxattr", libc::SYS_lgetxattr),
    ("link", libc::SYS_link),
    ("linkat", libc::SYS_linkat),
    ("listen", libc::SYS_listen),
    ("listmount", 458),
    ("listxattr", libc::SYS_listxattr),
    ("listxattrat", 465),
    ("llistxattr", libc::SYS_llistxattr),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("lseek", libc::SYS_lseek),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("lsm_get_self_attr", 459),
    ("lsm_list_modules", 461),
    ("lsm_set_self_attr", 460),
    ("lstat", libc::SYS_lstat),
    ("madvise", libc::SYS_madvise),
    ("map_shadow_stack", 453),
    ("mbind", libc::SYS_mbind),
    ("membarrier", libc::SYS_membarrier),
    ("memfd_create", libc::SYS_memfd_create),
    ("memfd_secret", libc::SYS_memfd_secret),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("mincore", libc::SYS_mincore),
    ("mkdir", libc::SYS_mkdir),
    ("mkdirat", libc::SYS_mkdirat),
    ("mknod", libc::SYS_mknod),
    ("mknodat", libc::SYS_mknodat),
    ("mlock", libc::SYS_mlock),
    ("mlock2", libc::SYS_mlock2),
    ("mlockall", libc::SYS_mlockall),
    ("mmap", libc::SYS_mmap),
    ("modify_ldt", libc::SYS_modify_ldt),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("move_pages", libc::SYS_move_pages),
    ("mprotect", libc::SYS_mprotect),
    ("mq_getsetattr", libc::SYS_mq_getsetattr),
    ("mq_notify", libc::SYS_mq_notify),
    ("mq_open", libc::SYS_mq_open),
    ("mq_timedreceive", libc::SYS_mq_timedreceive),
    ("mq_timedsend", libc::SYS_mq_timedsend),
    ("mq_unlink", libc::SYS_mq_unlink),
    ("mremap", libc::SYS_mremap),
    ("mseal", libc::SYS_mseal),
    ("msgctl", libc::SYS_msgctl),
    ("msgget", libc::SYS_msgget),
    ("msgrcv", libc::SYS_msgrcv),
    ("msgsnd", libc::SYS_msgsnd),
    ("msync", libc::SYS_msync),
    ("munlock", libc::SYS_munlock),
    ("munlockall", libc::SYS_munlockall),
    ("munmap", libc::SYS_munmap),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("nanosleep", libc::SYS_nanosleep),
    ("newfstatat", libc::SYS_newfstatat),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open", libc::SYS_open),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("open_tree_attr", 467),
    ("openat", libc::SYS_openat),
    ("openat2", libc::SYS_openat2),
    ("pause", libc::SYS_pause),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("personality", libc::SYS_personality),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("pipe", libc::SYS_pipe),
    ("pipe2", libc::SYS_pipe2),
    ("pivot_root", libc::SYS_pivot_root),
    ("pkey_alloc", libc::SYS_pkey_alloc),
    ("pkey_free", libc::SYS_pkey_free),
    ("pkey_mprotect", libc::SYS_pkey_mprotect),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("prctl", libc::SYS_prctl),
    ("pread64", libc::SYS_pread64),
    ("preadv", libc::SYS_preadv),
    ("preadv2", libc::SYS_preadv2),
    ("prlimit64", libc::SYS_prlimit64),
    ("process_madvise", libc::SYS_process_madvise),
    ("process_mrelease", libc::SYS_process_mrelease),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pselect6", libc::SYS_pselect6),
    ("ptrace", libc::SYS_ptrace),
    ("putpmsg", libc::SYS_putpmsg),
    ("pwrite64", libc::SYS_pwrite64),
    ("pwritev", libc::SYS_pwritev),
    ("pwritev2", libc::SYS_pwritev2),
    ("query_module", 178),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("read", libc::SYS_read),
    ("readahead", libc::SYS_readahead),
    ("readlink", libc::SYS_readlink),
    ("readlinkat", libc::SYS_readlinkat),
    ("readv", libc::SYS_readv),
    ("reboot", libc::SYS_reboot),
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("remap_file_pages", libc::SYS_remap_file_pages),
    ("removexattr", libc::SYS_removexattr),
    ("removexattrat", 466),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("request_key", libc::SYS_request_key),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("rmdir", libc::SYS_rmdir),
    ("rseq", libc::SYS_rseq),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigpending", libc::SYS_rt_sigpending),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigsuspend", libc::SYS_rt_sigsuspend),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo),
    ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
    ("sched_get_priority_min", libc::SYS_sched_get_priority_min),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_getattr", libc::SYS_sched_getattr),
    ("sched_getparam", libc::SYS_sched_getparam),
    ("sched_getscheduler", libc::SYS_sched_getscheduler),
    ("sched_rr_get_interval", libc::SYS_sched_rr_get_interval),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sched_setattr", libc::SYS_sched_setattr),
    ("sched_setparam", libc::SYS_sched_setparam),
    ("sched_setscheduler", libc::SYS_sched_setscheduler),
    ("sched_yield", libc::SYS_sched_yield),
    ("seccomp", libc::SYS_seccomp),
    ("security", libc::SYS_security),
    ("select", libc::SYS_select),
    ("semctl", libc::SYS_semctl),
    ("semget", libc::SYS_semget),
    ("semop", libc::SYS_semop),
    ("semtimedop", libc::SYS_semtimedop),
    ("sendfile", libc::SYS_sendfile),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("sendto", libc::SYS_sendto),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("set_thread_area", libc::SYS_set_thread_area),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("setdomainname", libc::SYS_setdomainname),
    ("setfsgid", libc::SYS_setfsgid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setgid", libc::SYS_setgid),
    ("setgroups", libc::SYS_setgroups),
    ("sethostname", libc::SYS_sethostname),
    ("setitimer", libc::SYS_setitimer),
    ("setns", libc::SYS_setns),
    ("setpgid", libc::SYS_setpgid),
    ("setpriority", libc::SYS_setpriority),
    ("setregid", libc::SYS_setregid),
    ("setresgid", libc::SYS_setresgid),
    ("setresuid", libc::SYS_setresuid),
    ("setreuid", libc::SYS_setreuid),
    ("setrlimit", libc::SYS_setrlimit),
    ("setsid", libc::SYS_setsid),
    ("setsockopt", libc::SYS_setsockopt),
    ("settimeofday", libc::SYS_settimeofday),
    ("setuid", libc::SYS_setuid),
    ("setxattr", libc::SYS_setxattr),
    ("setxattrat", 463),
    ("shmat", libc::SYS_shmat),
    ("shmctl", libc::SYS_shmctl),
    ("shmdt", libc::SYS_shmdt),
    ("shmget", libc::SYS_shmget),
    ("shutdown", libc::SYS_shutdown),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("signalfd", libc::SYS_signalfd),
    ("signalfd4", libc::SYS_signalfd4),
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("splice", libc::SYS_splice),
    ("stat", libc::SYS_stat),
    ("statfs", libc::SYS_statfs),
    ("statmount", 457),
    ("statx", libc::SYS_statx),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("symlink", libc::SYS_symlink),
    ("symlinkat", libc::SYS_symlinkat),
    ("sync", libc::SYS_sync),
    ("sync_file_range", libc::SYS_sync_file_range),
    ("syncfs", libc::SYS_syncfs),
    ("sysfs", libc::SYS_sysfs),
    ("sysinfo", libc::SYS_sysinfo),
    ("syslog", libc::SYS_syslog),
    ("tee", libc::SYS_tee),
    ("tgkill", libc::SYS_tgkill),
    ("time", libc::SYS_time),
    ("timer_create", libc::SYS_timer_create),
    ("timer_delete", libc::SYS_timer_delete),
    ("timer_getoverrun", libc::SYS_timer_getoverrun),
    ("timer_gettime", libc::SYS_timer_gettime),
    ("timer_settime", libc::SYS_timer_settime),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("times", libc::SYS_times),
    ("tkill", libc::SYS_tkill),
    ("truncate", libc::SYS_truncate),
    ("tuxcall", libc::SYS_tuxcall),
    ("umask", libc::SYS_umask),
    ("umount2", libc::SYS_umount2),
    ("uname", libc::SYS_uname),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("unshare", libc::SYS_unshare),
    ("uselib", libc::SYS_uselib),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ustat", libc::SYS_ustat),
    ("utime", libc::SYS_utime),
    ("utimensat", libc::SYS_utimensat),
    ("utimes", libc::SYS_utimes),
    ("vfork", libc::SYS_vfork),
    ("vhangup", libc::SYS_vhangup),
    ("vmsplice", libc::SYS_vmsplice),
    ("vserver", libc::SYS_vserver),
    ("wait4", libc::SYS_wait4),
    ("waitid", libc::SYS_waitid),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
];
#[cfg(not(target_arch = "x86_64"))]
const X86_64_SYSCALLS: &[(&str, i64)] = &[];

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompArg;

    /// Runs a seccomp program the way the kernel does, for one syscall.
    fn run(program: &BpfProgram, arch: u32, nr: u32) -> u32 {
        let mut accumulator = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = &program[pc];
            match insn.code {
                BPF_LD_W_ABS => {
                    accumulator = match insn.k {
                        SECCOMP_DATA_NR => nr,
                        SECCOMP_DATA_ARCH => arch,
                        other => panic!("load of offset {other}"),
                    };
                    pc += 1;
                }
                BPF_JMP_JEQ_K | BPF_JMP_JGE_K => {
                    let taken = if insn.code == BPF_JMP_JEQ_K {
                        accumulator == insn.k
                    } else {
                        accumulator >= insn.k
                    };
                    pc += 1 + usize::from(if taken { insn.jt } else { insn.jf });
                }
                BPF_RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn nr(name: &str) -> u32 {
        syscall_number(name).unwrap() as u32
    }

    fn x86_64(program: &BpfProgram, name: &str) -> u32 {
        run(program, AUDIT_ARCH_X86_64, nr(name))
    }

    const ALLOW: u32 = 0x7fff_0000;
    const KILL_PROCESS: u32 = 0x8000_0000;
    fn errno(value: i32) -> u32 {
        0x0005_0000 | value as u32
    }

    #[test]
    fn syscall_table_is_sorted_and_right() {
        assert!(X86_64_SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("unshare"), Some(272));
        assert_eq!(syscall_number("clone3"), Some(435));
        assert_eq!(syscall_number("open_tree_attr"), Some(467));
        assert_eq!(syscall_number("file_setattr"), Some(469));
        assert_eq!(syscall_number("chown32"), None);
        let mut numbers: Vec<i64> = X86_64_SYSCALLS.iter().map(|(_, nr)| *nr).collect();
        numbers.sort();
        numbers.dedup();
        assert_eq!(numbers.len(), X86_64_SYSCALLS.len());
    }

    #[test]
    fn runtime_default_denies_the_privileged_syscalls() {
        for (name, _) in DENIED_SYSCALLS {
            assert!(
                syscall_number(name).is_some(),
                "{name} is not an x86_64 syscall"
            );
        }
        let program = compile(&runtime_default()).unwrap();
        for name in [
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "userfaultfd",
            "open_by_handle_at",
            "fsopen",
            "move_mount",
            "open_tree",
            "settimeofday",
            "clock_settime",
            "iopl",
            "syslog",
            "io_uring_setup",
            "acct",
            "quotactl",
        ] {
            assert_eq!(x86_64(&program, name), errno(libc::EPERM), "{name}");
        }
        assert_eq!(x86_64(&program, "clone3"), errno(libc::ENOSYS));
        // The default capabilities include CAP_SYS_CHROOT, so chroot is allowed, as in Docker.
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "clone",
            "chroot",
            "personality",
            "socket",
            "ptrace",
            "futex_wait",
            "statmount",
        ] {
            assert_eq!(x86_64(&program, name), ALLOW, "{name}");
        }
        // Other ABIs cannot bypass the x86_64 list.
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(run(&program, AUDIT_ARCH_I386, 26), KILL_PROCESS);
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | nr("unshare")),
            KILL_PROCESS
        );
    }

    #[test]
    fn runtime_default_follows_the_capabilities() {
        let admin = Capabilities::from([Capability::SysAdmin, Capability::SysTime]);
        let program = compile(&runtime_default_for(&admin)).unwrap();
        for name in ["mount", "unshare", "setns", "clone3", "settimeofday", "bpf"] {
            assert_eq!(x86_64(&program, name), ALLOW, "{name}");
        }
        for name in ["chroot", "kexec_load", "reboot", "keyctl", "init_module"] {
            assert_eq!(x86_64(&program, name), errno(libc::EPERM), "{name}");
        }
    }

    fn rule(names: &[&str], action: LinuxSeccompAction, errno_ret: Option<u32>) -> LinuxSyscall {
        let mut rule = LinuxSyscall::default();
        rule.set_names(names.iter().map(|n| n.to_string()).collect());
        rule.set_action(action);
        rule.set_errno_ret(errno_ret);
        rule
    }

    fn profile(default: LinuxSeccompAction, rules: Vec<LinuxSyscall>) -> LinuxSeccomp {
        let mut profile = LinuxSeccomp::default();
        profile.set_default_action(default);
        profile.set_syscalls(Some(rules));
        profile
    }

    #[test]
    fn compiles_an_allow_list_profile_with_per_rule_actions() {
        let mut allow_list = profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![
                rule(
                    &["read", "write", "exit_group", "chown32", "made_up"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                ),
                rule(&["getpid"], LinuxSeccompAction::ScmpActLog, None),
                rule(&["kill"], LinuxSeccompAction::ScmpActTrap, None),
                rule(&["tkill"], LinuxSeccompAction::ScmpActKill, None),
                rule(&["tgkill"], LinuxSeccompAction::ScmpActKillProcess, None),
                rule(&["openat"], LinuxSeccompAction::ScmpActErrno, Some(13)),
                // A later rule for the same syscall does not override the first.
                rule(&["read"], LinuxSeccompAction::ScmpActKillProcess, None),
            ],
        );
        allow_list.set_default_errno_ret(Some(libc::ENOSYS as u32));
        let program = compile(&allow_list).unwrap();
        assert_eq!(x86_64(&program, "read"), ALLOW);
        assert_eq!(x86_64(&program, "exit_group"), ALLOW);
        assert_eq!(x86_64(&program, "getpid"), 0x7ffc_0000);
        assert_eq!(x86_64(&program, "kill"), 0x0003_0000);
        assert_eq!(x86_64(&program, "tkill"), 0);
        assert_eq!(x86_64(&program, "tgkill"), KILL_PROCESS);
        assert_eq!(x86_64(&program, "openat"), errno(13));
        assert_eq!(x86_64(&program, "mkdir"), errno(libc::ENOSYS));

        // Without defaultErrnoRet the default errno is EPERM.
        let program = compile(&profile(LinuxSeccompAction::ScmpActErrno, vec![])).unwrap();
        assert_eq!(x86_64(&program, "mkdir"), errno(libc::EPERM));
    }

    #[test]
    fn refuses_what_it_cannot_enforce() {
        let mut conditional = rule(&["personality"], LinuxSeccompAction::ScmpActAllow, None);
        conditional.set_args(Some(vec![LinuxSeccompArg::default()]));
        let err = compile(&profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![conditional],
        ))
        .unwrap_err();
        assert!(
            matches!(&err, ProcessError::Unsupported(m) if m.contains("personality")),
            "{err}"
        );

        let notify = rule(&["getpid"], LinuxSeccompAction::ScmpActNotify, None);
        let err = compile(&profile(LinuxSeccompAction::ScmpActAllow, vec![notify])).unwrap_err();
        assert!(
            matches!(&err, ProcessError::Unsupported(m) if m.contains("getpid")),
            "{err}"
        );

        let err = compile(&profile(LinuxSeccompAction::ScmpActTrace, vec![])).unwrap_err();
        assert!(matches!(err, ProcessError::Unsupported(_)));

        let mut with_listener = profile(LinuxSeccompAction::ScmpActAllow, vec![]);
        with_listener.set_listener_path(Some("/run/agent.sock".into()));
        assert!(matches!(
            compile(&with_listener),
            Err(ProcessError::Unsupported(_))
        ));
    }
}
