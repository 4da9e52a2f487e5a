//! The node agent (see ARCHITECTURE.md).

pub mod server;
