//! The scheduler's view of the cluster: nodes with the pods on them (bound
//! or assumed while their binding is in flight) and what they request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rudder_apimachinery::quantity::Quantity;

/// Amounts of resources: CPU in millicores, the rest in base units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`nvidia.com/gpu`, hugepages, …).
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (name, v) in &other.scalar {
            *self.scalar.entry(name.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (name, v) in &other.scalar {
            *self.scalar.entry(name.clone()).or_default() -= v;
        }
    }

    /// Each resource the larger of the two.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let e = self.scalar.entry(name.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// Reads a `ResourceList` (requests, limits, capacity, allocatable).
    pub fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            let Some(q) = Quantity::parse(&q.0) else {
                continue;
            };
            match name.as_str() {
                "cpu" => r.milli_cpu = q.milli_value(),
                "memory" => r.memory = q.value(),
                "ephemeral-storage" => r.ephemeral_storage = q.value(),
                "pods" => r.pods = q.value(),
                other => {
                    r.scalar.insert(other.to_owned(), q.value());
                }
            }
        }
        r
    }
}

/// What a pod asks of a node: the sum of its containers' requests, or the
/// largest init container's if that is more (init containers run one at a
/// time, before the others), plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&Resources::from_list(
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        ));
    }
    for c in spec.init_containers.iter().flatten() {
        let init = Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
        // Sidecars (restartPolicy Always) keep running: they add up.
        if c.restart_policy.as_deref() == Some("Always") {
            sum.add(&init);
        } else {
            sum.max_with(&init);
        }
    }
    if let Some(overhead) = &spec.overhead {
        sum.add(&Resources::from_list(Some(overhead)));
    }
    sum.pods = 1;
    sum
}

/// A host port a pod uses: (host IP, protocol, port).
pub type HostPort = (String, String, i32);

pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let mut ports = Vec::new();
    for c in pod.spec.iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    }) {
        for p in c.ports.iter().flatten() {
            if let Some(host_port) = p.host_port.filter(|p| *p > 0) {
                let ip = p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into());
                ports.push((
                    ip,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    host_port,
                ));
            }
        }
    }
    ports
}

/// A pod with what the plugins need computed once.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    pub namespace: String,
    pub priority: i32,
    pub requests: Resources,
    pub host_ports: Vec<HostPort>,
    pub labels: BTreeMap<String, String>,
    /// The pod has pod affinity or anti-affinity terms of any kind (so
    /// InterPodAffinity must look at it when others are scheduled).
    pub has_affinity: bool,
    /// The pod has required anti-affinity terms.
    pub has_required_anti_affinity: bool,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let has_required_anti_affinity = anti
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty());
        let has_affinity = has_required_anti_affinity
            || anti
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some_and(|t| !t.is_empty())
            || pod_affinity.is_some_and(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
                    .is_some_and(|t| !t.is_empty())
                    || a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                        .is_some_and(|t| !t.is_empty())
            });
        PodInfo {
            has_affinity,
            has_required_anti_affinity,
            key: format!("{namespace}/{name}"),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace,
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            requests: pod_requests(&pod),
            host_ports: host_ports(&pod),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            pod,
        }
    }

    pub fn spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        static EMPTY: std::sync::OnceLock<k8s_openapi::api::core::v1::PodSpec> =
            std::sync::OnceLock::new();
        self.pod
            .spec
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }
}

/// A node and the pods on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: HashSet<HostPort>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Image names present on the node, from its status.
    pub images: HashSet<String>,
    /// The pods here with affinity terms (few, usually), so affinity
    /// checks need not look at every pod.
    pub pods_with_affinity: Vec<Arc<PodInfo>>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let mut info = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: BTreeMap::new(),
            allocatable: Resources::default(),
            requested: Resources::default(),
            pods: Vec::new(),
            used_ports: HashSet::new(),
            taints: Vec::new(),
            unschedulable: false,
            images: HashSet::new(),
            pods_with_affinity: Vec::new(),
            node: node.clone(),
        };
        info.set_node(node);
        info
    }

    /// Takes a new version of the node object, keeping its pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let status = node.status.as_ref();
        self.allocatable = Resources::from_list(
            status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        );
        self.taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        self.unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        self.images = status
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| i.names.iter().flatten().cloned())
            .collect();
        self.node = node;
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        for port in &pod.host_ports {
            self.used_ports.insert(port.clone());
        }
        if pod.has_affinity {
            self.pods_with_affinity.push(pod.clone());
        }
        self.pods.push(pod);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let index = self.pods.iter().position(|p| p.uid == uid)?;
        let pod = self.pods.swap_remove(index);
        self.requested.sub(&pod.requests);
        for port in &pod.host_ports {
            self.used_ports.remove(port);
        }
        if pod.has_affinity {
            self.pods_with_affinity.retain(|p| p.uid != uid);
        }
        Some(pod)
    }
}

/// Where each pod the scheduler knows about is.
#[derive(Default)]
pub struct ClusterCache {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Node names in a stable order, for the round-robin start of filtering.
    pub node_order: Vec<String>,
    /// uid → (node, assumed: binding still in flight).
    pods: HashMap<String, (String, bool)>,
    /// Pods bound to nodes the cache does not know yet.
    orphans: HashMap<String, Arc<PodInfo>>,
    /// How many pods with required anti-affinity are placed: when none,
    /// InterPodAffinity has nothing to check for pods without terms.
    pub required_anti_affinity_pods: usize,
    /// Claims, volumes, storage classes and CSINodes, for the volume
    /// plugins.
    pub volumes: crate::volume_cache::VolumeCache,
    /// Pods that preempted others and wait for room on a node: node →
    /// pods. Others of no higher priority must leave that room to them.
    nominated: HashMap<String, Vec<Arc<PodInfo>>>,
    nominated_node: HashMap<String, String>,
    /// PodDisruptionBudgets by `namespace/name`: preemption avoids
    /// victims whose eviction would exceed their budget.
    pub pdbs: BTreeMap<String, Arc<PodDisruptionBudget>>,
}

impl ClusterCache {
    pub fn upsert_pdb(&mut self, mut pdb: PodDisruptionBudget) {
        pdb.metadata.managed_fields = None;
        let key = rudder_runtime::informer::key_of(&pdb);
        self.pdbs.insert(key, Arc::new(pdb));
    }

    pub fn remove_pdb(&mut self, key: &str) {
        self.pdbs.remove(key);
    }

    /// Records that `pod` waits for room on `node` (after preempting).
    pub fn nominate(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.clear_nomination(&pod.uid);
        self.nominated_node.insert(pod.uid.clone(), node.to_owned());
        self.nominated.entry(node.to_owned()).or_default().push(pod);
    }

    pub fn clear_nomination(&mut self, uid: &str) {
        if let Some(node) = self.nominated_node.remove(uid) {
            if let Some(list) = self.nominated.get_mut(&node) {
                list.retain(|p| p.uid != uid);
                if list.is_empty() {
                    self.nominated.remove(&node);
                }
            }
        }
    }

    /// The node a pod was nominated for, if any.
    pub fn nomination_of(&self, uid: &str) -> Option<&str> {
        self.nominated_node.get(uid).map(String::as_str)
    }

    /// `node` as `pod` must see it: with the pods nominated there that
    /// `pod` may not push aside (same or higher priority) counted in.
    pub fn node_for<'a>(
        &'a self,
        node: &'a NodeInfo,
        pod: &PodInfo,
    ) -> std::borrow::Cow<'a, NodeInfo> {
        let waiting: Vec<&Arc<PodInfo>> = self
            .nominated
            .get(&node.name)
            .map(|list| {
                list.iter()
                    .filter(|p| p.uid != pod.uid && p.priority >= pod.priority)
                    .collect()
            })
            .unwrap_or_default();
        if waiting.is_empty() {
            return std::borrow::Cow::Borrowed(node);
        }
        let mut with = node.clone();
        for p in waiting {
            with.add_pod(p.clone());
        }
        std::borrow::Cow::Owned(with)
    }

    /// Whether lower-priority pods on `node` are already terminating, so a
    /// preemptor nominated there should wait instead of preempting again.
    pub fn victims_terminating(&self, node: &str, priority: i32) -> bool {
        self.nodes.get(node).is_some_and(|n| {
            n.pods
                .iter()
                .any(|p| p.priority < priority && p.pod.metadata.deletion_timestamp.is_some())
        })
    }
    pub fn upsert_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let node = Arc::new(node);
        match self.nodes.get_mut(&name) {
            Some(info) => info.set_node(node),
            None => {
                let mut info = NodeInfo::new(node);
                // Pods that arrived before their node.
                let waiting: Vec<String> = self
                    .orphans
                    .iter()
                    .filter(|(uid, _)| self.pods.get(*uid).is_some_and(|(n, _)| n == &name))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in waiting {
                    if let Some(pod) = self.orphans.remove(&uid) {
                        info.add_pod(pod);
                    }
                }
                self.nodes.insert(name.clone(), info);
                self.node_order.push(name);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name) {
            for pod in info.pods {
                self.orphans.insert(pod.uid.clone(), pod);
            }
        }
        self.node_order.retain(|n| n != name);
    }

    /// Records a pod the API says is on `node` (confirming an assumed one).
    pub fn add_bound_pod(&mut self, pod: Arc<PodInfo>, node: &str) {
        if let Some((current, _)) = self.pods.get(&pod.uid).cloned() {
            self.detach(&pod.uid, &current);
        }
        self.attach(pod, node, false);
    }

    /// Places a pod on a node before its binding is confirmed, so the next
    /// decisions already see the room it takes.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.attach(pod, node, true);
    }

    /// Undoes [`assume`](Self::assume) after a failed binding.
    pub fn forget(&mut self, uid: &str) {
        if let Some((node, true)) = self.pods.get(uid).cloned() {
            self.detach(uid, &node);
            self.pods.remove(uid);
        }
    }

    pub fn remove_pod(&mut self, uid: &str) {
        if let Some((node, _)) = self.pods.remove(uid) {
            self.detach(uid, &node);
        }
        self.orphans.remove(uid);
    }

    pub fn is_assumed_or_bound(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    fn attach(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        if pod.has_required_anti_affinity {
            self.required_anti_affinity_pods += 1;
        }
        self.pods
            .insert(pod.uid.clone(), (node.to_owned(), assumed));
        match self.nodes.get_mut(node) {
            Some(info) => info.add_pod(pod),
            None => {
                self.orphans.insert(pod.uid.clone(), pod);
            }
        }
    }

    fn detach(&mut self, uid: &str, node: &str) {
        let removed = match self.nodes.get_mut(node) {
            Some(info) => info.remove_pod(uid),
            None => None,
        };
        let orphan = self.orphans.remove(uid);
        if removed
            .or(orphan)
            .is_some_and(|p| p.has_required_anti_affinity)
        {
            self.required_anti_affinity_pods = self.required_anti_affinity_pods.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn init_containers_count_as_the_max_not_the_sum() {
        let p = pod(json!({
            "initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "3500m"}}}],
            "containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"name": "b", "image": "x", "resources": {"requests": {"cpu": "500m"}}}
            ]
        }));
        let r = pod_requests(&p);
        assert_eq!((r.milli_cpu, r.memory, r.pods), (3500, 1 << 30, 1));
        let small_init = pod(json!({
            "initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "100m"}}}],
            "containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": "1"}}}],
            "overhead": {"cpu": "50m"}
        }));
        let r = pod_requests(&small_init);
        assert_eq!((r.milli_cpu, r.scalar["nvidia.com/gpu"]), (550, 1));
    }

    #[test]
    fn assumed_pods_take_room_until_forgotten() {
        let mut cache = ClusterCache::default();
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})).unwrap();
        cache.upsert_node(node);
        let p = Arc::new(PodInfo::new(Arc::new(pod(
            json!({"containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}),
        ))));
        cache.assume(p.clone(), "n1");
        assert_eq!(cache.nodes["n1"].requested.milli_cpu, 1000);
        cache.forget("u1");
        assert_eq!(cache.nodes["n1"].requested.milli_cpu, 0);
        cache.assume(p.clone(), "n1");
        cache.add_bound_pod(p, "n1");
        assert_eq!(
            cache.nodes["n1"].requested.milli_cpu, 1000,
            "confirming does not count twice"
        );
        cache.forget("u1");
        assert_eq!(
            cache.nodes["n1"].requested.milli_cpu, 1000,
            "a bound pod is not forgotten"
        );
        cache.remove_pod("u1");
        assert_eq!(cache.nodes["n1"].requested.pods, 0);
    }
}
