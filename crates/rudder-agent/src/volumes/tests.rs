//! Volume manager tests against a real in-process API server; the tmpfs
//! tests need root (as the agent does).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::testing::TestApi;
use super::*;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "vol", "uid": "uid-1",
            "labels": {"tier": "backend"}, "annotations": {"build": "42"}},
        "spec": spec,
    }))
    .unwrap()
}

fn manager(api: &TestApi, dir: &Path) -> VolumeManager {
    VolumeManager::new(dir.join("pods"), api.client.clone()).with_node_allocatable(
        NodeAllocatable {
            cpu_millis: Some(2000),
            memory: Some(1 << 30),
            ephemeral_storage: Some(10 << 30),
        },
    )
}

fn data_target(dir: &Path) -> PathBuf {
    fs::read_link(dir.join("..data")).unwrap()
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

async fn setup_cluster() -> TestApi {
    let api = TestApi::start().await;
    api.namespace("vol").await;
    let _: ConfigMap = api
        .create(
            "vol",
            json!({"metadata": {"name": "app-config"}, "data": {"mode": "fast", "level": "3"}}),
        )
        .await;
    let _: Secret = api
        .create(
            "vol",
            json!({"metadata": {"name": "app-secret"}, "stringData": {"token": "s3cret"}}),
        )
        .await;
    api
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn config_volumes_are_projected_and_follow_updates() {
    if !is_root() {
        eprintln!("skipped: secret volumes are tmpfs mounts, which need root");
        return;
    }
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let pod = pod(json!({
        "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "app-config"}},
            {"name": "sec", "secret": {"secretName": "app-secret", "defaultMode": 0o400}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}},
            {"name": "opt", "configMap": {"name": "absent", "optional": true}}
        ]
    }));
    let uid = pod.metadata.uid.clone().unwrap();
    let volumes = manager.setup(&pod).await.unwrap();
    assert_eq!(volumes.len(), 4);
    let root = dir.path().join("pods").join(&uid).join("volumes");
    let cfg = volumes.path("cfg").unwrap().to_path_buf();
    assert_eq!(cfg, root.join("kubernetes.io~configmap/cfg"));
    assert_eq!(fs::read_to_string(cfg.join("mode")).unwrap(), "fast");
    assert_eq!(
        fs::read_link(cfg.join("mode")).unwrap(),
        Path::new("..data/mode")
    );
    assert_eq!(mode_of(&cfg.join("mode")), 0o644);
    assert!(volumes.get("cfg").unwrap().read_only);

    let sec = volumes.path("sec").unwrap().to_path_buf();
    assert_eq!(sec, root.join("kubernetes.io~secret/sec"));
    assert_eq!(fs::read_to_string(sec.join("token")).unwrap(), "s3cret");
    assert_eq!(mode_of(&sec.join("token")), 0o400);
    // Secrets never reach the disk.
    assert_eq!(mounts::fs_type_at(&sec).unwrap().as_deref(), Some("tmpfs"));

    let info = volumes.path("info").unwrap();
    assert_eq!(
        fs::read_to_string(info.join("labels")).unwrap(),
        "tier=\"backend\""
    );
    assert_eq!(fs::read_to_string(info.join("mem")).unwrap(), "64");
    // An optional configMap that does not exist: an empty volume (only the
    // hidden `..data` link and its directory).
    let opt = volumes.path("opt").unwrap();
    assert!(opt.is_dir());
    let visible = fs::read_dir(opt)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .starts_with("..")
        })
        .count();
    assert_eq!(visible, 0);
    assert!(opt.join("..data").is_dir());

    // Nothing changed: refresh swaps nothing.
    let before = data_target(&cfg);
    manager.refresh(&pod).await.unwrap();
    assert_eq!(data_target(&cfg), before);

    // The ConfigMap changes: refresh swaps ..data, the old data goes.
    let _: ConfigMap = api
        .patch("vol", "app-config", json!({"data": {"mode": "slow"}}))
        .await;
    manager.refresh(&pod).await.unwrap();
    assert_ne!(data_target(&cfg), before);
    assert!(!cfg.join(&before).exists());
    assert_eq!(fs::read_to_string(cfg.join("mode")).unwrap(), "slow");

    // Setup again (an agent restart) reuses everything.
    let again = manager.setup(&pod).await.unwrap();
    assert_eq!(again, volumes);
    assert_eq!(mounts::mounts_under(&sec).unwrap().len(), 1);

    manager.teardown(&uid).await.unwrap();
    assert!(!root.exists());
    assert!(mounts::mounts_under(dir.path()).unwrap().is_empty());
}

#[tokio::test]
async fn missing_sources_fail_as_the_kubelet_words_it() {
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let err = manager
        .setup(&pod(json!({"containers": [{"name": "c"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "nope"}}]})))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"nope\" not found"
    );
    let err = manager
        .setup(&pod(json!({"containers": [{"name": "c"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "app-config",
                "items": [{"key": "missing", "path": "m"}]}}]})))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap references non-existent config key: missing"
    );
    let err = manager
        .setup(&pod(json!({"containers": [{"name": "c"}],
            "volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]})))
        .await
        .unwrap_err();
    assert!(matches!(err, VolumeError::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("nfs volumes are not supported"),
        "{err}"
    );
}

#[tokio::test]
async fn items_and_fs_group_on_a_configmap_volume() {
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let pod = pod(json!({
        "securityContext": {"fsGroup": 1234},
        "containers": [{"name": "c"}],
        "volumes": [{"name": "cfg", "configMap": {"name": "app-config", "defaultMode": 0o600,
            "items": [{"key": "mode", "path": "conf/mode"}, {"key": "level", "path": "lvl", "mode": 0o604}]}}]
    }));
    let volumes = manager.setup(&pod).await.unwrap();
    let cfg = volumes.path("cfg").unwrap();
    assert_eq!(fs::read_to_string(cfg.join("conf/mode")).unwrap(), "fast");
    assert!(!cfg.join("level").exists());
    // fsGroup: owned by the group and group-readable; directories setgid.
    let file = cfg.join("conf/mode");
    assert_eq!(fs::metadata(&file).unwrap().gid(), 1234);
    assert_eq!(mode_of(&file), 0o640);
    assert_eq!(mode_of(&cfg.join("lvl")), 0o644);
    assert_eq!(mode_of(cfg) & 0o2000, 0o2000);
    manager
        .teardown(pod.metadata.uid.as_deref().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn empty_dirs_host_paths_and_teardown() {
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let host = dir.path().join("host/data");
    let pod = pod(json!({
        "containers": [{"name": "c"}],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": host, "type": "DirectoryOrCreate"}}
        ]
    }));
    let uid = pod.metadata.uid.clone().unwrap();
    let volumes = manager.setup(&pod).await.unwrap();
    let scratch = volumes.path("scratch").unwrap().to_path_buf();
    assert_eq!(
        scratch,
        dir.path()
            .join("pods")
            .join(&uid)
            .join("volumes/kubernetes.io~empty-dir/scratch")
    );
    assert_eq!(mode_of(&scratch), 0o777);
    assert_eq!(volumes.path("host").unwrap(), host);
    assert!(host.is_dir());
    fs::write(host.join("keep"), "x").unwrap();
    fs::write(scratch.join("gone"), "x").unwrap();

    // A File type on a missing path fails and creates nothing.
    let missing = dir.path().join("missing");
    let bad = self::pod(json!({"containers": [{"name": "c"}],
        "volumes": [{"name": "f", "hostPath": {"path": missing, "type": "File"}}]}));
    let err = manager.setup(&bad).await.unwrap_err();
    assert!(err.to_string().ends_with("doesn't exist"), "{err}");
    assert!(!missing.exists());

    manager.teardown(&uid).await.unwrap();
    assert!(!scratch.exists());
    assert_eq!(fs::read_to_string(host.join("keep")).unwrap(), "x");
}

#[tokio::test]
async fn memory_empty_dir_is_a_sized_tmpfs_until_teardown() {
    if !is_root() {
        eprintln!("skipped: mounting tmpfs needs root");
        return;
    }
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let pod = pod(json!({
        "containers": [{"name": "c"}],
        "volumes": [{"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "2Mi"}}]
    }));
    let uid = pod.metadata.uid.clone().unwrap();
    let volumes = manager.setup(&pod).await.unwrap();
    let mem = volumes.path("mem").unwrap().to_path_buf();
    assert_eq!(mounts::fs_type_at(&mem).unwrap().as_deref(), Some("tmpfs"));
    let stat = nix::sys::statvfs::statvfs(&mem).unwrap();
    assert_eq!(stat.blocks() as u64 * stat.fragment_size() as u64, 2 << 20);
    // Setting up again does not stack a second tmpfs.
    manager.setup(&pod).await.unwrap();
    assert_eq!(mounts::mounts_under(&mem).unwrap().len(), 1);

    manager.teardown(&uid).await.unwrap();
    assert!(mounts::mounts_under(dir.path()).unwrap().is_empty());
    assert!(!mem.exists());
}

async fn bound_claim(api: &TestApi, pv_source: serde_json::Value) {
    let claim: PersistentVolumeClaim = api
        .create(
            "vol",
            json!({"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "volumeName": "pv-data",
                "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .await;
    let mut pv = json!({"metadata": {"name": "pv-data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
        "claimRef": {"namespace": "vol", "name": "data", "uid": claim.metadata.uid}}});
    pv["spec"]
        .as_object_mut()
        .unwrap()
        .extend(pv_source.as_object().unwrap().clone());
    let _: PersistentVolume = api.create_cluster(pv).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(api.client.clone(), "vol");
    claims
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_claim_bound_to_a_host_path_pv() {
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let pod = pod(json!({"containers": [{"name": "c"}],
        "volumes": [{"name": "www", "persistentVolumeClaim": {"claimName": "data"}}]}));
    // The claim does not exist yet.
    let err = manager.setup(&pod).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("error processing PVC vol/data: failed to fetch PVC from API server"),
        "{err}"
    );
    let storage = dir.path().join("storage/pvc-1");
    bound_claim(
        &api,
        json!({"hostPath": {"path": storage, "type": "DirectoryOrCreate"}}),
    )
    .await;
    let volumes = manager.setup(&pod).await.unwrap();
    let www = volumes.get("www").unwrap();
    assert_eq!(www.host_path, storage);
    assert!(!www.read_only);
    assert!(storage.is_dir());
    assert_eq!(
        www.kind,
        VolumeKind::PersistentVolume {
            claim: "data".into(),
            volume: "pv-data".into()
        }
    );
    fs::write(storage.join("kept"), "x").unwrap();
    manager
        .teardown(pod.metadata.uid.as_deref().unwrap())
        .await
        .unwrap();
    assert!(storage.join("kept").exists());
}

#[tokio::test]
async fn an_unbound_claim_is_refused() {
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let _: PersistentVolumeClaim = api
        .create(
            "vol",
            json!({"metadata": {"name": "pending"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .await;
    let pod = pod(json!({"containers": [{"name": "c"}],
        "volumes": [{"name": "www", "persistentVolumeClaim": {"claimName": "pending"}}]}));
    let err = manager.setup(&pod).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"www\" : error processing PVC vol/pending: PVC is not bound"
    );
}

#[tokio::test]
async fn container_mounts_read_only_sub_paths_and_escapes() {
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let pod = pod(json!({
        "containers": [{"name": "c"}],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "app-config"}},
            {"name": "scratch", "emptyDir": {}}
        ]
    }));
    let volumes = manager.setup(&pod).await.unwrap();
    let scratch = volumes.path("scratch").unwrap().to_path_buf();
    let container: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
        {"name": "scratch", "mountPath": "/data/sub", "subPath": "a/b"},
        {"name": "cfg", "mountPath": "/etc/cfg"},
        {"name": "scratch", "mountPath": "/data", "readOnly": true, "mountPropagation": "HostToContainer"},
        {"name": "scratch", "mountPath": "/logs", "subPathExpr": "logs/$(POD_NAME)"}
    ]}))
    .unwrap();
    let env = vec![("POD_NAME".to_string(), "p".to_string())];
    let mounts = manager
        .container_mounts_with_env(&pod, &container, &volumes, &env)
        .unwrap();
    let json: Vec<serde_json::Value> = mounts
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    // Parents first, otherwise in declaration order.
    let destinations: Vec<&str> = json
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        destinations,
        vec!["/data", "/logs", "/data/sub", "/etc/cfg"]
    );
    let by_dest = |d: &str| json.iter().find(|m| m["destination"] == d).unwrap().clone();
    let options =
        |d: &str| -> Vec<String> { serde_json::from_value(by_dest(d)["options"].clone()).unwrap() };
    // configMap volumes are always read-only; an emptyDir only when asked.
    assert!(options("/etc/cfg").contains(&"ro".to_string()));
    assert!(options("/data").contains(&"ro".to_string()));
    assert!(!options("/data/sub").contains(&"ro".to_string()));
    assert_eq!(by_dest("/data/sub")["type"], "bind");
    let canonical = fs::canonicalize(&scratch).unwrap();
    assert_eq!(by_dest("/data/sub")["source"], json!(canonical.join("a/b")));
    assert!(scratch.join("a/b").is_dir());
    assert_eq!(mode_of(&scratch.join("a/b")), 0o777);
    assert_eq!(by_dest("/logs")["source"], json!(canonical.join("logs/p")));

    // A subPathExpr naming a missing variable.
    let expr: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
        {"name": "scratch", "mountPath": "/x", "subPathExpr": "$(NOPE)"}]}))
    .unwrap();
    let err = manager.container_mounts(&pod, &expr, &volumes).unwrap_err();
    assert_eq!(err.to_string(), "missing value for NOPE");

    // A symlink inside the volume pointing out of it is refused.
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, scratch.join("escape")).unwrap();
    let evil: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
        {"name": "scratch", "mountPath": "/x", "subPath": "escape/inner"}]}))
    .unwrap();
    let err = manager.container_mounts(&pod, &evil, &volumes).unwrap_err();
    assert!(
        matches!(
            &err,
            VolumeError::SubPath {
                reason: subpath::SubPathError::Escapes { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "failed to prepare subPath for volumeMount \"scratch\" of container \"c\""
    );
    assert!(!outside.join("inner").exists());

    let dotdot: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
        {"name": "scratch", "mountPath": "/x", "subPath": "../../etc"}]}))
    .unwrap();
    let err = manager
        .container_mounts(&pod, &dotdot, &volumes)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unable to provision SubPath `../../etc`: must not contain '..'"
    );

    let missing: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
        {"name": "nope", "mountPath": "/x"}]}))
    .unwrap();
    let err = manager
        .container_mounts(&pod, &missing, &volumes)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot find volume \"nope\" to mount into container \"c\""
    );
    manager
        .teardown(pod.metadata.uid.as_deref().unwrap())
        .await
        .unwrap();
    // Teardown removed the pod's volumes, not what a symlink pointed at.
    assert!(outside.is_dir());
}

#[tokio::test]
async fn projected_volumes_merge_their_sources() {
    if !is_root() {
        eprintln!("skipped: projected volumes are tmpfs mounts, which need root");
        return;
    }
    let api = setup_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(&api, dir.path());
    let pod = pod(json!({
        "containers": [{"name": "c"}],
        "volumes": [{"name": "all", "projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "app-config", "items": [{"key": "mode", "path": "cfg/mode"}]}},
            {"secret": {"name": "app-secret", "items": [{"key": "token", "path": "sec/token", "mode": 0o400}]}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"secret": {"name": "absent", "optional": true}}
        ]}}]
    }));
    let volumes = manager.setup(&pod).await.unwrap();
    let all = volumes.get("all").unwrap();
    assert_eq!(all.kind, VolumeKind::Projected);
    assert!(all.read_only);
    let root = &all.host_path;
    assert!(root.ends_with("volumes/kubernetes.io~projected/all"));
    assert_eq!(mounts::fs_type_at(root).unwrap().as_deref(), Some("tmpfs"));
    assert_eq!(fs::read_to_string(root.join("cfg/mode")).unwrap(), "fast");
    assert_eq!(mode_of(&root.join("cfg/mode")), 0o440);
    assert_eq!(
        fs::read_to_string(root.join("sec/token")).unwrap(),
        "s3cret"
    );
    assert_eq!(mode_of(&root.join("sec/token")), 0o400);
    assert_eq!(fs::read_to_string(root.join("name")).unwrap(), "p");
    assert_eq!(
        fs::read_link(root.join("cfg")).unwrap(),
        Path::new("..data/cfg")
    );
    manager
        .teardown(pod.metadata.uid.as_deref().unwrap())
        .await
        .unwrap();

    // Every failing source is reported.
    let broken = self::pod(json!({
        "containers": [{"name": "c"}],
        "volumes": [{"name": "all", "projected": {"sources": [
            {"configMap": {"name": "gone"}}, {"secret": {"name": "gone-too"}}]}}]
    }));
    let err = manager.setup(&broken).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"all\" : [configmap \"gone\" not found, secret \"gone-too\" not found]"
    );
    manager
        .teardown(broken.metadata.uid.as_deref().unwrap())
        .await
        .unwrap();
}
