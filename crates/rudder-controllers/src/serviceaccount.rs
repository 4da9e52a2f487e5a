//! ServiceAccount controller: every active namespace has a `default`
//! ServiceAccount; one deleted by a user comes back.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::Api;
use rudder_runtime::{Change, WorkQueue};

use crate::util::api_code;
use crate::Context;

/// The account every namespace gets.
pub const DEFAULT_ACCOUNT: &str = "default";

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    ServiceAccountController::new(ctx).run().boxed()
}

pub struct ServiceAccountController {
    ctx: Context,
    queue: WorkQueue<String>,
}

impl ServiceAccountController {
    pub fn new(ctx: &Context) -> Self {
        let queue = WorkQueue::new();
        let namespaces = ctx.informers.get::<Namespace>();
        let q = queue.clone();
        namespaces.on_change(move |change| {
            if !matches!(change, Change::Deleted(_)) {
                q.add(change.object().metadata.name.clone().unwrap_or_default());
            }
        });
        let q = queue.clone();
        ctx.informers
            .get::<ServiceAccount>()
            .on_change(move |change| {
                if let Change::Deleted(sa) = change {
                    if sa.metadata.name.as_deref() == Some(DEFAULT_ACCOUNT) {
                        q.add(sa.metadata.namespace.clone().unwrap_or_default());
                    }
                }
            });
        ServiceAccountController {
            ctx: ctx.clone(),
            queue,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let namespaces = self.ctx.informers.get::<Namespace>();
        let accounts = self.ctx.informers.get::<ServiceAccount>();
        namespaces.wait_synced().await;
        accounts.wait_synced().await;
        let client = self.ctx.client.clone();
        self.queue
            .run_workers("serviceaccount", 2, move |ns: String| {
                let namespaces = namespaces.clone();
                let accounts = accounts.clone();
                let client = client.clone();
                async move {
                    let Some(namespace) = namespaces.get(&ns) else {
                        return Ok::<_, kube::Error>(None);
                    };
                    if namespace.metadata.deletion_timestamp.is_some()
                        || accounts.get_namespaced(&ns, DEFAULT_ACCOUNT).is_some()
                    {
                        return Ok(None);
                    }
                    let api: Api<ServiceAccount> = Api::namespaced(client, &ns);
                    let account = ServiceAccount {
                        metadata: kube::api::ObjectMeta {
                            name: Some(DEFAULT_ACCOUNT.into()),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    match api.create(&PostParams::default(), &account).await {
                        Ok(_) => Ok(None),
                        // Made meanwhile (our cache lags), or the namespace is
                        // going away: nothing to do.
                        Err(err) if matches!(api_code(&err), Some(409) | Some(403)) => Ok(None),
                        Err(err) => Err(err),
                    }
                    .map(|_: Option<Duration>| None)
                }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{eventually, namespace, TestCluster};
    use kube::api::DeleteParams;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_namespace_gets_a_default_account_that_comes_back() {
        let cluster = TestCluster::start().await;
        cluster.run_controllers(&["serviceaccount"]);
        namespace(&cluster.client, "team").await;
        let api: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "team");
        let first = eventually("the default account", || async {
            api.get_opt(DEFAULT_ACCOUNT).await.unwrap()
        })
        .await;
        api.delete(DEFAULT_ACCOUNT, &DeleteParams::default())
            .await
            .unwrap();
        eventually("the default account comes back", || async {
            api.get_opt(DEFAULT_ACCOUNT)
                .await
                .unwrap()
                .filter(|sa| sa.metadata.uid != first.metadata.uid)
        })
        .await;
        // The system namespaces have one too.
        let system: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "kube-system");
        eventually("kube-system's default account", || async {
            system.get_opt(DEFAULT_ACCOUNT).await.unwrap()
        })
        .await;
    }
}
