//! NetworkPolicy enforcement on this node: the cluster's Pods, Namespaces
//! and NetworkPolicies, watched through the shared informers, become the
//! model of `rudder_network::policy`, rendered to one nftables table and
//! installed in one transaction whenever the rendering changes. Bursts of
//! changes are coalesced into one re-render.
//!
//! A policy that cannot be programmed (a malformed field the API let
//! through, a rule `nft` refuses) is reported as a Warning Event on the
//! NetworkPolicy and left out, failing closed: a broken rule allows
//! nothing, while the pods its policy selects stay isolated. The agent
//! keeps running.
//!
//! The table is never deleted when the agent stops: after a restart the
//! old rules stay in force until the first rendering replaces them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Client, ResourceExt};
use rudder_apimachinery::selector::LabelSelector;
use rudder_network::policy::{self, ClusterState, NamedPort, PolicyTable, Protocol};
use rudder_network::Ipv4Cidr;
use rudder_runtime::events::{EventRecorder, EventType};
use rudder_runtime::Informers;

/// How long a burst of changes may last before the rules are rebuilt.
const COALESCE: Duration = Duration::from_millis(200);
/// How soon a failed installation is tried again without a new change.
const RETRY: Duration = Duration::from_secs(10);

/// What the enforcer needs to know about its node.
#[derive(Clone, Debug)]
pub struct NetworkPolicyConfig {
    /// The node's name: pods bound to it get rules.
    pub node_name: String,
    /// The node's own addresses (InternalIP, the pod bridge's gateway):
    /// their traffic to local pods always passes (kubelet probes).
    pub node_ips: Vec<Ipv4Addr>,
    /// The nftables table (`inet rudder-policy`).
    pub table: String,
}

/// Enforces NetworkPolicies until the process ends. Starts the informers
/// it asks for if the caller's `Informers` already started.
pub async fn run(client: Client, informers: Informers, config: NetworkPolicyConfig) {
    let pods = informers.get::<Pod>();
    let namespaces = informers.get::<Namespace>();
    let policies = informers.get::<net::NetworkPolicy>();
    let changed = Arc::new(tokio::sync::Notify::new());
    pods.notify_on_change(&changed);
    namespaces.notify_on_change(&changed);
    policies.notify_on_change(&changed);
    pods.wait_synced().await;
    namespaces.wait_synced().await;
    policies.wait_synced().await;
    match tokio::task::spawn_blocking(policy::ensure_bridge_netfilter).await {
        Ok(Ok(policy::BridgeNetfilter::Enabled)) => {}
        Ok(Ok(policy::BridgeNetfilter::Unavailable)) => tracing::warn!(
            "br_netfilter is not available: traffic between pods of this node bypasses NetworkPolicy"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "enabling br_netfilter"),
        Err(e) => tracing::warn!(error = %e, "enabling br_netfilter"),
    }
    tracing::info!(table = %config.table, "NetworkPolicy enforcement started");

    let recorder = EventRecorder::new(client, "network-policy-agent");
    let table = PolicyTable {
        name: config.table.clone(),
        node_ips: config.node_ips.clone(),
    };
    let mut installed: Option<String> = None;
    // What was last reported per policy (namespace/name → message), so an
    // unchanged problem is not reported on every change of some pod.
    let mut reported: HashMap<String, String> = HashMap::new();
    // Whether the last installation failed: said once at error level, not
    // on every retry.
    let mut failing = false;
    loop {
        let all_policies = policies.list();
        let mut state = ClusterState {
            pods: pods
                .list()
                .iter()
                .filter_map(|p| policy_pod(p, &config.node_name))
                .collect(),
            namespaces: namespaces
                .list()
                .iter()
                .map(|n| policy::PolicyNamespace {
                    name: n.name_any(),
                    labels: n.labels().clone(),
                })
                .collect(),
            policies: Vec::new(),
        };
        let mut problems: BTreeMap<String, (Arc<net::NetworkPolicy>, Vec<String>)> =
            BTreeMap::new();
        for np in &all_policies {
            let (converted, errors) = convert_policy(np);
            if let Some(converted) = converted {
                state.policies.push(converted);
            }
            if !errors.is_empty() {
                problems.insert(key(np), (np.clone(), errors));
            }
        }
        let script = policy::render(&table, &state);
        if installed.as_ref() != Some(&script) {
            match install(&table, &mut state, &all_policies, &mut problems, script).await {
                Ok(script) => {
                    if failing {
                        tracing::info!("NetworkPolicy rules installed again");
                    }
                    tracing::debug!(
                        policies = state.policies.len(),
                        "NetworkPolicy rules installed"
                    );
                    installed = Some(script);
                    failing = false;
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "installing the NetworkPolicy rules failed again");
                    } else {
                        tracing::error!(error = %e, "installing the NetworkPolicy rules failed; retrying every {}s", RETRY.as_secs());
                    }
                    installed = None;
                    failing = true;
                }
            }
        }
        report(&recorder, &mut reported, &problems);

        if failing {
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
        } else {
            changed.notified().await;
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// Installs the rules; if `nft` refuses them, finds the policies whose
/// rules it refuses (each checked alone), leaves them out with a problem
/// each, and installs the rest. Returns the script installed.
async fn install(
    table: &PolicyTable,
    state: &mut ClusterState,
    all: &[Arc<net::NetworkPolicy>],
    problems: &mut BTreeMap<String, (Arc<net::NetworkPolicy>, Vec<String>)>,
    script: String,
) -> Result<String, rudder_network::NetworkError> {
    let first = script.clone();
    let error = match tokio::task::spawn_blocking(move || policy::apply(&first)).await {
        Ok(Ok(())) => return Ok(script),
        Ok(Err(e)) => e,
        Err(e) => return Err(join_error(e)),
    };
    tracing::warn!(error = %error, "nft refused the NetworkPolicy rules; checking each policy");
    let mut kept = Vec::new();
    for candidate in std::mem::take(&mut state.policies) {
        let alone = ClusterState {
            policies: vec![candidate.clone()],
            ..state.clone()
        };
        let script = policy::render(table, &alone);
        match tokio::task::spawn_blocking(move || policy::check(&script)).await {
            Ok(Ok(())) => kept.push(candidate),
            Ok(Err(e)) => {
                let k = format!("{}/{}", candidate.namespace, candidate.name);
                if let Some(np) = all.iter().find(|np| key(np) == k) {
                    problems
                        .entry(k)
                        .or_insert_with(|| (np.clone(), Vec::new()))
                        .1
                        .push(format!("nft refused its rules: {e}"));
                }
            }
            Err(e) => return Err(join_error(e)),
        }
    }
    state.policies = kept;
    let script = policy::render(table, state);
    let attempt = script.clone();
    match tokio::task::spawn_blocking(move || policy::apply(&attempt)).await {
        Ok(Ok(())) => Ok(script),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(join_error(e)),
    }
}

fn join_error(e: tokio::task::JoinError) -> rudder_network::NetworkError {
    rudder_network::NetworkError::Io {
        context: "running nft".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Records a Warning Event for each problem not reported yet in those
/// words; forgets policies that are fine again.
fn report(
    recorder: &EventRecorder,
    reported: &mut HashMap<String, String>,
    problems: &BTreeMap<String, (Arc<net::NetworkPolicy>, Vec<String>)>,
) {
    reported.retain(|k, _| problems.contains_key(k));
    for (k, (np, errors)) in problems {
        let message = errors.join("; ");
        if reported.get(k) == Some(&message) {
            continue;
        }
        tracing::warn!(policy = %k, problem = %message, "NetworkPolicy not fully programmed");
        recorder.record(
            np.as_ref(),
            EventType::Warning,
            "NetworkPolicyNotProgrammed",
            &message,
        );
        reported.insert(k.clone(), message);
    }
}

fn key(np: &net::NetworkPolicy) -> String {
    format!("{}/{}", np.namespace().unwrap_or_default(), np.name_any())
}

/// A pod as the rules see it: only pods with an IPv4 address on the pod
/// network (not host-network pods, whose address is their node's, and
/// not finished pods, whose address may already be someone else's).
pub fn policy_pod(pod: &Pod, node_name: &str) -> Option<policy::PolicyPod> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let ports = containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone().filter(|n| !n.is_empty())?,
                protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    Some(policy::PolicyPod {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        ip,
        labels: pod.labels().clone(),
        ports,
        local: spec.node_name.as_deref() == Some(node_name),
    })
}

fn selector(
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<LabelSelector, String> {
    match selector {
        // An absent podSelector is the empty one: every pod.
        None => Ok(LabelSelector::everything()),
        Some(s) => {
            let json = serde_json::to_value(s).map_err(|e| e.to_string())?;
            LabelSelector::from_json(&json).map_err(|e| e.to_string())
        }
    }
}

/// A NetworkPolicy in the rules' model, with what could not be converted.
/// `None` when the policy cannot select pods at all (its podSelector is
/// malformed). A rule with a malformed port is dropped whole (a dropped
/// port could widen it to every port); a malformed peer is dropped (the
/// rule then allows less).
pub fn convert_policy(np: &net::NetworkPolicy) -> (Option<policy::NetworkPolicy>, Vec<String>) {
    let mut problems = Vec::new();
    let Some(spec) = np.spec.as_ref() else {
        problems.push("the policy has no spec".to_string());
        return (None, problems);
    };
    let pod_selector = match selector(spec.pod_selector.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("spec.podSelector: {e}"));
            return (None, problems);
        }
    };
    let mut policy_types = Vec::new();
    for t in spec.policy_types.iter().flatten() {
        match t.as_str() {
            "Ingress" => policy_types.push(policy::PolicyType::Ingress),
            "Egress" => policy_types.push(policy::PolicyType::Egress),
            other => problems.push(format!("spec.policyTypes: unknown type {other:?}")),
        }
    }
    let mut convert_rules = |direction: &str, rules: Vec<RawRule<'_>>| {
        let mut out = Vec::new();
        for (i, (peers, ports)) in rules.into_iter().enumerate() {
            let path = format!("spec.{direction}[{i}]");
            match convert_rule(peers, ports) {
                Ok((rule, peer_problems)) => {
                    problems.extend(peer_problems.into_iter().map(|p| format!("{path}: {p}")));
                    out.push(rule);
                }
                Err(e) => problems.push(format!("{path}: {e}; the rule is ignored")),
            }
        }
        out
    };
    let ingress = convert_rules(
        "ingress",
        spec.ingress
            .iter()
            .flatten()
            .map(|r| (r.from.as_ref(), r.ports.as_ref()))
            .collect(),
    );
    let egress = convert_rules(
        "egress",
        spec.egress
            .iter()
            .flatten()
            .map(|r| (r.to.as_ref(), r.ports.as_ref()))
            .collect(),
    );
    // A dropped egress rule must not change the defaulted types.
    if policy_types.is_empty() {
        policy_types.push(policy::PolicyType::Ingress);
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            policy_types.push(policy::PolicyType::Egress);
        }
    }
    let converted = policy::NetworkPolicy {
        namespace: np.namespace().unwrap_or_default(),
        name: np.name_any(),
        pod_selector,
        policy_types,
        ingress,
        egress,
    };
    (Some(converted), problems)
}

type RuleParts = (policy::Rule, Vec<String>);

/// A rule's peers (`from` or `to`) and ports, as the API has them.
type RawRule<'a> = (
    Option<&'a Vec<net::NetworkPolicyPeer>>,
    Option<&'a Vec<net::NetworkPolicyPort>>,
);

fn convert_rule(
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
) -> Result<RuleParts, String> {
    let mut problems = Vec::new();
    let mut matches = Vec::new();
    for (j, port) in ports.into_iter().flatten().enumerate() {
        let protocol_text = port.protocol.as_deref().unwrap_or("TCP");
        let protocol = Protocol::parse(protocol_text)
            .ok_or_else(|| format!("ports[{j}]: unknown protocol {protocol_text:?}"))?;
        let number = |n: i32, field: &str| {
            u16::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("ports[{j}].{field}: {n} is not a port number"))
        };
        let port_ref = match &port.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(policy::PortRef::Number(number(*n, "port")?)),
            Some(IntOrString::String(name)) => Some(policy::PortRef::Name(name.clone())),
        };
        let end_port = match port.end_port {
            None => None,
            Some(n) => Some(number(n, "endPort")?),
        };
        if end_port.is_some() && !matches!(port_ref, Some(policy::PortRef::Number(_))) {
            return Err(format!("ports[{j}]: endPort needs a numeric port"));
        }
        matches.push(policy::PortMatch {
            protocol,
            port: port_ref,
            end_port,
        });
    }
    let peers = match peers {
        None => None,
        Some(list) if list.is_empty() => None,
        Some(list) => {
            let mut out = Vec::new();
            for (j, peer) in list.iter().enumerate() {
                match convert_peer(peer) {
                    Ok(Some(p)) => out.push(p),
                    // An IPv6 block: nothing on this IPv4 pod network.
                    Ok(None) => {}
                    Err(e) => problems.push(format!("peer {j}: {e}; the peer is ignored")),
                }
            }
            Some(out)
        }
    };
    Ok((
        policy::Rule {
            peers,
            ports: matches,
        },
        problems,
    ))
}

fn convert_peer(peer: &net::NetworkPolicyPeer) -> Result<Option<policy::Peer>, String> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with selectors".into());
        }
        if block.cidr.contains(':') {
            return Ok(None);
        }
        let cidr: Ipv4Cidr = block.cidr.parse().map_err(|e| format!("ipBlock: {e}"))?;
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            if e.contains(':') {
                continue;
            }
            except.push(
                e.parse::<Ipv4Cidr>()
                    .map_err(|err| format!("ipBlock.except: {err}"))?,
            );
        }
        return Ok(Some(policy::Peer::IpBlock { cidr, except }));
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err("a peer needs a podSelector, a namespaceSelector or an ipBlock".into());
    }
    let namespace_selector = match &peer.namespace_selector {
        None => None,
        Some(s) => Some(selector(Some(s)).map_err(|e| format!("namespaceSelector: {e}"))?),
    };
    let pod_selector =
        selector(peer.pod_selector.as_ref()).map_err(|e| format!("podSelector: {e}"))?;
    Ok(Some(policy::Peer::Pods {
        namespace_selector,
        pod_selector,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np(spec: serde_json::Value) -> net::NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "net"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn converts_the_acceptance_policy() {
        let (p, problems) = convert_policy(&np(json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                         "ports": [{"protocol": "TCP", "port": 80}]}]
        })));
        assert!(problems.is_empty(), "{problems:?}");
        let p = p.unwrap();
        assert_eq!(p.namespace, "net");
        assert_eq!(p.policy_types, vec![policy::PolicyType::Ingress]);
        assert_eq!(
            p.ingress,
            vec![policy::Rule {
                peers: Some(vec![policy::Peer::Pods {
                    namespace_selector: None,
                    pod_selector: LabelSelector::parse("role=frontend").unwrap(),
                }]),
                ports: vec![policy::PortMatch {
                    protocol: Protocol::Tcp,
                    port: Some(policy::PortRef::Number(80)),
                    end_port: None
                }],
            }]
        );
    }

    #[test]
    fn broken_parts_fail_closed_and_are_reported() {
        let (p, problems) = convert_policy(&np(json!({
            "podSelector": {},
            "ingress": [
                // a bad port drops the rule
                {"ports": [{"protocol": "ICMP", "port": 1}]},
                // a bad peer is dropped; the IPv6 one is silently nothing
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}, {"ipBlock": {"cidr": "fd00::/8"}}]},
                // empty `from`: every source
                {"from": []}
            ],
            "egress": [{"ports": [{"port": "http", "endPort": 90}]}]
        })));
        let p = p.unwrap();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("spec.ingress[0]: ports[0]: unknown protocol"));
        assert!(problems[1].starts_with("spec.ingress[1]: peer 0: ipBlock"));
        assert!(problems[2].starts_with("spec.egress[0]: ports[0]: endPort"));
        assert_eq!(p.ingress.len(), 2);
        assert_eq!(p.ingress[0].peers, Some(vec![]));
        assert_eq!(p.ingress[1].peers, None);
        // The egress rule is gone but the policy still isolates egress.
        assert!(p.egress.is_empty());
        assert_eq!(
            p.policy_types,
            vec![policy::PolicyType::Ingress, policy::PolicyType::Egress]
        );
    }

    #[test]
    fn pods_on_the_pod_network_only() {
        let pod = |extra: serde_json::Value| -> Pod {
            let mut base = json!({"metadata": {"name": "a", "namespace": "net", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 80}, {"containerPort": 81},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "podIP": "10.42.1.5"}});
            rudder_apimachinery::strategic_merge::json_merge_patch(&mut base, &extra);
            serde_json::from_value(base).unwrap()
        };
        let p = policy_pod(&pod(json!({})), "n1").unwrap();
        assert!(p.local);
        assert_eq!(p.ip, Ipv4Addr::new(10, 42, 1, 5));
        assert_eq!(
            p.ports,
            vec![
                NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80
                },
                NamedPort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53
                }
            ]
        );
        assert!(!policy_pod(&pod(json!({})), "n2").unwrap().local);
        assert!(policy_pod(&pod(json!({"spec": {"hostNetwork": true}})), "n1").is_none());
        assert!(policy_pod(&pod(json!({"status": {"phase": "Succeeded"}})), "n1").is_none());
        assert!(policy_pod(&pod(json!({"status": {"podIP": null}})), "n1").is_none());
    }

    /// Set in the child that runs [`agent_loop_inner`] inside its namespace.
    const INNER: &str = "RDTING_POLICY_NETNS";

    /// The whole loop (informers → rules in the kernel) against a real API
    /// server; needs root and `nft`. The loop programs the kernel of the
    /// namespace it runs in, so the test runs itself again inside a private
    /// network namespace.
    #[test]
    fn the_loop_follows_the_api_in_a_private_namespace() {
        let netns = format!("rdting-agent-{:x}", std::process::id());
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["ip", "netns", "add", &netns]);
        struct Delete(String);
        impl Drop for Delete {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .output();
            }
        }
        let _delete = Delete(netns.clone());
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "network_policy::tests::agent_loop_inner",
                "--include-ignored",
                "--nocapture",
            ])
            .env(INNER, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the loop's test failed in {netns}");
    }

    #[tokio::test]
    #[ignore = "run inside a private network namespace by the_loop_follows_the_api_in_a_private_namespace"]
    async fn agent_loop_inner() {
        use crate::volumes::testing::TestApi;
        use kube::api::{Api, DeleteParams, Patch, PatchParams};
        if std::env::var_os(INNER).is_none() {
            return;
        }
        let api = TestApi::start().await;
        api.namespace("net").await;
        let pods: Api<Pod> = Api::namespaced(api.client.clone(), "net");
        for (name, node, ip, labels) in [
            ("web", "n1", "10.83.200.10", json!({"app": "web"})),
            ("client", "n2", "10.83.200.20", json!({"role": "frontend"})),
            ("intruder", "n1", "10.83.200.30", json!({"role": "other"})),
        ] {
            let _: Pod = api
                .create(
                    "net",
                    json!({"metadata": {"name": name, "labels": labels},
                           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}),
                )
                .await;
            pods.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip}})),
            )
            .await
            .unwrap();
        }
        let informers = Informers::new(api.client.clone());
        let table = "rdting-agent";
        tokio::spawn(run(
            api.client.clone(),
            informers.clone(),
            NetworkPolicyConfig {
                node_name: "n1".into(),
                node_ips: vec![Ipv4Addr::new(10, 83, 200, 1)],
                table: table.into(),
            },
        ));
        informers.start();
        let listing = || table_listing(table);
        wait_for(table, "the table", |l| {
            l.contains("ip saddr 10.83.200.1 accept")
        })
        .await;
        assert!(!listing().contains("vmap"), "no policy, no pod isolated");

        let _: net::NetworkPolicy = api
            .create(
                "net",
                json!({"metadata": {"name": "web-ingress"}, "spec": {
                    "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                                 "ports": [{"protocol": "TCP", "port": 80}]}]}}),
            )
            .await;
        wait_for(table, "the frontend allowed into web", |l| {
            l.contains("ip saddr 10.83.200.20 tcp dport 80 accept")
                && l.contains("ip daddr vmap { 10.83.200.10 : jump ingress_10_83_200_10 }")
        })
        .await;

        // A relabelled pod joins the allowed set.
        let _: Pod = api
            .patch(
                "net",
                "intruder",
                json!({"metadata": {"labels": {"role": "frontend"}}}),
            )
            .await;
        wait_for(table, "both frontends allowed", |l| {
            l.contains("ip saddr { 10.83.200.20, 10.83.200.30 } tcp dport 80 accept")
        })
        .await;

        let policies: Api<net::NetworkPolicy> = Api::namespaced(api.client.clone(), "net");
        policies
            .delete("web-ingress", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(table, "no pod isolated once the policy is gone", |l| {
            l.contains("ip saddr 10.83.200.1 accept") && !l.contains("ingress_")
        })
        .await;
        policy::remove(table).unwrap();
    }

    fn table_listing(table: &str) -> String {
        let out = std::process::Command::new("nft")
            .args(["list", "table", "inet", table])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the table's listing until `check` holds (for up to 30 s).
    async fn wait_for(table: &str, what: &str, check: impl Fn(&str) -> bool) {
        for _ in 0..300 {
            if check(&table_listing(table)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never saw: {what}\n{}", table_listing(table));
    }
}
