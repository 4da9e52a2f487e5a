//! Zones and the rate of NoExecute tainting: nodes are tainted through a
//! queue per zone (the `topology.kubernetes.io/region` and `zone` labels)
//! behind a token bucket, whose rate drops when much of a zone is down
//! and stops when every zone is (`RateLimitedTimedQueue`, `handleDisruption`).

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition};

use super::clock::elapsed;

/// A node's zone: region and zone joined by `:\0:`, as
/// `nodetopology.GetZoneKey` (the beta labels when the stable ones are
/// missing); empty when it has neither.
pub fn zone_key(node: &Node) -> String {
    let Some(labels) = node.metadata.labels.as_ref() else {
        return String::new();
    };
    let get = |stable: &str, beta: &str| {
        labels
            .get(stable)
            .or_else(|| labels.get(beta))
            .cloned()
            .unwrap_or_default()
    };
    let zone = get(
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/zone",
    );
    let region = get(
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/region",
    );
    if zone.is_empty() && region.is_empty() {
        return String::new();
    }
    format!("{region}:\0:{zone}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    Initial,
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// A zone's state from its nodes' Ready conditions (`ComputeZoneState`).
pub fn zone_state(conditions: &[Option<NodeCondition>], unhealthy_threshold: f32) -> ZoneState {
    let ready = conditions
        .iter()
        .filter(|c| c.as_ref().is_some_and(|c| c.status == "True"))
        .count();
    let not_ready = conditions.len() - ready;
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f32 / (ready + not_ready) as f32 >= unhealthy_threshold
    {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    Unchanged,
    /// Every zone is fully disrupted: stop all NoExecute tainting.
    EnterFullDisruption,
    /// New limits for these zones (all of them when leaving full disruption).
    Limits {
        exiting_full_disruption: bool,
        changed: Vec<(String, ZoneState)>,
    },
}

/// Updates the zone states from this pass's Ready conditions and says
/// what to do with the limiters.
pub fn decide(
    states: &mut HashMap<String, ZoneState>,
    conditions: &HashMap<String, Vec<Option<NodeCondition>>>,
    unhealthy_threshold: f32,
) -> Decision {
    let new: HashMap<&String, ZoneState> = conditions
        .iter()
        .map(|(zone, c)| (zone, zone_state(c, unhealthy_threshold)))
        .collect();
    let all_are_full = new.values().all(|s| *s == ZoneState::FullDisruption);
    for zone in conditions.keys() {
        states.entry(zone.clone()).or_insert(ZoneState::Initial);
    }
    states.retain(|zone, _| conditions.contains_key(zone));
    let all_were_full = states.values().all(|s| *s == ZoneState::FullDisruption);
    if all_are_full && all_were_full {
        return Decision::Unchanged;
    }
    if all_are_full {
        for state in states.values_mut() {
            *state = ZoneState::FullDisruption;
        }
        return Decision::EnterFullDisruption;
    }
    let mut changed = Vec::new();
    for (zone, state) in states.iter_mut() {
        let next = new[zone];
        if all_were_full || *state != next {
            *state = next;
            changed.push((zone.clone(), next));
        }
    }
    Decision::Limits {
        exiting_full_disruption: all_were_full,
        changed,
    }
}

/// A token bucket holding one token (`EvictionRateLimiterBurst`); a rate
/// of zero never lets anything through.
#[derive(Debug)]
struct TokenBucket {
    qps: f32,
    tokens: f64,
    last: Timestamp,
}

impl TokenBucket {
    fn new(qps: f32, now: Timestamp) -> Self {
        TokenBucket {
            qps,
            tokens: 1.0,
            last: now,
        }
    }

    fn try_accept(&mut self, now: Timestamp) -> bool {
        if self.qps <= 0.0 {
            return false;
        }
        self.tokens =
            (self.tokens + elapsed(self.last, now).as_secs_f64() * self.qps as f64).min(1.0);
        if now > self.last {
            self.last = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Queued {
    name: String,
    process_at: Timestamp,
}

/// A zone's queue of nodes waiting for their NoExecute taint. A node
/// stays known after it was tainted, so it is not queued again until it
/// is reachable again.
#[derive(Debug)]
pub struct ZoneTainter {
    limiter: TokenBucket,
    queue: Vec<Queued>,
    known: HashSet<String>,
}

impl ZoneTainter {
    pub fn new(qps: f32, now: Timestamp) -> Self {
        ZoneTainter {
            limiter: TokenBucket::new(qps, now),
            queue: Vec::new(),
            known: HashSet::new(),
        }
    }

    /// Queues the node unless it is known already.
    pub fn add(&mut self, name: &str, now: Timestamp) -> bool {
        if !self.known.insert(name.to_owned()) {
            return false;
        }
        self.queue.push(Queued {
            name: name.to_owned(),
            process_at: now,
        });
        true
    }

    /// Forgets the node; returns whether it was known.
    pub fn remove(&mut self, name: &str) -> bool {
        self.queue.retain(|q| q.name != name);
        self.known.remove(name)
    }

    /// The next node to taint, if it is due and the limiter allows.
    pub fn next_due(&mut self, now: Timestamp) -> Option<String> {
        let head = self.queue.iter().min_by_key(|q| q.process_at)?;
        let (name, due) = (head.name.clone(), head.process_at <= now);
        if !self.limiter.try_accept(now) || !due {
            return None;
        }
        Some(name)
    }

    pub fn processed(&mut self, name: &str) {
        self.queue.retain(|q| q.name != name);
    }

    pub fn retry_later(&mut self, name: &str, at: Timestamp) {
        if let Some(q) = self.queue.iter_mut().find(|q| q.name == name) {
            q.process_at = at;
        }
    }

    /// A new rate; a bucket that was empty stays empty (`SwapLimiter`).
    pub fn set_qps(&mut self, qps: f32, now: Timestamp) {
        if self.limiter.qps == qps {
            return;
        }
        let mut next = TokenBucket::new(qps, now);
        if !self.limiter.try_accept(now) {
            next.tokens = 0.0;
        }
        self.limiter = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cond(status: &str) -> Option<NodeCondition> {
        Some(NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            ..Default::default()
        })
    }

    #[test]
    fn zone_states_follow_the_share_of_unready_nodes() {
        assert_eq!(
            zone_state(&[cond("False"), None], 0.55),
            ZoneState::FullDisruption
        );
        assert_eq!(
            zone_state(&[cond("True"), cond("Unknown")], 0.55),
            ZoneState::Normal
        );
        let mostly_down = [
            cond("True"),
            cond("Unknown"),
            cond("Unknown"),
            cond("False"),
        ];
        assert_eq!(zone_state(&mostly_down, 0.55), ZoneState::PartialDisruption);
    }

    #[test]
    fn all_zones_down_stops_tainting_and_recovery_resumes_it() {
        let mut states = HashMap::new();
        let healthy: HashMap<_, _> =
            [("a".to_string(), vec![cond("True"), cond("Unknown")])].into();
        assert_eq!(
            decide(&mut states, &healthy, 0.55),
            Decision::Limits {
                exiting_full_disruption: false,
                changed: vec![("a".into(), ZoneState::Normal)]
            }
        );
        assert_eq!(
            decide(&mut states, &healthy, 0.55),
            Decision::Limits {
                exiting_full_disruption: false,
                changed: vec![]
            }
        );
        let down: HashMap<_, _> =
            [("a".to_string(), vec![cond("Unknown"), cond("Unknown")])].into();
        assert_eq!(
            decide(&mut states, &down, 0.55),
            Decision::EnterFullDisruption
        );
        assert_eq!(decide(&mut states, &down, 0.55), Decision::Unchanged);
        assert_eq!(
            decide(&mut states, &healthy, 0.55),
            Decision::Limits {
                exiting_full_disruption: true,
                changed: vec![("a".into(), ZoneState::Normal)]
            }
        );
    }

    #[test]
    fn the_queue_is_rate_limited_and_remembers_tainted_nodes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let mut q = ZoneTainter::new(0.1, t0);
        assert!(q.add("n1", t0));
        assert!(q.add("n2", t0));
        assert!(!q.add("n1", t0));
        assert_eq!(q.next_due(t0).as_deref(), Some("n1"));
        q.processed("n1");
        // One token per ten seconds.
        assert_eq!(q.next_due(t0), None);
        let later = super::super::clock::add(t0, Duration::from_secs(10));
        assert_eq!(q.next_due(later).as_deref(), Some("n2"));
        q.processed("n2");
        assert!(!q.add("n1", later), "tainted nodes stay known");
        assert!(q.remove("n1"));
        assert!(q.add("n1", later));
        q.set_qps(0.0, later);
        assert_eq!(
            q.next_due(super::super::clock::add(later, Duration::from_secs(100))),
            None
        );
    }
}
