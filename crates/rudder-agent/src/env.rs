//! A container's environment as the kubelet builds it (`makeEnvironmentVariables`):
//! `envFrom` sources first, then `env` in declaration order (a literal value
//! has its `$(VAR)` references expanded against the variables declared so
//! far and the service variables; `valueFrom` reads a ConfigMap or Secret key,
//! a pod field or a container resource), then the service link variables
//! (`KUBERNETES_SERVICE_HOST`, …) the container did not set itself.
//!
//! Also the downward API's field and resource extraction (`fieldpath`,
//! `resource` in Kubernetes), which downward API volumes share.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use kube::api::{Api, ListParams};
use rudder_apimachinery::quantity::Quantity;

/// What a container's environment is resolved against.
pub struct EnvContext<'a> {
    pub pod: &'a Pod,
    /// The pod's IP (`status.podIP`, `status.podIPs`).
    pub pod_ip: Option<String>,
    /// The node's IP (`status.hostIP`, `status.hostIPs`).
    pub host_ip: Option<String>,
    /// What `limits.cpu` means for a container without a CPU limit.
    pub node_allocatable_cpu_millis: i64,
    /// What `limits.memory` means for a container without a memory limit.
    pub node_allocatable_memory: i64,
}

/// Why a container's environment cannot be made; the caller reports it as
/// `CreateContainerConfigError` with this message.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// `configmap "x" not found`, `secret "x" not found` (the kubelet's
    /// object cache words them with the singular resource).
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    /// `couldn't find key y in ConfigMap ns/x`.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    /// A `fieldRef` or `resourceFieldRef` the kubelet cannot resolve, worded
    /// as the kubelet words it.
    #[error("{0}")]
    Field(String),
    /// `services have not yet been read at least once, cannot construct envvars`
    /// and the like: the API could not be read.
    #[error("failed to list services when setting up env vars")]
    Services(#[source] kube::Error),
    /// Any other API failure reading a ConfigMap, Secret or the Node.
    #[error("{}", api_message(.0))]
    Api(#[source] kube::Error),
}

fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Keys of an `envFrom` source the kubelet skipped because they are not valid
/// variable names; the kubelet records a Warning event
/// `InvalidEnvironmentVariableNames` with [`InvalidEnvFromKeys::event_message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidEnvFromKeys {
    /// `configMap` or `secret`.
    pub source: &'static str,
    pub namespace: String,
    pub name: String,
    /// Sorted, prefix included.
    pub keys: Vec<String>,
}

impl InvalidEnvFromKeys {
    /// The event reason the kubelet uses.
    pub const REASON: &'static str = "InvalidEnvironmentVariableNames";

    /// The event message the kubelet writes.
    pub fn event_message(&self) -> String {
        format!(
            "Keys [{}] from the EnvFrom {} {}/{} were skipped since they are considered invalid environment variable names.",
            self.keys.join(", "),
            self.source,
            self.namespace,
            self.name
        )
    }
}

/// A resolved environment and what was skipped on the way.
#[derive(Clone, Debug, Default)]
pub struct ResolvedEnv {
    /// `NAME=value` pairs: the container's own variables (envFrom then env, in
    /// the order first declared), then the service variables, sorted.
    pub vars: Vec<(String, String)>,
    pub invalid_env_from_keys: Vec<InvalidEnvFromKeys>,
}

/// The container's environment (see the module documentation).
pub async fn container_env(
    client: &kube::Client,
    ctx: &EnvContext<'_>,
    container: &Container,
) -> Result<Vec<(String, String)>, EnvError> {
    Ok(resolve_container_env(client, ctx, container).await?.vars)
}

/// An insertion-ordered map: the kubelet's `tmpEnv` (a Go map, so without an
/// order of its own; declaration order is the useful one).
#[derive(Default)]
struct OrderedEnv {
    index: HashMap<String, usize>,
    entries: Vec<(String, String)>,
}

impl OrderedEnv {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.entries[i].1.as_str())
    }
}

/// [`container_env`], also returning the `envFrom` keys that were skipped.
pub async fn resolve_container_env(
    client: &kube::Client,
    ctx: &EnvContext<'_>,
    container: &Container,
) -> Result<ResolvedEnv, EnvError> {
    let pod = ctx.pod;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let enable_service_links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let service_env = service_env(client, &namespace, enable_service_links).await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    // As the kubelet, each object is read once per container.
    let mut config_map_cache: HashMap<String, ConfigMap> = HashMap::new();
    let mut secret_cache: HashMap<String, Secret> = HashMap::new();
    let mut env = OrderedEnv::default();
    let mut invalid = Vec::new();

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or("");
        if let Some(cm_ref) = &source.config_map_ref {
            let optional = cm_ref.optional.unwrap_or(false);
            let Some(cm) = cached_get(
                &config_maps,
                &mut config_map_cache,
                &cm_ref.name,
                "configmap",
                optional,
            )
            .await?
            else {
                continue;
            };
            let mut bad = Vec::new();
            for (key, value) in cm.data.iter().flatten() {
                let name = format!("{prefix}{key}");
                if !is_env_var_name(&name) {
                    bad.push(name);
                    continue;
                }
                env.set(name, value.clone());
            }
            if !bad.is_empty() {
                bad.sort();
                invalid.push(InvalidEnvFromKeys {
                    source: "configMap",
                    namespace: namespace.clone(),
                    name: cm_ref.name.clone(),
                    keys: bad,
                });
            }
        } else if let Some(secret_ref) = &source.secret_ref {
            let optional = secret_ref.optional.unwrap_or(false);
            let Some(secret) = cached_get(
                &secrets,
                &mut secret_cache,
                &secret_ref.name,
                "secret",
                optional,
            )
            .await?
            else {
                continue;
            };
            let mut bad = Vec::new();
            for (key, value) in secret.data.iter().flatten() {
                let name = format!("{prefix}{key}");
                if !is_env_var_name(&name) {
                    bad.push(name);
                    continue;
                }
                env.set(name, String::from_utf8_lossy(&value.0).into_owned());
            }
            if !bad.is_empty() {
                bad.sort();
                invalid.push(InvalidEnvFromKeys {
                    source: "secret",
                    namespace: namespace.clone(),
                    name: secret_ref.name.clone(),
                    keys: bad,
                });
            }
        }
    }

    for var in container.env.iter().flatten() {
        let literal = var.value.as_deref().unwrap_or("");
        let value = if !literal.is_empty() {
            expand(literal, |name| {
                env.get(name)
                    .or_else(|| service_env.get(name).map(String::as_str))
                    .map(str::to_string)
            })
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                pod_field_value(field, pod, ctx.pod_ip.as_deref(), ctx.host_ip.as_deref())?
            } else if let Some(resource) = &from.resource_field_ref {
                let allocatable = NodeAllocatable::for_env(client, ctx, resource).await?;
                container_resource_value(resource, pod, Some(container), &allocatable)?
            } else if let Some(key_ref) = &from.config_map_key_ref {
                let optional = key_ref.optional.unwrap_or(false);
                let Some(cm) = cached_get(
                    &config_maps,
                    &mut config_map_cache,
                    &key_ref.name,
                    "configmap",
                    optional,
                )
                .await?
                else {
                    continue;
                };
                match cm.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                    Some(value) => value.clone(),
                    None if optional => continue,
                    None => {
                        return Err(EnvError::MissingKey {
                            kind: "ConfigMap",
                            namespace,
                            name: key_ref.name.clone(),
                            key: key_ref.key.clone(),
                        })
                    }
                }
            } else if let Some(key_ref) = &from.secret_key_ref {
                let optional = key_ref.optional.unwrap_or(false);
                let Some(secret) = cached_get(
                    &secrets,
                    &mut secret_cache,
                    &key_ref.name,
                    "secret",
                    optional,
                )
                .await?
                else {
                    continue;
                };
                match secret.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                    Some(value) => String::from_utf8_lossy(&value.0).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(EnvError::MissingKey {
                            kind: "Secret",
                            namespace,
                            name: key_ref.name.clone(),
                            key: key_ref.key.clone(),
                        })
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(var.name.clone(), value);
    }

    let mut vars = env.entries;
    let own: std::collections::HashSet<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    for (name, value) in service_env {
        if !own.contains(&name) {
            vars.push((name, value));
        }
    }
    Ok(ResolvedEnv {
        vars,
        invalid_env_from_keys: invalid,
    })
}

/// Reads a ConfigMap or Secret once per container; `None` when it is missing
/// and optional.
async fn cached_get<K>(
    api: &Api<K>,
    cache: &mut HashMap<String, K>,
    name: &str,
    kind: &'static str,
    optional: bool,
) -> Result<Option<K>, EnvError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Some(object) = cache.get(name) {
        return Ok(Some(object.clone()));
    }
    match api.get(name).await {
        Ok(object) => {
            cache.insert(name.to_string(), object.clone());
            Ok(Some(object))
        }
        Err(err) if is_not_found(&err) => {
            if optional {
                Ok(None)
            } else {
                Err(EnvError::NotFound {
                    kind,
                    name: name.to_string(),
                })
            }
        }
        Err(err) => Err(EnvError::Api(err)),
    }
}

/// `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`, the names the kubelet takes
/// from `envFrom` (others are skipped with an event).
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_') => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Kubernetes' `$(VAR)` expansion (`third_party/forked/golang/expansion`):
/// `$(NAME)` becomes the value `mapping` gives, or stays as written when it
/// gives none; `$$` is a literal `$`; any other `$` is kept as is, and so is
/// an unterminated `$(`.
pub fn expand(input: &str, mapping: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest[1..].find(')') {
                    Some(close) => {
                        let name = &rest[1..1 + close];
                        match mapping(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 2
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // The operator and the next character, kept as written.
                    let next = rest.chars().next().expect("rest is not empty");
                    out.push('$');
                    out.push(next);
                    next.len_utf8()
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// Expands `$(VAR)` references against a resolved environment (the kubelet's
/// `ExpandContainerCommandAndArgs` and `subPathExpr` use this mapping).
pub fn expand_with_env(input: &str, env: &[(String, String)]) -> String {
    expand(input, |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

/// The service link variables a pod in `namespace` sees: the `kubernetes`
/// service of `default` always, the services of its own namespace when
/// `enableServiceLinks` (those override a same-named master service).
async fn service_env(
    client: &kube::Client,
    namespace: &str,
    enable_service_links: bool,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let default_services: Api<Service> = Api::namespaced(client.clone(), "default");
    match default_services.get("kubernetes").await {
        Ok(master) => {
            services.insert("kubernetes".into(), master);
        }
        Err(err) if is_not_found(&err) => {}
        Err(err) => return Err(EnvError::Services(err)),
    }
    if enable_service_links {
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(EnvError::Services)?;
        for service in list.items {
            let name = service.metadata.name.clone().unwrap_or_default();
            services.insert(name, service);
        }
    }
    let mut env = BTreeMap::new();
    for service in services.values() {
        for (name, value) in service_link_vars(service) {
            env.insert(name, value);
        }
    }
    Ok(env)
}

fn env_var_name_of(name: &str) -> String {
    let upper = name.replace(['.', '-'], "_").to_uppercase();
    if upper.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{upper}")
    } else {
        upper
    }
}

/// The variables of one service (`envvars.FromServices`): `<NAME>_SERVICE_HOST`,
/// `<NAME>_SERVICE_PORT`, one `<NAME>_SERVICE_PORT_<PORT NAME>` per named
/// port, and the Docker link variables.
pub fn service_link_vars(service: &Service) -> Vec<(String, String)> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip.is_empty() || cluster_ip == "None" {
        return Vec::new();
    }
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = env_var_name_of(service.metadata.name.as_deref().unwrap_or(""));
    let mut vars = vec![
        (format!("{prefix}_SERVICE_HOST"), cluster_ip.to_string()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for port in ports {
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            vars.push((
                format!("{prefix}_SERVICE_PORT_{}", env_var_name_of(name)),
                port.port.to_string(),
            ));
        }
    }
    let host = if cluster_ip.contains(':') {
        format!("[{cluster_ip}]")
    } else {
        cluster_ip.to_string()
    };
    for (i, port) in ports.iter().enumerate() {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let lower = protocol.to_lowercase();
        let url = format!("{lower}://{host}:{}", port.port);
        if i == 0 {
            vars.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
        vars.push((port_prefix.clone(), url));
        vars.push((format!("{port_prefix}_PROTO"), lower));
        vars.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        vars.push((format!("{port_prefix}_ADDR"), cluster_ip.to_string()));
    }
    vars
}

/// Splits `metadata.labels['key']` into (`metadata.labels`, `key`).
pub fn split_subscripted_path(field_path: &str) -> Option<(&str, &str)> {
    let inner = field_path.strip_suffix("']")?;
    let (path, subscript) = inner.split_once("['")?;
    if path.is_empty() {
        return None;
    }
    Some((path, subscript))
}

/// `ConvertDownwardAPIFieldLabel`: the field paths a pod `fieldRef` accepts.
fn convert_field_label(field: &ObjectFieldSelector) -> Result<String, EnvError> {
    let version = field.api_version.as_deref().unwrap_or("v1");
    if version != "v1" && !version.is_empty() {
        return Err(EnvError::Field(format!(
            "unsupported pod version: {version}"
        )));
    }
    let label = field.field_path.as_str();
    if let Some((path, _)) = split_subscripted_path(label) {
        return match path {
            "metadata.annotations" | "metadata.labels" => Ok(label.to_string()),
            _ => Err(EnvError::Field(format!(
                "field label does not support subscript: {label}"
            ))),
        };
    }
    match label {
        "metadata.annotations"
        | "metadata.labels"
        | "metadata.name"
        | "metadata.namespace"
        | "metadata.uid"
        | "spec.nodeName"
        | "spec.restartPolicy"
        | "spec.serviceAccountName"
        | "spec.schedulerName"
        | "status.phase"
        | "status.hostIP"
        | "status.hostIPs"
        | "status.podIP"
        | "status.podIPs" => Ok(label.to_string()),
        "spec.host" => Ok("spec.nodeName".to_string()),
        _ => Err(EnvError::Field(format!(
            "field label not supported: {label}"
        ))),
    }
}

/// The value of a pod `fieldRef` in a container's environment
/// (`podFieldSelectorRuntimeValue`).
pub fn pod_field_value(
    field: &ObjectFieldSelector,
    pod: &Pod,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
) -> Result<String, EnvError> {
    let path = convert_field_label(field)?;
    let spec = pod.spec.as_ref();
    match path.as_str() {
        "spec.nodeName" => Ok(spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
        "spec.serviceAccountName" => Ok(spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default()),
        "status.hostIP" | "status.hostIPs" => host_ip
            .map(str::to_string)
            .ok_or_else(|| EnvError::Field("failed to get host IPs: node has no address".into())),
        "status.podIP" | "status.podIPs" => Ok(pod_ip.unwrap_or("").to_string()),
        other => extract_field_path(pod, other).map_err(EnvError::Field),
    }
}

/// `fieldpath.ExtractFieldPathAsString` for a pod: the metadata fields, the
/// label and annotation maps (formatted as [`format_map`]) and single keys of
/// them.
pub fn extract_field_path(pod: &Pod, field_path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    if let Some((path, key)) = split_subscripted_path(field_path) {
        return match path {
            "metadata.annotations" => {
                qualified_name_check(&key.to_lowercase(), field_path)?;
                Ok(annotations.get(key).cloned().unwrap_or_default())
            }
            "metadata.labels" => {
                qualified_name_check(key, field_path)?;
                Ok(labels.get(key).cloned().unwrap_or_default())
            }
            _ => Err(format!(
                "fieldPath {field_path:?} does not support subscript"
            )),
        };
    }
    match field_path {
        "metadata.annotations" => Ok(format_map(annotations)),
        "metadata.labels" => Ok(format_map(labels)),
        "metadata.name" => Ok(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Ok(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Ok(meta.uid.clone().unwrap_or_default()),
        _ => Err(format!("unsupported fieldPath: {field_path}")),
    }
}

/// `IsQualifiedName`: an optional DNS subdomain prefix and `/`, then a name
/// of at most 63 alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric.
fn qualified_name_check(key: &str, field_path: &str) -> Result<(), String> {
    let invalid =
        || format!("invalid key subscript in {field_path}: {key:?} is not a qualified name");
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// `fieldpath.FormatMap`: `key="value"` lines sorted by key, values quoted
/// as Go's `%q` does, without a trailing newline.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c == ' ' || (!c.is_control() && !c.is_whitespace() && !is_go_unprintable(c)) => {
                out.push(c)
            }
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Characters Go's `unicode.IsPrint` rejects that Rust's classes accept:
/// format characters (soft hyphen, zero-width joiners, bidi marks, BOM) and
/// the private use and surrogate ranges.
fn is_go_unprintable(c: char) -> bool {
    matches!(c as u32,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f
        | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb
        | 0xe000..=0xf8ff | 0xf0000..=0x10ffff)
}

/// The node's allocatable resources, which stand in for missing limits in the
/// downward API (`MergeContainerResourceLimits`).
#[derive(Clone, Debug, Default)]
pub struct NodeAllocatable {
    pub cpu_millis: Option<i64>,
    pub memory: Option<i64>,
    pub ephemeral_storage: Option<i64>,
}

impl NodeAllocatable {
    /// From a Node's `status.allocatable`.
    pub fn from_node(node: &Node) -> NodeAllocatable {
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let get = |name: &str| {
            allocatable
                .and_then(|a| a.get(name))
                .and_then(|q| Quantity::parse(&q.0))
        };
        NodeAllocatable {
            cpu_millis: get("cpu").map(Quantity::milli_value),
            memory: get("memory").map(Quantity::value),
            ephemeral_storage: get("ephemeral-storage").map(Quantity::value),
        }
    }

    /// Reads the pod's Node (`spec.nodeName`) through the API.
    pub async fn read(client: &kube::Client, pod: &Pod) -> Result<NodeAllocatable, kube::Error> {
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let nodes: Api<Node> = Api::all(client.clone());
        Ok(NodeAllocatable::from_node(&nodes.get(&node_name).await?))
    }

    /// For an env `resourceFieldRef`: CPU and memory from the context; the
    /// Node is read only for ephemeral storage, which the context lacks.
    async fn for_env(
        client: &kube::Client,
        ctx: &EnvContext<'_>,
        selector: &ResourceFieldSelector,
    ) -> Result<NodeAllocatable, EnvError> {
        let mut allocatable = NodeAllocatable {
            cpu_millis: Some(ctx.node_allocatable_cpu_millis),
            memory: Some(ctx.node_allocatable_memory),
            ephemeral_storage: None,
        };
        if selector.resource == "limits.ephemeral-storage" {
            let node = NodeAllocatable::read(client, ctx.pod).await.map_err(|_| {
                EnvError::Field("failed to find node object, expected a node".into())
            })?;
            allocatable.ephemeral_storage = node.ephemeral_storage;
        }
        Ok(allocatable)
    }
}

fn find_container<'p>(pod: &'p Pod, name: &str) -> Result<&'p Container, String> {
    let spec = pod.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| s.containers.iter())
        .chain(
            spec.into_iter()
                .flat_map(|s| s.init_containers.iter().flatten()),
        )
        .find(|c| c.name == name)
        .ok_or_else(|| format!("container {name} not found"))
}

/// The value of a `resourceFieldRef` (`ExtractContainerResourceValue` after
/// `MergeContainerResourceLimits`): the container's request or limit, a
/// missing or zero limit being the node's allocatable amount, divided by the
/// divisor (1 when unset or zero) and rounded up. `container` is the one the
/// selector is evaluated for when it names none.
pub fn container_resource_value(
    selector: &ResourceFieldSelector,
    pod: &Pod,
    container: Option<&Container>,
    allocatable: &NodeAllocatable,
) -> Result<String, EnvError> {
    let container = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => find_container(pod, name).map_err(EnvError::Field)?,
        None => container.ok_or_else(|| {
            EnvError::Field(format!(
                "resource {} needs a containerName",
                selector.resource
            ))
        })?,
    };
    let divisor = selector
        .divisor
        .as_ref()
        .and_then(|q| Quantity::parse(&q.0))
        .filter(|q| q.as_f64() != 0.0)
        .unwrap_or_else(|| Quantity::parse("1").expect("1 is a quantity"));
    let resources = container.resources.as_ref();
    let quantity = |list: Option<&BTreeMap<String, ApiQuantity>>, name: &str| {
        list.and_then(|l| l.get(name))
            .and_then(|q| Quantity::parse(&q.0))
            .filter(|q| q.as_f64() != 0.0)
    };
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let ceil_div = |value: i64, by: i64| -> String {
        if by == 0 {
            return "0".into();
        }
        ((value as f64) / (by as f64)).ceil().to_string()
    };
    let cpu = |q: Option<Quantity>, default: Option<i64>| {
        let millis = q.map(Quantity::milli_value).or(default).unwrap_or(0);
        ceil_div(millis, divisor.milli_value())
    };
    let bytes = |q: Option<Quantity>, default: Option<i64>| {
        let value = q.map(Quantity::value).or(default).unwrap_or(0);
        ceil_div(value, divisor.value())
    };
    match selector.resource.as_str() {
        "limits.cpu" => Ok(cpu(quantity(limits, "cpu"), allocatable.cpu_millis)),
        "limits.memory" => Ok(bytes(quantity(limits, "memory"), allocatable.memory)),
        "limits.ephemeral-storage" => Ok(bytes(
            quantity(limits, "ephemeral-storage"),
            allocatable.ephemeral_storage,
        )),
        "requests.cpu" => Ok(cpu(quantity(requests, "cpu"), None)),
        "requests.memory" => Ok(bytes(quantity(requests, "memory"), None)),
        "requests.ephemeral-storage" => Ok(bytes(quantity(requests, "ephemeral-storage"), None)),
        other => {
            if let Some(name) = other
                .strip_prefix("requests.")
                .filter(|n| n.starts_with("hugepages-"))
            {
                return Ok(bytes(quantity(requests, name), None));
            }
            if let Some(name) = other
                .strip_prefix("limits.")
                .filter(|n| n.starts_with("hugepages-"))
            {
                return Ok(bytes(quantity(limits, name), None));
            }
            Err(EnvError::Field(format!(
                "unsupported container resource : {other}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::testing::TestApi;
    use serde_json::json;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let mapping = vars(&[("VAR_A", "A"), ("VAR_B", "B"), ("EMPTY", "")]);
        for (input, want) in [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("$(VAR_A)$(VAR_B)", "AB"),
            ("$(EMPTY)x", "x"),
            ("$$(VAR_B)", "$(VAR_B)"),
            ("$$$$", "$$"),
            ("$$$(VAR_A)", "$A"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$(VAR_A", "$(VAR_A"),
            ("$(", "$("),
            ("$", "$"),
            ("foo$", "foo$"),
            ("$VAR_A", "$VAR_A"),
            ("$é$(VAR_A)", "$éA"),
            ("$()", "$()"),
            ("no refs", "no refs"),
        ] {
            assert_eq!(expand(input, &mapping), want, "{input:?}");
        }
    }

    #[test]
    fn names_quotes_and_maps() {
        for good in ["A", "a_b", "_x", "-dash", ".dot", "A1"] {
            assert!(is_env_var_name(good), "{good}");
        }
        for bad in ["", "1badkey", "2alsobad", "a b", "a=b", "ä"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(go_quote("a\"b\\c\n\t"), "\"a\\\"b\\\\c\\n\\t\"");
        assert_eq!(go_quote("\x01é\u{a0}"), "\"\\x01é\\u00a0\"");
        let map = BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]);
        assert_eq!(format_map(&map), "a=\"1\"\nb=\"2\"");
        assert_eq!(format_map(&BTreeMap::new()), "");
    }

    #[test]
    fn service_links() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "my-svc.x"},
            "spec": {"clusterIP": "10.0.0.11", "ports": [
                {"port": 80, "name": "http"}, {"port": 53, "protocol": "UDP", "name": "dns"}]}
        }))
        .unwrap();
        let vars: BTreeMap<String, String> = service_link_vars(&service).into_iter().collect();
        let want = BTreeMap::from(
            [
                ("MY_SVC_X_SERVICE_HOST", "10.0.0.11"),
                ("MY_SVC_X_SERVICE_PORT", "80"),
                ("MY_SVC_X_SERVICE_PORT_HTTP", "80"),
                ("MY_SVC_X_SERVICE_PORT_DNS", "53"),
                ("MY_SVC_X_PORT", "tcp://10.0.0.11:80"),
                ("MY_SVC_X_PORT_80_TCP", "tcp://10.0.0.11:80"),
                ("MY_SVC_X_PORT_80_TCP_PROTO", "tcp"),
                ("MY_SVC_X_PORT_80_TCP_PORT", "80"),
                ("MY_SVC_X_PORT_80_TCP_ADDR", "10.0.0.11"),
                ("MY_SVC_X_PORT_53_UDP", "udp://10.0.0.11:53"),
                ("MY_SVC_X_PORT_53_UDP_PROTO", "udp"),
                ("MY_SVC_X_PORT_53_UDP_PORT", "53"),
                ("MY_SVC_X_PORT_53_UDP_ADDR", "10.0.0.11"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        assert_eq!(vars, want);
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }))
        .unwrap();
        assert!(service_link_vars(&headless).is_empty());
        let numeric: Service = serde_json::from_value(json!({
            "metadata": {"name": "9lives"}, "spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 1}]}
        }))
        .unwrap();
        assert_eq!(service_link_vars(&numeric)[0].0, "_9LIVES_SERVICE_HOST");
    }

    #[test]
    fn field_paths() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                "labels": {"app": "web"}, "annotations": {"example.com/build": "42"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": []}
        }))
        .unwrap();
        let field = |path: &str| ObjectFieldSelector {
            api_version: Some("v1".into()),
            field_path: path.into(),
        };
        let value = |path: &str| {
            pod_field_value(&field(path), &pod, Some("10.42.0.5"), Some("192.168.1.2"))
        };
        assert_eq!(value("metadata.name").unwrap(), "p");
        assert_eq!(value("metadata.namespace").unwrap(), "ns");
        assert_eq!(value("metadata.uid").unwrap(), "u");
        assert_eq!(value("metadata.labels['app']").unwrap(), "web");
        assert_eq!(value("metadata.labels['missing']").unwrap(), "");
        assert_eq!(
            value("metadata.annotations['example.com/build']").unwrap(),
            "42"
        );
        assert_eq!(value("metadata.labels").unwrap(), "app=\"web\"");
        assert_eq!(value("spec.nodeName").unwrap(), "n1");
        assert_eq!(value("spec.host").unwrap(), "n1");
        assert_eq!(value("spec.serviceAccountName").unwrap(), "sa");
        assert_eq!(value("status.podIP").unwrap(), "10.42.0.5");
        assert_eq!(value("status.podIPs").unwrap(), "10.42.0.5");
        assert_eq!(value("status.hostIP").unwrap(), "192.168.1.2");
        assert_eq!(
            value("spec.containers").unwrap_err().to_string(),
            "field label not supported: spec.containers"
        );
        assert_eq!(
            value("status.phase").unwrap_err().to_string(),
            "unsupported fieldPath: status.phase"
        );
        assert_eq!(
            value("metadata.name['x']").unwrap_err().to_string(),
            "field label does not support subscript: metadata.name['x']"
        );
        assert!(value("metadata.labels['-bad-']").is_err());
        let v2 = ObjectFieldSelector {
            api_version: Some("v2".into()),
            field_path: "metadata.name".into(),
        };
        assert_eq!(
            pod_field_value(&v2, &pod, None, None)
                .unwrap_err()
                .to_string(),
            "unsupported pod version: v2"
        );
    }

    #[test]
    fn resource_values_round_up_and_default_to_allocatable() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"},
                    "requests": {"memory": "1000", "hugepages-2Mi": "4Mi"}}},
                {"name": "free"}],
                "initContainers": [{"name": "init", "resources": {"limits": {"cpu": "2"}}}]}
        }))
        .unwrap();
        let allocatable = NodeAllocatable {
            cpu_millis: Some(3500),
            memory: Some(8 << 30),
            ephemeral_storage: Some(100 << 30),
        };
        let value = |container: &str, resource: &str, divisor: Option<&str>| {
            let selector: ResourceFieldSelector = serde_json::from_value(json!({
                "containerName": container, "resource": resource, "divisor": divisor
            }))
            .unwrap();
            container_resource_value(&selector, &pod, None, &allocatable).map_err(|e| e.to_string())
        };
        assert_eq!(value("c", "limits.memory", None).unwrap(), "67108864");
        assert_eq!(value("c", "limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(value("c", "limits.memory", Some("1G")).unwrap(), "1");
        assert_eq!(value("c", "limits.cpu", None).unwrap(), "1");
        assert_eq!(value("c", "limits.cpu", Some("1m")).unwrap(), "250");
        assert_eq!(value("c", "requests.memory", Some("1Ki")).unwrap(), "1");
        assert_eq!(value("c", "requests.cpu", None).unwrap(), "0");
        assert_eq!(
            value("c", "requests.hugepages-2Mi", Some("1Mi")).unwrap(),
            "4"
        );
        assert_eq!(value("free", "limits.cpu", Some("1m")).unwrap(), "3500");
        assert_eq!(value("free", "limits.memory", Some("1Gi")).unwrap(), "8");
        assert_eq!(
            value("free", "limits.ephemeral-storage", Some("1Gi")).unwrap(),
            "100"
        );
        assert_eq!(value("init", "limits.cpu", None).unwrap(), "2");
        assert_eq!(
            value("nope", "limits.cpu", None).unwrap_err(),
            "container nope not found"
        );
        assert_eq!(
            value("c", "limits.gpu", None).unwrap_err(),
            "unsupported container resource : limits.gpu"
        );
    }

    async fn cluster() -> TestApi {
        let api = TestApi::start().await;
        api.namespace("app").await;
        let _: ConfigMap = api
            .create(
                "app",
                json!({"metadata": {"name": "app-config"},
                    "data": {"mode": "fast", "level": "3", "1badkey": "x", "dotted.key": "y"}}),
            )
            .await;
        let _: Secret = api
            .create(
                "app",
                json!({"metadata": {"name": "app-secret"},
                    "stringData": {"token": "s3cret", "2alsobad": "z"}}),
            )
            .await;
        // `default/kubernetes` (10.43.0.1:443) is the API server's own.
        let _: Service = api
            .create(
                "app",
                json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "10.43.0.20",
                    "ports": [{"port": 5432}]}}),
            )
            .await;
        api
    }

    fn app_pod(enable_service_links: Option<bool>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "config", "namespace": "app", "uid": "uid-9", "labels": {"tier": "backend"}},
            "spec": {"nodeName": "node-1", "enableServiceLinks": enable_service_links, "containers": [{"name": "c"}]}
        }))
        .unwrap()
    }

    fn ctx(pod: &Pod) -> EnvContext<'_> {
        EnvContext {
            pod,
            pod_ip: Some("10.42.0.7".into()),
            host_ip: Some("192.168.1.2".into()),
            node_allocatable_cpu_millis: 2000,
            node_allocatable_memory: 4 << 30,
        }
    }

    #[tokio::test]
    async fn resolves_every_source_in_kubelet_order() {
        let api = cluster().await;
        let pod = app_pod(None);
        let container: Container = serde_json::from_value(json!({
            "name": "c",
            "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "app-config"}},
                        {"secretRef": {"name": "app-secret"}},
                        {"configMapRef": {"name": "absent", "optional": true}}],
            "env": [
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "mode"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "token"}}},
                {"name": "MY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MY_MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
                {"name": "GREETING", "value": "$(MY_POD_NAME) in $(MODE) mode, $(LATER) $$(MODE)"},
                {"name": "LATER", "value": "later"},
                {"name": "DB", "value": "$(DB_SERVICE_HOST):$(DB_SERVICE_PORT)"},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "nope", "optional": true}}},
                {"name": "CFG_level", "value": "override"},
                {"name": "EMPTY"}
            ]
        }))
        .unwrap();
        let resolved = resolve_container_env(&api.client, &ctx(&pod), &container)
            .await
            .unwrap();
        let env: BTreeMap<String, String> = resolved.vars.iter().cloned().collect();
        assert_eq!(env.len(), resolved.vars.len(), "no duplicates");
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("MODE"), Some("fast"));
        assert_eq!(get("TOKEN"), Some("s3cret"));
        assert_eq!(get("MY_POD_NAME"), Some("config"));
        assert_eq!(get("MY_POD_IP"), Some("10.42.0.7"));
        // No memory limit: the node's allocatable memory.
        assert_eq!(get("MY_MEM_LIMIT"), Some("4294967296"));
        assert_eq!(
            get("GREETING"),
            Some("config in fast mode, $(LATER) $(MODE)")
        );
        assert_eq!(get("DB"), Some("10.43.0.20:5432"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("CFG_mode"), Some("fast"));
        // env overrides envFrom.
        assert_eq!(get("CFG_level"), Some("override"));
        assert_eq!(get("CFG_dotted.key"), Some("y"));
        assert_eq!(get("token"), Some("s3cret"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.43.0.1:443"));
        assert_eq!(get("DB_PORT_5432_TCP_ADDR"), Some("10.43.0.20"));
        // The container's own variables come first, in declaration order.
        // (With the prefix, `1badkey` is a valid name.)
        assert_eq!(resolved.vars[0].0, "CFG_1badkey");
        let names: Vec<&str> = resolved.vars.iter().map(|(k, _)| k.as_str()).collect();
        let pos = |k: &str| names.iter().position(|n| *n == k).unwrap();
        assert!(pos("MODE") < pos("TOKEN") && pos("TOKEN") < pos("KUBERNETES_SERVICE_HOST"));

        // The secret's invalid key was skipped, with the kubelet's event message.
        assert_eq!(resolved.invalid_env_from_keys.len(), 1);
        assert_eq!(
            resolved.invalid_env_from_keys[0].event_message(),
            "Keys [2alsobad] from the EnvFrom secret app/app-secret were skipped since they are considered invalid environment variable names."
        );

        // enableServiceLinks: false keeps only the master service.
        let pod = app_pod(Some(false));
        let env = container_env(&api.client, &ctx(&pod), &container)
            .await
            .unwrap();
        assert!(env.iter().any(|(k, _)| k == "KUBERNETES_SERVICE_HOST"));
        assert!(!env.iter().any(|(k, _)| k == "DB_SERVICE_HOST"));
        let db = env.iter().find(|(k, _)| k == "DB").unwrap();
        assert_eq!(db.1, "$(DB_SERVICE_HOST):$(DB_SERVICE_PORT)");
    }

    #[tokio::test]
    async fn errors_are_worded_as_the_kubelet_words_them() {
        let api = cluster().await;
        let pod = app_pod(None);
        let cases = [
            (
                json!({"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}}]}),
                "configmap \"x\" not found",
            ),
            (
                json!({"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "y"}}}]}),
                "couldn't find key y in ConfigMap app/app-config",
            ),
            (
                json!({"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
                "secret \"s\" not found",
            ),
            (
                json!({"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "k"}}}]}),
                "couldn't find key k in Secret app/app-secret",
            ),
            (
                json!({"name": "c", "envFrom": [{"secretRef": {"name": "gone"}}]}),
                "secret \"gone\" not found",
            ),
            (
                json!({"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}]}),
                "field label not supported: spec.containers",
            ),
        ];
        for (container, want) in cases {
            let container: Container = serde_json::from_value(container).unwrap();
            let err = container_env(&api.client, &ctx(&pod), &container)
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        // Optional references to missing objects and keys are skipped.
        let container: Container = serde_json::from_value(json!({"name": "c", "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": true}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "k", "optional": true}}}]}))
        .unwrap();
        let env = container_env(&api.client, &ctx(&pod), &container)
            .await
            .unwrap();
        assert!(!env.iter().any(|(k, _)| k == "A" || k == "B"));
    }
}
