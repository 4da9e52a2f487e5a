//! Imports image tarballs: `docker save` archives (`manifest.json` with
//! `RepoTags`) and OCI image layouts packed as tar (`oci-layout`, `index.json`,
//! `blobs/`), optionally gzip-compressed.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::lock::FileLock;
use crate::manifest::{
    describe_platforms, select_platform, Descriptor, Manifest, ManifestKind, DOCKER_MANIFEST_LIST,
    OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST,
};
use crate::reference::ImageRef;
use crate::store::{decompressed, ImageRecord, ImageStore};

/// containerd's annotation for the full image name in an OCI archive.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ImageStore {
    /// Imports every image in the archive at `path`; returns their records.
    /// A corrupt archive yields [`Error::CorruptArchive`] and names no image.
    pub fn import_archive(&self, path: &Path) -> Result<Vec<ImageRecord>> {
        let result = {
            let _gc = FileLock::shared(&self.gc_lock_path())?;
            let temp = self.content().ingest_path("import");
            fs::create_dir(&temp).io_context("creating", &temp)?;
            let result = self.import_unpacked(path, &temp);
            let _ = fs::remove_dir_all(&temp);
            result
        };
        if result.is_err() {
            // Leave no unnamed blob of a failed import behind (unless others are busy).
            let _ = self.try_gc();
        }
        result
    }

    /// Imports every `.tar`, `.tar.gz` and `.tgz` file in `dir` (the node's
    /// air-gap directory, see [`crate::import_dir`]), in name order. The agent calls
    /// it at start; one bad tarball does not stop the others. A missing
    /// directory imports nothing.
    pub fn import_directory(&self, dir: &Path) -> Vec<(PathBuf, Result<Vec<ImageRecord>>)> {
        let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| {
                    let name = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default();
                    path.is_file()
                        && [".tar", ".tar.gz", ".tgz"]
                            .iter()
                            .any(|ext| name.ends_with(ext))
                })
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return vec![(dir.to_path_buf(), Err(error).io_context("listing", dir))],
        };
        files.sort();
        files
            .into_iter()
            .map(|file| {
                let result = self.import_archive(&file);
                match &result {
                    Ok(records) => {
                        for record in records {
                            tracing::info!(file = %file.display(), image = %record.name, "imported image");
                        }
                    }
                    Err(error) => tracing::warn!(file = %file.display(), %error, "image import failed"),
                }
                (file, result)
            })
            .collect()
    }

    fn import_unpacked(&self, archive: &Path, temp: &Path) -> Result<Vec<ImageRecord>> {
        let corrupt = |reason: String| Error::CorruptArchive {
            path: archive.to_path_buf(),
            reason,
        };
        let file = File::open(archive).io_context("opening image archive", archive)?;
        let reader = decompressed(BufReader::new(file)).map_err(corrupt)?;
        let mut tar = tar::Archive::new(reader);
        let entries = tar.entries().map_err(|e| corrupt(e.to_string()))?;
        let mut count = 0;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(error_chain(&e)))?;
            let kind = entry.header().entry_type();
            if kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link() {
                let name = entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let unpacked = entry
                    .unpack_in(temp)
                    .map_err(|e| corrupt(format!("{name}: {}", error_chain(&e))))?;
                if !unpacked {
                    return Err(corrupt("an entry lies outside the archive".into()));
                }
                count += 1;
            }
        }
        if count == 0 {
            return Err(corrupt("not a tar archive, or an empty one".into()));
        }
        let importer = Importer {
            store: self,
            archive,
            root: temp,
        };
        if temp.join("manifest.json").is_file() {
            importer.docker_archive()
        } else if temp.join("index.json").is_file() {
            importer.oci_archive()
        } else {
            Err(corrupt(
                "neither manifest.json (docker save) nor index.json (OCI image layout) found"
                    .into(),
            ))
        }
    }
}

/// An error with its causes: the tar crate wraps the useful one ("unexpected
/// end of file") in one that names only our temporary path.
fn error_chain(error: &std::io::Error) -> String {
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = error.get_ref().map(|e| e as _).or(Some(error));
    while let Some(current) = cause {
        let message = current.to_string();
        if !message.starts_with("failed to unpack") {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        cause = current.source();
    }
    if text.is_empty() {
        error.to_string()
    } else {
        text
    }
}

struct Importer<'a> {
    store: &'a ImageStore,
    archive: &'a Path,
    root: &'a Path,
}

impl Importer<'_> {
    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::CorruptArchive {
            path: self.archive.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Opens a file of the unpacked archive, refusing paths (or symlinks) that
    /// lead outside it: an archive must not import files of the host.
    fn open(&self, relative: &str) -> Result<File> {
        let clean: PathBuf = Path::new(relative)
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
            .collect();
        if clean.components().any(|c| c == Component::ParentDir) {
            return Err(self.corrupt(format!("{relative} lies outside the archive")));
        }
        let path = self.root.join(&clean);
        let resolved = path
            .canonicalize()
            .map_err(|_| self.corrupt(format!("{relative} is missing")))?;
        let root = self
            .root
            .canonicalize()
            .io_context("resolving", self.root)?;
        if !resolved.starts_with(&root) || !resolved.is_file() {
            return Err(self.corrupt(format!("{relative} is not a file inside the archive")));
        }
        File::open(&resolved).io_context("opening", &resolved)
    }

    fn read(&self, relative: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open(relative)?
            .read_to_end(&mut bytes)
            .map_err(|e| self.corrupt(format!("{relative}: {e}")))?;
        Ok(bytes)
    }

    fn docker_archive(&self) -> Result<Vec<ImageRecord>> {
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(&self.read("manifest.json")?)
                .map_err(|e| self.corrupt(format!("manifest.json: {e}")))?;
        if entries.is_empty() {
            return Err(self.corrupt("manifest.json lists no image"));
        }
        let mut imported = Vec::new();
        for entry in entries {
            let config_bytes = self.read(&entry.config)?;
            let config = crate::manifest::ImageConfig::parse(&config_bytes)
                .map_err(|e| self.corrupt(format!("{}: {e}", entry.config)))?;
            if config.rootfs.diff_ids.len() != entry.layers.len() {
                return Err(self.corrupt(format!(
                    "{} lists {} layers but its config {} diff ids",
                    "manifest.json",
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                )));
            }
            let config_digest =
                self.store
                    .content()
                    .ingest_bytes(None, &config_bytes, "image config")?;
            let mut layers = Vec::new();
            for (layer, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
                let mut reader = BufReader::new(self.open(layer)?);
                let gzip = std::io::BufRead::fill_buf(&mut reader)
                    .map_err(|e| self.corrupt(format!("{layer}: {e}")))?
                    .starts_with(&[0x1f, 0x8b]);
                let (digest, size) = self.store.content().ingest(None, reader, layer)?;
                if !gzip {
                    // An uncompressed layer is its own diff: check now, naming the file.
                    Digest::parse(diff_id)?
                        .verify(&digest, format!("{layer} in {}", self.archive.display()))?;
                }
                layers.push(Descriptor {
                    media_type: if gzip { OCI_LAYER_GZIP } else { OCI_LAYER }.to_string(),
                    digest: digest.to_string(),
                    size: size as i64,
                    ..Descriptor::default()
                });
            }
            // `docker save` has no manifest: write the OCI one a registry would serve.
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.to_string()),
                config: Some(Descriptor {
                    media_type: OCI_CONFIG.to_string(),
                    digest: config_digest.to_string(),
                    size: config_bytes.len() as i64,
                    ..Descriptor::default()
                }),
                layers: Some(layers),
                manifests: None,
            };
            let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
            let manifest_digest =
                self.store
                    .content()
                    .ingest_bytes(None, &manifest_bytes, "manifest")?;
            let names = entry.repo_tags.unwrap_or_default();
            imported.extend(self.commit(&names, &manifest_digest, &manifest_digest)?);
        }
        Ok(imported)
    }

    fn oci_archive(&self) -> Result<Vec<ImageRecord>> {
        let index = Manifest::parse(&self.read("index.json")?)
            .map_err(|e| self.corrupt(format!("index.json: {e}")))?;
        let Ok(ManifestKind::Index(entries)) = index.kind() else {
            return Err(self.corrupt("index.json is not an image index"));
        };
        if entries.is_empty() {
            return Err(self.corrupt("index.json lists no image"));
        }
        let mut imported = Vec::new();
        for entry in entries {
            let top = Digest::parse(&entry.digest)?;
            let manifest_digest = self.manifest_for(entry, 0)?;
            let names: Vec<String> = entry
                .annotations
                .iter()
                .flat_map(|a| {
                    // A bare tag ("1.0") names no repository: only full names are usable.
                    a.get(CONTAINERD_NAME)
                        .or_else(|| a.get(OCI_REF_NAME).filter(|n| n.contains('/')))
                        .cloned()
                })
                .collect();
            imported.extend(self.commit(&names, &top, &manifest_digest)?);
        }
        Ok(imported)
    }

    /// Stores the linux/amd64 image manifest `entry` leads to (through nested
    /// indexes), with its config and layers, verifying each blob.
    fn manifest_for(&self, entry: &Descriptor, depth: usize) -> Result<Digest> {
        if depth > 4 {
            return Err(self.corrupt("indexes nest too deep"));
        }
        let digest = self.blob(&entry.digest)?;
        let manifest = Manifest::parse(&self.store.content().read(&digest)?)
            .map_err(|e| self.corrupt(format!("{digest}: {e}")))?;
        match manifest
            .kind()
            .map_err(|e| self.corrupt(format!("{digest}: {e}")))?
        {
            ManifestKind::Index(entries) => {
                let chosen = select_platform(entries).ok_or_else(|| Error::NoMatchingPlatform {
                    reference: format!("{} ({digest})", self.archive.display()),
                    available: describe_platforms(entries),
                })?;
                self.manifest_for(chosen, depth + 1)
            }
            ManifestKind::Image { config, layers } => {
                if matches!(entry.media_type.as_str(), OCI_INDEX | DOCKER_MANIFEST_LIST) {
                    return Err(
                        self.corrupt(format!("{digest} is typed as an index but is a manifest"))
                    );
                }
                self.blob(&config.digest)?;
                for layer in layers {
                    self.blob(&layer.digest)?;
                }
                Ok(digest)
            }
        }
    }

    /// Copies `blobs/sha256/<hex>` into the store, verifying its digest.
    fn blob(&self, digest: &str) -> Result<Digest> {
        let digest = Digest::parse(digest)?;
        if !self.store.content().contains(&digest) {
            let file = self.open(&format!("blobs/sha256/{}", digest.hex()))?;
            let what = format!("blob {digest} in {}", self.archive.display());
            self.store.content().ingest(Some(&digest), file, &what)?;
        }
        Ok(digest)
    }

    fn commit(
        &self,
        names: &[String],
        top: &Digest,
        manifest: &Digest,
    ) -> Result<Vec<ImageRecord>> {
        let mut normalised = Vec::new();
        for name in names {
            normalised.push(ImageRef::parse(name)?.to_string());
        }
        if normalised.is_empty() {
            normalised.push(top.to_string());
        }
        let mut records = Vec::new();
        for name in normalised {
            records.push(self.store.commit_image(&name, top, manifest)?.0);
        }
        Ok(records)
    }
}
