//! DefaultBinder: binds the pod through the `pods/binding` subresource.

use futures::future::BoxFuture;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::cache::PodInfo;
use crate::framework::{BindPlugin, CycleState, Handle, Plugin, Status};

pub const NAME: &str = "DefaultBinder";

pub struct DefaultBinder;

impl Plugin for DefaultBinder {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl BindPlugin for DefaultBinder {
    fn bind<'a>(
        &'a self,
        handle: &'a dyn Handle,
        _state: &'a CycleState,
        pod: &'a PodInfo,
        node: &'a str,
    ) -> BoxFuture<'a, Status> {
        Box::pin(async move {
            let api: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(handle.client().clone(), &pod.namespace);
            let name = pod.pod.metadata.name.clone().unwrap_or_default();
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": pod.namespace, "uid": pod.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            match api
                .create_subresource::<serde_json::Value, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            {
                Ok(_) => Status::success(),
                Err(err) => Status::error(err.to_string()),
            }
        })
    }
}
