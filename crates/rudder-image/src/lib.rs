#![doc = include_str!("../README.md")]

mod archive;
mod content;
mod digest;
mod error;
mod lock;
mod manifest;
mod pull;
mod reference;
mod registries;
mod store;
mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::{ImageConfig, ProcessDefaults, RootFs};

pub use pull::{PullReport, Puller};
pub use reference::ImageRef;
pub use registries::{RegistriesConfig, DEFAULT_REGISTRIES_CONFIG};

pub use store::{GcReport, Image, ImageRecord, ImageStore, LayerRecord};
pub use unpack::{unpack_layer, WHITEOUT_OPAQUE_XATTR};

use std::path::{Path, PathBuf};

/// Where, under a node's data directory (`/var/lib/rudder/agent` by default), the
/// image store keeps its content, unpacked layers and references.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("image-store")
}

/// Where, under a node's data directory, operators drop image tarballs
/// (`docker save` or OCI archives) for air-gapped installs; the agent imports
/// each of them when it starts ([`ImageStore::import_directory`]).
pub fn import_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}
