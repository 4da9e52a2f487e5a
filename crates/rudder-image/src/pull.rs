//! Pulls images from registries over the OCI distribution API (`oci-client`).

use std::time::Duration;

use futures::future::try_join_all;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::lock::FileLock;
use crate::manifest::{
    describe_platforms, select_platform, Descriptor, Manifest, ManifestKind, MANIFEST_TYPES,
};
use crate::reference::ImageRef;
use crate::registries::{Credentials, Endpoint, RegistriesConfig};
use crate::store::{ImageRecord, ImageStore};

/// Layer media types the store can unpack: tar, optionally gzip-compressed, in
/// their OCI, Docker and non-distributable spellings.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// What a pull did.
#[derive(Clone, Debug)]
pub struct PullReport {
    pub record: ImageRecord,
    /// The registry host the image came from (a mirror or the registry itself).
    pub endpoint: String,
    /// Blobs (config and layers) downloaded; those already in the store are not.
    pub blobs_downloaded: usize,
    /// Layers unpacked by this pull; those already unpacked are shared.
    pub layers_unpacked: usize,
}

/// Pulls images with the mirrors, credentials and TLS settings of a registries config.
#[derive(Clone, Debug, Default)]
pub struct Puller {
    config: RegistriesConfig,
    connect_timeout: Option<Duration>,
}

impl Puller {
    pub fn new(config: RegistriesConfig) -> Self {
        // rustls needs a process-wide crypto provider; Rudder uses ring's. An
        // error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            config,
            connect_timeout: Some(Duration::from_secs(15)),
        }
    }

    /// Pulls `reference` into `store`: its linux/amd64 manifest, config and layers,
    /// each verified against its digest, then unpacks the layers it lacks. Tries
    /// the mirrors first, then the registry. Concurrent pulls of one image (in
    /// this process or another) download each blob once.
    pub async fn pull(&self, store: &ImageStore, reference: &str) -> Result<PullReport> {
        let image = ImageRef::parse(reference)?;
        let result = {
            let _gc = FileLock::shared_async(store.gc_lock_path()).await?;
            self.pull_endpoints(store, &image).await
        };
        if result.is_err() {
            // Verified blobs of a failed pull are whole but unnamed: collect them
            // now unless another pull or import is running.
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.try_gc()).await;
        }
        result
    }

    async fn pull_endpoints(&self, store: &ImageStore, image: &ImageRef) -> Result<PullReport> {
        let mut errors = Vec::new();
        for endpoint in self.config.endpoints(image) {
            match self.pull_from(store, image, &endpoint).await {
                Ok(report) => return Ok(report),
                // Local faults (disk, unpacking) would fail on any endpoint.
                Err(error @ (Error::Io { .. } | Error::Unpack { .. })) => return Err(error),
                Err(error) => {
                    tracing::warn!(image = %image, endpoint = %endpoint.host, %error, "pull failed");
                    errors.push(error);
                }
            }
        }
        if errors.len() == 1 {
            Err(errors.remove(0))
        } else {
            Err(Error::AllEndpointsFailed {
                reference: image.to_string(),
                errors,
            })
        }
    }

    async fn pull_from(
        &self,
        store: &ImageStore,
        image: &ImageRef,
        endpoint: &Endpoint,
    ) -> Result<PullReport> {
        let client = self.client(endpoint)?;
        let auth = match &endpoint.auth {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic(user, password) => {
                RegistryAuth::Basic(user.clone(), password.clone())
            }
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        };
        let remote = Remote {
            client,
            auth,
            image,
            host: &endpoint.host,
        };
        let reference = image.to_oci_reference(&endpoint.host);
        let top_bytes = remote.manifest(&reference).await?;
        let top_digest = Digest::of(&top_bytes);
        if let Some(expected) = image.digest() {
            expected.verify(&top_digest, format!("manifest of {image}"))?;
        }
        let top = Manifest::parse(&top_bytes).map_err(|reason| remote.invalid(reason))?;
        let (manifest_digest, manifest_bytes) = match top.kind().map_err(|r| remote.invalid(r))? {
            ManifestKind::Image { .. } => (top_digest.clone(), top_bytes.clone()),
            ManifestKind::Index(entries) => {
                let chosen = select_platform(entries).ok_or_else(|| Error::NoMatchingPlatform {
                    reference: image.to_string(),
                    available: describe_platforms(entries),
                })?;
                let digest = Digest::parse(&chosen.digest)?;
                let bytes = remote
                    .manifest(&Reference::with_digest(
                        endpoint.host.clone(),
                        image.repository().to_string(),
                        digest.to_string(),
                    ))
                    .await?;
                digest.verify(
                    &Digest::of(&bytes),
                    format!("linux/amd64 manifest of {image}"),
                )?;
                (digest, bytes)
            }
        };
        let manifest = Manifest::parse(&manifest_bytes).map_err(|r| remote.invalid(r))?;
        let ManifestKind::Image { config, layers } =
            manifest.kind().map_err(|r| remote.invalid(r))?
        else {
            return Err(remote.invalid(format!("{manifest_digest} is an index inside an index")));
        };
        for layer in layers {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(Error::UnsupportedMediaType {
                    reference: image.to_string(),
                    media_type: layer.media_type.clone(),
                });
            }
        }
        let content = store.content();
        content.ingest_bytes(Some(&top_digest), &top_bytes, "manifest")?;
        content.ingest_bytes(Some(&manifest_digest), &manifest_bytes, "manifest")?;
        let blobs = std::iter::once(config).chain(layers);
        let downloads = try_join_all(blobs.map(|blob| remote.fetch_blob(store, blob))).await?;
        let blobs_downloaded = downloads
            .into_iter()
            .filter(|&downloaded| downloaded)
            .count();

        let name = image.to_string();
        let committing = store.clone();
        let (record, layers_unpacked) = tokio::task::spawn_blocking(move || {
            committing.commit_image(&name, &top_digest, &manifest_digest)
        })
        .await
        .expect("unpack task panicked")?;
        Ok(PullReport {
            record,
            endpoint: endpoint.host.clone(),
            blobs_downloaded,
            layers_unpacked,
        })
    }

    fn client(&self, endpoint: &Endpoint) -> Result<Client> {
        let mut extra_root_certificates = Vec::new();
        if let Some(ca_file) = &endpoint.ca_file {
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: std::fs::read(ca_file).io_context("reading CA file", ca_file)?,
            });
        }
        Ok(Client::new(ClientConfig {
            protocol: if endpoint.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: endpoint.skip_tls_verify,
            extra_root_certificates,
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            connect_timeout: self.connect_timeout,
            ..ClientConfig::default()
        }))
    }
}

/// One registry endpoint, for one image.
struct Remote<'a> {
    client: Client,
    auth: RegistryAuth,
    image: &'a ImageRef,
    host: &'a str,
}

impl Remote<'_> {
    fn invalid(&self, reason: String) -> Error {
        Error::InvalidImage {
            reference: self.image.to_string(),
            reason: format!("from {}: {reason}", self.host),
        }
    }

    async fn manifest(&self, reference: &Reference) -> Result<bytes::Bytes> {
        self.client
            .pull_manifest_raw(reference, &self.auth, MANIFEST_TYPES)
            .await
            .map(|(bytes, _)| bytes)
            .map_err(|error| self.classify(error))
    }

    /// Downloads `blob` unless the store has it; returns whether it downloaded.
    async fn fetch_blob(&self, store: &ImageStore, blob: &Descriptor) -> Result<bool> {
        let digest = Digest::parse(&blob.digest)?;
        if store.content().contains(&digest) {
            return Ok(false);
        }
        let _lock = FileLock::exclusive_async(store.blob_lock_path(&digest)).await?;
        if store.content().contains(&digest) {
            return Ok(false); // another pull fetched it while we waited
        }
        let reference = Reference::with_digest(
            self.host.to_string(),
            self.image.repository().to_string(),
            digest.to_string(),
        );
        // Ensures the client holds a token for the repository before the blob request.
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        let stream = self
            .client
            .pull_blob_stream(&reference, blob.digest.as_str())
            .await
            .map_err(|error| self.classify(error))?;
        let what = format!("blob {digest} of {}", self.image);
        let size = store
            .content()
            .ingest_stream(&digest, stream.stream, &what)
            .await?;
        tracing::debug!(image = %self.image, %digest, size, "downloaded blob");
        Ok(true)
    }

    fn classify(&self, error: OciDistributionError) -> Error {
        let reference = self.image.to_string();
        let registry = self.host.to_string();
        let not_found = match &error {
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                })
            }
            OciDistributionError::ImageManifestNotFoundError(_) => true,
            OciDistributionError::ServerError { code, .. } => *code == 404,
            _ => false,
        };
        if not_found {
            return Error::NotFound {
                reference,
                registry,
            };
        }
        match &error {
            OciDistributionError::RequestError(request)
                if request.is_connect() || request.is_timeout() =>
            {
                Error::Unreachable {
                    registry,
                    source: error,
                }
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Error::Unauthorized {
                reference,
                registry,
                source: error,
            },
            _ => Error::Registry {
                reference,
                registry,
                source: error,
            },
        }
    }
}
