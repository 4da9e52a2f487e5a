//! Linux containers from OCI bundles (see ARCHITECTURE.md).

pub mod logs;
pub mod process;
