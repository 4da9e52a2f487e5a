//! Blobs by digest under `content/sha256/<hex>`. A blob is written to a
//! temporary file and renamed into place only once its digest verifies, so a
//! blob that exists is always whole and correct.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, Hashing};
use crate::error::{IoContext, Result};

const TEMP_PREFIX: &str = ".tmp-";

/// A unique temporary name carrying this process' id, so that a later process can
/// tell a leftover of a crashed one from work in progress ([`remove_stale_temps`]).
pub(crate) fn temp_name(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{}-{n}-{label}", std::process::id())
}

/// Removes the temporary files and directories in `dir` left by processes that
/// no longer run (killed mid-pull, for instance).
pub(crate) fn remove_stale_temps(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).io_context("listing", dir),
    };
    for entry in entries {
        let entry = entry.io_context("listing", dir)?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if alive {
            continue;
        }
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing leftover of an interrupted image operation");
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.io_context("removing leftover", &path)?;
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub(crate) struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let store = Self {
            blobs: root.join("content").join("sha256"),
            ingest: root.join("ingest"),
        };
        for dir in [&store.blobs, &store.ingest] {
            fs::create_dir_all(dir).io_context("creating", dir)?;
        }
        remove_stale_temps(&store.ingest)?;
        Ok(store)
    }

    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    pub(crate) fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.path(digest);
        fs::read(&path).io_context("reading blob", &path)
    }

    pub(crate) fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Every blob present, for garbage collection.
    pub(crate) fn list(&self) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for entry in fs::read_dir(&self.blobs).io_context("listing", &self.blobs)? {
            let entry = entry.io_context("listing", &self.blobs)?;
            if let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            {
                digests.push(digest);
            }
        }
        Ok(digests)
    }

    pub(crate) fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(error).io_context("removing blob", &path)
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn ingest_path(&self, label: &str) -> PathBuf {
        self.ingest.join(temp_name(label))
    }

    /// Stores what `reader` yields. With `expected`, the blob is kept only if its
    /// digest matches; without, it is named by the digest it has.
    pub(crate) fn ingest(
        &self,
        expected: Option<&Digest>,
        reader: impl Read,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let temp = self.ingest_path("blob");
        let result = self.ingest_into(&temp, expected, reader, what);
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn ingest_into(
        &self,
        temp: &Path,
        expected: Option<&Digest>,
        mut reader: impl Read,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let file = File::create(temp).io_context("creating", temp)?;
        let mut writer = Hashing::new(file);
        std::io::copy(&mut reader, &mut writer).io_context("writing", temp)?;
        writer.flush().io_context("writing", temp)?;
        let (actual, size, file) = writer.finish();
        if let Some(expected) = expected {
            expected.verify(&actual, what)?;
        }
        file.sync_all().io_context("syncing", temp)?;
        self.commit(temp, &actual)?;
        Ok((actual, size))
    }

    pub(crate) fn ingest_bytes(
        &self,
        expected: Option<&Digest>,
        bytes: &[u8],
        what: &str,
    ) -> Result<Digest> {
        if let Some(expected) = expected {
            if self.contains(expected) {
                expected.verify(&Digest::of(bytes), what)?;
                return Ok(expected.clone());
            }
        }
        self.ingest(expected, bytes, what).map(|(digest, _)| digest)
    }

    /// Downloads a stream into the store, verifying it against `expected`.
    pub(crate) async fn ingest_stream<S, E>(
        &self,
        expected: &Digest,
        mut stream: S,
        what: &str,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let temp = self.ingest_path(expected.hex());
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .io_context("creating", &temp)?;
            let mut hashing = Hashing::new(());
            while let Some(chunk) = stream.next().await {
                let chunk = chunk
                    .map_err(|e| std::io::Error::other(e.into()))
                    .io_context("downloading", &temp)?;
                hashing.update(&chunk);
                file.write_all(&chunk).await.io_context("writing", &temp)?;
            }
            file.flush().await.io_context("writing", &temp)?;
            let (actual, size, ()) = hashing.finish();
            expected.verify(&actual, what)?;
            file.sync_all().await.io_context("syncing", &temp)?;
            drop(file);
            self.commit(&temp, &actual)?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    fn commit(&self, temp: &Path, digest: &Digest) -> Result<()> {
        let target = self.path(digest);
        fs::rename(temp, &target).io_context("storing blob", &target)?;
        sync_dir(&self.blobs)
    }
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .io_context("syncing", dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[test]
    fn verified_blob_is_stored_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"layer");
        let (stored, size) = store
            .ingest(Some(&digest), &b"layer"[..], "test blob")
            .unwrap();
        assert_eq!((stored.clone(), size), (digest.clone(), 5));
        assert_eq!(store.read(&digest).unwrap(), b"layer");
        assert_eq!(
            files_under(dir.path()),
            [dir.path().join("content/sha256").join(digest.hex())]
        );
    }

    #[test]
    fn digest_mismatch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let expected = Digest::of(b"what the manifest promised");
        let error = store
            .ingest(Some(&expected), &b"what arrived"[..], "layer x")
            .unwrap_err();
        match &error {
            Error::DigestMismatch {
                what,
                expected: e,
                actual,
            } => {
                assert_eq!(what, "layer x");
                assert_eq!(e, expected.as_str());
                assert_eq!(actual, Digest::of(b"what arrived").as_str());
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
    }

    #[tokio::test]
    async fn streamed_digest_mismatch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let expected = Digest::of(b"abc");
        let chunks = futures::stream::iter([
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"ab")),
            Ok(bytes::Bytes::from_static(b"d")),
        ]);
        let error = store
            .ingest_stream(&expected, chunks, "blob")
            .await
            .unwrap_err();
        assert!(matches!(error, Error::DigestMismatch { .. }), "{error}");
        assert!(files_under(dir.path()).is_empty());
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = dir.path().join("ingest");
        fs::create_dir_all(&ingest).unwrap();
        // pid 0 never names a user process
        fs::write(ingest.join(format!("{TEMP_PREFIX}0-1-blob")), b"partial").unwrap();
        let ours = ingest.join(temp_name("blob"));
        fs::write(&ours, b"in progress").unwrap();
        ContentStore::open(dir.path()).unwrap();
        assert_eq!(files_under(&ingest), [ours]);
    }
}
