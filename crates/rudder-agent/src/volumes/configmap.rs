//! `configMap` volumes (and configMap sources of projected volumes): the
//! keys of `data` and `binaryData`, or the listed `items` at their paths,
//! each file with the item's `mode` or the volume's `defaultMode`.

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath};

use super::atomic_writer::{FileProjection, Payload};

/// The kubelet's `configmap.MakePayload`.
pub fn payload(
    items: Option<&[KeyToPath]>,
    config_map: &ConfigMap,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    let data = config_map.data.as_ref();
    let binary = config_map.binary_data.as_ref();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, value) in data.into_iter().flatten() {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: value.as_bytes().to_vec(),
                        mode: default_mode,
                    },
                );
            }
            for (key, value) in binary.into_iter().flatten() {
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
                let content = if let Some(value) = data.and_then(|d| d.get(&item.key)) {
                    value.as_bytes().to_vec()
                } else if let Some(value) = binary.and_then(|b| b.get(&item.key)) {
                    value.0.clone()
                } else if optional {
                    continue;
                } else {
                    return Err(format!(
                        "configmap references non-existent config key: {}",
                        item.key
                    ));
                };
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: content,
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

    fn cm() -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c"},
            "data": {"mode": "fast", "level": "3"},
            "binaryData": {"blob": "AAEC"}
        }))
        .unwrap()
    }

    #[test]
    fn every_key_or_the_listed_items() {
        let all = payload(None, &cm(), 0o644, false).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all["blob"].data, vec![0, 1, 2]);
        assert_eq!(all["mode"].mode, 0o644);

        let items: Vec<KeyToPath> = serde_json::from_value(serde_json::json!([
            {"key": "mode", "path": "conf/mode", "mode": 0o600},
            {"key": "level", "path": "lvl"}
        ]))
        .unwrap();
        let some = payload(Some(&items), &cm(), 0o644, false).unwrap();
        assert_eq!(some.keys().collect::<Vec<_>>(), vec!["conf/mode", "lvl"]);
        assert_eq!(some["conf/mode"].mode, 0o600);
        assert_eq!(some["lvl"].mode, 0o644);
    }

    #[test]
    fn a_missing_key_fails_unless_optional() {
        let items: Vec<KeyToPath> =
            serde_json::from_value(serde_json::json!([{"key": "nope", "path": "x"}])).unwrap();
        assert_eq!(
            payload(Some(&items), &cm(), 0o644, false).unwrap_err(),
            "configmap references non-existent config key: nope"
        );
        assert!(payload(Some(&items), &cm(), 0o644, true)
            .unwrap()
            .is_empty());
    }
}
