//! A Deployment's status: the counts summed over its ReplicaSets and the
//! Available, Progressing and ReplicaFailure conditions, with the reasons
//! and messages `kubectl rollout status` and users know.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use rudder_apimachinery::time::{format_rfc3339, parse_rfc3339};
use serde_json::{json, Value};

use super::revision::{available_replicas, desired, ready_replicas, status_replicas};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
}

impl Counts {
    pub fn of(all: &[&ReplicaSet], new: Option<&ReplicaSet>) -> Counts {
        Counts {
            replicas: all.iter().map(|rs| status_replicas(rs)).sum(),
            updated: new.map_or(0, status_replicas),
            ready: all.iter().map(|rs| ready_replicas(rs)).sum(),
            available: all.iter().map(|rs| available_replicas(rs)).sum(),
        }
    }
}

/// Every replica is updated and available, and no old one is left.
pub fn is_complete(d: &Deployment, counts: &Counts) -> bool {
    let want = desired(d);
    counts.updated == want && counts.replicas == want && counts.available == want
}

/// Whether this sync moved the rollout forward since the last status.
fn progressed(d: &Deployment, counts: &Counts) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_updated = old.updated_replicas.unwrap_or(0);
    let old_old = old.replicas.unwrap_or(0) - old_updated;
    let new_old = counts.replicas - counts.updated;
    counts.updated > old_updated
        || new_old < old_old
        || counts.ready > old.ready_replicas.unwrap_or(0)
        || counts.available > old.available_replicas.unwrap_or(0)
}

fn condition<'a>(conditions: &'a [Value], type_: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| c["type"] == type_)
}

/// Sets a condition as Kubernetes does: no change when status and reason
/// are the same; the transition time kept while the status is.
fn set_condition(
    conditions: &mut Vec<Value>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
    refresh: bool,
) {
    let existing = condition(conditions, type_).cloned();
    if let Some(c) = &existing {
        if c["status"] == status && c["reason"] == reason && !refresh {
            return;
        }
    }
    let transition = match &existing {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    conditions.retain(|c| c["type"] != type_);
    conditions.push(json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": now, "lastTransitionTime": transition,
    }));
}

fn timed_out(d: &Deployment, conditions: &[Value], now: SystemTime) -> bool {
    let Some(deadline) = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds) else {
        return false;
    };
    let Some(c) = condition(conditions, "Progressing") else {
        return false;
    };
    if c["reason"] == "ProgressDeadlineExceeded" {
        return true;
    }
    let Some(from) = c["lastUpdateTime"].as_str().and_then(parse_rfc3339) else {
        return false;
    };
    from + Duration::from_secs(deadline.max(0) as u64) < now
}

/// The status to write, and when to look again (for the deadline).
pub fn compute(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    max_unavailable: i32,
    rollout: bool,
    note: Option<&(&'static str, String)>,
    now: SystemTime,
) -> (Value, Option<Duration>) {
    let counts = Counts::of(all, new);
    let want = desired(d);
    let now_text = format_rfc3339(now);
    let current = d.status.clone().unwrap_or_default();
    let mut conditions: Vec<Value> = current
        .conditions
        .iter()
        .flatten()
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();

    if counts.available >= want - max_unavailable {
        set_condition(
            &mut conditions,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &now_text,
            false,
        );
    } else {
        set_condition(
            &mut conditions,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &now_text,
            false,
        );
    }

    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let progressing_reason = condition(&conditions, "Progressing").map(|c| c["reason"].clone());
    let mut requeue = None;
    if deadline.is_some() {
        if paused {
            if progressing_reason
                .as_ref()
                .is_none_or(|r| r != "DeploymentPaused")
            {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    &now_text,
                    false,
                );
            }
        } else if progressing_reason
            .as_ref()
            .is_some_and(|r| r == "DeploymentPaused")
        {
            set_condition(
                &mut conditions,
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                &now_text,
                false,
            );
        }
    }
    if let (true, Some(deadline), false) = (rollout, deadline, paused) {
        let name = new.map(|n| n.name_any()).unwrap_or_default();
        if let Some((reason, message)) = note {
            let has_progressing = condition(&conditions, "Progressing").is_some();
            if *reason == "NewReplicaSetCreated" || !has_progressing {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "True",
                    reason,
                    message,
                    &now_text,
                    false,
                );
            }
        }
        if is_complete(d, &counts) {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet {name:?} has successfully progressed."),
                &now_text,
                false,
            );
        } else if progressed(d, &counts) {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &format!("ReplicaSet {name:?} is progressing."),
                &now_text,
                true,
            );
        } else if timed_out(d, &conditions, now) {
            set_condition(
                &mut conditions,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet {name:?} has timed out progressing."),
                &now_text,
                false,
            );
        }
        if !is_complete(d, &counts) && !timed_out(d, &conditions, now) {
            let from = condition(&conditions, "Progressing")
                .and_then(|c| c["lastUpdateTime"].as_str().and_then(parse_rfc3339))
                .unwrap_or(now);
            let at = from + Duration::from_secs(deadline.max(0) as u64);
            requeue = Some(
                at.duration_since(now)
                    .unwrap_or_default()
                    .max(Duration::from_secs(1)),
            );
        }
    }

    // A ReplicaSet that cannot create its pods says so on the Deployment.
    let failure = new.and_then(|n| {
        n.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure")
            .cloned()
    });
    match failure {
        Some(f) => set_condition(
            &mut conditions,
            "ReplicaFailure",
            &f.status,
            f.reason.as_deref().unwrap_or(""),
            f.message.as_deref().unwrap_or(""),
            &now_text,
            false,
        ),
        None => conditions.retain(|c| c["type"] != "ReplicaFailure"),
    }

    let mut status = json!({
        "observedGeneration": d.metadata.generation.unwrap_or(0),
        "replicas": counts.replicas,
        "updatedReplicas": counts.updated,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.available,
        "unavailableReplicas": (want - counts.available).max(0),
        "conditions": conditions,
    });
    if let Some(count) = current.collision_count {
        status["collisionCount"] = json!(count);
    }
    (status, requeue)
}

/// Whether the stored status already says this (absent counts are zero).
pub fn same(current: &Value, new: &Value) -> bool {
    let Some(fields) = new.as_object() else {
        return false;
    };
    fields.iter().all(|(k, v)| {
        let have = current.get(k).filter(|v| !v.is_null());
        match (have, v) {
            (None, Value::Number(n)) => n.as_i64() == Some(0),
            (None, Value::Array(a)) => a.is_empty(),
            (Some(have), v) => have == v,
            (None, _) => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": replicas, "selector": {}, "template": {}, "progressDeadlineSeconds": 600},
            "status": status,
        }))
        .unwrap()
    }

    fn rs(replicas: i32, available: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "d-abc"},
            "spec": {"selector": {}, "replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": available, "availableReplicas": available},
        }))
        .unwrap()
    }

    #[test]
    fn a_finished_rollout_reports_new_replica_set_available() {
        let d = deployment(3, json!({}));
        let new = rs(3, 3);
        let (status, requeue) = compute(&d, Some(&new), &[&new], 0, true, None, SystemTime::now());
        assert_eq!(status["updatedReplicas"], 3);
        assert_eq!(status["observedGeneration"], 2);
        let conds = status["conditions"].as_array().unwrap();
        let progressing = condition(conds, "Progressing").unwrap();
        assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
        assert_eq!(
            progressing["message"],
            "ReplicaSet \"d-abc\" has successfully progressed."
        );
        assert_eq!(condition(conds, "Available").unwrap()["status"], "True");
        assert!(requeue.is_none());
    }

    #[test]
    fn a_stuck_rollout_times_out() {
        let long_ago = format_rfc3339(SystemTime::now() - Duration::from_secs(3600));
        let d = deployment(
            3,
            json!({"replicas": 3, "updatedReplicas": 3, "conditions": [{"type": "Progressing", "status": "True",
            "reason": "ReplicaSetUpdated", "lastUpdateTime": long_ago, "lastTransitionTime": long_ago}]}),
        );
        let new = rs(3, 0);
        let (status, _) = compute(&d, Some(&new), &[&new], 0, true, None, SystemTime::now());
        let progressing = condition(status["conditions"].as_array().unwrap(), "Progressing")
            .unwrap()
            .clone();
        assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
        assert_eq!(progressing["status"], "False");
        assert_eq!(
            condition(status["conditions"].as_array().unwrap(), "Available").unwrap()["status"],
            "False"
        );
    }

    #[test]
    fn absent_counts_read_as_zero() {
        assert!(same(
            &json!({"replicas": 2}),
            &json!({"replicas": 2, "readyReplicas": 0, "conditions": []})
        ));
        assert!(!same(&json!({"replicas": 2}), &json!({"replicas": 3})));
    }
}
