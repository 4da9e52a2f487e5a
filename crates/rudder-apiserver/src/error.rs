use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rudder_store::StoreError;
use serde_json::json;

/// Every way a request can fail. Each variant maps to exactly one HTTP code
/// and `metav1.Status` reason, as Kubernetes answers it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404 for a path the server does not serve.
    #[error("the server could not find the requested resource")]
    NotFoundPath,

    /// 503 when the store cannot serve the request now.
    #[error("{0}")]
    Unavailable(String),

    /// 500 for a failure that is the server's own fault.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found_path() -> Self {
        ApiError::NotFoundPath
    }

    fn code_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFoundPath => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> serde_json::Value {
        let (code, reason) = self.code_and_reason();
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "details": {},
            "code": code.as_u16(),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_transient() {
            ApiError::Unavailable(err.to_string())
        } else {
            ApiError::Internal(err.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _) = self.code_and_reason();
        (code, axum::Json(self.status())).into_response()
    }
}
