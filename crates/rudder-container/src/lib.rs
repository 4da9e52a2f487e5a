//! Linux containers from OCI bundles (see ARCHITECTURE.md).
