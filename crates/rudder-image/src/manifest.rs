//! The JSON documents of an image, parsed leniently: Docker v2 (schema 2) and
//! OCI manifests and indexes share one shape, and an image config only needs the
//! fields a runtime uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Media types accepted when asking a registry for a manifest.
pub(crate) const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A manifest or an index: which one is told by `mediaType` or by which list it has.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
}

pub(crate) enum ManifestKind<'a> {
    Image {
        config: &'a Descriptor,
        layers: &'a [Descriptor],
    },
    Index(&'a [Descriptor]),
}

impl Manifest {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("manifest is not valid JSON: {e}"))?;
        if manifest.schema_version != 2 {
            return Err(format!(
                "manifest schema version {} is not supported (only Docker v2 schema 2 and OCI)",
                manifest.schema_version
            ));
        }
        Ok(manifest)
    }

    pub(crate) fn kind(&self) -> Result<ManifestKind<'_>, String> {
        match (&self.manifests, &self.config, &self.layers) {
            (Some(manifests), _, _) => Ok(ManifestKind::Index(manifests)),
            (None, Some(config), layers) => Ok(ManifestKind::Image {
                config,
                layers: layers.as_deref().unwrap_or_default(),
            }),
            (None, None, _) => Err("manifest has neither a config nor a list of manifests".into()),
        }
    }
}

/// Chooses the linux/amd64 entry of an index (the only platform Rudder runs),
/// preferring one without a variant.
pub(crate) fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let matches = |entry: &&Descriptor| {
        entry
            .platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    manifests.iter().filter(matches).min_by_key(|entry| {
        entry
            .platform
            .as_ref()
            .and_then(|p| p.variant.as_ref())
            .is_some()
    })
}

pub(crate) fn describe_platforms(manifests: &[Descriptor]) -> String {
    let names: Vec<String> = manifests
        .iter()
        .map(|entry| match &entry.platform {
            Some(p) => match &p.variant {
                Some(variant) => format!("{}/{}/{variant}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            },
            None => "unknown".to_string(),
        })
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// What a runtime needs from an image's config: the process defaults and the
/// layers' uncompressed digests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ProcessDefaults,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("image config is not valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn picks_linux_amd64_from_an_index() {
        let entries = [
            entry("linux", "arm64", Some("v8"), "a"),
            entry("linux", "amd64", Some("v3"), "b"),
            entry("linux", "amd64", None, "c"),
            entry("windows", "amd64", None, "d"),
        ];
        assert_eq!(select_platform(&entries).unwrap().digest, "c");
        assert!(select_platform(&entries[..1]).is_none());
        assert_eq!(describe_platforms(&entries[..1]), "linux/arm64/v8");
    }

    #[test]
    fn reads_docker_config_fields() {
        let config = ImageConfig::parse(
            br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/e"],"Cmd":["a","b"],
            "Env":["PATH=/bin"],"WorkingDir":"/w","User":"1000:1000"},
            "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#,
        )
        .unwrap();
        assert_eq!(
            config.config.entrypoint.as_deref(),
            Some(&["/e".to_string()][..])
        );
        assert_eq!(config.config.cmd.as_ref().unwrap().len(), 2);
        assert_eq!(config.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(config.config.user.as_deref(), Some("1000:1000"));
        assert_eq!(config.rootfs.diff_ids, ["sha256:00"]);
    }

    #[test]
    fn rejects_schema_1() {
        let error = Manifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap_err();
        assert!(error.contains("schema version 1"), "{error}");
    }
}
