//! Encryption at rest: a [`Store`] wrapper that encrypts the values of
//! chosen resources with AES-256-GCM before they reach the backend, and
//! decrypts them on every read path, so the API server never sees the
//! difference and the SQLite file or etcd never hold those values in clear.
//!
//! The configuration is Kubernetes' `EncryptionConfiguration`
//! (`apiserver.config.k8s.io/v1`), in JSON, at `DATA_DIR/cred/encryption-config.json`
//! as k3s keeps it. Per resource rule, the first provider writes and every
//! provider reads:
//!
//! * `aesgcm`: the stored value is `k8s:enc:aesgcm:v1:<key name>:` followed
//!   by a random 12-byte nonce and the ciphertext with its 16-byte tag, the
//!   layout of kube-apiserver's aesgcm provider. The storage key is the
//!   authenticated data, as kube-apiserver uses the etcd key: a value copied
//!   to another key does not decrypt. The first key encrypts; any key of the
//!   provider decrypts values written with it.
//! * `identity`: values are stored as they are. Values without the
//!   `k8s:enc:` prefix are read as plaintext when a rule lists it, which is
//!   how a cluster that ran without encryption upgrades: old values stay
//!   readable and are encrypted when next written (or by [`rotate_keys`]).
//!
//! Resources are named as in Kubernetes: `secrets` (core group),
//! `deployments.apps`, `*.apps` (every resource of a group), `*.` (every
//! core resource) and `*.*` (everything). A storage key `/<plural>[.<group>]/...`
//! belongs to the first rule naming its resource.
//!
//! Compare-and-swap stays correct: the store compares mod revisions, never
//! values, so ciphertexts (which differ on every write for the same
//! plaintext) do not matter. Conflict errors carry the current value
//! decrypted.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::watch::WATCH_CHANNEL_CAPACITY;
use crate::{
    DynStore, Event, KeyValue, RangeRequest, RangeResponse, Result, Revision, Store, StoreError,
    WatchMessage, WatchStream,
};

/// Where the configuration lives under the server's data directory (k3s'
/// path).
pub const CONFIG_FILE: &str = "cred/encryption-config.json";
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
pub const KIND: &str = "EncryptionConfiguration";
/// The prefix every encrypted value starts with, whatever its provider.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
/// Resources encrypted on a fresh server, as in k3s.
const DEFAULT_RESOURCES: &[&str] = &["secrets"];

/// Why the configuration cannot be used, or a rotation failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("cannot read or write the encryption configuration {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the encryption configuration {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot generate a key: the system's random number generator failed")]
    Random,
    /// Rotation needs a rule whose first provider is `aesgcm`.
    #[error("no resource is encrypted with aesgcm in {0}: nothing to rotate")]
    NothingToRotate(PathBuf),
    #[error("re-encrypting the stored values failed: {0}")]
    Store(#[from] StoreError),
}

// ---- the configuration file, as Kubernetes spells it ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptionConfiguration {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfiguration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ResourceConfiguration {
    resources: Vec<String>,
    providers: Vec<ProviderConfiguration>,
}

/// One provider: exactly one of the fields is set. Kubernetes' other
/// providers (aescbc, secretbox, kms) are refused when loading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ProviderConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aesgcm: Option<AesConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<IdentityConfiguration>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AesConfiguration {
    keys: Vec<KeyConfiguration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct KeyConfiguration {
    name: String,
    /// Base64 of the raw key.
    secret: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct IdentityConfiguration {}

/// A loaded and validated `EncryptionConfiguration`.
#[derive(Clone, Debug)]
pub struct EncryptionConfig {
    /// The file it was read from or will be saved to.
    path: PathBuf,
    file: EncryptionConfiguration,
}

impl EncryptionConfig {
    /// The server's configuration: `DATA_DIR/cred/encryption-config.json`,
    /// created (mode 0600) with one random AES-256 key encrypting `secrets`
    /// when missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, EncryptionError> {
        let path = data_dir.join(CONFIG_FILE);
        if path.exists() {
            return Self::load(&path);
        }
        let mut config = Self::generate(DEFAULT_RESOURCES)?;
        config.path = path;
        config.save()?;
        Ok(config)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, EncryptionError> {
        let bytes = std::fs::read(path).map_err(|source| EncryptionError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| EncryptionError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file: EncryptionConfiguration =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let config = EncryptionConfig {
            path: path.to_path_buf(),
            file,
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// A configuration (not yet saved anywhere) that encrypts `resources`
    /// with one new random key and reads legacy plaintext.
    pub fn generate(resources: &[&str]) -> Result<Self, EncryptionError> {
        let key = new_key(&BTreeSet::new())?;
        let file = EncryptionConfiguration {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            resources: vec![ResourceConfiguration {
                resources: resources.iter().map(|r| r.to_string()).collect(),
                providers: vec![
                    ProviderConfiguration {
                        aesgcm: Some(AesConfiguration { keys: vec![key] }),
                        ..Default::default()
                    },
                    ProviderConfiguration {
                        identity: Some(IdentityConfiguration {}),
                        ..Default::default()
                    },
                ],
            }],
        };
        Ok(EncryptionConfig {
            path: PathBuf::new(),
            file,
        })
    }

    /// The file this configuration is read from and saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the configuration to another file (saved by [`Self::save`]).
    pub fn set_path(&mut self, path: impl Into<PathBuf>) {
        self.path = path.into();
    }

    /// Every resource name the rules list, in order.
    pub fn resources(&self) -> Vec<&str> {
        self.file
            .resources
            .iter()
            .flat_map(|rule| rule.resources.iter().map(String::as_str))
            .collect()
    }

    /// Every key name, in order (the first of each rule's first provider
    /// encrypts).
    pub fn key_names(&self) -> Vec<&str> {
        self.file
            .resources
            .iter()
            .flat_map(|rule| &rule.providers)
            .filter_map(|p| p.aesgcm.as_ref())
            .flat_map(|aes| aes.keys.iter().map(|k| k.name.as_str()))
            .collect()
    }

    /// Writes the configuration atomically (a temporary file renamed over
    /// it), readable by its owner only: it holds the keys.
    pub fn save(&self) -> Result<(), EncryptionError> {
        let io = |source| EncryptionError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_vec_pretty(&self.file).expect("the configuration serializes");
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            file.write_all(&json).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    fn validate(&self) -> Result<(), String> {
        if self.file.api_version != API_VERSION || self.file.kind != KIND {
            return Err(format!(
                "expected apiVersion {API_VERSION:?} and kind {KIND:?}, found {:?} and {:?}",
                self.file.api_version, self.file.kind
            ));
        }
        let mut names = BTreeSet::new();
        for (i, rule) in self.file.resources.iter().enumerate() {
            if rule.resources.is_empty() {
                return Err(format!("resources[{i}].resources must not be empty"));
            }
            if rule.providers.is_empty() {
                return Err(format!("resources[{i}].providers must not be empty"));
            }
            for (j, provider) in rule.providers.iter().enumerate() {
                let at = format!("resources[{i}].providers[{j}]");
                let set = provider.aesgcm.is_some() as usize
                    + provider.identity.is_some() as usize
                    + provider.other.len();
                if let Some(other) = provider.other.keys().next() {
                    return Err(format!(
                        "{at}: provider {other:?} is not supported (only aesgcm and identity are)"
                    ));
                }
                if set != 1 {
                    return Err(format!("{at}: exactly one provider must be set"));
                }
                let Some(aes) = &provider.aesgcm else {
                    continue;
                };
                if aes.keys.is_empty() {
                    return Err(format!("{at}.aesgcm.keys must not be empty"));
                }
                for key in &aes.keys {
                    if key.name.is_empty() || key.name.contains(':') {
                        return Err(format!(
                            "{at}: key name {:?} must be non-empty and contain no ':'",
                            key.name
                        ));
                    }
                    if !names.insert((i, key.name.clone())) {
                        return Err(format!("{at}: key name {:?} is used twice", key.name));
                    }
                    cipher(key).map_err(|e| format!("{at}: key {:?}: {e}", key.name))?;
                }
            }
        }
        Ok(())
    }

    /// The transformers of the rules, in order.
    fn transformers(&self) -> Vec<(String, Arc<Transformer>)> {
        let mut out = Vec::new();
        for rule in &self.file.resources {
            let providers: Vec<Provider> = rule
                .providers
                .iter()
                .map(|p| match &p.aesgcm {
                    Some(aes) => Provider::AesGcm(
                        aes.keys
                            .iter()
                            .map(|k| AesKey {
                                prefix: format!("{AESGCM_PREFIX}{}:", k.name),
                                cipher: cipher(k).expect("validated when loaded"),
                            })
                            .collect(),
                    ),
                    None => Provider::Identity,
                })
                .collect();
            let transformer = Arc::new(Transformer { providers });
            for resource in &rule.resources {
                out.push((resource.clone(), transformer.clone()));
            }
        }
        out
    }
}

/// A new random 32-byte key, named `aesgcmkey-<unix time>` (with a suffix
/// if that name is taken).
fn new_key(taken: &BTreeSet<String>) -> Result<KeyConfiguration, EncryptionError> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| EncryptionError::Random)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("aesgcmkey-{now}");
    let name = std::iter::once(base.clone())
        .chain((1..).map(|n| format!("{base}-{n}")))
        .find(|name| !taken.contains(name))
        .expect("an unused name exists");
    Ok(KeyConfiguration {
        name,
        secret: base64::engine::general_purpose::STANDARD.encode(secret),
    })
}

fn cipher(key: &KeyConfiguration) -> Result<LessSafeKey, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key.secret.trim())
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    let algorithm = match raw.len() {
        32 => &AES_256_GCM,
        16 => &AES_128_GCM,
        n => {
            return Err(format!(
                "the secret is {n} bytes long; aesgcm takes 32 (or 16) bytes"
            ))
        }
    };
    let unbound =
        UnboundKey::new(algorithm, &raw).map_err(|_| "the key is unusable".to_string())?;
    Ok(LessSafeKey::new(unbound))
}

// ---- transforming values ----

struct AesKey {
    /// `k8s:enc:aesgcm:v1:<name>:`
    prefix: String,
    cipher: LessSafeKey,
}

enum Provider {
    AesGcm(Vec<AesKey>),
    Identity,
}

/// The providers of one rule: the first writes, all read.
struct Transformer {
    providers: Vec<Provider>,
}

fn transform_error(key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Transform {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl Transformer {
    fn encrypt(&self, key: &str, plaintext: Vec<u8>) -> Result<Vec<u8>> {
        match self.providers.first() {
            Some(Provider::AesGcm(keys)) => seal(&keys[0], key, plaintext),
            _ => Ok(plaintext),
        }
    }

    /// The plaintext of a stored value, and whether it was written with the
    /// key that now encrypts (so rotation can skip it).
    fn decrypt(&self, key: &str, stored: Vec<u8>) -> Result<(Vec<u8>, bool)> {
        if !stored.starts_with(ENCRYPTED_PREFIX) {
            // Deleted keys in watch events carry no value.
            if stored.is_empty()
                || self
                    .providers
                    .iter()
                    .any(|p| matches!(p, Provider::Identity))
            {
                let current = matches!(self.providers.first(), Some(Provider::Identity));
                return Ok((stored, current));
            }
            return Err(transform_error(
                key,
                "no matching prefix found: the value is not encrypted and no identity provider is configured",
            ));
        }
        for (p, provider) in self.providers.iter().enumerate() {
            let Provider::AesGcm(keys) = provider else {
                continue;
            };
            for (k, aes_key) in keys.iter().enumerate() {
                if stored.starts_with(aes_key.prefix.as_bytes()) {
                    let plaintext = open(aes_key, key, stored)?;
                    return Ok((plaintext, p == 0 && k == 0));
                }
            }
        }
        let end = stored.len().min(64);
        let written_with = String::from_utf8_lossy(&stored[..end]);
        let written_with = written_with
            .splitn(6, ':')
            .take(5)
            .collect::<Vec<_>>()
            .join(":");
        Err(transform_error(
            key,
            format!(
                "no matching prefix found: the value was written by {written_with:?}, which is not in the encryption configuration"
            ),
        ))
    }
}

fn seal(aes_key: &AesKey, key: &str, mut plaintext: Vec<u8>) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| transform_error(key, "the system's random number generator failed"))?;
    aes_key
        .cipher
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key.as_bytes()),
            &mut plaintext,
        )
        .map_err(|_| transform_error(key, "encryption failed"))?;
    let mut out = Vec::with_capacity(aes_key.prefix.len() + NONCE_LEN + plaintext.len());
    out.extend_from_slice(aes_key.prefix.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plaintext);
    Ok(out)
}

fn open(aes_key: &AesKey, key: &str, stored: Vec<u8>) -> Result<Vec<u8>> {
    let body = &stored[aes_key.prefix.len()..];
    let tag_len = aes_key.cipher.algorithm().tag_len();
    if body.len() < NONCE_LEN + tag_len {
        return Err(transform_error(key, "the encrypted data is too short"));
    }
    let nonce = Nonce::try_assume_unique_for_key(&body[..NONCE_LEN])
        .map_err(|_| transform_error(key, "the nonce is malformed"))?;
    let mut sealed = body[NONCE_LEN..].to_vec();
    let len = aes_key
        .cipher
        .open_in_place(nonce, Aad::from(key.as_bytes()), &mut sealed)
        .map_err(|_| {
            transform_error(
                key,
                format!(
                    "cipher: message authentication failed (key {:?} does not match the data, or the value was moved from another key)",
                    aes_key.prefix.trim_start_matches(AESGCM_PREFIX).trim_end_matches(':')
                ),
            )
        })?
        .len();
    sealed.truncate(len);
    Ok(sealed)
}

/// Which rule a storage key belongs to.
struct Rules {
    rules: Vec<(String, Arc<Transformer>)>,
}

impl Rules {
    fn new(config: &EncryptionConfig) -> Self {
        Rules {
            rules: config.transformers(),
        }
    }

    /// The transformer for `key` (`/<plural>[.<group>]/...`), if any rule
    /// names its resource.
    fn for_key(&self, key: &str) -> Option<&Transformer> {
        let segment = key.strip_prefix('/')?.split('/').next()?;
        self.rules
            .iter()
            .find(|(resource, _)| resource_matches(resource, segment))
            .map(|(_, t)| t.as_ref())
    }

    fn encrypt(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        match self.for_key(key) {
            Some(t) => t.encrypt(key, value),
            None => Ok(value),
        }
    }

    fn decrypt_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        if let Some(t) = self.for_key(&kv.key) {
            kv.value = t.decrypt(&kv.key, std::mem::take(&mut kv.value))?.0;
        }
        Ok(kv)
    }

    fn decrypt_event(&self, event: Event) -> Result<Event> {
        Ok(Event {
            kind: event.kind,
            kv: self.decrypt_kv(event.kv)?,
            prev: event.prev.map(|p| self.decrypt_kv(p)).transpose()?,
        })
    }

    /// Decrypts the value a failed compare-and-swap carries.
    fn decrypt_error(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::Conflict {
                key,
                expected,
                current,
            } => match self.decrypt_kv(*current) {
                Ok(current) => StoreError::Conflict {
                    key,
                    expected,
                    current: Box::new(current),
                },
                Err(err) => err,
            },
            other => other,
        }
    }
}

/// Whether a configured resource name (`secrets`, `deployments.apps`,
/// `*.apps`, `*.`, `*.*`) names the storage key segment `<plural>[.<group>]`.
fn resource_matches(resource: &str, segment: &str) -> bool {
    match resource {
        "*.*" => true,
        "*." => !segment.contains('.'),
        _ => match resource.strip_prefix("*.") {
            Some(group) => segment
                .split_once('.')
                .is_some_and(|(_, segment_group)| segment_group == group),
            None => resource == segment,
        },
    }
}

// ---- the store wrapper ----

/// A store that encrypts the configured resources' values on their way in
/// and decrypts them on their way out.
pub struct EncryptedStore {
    inner: DynStore,
    rules: Arc<Rules>,
}

/// Wraps `store` so the resources `config` names are encrypted at rest.
/// A configuration without rules leaves the store as it is.
pub fn encrypted(store: DynStore, config: &EncryptionConfig) -> DynStore {
    if config.file.resources.is_empty() {
        return store;
    }
    Arc::new(EncryptedStore {
        inner: store,
        rules: Arc::new(Rules::new(config)),
    })
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)> {
        let (kv, rev) = self.inner.get(key, revision).await?;
        Ok((kv.map(|kv| self.rules.decrypt_kv(kv)).transpose()?, rev))
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let mut resp = self.inner.range(req).await?;
        resp.kvs = std::mem::take(&mut resp.kvs)
            .into_iter()
            .map(|kv| self.rules.decrypt_kv(kv))
            .collect::<Result<_>>()?;
        Ok(resp)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        let value = self.rules.encrypt(key, value)?;
        self.inner.create(key, value).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        let value = self.rules.encrypt(key, value)?;
        self.inner
            .update(key, value, expected)
            .await
            .map_err(|e| self.rules.decrypt_error(e))
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let (rev, kv) = self
            .inner
            .delete(key, expected)
            .await
            .map_err(|e| self.rules.decrypt_error(e))?;
        Ok((rev, self.rules.decrypt_kv(kv)?))
    }

    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream> {
        let mut inner = self.inner.watch(prefix, start_revision).await?;
        let rules = self.rules.clone();
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        let task = tokio::spawn(async move {
            while let Some(msg) = inner.recv().await {
                let msg = match msg {
                    Ok(WatchMessage::Events(events)) => events
                        .into_iter()
                        .map(|e| rules.decrypt_event(e))
                        .collect::<Result<Vec<_>>>()
                        .map(WatchMessage::Events),
                    other => other,
                };
                let last = msg.is_err();
                if tx.send(msg).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(WatchStream::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn revisions(&self) -> Result<(Revision, Revision)> {
        self.inner.revisions().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

// ---- key rotation ----

/// What [`rotate_keys`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// The key that now encrypts.
    pub new_key: String,
    /// Keys removed from the configuration.
    pub removed_keys: Vec<String>,
    /// Values rewritten with the new key.
    pub reencrypted: usize,
    /// Compare-and-swap conflicts retried (the value changed meanwhile).
    pub conflicts: usize,
}

/// k3s' `secrets-encrypt rotate-keys`, for a stopped server: puts a new
/// key first in every rule that encrypts with aesgcm (saving the
/// configuration, so every value stays readable if this is interrupted),
/// rewrites every stored value of those rules with it, then removes the
/// old keys from the configuration.
///
/// `store` is the backend itself, not wrapped by [`encrypted`]. Each value
/// is replaced by compare-and-swap on its mod revision and re-read on a
/// conflict, so a concurrent writer loses nothing; but a server still
/// running with the old configuration would keep writing with the old key,
/// whose removal then makes those values unreadable.
pub async fn rotate_keys(
    store: &DynStore,
    data_dir: &Path,
) -> Result<RotationReport, EncryptionError> {
    let path = data_dir.join(CONFIG_FILE);
    let mut config = EncryptionConfig::load(&path)?;
    let taken: BTreeSet<String> = config.key_names().into_iter().map(String::from).collect();
    let new = new_key(&taken)?;
    let mut report = RotationReport {
        new_key: new.name.clone(),
        ..Default::default()
    };
    let mut rotated_resources = Vec::new();
    for rule in &mut config.file.resources {
        if let Some(aes) = rule.providers.first_mut().and_then(|p| p.aesgcm.as_mut()) {
            aes.keys.insert(0, new.clone());
            rotated_resources.extend(rule.resources.iter().cloned());
        }
    }
    if rotated_resources.is_empty() {
        return Err(EncryptionError::NothingToRotate(path));
    }
    config.save()?;

    let rules = Rules::new(&config);
    for prefix in scan_prefixes(&rotated_resources) {
        reencrypt_prefix(store, &rules, &prefix, &mut report).await?;
    }

    for rule in &mut config.file.resources {
        if let Some(aes) = rule.providers.first_mut().and_then(|p| p.aesgcm.as_mut()) {
            report
                .removed_keys
                .extend(aes.keys.drain(1..).map(|k| k.name));
        }
    }
    config.save()?;
    Ok(report)
}

/// The key prefixes holding the named resources: `/secrets/` for
/// `secrets`, the whole key space for wildcards.
fn scan_prefixes(resources: &[String]) -> BTreeSet<String> {
    let mut prefixes = BTreeSet::new();
    for resource in resources {
        if resource.starts_with("*.") {
            return BTreeSet::from(["/".to_string()]);
        }
        prefixes.insert(format!("/{resource}/"));
    }
    prefixes
}

/// Page size of the rotation's range reads.
const ROTATION_PAGE: usize = 500;

async fn reencrypt_prefix(
    store: &DynStore,
    rules: &Rules,
    prefix: &str,
    report: &mut RotationReport,
) -> Result<(), EncryptionError> {
    let mut start = None;
    loop {
        let page = store
            .range(RangeRequest {
                prefix: prefix.to_string(),
                start: start.take(),
                limit: ROTATION_PAGE,
                ..Default::default()
            })
            .await?;
        for kv in &page.kvs {
            reencrypt_one(store, rules, kv.clone(), report).await?;
        }
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => start = Some(format!("{}\0", last.key)),
            _ => return Ok(()),
        }
    }
}

async fn reencrypt_one(
    store: &DynStore,
    rules: &Rules,
    mut kv: KeyValue,
    report: &mut RotationReport,
) -> Result<(), EncryptionError> {
    let Some(transformer) = rules.for_key(&kv.key) else {
        return Ok(());
    };
    loop {
        let (plaintext, current) = transformer.decrypt(&kv.key, kv.value)?;
        if current {
            return Ok(());
        }
        let value = transformer.encrypt(&kv.key, plaintext)?;
        match store.update(&kv.key, value, kv.mod_revision).await {
            Ok(_) => {
                report.reencrypted += 1;
                return Ok(());
            }
            Err(StoreError::Conflict { current, .. }) => {
                report.conflicts += 1;
                kv = *current;
            }
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, SqliteConfig, SqliteStore};
    use std::time::Duration;

    async fn sqlite(dir: &Path) -> DynStore {
        let mut config = SqliteConfig::new(dir.join("db").join("state.db"));
        config.progress_interval = Duration::from_millis(200);
        Arc::new(SqliteStore::open(config).await.unwrap())
    }

    fn config_with(resources: &[&str]) -> EncryptionConfig {
        EncryptionConfig::generate(resources).unwrap()
    }

    const SECRET: &[u8] = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;

    #[tokio::test]
    async fn values_round_trip_and_are_stored_encrypted_under_the_key_name() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sqlite(dir.path()).await;
        let config = config_with(&["secrets"]);
        let store = encrypted(raw.clone(), &config);
        let rev = store
            .create("/secrets/default/s1", SECRET.to_vec())
            .await
            .unwrap();
        let (kv, _) = store.get("/secrets/default/s1", None).await.unwrap();
        assert_eq!(kv.unwrap().value, SECRET);

        let stored = raw
            .get("/secrets/default/s1", None)
            .await
            .unwrap()
            .0
            .unwrap()
            .value;
        let prefix = format!("{AESGCM_PREFIX}{}:", config.key_names()[0]);
        assert!(stored.starts_with(prefix.as_bytes()));
        assert_eq!(stored.len(), prefix.len() + NONCE_LEN + SECRET.len() + 16);

        // Compare-and-swap, ranges and deletes see plaintext.
        let rev2 = store
            .update("/secrets/default/s1", b"v2".to_vec(), rev)
            .await
            .unwrap();
        match store
            .update("/secrets/default/s1", b"v3".to_vec(), rev)
            .await
        {
            Err(StoreError::Conflict { current, .. }) => assert_eq!(current.value, b"v2"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let page = store
            .range(RangeRequest::prefix("/secrets/"))
            .await
            .unwrap();
        assert_eq!(page.kvs[0].value, b"v2");
        let (_, deleted) = store
            .delete("/secrets/default/s1", Some(rev2))
            .await
            .unwrap();
        assert_eq!(deleted.value, b"v2");
    }

    #[tokio::test]
    async fn a_value_moved_to_another_key_or_read_with_another_key_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sqlite(dir.path()).await;
        let store = encrypted(raw.clone(), &config_with(&["secrets"]));
        store
            .create("/secrets/default/a", SECRET.to_vec())
            .await
            .unwrap();
        let stored = raw
            .get("/secrets/default/a", None)
            .await
            .unwrap()
            .0
            .unwrap();

        raw.create("/secrets/default/b", stored.value.clone())
            .await
            .unwrap();
        let err = store.get("/secrets/default/b", None).await.unwrap_err();
        assert!(
            err.to_string().starts_with(
                "unable to transform key \"/secrets/default/b\": cipher: message authentication failed"
            ),
            "{err}"
        );

        // Another configuration whose key has the same name but other bytes.
        let mut other = config_with(&["secrets"]);
        let name = encrypted_key_name(&stored.value);
        other.file.resources[0].providers[0]
            .aesgcm
            .as_mut()
            .unwrap()
            .keys[0]
            .name = name;
        let err = encrypted(raw.clone(), &other)
            .get("/secrets/default/a", None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Transform { .. }), "{err}");

        // A configuration without that key at all.
        let mut without = config_with(&["secrets"]);
        without.file.resources[0].providers[0]
            .aesgcm
            .as_mut()
            .unwrap()
            .keys[0]
            .name = "another-key".into();
        let err = encrypted(raw, &without)
            .get("/secrets/default/a", None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no matching prefix found"),
            "{err}"
        );
    }

    fn encrypted_key_name(value: &[u8]) -> String {
        let rest = &value[AESGCM_PREFIX.len()..];
        let end = rest.iter().position(|&b| b == b':').unwrap();
        String::from_utf8(rest[..end].to_vec()).unwrap()
    }

    #[tokio::test]
    async fn legacy_plaintext_is_read_and_encrypted_when_next_written() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sqlite(dir.path()).await;
        let rev = raw
            .create("/secrets/default/old", SECRET.to_vec())
            .await
            .unwrap();
        let store = encrypted(raw.clone(), &config_with(&["secrets"]));
        let kv = store
            .get("/secrets/default/old", None)
            .await
            .unwrap()
            .0
            .unwrap();
        assert_eq!(kv.value, SECRET);
        store
            .update("/secrets/default/old", SECRET.to_vec(), rev)
            .await
            .unwrap();
        let stored = raw
            .get("/secrets/default/old", None)
            .await
            .unwrap()
            .0
            .unwrap();
        assert!(stored.value.starts_with(AESGCM_PREFIX.as_bytes()));

        // Without an identity provider, plaintext is refused.
        let mut strict = config_with(&["secrets"]);
        strict.file.resources[0].providers.truncate(1);
        raw.create("/secrets/default/plain", b"x".to_vec())
            .await
            .unwrap();
        let err = encrypted(raw, &strict)
            .get("/secrets/default/plain", None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no matching prefix found"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn other_resources_are_stored_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sqlite(dir.path()).await;
        let store = encrypted(
            raw.clone(),
            &config_with(&["secrets", "widgets.example.com"]),
        );
        for key in ["/pods/default/web", "/secretsx/a", "/deployments.apps/ns/d"] {
            store.create(key, b"plain".to_vec()).await.unwrap();
            let stored = raw.get(key, None).await.unwrap().0.unwrap();
            assert_eq!(stored.value, b"plain", "{key}");
        }
        store
            .create("/widgets.example.com/ns/w", b"plain".to_vec())
            .await
            .unwrap();
        let stored = raw
            .get("/widgets.example.com/ns/w", None)
            .await
            .unwrap()
            .0
            .unwrap();
        assert!(stored.value.starts_with(AESGCM_PREFIX.as_bytes()));
    }

    #[test]
    fn resource_names_match_storage_key_segments() {
        let table = [
            ("secrets", "secrets", true),
            ("secrets", "secrets.v1", false),
            ("deployments.apps", "deployments.apps", true),
            ("deployments.apps", "deployments", false),
            ("*.apps", "deployments.apps", true),
            ("*.apps", "deployments.batch", false),
            ("*.apps", "apps", false),
            ("*.", "configmaps", true),
            ("*.", "deployments.apps", false),
            ("*.*", "anything.at.all", true),
            ("*.*", "pods", true),
            ("*.example.com", "widgets.example.com", true),
        ];
        for (resource, segment, want) in table {
            assert_eq!(
                resource_matches(resource, segment),
                want,
                "{resource} vs {segment}"
            );
        }
    }

    #[tokio::test]
    async fn watch_events_and_their_previous_values_are_decrypted() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sqlite(dir.path()).await;
        let store = encrypted(raw, &config_with(&["secrets"]));
        let mut watch = store.watch("/secrets/", 0).await.unwrap();
        let r1 = store
            .create("/secrets/ns/a", b"one".to_vec())
            .await
            .unwrap();
        let r2 = store
            .update("/secrets/ns/a", b"two".to_vec(), r1)
            .await
            .unwrap();
        store.delete("/secrets/ns/a", Some(r2)).await.unwrap();
        let mut events = Vec::new();
        while events.len() < 3 {
            let msg = tokio::time::timeout(Duration::from_secs(10), watch.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let WatchMessage::Events(batch) = msg {
                events.extend(batch);
            }
        }
        let seen: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.kv.value.clone(),
                    e.prev.as_ref().map(|p| p.value.clone()),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (EventKind::Put, b"one".to_vec(), None),
                (EventKind::Put, b"two".to_vec(), Some(b"one".to_vec())),
                (EventKind::Delete, Vec::new(), Some(b"two".to_vec())),
            ]
        );
    }

    #[tokio::test]
    async fn the_database_files_never_hold_the_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sqlite(dir.path()).await;
        let store = encrypted(raw.clone(), &config_with(&["secrets"]));
        let marker = b"correct-horse-battery-staple-4f1c";
        let mut value = SECRET.to_vec();
        value.extend_from_slice(marker);
        let rev = store.create("/secrets/ns/s", value.clone()).await.unwrap();
        store.update("/secrets/ns/s", value, rev).await.unwrap();
        // A control value proves the files are the ones written to.
        let control = b"plain-control-value-9d2e";
        store
            .create("/configmaps/ns/c", control.to_vec())
            .await
            .unwrap();
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path().join("db")).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(contains(control), "the control value is in the files");
        assert!(!contains(marker), "the secret's plaintext is on disk");
    }

    #[test]
    fn the_configuration_is_created_once_private_and_reloads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = EncryptionConfig::load_or_create(dir.path()).unwrap();
        assert_eq!(config.resources(), vec!["secrets"]);
        let path = dir.path().join(CONFIG_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["kind"], "EncryptionConfiguration");
        assert_eq!(json["apiVersion"], "apiserver.config.k8s.io/v1");
        assert!(json["resources"][0]["providers"][1]["identity"].is_object());
        let key = &json["resources"][0]["providers"][0]["aesgcm"]["keys"][0];
        assert!(key["name"].as_str().unwrap().starts_with("aesgcmkey-"));
        let again = EncryptionConfig::load_or_create(dir.path()).unwrap();
        assert_eq!(again.file, config.file);
    }

    #[test]
    fn invalid_configurations_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let cases = [
            (
                r#"{"apiVersion":"v1","kind":"EncryptionConfiguration","resources":[]}"#,
                "expected apiVersion",
            ),
            (
                r#"{"apiVersion":"apiserver.config.k8s.io/v1","kind":"EncryptionConfiguration","resources":[{"resources":["secrets"],"providers":[{"aescbc":{"keys":[]}}]}]}"#,
                "provider \"aescbc\" is not supported",
            ),
            (
                r#"{"apiVersion":"apiserver.config.k8s.io/v1","kind":"EncryptionConfiguration","resources":[{"resources":["secrets"],"providers":[{"aesgcm":{"keys":[{"name":"k","secret":"c2hvcnQ="}]}}]}]}"#,
                "the secret is 5 bytes long",
            ),
            (
                r#"{"apiVersion":"apiserver.config.k8s.io/v1","kind":"EncryptionConfiguration","resources":[{"resources":["secrets"],"providers":[]}]}"#,
                "providers must not be empty",
            ),
        ];
        for (json, want) in cases {
            std::fs::write(&path, json).unwrap();
            let err = EncryptionConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[tokio::test]
    async fn rotation_rewrites_every_value_with_a_new_key_and_drops_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sqlite(dir.path()).await;
        let config = EncryptionConfig::load_or_create(dir.path()).unwrap();
        let old_key = config.key_names()[0].to_string();
        raw.create("/secrets/ns/legacy", b"legacy".to_vec())
            .await
            .unwrap();
        let store = encrypted(raw.clone(), &config);
        for i in 0..(ROTATION_PAGE + 3) {
            store
                .create(
                    &format!("/secrets/ns/s{i:04}"),
                    format!("v{i}").into_bytes(),
                )
                .await
                .unwrap();
        }
        store.create("/pods/ns/p", b"pod".to_vec()).await.unwrap();

        let report = rotate_keys(&raw, dir.path()).await.unwrap();
        assert_eq!(report.reencrypted, ROTATION_PAGE + 4);
        assert_eq!(report.removed_keys, vec![old_key.clone()]);
        assert_ne!(report.new_key, old_key);

        let config = EncryptionConfig::load_or_create(dir.path()).unwrap();
        assert_eq!(config.key_names(), vec![report.new_key.as_str()]);
        let new_prefix = format!("{AESGCM_PREFIX}{}:", report.new_key);
        for kv in raw
            .range(RangeRequest::prefix("/secrets/"))
            .await
            .unwrap()
            .kvs
        {
            assert!(kv.value.starts_with(new_prefix.as_bytes()), "{}", kv.key);
        }
        let store = encrypted(raw.clone(), &config);
        let kv = store
            .get("/secrets/ns/s0007", None)
            .await
            .unwrap()
            .0
            .unwrap();
        assert_eq!(kv.value, b"v7");
        let kv = store
            .get("/secrets/ns/legacy", None)
            .await
            .unwrap()
            .0
            .unwrap();
        assert_eq!(kv.value, b"legacy");
        let pod = raw.get("/pods/ns/p", None).await.unwrap().0.unwrap();
        assert_eq!(pod.value, b"pod");

        // A second rotation right away rewrites everything again.
        let again = rotate_keys(&raw, dir.path()).await.unwrap();
        assert_eq!(again.reencrypted, ROTATION_PAGE + 4);
        assert_eq!(again.removed_keys, vec![report.new_key]);
    }
}
