use std::fmt;

use oci_client::Reference;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// An image reference normalised the way Docker and Kubernetes do: `nginx` is
/// `docker.io/library/nginx:latest`, `user/app` is `docker.io/user/app:latest`,
/// and a reference with only a digest keeps no tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<Self> {
        let parsed =
            Reference::try_from(text.trim()).map_err(|source| Error::InvalidReference {
                reference: text.to_string(),
                source,
            })?;
        // The parser lets an upper-case first component through as part of the path;
        // Docker and containerd refuse it, and so does Rudder.
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::InvalidReference {
                reference: text.to_string(),
                source: oci_client::ParseError::NameContainsUppercase,
            });
        }
        let digest = parsed.digest().map(Digest::parse).transpose()?;
        // The registry's domain is case-insensitive and `index.docker.io` is Docker Hub's
        // legacy name: both normalise so one image has one name in the store.
        let registry = match parsed.registry().to_ascii_lowercase().as_str() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            other => other.to_string(),
        };
        Ok(Self {
            registry,
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest,
        })
    }

    /// The registry's name as written in references (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository and tag/digest on another registry host (a mirror).
    pub(crate) fn to_oci_reference(&self, host: &str) -> Reference {
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
                host.to_string(),
                self.repository.clone(),
                tag.clone(),
                digest.to_string(),
            ),
            (None, Some(digest)) => Reference::with_digest(
                host.to_string(),
                self.repository.clone(),
                digest.to_string(),
            ),
            (tag, None) => Reference::with_tag(
                host.to_string(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        }
    }

    /// Whether `host` may be reached over plain HTTP without being listed as
    /// insecure: registries on the loopback interface, as Docker allows.
    pub(crate) fn is_loopback_host(host: &str) -> bool {
        let name = host
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']').map(|(name, _)| name))
            .unwrap_or_else(|| host.split(':').next().unwrap_or(host));
        name == "localhost" || name == "::1" || name.starts_with("127.")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(
            ImageRef::parse(input).unwrap().to_string(),
            expected,
            "{input}"
        );
    }

    #[test]
    fn normalises_docker_hub_names() {
        check("nginx", "docker.io/library/nginx:latest");
        check("nginx:1.27", "docker.io/library/nginx:1.27");
        check("user/app", "docker.io/user/app:latest");
        check("docker.io/nginx", "docker.io/library/nginx:latest");
        check(
            "index.docker.io/library/nginx:1",
            "docker.io/library/nginx:1",
        );
        check("127.0.0.1:5000/busybox:1.35", "127.0.0.1:5000/busybox:1.35");
        check("localhost/app", "localhost/app:latest");
        check("quay.io/a/b/c:v1", "quay.io/a/b/c:v1");
    }

    #[test]
    fn keeps_digests_with_or_without_tag() {
        let hex = "0".repeat(64);
        check(
            &format!("nginx@sha256:{hex}"),
            &format!("docker.io/library/nginx@sha256:{hex}"),
        );
        check(
            &format!("nginx:1@sha256:{hex}"),
            &format!("docker.io/library/nginx:1@sha256:{hex}"),
        );
        let parsed = ImageRef::parse(&format!("reg:5000/x@sha256:{hex}")).unwrap();
        assert_eq!(parsed.registry(), "reg:5000");
        assert_eq!(parsed.tag(), None);
        assert_eq!(parsed.digest().unwrap().hex(), hex);
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "UPPER/case",
            "nginx:",
            "a@sha256:123",
            "a@md5:0123456789abcdef0123456789abcdef",
        ] {
            let error = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::InvalidReference { .. } | Error::InvalidDigest { .. }
                ),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(ImageRef::is_loopback_host(host), "{host}");
        }
        for host in ["docker.io", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!ImageRef::is_loopback_host(host), "{host}");
        }
    }
}
