//! Records core/v1 Events about objects, as `kubectl describe` and
//! `kubectl get events` show them. Recording never blocks the caller and
//! never fails it: events are best-effort, as in Kubernetes.

use k8s_openapi::api::core::v1::Event;
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    component: String,
}

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventRecorder {
    pub fn new(client: Client, component: &str) -> Self {
        EventRecorder {
            client,
            component: component.to_owned(),
        }
    }

    /// Records an event about `obj` in the background.
    pub fn record<K>(&self, obj: &K, kind: EventType, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let namespace = obj.namespace().unwrap_or_else(|| "default".into());
        let name = obj.name_any();
        let now = rudder_apimachinery::time::now_rfc3339();
        let event = json!({
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {
                "kind": K::kind(&()), "apiVersion": K::api_version(&()),
                "namespace": obj.namespace(), "name": name, "uid": obj.uid(),
                "resourceVersion": obj.resource_version(),
            },
            "reason": reason,
            "message": message,
            "type": match kind { EventType::Normal => "Normal", EventType::Warning => "Warning" },
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let Ok(event) = serde_json::from_value::<Event>(event) else {
            return;
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        tokio::spawn(async move {
            if let Err(err) = api.create(&PostParams::default(), &event).await {
                tracing::debug!(error = %err, "cannot record an event");
            }
        });
    }
}
