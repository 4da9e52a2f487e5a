//! ClusterRole aggregation controller: a ClusterRole with an
//! `aggregationRule` gets, as its `rules`, the union of the rules of the
//! ClusterRoles its selectors match ([`rudder_auth::rbac::aggregated_rules`]),
//! kept current as those roles come, change and go. This is how `admin`,
//! `edit` and `view` grow when an extension ships a role labeled
//! `rbac.authorization.k8s.io/aggregate-to-view: "true"`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use rudder_auth::rbac::{aggregated_rules, PolicyRule};
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::Value;

use crate::util::{api_code, is_not_found};
use crate::Context;

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    ClusterRoleAggregationController::new(ctx).run().boxed()
}

pub struct ClusterRoleAggregationController {
    ctx: Context,
    roles: Informer<ClusterRole>,
    queue: WorkQueue<String>,
}

fn is_aggregated(role: &ClusterRole) -> bool {
    role.aggregation_rule.is_some()
}

impl ClusterRoleAggregationController {
    pub fn new(ctx: &Context) -> Self {
        let roles = ctx.informers.get::<ClusterRole>();
        let queue = WorkQueue::new();
        // The aggregated roles, kept by the handler itself (handlers only
        // enqueue; they do not read the cache).
        let aggregated: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let q = queue.clone();
        roles.on_change(move |change| {
            let mut aggregated = aggregated.lock().unwrap();
            let role = change.object();
            match change {
                Change::Deleted(_) => {
                    aggregated.remove(&role.name_any());
                }
                _ if is_aggregated(role) => {
                    aggregated.insert(role.name_any());
                }
                _ => {
                    aggregated.remove(&role.name_any());
                }
            }
            // Any role may be selected by any aggregated one (its labels
            // or rules changed, or it is new or gone): look at them all.
            for name in aggregated.iter() {
                q.add(name.clone());
            }
        });
        ClusterRoleAggregationController {
            ctx: ctx.clone(),
            roles,
            queue,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.roles.wait_synced().await;
        let queue = self.queue.clone();
        let this = Arc::new(self);
        queue
            .run_workers("clusterrole-aggregation", 1, move |name: String| {
                let this = this.clone();
                async move { this.sync(&name).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let Some(role) = self.roles.get(name) else {
            return Ok(None);
        };
        if !is_aggregated(&role) {
            return Ok(None);
        }
        let all: Vec<Value> = self
            .roles
            .list()
            .iter()
            .map(|r| serde_json::to_value(r.as_ref()))
            .collect::<Result<_, _>>()?;
        let target = serde_json::to_value(role.as_ref())?;
        let Some(wanted) = aggregated_rules(&target, &all) else {
            return Ok(None);
        };
        if PolicyRule::list_from(&target) == parse(&wanted) {
            return Ok(None);
        }
        let mut updated = role.as_ref().clone();
        updated.rules = Some(serde_json::from_value(Value::Array(wanted))?);
        let api: Api<ClusterRole> = Api::all(self.ctx.client.clone());
        match api.replace(name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(None),
            // Gone meanwhile: nothing to aggregate into.
            Err(err) if is_not_found(&err) => Ok(None),
            // Our copy was stale: the informer brings the new one, which
            // enqueues the role again.
            Err(err) if api_code(&err) == Some(409) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}

fn parse(rules: &[Value]) -> Vec<PolicyRule> {
    rules.iter().filter_map(PolicyRule::from_value).collect()
}

#[cfg(test)]
mod tests {
    use kube::api::{DeleteParams, Patch, PatchParams};
    use serde_json::json;

    use super::*;
    use crate::testing::{eventually, TestCluster};

    fn role(value: Value) -> ClusterRole {
        serde_json::from_value(value).unwrap()
    }

    fn rules_of(role: &ClusterRole) -> Vec<PolicyRule> {
        PolicyRule::list_from(&serde_json::to_value(role).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aggregated_roles_follow_the_roles_they_select() {
        let cluster = TestCluster::start().await;
        cluster.run_controllers(&["clusterrole-aggregation"]);
        let api: Api<ClusterRole> = Api::all(cluster.client.clone());
        let pp = PostParams::default();
        api.create(
            &pp,
            &role(json!({
                "metadata": {"name": "monitoring"},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"aggregate-to-monitoring": "true"}}]}
            })),
        )
        .await
        .unwrap();
        let pods = PolicyRule::new(&["get", "list"])
            .groups(&[""])
            .resources(&["pods"]);
        let nodes = PolicyRule::new(&["list"])
            .groups(&[""])
            .resources(&["nodes"]);
        let metrics = PolicyRule::new(&["get"]).urls(&["/metrics"]);
        api.create(
            &pp,
            &role(json!({
                "metadata": {"name": "b-nodes", "labels": {"aggregate-to-monitoring": "true"}},
                "rules": [nodes.to_value(), pods.to_value()]
            })),
        )
        .await
        .unwrap();
        api.create(
            &pp,
            &role(json!({
                "metadata": {"name": "a-pods", "labels": {"aggregate-to-monitoring": "true"}},
                "rules": [pods.to_value()]
            })),
        )
        .await
        .unwrap();
        api.create(
            &pp,
            &role(json!({"metadata": {"name": "unrelated"}, "rules": [metrics.to_value()]})),
        )
        .await
        .unwrap();
        let wait_for = |expected: Vec<PolicyRule>, what: &'static str| {
            let api = api.clone();
            async move {
                eventually(what, || async {
                    let current = api.get("monitoring").await.unwrap();
                    (rules_of(&current) == expected).then_some(())
                })
                .await
            }
        };
        wait_for(
            vec![pods.clone(), nodes.clone()],
            "the union, in role-name order, without duplicates",
        )
        .await;

        // A role labeled later joins; one unlabeled leaves.
        let label = json!({"metadata": {"labels": {"aggregate-to-monitoring": "true"}}});
        api.patch("unrelated", &PatchParams::default(), &Patch::Merge(&label))
            .await
            .unwrap();
        wait_for(
            vec![pods.clone(), nodes.clone(), metrics.clone()],
            "a newly selected role's rules",
        )
        .await;
        api.delete("b-nodes", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(
            vec![pods.clone(), metrics.clone()],
            "a deleted role's rules go",
        )
        .await;

        // Rules written by hand into the aggregated role are put back.
        let tamper = json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
        api.patch(
            "monitoring",
            &PatchParams::default(),
            &Patch::Merge(&tamper),
        )
        .await
        .unwrap();
        wait_for(vec![pods, metrics], "hand-written rules are replaced").await;
    }
}
