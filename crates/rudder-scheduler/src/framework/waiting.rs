//! Pods held at Permit: each waits, in its binding task, until every
//! plugin that asked it to wait allows it, one rejects it, or a plugin's
//! timeout runs out (Kubernetes' `waitingPod`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Status;
use crate::cache::PodInfo;

struct Decision {
    /// Plugins still to allow the pod, with when each gives up.
    pending: BTreeMap<&'static str, (Duration, Instant)>,
    /// Set once: allowed by all, or rejected by one.
    outcome: Option<Status>,
}

pub struct WaitingPod {
    pub pod: Arc<PodInfo>,
    pub node: String,
    decision: Mutex<Decision>,
    decided: Notify,
}

impl WaitingPod {
    fn lock(&self) -> std::sync::MutexGuard<'_, Decision> {
        self.decision.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `plugin` lets the pod go; it is bound once no plugin is pending.
    pub fn allow(&self, plugin: &str) {
        let mut decision = self.lock();
        decision.pending.remove(plugin);
        if decision.pending.is_empty() && decision.outcome.is_none() {
            decision.outcome = Some(Status::success());
            drop(decision);
            self.decided.notify_waiters();
        }
    }

    /// `plugin` refuses the pod: it is unreserved and scheduled again,
    /// and users read `message`.
    pub fn reject(&self, plugin: &str, message: &str) {
        let mut decision = self.lock();
        if decision.outcome.is_none() {
            tracing::debug!(pod = %self.pod.key, plugin, message, "rejected at Permit");
            decision.outcome = Some(Status::unschedulable(message));
            drop(decision);
            self.decided.notify_waiters();
        }
    }

    /// The plugins that have not allowed the pod yet.
    pub fn pending_plugins(&self) -> Vec<&'static str> {
        self.lock().pending.keys().copied().collect()
    }

    /// Waits for the verdict: success when allowed, else the rejection.
    pub async fn wait(&self) -> Status {
        loop {
            let decided = self.decided.notified();
            tokio::pin!(decided);
            decided.as_mut().enable();
            let deadline = {
                let decision = self.lock();
                if let Some(outcome) = &decision.outcome {
                    return outcome.clone();
                }
                decision
                    .pending
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(name, (wait, at))| (*name, *wait, *at))
            };
            let Some((plugin, wait, at)) = deadline else {
                // Nothing pending and no outcome cannot happen: allow()
                // decides when the last plugin leaves.
                return Status::success();
            };
            if tokio::time::timeout_at(at, decided).await.is_err() {
                self.reject(
                    plugin,
                    &format!("rejected due to timeout after waiting {wait:?} at plugin {plugin}"),
                );
            }
        }
    }
}

/// Every pod held at Permit, by uid.
#[derive(Default)]
pub struct WaitingPods {
    pods: Mutex<HashMap<String, Arc<WaitingPod>>>,
}

impl WaitingPods {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<WaitingPod>>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `pod` until each of `plugins` allows it within its timeout.
    pub fn add(
        &self,
        pod: Arc<PodInfo>,
        node: &str,
        plugins: Vec<(&'static str, Duration)>,
    ) -> Arc<WaitingPod> {
        let now = Instant::now();
        let waiting = Arc::new(WaitingPod {
            node: node.to_owned(),
            decision: Mutex::new(Decision {
                pending: plugins
                    .into_iter()
                    .map(|(name, wait)| (name, (wait, now + wait)))
                    .collect(),
                outcome: None,
            }),
            decided: Notify::new(),
            pod: pod.clone(),
        });
        self.lock().insert(pod.uid.clone(), waiting.clone());
        waiting
    }

    pub fn get(&self, uid: &str) -> Option<Arc<WaitingPod>> {
        self.lock().get(uid).cloned()
    }

    /// Every waiting pod (for plugins that decide on groups of pods).
    pub fn all(&self) -> Vec<Arc<WaitingPod>> {
        self.lock().values().cloned().collect()
    }

    pub fn remove(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Rejects the pod if it is waiting (it was deleted, say).
    pub fn reject(&self, uid: &str, message: &str) -> bool {
        match self.get(uid) {
            Some(pod) => {
                pod.reject("", message);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Code;
    use crate::plugins::testing::pod;
    use serde_json::json;

    #[tokio::test]
    async fn a_pod_waits_for_every_plugin_or_its_timeout() {
        let pods = WaitingPods::default();
        let p = pod("p", json!({}));
        let waiting = pods.add(
            p.clone(),
            "a",
            vec![
                ("Gang", Duration::from_secs(30)),
                ("Quota", Duration::from_secs(30)),
            ],
        );
        waiting.allow("Gang");
        assert_eq!(waiting.pending_plugins(), vec!["Quota"]);
        let handle = pods.get(&p.uid).unwrap();
        let task = tokio::spawn(async move { handle.wait().await });
        tokio::task::yield_now().await;
        waiting.allow("Quota");
        assert!(task.await.unwrap().is_success());

        let q = pod("q", json!({}));
        let waiting = pods.add(q, "a", vec![("Gang", Duration::from_millis(20))]);
        let status = waiting.wait().await;
        assert_eq!(status.code, Code::Unschedulable);
        assert_eq!(
            status.reasons,
            vec!["rejected due to timeout after waiting 20ms at plugin Gang".to_owned()]
        );
        // A later allow changes nothing.
        waiting.allow("Gang");
        assert!(!waiting.wait().await.is_success());
        assert!(pods.reject("uid-q", "removed"));
        assert!(!pods.reject("uid-nobody", "removed"));
    }
}
