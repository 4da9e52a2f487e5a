//! The capability sets of a container, from a Kubernetes `securityContext`.

use std::collections::HashSet;
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::ProcessError;

/// The capabilities containerd (and Docker) give a container that asks for nothing else; the
/// Kubernetes default (`defaultUnixCaps` in containerd's `oci` package).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability that the OCI runtime spec names (Linux 5.9's 41, up to
/// `CAP_CHECKPOINT_RESTORE`).
pub fn all_capabilities() -> Capabilities {
    caps::all()
        .into_iter()
        .filter_map(|cap| parse_capability(&cap.to_string()).ok())
        .collect()
}

/// Parses a capability name as Kubernetes users write it: `NET_ADMIN`, `CAP_NET_ADMIN` or
/// `net_admin`.
pub fn parse_capability(name: &str) -> Result<Capability, ProcessError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| ProcessError::UnknownCapability(name.to_string()))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The capability sets of a container with Kubernetes `securityContext.capabilities`
/// semantics, as containerd computes them:
/// - `privileged` gives every capability, whatever `add` and `drop` say;
/// - otherwise start from [`DEFAULT_CAPABILITIES`]; `ALL` in `add` adds every capability, then
///   `ALL` in `drop` removes every capability; then each named capability of `add` is added and
///   each of `drop` removed, so `add: [ALL], drop: [CHOWN]` is everything but `CAP_CHOWN` and
///   `drop: [ALL], add: [NET_BIND_SERVICE]` is just `CAP_NET_BIND_SERVICE`.
///
/// The result has the set in bounding, effective and permitted, and empty inheritable and
/// ambient sets: a non-root process keeps no capability across `execve` (as with containerd).
pub fn container_capabilities(
    add: &[String],
    drop: &[String],
    privileged: bool,
) -> Result<LinuxCapabilities, ProcessError> {
    // Validate every name first, so a typo is reported even when privileged hides it.
    let added = add
        .iter()
        .filter(|name| !is_all(name))
        .map(|name| parse_capability(name))
        .collect::<Result<Vec<_>, _>>()?;
    let dropped = drop
        .iter()
        .filter(|name| !is_all(name))
        .map(|name| parse_capability(name))
        .collect::<Result<Vec<_>, _>>()?;

    let set: Capabilities = if privileged {
        all_capabilities()
    } else {
        let mut set: HashSet<Capability> = DEFAULT_CAPABILITIES
            .iter()
            .map(|name| parse_capability(name))
            .collect::<Result<_, _>>()?;
        if add.iter().any(|name| is_all(name)) {
            set = all_capabilities();
        }
        if drop.iter().any(|name| is_all(name)) {
            set.clear();
        }
        set.extend(added);
        for cap in dropped {
            set.remove(&cap);
        }
        set
    };

    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(set.clone()));
    capabilities.set_effective(Some(set.clone()));
    capabilities.set_permitted(Some(set));
    capabilities.set_inheritable(Some(Capabilities::new()));
    capabilities.set_ambient(Some(Capabilities::new()));
    Ok(capabilities)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn bounding(caps: &LinuxCapabilities) -> Capabilities {
        caps.bounding().clone().unwrap()
    }

    fn defaults() -> Capabilities {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|n| parse_capability(n).unwrap())
            .collect()
    }

    #[test]
    fn defaults_are_containerds_fourteen() {
        let caps = container_capabilities(&[], &[], false).unwrap();
        assert_eq!(bounding(&caps), defaults());
        assert_eq!(bounding(&caps).len(), 14);
        assert_eq!(caps.effective(), caps.bounding());
        assert_eq!(caps.permitted(), caps.bounding());
        assert_eq!(caps.inheritable().as_ref().map(|s| s.len()), Some(0));
        assert_eq!(caps.ambient().as_ref().map(|s| s.len()), Some(0));
    }

    #[test]
    fn names_with_or_without_prefix_in_any_case() {
        let caps = container_capabilities(
            &names(&["NET_ADMIN", "CAP_SYS_TIME", "sys_ptrace"]),
            &names(&["chown", "CAP_KILL"]),
            false,
        )
        .unwrap();
        let mut expected = defaults();
        expected.extend([
            Capability::NetAdmin,
            Capability::SysTime,
            Capability::SysPtrace,
        ]);
        expected.remove(&Capability::Chown);
        expected.remove(&Capability::Kill);
        assert_eq!(bounding(&caps), expected);
    }

    #[test]
    fn drop_all_then_add() {
        let caps =
            container_capabilities(&names(&["NET_BIND_SERVICE"]), &names(&["ALL"]), false).unwrap();
        assert_eq!(
            bounding(&caps),
            Capabilities::from([Capability::NetBindService])
        );
        let caps = container_capabilities(&[], &names(&["all"]), false).unwrap();
        assert!(bounding(&caps).is_empty());
    }

    #[test]
    fn add_all_then_drop() {
        let caps = container_capabilities(&names(&["ALL"]), &names(&["CHOWN"]), false).unwrap();
        let mut expected = all_capabilities();
        expected.remove(&Capability::Chown);
        assert_eq!(bounding(&caps), expected);
        assert_eq!(all_capabilities().len(), 41);
        // Dropping everything wins over adding everything; named adds still apply.
        let caps =
            container_capabilities(&names(&["ALL", "KILL"]), &names(&["ALL"]), false).unwrap();
        assert_eq!(bounding(&caps), Capabilities::from([Capability::Kill]));
    }

    #[test]
    fn privileged_has_everything() {
        let caps = container_capabilities(&[], &names(&["ALL"]), true).unwrap();
        assert_eq!(bounding(&caps), all_capabilities());
        assert!(bounding(&caps).contains(&Capability::SysAdmin));
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = container_capabilities(&names(&["NET_ADMINN"]), &[], false).unwrap_err();
        assert!(matches!(&err, ProcessError::UnknownCapability(n) if n == "NET_ADMINN"));
        let err = container_capabilities(&[], &names(&["CAP_BOGUS"]), true).unwrap_err();
        assert!(err.to_string().contains("CAP_BOGUS"));
    }
}
