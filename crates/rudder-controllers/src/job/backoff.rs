//! The delay before a Job replaces failed pods: `base` after the first
//! failure since the last success, doubling with each further one, up to
//! `max` (Kubernetes: 10 s and 6 min), counted from the last failure.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use super::clock::until;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackoffRecord {
    pub failures_after_last_success: u32,
    pub last_failure: Option<Timestamp>,
}

impl BackoffRecord {
    /// The record after newly finished pods.
    pub fn with_finished(&self, succeeded: &[&Pod], failed: &[&Pod]) -> BackoffRecord {
        let mut failed_times: Vec<Timestamp> = failed.iter().map(|p| finished_time(p)).collect();
        failed_times.sort();
        let last_success = succeeded.iter().map(|p| finished_time(p)).max();
        match last_success {
            None => {
                let Some(last) = failed_times.last() else {
                    return self.clone();
                };
                BackoffRecord {
                    failures_after_last_success: self.failures_after_last_success
                        + failed_times.len() as u32,
                    last_failure: Some(*last),
                }
            }
            Some(success) => {
                let after: Vec<&Timestamp> =
                    failed_times.iter().filter(|t| **t > success).collect();
                BackoffRecord {
                    failures_after_last_success: after.len() as u32,
                    last_failure: after.last().map(|t| **t),
                }
            }
        }
    }

    /// How long until pods may be created again.
    pub fn remaining(&self, now: Timestamp, base: Duration, max: Duration) -> Duration {
        let (Some(last), n) = (self.last_failure, self.failures_after_last_success) else {
            return Duration::ZERO;
        };
        if n == 0 {
            return Duration::ZERO;
        }
        let mut delay = base;
        for _ in 1..n {
            delay = delay.saturating_mul(2);
            if delay >= max {
                delay = max;
                break;
            }
        }
        let since = Duration::try_from(now.duration_since(last)).unwrap_or(Duration::ZERO);
        if delay < since {
            return Duration::ZERO;
        }
        until(now, last.checked_add(delay).unwrap_or(now))
    }
}

fn parse_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    t.0
}

/// When a pod finished: its containers' last exit, else when it stopped
/// being ready, else its deletion, else its creation.
pub fn finished_time(pod: &Pod) -> Timestamp {
    let status = pod.status.as_ref();
    let from_containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|cs| cs.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(parse_time)
        .max();
    let from_ready = || {
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "False")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(parse_time)
    };
    from_containers
        .or_else(from_ready)
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(parse_time))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(parse_time))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn back_off_doubles_from_the_last_failure_and_is_capped() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(360);
        let last = at("2024-01-01T00:00:00Z");
        let record = |n| BackoffRecord {
            failures_after_last_success: n,
            last_failure: Some(last),
        };
        assert_eq!(record(0).remaining(last, base, max), Duration::ZERO);
        assert_eq!(record(1).remaining(last, base, max), base);
        assert_eq!(
            record(3).remaining(last, base, max),
            Duration::from_secs(40)
        );
        assert_eq!(record(20).remaining(last, base, max), max);
        let later = at("2024-01-01T00:00:25Z");
        assert_eq!(record(2).remaining(later, base, max), Duration::ZERO);
        assert_eq!(
            record(3).remaining(later, base, max),
            Duration::from_secs(15)
        );
    }
}
