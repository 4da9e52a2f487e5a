use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rudder_store::StoreError;
use serde_json::{json, Value};

use crate::registry::ResourceInfo;

/// Which object a failure is about, for the Status `details`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// `pods`, `deployments.apps`: how messages name the resource.
    pub qualified: String,
    pub group: String,
    /// Status details name the resource (plural) in `kind`, as Kubernetes does.
    pub resource: String,
    pub name: String,
}

impl Target {
    pub fn new(info: &ResourceInfo, name: &str) -> Self {
        Target {
            qualified: info.qualified_name(),
            group: info.group.clone(),
            resource: info.plural.clone(),
            name: name.to_owned(),
        }
    }
}

/// One field error of a 422 Invalid answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, …
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl FieldCause {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        FieldCause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {detail}"),
        }
    }

    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        FieldCause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: if detail.is_empty() {
                "Required value".into()
            } else {
                format!("Required value: {detail}")
            },
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldCause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    pub fn unsupported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldCause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
        }
    }

    pub fn immutable(field: impl Into<String>) -> Self {
        FieldCause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: "field is immutable".into(),
        }
    }
}

/// The details of a 422 Invalid answer.
#[derive(Debug)]
pub struct Invalid {
    pub kind: String,
    pub target: Target,
    pub causes: Vec<FieldCause>,
}

/// The details of a server-side apply conflict.
#[derive(Debug)]
pub struct ApplyConflict {
    pub target: Target,
    pub message: String,
    pub causes: Vec<FieldCause>,
}

/// A `metav1.Status` given whole, as a webhook answers it: its code,
/// reason and details are kept (kube-apiserver passes a webhook's refusal
/// through), and so are the causes of an internal error.
#[derive(Debug)]
pub struct StatusFailure {
    pub code: StatusCode,
    /// May be empty: a webhook need not give one.
    pub reason: String,
    pub message: String,
    /// `details`, when there are any.
    pub details: Option<Value>,
}

/// Every way a request can fail. Each variant maps to exactly one HTTP code
/// and `metav1.Status` reason, with the message Kubernetes gives.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404 for a path the server does not serve.
    #[error("the server could not find the requested resource")]
    NotFoundPath,

    #[error("{} {:?} not found", .0.qualified, .0.name)]
    NotFound(Target),

    #[error("{} {:?} already exists", .0.qualified, .0.name)]
    AlreadyExists(Target),

    #[error("Operation cannot be fulfilled on {} {:?}: {}", .0.qualified, .0.name, .1)]
    Conflict(Target, String),

    /// 409 for a server-side apply that conflicts with other managers.
    #[error("{}", .0.message)]
    ApplyConflict(Box<ApplyConflict>),

    #[error("{} {:?} is invalid: {}", .0.kind, .0.target.name, join_causes(&.0.causes))]
    Invalid(Box<Invalid>),

    #[error("{0}")]
    BadRequest(String),

    #[error("{0}")]
    Forbidden(String),

    /// 401: no credentials, or credentials that do not hold.
    #[error("Unauthorized")]
    Unauthorized,

    #[error("{0}")]
    MethodNotAllowed(String),

    #[error("{0}")]
    NotAcceptable(String),

    #[error("{0}")]
    UnsupportedMediaType(String),

    #[error("{0}")]
    RequestEntityTooLarge(String),

    /// 410: a resource version or continue token too old to serve.
    #[error("{0}")]
    Gone(String),

    /// 503 when the store cannot serve the request now.
    #[error("{0}")]
    Unavailable(String),

    /// 500 for a failure that is the server's own fault.
    #[error("{0}")]
    Internal(String),

    /// Any code and reason: an admission webhook's refusal, or its failure.
    #[error("{}", .0.message)]
    Status(Box<StatusFailure>),
}

fn join_causes(causes: &[FieldCause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    pub fn not_found_path() -> Self {
        ApiError::NotFoundPath
    }

    pub fn invalid(info: &ResourceInfo, name: &str, causes: Vec<FieldCause>) -> Self {
        ApiError::Invalid(Box::new(Invalid {
            kind: info.kind.clone(),
            target: Target::new(info, name),
            causes,
        }))
    }

    /// A 422 for a kind that is not stored (reviews, token requests): one
    /// field and its message (`Required value: …`, `Invalid value: …`).
    pub fn invalid_simple(kind: &str, name: &str, field: &str, message: &str) -> Self {
        ApiError::Invalid(Box::new(Invalid {
            kind: kind.to_owned(),
            target: Target {
                qualified: kind.to_lowercase(),
                group: String::new(),
                resource: kind.to_lowercase(),
                name: name.to_owned(),
            },
            causes: vec![FieldCause {
                reason: if message.starts_with("Required") {
                    "FieldValueRequired"
                } else {
                    "FieldValueInvalid"
                },
                field: field.to_owned(),
                message: message.to_owned(),
            }],
        }))
    }

    pub fn modified(info: &ResourceInfo, name: &str) -> Self {
        ApiError::Conflict(
            Target::new(info, name),
            "the object has been modified; please apply your changes to the latest version and try again".into(),
        )
    }

    /// Maps a store failure on one object to the answer a client expects.
    pub fn from_store(err: StoreError, info: &ResourceInfo, name: &str) -> Self {
        match err {
            StoreError::NotFound(_) => ApiError::NotFound(Target::new(info, name)),
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists(Target::new(info, name)),
            StoreError::Conflict { .. } => ApiError::modified(info, name),
            other => other.into(),
        }
    }

    pub fn code(&self) -> StatusCode {
        self.code_and_reason().0
    }

    fn code_and_reason(&self) -> (StatusCode, &str) {
        match self {
            ApiError::Status(status) => (status.code, &status.reason),
            ApiError::NotFoundPath | ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::Conflict(..) | ApiError::ApplyConflict(..) => {
                (StatusCode::CONFLICT, "Conflict")
            }
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            ApiError::RequestEntityTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")
            }
            ApiError::Gone(_) => (StatusCode::GONE, "Expired"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let (code, reason) = self.code_and_reason();
        let details = match self {
            ApiError::NotFound(t) | ApiError::AlreadyExists(t) | ApiError::Conflict(t, _) => {
                target_details(t)
            }
            ApiError::ApplyConflict(conflict) => {
                let mut details = target_details(&conflict.target);
                details["causes"] = conflict
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details
            }
            ApiError::Invalid(invalid) => {
                let mut details = target_details(&invalid.target);
                details["causes"] = invalid
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details
            }
            ApiError::Status(status) => status.details.clone().unwrap_or_else(|| json!({})),
            _ => json!({}),
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "code": code.as_u16(),
        });
        if !reason.is_empty() {
            status["reason"] = json!(reason);
        }
        if details.as_object().is_some_and(|d| !d.is_empty()) {
            status["details"] = details;
        }
        status
    }
}

fn target_details(t: &Target) -> Value {
    let mut details = json!({"name": t.name, "kind": t.resource});
    if !t.group.is_empty() {
        details["group"] = json!(t.group);
    }
    details
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Compacted { .. } => {
                ApiError::Gone(format!("too old resource version: {err}"))
            }
            StoreError::ValueTooLarge { .. } => ApiError::RequestEntityTooLarge(err.to_string()),
            err if err.is_transient() => ApiError::Unavailable(err.to_string()),
            err => ApiError::Internal(err.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _) = self.code_and_reason();
        (code, axum::Json(self.status())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn messages_read_as_kubernetes_writes_them() {
        let registry = Registry::with_builtins();
        let cm = registry.get("", "v1", "configmaps").unwrap();
        assert_eq!(
            ApiError::NotFound(Target::new(&cm, "x")).to_string(),
            r#"configmaps "x" not found"#
        );
        assert_eq!(
            ApiError::modified(&cm, "x").to_string(),
            r#"Operation cannot be fulfilled on configmaps "x": the object has been modified; please apply your changes to the latest version and try again"#
        );
        let deploy = registry.get("apps", "v1", "deployments").unwrap();
        let err = ApiError::AlreadyExists(Target::new(&deploy, "web"));
        assert_eq!(err.to_string(), r#"deployments.apps "web" already exists"#);
        assert_eq!(err.status()["details"]["group"], "apps");
        assert_eq!(err.status()["code"], 409);
    }

    #[test]
    fn invalid_lists_every_cause() {
        let registry = Registry::with_builtins();
        let cm = registry.get("", "v1", "configmaps").unwrap();
        let err = ApiError::invalid(
            &cm,
            "Bad_Name",
            vec![FieldCause::invalid(
                "metadata.name",
                "Bad_Name",
                "not a name",
            )],
        );
        assert_eq!(
            err.to_string(),
            r#"ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": not a name"#
        );
        let status = err.status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
    }
}
