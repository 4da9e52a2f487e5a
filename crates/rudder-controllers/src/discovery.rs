//! Which resource types the server has, for the controllers that act on
//! every kind (the garbage collector, the namespace controller): found
//! through discovery, so custom resources are covered too.

use std::collections::HashMap;

use kube::core::ApiResource;
use kube::discovery::{verbs, Discovery, Scope};
use kube::Client;

#[derive(Clone, Debug)]
pub struct Resource {
    pub api: ApiResource,
    pub namespaced: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ResourceMap {
    /// Every resource that can be listed, watched and deleted (preferred
    /// version of each group; events left out, as Kubernetes' collector
    /// does).
    pub deletable: Vec<Resource>,
    /// Every namespaced resource that can be listed and deleted, events
    /// included: what a namespace's deletion empties.
    pub namespaced: Vec<Resource>,
    /// (group, kind) → resource, for resolving owner references of any
    /// version.
    by_group_kind: HashMap<(String, String), Resource>,
}

impl ResourceMap {
    pub async fn discover(client: &Client) -> Result<ResourceMap, kube::Error> {
        let discovery = Discovery::new(client.clone()).run().await?;
        let mut map = ResourceMap::default();
        for group in discovery.groups() {
            for (api, caps) in group.recommended_resources() {
                let resource = Resource {
                    namespaced: caps.scope == Scope::Namespaced,
                    api: api.clone(),
                };
                map.by_group_kind
                    .insert((api.group.clone(), api.kind.clone()), resource.clone());
                let listable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                    .iter()
                    .all(|v| caps.supports_operation(v));
                let deletable = [verbs::LIST, verbs::DELETE]
                    .iter()
                    .all(|v| caps.supports_operation(v));
                if deletable && resource.namespaced {
                    map.namespaced.push(resource.clone());
                }
                if listable && api.plural != "events" {
                    map.deletable.push(resource);
                }
            }
        }
        Ok(map)
    }

    /// The resource an owner reference (`apiVersion`, `kind`) names.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&Resource> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        self.by_group_kind.get(&(group.to_owned(), kind.to_owned()))
    }
}
