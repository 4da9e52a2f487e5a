//! CertificateSigningRequests: the `csrapproving` controller approves what
//! nodes may have without a human (their client certificate, through the
//! join token or renewing their own; their serving certificate), after a
//! SubjectAccessReview as kube-controller-manager does; the `csrsigning`
//! controller signs approved requests for the built-in signers with the
//! cluster's CAs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::api::{Api, PostParams};
use rudder_auth::pki::{ClusterPki, CsrInfo, Signer};
use rudder_runtime::{Change, WorkQueue};

use crate::Context;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// Certificates live a year unless the request asks for less.
const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The CAs the signer uses (kube-controller-manager's
/// `--cluster-signing-*-file` flags).
#[derive(Clone)]
pub struct ClusterSigning(pub Arc<ClusterPki>);

impl std::fmt::Debug for ClusterSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSigning")
    }
}

/// Which auto-approval a request qualifies for, and the permission that
/// its requester must hold for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// A new node's client certificate, asked for with the join token.
    NodeClient,
    /// A node renewing its own client certificate.
    SelfNodeClient,
    /// A node's serving certificate for its own name and addresses.
    SelfNodeServer,
}

impl Approval {
    /// The `certificatesigningrequests/<subresource>` the requester needs
    /// `create` on.
    fn subresource(self) -> &'static str {
        match self {
            Approval::NodeClient => "nodeclient",
            Approval::SelfNodeClient | Approval::SelfNodeServer => "selfnodeclient",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Approval::NodeClient | Approval::SelfNodeClient => {
                "Auto approving kubelet client certificate after SubjectAccessReview."
            }
            Approval::SelfNodeServer => {
                "Auto approving kubelet serving certificate after SubjectAccessReview."
            }
        }
    }
}

/// Whether a request (its signer, requester, usages and parsed subject)
/// is one nodes get without a human, and which.
pub fn recognize(
    signer: &str,
    requester: &str,
    groups: &[String],
    usages: &[String],
    info: &CsrInfo,
) -> Option<Approval> {
    let usages: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    let node_subject = info.common_name.starts_with(NODE_PREFIX)
        && info.common_name.len() > NODE_PREFIX.len()
        && info.organizations == [NODES_GROUP];
    if !node_subject || !info.email_addresses.is_empty() || !info.uris.is_empty() {
        return None;
    }
    match signer {
        KUBELET_CLIENT_SIGNER => {
            let allowed: BTreeSet<&str> =
                ["digital signature", "key encipherment", "client auth"].into();
            if !usages.contains("client auth") || !usages.is_subset(&allowed) {
                return None;
            }
            if !info.dns_names.is_empty() || !info.ip_addresses.is_empty() {
                return None;
            }
            if requester == info.common_name {
                Some(Approval::SelfNodeClient)
            } else if groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP) {
                Some(Approval::NodeClient)
            } else {
                None
            }
        }
        KUBELET_SERVING_SIGNER => {
            let allowed: BTreeSet<&str> =
                ["digital signature", "key encipherment", "server auth"].into();
            if !usages.contains("server auth") || !usages.is_subset(&allowed) {
                return None;
            }
            if info.dns_names.is_empty() && info.ip_addresses.is_empty() {
                return None;
            }
            (requester == info.common_name && groups.iter().any(|g| g == NODES_GROUP))
                .then_some(Approval::SelfNodeServer)
        }
        _ => None,
    }
}

fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn request_pem(csr: &CertificateSigningRequest) -> String {
    String::from_utf8_lossy(&csr.spec.request.0).into_owned()
}

fn queue_every_change(ctx: &Context) -> WorkQueue<String> {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.informers
        .get::<CertificateSigningRequest>()
        .on_change(move |change| {
            if !matches!(change, Change::Deleted(_)) {
                q.add(change.object().metadata.name.clone().unwrap_or_default());
            }
        });
    queue
}

pub fn start_approving(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    let ctx = ctx.clone();
    let queue = queue_every_change(&ctx);
    async move {
        let requests = ctx.informers.get::<CertificateSigningRequest>();
        requests.wait_synced().await;
        let client = ctx.client.clone();
        queue
            .run_workers("csrapproving", 1, move |name: String| {
                let requests = requests.clone();
                let client = client.clone();
                async move {
                    let Some(csr) = requests.get(&name) else {
                        return Ok::<_, kube::Error>(None);
                    };
                    approve_one(&client, &csr).await.map(|_| None)
                }
            })
            .await;
        Ok(())
    }
    .boxed()
}

async fn approve_one(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
) -> Result<(), kube::Error> {
    if has_condition(csr, "Approved") || has_condition(csr, "Denied") {
        return Ok(());
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let info = match rudder_auth::pki::parse_csr(&request_pem(csr)) {
        Ok(info) => info,
        Err(err) => {
            tracing::debug!(csr = %name, error = %err, "not a CSR this controller approves");
            return Ok(());
        }
    };
    let spec = &csr.spec;
    let Some(approval) = recognize(
        &spec.signer_name,
        spec.username.as_deref().unwrap_or(""),
        spec.groups.as_deref().unwrap_or(&[]),
        spec.usages.as_deref().unwrap_or(&[]),
        &info,
    ) else {
        return Ok(());
    };
    // The requester must hold the matching permission (system:nodes and
    // system:bootstrappers do, through the default roles).
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username.clone(),
            groups: spec.groups.clone(),
            uid: spec.uid.clone(),
            extra: spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(approval.subresource().into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = reviews.create(&PostParams::default(), &review).await?;
    if !answer.status.is_some_and(|s| s.allowed) {
        tracing::info!(csr = %name, "the requester may not have this certificate approved automatically");
        return Ok(());
    }
    let mut approved = csr.clone();
    let status = approved.status.get_or_insert_with(Default::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("AutoApproved".into()),
            message: Some(approval.message().into()),
            last_update_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            )),
            ..Default::default()
        });
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.replace_subresource("approval", &name, &PostParams::default(), &approved)
        .await?;
    Ok(())
}

pub fn start_signing(ctx: &Context) -> BoxFuture<'static, anyhow::Result<()>> {
    let ctx = ctx.clone();
    let Some(signing) = ctx.options.cluster_signing.clone() else {
        return async {
            tracing::info!(
                "no cluster signing CA configured: CertificateSigningRequests are not signed"
            );
            futures::future::pending::<()>().await;
            Ok(())
        }
        .boxed();
    };
    let queue = queue_every_change(&ctx);
    async move {
        let requests = ctx.informers.get::<CertificateSigningRequest>();
        requests.wait_synced().await;
        let client = ctx.client.clone();
        queue
            .run_workers("csrsigning", 1, move |name: String| {
                let requests = requests.clone();
                let client = client.clone();
                let signing = signing.clone();
                async move {
                    let Some(csr) = requests.get(&name) else {
                        return Ok::<_, kube::Error>(None);
                    };
                    sign_one(&client, &signing.0, &csr).await.map(|_| None)
                }
            })
            .await;
        Ok(())
    }
    .boxed()
}

async fn sign_one(
    client: &kube::Client,
    pki: &ClusterPki,
    csr: &CertificateSigningRequest,
) -> Result<(), kube::Error> {
    let signed = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if signed
        || !has_condition(csr, "Approved")
        || has_condition(csr, "Denied")
        || has_condition(csr, "Failed")
    {
        return Ok(());
    }
    let signer = match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER => Signer::KubeApiserverClientKubelet,
        CLIENT_SIGNER => Signer::KubeApiserverClient,
        KUBELET_SERVING_SIGNER => Signer::KubeletServing,
        _ => return Ok(()),
    };
    let validity = csr
        .spec
        .expiration_seconds
        .filter(|s| *s >= 600)
        .map(|s| Duration::from_secs(s as u64).min(DEFAULT_VALIDITY))
        .unwrap_or(DEFAULT_VALIDITY);
    let name = csr.metadata.name.clone().unwrap_or_default();
    let mut updated = csr.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    match pki.sign_csr(&request_pem(csr), signer, validity) {
        Ok(pem) => status.certificate = Some(k8s_openapi::ByteString(pem.into_bytes())),
        Err(err) => {
            // A request that cannot be signed says why, and stays failed.
            status.conditions.get_or_insert_with(Vec::new).push(
                CertificateSigningRequestCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("SignerValidationFailure".into()),
                    message: Some(err.to_string()),
                    ..Default::default()
                },
            );
        }
    }
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.replace_status(&name, &PostParams::default(), &updated)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cn: &str, orgs: &[&str], ips: usize) -> CsrInfo {
        CsrInfo {
            common_name: cn.into(),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
            dns_names: vec![],
            ip_addresses: (0..ips)
                .map(|i| std::net::IpAddr::from([10, 0, 0, i as u8 + 1]))
                .collect(),
            ..Default::default()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_node_certificates_are_approved_without_a_human() {
        let client_usages = strings(&["digital signature", "client auth"]);
        let bootstrap = strings(&["system:bootstrappers", "system:authenticated"]);
        let nodes = strings(&["system:nodes", "system:authenticated"]);
        let n1 = info("system:node:n1", &["system:nodes"], 0);
        /// signer, requester, groups, usages, subject, expected approval
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [String],
            &'a [String],
            &'a CsrInfo,
            Option<Approval>,
        );
        let cases: &[Case] = &[
            (
                KUBELET_CLIENT_SIGNER,
                "system:bootstrap:x",
                &bootstrap,
                &client_usages,
                &n1,
                Some(Approval::NodeClient),
            ),
            (
                KUBELET_CLIENT_SIGNER,
                "system:node:n1",
                &nodes,
                &client_usages,
                &n1,
                Some(Approval::SelfNodeClient),
            ),
            // Another node's name, asked for by a node: no.
            (
                KUBELET_CLIENT_SIGNER,
                "system:node:n2",
                &nodes,
                &client_usages,
                &n1,
                None,
            ),
            // A user who is neither: no.
            (
                KUBELET_CLIENT_SIGNER,
                "alice",
                &strings(&["system:authenticated"]),
                &client_usages,
                &n1,
                None,
            ),
            // Not a node subject: no.
            (
                KUBELET_CLIENT_SIGNER,
                "system:bootstrap:x",
                &bootstrap,
                &client_usages,
                &info("admin", &["system:masters"], 0),
                None,
            ),
            // Server usage on the client signer: no.
            (
                KUBELET_CLIENT_SIGNER,
                "system:bootstrap:x",
                &bootstrap,
                &strings(&["server auth"]),
                &n1,
                None,
            ),
            // Serving: a node for itself, with an address.
            (
                KUBELET_SERVING_SIGNER,
                "system:node:n1",
                &nodes,
                &strings(&["digital signature", "server auth"]),
                &info("system:node:n1", &["system:nodes"], 1),
                Some(Approval::SelfNodeServer),
            ),
            (
                KUBELET_SERVING_SIGNER,
                "system:bootstrap:x",
                &bootstrap,
                &strings(&["server auth"]),
                &info("system:node:n1", &["system:nodes"], 1),
                None,
            ),
            (
                KUBELET_SERVING_SIGNER,
                "system:node:n1",
                &nodes,
                &strings(&["server auth"]),
                &n1,
                None,
            ),
            (
                "example.com/other",
                "system:node:n1",
                &nodes,
                &client_usages,
                &n1,
                None,
            ),
        ];
        for (i, (signer, requester, groups, usages, info, want)) in cases.iter().enumerate() {
            assert_eq!(
                recognize(signer, requester, groups, usages, info),
                *want,
                "case {i}"
            );
        }
    }
}
