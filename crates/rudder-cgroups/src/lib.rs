//! Linux control groups for containers (see ARCHITECTURE.md).
