//! The ResourceQuota admission plugin: refuses a new object (or a claim
//! or service update) that would take a namespace's usage past a quota's
//! hard amounts, and charges what it admits to the quotas' `status.used`
//! with compare-and-swap, so two racing creates cannot both take the last
//! unit. The ResourceQuota controller recomputes usage from the objects
//! themselves (and gives back what deleted objects used).
//!
//! As in Kubernetes, admission works from `status.hard`/`status.used`:
//! a quota the controller has not yet observed constrains nothing.

use std::collections::BTreeSet;
use std::time::SystemTime;

use rudder_apimachinery::resources::{self, Evaluator, ResourceList};
use rudder_store::{KeyValue, StoreError};
use serde_json::Value;

use crate::error::ApiError;
use crate::object::{meta_mut, meta_str};
use crate::registry::ResourceInfo;
use crate::rest::{decode, ApiResult};
use crate::ApiServer;

/// How often admission re-reads the quotas after losing a
/// compare-and-swap before it gives up.
const MAX_QUOTA_RETRIES: usize = 32;

struct QuotaState {
    kv: KeyValue,
    quota: Value,
    name: String,
    hard: ResourceList,
    used: ResourceList,
}

/// What admission decided for one quota: the new `status.used`.
#[derive(Debug)]
struct Charge {
    index: usize,
    used: ResourceList,
}

fn forbidden(info: &ResourceInfo, name: &str, detail: String) -> ApiError {
    ApiError::Forbidden(format!("{} {name:?} is forbidden: {detail}", info.plural))
}

/// Kubernetes' evaluation of one request against the namespace's quotas
/// (`checkRequest`): the charges to make, or the refusal.
fn evaluate(
    info: &ResourceInfo,
    evaluator: &Evaluator,
    quotas: &[QuotaState],
    obj: &Value,
    old: Option<&Value>,
    now: SystemTime,
) -> ApiResult<Vec<Charge>> {
    let name = meta_str(obj, "name").unwrap_or_default();
    let mut interesting = Vec::new();
    for (i, q) in quotas.iter().enumerate() {
        if !evaluator.matches(&q.hard, &q.quota, obj) {
            continue;
        }
        let restricted = evaluator.matching_resources(q.hard.keys());
        if let Err(err) = evaluator.constraints(&restricted, obj) {
            return Err(forbidden(
                info,
                name,
                format!("failed quota: {}: {err}", q.name),
            ));
        }
        let unknown: Vec<&String> = restricted
            .iter()
            .filter(|r| !q.used.contains_key(*r))
            .collect();
        if !unknown.is_empty() {
            let mut names: Vec<&str> = restricted.iter().map(String::as_str).collect();
            names.sort_unstable();
            return Err(forbidden(
                info,
                name,
                format!(
                    "status unknown for quota: {}, resources: {}",
                    q.name,
                    names.join(",")
                ),
            ));
        }
        interesting.push(i);
    }
    if interesting.is_empty() {
        return Ok(Vec::new());
    }
    let mut delta = evaluator.usage(obj, now);
    let negative: BTreeSet<&String> = delta
        .iter()
        .filter(|(_, v)| v.is_negative())
        .map(|(k, _)| k)
        .collect();
    if !negative.is_empty() {
        let names: Vec<&str> = negative.iter().map(|s| s.as_str()).collect();
        return Err(forbidden(
            info,
            name,
            format!(
                "quota usage is negative for resource(s): {}",
                names.join(",")
            ),
        ));
    }
    if let Some(old) = old {
        delta = resources::subtract_non_negative(&delta, &evaluator.usage(old, now));
    }
    if delta.values().all(|v| v.is_zero()) {
        return Ok(Vec::new());
    }
    let mut charges = Vec::new();
    for i in interesting {
        let q = &quotas[i];
        let requested = resources::mask(&delta, q.hard.keys());
        let new_used = resources::add(&q.used, &requested);
        let masked = resources::mask(&new_used, requested.keys());
        let (allowed, exceeded) = resources::less_than_or_equal(&masked, &q.hard);
        if !allowed {
            return Err(forbidden(
                info,
                name,
                format!(
                    "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                    q.name,
                    resources::pretty_print(&resources::mask(&requested, &exceeded)),
                    resources::pretty_print(&resources::mask(&q.used, &exceeded)),
                    resources::pretty_print(&resources::mask(&q.hard, &exceeded)),
                ),
            ));
        }
        if !resources::equals(&new_used, &q.used) {
            charges.push(Charge {
                index: i,
                used: new_used,
            });
        }
    }
    Ok(charges)
}

impl ApiServer {
    async fn read_quotas(&self, ns: &str, skip: &BTreeSet<String>) -> ApiResult<Vec<QuotaState>> {
        let info = self
            .registry()
            .get("", "v1", "resourcequotas")
            .ok_or_else(|| ApiError::Internal("resourcequotas are not registered".into()))?;
        let all = self
            .store()
            .range(rudder_store::RangeRequest::prefix(
                info.list_prefix(Some(ns)),
            ))
            .await?;
        let mut out = Vec::new();
        for kv in all.kvs {
            let quota = decode(&kv)?;
            let name = meta_str(&quota, "name").unwrap_or_default().to_owned();
            if skip.contains(&name) {
                continue;
            }
            out.push(QuotaState {
                hard: resources::list_from_json(quota.pointer("/status/hard")),
                used: resources::list_from_json(quota.pointer("/status/used")),
                name,
                quota,
                kv,
            });
        }
        Ok(out)
    }

    /// ResourceQuota admission for a create (`old` is `None`) or an
    /// update of a namespaced object.
    pub(crate) async fn admit_quota(
        &self,
        info: &ResourceInfo,
        obj: &Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        if !info.namespaced {
            return Ok(());
        }
        let evaluator = Evaluator::for_resource(&info.group, &info.plural);
        if old.is_some() && !evaluator.charges_updates() {
            return Ok(());
        }
        let Some(ns) = meta_str(obj, "namespace").map(str::to_owned) else {
            return Ok(());
        };
        // Quotas already charged for this request: a retry after a lost
        // compare-and-swap charges only the others.
        let mut charged = BTreeSet::new();
        for _ in 0..MAX_QUOTA_RETRIES {
            let quotas = self.read_quotas(&ns, &charged).await?;
            if quotas.is_empty() {
                return Ok(());
            }
            let charges = evaluate(info, &evaluator, &quotas, obj, old, SystemTime::now())?;
            let mut lost = false;
            for charge in charges {
                let q = &quotas[charge.index];
                let mut updated = q.quota.clone();
                updated["status"]["used"] = resources::list_to_json(&charge.used);
                meta_mut(&mut updated).remove("resourceVersion");
                let bytes =
                    serde_json::to_vec(&updated).map_err(|e| ApiError::Internal(e.to_string()))?;
                match self
                    .store()
                    .update(&q.kv.key, bytes, q.kv.mod_revision)
                    .await
                {
                    Ok(_) => {
                        charged.insert(q.name.clone());
                    }
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => lost = true,
                    Err(err) => return Err(err.into()),
                }
            }
            if !lost {
                return Ok(());
            }
        }
        Err(ApiError::Conflict(
            crate::error::Target::new(info, meta_str(obj, "name").unwrap_or_default()),
            format!("the quotas of namespace {ns} changed too often to charge them; try again"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(name: &str, hard: Value, used: Value) -> QuotaState {
        let quota = json!({"metadata": {"name": name}, "spec": {"hard": hard}, "status": {"hard": hard, "used": used}});
        QuotaState {
            kv: KeyValue {
                key: format!("/resourcequotas/ns/{name}"),
                value: Vec::new(),
                create_revision: 1,
                mod_revision: 1,
                version: 1,
            },
            hard: resources::list_from_json(quota.pointer("/status/hard")),
            used: resources::list_from_json(quota.pointer("/status/used")),
            name: name.into(),
            quota,
        }
    }

    fn pods_info() -> std::sync::Arc<ResourceInfo> {
        crate::Registry::with_builtins()
            .get("", "v1", "pods")
            .unwrap()
    }

    #[test]
    fn refusals_read_like_kubernetes() {
        let info = pods_info();
        let pod = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}});
        let full = state("q", json!({"pods": "2"}), json!({"pods": "2"}));
        let err = evaluate(
            &info,
            &Evaluator::Pods,
            &[full],
            &pod,
            None,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods \"x\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        );
        let compute = state(
            "compute",
            json!({"limits.cpu": "2", "requests.memory": "1Gi"}),
            json!({"limits.cpu": "0", "requests.memory": "0"}),
        );
        let err = evaluate(
            &info,
            &Evaluator::Pods,
            &[compute],
            &pod,
            None,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods \"x\" is forbidden: failed quota: compute: must specify limits.cpu for: c; requests.memory for: c"
        );
        let fresh = state("new", json!({"pods": "2"}), json!({}));
        let err = evaluate(
            &info,
            &Evaluator::Pods,
            &[fresh],
            &pod,
            None,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods \"x\" is forbidden: status unknown for quota: new, resources: pods"
        );
        let room = state(
            "q",
            json!({"pods": "2", "services": "1"}),
            json!({"pods": "1", "services": "0"}),
        );
        let charges = evaluate(
            &info,
            &Evaluator::Pods,
            &[room],
            &pod,
            None,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(
            resources::pretty_print(&charges[0].used),
            "pods=2,services=0"
        );
    }
}
