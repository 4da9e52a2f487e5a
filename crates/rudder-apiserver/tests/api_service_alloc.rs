//! Service cluster IPs and node ports, through the `kube` crate against a
//! real server: allocation, refusals with Kubernetes' messages, and the
//! system Services a new cluster has.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::Client;
use rudder_apiserver::ApiServer;
use rudder_store::{SqliteConfig, SqliteStore};
use serde_json::json;

async fn server(listen: &str) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("state.db")))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ApiServer::new(Arc::new(store), addr.to_string())
        .with_service_cidr("10.96.0.0/24".parse().unwrap(), None);
    server.bootstrap().await.unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (Client::try_from(config).unwrap(), dir)
}

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn invalid_message(err: kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert_eq!(status.reason, "Invalid");
            status.message
        }
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn services_get_free_cluster_ips_and_node_ports() {
    let (client, _dir) = server("127.0.0.1:0").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    let mut ips = std::collections::HashSet::new();
    for i in 0..20 {
        let svc = services
            .create(
                &pp,
                &service(&format!("s{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
            .unwrap();
        let spec = svc.spec.unwrap();
        let ip: Ipv4Addr = spec.cluster_ip.clone().unwrap().parse().unwrap();
        assert_eq!(ip.octets()[..3], [10, 96, 0], "{ip} is in the service CIDR");
        assert!(ip.octets()[3] != 0 && ip.octets()[3] != 255);
        assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
        assert!(ips.insert(ip), "{ip} handed out twice");
    }

    // An address someone holds, one outside the range.
    let taken = ips.iter().next().unwrap().to_string();
    let msg = invalid_message(
        services
            .create(
                &pp,
                &service("dup", json!({"clusterIP": taken, "ports": [{"port": 80}]})),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains(&format!(
            "spec.clusterIPs: Invalid value: []string{{\"{taken}\"}}: failed to allocate IP {taken}: provided IP is already allocated"
        )),
        "{msg}"
    );
    let msg = invalid_message(
        services
            .create(
                &pp,
                &service(
                    "far",
                    json!({"clusterIP": "10.0.0.5", "ports": [{"port": 80}]}),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains("the provided IP (10.0.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/24"),
        "{msg}"
    );

    // Headless services hold no address.
    let headless = services
        .create(
            &pp,
            &service(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        headless.spec.unwrap().cluster_ips,
        Some(vec!["None".to_string()])
    );

    // Node ports: allocated in range, a taken one refused, per protocol.
    let np = services
        .create(
            &pp,
            &service(
                "np",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]}),
            ),
        )
        .await;
    let np = np.unwrap_err();
    // Two ports need names.
    let _ = invalid_message(np);
    let np = services
        .create(
            &pp,
            &service(
                "np",
                json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]}),
            ),
        )
        .await
        .unwrap();
    let ports = np.spec.unwrap().ports.unwrap();
    assert_eq!(ports[0].node_port, Some(30080));
    let auto = ports[1].node_port.unwrap();
    assert!((30000..=32767).contains(&auto), "{auto}");
    let msg = invalid_message(
        services
            .create(
                &pp,
                &service(
                    "np2",
                    json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
                ),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{msg}"
    );
    services
        .create(
            &pp,
            &service(
                "np-udp",
                json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "UDP", "nodePort": 30080}]}),
            ),
        )
        .await
        .unwrap();

    // A replace without the allocated values keeps them.
    let current = services.get("np").await.unwrap();
    let mut replaced = service(
        "np",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]}),
    );
    replaced.metadata.resource_version = current.metadata.resource_version.clone();
    let replaced = services.replace("np", &pp, &replaced).await.unwrap();
    let spec = replaced.spec.unwrap();
    assert_eq!(spec.cluster_ip, current.spec.as_ref().unwrap().cluster_ip);
    assert_eq!(spec.ports.unwrap()[1].node_port, Some(auto));

    // Deleting frees the port: the same service comes back with it, as
    // `kubectl delete` then `kubectl apply` does.
    services.delete("np", &Default::default()).await.unwrap();
    services
        .create(
            &pp,
            &service(
                "np",
                json!({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_cluster_has_the_kubernetes_and_kube_dns_services() {
    let (client, _dir) = server("127.0.0.1:0").await;
    let svc = Api::<Service>::namespaced(client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .unwrap();
    let spec = svc.spec.unwrap();
    // The tenth address of 10.96.0.0/24.
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
    assert!(spec.selector.is_none());
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".to_string(), 53, "TCP".to_string())
        ]
    );
    let api = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(api.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.1"));
    // A new service never gets the system addresses.
    let taken = Api::<Service>::namespaced(client, "default")
        .create(
            &PostParams::default(),
            &service(
                "dns2",
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
            ),
        )
        .await
        .unwrap_err();
    assert!(invalid_message(taken).contains("provided IP is already allocated"));
}
