//! `secret` volumes (and secret sources of projected volumes): the keys of
//! `data`, or the listed `items`, with the item's `mode` or `defaultMode`.
//! Secret volumes are written into a tmpfs, never to the node's disk.

use k8s_openapi::api::core::v1::{KeyToPath, Secret};

use super::atomic_writer::{FileProjection, Payload};

/// The kubelet's `secret.MakePayload`.
pub fn payload(
    items: Option<&[KeyToPath]>,
    secret: &Secret,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    let data = secret.data.as_ref();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, value) in data.into_iter().flatten() {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: value.0.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(value) = data.and_then(|d| d.get(&item.key)) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("references non-existent secret key: {}", item.key));
                };
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: value.0.clone(),
                        mode: item.mode.map_or(default_mode, |m| m as u32),
                    },
                );
            }
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_items_and_modes() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"}, "data": {"token": "czNjcmV0", "other": "eA=="}
        }))
        .unwrap();
        let all = payload(None, &secret, 0o400, false).unwrap();
        assert_eq!(all["token"].data, b"s3cret");
        assert_eq!(all["token"].mode, 0o400);
        let items: Vec<KeyToPath> = serde_json::from_value(serde_json::json!([
            {"key": "token", "path": "t", "mode": 0o440}, {"key": "gone", "path": "g"}
        ]))
        .unwrap();
        assert_eq!(
            payload(Some(&items), &secret, 0o644, false).unwrap_err(),
            "references non-existent secret key: gone"
        );
        let some = payload(Some(&items), &secret, 0o644, true).unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some["t"].mode, 0o440);
    }
}
