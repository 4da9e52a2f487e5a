//! Scheduling profiles: which plugins run at each extension point, with
//! which score weights, per `schedulerName`; read from a
//! `KubeSchedulerConfiguration` file (`--config`) or the defaults.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::framework::{
    BindPlugin, FilterPlugin, PermitPlugin, PostBindPlugin, PostFilterPlugin, PreBindPlugin,
    PreFilterPlugin, PreScorePlugin, ReservePlugin, ScorePlugin,
};
use crate::plugins::{
    balanced_allocation::{self, BalancedAllocation},
    default_binder::{self, DefaultBinder},
    default_preemption::{self, DefaultPreemption},
    image_locality::{self, ImageLocality},
    inter_pod_affinity::{self, InterPodAffinity},
    node_affinity::{self, NodeAffinity},
    node_name::{self, NodeName},
    node_ports::{self, NodePorts},
    node_resources_fit::{self, NodeResourcesFit, ScoringStrategy},
    node_unschedulable::{self, NodeUnschedulable},
    node_volume_limits::{self, NodeVolumeLimits},
    pod_topology_spread::{self, PodTopologySpread},
    taint_toleration::{self, TaintToleration},
    volume_binding::{self, VolumeBinding},
    volume_restrictions::{self, VolumeRestrictions},
    volume_zone::{self, VolumeZone},
};

pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// The plugins of one profile, by extension point.
pub struct Profile {
    pub scheduler_name: String,
    pub pre_filters: Vec<Arc<dyn PreFilterPlugin>>,
    pub filters: Vec<Arc<dyn FilterPlugin>>,
    pub post_filters: Vec<Arc<dyn PostFilterPlugin>>,
    pub pre_scores: Vec<Arc<dyn PreScorePlugin>>,
    /// Score plugins with their weights.
    pub scores: Vec<(Arc<dyn ScorePlugin>, i64)>,
    pub reserves: Vec<Arc<dyn ReservePlugin>>,
    pub permits: Vec<Arc<dyn PermitPlugin>>,
    pub pre_binds: Vec<Arc<dyn PreBindPlugin>>,
    /// Never empty: the first that does not skip a pod binds it.
    pub binds: Vec<Arc<dyn BindPlugin>>,
    pub post_binds: Vec<Arc<dyn PostBindPlugin>>,
    /// Share of nodes to find feasible before scoring (0: adaptive).
    pub percentage_of_nodes_to_score: u32,
}

/// The default plugins, in Kubernetes' order, with their default score
/// weights (0: not a score plugin).
const DEFAULTS: &[(&str, i64)] = &[
    (node_unschedulable::NAME, 0),
    (node_name::NAME, 0),
    (taint_toleration::NAME, 3),
    (node_affinity::NAME, 2),
    (node_ports::NAME, 0),
    (node_resources_fit::NAME, 1),
    (volume_restrictions::NAME, 0),
    (node_volume_limits::NAME, 0),
    (volume_binding::NAME, 0),
    (volume_zone::NAME, 0),
    (pod_topology_spread::NAME, 2),
    (inter_pod_affinity::NAME, 2),
    (default_preemption::NAME, 0),
    (balanced_allocation::NAME, 1),
    (image_locality::NAME, 1),
    (default_binder::NAME, 0),
];

/// `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1), the
/// parts Rudder reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerConfiguration {
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileConfig {
    pub scheduler_name: Option<String>,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub plugin_config: Vec<PluginConfig>,
    pub percentage_of_nodes_to_score: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginsConfig {
    #[serde(default)]
    pub multi_point: PluginSet,
    #[serde(default)]
    pub pre_filter: PluginSet,
    #[serde(default)]
    pub filter: PluginSet,
    #[serde(default)]
    pub post_filter: PluginSet,
    #[serde(default)]
    pub pre_score: PluginSet,
    #[serde(default)]
    pub score: PluginSet,
    #[serde(default)]
    pub reserve: PluginSet,
    #[serde(default)]
    pub permit: PluginSet,
    #[serde(default)]
    pub pre_bind: PluginSet,
    #[serde(default)]
    pub bind: PluginSet,
    #[serde(default)]
    pub post_bind: PluginSet,
}

#[derive(Debug, Default, Deserialize)]
pub struct PluginSet {
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PluginRef {
    pub name: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PluginConfig {
    pub name: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the scheduler configuration: {0}")]
    Parse(String),
    #[error("unknown plugin {0:?} in the scheduler configuration")]
    UnknownPlugin(String),
    #[error("two profiles are named {0:?}")]
    DuplicateProfile(String),
    #[error("at least one bind plugin is needed for profile with scheduler name {0:?}")]
    NoBindPlugin(String),
}

impl SchedulerConfiguration {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// The profiles to run (one default profile when none is given).
    pub fn profiles(&self) -> Result<HashMap<String, Arc<Profile>>, ConfigError> {
        let defaults = [ProfileConfig::default()];
        let configs: &[ProfileConfig] = if self.profiles.is_empty() {
            &defaults
        } else {
            &self.profiles
        };
        let mut profiles = HashMap::new();
        for config in configs {
            let profile = build(config, self.percentage_of_nodes_to_score)?;
            let name = profile.scheduler_name.clone();
            if profiles.insert(name.clone(), Arc::new(profile)).is_some() {
                return Err(ConfigError::DuplicateProfile(name));
            }
        }
        Ok(profiles)
    }
}

/// What one plugin provides at each extension point.
#[derive(Default)]
struct Registration {
    pre_filter: Option<Arc<dyn PreFilterPlugin>>,
    filter: Option<Arc<dyn FilterPlugin>>,
    post_filter: Option<Arc<dyn PostFilterPlugin>>,
    pre_score: Option<Arc<dyn PreScorePlugin>>,
    score: Option<Arc<dyn ScorePlugin>>,
    reserve: Option<Arc<dyn ReservePlugin>>,
    permit: Option<Arc<dyn PermitPlugin>>,
    pre_bind: Option<Arc<dyn PreBindPlugin>>,
    bind: Option<Arc<dyn BindPlugin>>,
    post_bind: Option<Arc<dyn PostBindPlugin>>,
}

/// The plugin registry: every plugin by name.
fn registration(name: &str, strategy: ScoringStrategy) -> Registration {
    match name {
        n if n == node_unschedulable::NAME => Registration {
            filter: Some(Arc::new(NodeUnschedulable)),
            ..Default::default()
        },
        n if n == node_name::NAME => Registration {
            filter: Some(Arc::new(NodeName)),
            ..Default::default()
        },
        n if n == node_ports::NAME => Registration {
            filter: Some(Arc::new(NodePorts)),
            ..Default::default()
        },
        n if n == taint_toleration::NAME => Registration {
            filter: Some(Arc::new(TaintToleration)),
            score: Some(Arc::new(TaintToleration)),
            ..Default::default()
        },
        n if n == node_affinity::NAME => Registration {
            filter: Some(Arc::new(NodeAffinity)),
            score: Some(Arc::new(NodeAffinity)),
            ..Default::default()
        },
        n if n == node_resources_fit::NAME => Registration {
            filter: Some(Arc::new(NodeResourcesFit { strategy })),
            score: Some(Arc::new(NodeResourcesFit { strategy })),
            ..Default::default()
        },
        n if n == volume_restrictions::NAME => Registration {
            pre_filter: Some(Arc::new(VolumeRestrictions)),
            filter: Some(Arc::new(VolumeRestrictions)),
            ..Default::default()
        },
        n if n == node_volume_limits::NAME => Registration {
            pre_filter: Some(Arc::new(NodeVolumeLimits)),
            filter: Some(Arc::new(NodeVolumeLimits)),
            ..Default::default()
        },
        // Reserve assumes the volumes in the cache; PreBind writes them
        // and waits for the PV controller to bind the claims.
        n if n == volume_binding::NAME => Registration {
            pre_filter: Some(Arc::new(VolumeBinding)),
            filter: Some(Arc::new(VolumeBinding)),
            reserve: Some(Arc::new(VolumeBinding)),
            pre_bind: Some(Arc::new(VolumeBinding)),
            ..Default::default()
        },
        n if n == volume_zone::NAME => Registration {
            pre_filter: Some(Arc::new(VolumeZone)),
            filter: Some(Arc::new(VolumeZone)),
            ..Default::default()
        },
        n if n == pod_topology_spread::NAME => Registration {
            pre_filter: Some(Arc::new(PodTopologySpread)),
            filter: Some(Arc::new(PodTopologySpread)),
            pre_score: Some(Arc::new(PodTopologySpread)),
            score: Some(Arc::new(PodTopologySpread)),
            ..Default::default()
        },
        n if n == inter_pod_affinity::NAME => Registration {
            pre_filter: Some(Arc::new(InterPodAffinity)),
            filter: Some(Arc::new(InterPodAffinity)),
            pre_score: Some(Arc::new(InterPodAffinity)),
            score: Some(Arc::new(InterPodAffinity)),
            ..Default::default()
        },
        n if n == default_preemption::NAME => Registration {
            post_filter: Some(Arc::new(DefaultPreemption)),
            ..Default::default()
        },
        n if n == balanced_allocation::NAME => Registration {
            score: Some(Arc::new(BalancedAllocation)),
            ..Default::default()
        },
        n if n == image_locality::NAME => Registration {
            score: Some(Arc::new(ImageLocality)),
            ..Default::default()
        },
        n if n == default_binder::NAME => Registration {
            bind: Some(Arc::new(DefaultBinder)),
            ..Default::default()
        },
        _ => Registration::default(),
    }
}

fn disabled(set: &PluginSet, name: &str) -> bool {
    set.disabled.iter().any(|p| p.name == name || p.name == "*")
}

fn build(config: &ProfileConfig, global_percentage: Option<u32>) -> Result<Profile, ConfigError> {
    let plugins = &config.plugins;
    for set in [
        &plugins.multi_point,
        &plugins.pre_filter,
        &plugins.filter,
        &plugins.post_filter,
        &plugins.pre_score,
        &plugins.score,
        &plugins.reserve,
        &plugins.permit,
        &plugins.pre_bind,
        &plugins.bind,
        &plugins.post_bind,
    ] {
        for p in set.enabled.iter().chain(set.disabled.iter()) {
            if p.name != "*" && !DEFAULTS.iter().any(|(n, _)| *n == p.name) {
                return Err(ConfigError::UnknownPlugin(p.name.clone()));
            }
        }
    }
    let strategy = config
        .plugin_config
        .iter()
        .find(|c| c.name == node_resources_fit::NAME)
        .and_then(|c| c.args.pointer("/scoringStrategy/type"))
        .and_then(|t| t.as_str())
        .map(|t| {
            if t == "MostAllocated" {
                ScoringStrategy::MostAllocated
            } else {
                ScoringStrategy::LeastAllocated
            }
        })
        .unwrap_or_default();
    let mut profile = Profile {
        scheduler_name: config
            .scheduler_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SCHEDULER_NAME.into()),
        pre_filters: Vec::new(),
        filters: Vec::new(),
        post_filters: Vec::new(),
        pre_scores: Vec::new(),
        scores: Vec::new(),
        reserves: Vec::new(),
        permits: Vec::new(),
        pre_binds: Vec::new(),
        binds: Vec::new(),
        post_binds: Vec::new(),
        percentage_of_nodes_to_score: config
            .percentage_of_nodes_to_score
            .or(global_percentage)
            .unwrap_or(0),
    };
    // Enabling a plugin at a point overrides disabling it (or `*`) for
    // all points, as in Kubernetes.
    let on = |point: &PluginSet, name: &str| {
        point.enabled.iter().any(|p| p.name == name)
            || (!disabled(&plugins.multi_point, name) && !disabled(point, name))
    };
    let weight = |name: &str, default: i64| {
        plugins
            .score
            .enabled
            .iter()
            .chain(plugins.multi_point.enabled.iter())
            .find(|p| p.name == name)
            .and_then(|p| p.weight)
            .unwrap_or(default)
    };
    for (name, default_weight) in DEFAULTS {
        let r = registration(name, strategy);
        if let (Some(pre), Some(_)) = (&r.pre_filter, &r.filter) {
            if on(&plugins.pre_filter, name) && on(&plugins.filter, name) {
                profile.pre_filters.push(pre.clone());
            }
        }
        if let Some(filter) = r.filter {
            if on(&plugins.filter, name) {
                profile.filters.push(filter);
            }
        }
        if let Some(post) = r.post_filter {
            if on(&plugins.post_filter, name) {
                profile.post_filters.push(post);
            }
        }
        if let Some(score) = r.score {
            if on(&plugins.score, name) {
                if let Some(pre) = r.pre_score {
                    profile.pre_scores.push(pre);
                }
                profile.scores.push((score, weight(name, *default_weight)));
            }
        }
        if let Some(reserve) = r.reserve.filter(|_| on(&plugins.reserve, name)) {
            profile.reserves.push(reserve);
        }
        if let Some(permit) = r.permit.filter(|_| on(&plugins.permit, name)) {
            profile.permits.push(permit);
        }
        if let Some(pre_bind) = r.pre_bind.filter(|_| on(&plugins.pre_bind, name)) {
            profile.pre_binds.push(pre_bind);
        }
        if let Some(bind) = r.bind.filter(|_| on(&plugins.bind, name)) {
            profile.binds.push(bind);
        }
        if let Some(post_bind) = r.post_bind.filter(|_| on(&plugins.post_bind, name)) {
            profile.post_binds.push(post_bind);
        }
    }
    if profile.binds.is_empty() {
        return Err(ConfigError::NoBindPlugin(profile.scheduler_name));
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_has_every_plugin() {
        let profiles = SchedulerConfiguration::default().profiles().unwrap();
        let p = &profiles[DEFAULT_SCHEDULER_NAME];
        assert_eq!(p.filters.len(), 12);
        assert_eq!(p.pre_filters.len(), 6);
        assert_eq!(p.scores.len(), 7);
        assert_eq!(p.post_filters.len(), 1);
        let names = |plugins: Vec<&'static str>| plugins;
        assert_eq!(
            names(p.reserves.iter().map(|r| r.name()).collect()),
            vec![volume_binding::NAME]
        );
        assert_eq!(
            names(p.pre_binds.iter().map(|r| r.name()).collect()),
            vec![volume_binding::NAME]
        );
        assert_eq!(
            names(p.binds.iter().map(|r| r.name()).collect()),
            vec![default_binder::NAME]
        );
        assert!(p.permits.is_empty() && p.post_binds.is_empty());
        let taint = p
            .scores
            .iter()
            .find(|(s, _)| s.name() == taint_toleration::NAME)
            .unwrap();
        assert_eq!(taint.1, 3);
    }

    #[test]
    fn profiles_disable_plugins_and_change_weights() {
        let config = SchedulerConfiguration::from_yaml(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  plugins:
    score:
      disabled:
      - name: ImageLocality
      enabled:
      - name: NodeResourcesFit
        weight: 5
    postFilter:
      disabled:
      - name: DefaultPreemption
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
"#,
        )
        .unwrap();
        let profiles = config.profiles().unwrap();
        let packer = &profiles["packer"];
        assert!(packer
            .scores
            .iter()
            .all(|(s, _)| s.name() != image_locality::NAME));
        assert_eq!(
            packer
                .scores
                .iter()
                .find(|(s, _)| s.name() == node_resources_fit::NAME)
                .unwrap()
                .1,
            5
        );
        assert!(packer.post_filters.is_empty());
        assert_eq!(profiles.len(), 2);
        assert!(matches!(
            SchedulerConfiguration::from_yaml(
                "profiles: [{plugins: {score: {enabled: [{name: Nope}]}}}]"
            )
            .unwrap()
            .profiles(),
            Err(ConfigError::UnknownPlugin(_))
        ));
    }

    #[test]
    fn the_binding_points_are_configured_like_the_others() {
        let config = SchedulerConfiguration::from_yaml(
            r#"
profiles:
- schedulerName: no-volume-writes
  plugins:
    reserve:
      disabled:
      - name: VolumeBinding
    preBind:
      disabled:
      - name: "*"
- schedulerName: everything-off
  plugins:
    multiPoint:
      disabled:
      - name: "*"
    bind:
      enabled:
      - name: DefaultBinder
"#,
        )
        .unwrap();
        let profiles = config.profiles().unwrap();
        let p = &profiles["no-volume-writes"];
        assert!(p.reserves.is_empty() && p.pre_binds.is_empty());
        assert_eq!(p.binds.len(), 1);
        assert!(
            p.filters.iter().any(|f| f.name() == volume_binding::NAME),
            "only the named points are off"
        );
        let bare = &profiles["everything-off"];
        assert!(bare.filters.is_empty() && bare.scores.is_empty() && bare.reserves.is_empty());
        assert_eq!(bare.binds.len(), 1, "enabled again at its own point");
        // A profile that cannot bind is refused.
        let unbindable = SchedulerConfiguration::from_yaml(
            "profiles: [{schedulerName: x, plugins: {bind: {disabled: [{name: DefaultBinder}]}}}]",
        )
        .unwrap();
        match unbindable.profiles() {
            Err(err) => assert_eq!(
                err.to_string(),
                "at least one bind plugin is needed for profile with scheduler name \"x\""
            ),
            Ok(_) => panic!("a profile without a binder was accepted"),
        }
    }
}
