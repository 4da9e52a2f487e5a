//! Node Leases (`coordination.k8s.io/v1`, namespace `kube-node-lease`):
//! the cheap heartbeat the node lifecycle controller watches.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::node::FIELD_MANAGER;
use crate::retry::api_code;

pub(crate) const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// As the kubelet's default: four renewals may be missed.
pub(crate) const LEASE_DURATION_SECONDS: i32 = 40;

/// A node's Lease, owned by its Node so that it goes when the node does.
pub(crate) fn lease_object(node_name: &str, node_uid: &str, now: Timestamp) -> Lease {
    let owner = (!node_uid.is_empty()).then(|| {
        vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Node".to_owned(),
            name: node_name.to_owned(),
            uid: node_uid.to_owned(),
            ..OwnerReference::default()
        }]
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(node_name.to_owned()),
            namespace: Some(NODE_LEASE_NAMESPACE.to_owned()),
            owner_references: owner,
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.to_owned()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// Renews the node's Lease, creating it if it does not exist. One small
/// merge patch in the usual case.
pub(crate) async fn renew(client: &Client, node_name: &str, node_uid: &str) -> kube::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let now = Timestamp::now();
    let renewal = json!({"spec": {
        "holderIdentity": node_name,
        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
        "renewTime": MicroTime(now),
    }});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match leases
        .patch(node_name, &params, &Patch::Merge(&renewal))
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if api_code(&err) == Some(404) => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            match leases
                .create(&params, &lease_object(node_name, node_uid, now))
                .await
            {
                // Someone else created it meanwhile; the next round renews it.
                Err(err) if api_code(&err) == Some(409) => Ok(()),
                other => other.map(drop),
            }
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_held_by_its_node_and_owned_by_it() {
        let now: Timestamp = "2025-01-02T03:04:05.123456789Z".parse().unwrap();
        let lease = serde_json::to_value(lease_object("sim-1", "uid-1", now)).unwrap();
        assert_eq!(
            lease,
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": "sim-1",
                    "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "sim-1", "uid": "uid-1"}],
                },
                "spec": {
                    "holderIdentity": "sim-1",
                    "leaseDurationSeconds": 40,
                    "renewTime": "2025-01-02T03:04:05.123456Z",
                },
            })
        );
        let unowned = lease_object("sim-1", "", now);
        assert!(unowned.metadata.owner_references.is_none());
    }
}
