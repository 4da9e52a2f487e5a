//! Developer tasks for the Rudder workspace, run with `cargo run -p xtask -- <task>`.
//!
//! - `gen-protobuf-schema [--check]`: regenerate (or check) the table that
//!   `rudder_apimachinery::protobuf` decodes Kubernetes protobuf with.

mod k8s_openapi;
mod k8s_pb;
mod protobuf_schema;
mod rust_source;

use std::process::ExitCode;

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let result = match arguments.first().map(String::as_str) {
        Some("gen-protobuf-schema") => protobuf_schema::run(&arguments[1..]),
        _ => {
            eprintln!(
                "usage: cargo run -p xtask -- gen-protobuf-schema [--check] [--registry DIR]"
            );
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
