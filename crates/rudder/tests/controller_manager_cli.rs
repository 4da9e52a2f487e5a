//! `rudder controller-manager` as its own process: it drives workloads on
//! simulated nodes, and a restart creates and deletes nothing (it resumes
//! from what its informers list).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

fn rudder(args: &[&str], kubeconfig: Option<&Path>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rudder"));
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(k) = kubeconfig {
        command.env("KUBECONFIG", k);
    }
    command.spawn().unwrap()
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every object the controllers made, by kind/name/uid.
async fn snapshot(client: &Client, ns: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let lp = ListParams::default();
    for p in Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
    {
        all.insert(format!("pod/{}/{}", p.name_any(), p.uid().unwrap()));
    }
    for r in Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
    {
        all.insert(format!("rs/{}/{}", r.name_any(), r.uid().unwrap()));
    }
    for r in Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
    {
        all.insert(format!("revision/{}/{}", r.name_any(), r.uid().unwrap()));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_manager_creates_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let listen = addr.to_string();
    let mut processes = Processes(vec![rudder(
        &[
            "server",
            "--disable-agent",
            "--disable-controller-manager",
            "--listen",
            &listen,
            "--data-dir",
            &data_arg,
        ],
        None,
    )]);
    let kubeconfig = data.join("kubeconfig.yaml");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "no kubeconfig");
        std::thread::sleep(Duration::from_millis(50));
    }
    processes.0.push(rudder(
        &["simulate", "--nodes", "2", "--name-prefix", "cm-"],
        Some(&kubeconfig),
    ));
    let kc = kubeconfig.to_str().unwrap().to_owned();
    let manager_args = [
        "controller-manager",
        "--kubeconfig",
        kc.as_str(),
        "--leader-elect=false",
    ];
    let manager = rudder(&manager_args, None);

    let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "wl"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let labelled = |app: &str| {
        let mut t = template.clone();
        t["metadata"]["labels"]["app"] = json!(app);
        t
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "wl");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": labelled("web")}}))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "wl");
    let s: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {
        "replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": labelled("db")}})).unwrap();
    sets.create(&PostParams::default(), &s).await.unwrap();
    let daemons: Api<DaemonSet> = Api::namespaced(client.clone(), "wl");
    let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}}, "template": labelled("agent")}}))
    .unwrap();
    daemons.create(&PostParams::default(), &ds).await.unwrap();

    eventually("the workloads are ready", || async {
        let d = deployments.get("web").await.ok()?.status?;
        let s = sets.get("db").await.ok()?.status?;
        let ds = daemons.get("agent").await.ok()?.status?;
        (d.available_replicas == Some(3) && s.ready_replicas == Some(2) && ds.number_ready == 2)
            .then_some(())
    })
    .await;
    let before = snapshot(&client, "wl").await;

    terminate(manager);
    let manager = rudder(&manager_args, None);
    // A probe proves the new manager has synced and is working.
    let probe: Deployment = serde_json::from_value(json!({"metadata": {"name": "probe"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "probe"}}, "template": labelled("probe")}})).unwrap();
    deployments
        .create(&PostParams::default(), &probe)
        .await
        .unwrap();
    eventually("the new manager runs the probe", || async {
        let s = deployments.get("probe").await.ok()?.status?;
        (s.available_replicas == Some(1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: BTreeSet<String> = snapshot(&client, "wl")
        .await
        .into_iter()
        .filter(|o| !o.contains("/probe"))
        .collect();
    assert_eq!(
        before, after,
        "a restart must not create or delete anything"
    );
    terminate(manager);
}
