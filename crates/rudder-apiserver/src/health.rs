//! `/healthz`, `/livez`, `/readyz` and `/version`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::{ApiError, ApiServer, KUBERNETES_VERSION};

pub(crate) fn routes() -> Router<ApiServer> {
    Router::new()
        .route("/healthz", get(ready))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/version", get(version))
}

/// Ready when the store answers.
async fn ready(State(server): State<ApiServer>) -> Result<&'static str, ApiError> {
    server.store().revisions().await?;
    Ok("ok")
}

async fn version() -> Json<serde_json::Value> {
    let (major, minor) = KUBERNETES_VERSION;
    Json(json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-rudder.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    }))
}

/// Architecture names as Kubernetes spells them.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
