//! The registries config file, in the format of k3s' `registries.yaml`.
//! See the crate's README for the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::ImageRef;

/// Where `rudder ctr` and the agent read the registries config by default (k3s
/// reads `/etc/rancher/k3s/registries.yaml`). A missing file means no mirrors and
/// anonymous access.
pub const DEFAULT_REGISTRIES_CONFIG: &str = "/etc/rudder/registries.yaml";

/// Mirrors and per-host credentials and TLS settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Registry name (`docker.io`, `registry.example.com:5000`, or `*` for any)
    /// to the endpoints tried, in order, before the registry itself.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Endpoint host (`host[:port]`) to its credentials and TLS settings.
    #[serde(default)]
    pub configs: BTreeMap<String, HostConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Talk plain HTTP to this host (like Docker's `insecure-registries`).
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// base64 of `username:password`, as in Docker's `config.json`.
    #[serde(default)]
    pub auth: Option<String>,
    /// A bearer token sent as is.
    #[serde(default, alias = "identitytoken", alias = "identity_token")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// A PEM bundle of extra CA certificates to trust for this host.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// One place to try a pull, resolved from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]` as the HTTP client addresses it.
    pub host: String,
    pub plain_http: bool,
    pub skip_tls_verify: bool,
    pub ca_file: Option<PathBuf>,
    pub auth: Credentials,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl RegistriesConfig {
    /// Reads the config at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|reason| Error::RegistriesConfig {
                path: path.to_path_buf(),
                reason,
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(Error::RegistriesConfig {
                path: path.to_path_buf(),
                reason: error.to_string(),
            }),
        }
    }

    /// Parses and validates the YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: Self = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (registry, mirror) in &config.mirrors {
            for endpoint in &mirror.endpoint {
                parse_endpoint(endpoint)
                    .map_err(|reason| format!("mirror {registry}: {reason}"))?;
            }
        }
        for (host, host_config) in &config.configs {
            if let Some(auth) = &host_config.auth {
                auth.credentials()
                    .map_err(|reason| format!("configs.{host}.auth: {reason}"))?;
            }
        }
        Ok(config)
    }

    /// Where to pull `image` from, in order: its mirrors (or the `*` mirror's), then
    /// the registry itself, as k3s does.
    pub(crate) fn endpoints(&self, image: &ImageRef) -> Vec<Endpoint> {
        let registry = image.registry();
        let mirrors = self
            .mirrors
            .get(registry)
            .or_else(|| self.mirrors.get("*"))
            .map(|mirror| mirror.endpoint.as_slice())
            .unwrap_or_default();
        let mut endpoints = Vec::new();
        for url in mirrors {
            // Validated in `parse`; a config built in code may still hold a bad one.
            let Ok((scheme, host)) = parse_endpoint(url) else {
                continue;
            };
            endpoints.push(self.endpoint(&host, scheme, &[]));
        }
        let default = self.endpoint(
            registry,
            None,
            &["docker.io", "index.docker.io", "registry-1.docker.io"],
        );
        if !endpoints.contains(&default) {
            endpoints.push(default);
        }
        endpoints
    }

    fn endpoint(&self, host: &str, scheme: Option<&str>, aliases: &[&str]) -> Endpoint {
        let lookup = |name: &str| self.configs.get(name);
        let host_config = lookup(host).or_else(|| {
            if aliases.contains(&host) {
                aliases.iter().find_map(|alias| lookup(alias))
            } else {
                None
            }
        });
        let plain_http = match scheme {
            Some(scheme) => scheme == "http",
            None => ImageRef::is_loopback_host(host),
        } || host_config.is_some_and(|config| config.insecure);
        let tls = host_config.and_then(|config| config.tls.as_ref());
        Endpoint {
            host: host.to_string(),
            plain_http,
            skip_tls_verify: tls.is_some_and(|tls| tls.insecure_skip_verify),
            ca_file: tls.and_then(|tls| tls.ca_file.clone()),
            auth: host_config
                .and_then(|config| config.auth.as_ref())
                .and_then(|auth| auth.credentials().ok())
                .unwrap_or(Credentials::Anonymous),
        }
    }
}

impl AuthConfig {
    fn credentials(&self) -> Result<Credentials, String> {
        if let Some(token) = &self.token {
            return Ok(Credentials::Bearer(token.clone()));
        }
        if let Some(encoded) = &self.auth {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| format!("auth is not base64: {e}"))?;
            let text = String::from_utf8(decoded).map_err(|_| "auth is not UTF-8".to_string())?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| "auth must encode username:password".to_string())?;
            return Ok(Credentials::Basic(user.to_string(), password.to_string()));
        }
        match (&self.username, &self.password) {
            (Some(user), password) => Ok(Credentials::Basic(
                user.clone(),
                password.clone().unwrap_or_default(),
            )),
            (None, Some(_)) => Err("password without username".to_string()),
            (None, None) => Ok(Credentials::Anonymous),
        }
    }
}

/// Splits `scheme://host[:port][/v2]` into its scheme (if written) and host.
fn parse_endpoint(url: &str) -> Result<(Option<&'static str>, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Some("http"), rest),
        Some(("https", rest)) => (Some("https"), rest),
        Some((other, _)) => return Err(format!("endpoint {url}: unsupported scheme {other}")),
        None => (None, url),
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(format!("endpoint {url} has no host"));
    }
    if !matches!(path.trim_end_matches('/'), "" | "v2") {
        return Err(format!(
            "endpoint {url}: a path prefix (/{path}) is not supported, only scheme://host[:port]"
        ));
    }
    Ok((scheme, host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:5000"
      - "https://mirror.example.com/v2"
  "*":
    endpoint: ["registry.internal:5443"]
configs:
  "mirror.example.com":
    auth:
      username: alice
      password: secret
    tls:
      insecure_skip_verify: true
  "registry.internal:5443":
    auth:
      auth: Ym9iOmh1bnRlcjI=
    insecure: true
  docker.io:
    auth:
      token: abc
"#;

    fn endpoints(config: &RegistriesConfig, image: &str) -> Vec<Endpoint> {
        config.endpoints(&ImageRef::parse(image).unwrap())
    }

    #[test]
    fn mirrors_come_first_then_the_registry() {
        let config = RegistriesConfig::parse(EXAMPLE).unwrap();
        let found = endpoints(&config, "nginx");
        let hosts: Vec<_> = found
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http))
            .collect();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1:5000", true),
                ("mirror.example.com", false),
                ("docker.io", false)
            ]
        );
        assert_eq!(found[0].auth, Credentials::Anonymous);
        assert_eq!(
            found[1].auth,
            Credentials::Basic("alice".into(), "secret".into())
        );
        assert!(found[1].skip_tls_verify);
        assert_eq!(found[2].auth, Credentials::Bearer("abc".into()));
    }

    #[test]
    fn wildcard_mirror_and_insecure_hosts() {
        let config = RegistriesConfig::parse(EXAMPLE).unwrap();
        let found = endpoints(&config, "quay.io/a/b:1");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].host, "registry.internal:5443");
        assert!(found[0].plain_http, "listed as insecure");
        assert_eq!(
            found[0].auth,
            Credentials::Basic("bob".into(), "hunter2".into())
        );
        assert_eq!(found[1].host, "quay.io");
        assert!(!found[1].plain_http);
    }

    #[test]
    fn loopback_registries_use_plain_http_without_config() {
        let config = RegistriesConfig::default();
        let found = endpoints(&config, "127.0.0.1:5000/busybox:1.35");
        assert_eq!(found.len(), 1);
        assert!(found[0].plain_http);
        assert!(!endpoints(&config, "ghcr.io/x/y")[0].plain_http);
    }

    #[test]
    fn rejects_bad_configs_with_the_reason() {
        for (text, needle) in [
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n",
                "unsupported scheme",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"https://x/prefix\"]\n",
                "path prefix",
            ),
            ("configs:\n  x:\n    auth:\n      auth: \"!!!\"\n", "base64"),
            ("configs:\n  x:\n    unknown: 1\n", "unknown field"),
            ("mirror: {}\n", "unknown field"),
        ] {
            let error = RegistriesConfig::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
        assert_eq!(
            RegistriesConfig::parse("").unwrap(),
            RegistriesConfig::default()
        );
    }

    #[test]
    fn missing_file_is_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistriesConfig::load(&dir.path().join("registries.yaml")).unwrap();
        assert_eq!(config, RegistriesConfig::default());
    }
}
