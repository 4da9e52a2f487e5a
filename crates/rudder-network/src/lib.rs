//! Pod networking on a node (see ARCHITECTURE.md).
