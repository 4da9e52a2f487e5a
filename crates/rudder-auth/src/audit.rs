//! Auditing, as kube-apiserver does it: an `audit.k8s.io/v1` [`Policy`]
//! decides how much of each request is recorded, an [`Event`] is one record
//! (one JSON line), and [`AuditLog`] appends them to a file that rotates by
//! size the way kube-apiserver's log backend does.
//!
//! The API server asks [`Policy::config_for`] once per request, builds an
//! [`Event`] from the request's [`Attributes`], fills it as the request goes
//! (authorization decision, bodies, response status) and writes it at each
//! stage with [`AuditLog::write`], which drops what the policy omits.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authorizer::{Attributes, Decision};
use crate::user::UserInfo;

pub const API_VERSION: &str = "audit.k8s.io/v1";

/// How much of a request is recorded. Ordered: each level records what the
/// previous ones do and more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Nothing.
    #[default]
    None,
    /// Who did what to which object, and the answer; no bodies.
    Metadata,
    /// Metadata and the request body.
    Request,
    /// Metadata and both bodies.
    RequestResponse,
}

/// When in a request's life an event is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// As soon as the request arrives, before it is handled.
    RequestReceived,
    /// Long-running requests (watch, exec): the response headers are sent.
    ResponseStarted,
    /// The response is complete.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

// ---- the policy ----

/// Why a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the audit policy {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the audit policy is invalid: {0}")]
    Invalid(String),
}

/// An `audit.k8s.io/v1` `Policy`. Rules are tried in order; the first that
/// matches gives the level; a request no rule matches is not recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// Stages no request records, whatever its rule.
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    /// Drop `metadata.managedFields` from recorded bodies.
    #[serde(default)]
    pub omit_managed_fields: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub level: Level,
    /// User names; empty matches every user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups, any of which the user must be in; empty matches everyone.
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Resource requests only: any of these.
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    /// Resource requests only: in these namespaces (`""` for cluster-scoped
    /// objects).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Other requests only: exact paths, or prefixes ending in `*`.
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    /// Overrides the policy's `omitManagedFields` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_managed_fields: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResources {
    /// The API group, `""` for the core group.
    #[serde(default)]
    pub group: String,
    /// `pods`, `pods/log`, `*` (everything), `*/status` (a subresource of
    /// any resource), `pods/*` (pods and all its subresources). Empty:
    /// every resource of the group.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Object names; empty matches every name.
    #[serde(default)]
    pub resource_names: Vec<String>,
}

/// What the policy says about one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestAuditConfig {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl RequestAuditConfig {
    /// Whether an event at `stage` is written.
    pub fn records(&self, stage: Stage) -> bool {
        self.level > Level::None && !self.omit_stages.contains(&stage)
    }
}

/// The policy used when none is configured. Everything is recorded at
/// `Metadata` (who, what, the answer; never a body), except:
/// * nothing for `get` on the health and version endpoints (`/healthz*`,
///   `/readyz*`, `/livez*`, `/version`), which probes call constantly;
/// * nothing for Events (core and `events.k8s.io`), which are themselves a
///   record and the busiest writes of a cluster;
/// * Secrets, ConfigMaps and TokenReviews are named explicitly at
///   `Metadata`, so that editing the catch-all never logs their bodies.
///
/// The `RequestReceived` stage is omitted: the `ResponseComplete` event
/// carries everything it would, plus the answer.
pub const DEFAULT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  verbs: ["get"]
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version"]
- level: None
  resources:
  - group: ""
    resources: ["events"]
  - group: "events.k8s.io"
    resources: ["events"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "configmaps"]
  - group: "authentication.k8s.io"
    resources: ["tokenreviews"]
- level: Metadata
"#;

impl Policy {
    /// Parses a policy (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy =
            serde_yaml::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        if policy.api_version != API_VERSION || policy.kind != "Policy" {
            return Err(PolicyError::Invalid(format!(
                "expected apiVersion {API_VERSION:?} and kind \"Policy\", found {:?} and {:?}",
                policy.api_version, policy.kind
            )));
        }
        Ok(policy)
    }

    /// Reads a policy file (`--audit-policy-file`).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// [`DEFAULT_POLICY`].
    pub fn default_policy() -> Self {
        Self::parse(DEFAULT_POLICY).expect("the default policy parses")
    }

    /// The level and the omitted stages for a request.
    pub fn level_for(&self, attrs: &Attributes) -> (Level, Vec<Stage>) {
        let config = self.config_for(attrs);
        (config.level, config.omit_stages)
    }

    /// Everything the policy says about a request.
    pub fn config_for(&self, attrs: &Attributes) -> RequestAuditConfig {
        let Some(rule) = self.rules.iter().find(|rule| rule.matches(attrs)) else {
            return RequestAuditConfig {
                level: Level::None,
                omit_stages: self.omit_stages.clone(),
                omit_managed_fields: self.omit_managed_fields,
            };
        };
        let mut omit_stages = self.omit_stages.clone();
        for stage in &rule.omit_stages {
            if !omit_stages.contains(stage) {
                omit_stages.push(*stage);
            }
        }
        RequestAuditConfig {
            level: rule.level,
            omit_stages,
            omit_managed_fields: rule.omit_managed_fields.unwrap_or(self.omit_managed_fields),
        }
    }
}

impl PolicyRule {
    fn matches(&self, attrs: &Attributes) -> bool {
        if !self.users.is_empty() && !self.users.contains(&attrs.user.username) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !attrs
                .user
                .groups
                .iter()
                .any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&attrs.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(attrs);
        }
        if !self.non_resource_urls.is_empty() {
            return !attrs.resource_request
                && self
                    .non_resource_urls
                    .iter()
                    .any(|url| path_matches(url, &attrs.path));
        }
        true
    }

    fn matches_resource(&self, attrs: &Attributes) -> bool {
        if !attrs.resource_request {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&attrs.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = attrs.resource_and_subresource();
        self.resources.iter().any(|gr| {
            if gr.group != attrs.api_group {
                return false;
            }
            if gr.resources.is_empty() {
                return true;
            }
            if !gr.resource_names.is_empty() && !gr.resource_names.contains(&attrs.name) {
                return false;
            }
            gr.resources.iter().any(|res| {
                res == "*"
                    || *res == combined
                    || res.strip_prefix("*/").is_some_and(|sub| {
                        !attrs.subresource.is_empty() && sub == attrs.subresource
                    })
                    || res
                        .strip_suffix("/*")
                        .is_some_and(|resource| resource == attrs.resource)
            })
        })
    }
}

/// A `nonResourceURLs` entry: exact, or a prefix when it ends in `*`.
fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

// ---- events ----

/// The object a request is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The answer, as a `metav1.Status` (only its summary fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// Always `{}`, as kube-apiserver writes it.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ResponseStatus {
    /// A status from the HTTP code alone (successes).
    pub fn code(code: u16) -> Self {
        ResponseStatus {
            code,
            ..Default::default()
        }
    }

    /// The summary of a `metav1.Status` the server answered with (errors).
    pub fn from_status(code: u16, status: &Value) -> Self {
        let text = |field: &str| status.get(field).and_then(Value::as_str).map(String::from);
        ResponseStatus {
            code,
            status: text("status"),
            reason: text("reason").filter(|r| !r.is_empty()),
            message: text("message").filter(|m| !m.is_empty()),
            ..Default::default()
        }
    }
}

/// Annotation keys kube-apiserver's authorization filter sets.
pub const DECISION_ANNOTATION: &str = "authorization.k8s.io/decision";
pub const REASON_ANNOTATION: &str = "authorization.k8s.io/reason";

/// One `audit.k8s.io/v1` `Event`. Built once per request with
/// [`Event::new`], filled as the request proceeds, and written at each stage
/// (a copy per stage, with [`Event::at_stage`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    kind: &'static str,
    api_version: &'static str,
    pub level: Level,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: Stage,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    pub user: UserInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<UserInfo>,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Value>,
    #[serde(serialize_with = "micro_time")]
    pub request_received_timestamp: jiff::Timestamp,
    #[serde(serialize_with = "micro_time")]
    pub stage_timestamp: jiff::Timestamp,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// What the policy said, to keep bodies and stages it omits out.
    #[serde(skip)]
    config: RequestAuditConfig,
}

/// Kubernetes' `metav1.MicroTime`: RFC 3339 in UTC with microseconds.
fn micro_time<S: serde::Serializer>(ts: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_micro_time(*ts))
}

pub fn format_micro_time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Event {
    /// The `RequestReceived` event of a request, with a new audit ID. The
    /// user is the authenticated one; for an impersonated request, pass the
    /// attributes of the impersonated user and set
    /// [`Event::impersonated_user`] with [`Event::impersonating`].
    pub fn new(config: RequestAuditConfig, attrs: &Attributes, request_uri: &str) -> Self {
        let now = jiff::Timestamp::now();
        let object_ref = attrs.resource_request.then(|| ObjectReference {
            resource: attrs.resource.clone(),
            namespace: attrs.namespace.clone(),
            name: attrs.name.clone(),
            api_group: attrs.api_group.clone(),
            api_version: attrs.api_version.clone(),
            subresource: attrs.subresource.clone(),
            ..Default::default()
        });
        Event {
            kind: "Event",
            api_version: API_VERSION,
            level: config.level,
            audit_id: uuid::Uuid::new_v4().to_string(),
            stage: Stage::RequestReceived,
            request_uri: request_uri.to_string(),
            verb: attrs.verb.clone(),
            user: attrs.user.clone(),
            impersonated_user: None,
            source_ips: Vec::new(),
            user_agent: String::new(),
            object_ref,
            response_status: None,
            request_object: None,
            response_object: None,
            request_received_timestamp: now,
            stage_timestamp: now,
            annotations: BTreeMap::new(),
            config,
        }
    }

    /// Uses the audit ID the client sent (`Audit-ID` header), as
    /// kube-apiserver does.
    pub fn with_audit_id(mut self, id: impl Into<String>) -> Self {
        self.audit_id = id.into();
        self
    }

    /// The client's address first, then the `X-Forwarded-For` chain.
    pub fn with_source_ips(mut self, ips: impl IntoIterator<Item = String>) -> Self {
        self.source_ips = ips.into_iter().collect();
        self
    }

    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// An impersonated request: `user` is who authenticated, `as_user` whom
    /// they act as.
    pub fn impersonating(mut self, user: UserInfo, as_user: UserInfo) -> Self {
        self.user = user;
        self.impersonated_user = Some(as_user);
        self
    }

    /// Records the authorizer's answer as kube-apiserver's annotations.
    pub fn authorized(&mut self, decision: &Decision) {
        let verdict = if decision.allowed() {
            "allow"
        } else {
            "forbid"
        };
        self.annotate(DECISION_ANNOTATION, verdict);
        if !decision.reason().is_empty() {
            self.annotate(REASON_ANNOTATION, decision.reason());
        }
    }

    pub fn annotate(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.annotations.insert(key.into(), value.into());
    }

    /// The request body, kept from level `Request` on.
    pub fn set_request_object(&mut self, body: Value) {
        if self.level >= Level::Request {
            self.request_object = Some(self.trimmed(body));
        }
    }

    /// The response body, kept at level `RequestResponse`.
    pub fn set_response_object(&mut self, body: Value) {
        if self.level >= Level::RequestResponse {
            self.response_object = Some(self.trimmed(body));
        }
    }

    /// Fills in the object's UID and resource version once known.
    pub fn set_object_identity(&mut self, uid: &str, resource_version: &str) {
        if let Some(object_ref) = &mut self.object_ref {
            object_ref.uid = uid.to_string();
            object_ref.resource_version = resource_version.to_string();
        }
    }

    pub fn set_response_status(&mut self, status: ResponseStatus) {
        self.response_status = Some(status);
    }

    /// A copy of this event at a later stage, stamped now.
    pub fn at_stage(&self, stage: Stage) -> Event {
        let mut event = self.clone();
        event.stage = stage;
        event.stage_timestamp = jiff::Timestamp::now();
        if stage == Stage::RequestReceived {
            event.response_status = None;
            event.response_object = None;
        }
        event
    }

    /// Whether the policy records this event (level above `None`, stage not
    /// omitted).
    pub fn should_record(&self) -> bool {
        self.config.records(self.stage)
    }

    /// The event as one JSON line, newline included.
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("audit events serialize");
        line.push(b'\n');
        line
    }

    fn trimmed(&self, mut body: Value) -> Value {
        if self.config.omit_managed_fields {
            strip_managed_fields(&mut body);
        }
        body
    }
}

/// Removes `metadata.managedFields` from an object, or from each item of a
/// list.
fn strip_managed_fields(body: &mut Value) {
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    if let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            strip_managed_fields(item);
        }
    }
}

// ---- the log file ----

/// kube-apiserver's `--audit-log-maxsize` default in Rudder: rotate at 100 MB.
pub const DEFAULT_MAX_SIZE_MB: u64 = 100;
/// `--audit-log-maxbackup`: rotated files kept.
pub const DEFAULT_MAX_BACKUPS: usize = 10;

/// An append-only JSON-lines audit log that rotates by size, naming old
/// files `<name>-<UTC time>.<ext>` (`audit-2024-05-01T10-00-00.000.log`)
/// as kube-apiserver's log backend (lumberjack) does, and keeping the newest
/// `max_backups` of them.
///
/// Each event is formatted before taking the lock and written with one
/// `write` call on an unbuffered file: a line is in the kernel as soon as
/// [`AuditLog::write`] returns, so a crash of the server loses nothing
/// written (a crash of the machine loses what the OS had not synced).
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    max_backups: usize,
    file: Mutex<OpenFile>,
}

struct OpenFile {
    file: File,
    size: u64,
}

impl AuditLog {
    /// Opens (appending to) or creates the log at `path`, mode 0600. A
    /// `max_size_mb` of 0 means [`DEFAULT_MAX_SIZE_MB`]; a `max_backups` of
    /// 0 keeps every rotated file.
    pub fn open(
        path: impl Into<PathBuf>,
        max_size_mb: u64,
        max_backups: usize,
    ) -> io::Result<Self> {
        let max_size_mb = if max_size_mb == 0 {
            DEFAULT_MAX_SIZE_MB
        } else {
            max_size_mb
        };
        Self::open_with_max_bytes(path.into(), max_size_mb * 1024 * 1024, max_backups)
    }

    fn open_with_max_bytes(path: PathBuf, max_bytes: u64, max_backups: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(AuditLog {
            path,
            max_bytes,
            max_backups,
            file: Mutex::new(OpenFile { file, size }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the event as one line, unless the policy omits it
    /// ([`Event::should_record`]). Rotates first when the line would take
    /// the file past its maximum size.
    pub fn write(&self, event: &Event) -> io::Result<()> {
        if !event.should_record() {
            return Ok(());
        }
        self.write_line(&event.to_json_line())
    }

    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut open = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if open.size > 0 && open.size + line.len() as u64 > self.max_bytes {
            self.rotate(&mut open)?;
        }
        open.file.write_all(line)?;
        open.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&self, open: &mut OpenFile) -> io::Result<()> {
        let (stem, ext) = split_name(&self.path);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut time = jiff::Timestamp::now();
        let backup = loop {
            let stamp = time.strftime("%Y-%m-%dT%H-%M-%S%.3f").to_string();
            let candidate = dir.join(format!("{stem}-{stamp}{ext}"));
            if !candidate.exists() {
                break candidate;
            }
            // Two rotations within a millisecond: take the next one.
            time = time
                .checked_add(jiff::SignedDuration::from_millis(1))
                .expect("timestamps in range");
        };
        std::fs::rename(&self.path, &backup)?;
        open.file = open_append(&self.path)?;
        open.size = 0;
        if self.max_backups > 0 {
            let mut backups = self.backups()?;
            backups.sort();
            let excess = backups.len().saturating_sub(self.max_backups);
            for old in &backups[..excess] {
                std::fs::remove_file(old)?;
            }
        }
        Ok(())
    }

    /// The rotated files, oldest first once sorted (their names sort by
    /// time).
    pub fn backups(&self) -> io::Result<Vec<PathBuf>> {
        let (stem, ext) = split_name(&self.path);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let prefix = format!("{stem}-");
        let mut backups = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stamp) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(&ext))
            else {
                continue;
            };
            if jiff::civil::DateTime::strptime("%Y-%m-%dT%H-%M-%S%.f", stamp).is_ok() {
                backups.push(path);
            }
        }
        backups.sort();
        Ok(backups)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `audit.log` → (`audit`, `.log`); `audit` → (`audit`, ``).
fn split_name(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::{AUTHENTICATED, MASTERS};
    use serde_json::json;

    /// The example policy of the Kubernetes auditing documentation.
    const UPSTREAM_EXAMPLE: &str = include_str!("testdata/audit-policy.yaml");

    fn resource(
        user: &str,
        verb: &str,
        group: &str,
        res: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        let (resource, subresource) = res.split_once('/').unwrap_or((res, ""));
        Attributes {
            user: UserInfo::authenticated(user, &[]),
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn path(user: &str, verb: &str, path: &str) -> Attributes {
        Attributes {
            user: UserInfo::authenticated(user, &[]),
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_upstream_example_policy_parses() {
        let policy = Policy::parse(UPSTREAM_EXAMPLE).unwrap();
        assert_eq!(policy.omit_stages, vec![Stage::RequestReceived]);
        assert_eq!(policy.rules.len(), 9);
        assert_eq!(policy.rules[0].level, Level::RequestResponse);
        assert_eq!(
            policy.rules[2].resources[0].resource_names,
            ["controller-leader"]
        );
        assert_eq!(policy.rules[4].non_resource_urls, ["/api*", "/version"]);
        assert_eq!(policy.rules[4].user_groups, [AUTHENTICATED]);
        assert_eq!(policy.rules[5].namespaces, ["kube-system"]);
        assert_eq!(policy.rules[7].resources[1].group, "extensions");
        assert_eq!(policy.rules[8].omit_stages, vec![Stage::RequestReceived]);
    }

    #[test]
    fn the_first_matching_rule_of_the_upstream_example_gives_the_level() {
        let policy = Policy::parse(UPSTREAM_EXAMPLE).unwrap();
        let mut proxy_watch = resource("system:kube-proxy", "watch", "", "endpoints", "", "");
        proxy_watch.user.groups.clear();
        let mut anonymous_api = path("system:anonymous", "get", "/apis");
        anonymous_api.user.groups = vec!["system:unauthenticated".into()];
        let table = [
            (
                resource("alice", "create", "", "pods", "ns", "p"),
                Level::RequestResponse,
            ),
            (
                resource("alice", "get", "", "pods/log", "ns", "p"),
                Level::Metadata,
            ),
            (
                resource("alice", "patch", "", "pods/status", "ns", "p"),
                Level::Metadata,
            ),
            // "pods" does not match subresources; the core-group rule does.
            (
                resource("alice", "create", "", "pods/exec", "ns", "p"),
                Level::Request,
            ),
            (
                resource(
                    "alice",
                    "update",
                    "",
                    "configmaps",
                    "kube-system",
                    "controller-leader",
                ),
                Level::None,
            ),
            (
                resource("alice", "update", "", "configmaps", "kube-system", "other"),
                Level::Request,
            ),
            (
                resource("alice", "update", "", "configmaps", "default", "other"),
                Level::Metadata,
            ),
            (
                resource("alice", "get", "", "secrets", "kube-system", "s"),
                Level::Metadata,
            ),
            (proxy_watch, Level::None),
            (
                resource("system:kube-proxy", "list", "", "endpoints", "", ""),
                Level::Request,
            ),
            (path("alice", "get", "/api/v1"), Level::None),
            (path("alice", "get", "/version"), Level::None),
            (anonymous_api, Level::Metadata),
            (path("alice", "get", "/healthz"), Level::Metadata),
            (
                resource("alice", "create", "extensions", "ingresses", "ns", "i"),
                Level::Request,
            ),
            (
                resource("alice", "create", "apps", "deployments", "ns", "d"),
                Level::Metadata,
            ),
        ];
        for (attrs, want) in table {
            assert_eq!(policy.level_for(&attrs).0, want, "{attrs:?}");
        }
        let (_, omit) = policy.level_for(&resource("a", "get", "apps", "deployments", "", ""));
        assert_eq!(
            omit,
            vec![Stage::RequestReceived],
            "merged, without repeats"
        );
    }

    #[test]
    fn resource_patterns_match_as_kubernetes_matches_them() {
        let rule = |resources: &[&str], names: &[&str]| Policy {
            api_version: API_VERSION.into(),
            kind: "Policy".into(),
            rules: vec![PolicyRule {
                level: Level::Request,
                resources: vec![GroupResources {
                    group: "".into(),
                    resources: resources.iter().map(|r| r.to_string()).collect(),
                    resource_names: names.iter().map(|r| r.to_string()).collect(),
                }],
                ..Default::default()
            }],
            omit_stages: vec![],
            omit_managed_fields: false,
        };
        // (rule resources, rule resource names, requested resource, name, matches)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a str, &'a str, bool);
        let table: &[Case] = &[
            (&["*"], &[], "pods/log", "", true),
            (&["*/status"], &[], "pods/status", "", true),
            (&["*/status"], &[], "pods", "", false),
            (&["pods/*"], &[], "pods/exec", "", true),
            (&["pods/*"], &[], "pods", "", true),
            (&["pods/*"], &[], "podtemplates", "", false),
            (&["pods"], &["web"], "pods", "web", true),
            (&["pods"], &["web"], "pods", "db", false),
            (&[], &[], "anything", "", true),
        ];
        for (resources, names, res, name, want) in table {
            let policy = rule(resources, names);
            let got = policy
                .level_for(&resource("a", "get", "", res, "ns", name))
                .0
                == Level::Request;
            assert_eq!(got, *want, "{resources:?} {names:?} vs {res} {name}");
        }
        // A rule on resources never matches a non-resource request.
        let policy = rule(&["*"], &[]);
        assert_eq!(
            policy.level_for(&path("a", "get", "/healthz")).0,
            Level::None
        );
    }

    #[test]
    fn the_default_policy_keeps_bodies_out_and_probes_quiet() {
        let policy = Policy::default_policy();
        let table = [
            (path("kubelet", "get", "/healthz"), Level::None),
            (path("kubelet", "get", "/readyz/etcd"), Level::None),
            (path("kubelet", "get", "/livez"), Level::None),
            (path("kubelet", "get", "/version"), Level::None),
            (path("kubelet", "post", "/healthz"), Level::Metadata),
            (path("kubelet", "get", "/metrics"), Level::Metadata),
            (resource("a", "create", "", "events", "ns", ""), Level::None),
            (
                resource("a", "create", "events.k8s.io", "events", "ns", ""),
                Level::None,
            ),
            (
                resource("a", "create", "", "secrets", "ns", "s"),
                Level::Metadata,
            ),
            (
                resource(
                    "a",
                    "create",
                    "authentication.k8s.io",
                    "tokenreviews",
                    "",
                    "",
                ),
                Level::Metadata,
            ),
            (
                resource("a", "delete", "apps", "deployments", "ns", "d"),
                Level::Metadata,
            ),
        ];
        for (attrs, want) in table {
            assert_eq!(policy.level_for(&attrs).0, want, "{attrs:?}");
        }
        let config = policy.config_for(&resource("a", "get", "", "pods", "ns", "p"));
        assert!(!config.records(Stage::RequestReceived));
        assert!(config.records(Stage::ResponseComplete));
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(Policy::parse("apiVersion: v1\nkind: Policy\n").is_err());
        let err =
            Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n")
                .unwrap_err();
        assert!(err.to_string().contains("Loud"), "{err}");
    }

    fn event(level: Level, omit_managed_fields: bool) -> Event {
        let mut attrs = resource("alice", "create", "apps", "deployments", "ns", "");
        attrs.user.uid = "u-1".into();
        Event::new(
            RequestAuditConfig {
                level,
                omit_stages: vec![],
                omit_managed_fields,
            },
            &attrs,
            "/apis/apps/v1/namespaces/ns/deployments?fieldManager=kubectl",
        )
        .with_source_ips(["10.0.0.7".to_string()])
        .with_user_agent("kubectl/v1.33.0")
    }

    #[test]
    fn events_serialise_as_audit_k8s_io_v1() {
        let mut ev = event(Level::Metadata, false);
        ev.authorized(&Decision::Allow(
            "RBAC: allowed by ClusterRoleBinding \"admin\"".into(),
        ));
        ev.set_request_object(json!({"kind": "Deployment"}));
        let ev = ev.at_stage(Stage::ResponseComplete);
        let mut done = ev.clone();
        done.set_response_status(ResponseStatus::code(201));
        let line = done.to_json_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let json: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["kind"], "Event");
        assert_eq!(json["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(json["level"], "Metadata");
        assert_eq!(json["stage"], "ResponseComplete");
        assert_eq!(json["auditID"].as_str().unwrap().len(), 36);
        assert_eq!(json["verb"], "create");
        assert_eq!(
            json["requestURI"],
            "/apis/apps/v1/namespaces/ns/deployments?fieldManager=kubectl"
        );
        assert_eq!(
            json["user"],
            json!({"username": "alice", "uid": "u-1", "groups": ["system:authenticated"]})
        );
        assert_eq!(json["sourceIPs"], json!(["10.0.0.7"]));
        assert_eq!(json["userAgent"], "kubectl/v1.33.0");
        assert_eq!(
            json["objectRef"],
            json!({"resource": "deployments", "namespace": "ns", "apiGroup": "apps", "apiVersion": "v1"})
        );
        assert_eq!(json["responseStatus"], json!({"metadata": {}, "code": 201}));
        assert!(json.get("requestObject").is_none(), "no bodies at Metadata");
        assert_eq!(json["annotations"][DECISION_ANNOTATION], "allow");
        assert_eq!(
            json["annotations"][REASON_ANNOTATION],
            "RBAC: allowed by ClusterRoleBinding \"admin\""
        );
        let received = json["requestReceivedTimestamp"].as_str().unwrap();
        let staged = json["stageTimestamp"].as_str().unwrap();
        for ts in [received, staged] {
            // 2024-05-01T10:00:00.123456Z
            assert_eq!(ts.len(), 27, "{ts}");
            assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
            ts.parse::<jiff::Timestamp>().unwrap();
        }
        assert!(staged >= received);
        assert!(json.get("impersonatedUser").is_none());
    }

    #[test]
    fn bodies_follow_the_level_and_managed_fields_can_be_dropped() {
        let body = json!({"metadata": {"name": "d", "managedFields": [{"manager": "kubectl"}]}});
        let mut request = event(Level::Request, true);
        request.set_request_object(body.clone());
        request.set_response_object(body.clone());
        assert_eq!(
            request.request_object,
            Some(json!({"metadata": {"name": "d"}}))
        );
        assert_eq!(request.response_object, None);

        let mut full = event(Level::RequestResponse, false);
        full.set_request_object(body.clone());
        full.set_response_object(json!({"items": [body.clone()]}));
        assert_eq!(full.request_object, Some(body.clone()));
        assert!(full.response_object.is_some());

        let failure = ResponseStatus::from_status(
            403,
            &json!({"kind": "Status", "status": "Failure", "reason": "Forbidden", "message": "no", "code": 403}),
        );
        assert_eq!(
            serde_json::to_value(&failure).unwrap(),
            json!({"metadata": {}, "code": 403, "status": "Failure", "reason": "Forbidden", "message": "no"})
        );
        let mut denied = event(Level::Metadata, false);
        denied.authorized(&Decision::NoOpinion(String::new()));
        assert_eq!(denied.annotations[DECISION_ANNOTATION], "forbid");
        assert!(!denied.annotations.contains_key(REASON_ANNOTATION));
        let admin = UserInfo::authenticated("admin", &[MASTERS]);
        let ev = denied.impersonating(admin.clone(), UserInfo::authenticated("bob", &[]));
        assert_eq!(ev.user, admin);
        assert_eq!(ev.impersonated_user.unwrap().username, "bob");
    }

    #[test]
    fn the_log_writes_one_line_per_recorded_event() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("audit.log"), 0, 0).unwrap();
        log.write(&event(Level::Metadata, false)).unwrap();
        log.write(&event(Level::None, false)).unwrap();
        let omitted = Event::new(
            RequestAuditConfig {
                level: Level::Metadata,
                omit_stages: vec![Stage::RequestReceived],
                omit_managed_fields: false,
            },
            &path("a", "get", "/x"),
            "/x",
        );
        log.write(&omitted).unwrap();
        log.write(&omitted.at_stage(Stage::ResponseComplete))
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[1]["stage"], "ResponseComplete");
        assert!(lines[1].get("objectRef").is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let line = event(Level::Metadata, false).to_json_line();
        let per_file = 3;
        let log =
            AuditLog::open_with_max_bytes(path.clone(), (line.len() * per_file) as u64, 2).unwrap();
        let ev = event(Level::Metadata, false);
        let total = per_file * 5 + 1;
        for _ in 0..total {
            log.write(&ev).unwrap();
        }
        let backups = log.backups().unwrap();
        assert_eq!(backups.len(), 2, "{backups:?}");
        for backup in &backups {
            let name = backup.file_name().unwrap().to_str().unwrap();
            // audit-2024-05-01T10-00-00.000.log
            assert!(
                name.starts_with("audit-") && name.ends_with(".log"),
                "{name}"
            );
            assert_eq!(
                name.len(),
                "audit-2024-05-01T10-00-00.000.log".len(),
                "{name}"
            );
            let text = std::fs::read_to_string(backup).unwrap();
            assert_eq!(text.lines().count(), per_file);
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(current.lines().count(), total % per_file);

        // Reopening appends and counts what is already there.
        drop(log);
        let log =
            AuditLog::open_with_max_bytes(path.clone(), (line.len() * per_file) as u64, 2).unwrap();
        for _ in 0..per_file {
            log.write(&ev).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(current.lines().count(), 1);
        assert_eq!(log.backups().unwrap().len(), 2);
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(AuditLog::open(dir.path().join("a.log"), 1, 3).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let ev = event(Level::Metadata, false);
                    for _ in 0..500 {
                        log.write(&ev).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut count = 0;
        for file in log
            .backups()
            .unwrap()
            .into_iter()
            .chain([log.path().to_path_buf()])
        {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                serde_json::from_str::<Value>(line).unwrap();
                count += 1;
            }
        }
        assert_eq!(count, 2000);
    }
}
