//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and
//! strategic merge patch with the built-in types' merge keys.

use axum::http::{header, HeaderMap};
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::ResourceInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    /// Server-side apply.
    Apply,
}

impl PatchKind {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        match content_type {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" => Ok(PatchKind::Apply),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
            ))),
        }
    }
}

/// Applies `body` to `current` and returns the patched object.
pub fn apply(
    kind: PatchKind,
    info: &ResourceInfo,
    current: &Value,
    body: &[u8],
) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    match kind {
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::invalid(
                    info,
                    crate::object::name(current),
                    vec![crate::error::FieldCause {
                        reason: "FieldValueInvalid",
                        field: String::new(),
                        message: format!("the JSON patch could not be applied: {e}"),
                    }],
                )
            })?;
            Ok(doc)
        }
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            let mut doc = current.clone();
            rudder_apimachinery::strategic_merge::json_merge_patch(&mut doc, &patch);
            Ok(doc)
        }
        PatchKind::Apply => Err(ApiError::Internal(
            "apply patches are handled by server-side apply".into(),
        )),
        PatchKind::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            }
            let schema =
                rudder_apimachinery::strategic_merge::builtin_schema(&info.group, &info.kind);
            rudder_apimachinery::strategic_merge::strategic_merge_patch(current, &patch, &schema)
                .map_err(|e| ApiError::BadRequest(format!("invalid strategic merge patch: {e}")))
        }
    }
}

/// An apply configuration: JSON, or YAML (which `application/apply-patch+yaml`
/// allows).
pub fn parse_apply_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => serde_yaml::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the apply configuration is neither JSON nor YAML: {e}"
            ))
        })?,
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the apply configuration must be an object".into(),
        ));
    }
    Ok(value)
}
