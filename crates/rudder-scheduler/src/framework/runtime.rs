//! Runs a profile's plugins at the extension points after filtering and
//! scoring, in Kubernetes' order: Reserve (on the assumed pod), Permit,
//! then in the binding task PreBind, Bind and PostBind. Any failure after
//! Reserve runs Unreserve on every Reserve plugin, in reverse order.

use std::sync::Arc;
use std::time::Duration;

use super::{Code, CycleState, Handle, PermitDecision, Status, WaitingPod, WaitingPods};
use crate::cache::{ClusterCache, PodInfo};
use crate::profile::Profile;

/// The longest a Permit plugin may hold a pod (Kubernetes' cap).
pub const MAX_PERMIT_WAIT: Duration = Duration::from_secs(15 * 60);

fn failed(point: &str, plugin: &str, status: &Status) -> Status {
    Status {
        code: status.code.clone(),
        reasons: vec![format!(
            "running {point} plugin \"{plugin}\": {}",
            status.reasons.join(", ")
        )],
    }
}

fn succeeded(status: &Status) -> bool {
    matches!(status.code, Code::Success | Code::Skip)
}

/// Runs Reserve until one fails; the caller then runs [`run_unreserve`].
pub fn run_reserve(
    profile: &Profile,
    state: &mut CycleState,
    pod: &PodInfo,
    node: &str,
    cache: &mut ClusterCache,
) -> Status {
    for plugin in &profile.reserves {
        let status = plugin.reserve(state, pod, node, cache);
        if !succeeded(&status) {
            return failed("Reserve", plugin.name(), &status);
        }
    }
    Status::success()
}

/// Undoes Reserve: every Reserve plugin, last first.
pub fn run_unreserve(
    profile: &Profile,
    state: &CycleState,
    pod: &PodInfo,
    node: &str,
    cache: &mut ClusterCache,
) {
    for plugin in profile.reserves.iter().rev() {
        plugin.unreserve(state, pod, node, cache);
    }
}

/// What Permit decided.
pub enum PermitOutcome {
    Allow,
    /// Held: the binding task waits on it.
    Wait(Arc<WaitingPod>),
    Reject(Status),
}

pub fn run_permit(
    profile: &Profile,
    state: &mut CycleState,
    pod: &Arc<PodInfo>,
    node: &str,
    waiting: &WaitingPods,
) -> PermitOutcome {
    let mut waits = Vec::new();
    for plugin in &profile.permits {
        match plugin.permit(state, pod, node) {
            PermitDecision::Allow => {}
            PermitDecision::Wait(timeout) => {
                waits.push((plugin.name(), timeout.min(MAX_PERMIT_WAIT)));
            }
            // A plugin's refusal is told as the plugin put it; its
            // failure says which plugin failed.
            PermitDecision::Reject(status) if status.code == Code::Error => {
                return PermitOutcome::Reject(failed("Permit", plugin.name(), &status));
            }
            PermitDecision::Reject(status) => return PermitOutcome::Reject(status),
        }
    }
    if waits.is_empty() {
        PermitOutcome::Allow
    } else {
        PermitOutcome::Wait(waiting.add(pod.clone(), node, waits))
    }
}

pub async fn run_pre_bind(
    profile: &Profile,
    handle: &dyn Handle,
    state: &CycleState,
    pod: &PodInfo,
    node: &str,
) -> Status {
    for plugin in &profile.pre_binds {
        let status = plugin.pre_bind(handle, state, pod, node).await;
        if !succeeded(&status) {
            return failed("PreBind", plugin.name(), &status);
        }
    }
    Status::success()
}

/// The first Bind plugin that does not skip the pod binds it.
pub async fn run_bind(
    profile: &Profile,
    handle: &dyn Handle,
    state: &CycleState,
    pod: &PodInfo,
    node: &str,
) -> Status {
    for plugin in &profile.binds {
        let status = plugin.bind(handle, state, pod, node).await;
        match status.code {
            Code::Skip => continue,
            Code::Success => return status,
            _ => return failed("Bind", plugin.name(), &status),
        }
    }
    Status::error(format!(
        "no Bind plugin of profile {:?} bound the pod",
        profile.scheduler_name
    ))
}

pub fn run_post_bind(profile: &Profile, state: &CycleState, pod: &PodInfo, node: &str) {
    for plugin in &profile.post_binds {
        plugin.post_bind(state, pod, node);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::framework::{PermitPlugin, Plugin, ReservePlugin};
    use crate::plugins::testing::{cache, node, pod};
    use crate::profile::SchedulerConfiguration;
    use serde_json::json;

    /// Records the Reserve and Unreserve calls of every plugin.
    struct Recorder {
        name: &'static str,
        fail: bool,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Plugin for Recorder {
        fn name(&self) -> &'static str {
            self.name
        }
    }

    impl ReservePlugin for Recorder {
        fn reserve(
            &self,
            _state: &mut CycleState,
            _pod: &PodInfo,
            _node: &str,
            _cache: &mut ClusterCache,
        ) -> Status {
            self.log
                .lock()
                .unwrap()
                .push(format!("reserve {}", self.name));
            if self.fail {
                Status::unschedulable("no room left")
            } else {
                Status::success()
            }
        }

        fn unreserve(
            &self,
            _state: &CycleState,
            _pod: &PodInfo,
            _node: &str,
            _c: &mut ClusterCache,
        ) {
            self.log
                .lock()
                .unwrap()
                .push(format!("unreserve {}", self.name));
        }
    }

    struct FixedPermit(&'static str, PermitDecision);

    impl Plugin for FixedPermit {
        fn name(&self) -> &'static str {
            self.0
        }
    }

    impl PermitPlugin for FixedPermit {
        fn permit(&self, _state: &mut CycleState, _pod: &PodInfo, _node: &str) -> PermitDecision {
            self.1.clone()
        }
    }

    fn profile() -> Profile {
        let mut profiles = SchedulerConfiguration::default().profiles().unwrap();
        let profile = profiles.remove("default-scheduler").unwrap();
        let mut profile = Arc::into_inner(profile).unwrap();
        profile.reserves.clear();
        profile
    }

    #[test]
    fn reserve_stops_at_a_failure_and_unreserve_runs_in_reverse() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut profile = profile();
        for (name, fail) in [("A", false), ("B", true), ("C", false)] {
            profile.reserves.push(Arc::new(Recorder {
                name,
                fail,
                log: log.clone(),
            }));
        }
        let mut c = cache(vec![node("n", "1", "1Gi", json!({}))]);
        let p = pod("p", json!({}));
        let mut state = CycleState::default();
        let status = run_reserve(&profile, &mut state, &p, "n", &mut c);
        assert_eq!(status.code, Code::Unschedulable);
        assert_eq!(
            status.reasons,
            vec!["running Reserve plugin \"B\": no room left".to_owned()]
        );
        run_unreserve(&profile, &state, &p, "n", &mut c);
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                "reserve A",
                "reserve B",
                "unreserve C",
                "unreserve B",
                "unreserve A"
            ]
        );
    }

    #[test]
    fn permit_allows_waits_or_rejects() {
        let p = pod("p", json!({}));
        let waiting = WaitingPods::default();
        let cases: Vec<(&str, Vec<PermitDecision>, &str)> = vec![
            ("nobody objects", vec![PermitDecision::Allow], "allow"),
            (
                "one waits",
                vec![
                    PermitDecision::Allow,
                    PermitDecision::Wait(Duration::from_secs(3600)),
                ],
                "wait",
            ),
            (
                "a rejection wins over a wait",
                vec![
                    PermitDecision::Wait(Duration::from_secs(1)),
                    PermitDecision::Reject(Status::unschedulable("quota exceeded")),
                ],
                "reject: quota exceeded",
            ),
            (
                "a plugin error names the plugin",
                vec![PermitDecision::Reject(Status::error("boom"))],
                "reject: running Permit plugin \"P0\": boom",
            ),
        ];
        for (name, decisions, want) in cases {
            let mut profile = profile();
            const NAMES: [&str; 2] = ["P0", "P1"];
            for (i, d) in decisions.into_iter().enumerate() {
                profile.permits.push(Arc::new(FixedPermit(NAMES[i], d)));
            }
            let got = match run_permit(&profile, &mut CycleState::default(), &p, "n", &waiting) {
                PermitOutcome::Allow => "allow".to_owned(),
                PermitOutcome::Wait(w) => {
                    assert_eq!(w.pending_plugins(), vec!["P1"], "{name}");
                    "wait".to_owned()
                }
                PermitOutcome::Reject(status) => format!("reject: {}", status.reasons.join(", ")),
            };
            assert_eq!(got, want, "{name}");
        }
        assert!(waiting.get(&p.uid).is_some());
    }
}
