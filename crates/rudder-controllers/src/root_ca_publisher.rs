//! `root-ca-cert-publisher`: every namespace holds the ConfigMap
//! `kube-root-ca.crt` with the CA that signed the API server's
//! certificate, so pods (through their ServiceAccount token volume) can
//! verify the API they talk to. Edits and deletions are undone.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use rudder_runtime::{Change, WorkQueue};

use crate::util::api_code;
use crate::Context;

pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    let ctx = ctx.clone();
    let Some(ca) = ctx.options.root_ca_pem.clone() else {
        return async {
            futures::future::pending::<()>().await;
            Ok(())
        }
        .boxed();
    };
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.informers.get::<Namespace>().on_change(move |change| {
        if !matches!(change, Change::Deleted(_)) {
            q.add(change.object().metadata.name.clone().unwrap_or_default());
        }
    });
    let q = queue.clone();
    ctx.informers.get::<ConfigMap>().on_change(move |change| {
        let cm = change.object();
        if cm.metadata.name.as_deref() == Some(ROOT_CA_CONFIGMAP) {
            q.add(cm.metadata.namespace.clone().unwrap_or_default());
        }
    });
    async move {
        let namespaces = ctx.informers.get::<Namespace>();
        let maps = ctx.informers.get::<ConfigMap>();
        namespaces.wait_synced().await;
        maps.wait_synced().await;
        let client = ctx.client.clone();
        queue
            .run_workers("root-ca-cert-publisher", 1, move |ns: String| {
                let namespaces = namespaces.clone();
                let maps = maps.clone();
                let client = client.clone();
                let ca = ca.clone();
                async move {
                    let Some(namespace) = namespaces.get(&ns) else {
                        return Ok::<_, kube::Error>(None);
                    };
                    if namespace.metadata.deletion_timestamp.is_some() {
                        return Ok(None);
                    }
                    let data = BTreeMap::from([("ca.crt".to_string(), ca.clone())]);
                    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
                    match maps.get_namespaced(&ns, ROOT_CA_CONFIGMAP) {
                        Some(cm) if cm.data.as_ref() == Some(&data) => Ok(None),
                        Some(cm) => {
                            let mut cm = (*cm).clone();
                            cm.data = Some(data);
                            match api
                                .replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                                .await
                            {
                                Ok(_) => Ok(None),
                                Err(err) if matches!(api_code(&err), Some(409) | Some(404)) => {
                                    Ok(Some(std::time::Duration::from_millis(200)))
                                }
                                Err(err) => Err(err),
                            }
                        }
                        None => {
                            let cm = ConfigMap {
                                metadata: kube::api::ObjectMeta {
                                    name: Some(ROOT_CA_CONFIGMAP.into()),
                                    annotations: Some(BTreeMap::from([(
                                        "kubernetes.io/description".to_string(),
                                        DESCRIPTION.to_string(),
                                    )])),
                                    ..Default::default()
                                },
                                data: Some(data),
                                ..Default::default()
                            };
                            match api.create(&PostParams::default(), &cm).await {
                                Ok(_) => Ok(None),
                                Err(err) if matches!(api_code(&err), Some(409) | Some(403)) => {
                                    Ok(None)
                                }
                                Err(err) => Err(err),
                            }
                        }
                    }
                }
            })
            .await;
        Ok(())
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{eventually, namespace, TestCluster};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_namespace_gets_the_root_ca_and_edits_are_undone() {
        let mut cluster = TestCluster::start().await;
        cluster.ctx.options.root_ca_pem =
            Some("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n".into());
        cluster.run_controllers(&["root-ca-cert-publisher"]);
        namespace(&cluster.client, "team").await;
        let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "team");
        let want = |cm: &ConfigMap| {
            cm.data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .is_some_and(|c| c.contains("test"))
        };
        let mut cm = eventually("the root CA ConfigMap", || async {
            api.get_opt(ROOT_CA_CONFIGMAP)
                .await
                .unwrap()
                .filter(|c| want(c))
        })
        .await;
        cm.data = Some(BTreeMap::from([(
            "ca.crt".to_string(),
            "tampered".to_string(),
        )]));
        api.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
            .await
            .unwrap();
        eventually("the edit is undone", || async {
            api.get_opt(ROOT_CA_CONFIGMAP)
                .await
                .unwrap()
                .filter(|c| want(c))
        })
        .await;
    }
}
