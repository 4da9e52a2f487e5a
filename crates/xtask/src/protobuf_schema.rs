//! `gen-protobuf-schema`: writes the table that `rudder_apimachinery::protobuf`
//! decodes Kubernetes protobuf with.
//!
//! Field numbers and wire types come from k8s-pb (prost output of the
//! upstream `generated.proto` files); JSON names and required fields come from
//! k8s-openapi (the upstream OpenAPI schema). Both are read as source from the
//! cargo registry, so the runtime decoder depends on neither crate. A message
//! is matched to its OpenAPI definition by package and case-insensitive type
//! name (prost re-cases acronyms: `CsiDriver` vs `CSIDriver`), and a field to
//! its JSON name by comparing the names lowercased with everything but letters
//! and digits removed (`pod_ips` ~ `podIPs`, `ref` ~ `$ref`,
//! `x_kubernetes_list_type` ~ `x-kubernetes-list-type`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::k8s_openapi::{self, OpenapiDefinition, OpenapiField, OpenapiVersion};
use crate::k8s_pb::{self, Cardinality, PbCrate, PbField, PbMessage, Scalar, ValueType};

const K8S_PB_CRATE: &str = "k8s-pb-0.9.0";
const K8S_OPENAPI_CRATE: &str = "k8s-openapi-0.29.0";

/// Searched in order for a field's JSON name: the Kubernetes version Rudder
/// serves first; newer ones only name fields that k8s-pb (newer than 1.33)
/// has and 1.33 lacks.
const OPENAPI_VERSIONS: &[&str] = &["v1_33", "v1_34", "v1_35", "v1_36", "v1_37"];

/// The API group versions whose kinds the table covers; messages are the
/// closure of what these kinds reference.
const SERVED_API_VERSIONS: &[&str] = &[
    "v1",
    "apps/v1",
    "batch/v1",
    "autoscaling/v1",
    "autoscaling/v2",
    "rbac.authorization.k8s.io/v1",
    "scheduling.k8s.io/v1",
    "storage.k8s.io/v1",
    "coordination.k8s.io/v1",
    "discovery.k8s.io/v1",
    "events.k8s.io/v1",
    "networking.k8s.io/v1",
    "policy/v1",
    "apiextensions.k8s.io/v1",
    // kubectl's typed clients post these: `create token`, `auth can-i`,
    // `auth whoami`.
    "authentication.k8s.io/v1",
    "authorization.k8s.io/v1",
];

/// Kinds that Go registers in every group version (`metav1.AddToGroupVersion`),
/// so their envelope may carry any apiVersion.
const ANY_VERSION_KINDS: &[(&str, &str)] = &[(
    "DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
)];

const OUTPUT_PATH: &str = "crates/rudder-apimachinery/src/protobuf_schema.rs";

/// Optional scalar fields that are pointers in Go (`*int32`, `*bool`,
/// `*string`), keyed by Go type and JSON name.
///
/// Go's protobuf marshaller writes every non-pointer scalar, zero or not, and
/// a pointer scalar only when it is set; Go's JSON marshaller then drops zero
/// non-pointer `omitempty` fields but keeps a set pointer even when it points
/// at zero. The wire bytes alone cannot tell `replicas: 0` (pointer, set to 0:
/// keep) from `minReadySeconds: 0` (plain int32: drop), and neither schema
/// source records Go pointers, so this list does. A field missing here has
/// its explicit zero dropped, as Go's JSON does for the (far more numerous)
/// non-pointer fields. Checked against the Go type metadata (field kinds and
/// JSON tags) in kubectl 1.32 and 1.33 binaries for every type they link: all
/// of these groups but apiextensions, whose entries, like fields newer than
/// 1.33, follow the Go sources.
const GO_POINTER_FIELDS: &[(&str, &[&str])] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        &["deletionGracePeriodSeconds"],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
        &["controller", "blockOwnerDeletion"],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
        &["remainingItemCount"],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.Preconditions",
        &["uid", "resourceVersion"],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
        &[
            "gracePeriodSeconds",
            "orphanDependents",
            "propagationPolicy",
            "ignoreStoreReadErrorWithClusterBreakingPotential",
        ],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        &[
            "terminationGracePeriodSeconds",
            "activeDeadlineSeconds",
            "automountServiceAccountToken",
            "shareProcessNamespace",
            "priority",
            "enableServiceLinks",
            "preemptionPolicy",
            "runtimeClassName",
            "hostUsers",
            "setHostnameAsFQDN",
        ],
    ),
    ("io.k8s.api.core.v1.Container", &["restartPolicy"]),
    (
        "io.k8s.api.core.v1.EphemeralContainerCommon",
        &["restartPolicy"],
    ),
    (
        "io.k8s.api.core.v1.SecurityContext",
        &[
            "privileged",
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "readOnlyRootFilesystem",
            "allowPrivilegeEscalation",
            "procMount",
        ],
    ),
    (
        "io.k8s.api.core.v1.PodSecurityContext",
        &[
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "fsGroup",
            "fsGroupChangePolicy",
            "supplementalGroupsPolicy",
            "seLinuxChangePolicy",
        ],
    ),
    (
        "io.k8s.api.core.v1.WindowsSecurityContextOptions",
        &[
            "gmsaCredentialSpecName",
            "gmsaCredentialSpec",
            "runAsUserName",
            "hostProcess",
        ],
    ),
    ("io.k8s.api.core.v1.SeccompProfile", &["localhostProfile"]),
    ("io.k8s.api.core.v1.AppArmorProfile", &["localhostProfile"]),
    (
        "io.k8s.api.core.v1.Probe",
        &["terminationGracePeriodSeconds"],
    ),
    ("io.k8s.api.core.v1.GRPCAction", &["service"]),
    ("io.k8s.api.core.v1.Toleration", &["tolerationSeconds"]),
    (
        "io.k8s.api.core.v1.TopologySpreadConstraint",
        &["minDomains", "nodeAffinityPolicy", "nodeTaintsPolicy"],
    ),
    ("io.k8s.api.core.v1.PodDNSConfigOption", &["value"]),
    (
        "io.k8s.api.core.v1.VolumeMount",
        &["mountPropagation", "recursiveReadOnly"],
    ),
    (
        "io.k8s.api.core.v1.SecretVolumeSource",
        &["defaultMode", "optional"],
    ),
    (
        "io.k8s.api.core.v1.ConfigMapVolumeSource",
        &["defaultMode", "optional"],
    ),
    ("io.k8s.api.core.v1.ProjectedVolumeSource", &["defaultMode"]),
    (
        "io.k8s.api.core.v1.DownwardAPIVolumeSource",
        &["defaultMode"],
    ),
    ("io.k8s.api.core.v1.KeyToPath", &["mode"]),
    ("io.k8s.api.core.v1.DownwardAPIVolumeFile", &["mode"]),
    ("io.k8s.api.core.v1.ConfigMapProjection", &["optional"]),
    ("io.k8s.api.core.v1.SecretProjection", &["optional"]),
    (
        "io.k8s.api.core.v1.ClusterTrustBundleProjection",
        &["name", "signerName", "optional"],
    ),
    ("io.k8s.api.core.v1.ConfigMapKeySelector", &["optional"]),
    ("io.k8s.api.core.v1.SecretKeySelector", &["optional"]),
    ("io.k8s.api.core.v1.ConfigMapEnvSource", &["optional"]),
    ("io.k8s.api.core.v1.SecretEnvSource", &["optional"]),
    (
        "io.k8s.api.core.v1.ServiceAccountTokenProjection",
        &["expirationSeconds"],
    ),
    (
        "io.k8s.api.core.v1.CSIVolumeSource",
        &["readOnly", "fsType"],
    ),
    ("io.k8s.api.core.v1.HostPathVolumeSource", &["type"]),
    ("io.k8s.api.core.v1.ISCSIVolumeSource", &["initiatorName"]),
    (
        "io.k8s.api.core.v1.ISCSIPersistentVolumeSource",
        &["initiatorName"],
    ),
    (
        "io.k8s.api.core.v1.AzureDiskVolumeSource",
        &["cachingMode", "fsType", "readOnly", "kind"],
    ),
    ("io.k8s.api.core.v1.LocalVolumeSource", &["fsType"]),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimSpec",
        &[
            "storageClassName",
            "volumeMode",
            "volumeAttributesClassName",
        ],
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeSpec",
        &["volumeMode", "volumeAttributesClassName"],
    ),
    (
        "io.k8s.api.core.v1.TypedLocalObjectReference",
        &["apiGroup"],
    ),
    (
        "io.k8s.api.core.v1.TypedObjectReference",
        &["apiGroup", "namespace"],
    ),
    (
        "io.k8s.api.core.v1.PodResourceClaim",
        &["resourceClaimName", "resourceClaimTemplateName"],
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        &[
            "allocateLoadBalancerNodePorts",
            "ipFamilyPolicy",
            "loadBalancerClass",
            "internalTrafficPolicy",
            "trafficDistribution",
        ],
    ),
    ("io.k8s.api.core.v1.ServicePort", &["appProtocol"]),
    ("io.k8s.api.core.v1.EndpointPort", &["appProtocol"]),
    ("io.k8s.api.core.v1.EndpointAddress", &["nodeName"]),
    ("io.k8s.api.core.v1.ClientIPConfig", &["timeoutSeconds"]),
    ("io.k8s.api.core.v1.LoadBalancerIngress", &["ipMode"]),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        &["automountServiceAccountToken"],
    ),
    ("io.k8s.api.core.v1.ConfigMap", &["immutable"]),
    ("io.k8s.api.core.v1.Secret", &["immutable"]),
    (
        "io.k8s.api.core.v1.ReplicationControllerSpec",
        &["replicas"],
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        &["started", "stopSignal"],
    ),
    ("io.k8s.api.core.v1.Lifecycle", &["stopSignal"]),
    ("io.k8s.api.core.v1.NodeSwapStatus", &["capacity"]),
    (
        "io.k8s.api.core.v1.AzureFilePersistentVolumeSource",
        &["secretNamespace"],
    ),
    ("io.k8s.api.core.v1.FCVolumeSource", &["lun"]),
    (
        "io.k8s.api.core.v1.GlusterfsPersistentVolumeSource",
        &["endpointsNamespace"],
    ),
    (
        "io.k8s.api.core.v1.NodeFeatures",
        &["supplementalGroupsPolicy"],
    ),
    (
        "io.k8s.api.core.v1.NodeRuntimeHandlerFeatures",
        &["recursiveReadOnlyMounts", "userNamespaces"],
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        &["currentVolumeAttributesClassName"],
    ),
    (
        "io.k8s.api.core.v1.PodResourceClaimStatus",
        &["resourceClaimName"],
    ),
    ("io.k8s.api.core.v1.PortStatus", &["error"]),
    (
        "io.k8s.api.core.v1.VolumeMountStatus",
        &["recursiveReadOnly"],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        &[
            "replicas",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
        ],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        &["collisionCount", "terminatingReplicas"],
    ),
    ("io.k8s.api.apps.v1.ReplicaSetSpec", &["replicas"]),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        &["terminatingReplicas"],
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetSpec",
        &["replicas", "revisionHistoryLimit"],
    ),
    ("io.k8s.api.apps.v1.StatefulSetStatus", &["collisionCount"]),
    (
        "io.k8s.api.apps.v1.RollingUpdateStatefulSetStrategy",
        &["partition"],
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetSpec",
        &["revisionHistoryLimit"],
    ),
    ("io.k8s.api.apps.v1.DaemonSetStatus", &["collisionCount"]),
    (
        "io.k8s.api.batch.v1.JobSpec",
        &[
            "parallelism",
            "completions",
            "activeDeadlineSeconds",
            "backoffLimit",
            "backoffLimitPerIndex",
            "maxFailedIndexes",
            "ttlSecondsAfterFinished",
            "suspend",
            "manualSelector",
            "completionMode",
            "podReplacementPolicy",
            "managedBy",
        ],
    ),
    (
        "io.k8s.api.batch.v1.JobStatus",
        &["ready", "terminating", "failedIndexes"],
    ),
    (
        "io.k8s.api.batch.v1.CronJobSpec",
        &[
            "startingDeadlineSeconds",
            "suspend",
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
            "timeZone",
        ],
    ),
    (
        "io.k8s.api.batch.v1.PodFailurePolicyOnExitCodesRequirement",
        &["containerName"],
    ),
    (
        "io.k8s.api.batch.v1.SuccessPolicyRule",
        &["succeededIndexes", "succeededCount"],
    ),
    (
        "io.k8s.api.autoscaling.v1.HorizontalPodAutoscalerSpec",
        &["minReplicas", "targetCPUUtilizationPercentage"],
    ),
    (
        "io.k8s.api.autoscaling.v1.HorizontalPodAutoscalerStatus",
        &["observedGeneration", "currentCPUUtilizationPercentage"],
    ),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerSpec",
        &["minReplicas"],
    ),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        &["observedGeneration"],
    ),
    (
        "io.k8s.api.autoscaling.v2.HPAScalingRules",
        &["stabilizationWindowSeconds", "selectPolicy"],
    ),
    (
        "io.k8s.api.autoscaling.v2.MetricTarget",
        &["averageUtilization"],
    ),
    (
        "io.k8s.api.autoscaling.v2.MetricValueStatus",
        &["averageUtilization"],
    ),
    (
        "io.k8s.api.scheduling.v1.PriorityClass",
        &["preemptionPolicy"],
    ),
    (
        "io.k8s.api.storage.v1.StorageClass",
        &["allowVolumeExpansion", "reclaimPolicy", "volumeBindingMode"],
    ),
    (
        "io.k8s.api.storage.v1.CSIDriverSpec",
        &[
            "attachRequired",
            "podInfoOnMount",
            "storageCapacity",
            "fsGroupPolicy",
            "requiresRepublish",
            "seLinuxMount",
            "nodeAllocatableUpdatePeriodSeconds",
        ],
    ),
    ("io.k8s.api.storage.v1.VolumeNodeResources", &["count"]),
    (
        "io.k8s.api.storage.v1.VolumeAttachmentSource",
        &["persistentVolumeName"],
    ),
    ("io.k8s.api.storage.v1.VolumeError", &["errorCode"]),
    ("io.k8s.api.storage.v1.TokenRequest", &["expirationSeconds"]),
    (
        "io.k8s.api.coordination.v1.LeaseSpec",
        &[
            "holderIdentity",
            "leaseDurationSeconds",
            "leaseTransitions",
            "strategy",
            "preferredHolder",
        ],
    ),
    (
        "io.k8s.api.discovery.v1.EndpointConditions",
        &["ready", "serving", "terminating"],
    ),
    (
        "io.k8s.api.discovery.v1.Endpoint",
        &["hostname", "nodeName", "zone"],
    ),
    (
        "io.k8s.api.discovery.v1.EndpointPort",
        &["name", "protocol", "port", "appProtocol"],
    ),
    (
        "io.k8s.api.networking.v1.NetworkPolicyPort",
        &["protocol", "endPort"],
    ),
    (
        "io.k8s.api.networking.v1.IngressSpec",
        &["ingressClassName"],
    ),
    ("io.k8s.api.networking.v1.HTTPIngressPath", &["pathType"]),
    (
        "io.k8s.api.networking.v1.IngressClassParametersReference",
        &["apiGroup", "scope", "namespace"],
    ),
    ("io.k8s.api.networking.v1.IngressPortStatus", &["error"]),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudgetSpec",
        &["unhealthyPodEvictionPolicy"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
        &[
            "maxLength",
            "minLength",
            "maxItems",
            "minItems",
            "maxProperties",
            "minProperties",
            "maximum",
            "minimum",
            "multipleOf",
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-list-type",
            "x-kubernetes-map-type",
        ],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.ValidationRule",
        &["reason", "optionalOldSelf"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.WebhookClientConfig",
        &["url"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.ServiceReference",
        &["path", "port"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceSubresourceScale",
        &["labelSelectorPath"],
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionVersion",
        &["deprecationWarning"],
    ),
    (
        "io.k8s.api.authentication.v1.TokenRequestSpec",
        &["expirationSeconds"],
    ),
];

/// Non-pointer scalar fields whose Go JSON tag has no `omitempty` although
/// the OpenAPI schema calls them optional: Go prints them at zero too. Found
/// by the same check against kubectl's Go type metadata.
const GO_NOT_OMITEMPTY_FIELDS: &[(&str, &[&str])] = &[
    ("io.k8s.api.apps.v1.StatefulSetOrdinals", &["start"]),
    ("io.k8s.api.apps.v1.StatefulSetSpec", &["serviceName"]),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        &["availableReplicas"],
    ),
    (
        "io.k8s.api.core.v1.Event",
        &["reportingComponent", "reportingInstance"],
    ),
    ("io.k8s.api.core.v1.NodeRuntimeHandler", &["name"]),
];

/// Messages whose Go type has its own JSON form, not an object of fields.
/// The runtime decoder implements each form; the table only says which
/// message has which.
const SPECIAL_FORMS: &[(&str, &str)] = &[
    ("io.k8s.apimachinery.pkg.apis.meta.v1.Time", "Time"),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime",
        "MicroTime",
    ),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.Duration", "Duration"),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
        "EmbeddedJson",
    ),
    (
        "io.k8s.apimachinery.pkg.runtime.RawExtension",
        "EmbeddedJson",
    ),
    ("io.k8s.apimachinery.pkg.api.resource.Quantity", "Quantity"),
    (
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
        "IntOrString",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
        "EmbeddedJson",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
        "SchemaOrArray",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
        "SchemaOrBool",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
        "SchemaOrStringArray",
    ),
];

pub fn run(arguments: &[String]) -> anyhow::Result<()> {
    let mut check_only = false;
    let mut registry: Option<PathBuf> = None;
    let mut rest = arguments.iter();
    while let Some(argument) = rest.next() {
        match argument.as_str() {
            "--check" => check_only = true,
            "--registry" => {
                registry = Some(rest.next().context("--registry needs a directory")?.into())
            }
            other => bail!(
                "unknown argument {other}; usage: gen-protobuf-schema [--check] [--registry DIR]"
            ),
        }
    }
    let registry = match registry {
        Some(dir) => dir,
        None => default_registry_src()?,
    };
    let pb_dir = find_crate(&registry, K8S_PB_CRATE)?;
    let openapi_dir = find_crate(&registry, K8S_OPENAPI_CRATE)?;

    let pb = k8s_pb::read(&pb_dir)?;
    let mut openapi = Vec::new();
    for version in OPENAPI_VERSIONS {
        openapi.push(k8s_openapi::read(&openapi_dir, version)?);
    }
    let table = build_table(&pb, &openapi)?;
    for note in &table.notes {
        eprintln!("note: {note}");
    }
    let rendered = render(&table);

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = workspace.join(OUTPUT_PATH);
    if check_only {
        let current = std::fs::read_to_string(&output).unwrap_or_default();
        if current != rendered {
            bail!("{OUTPUT_PATH} is out of date; run `cargo run -p xtask -- gen-protobuf-schema`");
        }
        eprintln!("{OUTPUT_PATH} is up to date");
    } else {
        std::fs::write(&output, rendered)
            .with_context(|| format!("writing {}", output.display()))?;
        eprintln!(
            "wrote {OUTPUT_PATH}: {} messages, {} kinds",
            table.messages.len(),
            table.kinds.len()
        );
    }
    Ok(())
}

fn default_registry_src() -> anyhow::Result<PathBuf> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
                .join(".cargo")
        }
    };
    Ok(cargo_home.join("registry").join("src"))
}

/// `<registry>/<index dir>/<name-version>`, for whichever index holds it.
fn find_crate(registry: &Path, crate_dir_name: &str) -> anyhow::Result<PathBuf> {
    let indexes =
        std::fs::read_dir(registry).with_context(|| format!("reading {}", registry.display()))?;
    let mut candidates: Vec<PathBuf> = indexes
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join(crate_dir_name))
        .filter(|path| path.is_dir())
        .collect();
    candidates.sort();
    candidates.into_iter().next().with_context(|| {
        format!(
            "{crate_dir_name} is not in {}; `cargo fetch` downloads it (crates/xtask \
             declares it as a never-built dependency)",
            registry.display()
        )
    })
}

/// One message of the generated table.
struct TableMessage {
    go_name: String,
    static_name: String,
    form: &'static str,
    fields: Vec<TableField>,
}

struct TableField {
    tag: u32,
    /// A Go struct embedded with `json:",inline"` (`Volume.VolumeSource`): a
    /// field of its own in protobuf, its fields merged into the parent in JSON.
    inline: bool,
    json_name: String,
    cardinality: Cardinality,
    value: TableValue,
    keep_zero: bool,
}

enum TableValue {
    Scalar(Scalar),
    /// Index into `Table::messages`' keys, by pb full name.
    Message(String),
}

struct Table {
    /// By k8s-pb full name.
    messages: BTreeMap<String, TableMessage>,
    /// (apiVersion, kind) → k8s-pb full name.
    kinds: BTreeMap<(String, String), String>,
    any_version_kinds: Vec<(String, String)>,
    notes: Vec<String>,
}

/// Lowercase letters and digits only: the form in which prost's snake_case
/// names and Kubernetes' JSON names agree.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn lower_camel_case(snake: &str) -> String {
    let mut out = String::new();
    for (index, word) in snake.split('_').filter(|w| !w.is_empty()).enumerate() {
        if index == 0 {
            out.push_str(word);
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars);
            }
        }
    }
    out
}

/// The key both crates' type names agree on: package plus normalized type.
fn type_key(package: &str, type_name: &str) -> String {
    format!("{package}.{}", normalize(type_name))
}

fn split_full_name(full_name: &str) -> (&str, &str) {
    full_name.rsplit_once('.').unwrap_or(("", full_name))
}

fn build_table(pb: &PbCrate, openapi: &[OpenapiVersion]) -> anyhow::Result<Table> {
    // Per OpenAPI version, definitions by type key.
    let openapi_by_key: Vec<BTreeMap<String, &OpenapiDefinition>> = openapi
        .iter()
        .map(|version| {
            version
                .definitions
                .values()
                .map(|def| {
                    let (package, type_name) = split_full_name(&def.full_name);
                    (type_key(package, type_name), def)
                })
                .collect()
        })
        .collect();
    let pb_by_key: BTreeMap<String, &PbMessage> = pb
        .messages
        .values()
        .map(|message| (type_key(&message.package, &message.type_name), message))
        .collect();
    let pb_name_for = |full_name: &str| -> Option<String> {
        let (package, type_name) = split_full_name(full_name);
        pb_by_key
            .get(&type_key(package, type_name))
            .map(|message| message.full_name.clone())
    };

    // Kinds: k8s-pb's resources plus k8s-openapi's (which adds subresource
    // kinds such as Scale, Eviction and TokenRequest).
    let mut kinds = BTreeMap::new();
    for resource in &pb.resources {
        if SERVED_API_VERSIONS.contains(&resource.api_version.as_str()) {
            kinds.insert(
                (resource.api_version.clone(), resource.kind.clone()),
                resource.message.clone(),
            );
        }
    }
    for version in openapi {
        for resource in &version.resources {
            if !SERVED_API_VERSIONS.contains(&resource.api_version.as_str()) {
                continue;
            }
            let key = (resource.api_version.clone(), resource.kind.clone());
            if kinds.contains_key(&key) {
                continue;
            }
            if let Some(message) = pb_name_for(&resource.definition) {
                kinds.insert(key, message);
            }
        }
    }
    let mut any_version_kinds = Vec::new();
    for (kind, go_name) in ANY_VERSION_KINDS {
        let message = pb_name_for(go_name).with_context(|| format!("{go_name} not in k8s-pb"))?;
        any_version_kinds.push((kind.to_string(), message));
    }

    // The closure of messages the kinds reach.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut pending: Vec<String> = kinds
        .values()
        .cloned()
        .chain(any_version_kinds.iter().map(|(_, message)| message.clone()))
        .collect();
    while let Some(name) = pending.pop() {
        if !wanted.insert(name.clone()) {
            continue;
        }
        let message = pb
            .messages
            .get(&name)
            .with_context(|| format!("message {name} referenced but not defined in k8s-pb"))?;
        for field in &message.fields {
            if let ValueType::Message(target) = &field.value {
                pending.push(target.clone());
            }
        }
    }

    let special_forms: BTreeMap<String, (&'static str, &'static str)> = SPECIAL_FORMS
        .iter()
        .map(|(go_name, form)| {
            let (package, type_name) = split_full_name(go_name);
            (type_key(package, type_name), (*go_name, *form))
        })
        .collect();

    let definitions_of = |message: &PbMessage| -> Vec<&OpenapiDefinition> {
        let key = type_key(&message.package, &message.type_name);
        openapi_by_key
            .iter()
            .filter_map(|by_key| by_key.get(&key).copied())
            .collect()
    };

    // Embedded structs inlined in JSON: a message field the parent's OpenAPI
    // definition does not name, while it does name the embedded message's
    // fields. The embedded message has no OpenAPI definition of its own; its
    // JSON names are the parent's.
    let mut inline_fields: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut inline_parents: BTreeMap<String, Vec<&OpenapiDefinition>> = BTreeMap::new();
    for name in &wanted {
        let message = &pb.messages[name];
        let definitions = definitions_of(message);
        if definitions.is_empty() {
            continue;
        }
        for field in &message.fields {
            let ValueType::Message(target) = &field.value else {
                continue;
            };
            if field.cardinality != Cardinality::Single
                || json_name_of(field, &definitions).is_some()
            {
                continue;
            }
            let target_message = &pb.messages[target];
            if target_message
                .fields
                .iter()
                .any(|embedded| json_name_of(embedded, &definitions).is_some())
            {
                inline_fields.insert((name.clone(), field.tag));
                inline_parents
                    .entry(target.clone())
                    .or_default()
                    .extend(definitions.iter().copied());
            }
        }
    }

    let mut notes = Vec::new();
    let mut messages = BTreeMap::new();
    for name in &wanted {
        let message = &pb.messages[name];
        let key = type_key(&message.package, &message.type_name);
        let mut definitions = definitions_of(message);
        let inlined_into = inline_parents.get(name);
        if let (true, Some(parents)) = (definitions.is_empty(), inlined_into) {
            definitions = parents.clone();
        }
        let special = special_forms.get(&key).copied();
        let go_name = match (special, inlined_into, definitions.first()) {
            (Some((special_go_name, _)), _, _) => special_go_name.to_string(),
            (None, None, Some(def)) => def.full_name.clone(),
            _ => message.full_name.clone(),
        };
        let mut form = special.map_or("Object", |(_, form)| form);
        if form == "Object" && definitions.is_empty() {
            // Go's `type Verbs []string`-style slices get a wrapper message
            // with one `items` field in protobuf but are plain arrays in JSON.
            if let [only] = message.fields.as_slice() {
                if only.name == "items" && only.cardinality == Cardinality::Repeated {
                    form = "ItemsArray";
                }
            }
            if form == "Object" {
                notes.push(format!(
                    "{go_name}: no OpenAPI definition; JSON names guessed"
                ));
            }
        }
        let mut fields = Vec::new();
        for field in &message.fields {
            let inline = inline_fields.contains(&(name.clone(), field.tag));
            let (json_name, required) = match json_name_of(field, &definitions) {
                _ if inline => (String::new(), false),
                Some(found) => (found.json_name.clone(), found.required),
                None => {
                    let guessed = lower_camel_case(&field.name);
                    if form == "Object" && !definitions.is_empty() {
                        notes.push(format!(
                            "{go_name}.{}: not in k8s-openapi; JSON name guessed as {guessed}",
                            field.name
                        ));
                    }
                    (guessed, false)
                }
            };
            fields.push(TableField {
                tag: field.tag,
                inline,
                json_name,
                cardinality: field.cardinality,
                value: match &field.value {
                    ValueType::Scalar(scalar) => TableValue::Scalar(*scalar),
                    ValueType::Message(target) => TableValue::Message(target.clone()),
                },
                keep_zero: required,
            });
        }
        fields.sort_by_key(|field| field.tag);
        messages.insert(
            name.clone(),
            TableMessage {
                static_name: static_name(&go_name),
                go_name,
                form,
                fields,
            },
        );
    }

    keep_zero_of(&mut messages, "GO_POINTER_FIELDS", GO_POINTER_FIELDS)?;
    keep_zero_of(
        &mut messages,
        "GO_NOT_OMITEMPTY_FIELDS",
        GO_NOT_OMITEMPTY_FIELDS,
    )?;

    let mut seen = BTreeSet::new();
    for message in messages.values() {
        if !seen.insert(message.static_name.clone()) {
            bail!(
                "two messages map to the static name {}",
                message.static_name
            );
        }
    }
    Ok(Table {
        messages,
        kinds,
        any_version_kinds,
        notes,
    })
}

fn json_name_of<'a>(
    field: &PbField,
    definitions: &[&'a OpenapiDefinition],
) -> Option<&'a OpenapiField> {
    let wanted = normalize(&field.name);
    definitions.iter().find_map(|def| {
        def.fields
            .iter()
            .find(|candidate| normalize(&candidate.json_name) == wanted)
    })
}

/// Marks the listed fields as printed at their zero value, insisting that
/// each exists and is a single scalar so that the lists cannot rot silently.
fn keep_zero_of(
    messages: &mut BTreeMap<String, TableMessage>,
    list_name: &str,
    fields_by_type: &[(&str, &[&str])],
) -> anyhow::Result<()> {
    for (go_name, json_names) in fields_by_type {
        let message = messages
            .values_mut()
            .find(|message| message.go_name == *go_name)
            .with_context(|| format!("{list_name} names {go_name}, which is not in the table"))?;
        for json_name in *json_names {
            let field = message
                .fields
                .iter_mut()
                .find(|field| field.json_name == *json_name)
                .with_context(|| {
                    format!("{list_name} names {go_name}.{json_name}, which does not exist")
                })?;
            if field.cardinality != Cardinality::Single
                || matches!(field.value, TableValue::Message(_))
            {
                bail!("{list_name} names {go_name}.{json_name}, which is not a single scalar");
            }
            field.keep_zero = true;
        }
    }
    Ok(())
}

/// `io.k8s.api.core.v1.PodSpec` → `CORE_V1_POD_SPEC`: the package without its
/// generic segments, then the type in SCREAMING_SNAKE_CASE.
fn static_name(go_name: &str) -> String {
    const GENERIC_SEGMENTS: &[&str] = &[
        "io",
        "k8s",
        "api",
        "apis",
        "pkg",
        "apimachinery",
        "apiextensions-apiserver",
        "util",
    ];
    let (package, type_name) = split_full_name(go_name);
    let mut parts: Vec<String> = package
        .split('.')
        .filter(|segment| !GENERIC_SEGMENTS.contains(segment))
        .map(str::to_ascii_uppercase)
        .collect();
    parts.push(screaming_snake(type_name));
    parts.join("_")
}

/// `JSONSchemaProps` → `JSON_SCHEMA_PROPS`, `PodIP` → `POD_IP`.
fn screaming_snake(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::new();
    for (index, &c) in chars.iter().enumerate() {
        if index > 0 && c.is_ascii_uppercase() {
            let previous = chars[index - 1];
            let next_is_lower = chars.get(index + 1).is_some_and(|n| n.is_ascii_lowercase());
            if previous.is_ascii_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_ascii_uppercase() && next_is_lower)
            {
                out.push('_');
            }
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn render(table: &Table) -> String {
    let mut out = String::new();
    out.push_str(
        "// @generated by `cargo run -p xtask -- gen-protobuf-schema` (crates/xtask); do not edit.\n\
         //\n",
    );
    let _ = writeln!(
        out,
        "// Field numbers from the k8s-pb {} crate, JSON names and required fields from\n\
         // k8s-openapi {} ({}, newer versions only for newer fields), Go pointer and\n\
         // non-omitempty fields from the lists in crates/xtask/src/protobuf_schema.rs.",
        K8S_PB_CRATE.trim_start_matches("k8s-pb-"),
        K8S_OPENAPI_CRATE.trim_start_matches("k8s-openapi-"),
        OPENAPI_VERSIONS[0],
    );
    out.push_str(
        "\nuse super::JsonForm::*;\n\
         use super::ValueType::*;\n\
         use super::{inline, map, message, repeated, single, MessageSchema};\n\n",
    );

    let _ = writeln!(
        out,
        "/// (apiVersion, kind) → message, sorted.\n\
         pub(super) static KINDS: [(&str, &str, &MessageSchema); {}] = [",
        table.kinds.len()
    );
    for ((api_version, kind), message) in &table.kinds {
        let _ = writeln!(
            out,
            "    ({api_version:?}, {kind:?}, &{}),",
            table.messages[message].static_name
        );
    }
    out.push_str("];\n\n");

    let _ = writeln!(
        out,
        "/// Kinds registered in every group version, whatever the envelope's apiVersion.\n\
         pub(super) static ANY_VERSION_KINDS: [(&str, &MessageSchema); {}] = [",
        table.any_version_kinds.len()
    );
    for (kind, message) in &table.any_version_kinds {
        let _ = writeln!(
            out,
            "    ({kind:?}, &{}),",
            table.messages[message].static_name
        );
    }
    out.push_str("];\n");

    let mut ordered: Vec<&TableMessage> = table.messages.values().collect();
    ordered.sort_by(|a, b| a.static_name.cmp(&b.static_name));
    for message in ordered {
        let _ = write!(
            out,
            "\npub(super) static {}: MessageSchema = message({:?}, {}, &[",
            message.static_name, message.go_name, message.form
        );
        if message.fields.is_empty() {
            out.push_str("]);\n");
            continue;
        }
        out.push('\n');
        for field in &message.fields {
            let constructor = match field.cardinality {
                Cardinality::Single if field.inline => "inline",
                Cardinality::Single => "single",
                Cardinality::Repeated => "repeated",
                Cardinality::Map => "map",
            };
            let value = match &field.value {
                TableValue::Scalar(scalar) => match scalar {
                    Scalar::String => "Str".to_string(),
                    Scalar::Bytes => "Bytes".to_string(),
                    Scalar::Bool => "Bool".to_string(),
                    Scalar::Int32 => "Int32".to_string(),
                    Scalar::Int64 => "Int64".to_string(),
                    Scalar::Double => "Double".to_string(),
                },
                TableValue::Message(target) => {
                    format!("Message(&{})", table.messages[target].static_name)
                }
            };
            let keep_zero = if field.keep_zero
                && field.cardinality == Cardinality::Single
                && matches!(field.value, TableValue::Scalar(_))
            {
                ".keep_zero()"
            } else {
                ""
            };
            if field.inline {
                let _ = writeln!(out, "    {constructor}({}, {value}),", field.tag);
            } else {
                let _ = writeln!(
                    out,
                    "    {constructor}({}, {:?}, {value}){keep_zero},",
                    field.tag, field.json_name
                );
            }
        }
        out.push_str("]);\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize("pod_ips"), normalize("podIPs"));
        assert_eq!(normalize("ref"), normalize("$ref"));
        assert_eq!(
            normalize("x_kubernetes_list_type"),
            normalize("x-kubernetes-list-type")
        );
        assert_eq!(lower_camel_case("pod_ips"), "podIps");
        assert_eq!(screaming_snake("JSONSchemaProps"), "JSON_SCHEMA_PROPS");
        assert_eq!(screaming_snake("PodIP"), "POD_IP");
        assert_eq!(screaming_snake("FieldsV1"), "FIELDS_V1");
        assert_eq!(
            static_name("io.k8s.api.core.v1.PodSpec"),
            "CORE_V1_POD_SPEC"
        );
        assert_eq!(
            static_name("io.k8s.apimachinery.pkg.util.intstr.IntOrString"),
            "INTSTR_INT_OR_STRING"
        );
    }
}
