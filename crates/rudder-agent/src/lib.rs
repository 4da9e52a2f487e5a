//! The node agent (see ARCHITECTURE.md).

pub mod env;
pub mod volumes;
