//! HorizontalPodAutoscaler controller (kube's `horizontalpodautoscaling`):
//! every sync period (15 s) each autoscaling/v2 HPA reads its target's
//! `scale` subresource (replicas and pod selector), the selected pods'
//! usage from `metrics.k8s.io` and their requests, and proposes a count
//! per metric ([`replicas`]); the largest wins, then the stabilization
//! window and the scaling policies shape it ([`normalize`]). The scale is
//! updated when the count changes (`SuccessfulRescale`), and the status
//! (current/desired replicas, current metrics, the AbleToScale,
//! ScalingActive and ScalingLimited conditions, lastScaleTime) is written
//! as Kubernetes writes it.
//!
//! Metrics served: `Resource` and `ContainerResource` (cpu and memory,
//! `Utilization` and `AverageValue` targets). `Pods`, `Object` and
//! `External` metrics need a custom or external metrics API, which this
//! cluster does not serve; such a metric counts as invalid, as upstream
//! does when the API is missing.

pub mod normalize;
pub mod replicas;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, MetricSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, ResourceExt};
use rudder_apimachinery::resources::Amount;
use rudder_apimachinery::selector::LabelSelector;
use rudder_runtime::events::EventType;
use rudder_runtime::{Change, Informer, WorkQueue};
use serde_json::{json, Value};

use crate::Context;
use normalize::{Behavior, History, Policy, PolicyKind, Rules, SelectPolicy};
use replicas::{CalcError, Calculator, PodState, PodUsage, Proposal};

pub fn start(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    HorizontalPodAutoscalerController::new(ctx).run().boxed()
}

#[derive(Clone)]
pub struct HorizontalPodAutoscalerController {
    ctx: Context,
    queue: WorkQueue<String>,
    hpas: Informer<HorizontalPodAutoscaler>,
    pods: Informer<Pod>,
    calculator: Calculator,
    sync_period: Duration,
    downscale_window: Duration,
    /// Each HPA's recommendations and rescales, for the windows.
    histories: Arc<Mutex<HashMap<String, History>>>,
}

/// Why one metric gave no proposal: the ScalingActive reason and the
/// error, as upstream words them.
#[derive(Debug)]
struct MetricFailure {
    reason: &'static str,
    error: String,
}

/// A metric's proposal with its status entry and its name for messages.
struct MetricResult {
    replicas: i32,
    status: Value,
    name: String,
}

/// The selected pods' usage per container, by pod name.
type PodMetrics = BTreeMap<String, ContainerUsage>;

struct ContainerUsage {
    timestamp: SystemTime,
    window: Duration,
    /// container → resource → value in thousandths.
    containers: BTreeMap<String, BTreeMap<String, i64>>,
}

fn key_of(hpa: &HorizontalPodAutoscaler) -> String {
    format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any())
}

impl HorizontalPodAutoscalerController {
    pub fn new(ctx: &Context) -> Self {
        let queue = WorkQueue::new();
        let hpas = ctx.informers.get::<HorizontalPodAutoscaler>();
        let q = queue.clone();
        // The controller's own status writes come back as updates; only a
        // new HPA or a changed spec is looked at before the next period.
        hpas.on_change(move |change| {
            let wanted = match change {
                Change::Updated { old, new } => old.spec != new.spec,
                _ => true,
            };
            if wanted {
                q.add(key_of(change.object()));
            }
        });
        let options = &ctx.options;
        HorizontalPodAutoscalerController {
            queue,
            hpas,
            pods: ctx.informers.get(),
            calculator: Calculator {
                tolerance: options.hpa_tolerance,
                cpu_initialization_period: options.hpa_cpu_initialization_period,
                initial_readiness_delay: options.hpa_initial_readiness_delay,
            },
            sync_period: options.hpa_sync_period,
            downscale_window: options.hpa_downscale_stabilization,
            histories: Default::default(),
            ctx: ctx.clone(),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.hpas.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        self.queue
            .run_workers("horizontalpodautoscaling", 2, move |key: String| {
                let this = this.clone();
                async move { this.sync(&key).await }
            })
            .await;
        Ok(())
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (ns, name) = rudder_runtime::informer::split_key(key);
        let Some(hpa) = self.hpas.get_namespaced(ns, name) else {
            self.histories
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            return Ok(None);
        };
        if hpa.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        self.reconcile(key, &hpa).await?;
        Ok(Some(self.sync_period))
    }

    fn history<T>(&self, key: &str, f: impl FnOnce(&mut History) -> T) -> T {
        let mut histories = self.histories.lock().unwrap_or_else(|e| e.into_inner());
        f(histories.entry(key.to_owned()).or_default())
    }

    async fn reconcile(&self, key: &str, hpa: &HorizontalPodAutoscaler) -> Result<(), kube::Error> {
        let ns = hpa.namespace().unwrap_or_default();
        let spec = hpa.spec.clone().unwrap_or_default();
        let old_status = serde_json::to_value(&hpa.status).unwrap_or(Value::Null);
        let mut status = Status::from_existing(&old_status);
        let target = &spec.scale_target_ref;
        let reference = format!("{}/{}/{}", target.kind, ns, target.name);

        let scale_api = match self.target_api(&ns, target).await {
            Ok(api) => api,
            Err(e) => {
                return self
                    .failed_get_scale(hpa, status, &old_status, &e.to_string())
                    .await
            }
        };
        let scale = match scale_api.get_scale(&target.name).await {
            Ok(scale) => scale,
            Err(e) => {
                return self
                    .failed_get_scale(hpa, status, &old_status, &e.to_string())
                    .await
            }
        };
        status.set_condition(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();

        let mut metric_statuses = Vec::new();
        let (desired, reason) = if current == 0 && min != 0 {
            status.set_condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            );
            (0, String::new())
        } else if current > max {
            (
                max,
                "Current number of replicas above Spec.MaxReplicas".to_string(),
            )
        } else if current < min {
            (
                min,
                "Current number of replicas below Spec.MinReplicas".to_string(),
            )
        } else {
            let outcome = self
                .replicas_for_metrics(
                    hpa,
                    &spec.metrics.clone().unwrap_or_default(),
                    current,
                    &selector,
                )
                .await;
            metric_statuses = outcome.statuses;
            let (proposed, metric_name) = match outcome.result {
                Ok(found) => found,
                Err((condition, error)) => {
                    status.set_condition(
                        "ScalingActive",
                        false,
                        condition.reason,
                        &format!(
                            "the HPA was unable to compute the replica count: {}",
                            condition.error
                        ),
                    );
                    self.ctx.recorder.record(
                        hpa,
                        EventType::Warning,
                        "FailedComputeMetricsReplicas",
                        &format!(
                            "failed to compute desired number of replicas based on listed metrics for {reference}: {error}"
                        ),
                    );
                    status.current_replicas = current;
                    status.current_metrics = metric_statuses;
                    return self.write_status(hpa, status, &old_status).await;
                }
            };
            status.set_condition(
                "ScalingActive",
                true,
                "ValidMetricFound",
                &format!(
                    "the HPA was able to successfully calculate a replica count from {metric_name}"
                ),
            );
            let now = SystemTime::now();
            let normalized = match &spec.behavior {
                Some(behavior) => {
                    let behavior = behavior_of(behavior, self.downscale_window);
                    self.history(key, |h| {
                        h.normalize_with_behavior(now, &behavior, current, proposed, min, max)
                    })
                }
                None => self.history(key, |h| {
                    h.normalize_legacy(now, self.downscale_window, current, proposed, min, max)
                }),
            };
            let c = &normalized.able_to_scale;
            status.set_condition("AbleToScale", c.status, c.reason, c.message);
            let c = &normalized.scaling_limited;
            status.set_condition("ScalingLimited", c.status, c.reason, c.message);
            let reason = if normalized.replicas > current {
                format!("{metric_name} above target")
            } else {
                "All metrics below target".to_string()
            };
            (normalized.replicas, reason)
        };

        let rescale = desired != current && !(current == 0 && min != 0);
        if rescale {
            let patch = json!({"spec": {"replicas": desired}});
            if let Err(e) = scale_api
                .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                status.set_condition(
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    &format!("the HPA controller was unable to update the target scale: {e}"),
                );
                self.ctx.recorder.record(
                    hpa,
                    EventType::Warning,
                    "FailedRescale",
                    &format!("New size: {desired}; reason: {reason}; error: {e}"),
                );
                status.current_replicas = current;
                status.current_metrics = metric_statuses;
                self.write_status(hpa, status, &old_status).await?;
                return Err(e);
            }
            status.set_condition(
                "AbleToScale",
                true,
                "SucceededRescale",
                &format!("the HPA controller was able to update the target scale to {desired}"),
            );
            self.ctx.recorder.record(
                hpa,
                EventType::Normal,
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {reason}"),
            );
            if let Some(behavior) = &spec.behavior {
                let behavior = behavior_of(behavior, self.downscale_window);
                self.history(key, |h| {
                    h.record_scale(SystemTime::now(), &behavior, current, desired)
                });
            }
            tracing::info!(hpa = key, from = current, to = desired, reason, "rescaled");
            status.last_scale_time = Some(json!(rudder_apimachinery::time::now_rfc3339()));
        }
        status.current_replicas = current;
        status.desired_replicas = desired;
        status.current_metrics = metric_statuses;
        self.write_status(hpa, status, &old_status).await
    }

    async fn failed_get_scale(
        &self,
        hpa: &HorizontalPodAutoscaler,
        mut status: Status,
        old_status: &Value,
        error: &str,
    ) -> Result<(), kube::Error> {
        status.set_condition(
            "AbleToScale",
            false,
            "FailedGetScale",
            &format!("the HPA controller was unable to get the target's current scale: {error}"),
        );
        self.ctx
            .recorder
            .record(hpa, EventType::Warning, "FailedGetScale", error);
        self.write_status(hpa, status, old_status).await
    }

    /// The API of the scale target's kind.
    async fn target_api(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<Api<DynamicObject>, kube::Error> {
        let api_version = target.api_version.clone().unwrap_or_default();
        let (group, version) = api_version
            .rsplit_once('/')
            .map_or(("", api_version.as_str()), |(g, v)| (g, v));
        let gvk = GroupVersionKind::gvk(group, version, &target.kind);
        let known = match (group, target.kind.as_str()) {
            ("apps", "Deployment") => Some("deployments"),
            ("apps", "StatefulSet") => Some("statefulsets"),
            ("apps", "ReplicaSet") => Some("replicasets"),
            ("", "ReplicationController") => Some("replicationcontrollers"),
            _ => None,
        };
        let resource = match known {
            Some(plural) => ApiResource::from_gvk_with_plural(&gvk, plural),
            None => {
                kube::discovery::pinned_kind(&self.ctx.client, &gvk)
                    .await?
                    .0
            }
        };
        Ok(Api::namespaced_with(self.ctx.client.clone(), ns, &resource))
    }

    async fn replicas_for_metrics(
        &self,
        hpa: &HorizontalPodAutoscaler,
        metrics: &[MetricSpec],
        current: i32,
        selector: &str,
    ) -> MetricsOutcome {
        let ns = hpa.namespace().unwrap_or_default();
        let mut statuses = vec![json!({"type": ""}); metrics.len()];
        let fail = |reason, error: String| MetricsOutcome {
            statuses: Vec::new(),
            result: Err((
                MetricFailure {
                    reason,
                    error: error.clone(),
                },
                error,
            )),
        };
        if selector.is_empty() {
            self.ctx.recorder.record(
                hpa,
                EventType::Warning,
                "SelectorRequired",
                "selector is required",
            );
            return fail(
                "InvalidSelector",
                "the HPA target's scale is missing a selector".into(),
            );
        }
        let parsed = match LabelSelector::parse(selector) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.ctx.recorder.record(
                    hpa,
                    EventType::Warning,
                    "InvalidSelector",
                    &format!("couldn't convert selector into a corresponding internal selector object: {e}"),
                );
                return fail(
                    "InvalidSelector",
                    format!("the HPA target's scale has an invalid selector: {e}"),
                );
            }
        };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_namespace(&ns)
            .into_iter()
            .filter(|p| parsed.matches(crate::util::labels_of(&p.metadata)))
            .collect();
        let usage = self.pod_metrics(&ns, selector).await;

        let mut best: Option<(i32, String)> = None;
        let mut invalid = 0;
        let mut first_error: Option<(MetricFailure, String)> = None;
        for (i, metric) in metrics.iter().enumerate() {
            match self.metric_replicas(metric, current, &pods, &usage) {
                Ok(result) => {
                    statuses[i] = result.status;
                    if best.as_ref().is_none_or(|(r, _)| result.replicas > *r) {
                        best = Some((result.replicas, result.name));
                    }
                }
                Err(failure) => {
                    invalid += 1;
                    self.ctx.recorder.record(
                        hpa,
                        EventType::Warning,
                        failure.reason,
                        &failure.error,
                    );
                    if first_error.is_none() {
                        let error = failure.error.clone();
                        first_error = Some((failure, error));
                    }
                }
            }
        }
        let result = match (best, first_error) {
            (Some((replicas, name)), None) => Ok((replicas, name)),
            // A valid proposal stands unless it would scale down while
            // another metric cannot be read.
            (Some((replicas, name)), Some(_)) if replicas >= current => Ok((replicas, name)),
            (_, Some((failure, error))) => Err((
                failure,
                format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {error}",
                    metrics.len()
                ),
            )),
            (None, None) => Err((
                MetricFailure {
                    reason: "FailedGetResourceMetric",
                    error: "no metrics to compute a replica count from".into(),
                },
                "invalid metrics (0 invalid out of 0)".into(),
            )),
        };
        MetricsOutcome { statuses, result }
    }

    /// The selected pods' PodMetrics, by pod name; an error leaves it empty
    /// (every pod then lacks metrics, which the calculator reports).
    async fn pod_metrics(&self, ns: &str, selector: &str) -> Result<PodMetrics, String> {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
            "pods",
        );
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), ns, &resource);
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| format!("unable to fetch metrics from resource metrics API: {e}"))?;
        let mut out = PodMetrics::new();
        for item in list.items {
            let timestamp = item
                .data
                .get("timestamp")
                .and_then(Value::as_str)
                .and_then(rudder_apimachinery::time::parse_rfc3339)
                .unwrap_or_else(SystemTime::now);
            let window = item
                .data
                .get("window")
                .and_then(Value::as_str)
                .and_then(parse_go_duration)
                .unwrap_or_default();
            let mut containers = BTreeMap::new();
            for c in item
                .data
                .get("containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = c.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let usage: BTreeMap<String, i64> = c
                    .get("usage")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(resource, q)| {
                        Some((resource.clone(), milli(Amount::from_json(q)?)))
                    })
                    .collect();
                containers.insert(name.to_owned(), usage);
            }
            out.insert(
                item.name_any(),
                ContainerUsage {
                    timestamp,
                    window,
                    containers,
                },
            );
        }
        Ok(out)
    }

    fn metric_replicas(
        &self,
        metric: &MetricSpec,
        current: i32,
        pods: &[Arc<Pod>],
        usage: &Result<PodMetrics, String>,
    ) -> Result<MetricResult, MetricFailure> {
        let (source, resource, container, target) = match metric.type_.as_str() {
            "Resource" => {
                let Some(r) = &metric.resource else {
                    return Err(invalid_source("Resource"));
                };
                ("Resource", r.name.clone(), None, r.target.clone())
            }
            "ContainerResource" => {
                let Some(r) = &metric.container_resource else {
                    return Err(invalid_source("ContainerResource"));
                };
                (
                    "ContainerResource",
                    r.name.clone(),
                    Some(r.container.clone()),
                    r.target.clone(),
                )
            }
            other => {
                let (reason, api) = match other {
                    "Pods" => ("FailedGetPodsMetric", "custom.metrics.k8s.io"),
                    "Object" => ("FailedGetObjectMetric", "custom.metrics.k8s.io"),
                    "External" => ("FailedGetExternalMetric", "external.metrics.k8s.io"),
                    _ => {
                        return Err(MetricFailure {
                            reason: "InvalidMetricSourceType",
                            error: format!("unknown metric source type {other:?}"),
                        })
                    }
                };
                return Err(MetricFailure {
                    reason,
                    error: format!(
                        "unable to get {} metric: the server could not find the requested resource ({api} is not served)",
                        other.to_lowercase()
                    ),
                });
            }
        };
        let reason = if source == "Resource" {
            "FailedGetResourceMetric"
        } else {
            "FailedGetContainerResourceMetric"
        };
        let fail = |error: String| MetricFailure { reason, error };
        let usage = usage.as_ref().map_err(|e| {
            fail(format!(
                "failed to get {resource} resource metric value: failed to get {resource} utilization: {e}"
            ))
        })?;
        let pod_usage = pods_usage(pods, usage, &resource, container.as_deref());
        if pod_usage.is_empty() && !pods.is_empty() {
            return Err(fail(format!(
                "failed to get {resource} resource metric value: failed to get {resource} utilization: unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
            )));
        }
        let states: Vec<PodState> = pods
            .iter()
            .map(|p| pod_state(p, &resource, container.as_deref()))
            .collect();
        let cpu = resource == "cpu";
        let now = SystemTime::now();
        let (proposal, name, utilization_target): (Result<Proposal, CalcError>, String, bool) =
            match (target.type_.as_str(), target.average_utilization, &target.average_value) {
                ("Utilization", Some(u), _) => (
                    self.calculator
                        .utilization_replicas(current, u, &states, &pod_usage, cpu, now),
                    metric_name(&resource, source, true),
                    true,
                ),
                ("AverageValue", _, Some(q)) => {
                    let Some(target_value) = Amount::parse(&q.0).map(milli) else {
                        return Err(fail(format!("invalid target value {:?}", q.0)));
                    };
                    (
                        self.calculator.average_value_replicas(
                            current,
                            target_value,
                            &states,
                            &pod_usage,
                            cpu,
                            now,
                        ),
                        metric_name(&resource, source, false),
                        false,
                    )
                }
                _ => {
                    return Err(fail(format!(
                        "failed to get {resource} resource metric value: invalid resource metric source: neither a utilization target nor a value target was set"
                    )))
                }
            };
        let proposal = proposal.map_err(|e| {
            let what = if utilization_target { "utilization" } else { "usage" };
            fail(format!(
                "failed to get {resource} resource metric value: failed to get {resource} {what}: {e}"
            ))
        })?;
        let mut current_value = json!({"averageValue": milli_quantity(proposal.average_value)});
        if let Some(u) = proposal.utilization {
            current_value["averageUtilization"] = json!(u);
        }
        let status = match &container {
            None => {
                json!({"type": "Resource", "resource": {"name": resource, "current": current_value}})
            }
            Some(c) => json!({"type": "ContainerResource", "containerResource": {
                "name": resource, "container": c, "current": current_value}}),
        };
        Ok(MetricResult {
            replicas: proposal.replicas,
            status,
            name,
        })
    }

    /// Writes the status when it changed.
    async fn write_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        mut status: Status,
        old: &Value,
    ) -> Result<(), kube::Error> {
        status.observed_generation = hpa.metadata.generation;
        let new = status.to_json();
        if &new == old {
            return Ok(());
        }
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(
            self.ctx.client.clone(),
            &hpa.namespace().unwrap_or_default(),
        );
        // A merge patch replaces lists whole and drops fields set to null.
        let mut patch = new.clone();
        for field in ["currentMetrics", "lastScaleTime"] {
            if patch.get(field).is_none() {
                patch[field] = Value::Null;
            }
        }
        api.patch_status(
            &hpa.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": patch})),
        )
        .await?;
        Ok(())
    }
}

struct MetricsOutcome {
    statuses: Vec<Value>,
    /// (replicas, metric name) or (the condition's failure, the error).
    result: Result<(i32, String), (MetricFailure, String)>,
}

fn invalid_source(kind: &str) -> MetricFailure {
    MetricFailure {
        reason: "InvalidMetricSourceType",
        error: format!("invalid metric source: the {kind} source is not set"),
    }
}

/// How messages name a metric (upstream's `metricNameForStatus`).
fn metric_name(resource: &str, source: &str, utilization: bool) -> String {
    let kind = if source == "Resource" {
        "resource"
    } else {
        "container resource"
    };
    if utilization {
        format!("{resource} {kind} utilization (percentage of request)")
    } else {
        format!("{resource} {kind}")
    }
}

fn milli(amount: Amount) -> i64 {
    i64::try_from(amount.milli_value()).unwrap_or(i64::MAX)
}

fn milli_quantity(value: i64) -> String {
    Amount::parse(&format!("{value}m"))
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Each selected pod's usage of `resource` (one container's, or all of
/// them); a pod lacking a figure for a container is left out (missing).
fn pods_usage(
    pods: &[Arc<Pod>],
    metrics: &PodMetrics,
    resource: &str,
    container: Option<&str>,
) -> BTreeMap<String, PodUsage> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let name = pod.name_any();
        let Some(m) = metrics.get(&name) else {
            continue;
        };
        let value = match container {
            Some(c) => m.containers.get(c).and_then(|u| u.get(resource)).copied(),
            None => m
                .containers
                .values()
                .map(|u| u.get(resource).copied())
                .sum::<Option<i64>>(),
        };
        if let Some(value) = value {
            out.insert(
                name,
                PodUsage {
                    value,
                    timestamp: m.timestamp,
                    window: m.window,
                },
            );
        }
    }
    out
}

/// What the calculator needs from a pod, with its request of `resource`.
fn pod_state(pod: &Pod, resource: &str, container: Option<&str>) -> PodState {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            let at = c
                .last_transition_time
                .as_ref()
                .map(|t| SystemTime::from(t.0))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (c.status == "True", at)
        });
    let start_time = status
        .and_then(|s| s.start_time.as_ref())
        .map(|t| SystemTime::from(t.0));
    let mut request = Ok(0i64);
    let name = pod.name_any();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        if container.is_some_and(|want| want != c.name) {
            continue;
        }
        let amount = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| Amount::parse(&q.0));
        match (amount, &mut request) {
            (Some(a), Ok(sum)) => *sum += milli(a),
            (None, Ok(_)) => {
                request = Err(format!(
                    "missing request for {resource} in container {} of Pod {name}",
                    c.name
                ))
            }
            _ => {}
        }
    }
    PodState {
        name,
        ignored: pod.metadata.deletion_timestamp.is_some() || phase == "Failed",
        pending: phase == "Pending",
        ready,
        start_time,
        request,
    }
}

/// The HPA's `behavior` with autoscaling/v2's defaults filled in, and the
/// controller's downscale window where scale-down sets none.
fn behavior_of(behavior: &HorizontalPodAutoscalerBehavior, downscale_window: Duration) -> Behavior {
    let defaults = Behavior::defaults(downscale_window);
    let rules = |given: &Option<HPAScalingRules>, default: Rules| {
        let Some(given) = given else { return default };
        Rules {
            stabilization_window: given
                .stabilization_window_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(default.stabilization_window),
            select_policy: match given.select_policy.as_deref() {
                Some("Min") => SelectPolicy::Min,
                Some("Disabled") => SelectPolicy::Disabled,
                Some(_) => SelectPolicy::Max,
                None => default.select_policy,
            },
            policies: match &given.policies {
                Some(policies) => policies
                    .iter()
                    .map(|p| Policy {
                        kind: if p.type_ == "Percent" {
                            PolicyKind::Percent
                        } else {
                            PolicyKind::Pods
                        },
                        value: p.value,
                        period: Duration::from_secs(p.period_seconds.max(0) as u64),
                    })
                    .collect(),
                None => default.policies,
            },
        }
    };
    Behavior {
        scale_up: rules(&behavior.scale_up, defaults.scale_up),
        scale_down: rules(&behavior.scale_down, defaults.scale_down),
    }
}

/// `metav1.Duration` text (`15s`, `1m0.5s`, `500ms`).
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    Some(Duration::from_secs_f64(total))
}

/// The status being built, from the existing one.
#[derive(Debug, Default)]
struct Status {
    observed_generation: Option<i64>,
    current_replicas: i32,
    desired_replicas: i32,
    current_metrics: Vec<Value>,
    conditions: Vec<Value>,
    last_scale_time: Option<Value>,
}

impl Status {
    fn from_existing(old: &Value) -> Status {
        Status {
            observed_generation: old.get("observedGeneration").and_then(Value::as_i64),
            current_replicas: old
                .get("currentReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0) as i32,
            desired_replicas: old
                .get("desiredReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0) as i32,
            current_metrics: old
                .get("currentMetrics")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            conditions: old
                .get("conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            last_scale_time: old.get("lastScaleTime").filter(|v| !v.is_null()).cloned(),
        }
    }

    /// Sets a condition; its transition time moves only when its status
    /// does. Conditions keep Kubernetes' order.
    fn set_condition(&mut self, kind: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        let now = rudder_apimachinery::time::now_rfc3339();
        match self.conditions.iter_mut().find(|c| c["type"] == kind) {
            Some(c) => {
                if c["status"] != status {
                    c["lastTransitionTime"] = json!(now);
                }
                c["status"] = json!(status);
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            None => self.conditions.push(json!({
                "type": kind, "status": status, "lastTransitionTime": now,
                "reason": reason, "message": message,
            })),
        }
        let order = |c: &Value| match c["type"].as_str() {
            Some("AbleToScale") => 0,
            Some("ScalingActive") => 1,
            Some("ScalingLimited") => 2,
            _ => 3,
        };
        self.conditions.sort_by_key(order);
    }

    fn to_json(&self) -> Value {
        let mut status = json!({
            "currentReplicas": self.current_replicas,
            "desiredReplicas": self.desired_replicas,
        });
        if let Some(g) = self.observed_generation {
            status["observedGeneration"] = json!(g);
        }
        if !self.current_metrics.is_empty() {
            status["currentMetrics"] = json!(self.current_metrics);
        }
        if !self.conditions.is_empty() {
            status["conditions"] = json!(self.conditions);
        }
        if let Some(t) = &self.last_scale_time {
            status["lastScaleTime"] = t.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests;
