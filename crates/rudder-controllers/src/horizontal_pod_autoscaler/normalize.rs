//! From the metrics' proposal to the count applied: the stabilization
//! window (the highest recommendation of the last 5 minutes when scaling
//! down, by default) and the rate limits, either the legacy rule (at most
//! double, or 4 pods, per sync) for an HPA without `behavior`, or the
//! `behavior` policies (Pods/Percent per period, `selectPolicy`), then the
//! min/max clamp. Pure: the caller keeps each HPA's [`History`] and passes
//! the time.

use std::time::{Duration, SystemTime};

/// `HPAScalingPolicy.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period: Duration,
}

/// `selectPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

/// `HPAScalingRules` with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub stabilization_window: Duration,
    pub select_policy: SelectPolicy,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    pub scale_up: Rules,
    pub scale_down: Rules,
}

impl Behavior {
    /// The rules of autoscaling/v2's defaults: scale up by 4 pods or 100%
    /// per 15 s, whichever is more, at once; scale down by up to 100% per
    /// 15 s after `downscale_window`.
    pub fn defaults(downscale_window: Duration) -> Behavior {
        let period = Duration::from_secs(15);
        Behavior {
            scale_up: Rules {
                stabilization_window: Duration::ZERO,
                select_policy: SelectPolicy::Max,
                policies: vec![
                    Policy {
                        kind: PolicyKind::Pods,
                        value: 4,
                        period,
                    },
                    Policy {
                        kind: PolicyKind::Percent,
                        value: 100,
                        period,
                    },
                ],
            },
            scale_down: Rules {
                stabilization_window: downscale_window,
                select_policy: SelectPolicy::Max,
                policies: vec![Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period,
                }],
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recommendation {
    at: SystemTime,
    replicas: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScaleEvent {
    at: SystemTime,
    change: i32,
    outdated: bool,
}

/// What one HPA's normalization remembers between syncs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    recommendations: Vec<Recommendation>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

/// A condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionText {
    pub status: bool,
    pub reason: &'static str,
    pub message: &'static str,
}

/// The normalized count and the conditions it sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    pub replicas: i32,
    pub able_to_scale: ConditionText,
    pub scaling_limited: ConditionText,
}

const READY_FOR_NEW_SCALE: &str = "recommended size matches current size";
const SCALE_UP_STABILIZED: &str =
    "recent recommendations were lower than current one, applying the lowest recent recommendation";
const SCALE_DOWN_STABILIZED: &str =
    "recent recommendations were higher than current one, applying the highest recent recommendation";
const WITHIN_RANGE: &str = "the desired count is within the acceptable range";
const TOO_FEW: &str = "the desired replica count is less than the minimum replica count";
const TOO_MANY: &str = "the desired replica count is more than the maximum replica count";
const SCALE_UP_LIMIT: &str =
    "the desired replica count is increasing faster than the maximum scale rate";
const SCALE_DOWN_LIMIT: &str =
    "the desired replica count is decreasing faster than the maximum scale rate";

fn able(stabilized: bool, reason: &'static str, message: &'static str) -> ConditionText {
    if stabilized {
        ConditionText {
            status: true,
            reason,
            message,
        }
    } else {
        ConditionText {
            status: true,
            reason: "ReadyForNewScale",
            message: READY_FOR_NEW_SCALE,
        }
    }
}

fn limited(
    applied: i32,
    wanted: i32,
    reason: &'static str,
    message: &'static str,
) -> ConditionText {
    ConditionText {
        status: applied != wanted,
        reason,
        message,
    }
}

impl History {
    /// Without `behavior`: the highest recommendation within the downscale
    /// window, then at most max(2 × current, 4) and the min/max clamp.
    pub fn normalize_legacy(
        &mut self,
        now: SystemTime,
        downscale_window: Duration,
        current: i32,
        proposed: i32,
        min: i32,
        max: i32,
    ) -> Normalized {
        let cutoff = now.checked_sub(downscale_window).unwrap_or(now);
        let mut stabilized = proposed;
        for rec in &self.recommendations {
            if rec.at >= cutoff {
                stabilized = stabilized.max(rec.replicas);
            }
        }
        self.record(now, proposed, |r| r.at < cutoff);
        let able_to_scale = able(
            stabilized != proposed,
            "ScaleDownStabilized",
            SCALE_DOWN_STABILIZED,
        );

        let scale_up_limit = (current.saturating_mul(2)).max(4);
        let minimum = min.max(1);
        let (replicas, reason, message) = if stabilized < minimum {
            (minimum, "TooFewReplicas", TOO_FEW)
        } else if stabilized > max.min(scale_up_limit) {
            if max > scale_up_limit {
                (scale_up_limit, "ScaleUpLimit", SCALE_UP_LIMIT)
            } else {
                (max, "TooManyReplicas", TOO_MANY)
            }
        } else {
            (stabilized, "DesiredWithinRange", WITHIN_RANGE)
        };
        Normalized {
            replicas,
            able_to_scale,
            scaling_limited: limited(replicas, stabilized, reason, message),
        }
    }

    /// With `behavior`: each direction's stabilization window bounds the
    /// recommendation, then its policies bound the change over their
    /// periods (counting the changes already made), then min/max.
    pub fn normalize_with_behavior(
        &mut self,
        now: SystemTime,
        behavior: &Behavior,
        current: i32,
        proposed: i32,
        min: i32,
        max: i32,
    ) -> Normalized {
        let up_cutoff = now
            .checked_sub(behavior.scale_up.stabilization_window)
            .unwrap_or(now);
        let down_cutoff = now
            .checked_sub(behavior.scale_down.stabilization_window)
            .unwrap_or(now);
        let (mut up, mut down) = (proposed, proposed);
        for rec in &self.recommendations {
            if rec.at > up_cutoff {
                up = up.min(rec.replicas);
            }
            if rec.at > down_cutoff {
                down = down.max(rec.replicas);
            }
        }
        // Scale up no further than the lowest recent recommendation, down
        // no further than the highest.
        let stabilized = current.max(up).min(down);
        self.record(now, proposed, |r| r.at < up_cutoff && r.at < down_cutoff);
        let able_to_scale = if proposed >= current {
            able(
                stabilized != proposed,
                "ScaleUpStabilized",
                SCALE_UP_STABILIZED,
            )
        } else {
            able(
                stabilized != proposed,
                "ScaleDownStabilized",
                SCALE_DOWN_STABILIZED,
            )
        };

        let (replicas, reason, message) = if stabilized > current {
            let limit = scale_up_limit(
                now,
                current,
                &self.scale_up_events,
                &self.scale_down_events,
                &behavior.scale_up,
            )
            .max(current);
            let (maximum, reason, message) = if max > limit {
                (limit, "ScaleUpLimit", SCALE_UP_LIMIT)
            } else {
                (max, "TooManyReplicas", TOO_MANY)
            };
            if stabilized > maximum {
                (maximum, reason, message)
            } else {
                (stabilized, "DesiredWithinRange", WITHIN_RANGE)
            }
        } else if stabilized < current {
            let limit = scale_down_limit(
                now,
                current,
                &self.scale_up_events,
                &self.scale_down_events,
                &behavior.scale_down,
            )
            .min(current);
            let (minimum, reason, message) = if min < limit {
                (limit, "ScaleDownLimit", SCALE_DOWN_LIMIT)
            } else {
                (min, "TooFewReplicas", TOO_FEW)
            };
            if stabilized < minimum {
                (minimum, reason, message)
            } else {
                (stabilized, "DesiredWithinRange", WITHIN_RANGE)
            }
        } else {
            (stabilized, "DesiredWithinRange", WITHIN_RANGE)
        };
        Normalized {
            replicas,
            able_to_scale,
            scaling_limited: limited(replicas, stabilized, reason, message),
        }
    }

    /// Remembers a recommendation, reusing the slot of one `stale` says is
    /// past every window.
    fn record(&mut self, now: SystemTime, replicas: i32, stale: impl Fn(&Recommendation) -> bool) {
        let rec = Recommendation { at: now, replicas };
        match self.recommendations.iter().position(stale) {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
    }

    /// Remembers a rescale for the policies' periods (only HPAs with
    /// `behavior` count them).
    pub fn record_scale(&mut self, now: SystemTime, behavior: &Behavior, from: i32, to: i32) {
        let (events, rules, change) = if to > from {
            (&mut self.scale_up_events, &behavior.scale_up, to - from)
        } else {
            (&mut self.scale_down_events, &behavior.scale_down, from - to)
        };
        let longest = rules
            .policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default();
        let cutoff = now.checked_sub(longest).unwrap_or(now);
        for event in events.iter_mut() {
            if event.at < cutoff {
                event.outdated = true;
            }
        }
        let event = ScaleEvent {
            at: now,
            change,
            outdated: false,
        };
        match events.iter().position(|e| e.outdated) {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

/// Replicas added (or removed) within the last `period`.
fn change_in_period(now: SystemTime, period: Duration, events: &[ScaleEvent]) -> i32 {
    let cutoff = now.checked_sub(period).unwrap_or(now);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.change)
        .sum()
}

fn scale_up_limit(
    now: SystemTime,
    current: i32,
    up_events: &[ScaleEvent],
    down_events: &[ScaleEvent],
    rules: &Rules,
) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i32::min,
        SelectPolicy::Max => i32::max,
    };
    let mut result = if rules.select_policy == SelectPolicy::Min {
        i32::MAX
    } else {
        i32::MIN
    };
    for policy in &rules.policies {
        let start = current - change_in_period(now, policy.period, up_events)
            + change_in_period(now, policy.period, down_events);
        let proposed = match policy.kind {
            PolicyKind::Pods => start.saturating_add(policy.value),
            PolicyKind::Percent => {
                (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i32
            }
        };
        result = pick(result, proposed);
    }
    result
}

fn scale_down_limit(
    now: SystemTime,
    current: i32,
    up_events: &[ScaleEvent],
    down_events: &[ScaleEvent],
    rules: &Rules,
) -> i32 {
    // The policy allowing the largest change gives the lowest limit, so
    // `Max` takes the minimum.
    let pick: fn(i32, i32) -> i32 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i32::max,
        SelectPolicy::Max => i32::min,
    };
    let mut result = if rules.select_policy == SelectPolicy::Min {
        i32::MIN
    } else {
        i32::MAX
    };
    for policy in &rules.policies {
        let start = current - change_in_period(now, policy.period, up_events)
            + change_in_period(now, policy.period, down_events);
        let proposed = match policy.kind {
            PolicyKind::Pods => start - policy.value,
            PolicyKind::Percent => {
                (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)) as i32
            }
        };
        result = pick(result, proposed);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    const WINDOW: Duration = Duration::from_secs(300);

    #[test]
    fn legacy_scale_down_waits_for_the_window() {
        let mut h = History::default();
        // Load asked for 8, then falls to 2.
        assert_eq!(h.normalize_legacy(t(0), WINDOW, 4, 8, 1, 10).replicas, 8);
        let n = h.normalize_legacy(t(60), WINDOW, 8, 2, 1, 10);
        assert_eq!(n.replicas, 8);
        assert_eq!(n.able_to_scale.reason, "ScaleDownStabilized");
        assert_eq!(h.normalize_legacy(t(240), WINDOW, 8, 3, 1, 10).replicas, 8);
        // 8 leaves the window after 300 s: the highest since is 3.
        let n = h.normalize_legacy(t(301), WINDOW, 8, 2, 1, 10);
        assert_eq!(n.replicas, 3);
        // Past every recommendation but the last.
        assert_eq!(h.normalize_legacy(t(700), WINDOW, 3, 2, 1, 10).replicas, 2);
    }

    #[test]
    fn legacy_limits_and_clamps() {
        struct Case {
            current: i32,
            proposed: i32,
            min: i32,
            max: i32,
            want: i32,
            reason: &'static str,
            limited: bool,
        }
        let cases = [
            Case {
                current: 2,
                proposed: 20,
                min: 1,
                max: 100,
                want: 4,
                reason: "ScaleUpLimit",
                limited: true,
            },
            Case {
                current: 10,
                proposed: 50,
                min: 1,
                max: 100,
                want: 20,
                reason: "ScaleUpLimit",
                limited: true,
            },
            Case {
                current: 10,
                proposed: 50,
                min: 1,
                max: 15,
                want: 15,
                reason: "TooManyReplicas",
                limited: true,
            },
            Case {
                current: 3,
                proposed: 1,
                min: 2,
                max: 10,
                want: 2,
                reason: "TooFewReplicas",
                limited: true,
            },
            Case {
                current: 3,
                proposed: 5,
                min: 1,
                max: 10,
                want: 5,
                reason: "DesiredWithinRange",
                limited: false,
            },
        ];
        for c in cases {
            let n = History::default().normalize_legacy(
                t(0),
                WINDOW,
                c.current,
                c.proposed,
                c.min,
                c.max,
            );
            assert_eq!(
                (
                    n.replicas,
                    n.scaling_limited.reason,
                    n.scaling_limited.status
                ),
                (c.want, c.reason, c.limited),
                "{} → {} in [{}, {}]",
                c.current,
                c.proposed,
                c.min,
                c.max
            );
        }
    }

    #[test]
    fn default_behavior_scales_up_by_4_pods_or_double_per_period() {
        let behavior = Behavior::defaults(WINDOW);
        let mut h = History::default();
        let n = h.normalize_with_behavior(t(0), &behavior, 1, 10, 1, 100);
        assert_eq!((n.replicas, n.scaling_limited.reason), (5, "ScaleUpLimit"));
        h.record_scale(t(0), &behavior, 1, 5);
        // Within the same 15 s the period started at 1: still at most 5.
        let n = h.normalize_with_behavior(t(10), &behavior, 5, 10, 1, 100);
        assert_eq!(n.replicas, 5);
        // A new period starts from 5: max(5 + 4, 10) = 10.
        let n = h.normalize_with_behavior(t(16), &behavior, 5, 10, 1, 100);
        assert_eq!((n.replicas, n.scaling_limited.status), (10, false));
    }

    #[test]
    fn behavior_policies_and_select_policy() {
        let period = Duration::from_secs(60);
        let rules = |select, policies: Vec<Policy>| Rules {
            stabilization_window: Duration::ZERO,
            select_policy: select,
            policies,
        };
        let pods = |value| Policy {
            kind: PolicyKind::Pods,
            value,
            period,
        };
        let percent = |value| Policy {
            kind: PolicyKind::Percent,
            value,
            period,
        };
        let behavior = |down| Behavior {
            scale_up: Behavior::defaults(WINDOW).scale_up,
            scale_down: down,
        };
        // 10 → 1 allowed by Max of (2 pods, 50%): 50% gives 5.
        let b = behavior(rules(SelectPolicy::Max, vec![pods(2), percent(50)]));
        let n = History::default().normalize_with_behavior(t(0), &b, 10, 1, 1, 20);
        assert_eq!(
            (n.replicas, n.scaling_limited.reason),
            (5, "ScaleDownLimit")
        );
        // Min picks the smaller change: 2 pods → 8.
        let b = behavior(rules(SelectPolicy::Min, vec![pods(2), percent(50)]));
        let n = History::default().normalize_with_behavior(t(0), &b, 10, 1, 1, 20);
        assert_eq!(n.replicas, 8);
        // Disabled: never down.
        let b = behavior(rules(SelectPolicy::Disabled, vec![pods(2)]));
        let n = History::default().normalize_with_behavior(t(0), &b, 10, 1, 1, 20);
        assert_eq!(n.replicas, 10);
        // Removals already made in the period count: after 10 → 8, only
        // 8 - (10 - 2) = 0 more may go.
        let b = behavior(rules(SelectPolicy::Max, vec![pods(2)]));
        let mut h = History::default();
        h.record_scale(t(0), &b, 10, 8);
        let n = h.normalize_with_behavior(t(30), &b, 8, 1, 1, 20);
        assert_eq!(n.replicas, 8);
        let n = h.normalize_with_behavior(t(61), &b, 8, 1, 1, 20);
        assert_eq!(n.replicas, 6);
        // The floor still applies below the policies' limit.
        let b = behavior(rules(SelectPolicy::Max, vec![percent(100)]));
        let n = History::default().normalize_with_behavior(t(0), &b, 10, 1, 3, 20);
        assert_eq!(
            (n.replicas, n.scaling_limited.reason),
            (3, "TooFewReplicas")
        );
    }

    #[test]
    fn behavior_stabilization_windows_work_both_ways() {
        let mut behavior = Behavior::defaults(Duration::from_secs(120));
        behavior.scale_up.stabilization_window = Duration::from_secs(60);
        let mut h = History::default();
        // A spike to 10 at t=0 is not followed while a lower recent
        // recommendation (4) exists within 60 s.
        h.normalize_with_behavior(t(0), &behavior, 4, 4, 1, 100);
        let n = h.normalize_with_behavior(t(30), &behavior, 4, 10, 1, 100);
        assert_eq!(
            (n.replicas, n.able_to_scale.reason),
            (4, "ScaleUpStabilized")
        );
        // Once the 4 is older than the window, the lowest since is 10.
        let n = h.normalize_with_behavior(t(61), &behavior, 4, 10, 1, 100);
        assert_eq!(n.replicas, 8, "4 → 10 limited to double");
        // Down: the highest of the last 120 s (10) holds.
        let n = h.normalize_with_behavior(t(100), &behavior, 10, 2, 1, 100);
        assert_eq!(
            (n.replicas, n.able_to_scale.reason),
            (10, "ScaleDownStabilized")
        );
    }
}
