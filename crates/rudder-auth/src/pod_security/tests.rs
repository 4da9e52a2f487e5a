//! Table tests per check (with Kubernetes' exact wording), and of the
//! evaluation by level and version.

use serde_json::{json, Value};

use super::*;

/// Runs one check over cases of (pod spec, expected `reason (detail)`, or
/// `None` when allowed).
fn table(check: CheckFn, cases: &[(Value, Option<&str>)]) {
    table_with_metadata(
        check,
        &cases
            .iter()
            .map(|(spec, expected)| (json!({}), spec.clone(), *expected))
            .collect::<Vec<_>>(),
    );
}

fn table_with_metadata(check: CheckFn, cases: &[(Value, Value, Option<&str>)]) {
    for (metadata, spec, expected) in cases {
        let got = check(metadata, spec).map(|result| forbidden_detail(&[result]));
        assert_eq!(got.as_deref(), *expected, "spec {spec} metadata {metadata}");
    }
}

/// A container named `name` with this security context.
fn c(name: &str, security_context: Value) -> Value {
    json!({"name": name, "image": "nginx", "securityContext": security_context})
}

fn containers(list: Vec<Value>) -> Value {
    json!({ "containers": list })
}

#[test]
fn windows_host_process() {
    let host_process = json!({"windowsOptions": {"hostProcess": true}});
    table(
        baseline::windows_host_process,
        &[
            (containers(vec![c("a", json!({}))]), None),
            (
                containers(vec![c(
                    "a",
                    json!({"windowsOptions": {"hostProcess": false}}),
                )]),
                None,
            ),
            (
                containers(vec![c("a", host_process.clone())]),
                Some(
                    r#"hostProcess (container "a" must not set securityContext.windowsOptions.hostProcess=true)"#,
                ),
            ),
            (
                json!({"securityContext": host_process, "initContainers": [c("i", host_process.clone())], "containers": [c("a", host_process.clone())]}),
                Some(
                    r#"hostProcess (pod and containers "i", "a" must not set securityContext.windowsOptions.hostProcess=true)"#,
                ),
            ),
        ],
    );
}

#[test]
fn host_namespaces() {
    table(
        baseline::host_namespaces,
        &[
            (json!({}), None),
            (json!({"hostNetwork": false, "hostPID": null}), None),
            (
                json!({"hostNetwork": true}),
                Some("host namespaces (hostNetwork=true)"),
            ),
            (
                json!({"hostIPC": true, "hostPID": true, "hostNetwork": true}),
                Some("host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"),
            ),
        ],
    );
}

#[test]
fn privileged() {
    table(
        baseline::privileged,
        &[
            (containers(vec![c("a", json!({"privileged": false}))]), None),
            (containers(vec![json!({"name": "a"})]), None),
            (
                containers(vec![c("a", json!({"privileged": true}))]),
                Some(r#"privileged (container "a" must not set securityContext.privileged=true)"#),
            ),
            (
                json!({
                    "containers": [c("b", json!({"privileged": true}))],
                    "initContainers": [c("a", json!({"privileged": true}))],
                    "ephemeralContainers": [c("debug", json!({"privileged": true}))],
                }),
                Some(
                    r#"privileged (containers "a", "b", "debug" must not set securityContext.privileged=true)"#,
                ),
            ),
        ],
    );
}

#[test]
fn baseline_capabilities() {
    let add = |caps: Value| json!({"capabilities": {"add": caps}});
    table(
        baseline::capabilities,
        &[
            (containers(vec![c("a", json!({}))]), None),
            (
                containers(vec![c(
                    "a",
                    add(json!(["NET_BIND_SERVICE", "CHOWN", "SYS_CHROOT"])),
                )]),
                None,
            ),
            (
                containers(vec![c("a", json!({"capabilities": {"drop": ["ALL"]}}))]),
                None,
            ),
            (
                containers(vec![c("a", add(json!(["NET_ADMIN"])))]),
                Some(
                    r#"non-default capabilities (container "a" must not include "NET_ADMIN" in securityContext.capabilities.add)"#,
                ),
            ),
            (
                containers(vec![
                    c("a", add(json!(["SYS_ADMIN", "CHOWN", "NET_RAW"]))),
                    c("b", add(json!(["NET_RAW"]))),
                    c("ok", add(json!(["KILL"]))),
                ]),
                Some(
                    r#"non-default capabilities (containers "a", "b" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add)"#,
                ),
            ),
        ],
    );
}

#[test]
fn host_path_volumes() {
    table(
        baseline::host_path_volumes,
        &[
            (json!({"volumes": [{"name": "e", "emptyDir": {}}]}), None),
            (
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
                Some(r#"hostPath volumes (volume "h")"#),
            ),
            (
                json!({"volumes": [{"name": "h1", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}, {"name": "h2", "hostPath": {"path": "/etc"}}]}),
                Some(r#"hostPath volumes (volumes "h1", "h2")"#),
            ),
        ],
    );
}

#[test]
fn host_ports() {
    let ports = |name: &str, ports: Value| json!({"name": name, "ports": ports});
    table(
        baseline::host_ports,
        &[
            (
                containers(vec![ports(
                    "a",
                    json!([{"containerPort": 80}, {"containerPort": 81, "hostPort": 0}]),
                )]),
                None,
            ),
            (
                containers(vec![ports(
                    "a",
                    json!([{"containerPort": 80, "hostPort": 8080}]),
                )]),
                Some(r#"hostPort (container "a" uses hostPort 8080)"#),
            ),
            (
                // Ports are sorted as strings, as Kubernetes does.
                containers(vec![
                    ports(
                        "a",
                        json!([{"containerPort": 80, "hostPort": 9}, {"containerPort": 81, "hostPort": 10}]),
                    ),
                    ports("b", json!([{"containerPort": 80, "hostPort": 9}])),
                ]),
                Some(r#"hostPort (containers "a", "b" use hostPorts 10, 9)"#),
            ),
        ],
    );
}

#[test]
fn host_probes_and_lifecycle() {
    table(
        baseline::host_probes_and_lifecycle,
        &[
            (
                containers(vec![
                    json!({"name": "a", "livenessProbe": {"httpGet": {"port": 80, "host": ""}}, "readinessProbe": {"tcpSocket": {"port": 80}}}),
                ]),
                None,
            ),
            (
                containers(vec![
                    json!({"name": "a", "livenessProbe": {"httpGet": {"port": 80, "host": "10.0.0.1"}}}),
                ]),
                Some(
                    r#"probe or lifecycle host (container "a" uses probe or lifecycle host "10.0.0.1")"#,
                ),
            ),
            (
                containers(vec![
                    json!({"name": "b", "lifecycle": {"preStop": {"httpGet": {"port": 80, "host": "metadata"}}}}),
                    json!({"name": "a", "startupProbe": {"tcpSocket": {"port": 80, "host": "10.0.0.1"}}, "lifecycle": {"postStart": {"tcpSocket": {"port": 1, "host": "10.0.0.1"}}}}),
                ]),
                Some(
                    r#"probe or lifecycle host (containers "a", "b" use probe or lifecycle hosts "10.0.0.1", "metadata")"#,
                ),
            ),
        ],
    );
}

#[test]
fn app_armor_profile() {
    let profile = |t: &str| json!({"appArmorProfile": {"type": t}});
    let annotations = |pairs: Value| json!({ "annotations": pairs });
    table_with_metadata(
        baseline::app_armor_profile,
        &[
            (
                annotations(json!({
                    "container.apparmor.security.beta.kubernetes.io/a": "runtime/default",
                    "container.apparmor.security.beta.kubernetes.io/b": "localhost/mine",
                    "container.apparmor.security.beta.kubernetes.io/c": "",
                    "other": "unconfined",
                })),
                json!({"securityContext": profile("RuntimeDefault"), "containers": [c("a", profile("Localhost"))]}),
                None,
            ),
            (
                json!({}),
                containers(vec![c("a", profile("Unconfined"))]),
                Some(
                    r#"forbidden AppArmor profile (container "a" must not set AppArmor profile type to "Unconfined")"#,
                ),
            ),
            (
                annotations(json!({
                    "container.apparmor.security.beta.kubernetes.io/b": "unconfined",
                    "container.apparmor.security.beta.kubernetes.io/a": "unconfined",
                })),
                json!({"securityContext": profile("Unconfined"), "containers": [c("a", profile("Unconfined")), c("b", profile("Weird"))]}),
                Some(concat!(
                    r#"forbidden AppArmor profiles (pod and containers "a", "b" and annotations must not set AppArmor profile type to "#,
                    r#""Unconfined", "Weird", "container.apparmor.security.beta.kubernetes.io/a="unconfined"", "container.apparmor.security.beta.kubernetes.io/b="unconfined"")"#
                )),
            ),
        ],
    );
}

#[test]
fn se_linux_options() {
    let selinux = |options: Value| json!({ "seLinuxOptions": options });
    let cases = [
        (
            json!({"securityContext": selinux(json!({"type": "container_t", "level": "s0:c1,c2"})), "containers": [c("a", selinux(json!({"type": "container_init_t"})))]}),
            None,
        ),
        (containers(vec![c("a", selinux(json!({})))]), None),
        (
            containers(vec![c("a", selinux(json!({"type": "spc_t"})))]),
            Some(
                r#"seLinuxOptions (container "a" set forbidden securityContext.seLinuxOptions: type "spc_t")"#,
            ),
        ),
        (
            json!({"securityContext": selinux(json!({"user": "root"})), "containers": [c("a", selinux(json!({"type": "spc_t", "role": "sysadm_r"}))), c("b", selinux(json!({"type": "unconfined_t"})))]}),
            Some(
                r#"seLinuxOptions (pod and containers "a", "b" set forbidden securityContext.seLinuxOptions: types "spc_t", "unconfined_t"; user may not be set; role may not be set)"#,
            ),
        ),
    ];
    table(baseline::se_linux_options_1_31, &cases);
    table(baseline::se_linux_options_1_0, &cases);

    let engine = containers(vec![c("a", selinux(json!({"type": "container_engine_t"})))]);
    table(baseline::se_linux_options_1_31, &[(engine.clone(), None)]);
    table(
        baseline::se_linux_options_1_0,
        &[(
            engine,
            Some(
                r#"seLinuxOptions (container "a" set forbidden securityContext.seLinuxOptions: type "container_engine_t")"#,
            ),
        )],
    );
}

#[test]
fn proc_mount() {
    let unmasked = json!({"procMount": "Unmasked"});
    let cases = [
        (
            containers(vec![c("a", json!({"procMount": "Default"}))]),
            None,
        ),
        (containers(vec![c("a", json!({}))]), None),
        (
            containers(vec![c("a", unmasked.clone()), c("b", unmasked.clone())]),
            Some(
                r#"procMount (containers "a", "b" must not set securityContext.procMount to "Unmasked")"#,
            ),
        ),
    ];
    table(baseline::proc_mount, &cases);
    table(baseline::proc_mount_unless_user_namespace, &cases);

    let user_namespace = json!({"hostUsers": false, "containers": [c("a", unmasked.clone())]});
    table(
        baseline::proc_mount_unless_user_namespace,
        &[(user_namespace.clone(), None)],
    );
    table(
        baseline::proc_mount,
        &[(
            user_namespace,
            Some(
                r#"procMount (container "a" must not set securityContext.procMount to "Unmasked")"#,
            ),
        )],
    );
}

#[test]
fn baseline_seccomp() {
    let seccomp = |t: &str| json!({"seccompProfile": {"type": t}});
    table(
        baseline::seccomp_profile,
        &[
            (containers(vec![c("a", json!({}))]), None),
            (
                json!({"securityContext": seccomp("RuntimeDefault"), "containers": [c("a", seccomp("Localhost"))]}),
                None,
            ),
            (
                containers(vec![c("a", seccomp("Unconfined"))]),
                Some(
                    r#"seccompProfile (container "a" must not set securityContext.seccompProfile.type to "Unconfined")"#,
                ),
            ),
            (
                json!({"securityContext": seccomp("Unconfined"), "containers": [c("a", seccomp("Unconfined")), c("b", seccomp("RuntimeDefault"))]}),
                Some(
                    r#"seccompProfile (pod and container "a" must not set securityContext.seccompProfile.type to "Unconfined")"#,
                ),
            ),
        ],
    );
}

#[test]
fn seccomp_annotations_before_1_19() {
    table_with_metadata(
        baseline::seccomp_annotations,
        &[
            (
                json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "runtime/default", "container.seccomp.security.alpha.kubernetes.io/a": "localhost/x"}}),
                containers(vec![c("a", json!({}))]),
                None,
            ),
            (
                json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined", "container.seccomp.security.alpha.kubernetes.io/a": "unconfined", "container.seccomp.security.alpha.kubernetes.io/other": "unconfined"}}),
                containers(vec![c("a", json!({}))]),
                Some(
                    r#"seccompProfile (forbidden annotations container.seccomp.security.alpha.kubernetes.io/a="unconfined", seccomp.security.alpha.kubernetes.io/pod="unconfined")"#,
                ),
            ),
        ],
    );
}

#[test]
fn sysctls() {
    let sysctls = |names: &[&str]| {
        let list: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "value": "1"}))
            .collect();
        json!({"securityContext": {"sysctls": list}})
    };
    table(
        baseline::sysctls_1_32,
        &[
            (
                sysctls(&[
                    "kernel.shm_rmid_forced",
                    "net.ipv4.tcp_rmem",
                    "net.ipv4.tcp_keepalive_time",
                ]),
                None,
            ),
            (
                sysctls(&[
                    "kernel.msgmax",
                    "net.ipv4.ip_local_port_range",
                    "net.core.somaxconn",
                ]),
                Some("forbidden sysctls (kernel.msgmax, net.core.somaxconn)"),
            ),
            (
                sysctls(&["net.ipv4.tcp_notsent_lowat"]),
                Some("forbidden sysctls (net.ipv4.tcp_notsent_lowat)"),
            ),
        ],
    );
    table(
        baseline::sysctls_1_37,
        &[(sysctls(&["net.ipv4.tcp_notsent_lowat"]), None)],
    );
    table(
        baseline::sysctls_1_27,
        &[(
            sysctls(&["net.ipv4.tcp_rmem"]),
            Some("forbidden sysctls (net.ipv4.tcp_rmem)"),
        )],
    );
}

#[test]
fn allow_privilege_escalation() {
    let cases = [
        (
            containers(vec![c("a", json!({"allowPrivilegeEscalation": false}))]),
            None,
        ),
        (
            json!({"initContainers": [c("i", json!({}))], "containers": [c("a", json!({"allowPrivilegeEscalation": true})), json!({"name": "b"})]}),
            Some(
                r#"allowPrivilegeEscalation != false (containers "i", "a", "b" must set securityContext.allowPrivilegeEscalation=false)"#,
            ),
        ),
    ];
    table(restricted::allow_privilege_escalation, &cases);
    table(
        restricted::allow_privilege_escalation_unless_windows,
        &cases,
    );
    let windows = json!({"os": {"name": "windows"}, "containers": [json!({"name": "a"})]});
    table(
        restricted::allow_privilege_escalation_unless_windows,
        &[(windows, None)],
    );
}

#[test]
fn restricted_capabilities() {
    let caps = |drop: Value, add: Value| json!({"capabilities": {"drop": drop, "add": add}});
    table(
        restricted::capabilities,
        &[
            (
                containers(vec![c(
                    "a",
                    caps(json!(["ALL"]), json!(["NET_BIND_SERVICE"])),
                )]),
                None,
            ),
            (
                containers(vec![
                    c("a", json!({})),
                    c("b", caps(json!(["all"]), json!(null))),
                ]),
                Some(
                    r#"unrestricted capabilities (containers "a", "b" must set securityContext.capabilities.drop=["ALL"])"#,
                ),
            ),
            (
                containers(vec![
                    c(
                        "a",
                        caps(json!(["ALL"]), json!(["CHOWN", "NET_BIND_SERVICE"])),
                    ),
                    c("b", caps(json!(["NET_RAW"]), json!(["SYS_ADMIN"]))),
                ]),
                Some(concat!(
                    r#"unrestricted capabilities (container "b" must set securityContext.capabilities.drop=["ALL"]; "#,
                    r#"containers "a", "b" must not include "CHOWN", "SYS_ADMIN" in securityContext.capabilities.add)"#
                )),
            ),
        ],
    );
    table(
        restricted::capabilities_unless_windows,
        &[(
            json!({"os": {"name": "windows"}, "containers": [json!({"name": "a"})]}),
            None,
        )],
    );
}

#[test]
fn restricted_volume_types() {
    table(
        restricted::volume_types,
        &[
            (
                json!({"volumes": [
                    {"name": "a", "configMap": {"name": "x"}}, {"name": "b", "secret": {"secretName": "x"}},
                    {"name": "c", "emptyDir": {}}, {"name": "d", "projected": {"sources": []}},
                    {"name": "e", "downwardAPI": {}}, {"name": "f", "persistentVolumeClaim": {"claimName": "x"}},
                    {"name": "g", "csi": {"driver": "x"}}, {"name": "h", "ephemeral": {}},
                    {"name": "i", "image": {"reference": "x"}},
                ]}),
                None,
            ),
            (
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
                Some(
                    r#"restricted volume types (volume "h" uses restricted volume type "hostPath")"#,
                ),
            ),
            (
                json!({"volumes": [
                    {"name": "n", "nfs": {"server": "s", "path": "/"}},
                    {"name": "ok", "emptyDir": {}},
                    {"name": "g", "gitRepo": {"repository": "r"}},
                    {"name": "n2", "nfs": {"server": "s", "path": "/"}},
                    {"name": "odd"},
                ]}),
                Some(
                    r#"restricted volume types (volumes "n", "g", "n2", "odd" use restricted volume types "gitRepo", "nfs", "unknown")"#,
                ),
            ),
        ],
    );
}

#[test]
fn run_as_non_root() {
    let non_root = |value: bool| json!({ "runAsNonRoot": value });
    let cases = [
        (
            json!({"securityContext": non_root(true), "containers": [c("a", json!({}))]}),
            None,
        ),
        (
            containers(vec![c("a", non_root(true)), c("b", non_root(true))]),
            None,
        ),
        (
            containers(vec![
                c("a", non_root(true)),
                c("b", json!({})),
                c("c", json!({})),
            ]),
            Some(
                r#"runAsNonRoot != true (pod or containers "b", "c" must set securityContext.runAsNonRoot=true)"#,
            ),
        ),
        (
            json!({"securityContext": non_root(false), "containers": [c("a", non_root(false)), c("b", json!({}))]}),
            Some(
                r#"runAsNonRoot != true (pod and container "a" must not set securityContext.runAsNonRoot=false)"#,
            ),
        ),
        (
            json!({"securityContext": non_root(true), "containers": [c("a", non_root(false))]}),
            Some(
                r#"runAsNonRoot != true (container "a" must not set securityContext.runAsNonRoot=false)"#,
            ),
        ),
    ];
    table(restricted::run_as_non_root, &cases);
    table(restricted::run_as_non_root_unless_user_namespace, &cases);
    table(
        restricted::run_as_non_root_unless_user_namespace,
        &[(
            json!({"hostUsers": false, "containers": [c("a", json!({}))]}),
            None,
        )],
    );
}

#[test]
fn run_as_user() {
    let user = |uid: i64| json!({ "runAsUser": uid });
    let cases = [
        (
            json!({"securityContext": user(1000), "containers": [c("a", user(65534)), c("b", json!({}))]}),
            None,
        ),
        (
            json!({"securityContext": user(0), "containers": [c("a", user(0)), c("b", user(0)), c("c", user(1))]}),
            Some(r#"runAsUser=0 (pod and containers "a", "b" must not set runAsUser=0)"#),
        ),
        (
            containers(vec![c("a", user(0))]),
            Some(r#"runAsUser=0 (container "a" must not set runAsUser=0)"#),
        ),
    ];
    table(restricted::run_as_user, &cases);
    table(restricted::run_as_user_unless_user_namespace, &cases);
    table(
        restricted::run_as_user_unless_user_namespace,
        &[(
            json!({"hostUsers": false, "securityContext": user(0)}),
            None,
        )],
    );
}

#[test]
fn restricted_seccomp() {
    let seccomp = |t: &str| json!({"seccompProfile": {"type": t}});
    table(
        restricted::seccomp_profile,
        &[
            (
                json!({"securityContext": seccomp("RuntimeDefault"), "containers": [c("a", json!({})), c("b", seccomp("Localhost"))]}),
                None,
            ),
            (containers(vec![c("a", seccomp("RuntimeDefault"))]), None),
            (
                containers(vec![
                    c("a", json!({})),
                    c("b", seccomp("RuntimeDefault")),
                    c("c", json!({})),
                ]),
                Some(
                    r#"seccompProfile (pod or containers "a", "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
                ),
            ),
            (
                json!({"securityContext": seccomp("Unconfined"), "containers": [c("a", json!({}))]}),
                Some(
                    r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#,
                ),
            ),
            (
                json!({"securityContext": seccomp("RuntimeDefault"), "containers": [c("a", seccomp("Unconfined")), c("b", json!({"seccompProfile": {}}))]}),
                Some(
                    r#"seccompProfile (containers "a", "b" must not set securityContext.seccompProfile.type to "", "Unconfined")"#,
                ),
            ),
        ],
    );
    table(
        restricted::seccomp_profile_unless_windows,
        &[(
            json!({"os": {"name": "windows"}, "containers": [json!({"name": "a"})]}),
            None,
        )],
    );
}

fn lv(level: Level, version: Version) -> LevelVersion {
    LevelVersion::new(level, version)
}

const RESTRICTED: LevelVersion = LevelVersion {
    level: Level::Restricted,
    version: Version::Latest,
};
const BASELINE: LevelVersion = LevelVersion {
    level: Level::Baseline,
    version: Version::Latest,
};

#[test]
fn checks_are_in_kubernetes_order() {
    let baseline: Vec<&str> = CHECKS
        .iter()
        .filter(|c| c.level == Level::Baseline)
        .map(|c| c.id)
        .collect();
    let restricted: Vec<&str> = CHECKS
        .iter()
        .filter(|c| c.level == Level::Restricted)
        .map(|c| c.id)
        .collect();
    assert!(baseline.is_sorted());
    assert!(restricted.is_sorted());
    assert_eq!(baseline.len() + restricted.len(), CHECKS.len());
    assert_eq!(CHECKS[baseline.len()].level, Level::Restricted);
    // Every revision list increases, and the newest is NEWEST_POLICY_MINOR.
    for check in CHECKS {
        assert!(check.revisions.windows(2).all(|w| w[0].since < w[1].since));
    }
    let newest = CHECKS
        .iter()
        .flat_map(|c| c.revisions.iter().map(|r| r.since))
        .max();
    assert_eq!(newest, Some(NEWEST_POLICY_MINOR));
}

#[test]
fn privileged_pod_under_restricted() {
    let metadata = json!({"name": "priv"});
    let spec = json!({"containers": [{"name": "c", "image": "nginx", "securityContext": {"privileged": true}}]});
    let results = check_pod(&RESTRICTED, &metadata, &spec);
    assert_eq!(
        forbidden_message(&results, &RESTRICTED),
        concat!(
            r#"violates PodSecurity "restricted:latest": "#,
            r#"privileged (container "c" must not set securityContext.privileged=true), "#,
            r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), "#,
            r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), "#,
            r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), "#,
            r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
        )
    );
    assert_eq!(
        forbidden_reasons(&results),
        "privileged, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
    );
    // The same pod under baseline: only the baseline check.
    assert_eq!(
        forbidden_detail(&check_pod(&BASELINE, &metadata, &spec)),
        r#"privileged (container "c" must not set securityContext.privileged=true)"#
    );
    assert!(check_pod(&LevelVersion::PRIVILEGED_LATEST, &metadata, &spec).is_empty());
}

#[test]
fn host_network_pod_under_baseline() {
    let spec = json!({"hostNetwork": true, "containers": [{"name": "c", "image": "nginx"}]});
    let results = check_pod(&BASELINE, &json!({}), &spec);
    assert_eq!(
        warning_message(&results, &BASELINE),
        r#"would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#
    );
}

#[test]
fn compliant_restricted_pod_passes() {
    let spec = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "c",
            "image": "nginx",
            "ports": [{"containerPort": 8080}],
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [{"name": "token", "projected": {"sources": []}}],
    });
    assert_eq!(check_pod(&RESTRICTED, &json!({}), &spec), []);
}

#[test]
fn restricted_overrides_its_baseline_counterparts() {
    // hostPath: reported once, by the restricted volume check.
    let spec = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Unconfined"}},
        "containers": [{"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
            "procMount": "Unmasked",
        }}],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    });
    assert_eq!(
        forbidden_reasons(&check_pod(&RESTRICTED, &json!({}), &spec)),
        "unrestricted capabilities, procMount, restricted volume types, seccompProfile"
    );
    assert_eq!(
        forbidden_reasons(&check_pod(&BASELINE, &json!({}), &spec)),
        "non-default capabilities, hostPath volumes, procMount, seccompProfile"
    );
}

#[test]
fn versions_select_the_rules_of_their_time() {
    let user_namespace_root = json!({
        "hostUsers": false,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "runAsUser": 0},
        "containers": [{"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "procMount": "Unmasked",
        }}],
    });
    let reasons = |lv: LevelVersion, evaluator: Evaluator| {
        forbidden_reasons(&evaluator.check_pod(&lv, &json!({}), &user_namespace_root))
    };
    use Level::*;
    use Version::*;
    let newest = Evaluator::newest();
    // 1.35 relaxed runAsNonRoot, runAsUser and (for baseline) procMount in user namespaces.
    assert_eq!(reasons(lv(Restricted, Latest), newest), "procMount");
    assert_eq!(reasons(lv(Baseline, Latest), newest), "");
    assert_eq!(
        reasons(lv(Restricted, V(34)), newest),
        "procMount, runAsNonRoot != true, runAsUser=0"
    );
    assert_eq!(reasons(lv(Baseline, V(34)), newest), "procMount");
    // Before 1.23 there was no runAsUser check, before 1.22 no
    // restricted capabilities check (so baseline's ran), before 1.8 no
    // allowPrivilegeEscalation check.
    assert_eq!(
        reasons(lv(Restricted, V(22)), newest),
        "procMount, runAsNonRoot != true"
    );
    // An API server emulating 1.32 evaluates latest by 1.32's rules.
    assert_eq!(
        reasons(lv(Restricted, Latest), Evaluator::emulating(32)),
        "procMount, runAsNonRoot != true, runAsUser=0"
    );
    // Versions after the newest rules are the newest rules.
    assert_eq!(reasons(lv(Restricted, V(99)), newest), "procMount");

    let old_style = json!({
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
    });
    let old_reasons =
        |version| forbidden_reasons(&check_pod(&lv(Restricted, version), &json!({}), &old_style));
    assert_eq!(
        old_reasons(V(7)),
        "non-default capabilities, runAsNonRoot != true"
    );
    assert_eq!(
        old_reasons(V(21)),
        "non-default capabilities, allowPrivilegeEscalation != false, runAsNonRoot != true, seccompProfile"
    );
    assert_eq!(
        old_reasons(V(22)),
        "allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
    );
}

#[test]
fn results_without_reason_or_detail() {
    let results = [
        CheckResult::new("", "x"),
        CheckResult::new("host namespaces", ""),
    ];
    assert_eq!(
        forbidden_detail(&results),
        "unknown forbidden reason (x), host namespaces"
    );
}
