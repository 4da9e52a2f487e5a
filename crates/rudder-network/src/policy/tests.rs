//! Rendering checks: a cluster in the model, the chains it gives.

use std::collections::BTreeMap;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_match_labels(&labels(pairs)).unwrap()
}

fn pod(ns: &str, name: &str, ip: &str, l: &[(&str, &str)], local: bool) -> PolicyPod {
    PolicyPod {
        namespace: ns.into(),
        name: name.into(),
        ip: ip.parse().unwrap(),
        labels: labels(l),
        ports: Vec::new(),
        local,
    }
}

fn policy(ns: &str, name: &str, select: &[(&str, &str)]) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: selector(select),
        policy_types: Vec::new(),
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

fn pods_peer(ns: Option<&[(&str, &str)]>, pods: &[(&str, &str)]) -> Peer {
    Peer::Pods {
        namespace_selector: ns.map(selector),
        pod_selector: selector(pods),
    }
}

fn tcp(port: u16) -> PortMatch {
    PortMatch {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Number(port)),
        end_port: None,
    }
}

fn named(name: &str) -> PortMatch {
    PortMatch {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Name(name.into())),
        end_port: None,
    }
}

fn namespaces() -> Vec<PolicyNamespace> {
    vec![
        PolicyNamespace {
            name: "shop".into(),
            labels: labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "a")]),
        },
        PolicyNamespace {
            name: "ops".into(),
            labels: labels(&[("kubernetes.io/metadata.name", "ops"), ("team", "b")]),
        },
    ]
}

/// web (local) and db (local) in shop; front in shop on another node;
/// monitor in ops (local).
fn cluster(policies: Vec<NetworkPolicy>) -> ClusterState {
    ClusterState {
        pods: vec![
            pod("shop", "web", "10.42.1.10", &[("app", "web")], true),
            pod("shop", "db", "10.42.1.11", &[("app", "db")], true),
            pod(
                "shop",
                "front",
                "10.42.2.20",
                &[("role", "frontend")],
                false,
            ),
            pod(
                "ops",
                "monitor",
                "10.42.1.30",
                &[("role", "frontend")],
                true,
            ),
        ],
        namespaces: namespaces(),
        policies,
    }
}

/// The rendered chains, each as its lines.
fn chains(state: &ClusterState) -> BTreeMap<String, Vec<String>> {
    let table = PolicyTable {
        name: "t".into(),
        node_ips: vec!["10.99.0.11".parse().unwrap(), "10.42.1.1".parse().unwrap()],
    };
    let script = render(&table, state);
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in script.lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            current = Some(name.to_string());
            out.insert(name.to_string(), Vec::new());
        } else if line == "}" {
            current = None;
        } else if let Some(chain) = &current {
            out.get_mut(chain).unwrap().push(line.to_string());
        }
    }
    out
}

#[test]
fn the_script_replaces_the_whole_table_in_one_go() {
    let table = PolicyTable {
        name: "rdt".into(),
        node_ips: vec![],
    };
    let script = render(&table, &cluster(vec![]));
    assert!(
        script.starts_with("table inet rdt {}\ndelete table inet rdt\ntable inet rdt {\n"),
        "{script}"
    );
}

#[test]
fn without_policies_nothing_is_isolated() {
    let c = chains(&cluster(vec![]));
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(
        c["forward"],
        vec![
            "type filter hook forward priority filter; policy accept;",
            "ct state established,related accept",
            "ip saddr { 10.42.1.1, 10.99.0.11 } accept",
        ]
    );
}

#[test]
fn default_deny_isolates_the_namespace_local_pods_only() {
    let c = chains(&cluster(vec![policy("shop", "deny", &[])]));
    // web and db are local in shop; front is remote, monitor in ops.
    assert_eq!(c["ingress_10_42_1_10"], vec!["drop"]);
    assert_eq!(c["ingress_10_42_1_11"], vec!["drop"]);
    assert!(!c.contains_key("ingress_10_42_2_20"));
    assert!(!c.contains_key("ingress_10_42_1_30"));
    assert!(!c.keys().any(|k| k.starts_with("egress_")), "{c:?}");
    assert!(c["forward"].contains(
        &"ip daddr vmap { 10.42.1.10 : jump ingress_10_42_1_10, 10.42.1.11 : jump ingress_10_42_1_11 }"
            .to_string()
    ));
}

#[test]
fn allow_from_label_in_own_namespace_on_a_port() {
    let mut p = policy("shop", "web", &[("app", "web")]);
    p.policy_types = vec![PolicyType::Ingress];
    p.ingress = vec![Rule {
        peers: Some(vec![pods_peer(None, &[("role", "frontend")])]),
        ports: vec![tcp(80)],
    }];
    let c = chains(&cluster(vec![p]));
    // monitor is a frontend too, but in ops: not in the set.
    assert_eq!(
        c["ingress_10_42_1_10"],
        vec![
            "ip saddr 10.42.2.20 meta l4proto tcp th dport 80 accept",
            "drop"
        ]
    );
    assert!(!c.contains_key("ingress_10_42_1_11"), "db is not selected");
}

#[test]
fn namespace_selector_alone_and_with_a_pod_selector() {
    let mut p = policy("shop", "web", &[("app", "web")]);
    p.ingress = vec![
        Rule {
            peers: Some(vec![pods_peer(Some(&[("team", "b")]), &[])]),
            ports: vec![],
        },
        Rule {
            peers: Some(vec![pods_peer(Some(&[]), &[("role", "frontend")])]),
            ports: vec![tcp(8080)],
        },
    ];
    let c = chains(&cluster(vec![p]));
    assert_eq!(
        c["ingress_10_42_1_10"],
        vec![
            // every pod of ops
            "ip saddr 10.42.1.30 accept",
            // frontends of every namespace
            "ip saddr { 10.42.1.30, 10.42.2.20 } meta l4proto tcp th dport 8080 accept",
            "drop"
        ]
    );
}

#[test]
fn ip_blocks_with_exceptions_and_everything() {
    let mut p = policy("shop", "web", &[("app", "web")]);
    p.ingress = vec![
        Rule {
            peers: Some(vec![Peer::IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec![
                    "10.1.2.0/24".parse().unwrap(),
                    "10.1.0.0/16".parse().unwrap(),
                    "10.9.0.0/16".parse().unwrap(),
                ],
            }]),
            ports: vec![],
        },
        // empty `from`: every source, on one port
        Rule {
            peers: None,
            ports: vec![PortMatch {
                protocol: Protocol::Udp,
                port: Some(PortRef::Number(53)),
                end_port: None,
            }],
        },
    ];
    let c = chains(&cluster(vec![p]));
    assert_eq!(
        c["ingress_10_42_1_10"],
        vec![
            "ip saddr 10.0.0.0/8 ip saddr != { 10.1.0.0/16, 10.9.0.0/16 } accept",
            "meta l4proto udp th dport 53 accept",
            "drop"
        ]
    );
}

#[test]
fn an_empty_rule_allows_everything_and_an_empty_peer_list_nothing() {
    let mut open = policy("shop", "open", &[("app", "web")]);
    open.ingress = vec![Rule {
        peers: None,
        ports: vec![],
    }];
    let c = chains(&cluster(vec![open]));
    assert_eq!(c["ingress_10_42_1_10"], vec!["accept", "drop"]);

    let mut none = policy("shop", "none", &[("app", "web")]);
    none.ingress = vec![
        Rule {
            peers: Some(vec![]),
            ports: vec![],
        },
        // a selector matching no pod
        Rule {
            peers: Some(vec![pods_peer(None, &[("app", "nope")])]),
            ports: vec![],
        },
    ];
    let c = chains(&cluster(vec![none]));
    assert_eq!(c["ingress_10_42_1_10"], vec!["drop"]);
}

#[test]
fn named_ports_resolve_on_each_destination_pod() {
    let mut state = cluster(vec![]);
    state.pods[0].ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    state.pods[1].ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Udp,
        port: 9090,
    }];
    let mut p = policy("shop", "all", &[]);
    p.ingress = vec![Rule {
        peers: None,
        ports: vec![named("http")],
    }];
    state.policies = vec![p];
    let c = chains(&state);
    assert_eq!(
        c["ingress_10_42_1_10"],
        vec!["meta l4proto tcp th dport 8080 accept", "drop"]
    );
    // db's `http` is UDP; the rule names a TCP port: nothing matches.
    assert_eq!(c["ingress_10_42_1_11"], vec!["drop"]);
}

#[test]
fn port_ranges_and_whole_protocols() {
    let mut p = policy("shop", "web", &[("app", "web")]);
    p.ingress = vec![Rule {
        peers: None,
        ports: vec![
            PortMatch {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Number(32000)),
                end_port: Some(32768),
            },
            PortMatch {
                protocol: Protocol::Sctp,
                port: None,
                end_port: None,
            },
        ],
    }];
    let c = chains(&cluster(vec![p]));
    assert_eq!(
        c["ingress_10_42_1_10"],
        vec![
            "meta l4proto tcp th dport 32000-32768 accept",
            "meta l4proto sctp accept",
            "drop"
        ]
    );
}

#[test]
fn policy_types_default_from_the_rules() {
    let egress_rule = Rule {
        peers: Some(vec![pods_peer(None, &[("app", "db")])]),
        ports: vec![tcp(5432)],
    };
    // Unset types with egress rules: Ingress and Egress.
    let mut both = policy("shop", "both", &[("app", "web")]);
    both.egress = vec![egress_rule.clone()];
    assert_eq!(both.types(), vec![PolicyType::Ingress, PolicyType::Egress]);
    let c = chains(&cluster(vec![both.clone()]));
    assert_eq!(c["ingress_10_42_1_10"], vec!["drop"]);
    assert_eq!(
        c["egress_10_42_1_10"],
        vec![
            "ip daddr 10.42.1.11 meta l4proto tcp th dport 5432 return",
            "drop"
        ]
    );
    assert!(
        c["forward"].contains(&"ip saddr vmap { 10.42.1.10 : jump egress_10_42_1_10 }".to_string())
    );

    // Explicit types win: egress rules of an Ingress-only policy do nothing.
    let mut ingress_only = both.clone();
    ingress_only.policy_types = vec![PolicyType::Ingress];
    let c = chains(&cluster(vec![ingress_only]));
    assert!(!c.contains_key("egress_10_42_1_10"));

    // Egress-only: ingress stays open.
    let mut egress_only = both;
    egress_only.policy_types = vec![PolicyType::Egress];
    let c = chains(&cluster(vec![egress_only]));
    assert!(!c.contains_key("ingress_10_42_1_10"));
    assert!(c.contains_key("egress_10_42_1_10"));

    // No rules at all: Ingress only.
    assert_eq!(policy("shop", "p", &[]).types(), vec![PolicyType::Ingress]);
}

#[test]
fn egress_named_ports_group_destinations_by_number() {
    let mut state = cluster(vec![]);
    let http = |port| {
        vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port,
        }]
    };
    state.pods[1].ports = http(8080); // db
    state.pods[2].ports = http(80); // front
    state.pods.push(PolicyPod {
        ports: http(80),
        ..pod("shop", "api", "10.42.2.21", &[], false)
    });
    let mut p = policy("shop", "out", &[("app", "web")]);
    p.policy_types = vec![PolicyType::Egress];
    p.egress = vec![
        Rule {
            peers: Some(vec![pods_peer(None, &[])]),
            ports: vec![named("http"), tcp(53)],
        },
        // an address block covers pods too
        Rule {
            peers: Some(vec![Peer::IpBlock {
                cidr: "10.42.2.0/24".parse().unwrap(),
                except: vec!["10.42.2.21/32".parse().unwrap()],
            }]),
            ports: vec![named("http")],
        },
    ];
    state.policies = vec![p];
    let c = chains(&state);
    assert_eq!(
        c["egress_10_42_1_10"],
        vec![
            "ip daddr { 10.42.2.20, 10.42.2.21 } meta l4proto tcp th dport 80 return",
            "ip daddr 10.42.1.11 meta l4proto tcp th dport 8080 return",
            "ip daddr { 10.42.1.10, 10.42.1.11, 10.42.2.20, 10.42.2.21 } meta l4proto tcp th dport 53 return",
            "ip daddr 10.42.2.20 meta l4proto tcp th dport 80 return",
            "drop"
        ]
    );
}

#[test]
fn several_policies_add_up_and_repeat_nothing() {
    let rule = Rule {
        peers: Some(vec![pods_peer(None, &[("role", "frontend")])]),
        ports: vec![tcp(80)],
    };
    let mut a = policy("shop", "a", &[("app", "web")]);
    a.ingress = vec![rule.clone()];
    let mut b = policy("shop", "b", &[]);
    b.ingress = vec![
        rule,
        Rule {
            peers: Some(vec![Peer::IpBlock {
                cidr: "192.168.0.0/16".parse().unwrap(),
                except: vec![],
            }]),
            ports: vec![],
        },
    ];
    let c = chains(&cluster(vec![b, a]));
    assert_eq!(
        c["ingress_10_42_1_10"],
        vec![
            "ip saddr 10.42.2.20 meta l4proto tcp th dport 80 accept",
            "ip saddr 192.168.0.0/16 accept",
            "drop"
        ]
    );
}

#[test]
fn rendering_is_deterministic() {
    let mut p = policy("shop", "web", &[]);
    p.ingress = vec![Rule {
        peers: Some(vec![pods_peer(Some(&[]), &[])]),
        ports: vec![],
    }];
    let mut state = cluster(vec![p]);
    let table = PolicyTable::new(vec![]);
    let first = render(&table, &state);
    state.pods.reverse();
    state.namespaces.reverse();
    assert_eq!(render(&table, &state), first);
}
