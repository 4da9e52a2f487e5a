//! Namespace controller: a namespace being deleted (Terminating) is
//! emptied of every namespaced kind found through discovery, then its
//! `kubernetes` finalizer is removed through `namespaces/NAME/finalize`
//! and the API server deletes it. Progress shows in the namespace's
//! conditions as in Kubernetes (`NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, …).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use rudder_runtime::{Informer, WorkQueue};
use serde_json::json;

use crate::discovery::ResourceMap;
use crate::util::{api_code, is_not_found};
use crate::Context;

/// The finalizer the namespace controller owns.
const KUBERNETES_FINALIZER: &str = "kubernetes";
/// How soon a namespace with content left is looked at again.
const RECHECK: Duration = Duration::from_secs(2);

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    NamespaceController::new(ctx).run().boxed()
}

pub struct NamespaceController {
    ctx: Context,
    namespaces: Informer<Namespace>,
    queue: WorkQueue<String>,
}

impl NamespaceController {
    pub fn new(ctx: &Context) -> Self {
        let namespaces = ctx.informers.get::<Namespace>();
        let queue = WorkQueue::new();
        let q = queue.clone();
        namespaces.on_change(move |change| {
            let ns = change.object();
            if ns.metadata.deletion_timestamp.is_some() {
                q.add(ns.name_any());
            }
        });
        NamespaceController {
            ctx: ctx.clone(),
            namespaces,
            queue,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.namespaces.wait_synced().await;
        let queue = self.queue.clone();
        let this = std::sync::Arc::new(self);
        queue
            .run_workers("namespace", 5, move |name: String| {
                let this = this.clone();
                async move { this.sync(&name).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let Some(namespace) = self.namespaces.get(name) else {
            return Ok(None);
        };
        if namespace.metadata.deletion_timestamp.is_none() {
            return Ok(None);
        }
        let holds_ours = namespace
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == KUBERNETES_FINALIZER));
        if !holds_ours {
            return Ok(None);
        }
        let resources = match ResourceMap::discover(&self.ctx.client).await {
            Ok(r) => r,
            Err(err) => {
                self.set_conditions(
                    name,
                    &[(
                        "NamespaceDeletionDiscoveryFailure",
                        "True",
                        "DiscoveryFailed",
                        &err.to_string(),
                    )],
                )
                .await;
                return Err(err.into());
            }
        };
        // Delete everything, then see what is left.
        let mut failures = Vec::new();
        let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
        let mut finalizers_left: BTreeMap<String, usize> = BTreeMap::new();
        for resource in &resources.namespaced {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.ctx.client.clone(), name, &resource.api);
            let plural = if resource.api.group.is_empty() {
                resource.api.plural.clone()
            } else {
                format!("{}.{}", resource.api.plural, resource.api.group)
            };
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                Err(err) if matches!(api_code(&err), Some(404) | Some(405)) => continue,
                Err(err) => {
                    failures.push(format!("{plural}: {err}"));
                    continue;
                }
            };
            if list.items.is_empty() {
                continue;
            }
            for obj in &list.items {
                if obj.metadata.deletion_timestamp.is_none() {
                    match api
                        .delete(&obj.name_any(), &DeleteParams::background())
                        .await
                    {
                        Ok(_) => {}
                        Err(err) if is_not_found(&err) => continue,
                        Err(err) => failures.push(format!("{plural} {}: {err}", obj.name_any())),
                    }
                }
                for f in obj.metadata.finalizers.iter().flatten() {
                    *finalizers_left.entry(f.clone()).or_default() += 1;
                }
            }
            // What the deletions did not remove at once (graceful pods,
            // finalizers) is counted again on the next pass.
            let left = api
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(list.items.len());
            if left > 0 {
                remaining.insert(plural, left);
            }
        }
        if remaining.is_empty() && failures.is_empty() {
            return self.finalize(&namespace).await.map(|_| None);
        }
        let content = remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        let finalizers = finalizers_left
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        let failure_text = failures.join("; ");
        let content_msg = format!("Some resources are remaining: {content}");
        let finalizer_msg =
            format!("Some content in the namespace has finalizers remaining: {finalizers}");
        let mut conditions = vec![
            (
                "NamespaceDeletionDiscoveryFailure",
                "False",
                "ResourcesDiscovered",
                "All resources successfully discovered",
            ),
            (
                "NamespaceDeletionGroupVersionParsingFailure",
                "False",
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed",
            ),
        ];
        if failures.is_empty() {
            conditions.push((
                "NamespaceDeletionContentFailure",
                "False",
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization",
            ));
        } else {
            conditions.push((
                "NamespaceDeletionContentFailure",
                "True",
                "ContentDeletionFailed",
                &failure_text,
            ));
        }
        if remaining.is_empty() {
            conditions.push((
                "NamespaceContentRemaining",
                "False",
                "ContentRemoved",
                "All content successfully removed",
            ));
        } else {
            conditions.push((
                "NamespaceContentRemaining",
                "True",
                "SomeResourcesRemain",
                &content_msg,
            ));
        }
        if finalizers_left.is_empty() {
            conditions.push((
                "NamespaceFinalizersRemaining",
                "False",
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished",
            ));
        } else {
            conditions.push((
                "NamespaceFinalizersRemaining",
                "True",
                "SomeFinalizersRemain",
                &finalizer_msg,
            ));
        }
        self.set_conditions(name, &conditions).await;
        Ok(Some(RECHECK))
    }

    async fn set_conditions(&self, name: &str, conditions: &[(&str, &str, &str, &str)]) {
        let now = rudder_apimachinery::time::now_rfc3339();
        let conditions: Vec<_> = conditions
            .iter()
            .map(|(t, s, r, m)| json!({"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": now}))
            .collect();
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        let patch = json!({"status": {"conditions": conditions}});
        if let Err(err) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(namespace = name, error = %err, "cannot update namespace conditions");
        }
    }

    /// Removes our finalizer: with none left the namespace is deleted.
    async fn finalize(&self, namespace: &Namespace) -> anyhow::Result<()> {
        let finalizers: Vec<String> = namespace
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != KUBERNETES_FINALIZER)
            .collect();
        let body = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace.name_any()},
            "spec": {"finalizers": finalizers},
        });
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        match api
            .replace_subresource::<serde_json::Value>(
                "finalize",
                &namespace.name_any(),
                &PostParams::default(),
                &body,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{eventually, namespace, TestCluster};
    use k8s_openapi::api::core::v1::ConfigMap;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_namespace_is_emptied_then_goes() {
        let cluster = TestCluster::start().await;
        namespace(&cluster.client, "doomed").await;
        cluster.run_controllers(&["namespace"]);
        let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "doomed");
        for name in ["a", "b"] {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            maps.create(&PostParams::default(), &cm).await.unwrap();
        }
        // One object holds the namespace with a finalizer until released.
        maps.patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["test/hold"]}})),
        )
        .await
        .unwrap();
        let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
        namespaces
            .delete("doomed", &DeleteParams::default())
            .await
            .unwrap();
        eventually("the namespace reports the finalizer", || async {
            let ns = namespaces.get("doomed").await.ok()?;
            let conditions = ns.status?.conditions?;
            conditions
                .iter()
                .any(|c| {
                    c.type_ == "NamespaceFinalizersRemaining"
                        && c.status == "True"
                        && c.message
                            .as_deref()
                            .is_some_and(|m| m.contains("test/hold in 1 resource instances"))
                })
                .then_some(())
        })
        .await;
        assert!(
            maps.get_opt("a").await.unwrap().is_none(),
            "the free object went first"
        );
        maps.patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        eventually("the namespace goes", || async {
            namespaces
                .get_opt("doomed")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
}
