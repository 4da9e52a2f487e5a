//! The replica count one resource metric asks for: Kubernetes' replica
//! calculator, pure. `desired = ceil(current usage ratio * pods)`, with no
//! change while the ratio is within the tolerance of 1, and the
//! conservative handling of pods that cannot be measured: pods being
//! deleted or failed are ignored; pending pods, and (for CPU) pods not
//! ready or still in their start-up period, count as using nothing when
//! the others ask to scale up and are left out otherwise; pods without
//! metrics count as using 100% of the target when the others ask to scale
//! down, and nothing when they ask to scale up. If that second look
//! reverses the direction, the count stays.
//!
//! Values are in thousandths of the unit (millicores, millibytes), as the
//! upstream calculator uses `MilliValue`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// What the calculator needs to know about one selected pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodState {
    pub name: String,
    /// Being deleted, or Failed: left out entirely.
    pub ignored: bool,
    /// Phase Pending.
    pub pending: bool,
    /// The Ready condition: (status, last transition), if any.
    pub ready: Option<(bool, SystemTime)>,
    pub start_time: Option<SystemTime>,
    /// The request of the measured resource (summed over the containers
    /// measured), or why there is none.
    pub request: Result<i64, String>,
}

/// One pod's usage as the metrics API reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodUsage {
    pub value: i64,
    pub timestamp: SystemTime,
    pub window: Duration,
}

/// The calculator's settings (kube-controller-manager's flags).
#[derive(Clone, Copy, Debug)]
pub struct Calculator {
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`.
    pub cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`.
    pub initial_readiness_delay: Duration,
}

impl Default for Calculator {
    fn default() -> Self {
        Calculator {
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// A proposal from one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Percent of the request (utilization targets only).
    pub utilization: Option<i32>,
    /// The average usage per measured pod, in thousandths.
    pub average_value: i64,
}

/// Why no count could be computed (upstream's messages).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoMetricsForReadyPods,
    #[error("no metrics returned matched known pods")]
    NoMatchingMetrics,
    #[error("{0}")]
    MissingRequest(String),
}

/// How the selected pods divide up.
#[derive(Debug, Default, PartialEq)]
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

impl Calculator {
    fn group(
        &self,
        pods: &[PodState],
        usage: &BTreeMap<String, PodUsage>,
        cpu: bool,
        now: SystemTime,
    ) -> Groups {
        let mut groups = Groups::default();
        for pod in pods {
            if pod.ignored {
                groups.ignored.insert(pod.name.clone());
                continue;
            }
            if pod.pending {
                groups.unready.insert(pod.name.clone());
                continue;
            }
            let Some(metric) = usage.get(&pod.name) else {
                groups.missing.insert(pod.name.clone());
                continue;
            };
            if cpu && self.cpu_unready(pod, metric, now) {
                groups.unready.insert(pod.name.clone());
                continue;
            }
            groups.ready += 1;
        }
        groups
    }

    /// Whether a pod's CPU sample should not be trusted: a pod that is not
    /// ready, or one still starting whose sample predates its readiness
    /// (start-up CPU bursts would scale up for nothing).
    fn cpu_unready(&self, pod: &PodState, metric: &PodUsage, now: SystemTime) -> bool {
        let (Some((ready, transition)), Some(start)) = (pod.ready, pod.start_time) else {
            return true;
        };
        if start + self.cpu_initialization_period > now {
            !ready || metric.timestamp < transition + metric.window
        } else {
            !ready && start + self.initial_readiness_delay > transition
        }
    }

    fn within_tolerance(&self, ratio: f64) -> bool {
        (1.0 - ratio).abs() <= self.tolerance
    }

    /// A `Utilization` target: percent of the pods' requests.
    pub fn utilization_replicas(
        &self,
        current_replicas: i32,
        target_utilization: i32,
        pods: &[PodState],
        usage: &BTreeMap<String, PodUsage>,
        cpu: bool,
        now: SystemTime,
    ) -> Result<Proposal, CalcError> {
        if pods.is_empty() {
            return Err(CalcError::NoPods);
        }
        let groups = self.group(pods, usage, cpu, now);
        let mut values: BTreeMap<String, i64> = usage
            .iter()
            .filter(|(name, _)| !groups.ignored.contains(*name) && !groups.unready.contains(*name))
            .filter(|(name, _)| pods.iter().any(|p| &p.name == *name))
            .map(|(name, u)| (name.clone(), u.value))
            .collect();
        if values.is_empty() {
            return Err(CalcError::NoMetricsForReadyPods);
        }
        let mut requests = BTreeMap::new();
        for pod in pods {
            let request = pod.request.clone().map_err(CalcError::MissingRequest)?;
            requests.insert(pod.name.clone(), request);
        }
        let (ratio, utilization, average) =
            utilization_ratio(&values, &requests, target_utilization)?;
        let proposal = |replicas| Proposal {
            replicas,
            utilization: Some(utilization),
            average_value: average,
        };
        let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
        if !scale_up_with_unready && groups.missing.is_empty() {
            if self.within_tolerance(ratio) {
                return Ok(proposal(current_replicas));
            }
            return Ok(proposal(ceil_replicas(ratio * groups.ready as f64)));
        }
        if !groups.missing.is_empty() {
            // Scaling down: the unmeasured may be busy, assume the target
            // (at least all of their request). Scaling up: assume idle.
            let fallback = i64::from(target_utilization.max(100));
            for name in &groups.missing {
                let value = if ratio < 1.0 {
                    requests.get(name).copied().unwrap_or(0) * fallback / 100
                } else {
                    0
                };
                values.insert(name.clone(), value);
            }
        }
        if scale_up_with_unready {
            for name in &groups.unready {
                values.insert(name.clone(), 0);
            }
        }
        let (new_ratio, _, _) = utilization_ratio(&values, &requests, target_utilization)?;
        Ok(proposal(self.second_look(
            current_replicas,
            ratio,
            new_ratio,
            values.len(),
        )))
    }

    /// An `AverageValue` target: usage per pod, in thousandths.
    pub fn average_value_replicas(
        &self,
        current_replicas: i32,
        target_average: i64,
        pods: &[PodState],
        usage: &BTreeMap<String, PodUsage>,
        cpu: bool,
        now: SystemTime,
    ) -> Result<Proposal, CalcError> {
        if pods.is_empty() {
            return Err(CalcError::NoPods);
        }
        let groups = self.group(pods, usage, cpu, now);
        let mut values: BTreeMap<String, i64> = usage
            .iter()
            .filter(|(name, _)| !groups.ignored.contains(*name) && !groups.unready.contains(*name))
            .filter(|(name, _)| pods.iter().any(|p| &p.name == *name))
            .map(|(name, u)| (name.clone(), u.value))
            .collect();
        if values.is_empty() {
            return Err(CalcError::NoMetricsForReadyPods);
        }
        let (ratio, average) = usage_ratio(&values, target_average);
        let proposal = |replicas| Proposal {
            replicas,
            utilization: None,
            average_value: average,
        };
        let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
        if !scale_up_with_unready && groups.missing.is_empty() {
            if self.within_tolerance(ratio) {
                return Ok(proposal(current_replicas));
            }
            return Ok(proposal(ceil_replicas(ratio * groups.ready as f64)));
        }
        for name in &groups.missing {
            values.insert(name.clone(), if ratio < 1.0 { target_average } else { 0 });
        }
        if scale_up_with_unready {
            for name in &groups.unready {
                values.insert(name.clone(), 0);
            }
        }
        let (new_ratio, _) = usage_ratio(&values, target_average);
        Ok(proposal(self.second_look(
            current_replicas,
            ratio,
            new_ratio,
            values.len(),
        )))
    }

    /// After filling in the unmeasured pods: no change if the new ratio is
    /// within tolerance, flips direction, or would move against it.
    fn second_look(&self, current: i32, ratio: f64, new_ratio: f64, counted: usize) -> i32 {
        if self.within_tolerance(new_ratio)
            || (ratio < 1.0 && new_ratio > 1.0)
            || (ratio > 1.0 && new_ratio < 1.0)
        {
            return current;
        }
        let replicas = ceil_replicas(new_ratio * counted as f64);
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            return current;
        }
        replicas
    }
}

fn ceil_replicas(value: f64) -> i32 {
    value.ceil().clamp(0.0, f64::from(i32::MAX)) as i32
}

/// (usage ratio, utilization in whole percent, average usage): upstream
/// truncates the utilization to a whole percent before dividing by the
/// target, and so does this.
fn utilization_ratio(
    values: &BTreeMap<String, i64>,
    requests: &BTreeMap<String, i64>,
    target_utilization: i32,
) -> Result<(f64, i32, i64), CalcError> {
    let (mut total, mut requested, mut counted) = (0i64, 0i64, 0i64);
    for (name, value) in values {
        let Some(request) = requests.get(name) else {
            continue;
        };
        total += value;
        requested += request;
        counted += 1;
    }
    if requested == 0 {
        return Err(CalcError::NoMatchingMetrics);
    }
    let utilization = (total * 100 / requested) as i32;
    Ok((
        f64::from(utilization) / f64::from(target_utilization),
        utilization,
        total / counted,
    ))
}

/// (usage ratio, average usage) against an average-value target.
fn usage_ratio(values: &BTreeMap<String, i64>, target_average: i64) -> (f64, i64) {
    let total: i64 = values.values().sum();
    let average = total / values.len().max(1) as i64;
    (average as f64 / target_average as f64, average)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// A running pod, ready for long, requesting `request` millicores.
    fn pod(name: &str, request: i64) -> PodState {
        PodState {
            name: name.into(),
            ignored: false,
            pending: false,
            ready: Some((true, now() - Duration::from_secs(3600))),
            start_time: Some(now() - Duration::from_secs(7200)),
            request: Ok(request),
        }
    }

    fn usage(values: &[(&str, i64)]) -> BTreeMap<String, PodUsage> {
        values
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    PodUsage {
                        value: *value,
                        timestamp: now() - Duration::from_secs(5),
                        window: Duration::from_secs(15),
                    },
                )
            })
            .collect()
    }

    /// One case of the utilization table: pods, usage, target → replicas.
    struct Case {
        name: &'static str,
        current: i32,
        target: i32,
        pods: Vec<PodState>,
        usage: Vec<(&'static str, i64)>,
        cpu: bool,
        want: Result<(i32, i32), CalcError>,
    }

    fn check(cases: Vec<Case>) {
        let calc = Calculator::default();
        for case in cases {
            let got = calc
                .utilization_replicas(
                    case.current,
                    case.target,
                    &case.pods,
                    &usage(&case.usage),
                    case.cpu,
                    now(),
                )
                .map(|p| (p.replicas, p.utilization.unwrap_or(-1)));
            assert_eq!(got, case.want, "case {}", case.name);
        }
    }

    #[test]
    fn utilization_follows_the_replica_formula() {
        let three = || vec![pod("a", 1000), pod("b", 1000), pod("c", 1000)];
        check(vec![
            Case {
                name: "scale up: 90% of 50% on 3 pods",
                current: 3,
                target: 50,
                pods: three(),
                usage: vec![("a", 900), ("b", 900), ("c", 900)],
                cpu: true,
                want: Ok((6, 90)),
            },
            Case {
                name: "scale down: 20% of 50%",
                current: 3,
                target: 50,
                pods: three(),
                usage: vec![("a", 200), ("b", 200), ("c", 200)],
                cpu: true,
                want: Ok((2, 20)),
            },
            Case {
                name: "within the 10% tolerance: 54% of 50%",
                current: 3,
                target: 50,
                pods: three(),
                usage: vec![("a", 540), ("b", 540), ("c", 540)],
                cpu: true,
                want: Ok((3, 54)),
            },
            Case {
                name: "just past the tolerance: 56% of 50% asks ceil(3.36)",
                current: 3,
                target: 50,
                pods: three(),
                usage: vec![("a", 560), ("b", 560), ("c", 560)],
                cpu: true,
                want: Ok((4, 56)),
            },
            Case {
                name: "utilization is truncated to a whole percent first",
                current: 1,
                target: 100,
                pods: vec![pod("a", 3)],
                usage: vec![("a", 2)],
                cpu: false,
                want: Ok((1, 66)),
            },
            Case {
                name: "missing metrics count as 100% when scaling down: no change",
                current: 3,
                target: 50,
                pods: three(),
                usage: vec![("a", 100), ("b", 100)],
                cpu: true,
                // c assumed at its request: 1200/3000 = 40% → ceil(2.4)
                // = 3, the current count.
                want: Ok((3, 10)),
            },
            Case {
                name: "missing metrics count as 0 when scaling up",
                current: 3,
                target: 50,
                pods: three(),
                usage: vec![("a", 1000), ("b", 1000)],
                cpu: true,
                // (1000 + 1000 + 0) / 3000 = 66% → ceil(3 * 1.32) = 4.
                want: Ok((4, 100)),
            },
            Case {
                name: "an unready pod counts as 0 when scaling up",
                current: 3,
                target: 50,
                pods: vec![
                    pod("a", 1000),
                    pod("b", 1000),
                    // Started a minute ago, not ready yet.
                    PodState {
                        ready: Some((false, now() - Duration::from_secs(50))),
                        start_time: Some(now() - Duration::from_secs(60)),
                        ..pod("c", 1000)
                    },
                ],
                usage: vec![("a", 800), ("b", 800), ("c", 900)],
                cpu: true,
                // Ready: 80% → with c at 0: 53%, within tolerance → 3.
                want: Ok((3, 80)),
            },
            Case {
                name: "pending and deleted pods are left out when scaling down",
                current: 4,
                target: 50,
                pods: vec![
                    pod("a", 1000),
                    pod("b", 1000),
                    PodState {
                        pending: true,
                        ..pod("c", 1000)
                    },
                    PodState {
                        ignored: true,
                        ..pod("d", 1000)
                    },
                ],
                usage: vec![("a", 100), ("b", 100), ("d", 1000)],
                cpu: true,
                want: Ok((1, 10)),
            },
            Case {
                name: "memory ignores readiness",
                current: 2,
                target: 50,
                pods: vec![
                    pod("a", 1000),
                    PodState {
                        ready: Some((false, now())),
                        ..pod("b", 1000)
                    },
                ],
                usage: vec![("a", 1000), ("b", 1000)],
                cpu: false,
                want: Ok((4, 100)),
            },
            Case {
                name: "no pods",
                current: 1,
                target: 50,
                pods: vec![],
                usage: vec![],
                cpu: true,
                want: Err(CalcError::NoPods),
            },
            Case {
                name: "only unready pods have metrics",
                current: 1,
                target: 50,
                pods: vec![PodState {
                    pending: true,
                    ..pod("a", 1000)
                }],
                usage: vec![("a", 1000)],
                cpu: true,
                want: Err(CalcError::NoMetricsForReadyPods),
            },
            Case {
                name: "a container without a request",
                current: 1,
                target: 50,
                pods: vec![PodState {
                    request: Err("missing request for cpu in container app of Pod a".into()),
                    ..pod("a", 0)
                }],
                usage: vec![("a", 1000)],
                cpu: true,
                want: Err(CalcError::MissingRequest(
                    "missing request for cpu in container app of Pod a".into(),
                )),
            },
        ]);
    }

    #[test]
    fn cpu_samples_from_before_readiness_are_not_trusted_during_start_up() {
        let calc = Calculator::default();
        let starting = PodState {
            start_time: Some(now() - Duration::from_secs(60)),
            // Ready 10 s ago: a sample whose 15 s window began before that
            // still holds start-up CPU.
            ready: Some((true, now() - Duration::from_secs(10))),
            ..pod("new", 1000)
        };
        let metric = &usage(&[("new", 1)])["new"];
        assert!(calc.cpu_unready(&starting, metric, now()));
        let settled = PodState {
            ready: Some((true, now() - Duration::from_secs(40))),
            ..starting.clone()
        };
        assert!(!calc.cpu_unready(&settled, metric, now()));
        // Past the initialization period only a pod that never became
        // ready after its initial delay counts as unready.
        let old_unready = PodState {
            ready: Some((false, now() - Duration::from_secs(7190))),
            ..pod("old", 1000)
        };
        assert!(calc.cpu_unready(&old_unready, metric, now()));
        let flapped = PodState {
            ready: Some((false, now() - Duration::from_secs(60))),
            ..pod("old", 1000)
        };
        assert!(!calc.cpu_unready(&flapped, metric, now()));
    }

    #[test]
    fn average_values_divide_usage_per_pod() {
        let calc = Calculator::default();
        let pods = vec![pod("a", 0), pod("b", 0)];
        // 300 MiB average against 100 MiB → 6 pods.
        let mib = 1_048_576_000i64;
        let got = calc
            .average_value_replicas(
                2,
                100 * mib,
                &pods,
                &usage(&[("a", 200 * mib), ("b", 400 * mib)]),
                false,
                now(),
            )
            .unwrap();
        assert_eq!((got.replicas, got.average_value), (6, 300 * mib));
        let within = calc
            .average_value_replicas(
                2,
                100,
                &pods,
                &usage(&[("a", 105), ("b", 95)]),
                false,
                now(),
            )
            .unwrap();
        assert_eq!(within.replicas, 2);
        // One pod missing while the other is below target: it is assumed
        // at the target, 50+100 / 2 = 75% → ceil(1.5) = 2 = no change.
        let missing = calc
            .average_value_replicas(2, 100, &pods, &usage(&[("a", 50)]), false, now())
            .unwrap();
        assert_eq!(missing.replicas, 2);
    }
}
