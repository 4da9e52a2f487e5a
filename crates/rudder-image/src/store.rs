//! The image store: blobs, unpacked layers and named references under one root.
//!
//! ```text
//! <root>/content/sha256/<hex>   blobs (manifests, configs, compressed layers), by digest
//! <root>/layers/<diff-id hex>/  each layer unpacked once, in overlayfs form
//! <root>/refs/<hex>.json        one file per image name (hex = sha256 of the name)
//! <root>/ingest/                downloads and imports in progress
//! <root>/locks/                 flock files: one per digest, and gc.lock
//! ```

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::content::{remove_stale_temps, sync_dir, temp_name, ContentStore};
use crate::digest::{Digest, Hashing};
use crate::error::{Error, IoContext, Result};
use crate::lock::FileLock;
use crate::manifest::{ImageConfig, Manifest, ManifestKind};
use crate::reference::ImageRef;
use crate::unpack::unpack_layer;

/// What the store knows of one image name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference (`docker.io/library/nginx:latest`), or the
    /// manifest digest for an image imported without a name.
    pub name: String,
    /// What the name resolved to: an index's digest for a multi-platform image,
    /// else the manifest's (the "repo digest").
    pub digest: String,
    /// The linux/amd64 image manifest.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of content: manifest, config and compressed layers.
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The blob's digest (compressed, as distributed).
    pub digest: String,
    /// The uncompressed tar's digest, from the image config; names the unpacked dir.
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
}

/// An image ready for a runtime: its config and its unpacked layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub record: ImageRecord,
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first. overlayfs lists lower dirs top
    /// first, so a mount reverses this.
    pub layer_dirs: Vec<PathBuf>,
}

/// What a garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
}

#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    layers: PathBuf,
    refs: PathBuf,
    locks: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, removing what processes
    /// that died mid-operation left behind.
    pub fn open(root: &Path) -> Result<Self> {
        let store = Self {
            root: root.to_path_buf(),
            content: ContentStore::open(root)?,
            layers: root.join("layers"),
            refs: root.join("refs"),
            locks: root.join("locks"),
        };
        for dir in [&store.layers, &store.refs, &store.locks] {
            fs::create_dir_all(dir).io_context("creating", dir)?;
        }
        remove_stale_temps(&store.layers)?;
        remove_stale_temps(&store.refs)?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory a layer is unpacked into, named by its diff id.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex())
    }

    /// The path of a blob in the store.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.content.path(digest)
    }

    pub(crate) fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Pulls and imports hold it shared, garbage collection exclusively, so
    /// collection never removes a blob an unfinished pull has just stored.
    pub(crate) fn gc_lock_path(&self) -> PathBuf {
        self.locks.join("gc.lock")
    }

    /// Serialises the download of one blob.
    pub(crate) fn blob_lock_path(&self, digest: &Digest) -> PathBuf {
        self.locks.join(format!("{}.lock", digest.hex()))
    }

    fn layer_lock_path(&self, diff_id: &Digest) -> PathBuf {
        self.locks.join(format!("layer-{}.lock", diff_id.hex()))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.refs
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// Names `manifest_digest` (already in the content store with its config and
    /// layers) as `name`: unpacks the layers it lacks, then writes the reference,
    /// last, so that a name only ever points at a complete image.
    pub(crate) fn commit_image(
        &self,
        name: &str,
        digest: &Digest,
        manifest_digest: &Digest,
    ) -> Result<(ImageRecord, usize)> {
        let invalid = |reason: String| Error::InvalidImage {
            reference: name.to_string(),
            reason,
        };
        let manifest_bytes = self.content.read(manifest_digest)?;
        let manifest = Manifest::parse(&manifest_bytes).map_err(invalid)?;
        let ManifestKind::Image { config, layers } = manifest.kind().map_err(invalid)? else {
            return Err(invalid(format!(
                "{manifest_digest} is an index, not an image manifest"
            )));
        };
        let config_digest = Digest::parse(&config.digest)?;
        let image_config =
            ImageConfig::parse(&self.content.read(&config_digest)?).map_err(invalid)?;
        let diff_ids = &image_config.rootfs.diff_ids;
        if diff_ids.len() != layers.len() {
            return Err(invalid(format!(
                "the manifest lists {} layers but the config {} diff ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let mut records = Vec::with_capacity(layers.len());
        let mut unpacked = 0;
        let mut size = manifest_bytes.len() as u64 + self.content.size(&config_digest).unwrap_or(0);
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let blob = Digest::parse(&layer.digest)?;
            let diff_id = Digest::parse(diff_id)?;
            if self.ensure_layer(&blob, &diff_id)? {
                unpacked += 1;
            }
            let blob_size = self.content.size(&blob).unwrap_or(0);
            size += blob_size;
            records.push(LayerRecord {
                digest: blob.to_string(),
                diff_id: diff_id.to_string(),
                media_type: layer.media_type.clone(),
                size: blob_size,
            });
        }
        let record = ImageRecord {
            name: name.to_string(),
            digest: digest.to_string(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: config_digest.to_string(),
            layers: records,
            size,
        };
        self.write_record(&record)?;
        Ok((record, unpacked))
    }

    fn write_record(&self, record: &ImageRecord) -> Result<()> {
        let target = self.record_path(&record.name);
        let temp = self.refs.join(temp_name("ref"));
        let json = serde_json::to_vec_pretty(record).expect("an image record serialises");
        let written = fs::write(&temp, json)
            .and_then(|()| File::open(&temp)?.sync_all())
            .and_then(|()| fs::rename(&temp, &target));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.io_context("writing image reference", &target)?;
        sync_dir(&self.refs)
    }

    /// Unpacks the layer blob `blob` into its directory unless that exists;
    /// returns whether it unpacked. The uncompressed stream must hash to `diff_id`.
    pub(crate) fn ensure_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<bool> {
        let dir = self.layer_dir(diff_id);
        if dir.is_dir() {
            return Ok(false);
        }
        let _lock = FileLock::exclusive(&self.layer_lock_path(diff_id))?;
        if dir.is_dir() {
            return Ok(false); // another task or process unpacked it meanwhile
        }
        let temp = self.layers.join(temp_name(diff_id.hex()));
        fs::create_dir(&temp).io_context("creating", &temp)?;
        let result = self.unpack_into(blob, diff_id, &temp).and_then(|()| {
            fs::rename(&temp, &dir).io_context("storing layer", &dir)?;
            sync_dir(&self.layers)
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        result.map(|()| true)
    }

    fn unpack_into(&self, blob: &Digest, diff_id: &Digest, temp: &Path) -> Result<()> {
        let path = self.content.path(blob);
        let file = File::open(&path).io_context("opening layer blob", &path)?;
        let reader = decompressed(BufReader::new(file)).map_err(|reason| Error::Unpack {
            diff_id: diff_id.to_string(),
            reason: format!("layer {blob}: {reason}"),
        })?;
        let mut hashing = Hashing::new(reader);
        let unpack_error = |error: std::io::Error| Error::Unpack {
            diff_id: diff_id.to_string(),
            reason: format!("layer {blob}: {error}"),
        };
        unpack_layer(&mut hashing, temp).map_err(unpack_error)?;
        // The tar ends before its zero padding: hash that too.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(unpack_error)?;
        let (actual, _, _) = hashing.finish();
        diff_id.verify(&actual, format!("uncompressed layer {blob}"))?;
        // One syncfs before the rename, so a power loss cannot leave a named but empty layer.
        let dir = File::open(temp).io_context("opening", temp)?;
        rustix::fs::syncfs(&dir)
            .map_err(std::io::Error::from)
            .io_context("syncing", temp)
    }

    /// Every named image, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.refs).io_context("listing", &self.refs)? {
            let path = entry.io_context("listing", &self.refs)?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // removed since the listing
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error).io_context("reading image reference", &path),
            };
            match serde_json::from_slice::<ImageRecord>(&bytes) {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring unreadable image reference")
                }
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// The images a user's reference means: the exact stored name, the
    /// normalised reference, or every name of a digest (`sha256:…`).
    fn matching(&self, reference: &str) -> Result<Vec<ImageRecord>> {
        let records = self.list()?;
        let by_name = |name: &str| {
            records
                .iter()
                .filter(|r| r.name == name)
                .cloned()
                .collect::<Vec<_>>()
        };
        let exact = by_name(reference);
        if !exact.is_empty() {
            return Ok(exact);
        }
        if let Ok(digest) = Digest::parse(reference) {
            return Ok(records
                .iter()
                .filter(|r| r.digest == digest.as_str() || r.manifest_digest == digest.as_str())
                .cloned()
                .collect());
        }
        Ok(by_name(&ImageRef::parse(reference)?.to_string()))
    }

    /// The record of `reference`.
    pub fn record(&self, reference: &str) -> Result<ImageRecord> {
        self.matching(reference)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::ImageNotPresent {
                reference: reference.to_string(),
            })
    }

    /// The image `reference` names, with its config and unpacked layers.
    pub fn image(&self, reference: &str) -> Result<Image> {
        let record = self.record(reference)?;
        let config_digest = Digest::parse(&record.config_digest)?;
        let config = ImageConfig::parse(&self.content.read(&config_digest)?).map_err(|reason| {
            Error::InvalidImage {
                reference: record.name.clone(),
                reason,
            }
        })?;
        let layer_dirs = record
            .layers
            .iter()
            .map(|layer| Digest::parse(&layer.diff_id).map(|d| self.layer_dir(&d)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Image {
            record,
            config,
            layer_dirs,
        })
    }

    /// Removes the names `reference` matches, then collects what no image uses.
    pub fn remove(&self, reference: &str) -> Result<(Vec<ImageRecord>, GcReport)> {
        let removed = self.matching(reference)?;
        if removed.is_empty() {
            return Err(Error::ImageNotPresent {
                reference: reference.to_string(),
            });
        }
        for record in &removed {
            let path = self.record_path(&record.name);
            match fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error).io_context("removing image reference", &path)
                }
                _ => {}
            }
        }
        sync_dir(&self.refs)?;
        Ok((removed, self.gc()?))
    }

    /// Removes blobs and unpacked layers that no named image uses. Waits for
    /// running pulls and imports to finish first.
    pub fn gc(&self) -> Result<GcReport> {
        let _exclusive = FileLock::exclusive(&self.gc_lock_path())?;
        self.collect()
    }

    /// Collects unless a pull or import is running (then returns `None`): what a
    /// failed operation left is collected without waiting for others.
    pub(crate) fn try_gc(&self) -> Result<Option<GcReport>> {
        match FileLock::try_exclusive(&self.gc_lock_path())? {
            Some(_exclusive) => self.collect().map(Some),
            None => Ok(None),
        }
    }

    fn collect(&self) -> Result<GcReport> {
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        for record in self.list()? {
            blobs.extend([record.digest, record.manifest_digest, record.config_digest]);
            for layer in record.layers {
                blobs.insert(layer.digest);
                layers.insert(layer.diff_id);
            }
        }
        let mut report = GcReport::default();
        for digest in self.content.list()? {
            if !blobs.contains(digest.as_str()) {
                report.bytes_freed += self.content.size(&digest).unwrap_or(0);
                self.content.remove(&digest)?;
                report.blobs_removed += 1;
            }
        }
        for entry in fs::read_dir(&self.layers).io_context("listing", &self.layers)? {
            let entry = entry.io_context("listing", &self.layers)?;
            let Some(diff_id) = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            else {
                continue; // temporary dirs of running unpacks
            };
            if !layers.contains(diff_id.as_str()) {
                let path = entry.path();
                fs::remove_dir_all(&path).io_context("removing layer", &path)?;
                report.layers_removed += 1;
            }
        }
        // No pull runs while we hold the lock, so per-digest lock files are idle.
        for entry in fs::read_dir(&self.locks).io_context("listing", &self.locks)? {
            let entry = entry.io_context("listing", &self.locks)?;
            if entry.file_name() != "gc.lock" {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(report)
    }
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub(crate) fn decompressed<R: BufRead + Send + 'static>(
    mut reader: R,
) -> Result<Box<dyn Read + Send>, String> {
    let head = reader.fill_buf().map_err(|e| e.to_string())?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err("zstd-compressed layers are not supported yet".to_string())
    } else {
        Ok(Box::new(reader))
    }
}
