//! Advisory file locks (flock) that serialise work on one digest across tasks
//! and processes: the agent and `rudder ctr` share one store.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{IoContext, Result};

/// Holds a lock until dropped (closing the file releases it).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .io_context("opening lock file", path)
}

impl FileLock {
    /// Blocks until the lock at `path` is held exclusively. Each call opens the
    /// file anew, so two tasks of one process exclude each other too.
    pub(crate) fn exclusive(path: &Path) -> Result<Self> {
        let file = open(path)?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)
            .io_context("locking", path)?;
        Ok(Self { _file: file })
    }

    /// Takes the lock exclusively if nobody holds it, else returns `None`.
    pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        let file = open(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(error) => Err(std::io::Error::from(error)).io_context("locking", path),
        }
    }

    /// Blocks until the lock at `path` is held shared.
    pub(crate) fn shared(path: &Path) -> Result<Self> {
        let file = open(path)?;
        flock(&file, FlockOperation::LockShared)
            .map_err(std::io::Error::from)
            .io_context("locking", path)?;
        Ok(Self { _file: file })
    }

    /// The same, from async code: waiting for a lock must not block a runtime thread.
    pub(crate) async fn exclusive_async(path: PathBuf) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::exclusive(&path))
            .await
            .expect("lock task panicked")
    }

    pub(crate) async fn shared_async(path: PathBuf) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::shared(&path))
            .await
            .expect("lock task panicked")
    }
}
