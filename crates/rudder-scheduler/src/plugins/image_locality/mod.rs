//! ImageLocality: prefers nodes that already have the pod's images, so
//! pods start without a pull.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{CycleState, Plugin, ScorePlugin, MAX_NODE_SCORE};

pub const NAME: &str = "ImageLocality";

pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// `busybox` and `docker.io/library/busybox:latest` are the same image.
pub fn normalize_image(image: &str) -> String {
    let mut name = image.to_owned();
    let last = name.rsplit('/').next().unwrap_or("").to_owned();
    if !last.contains(':') && !name.contains('@') {
        name.push_str(":latest");
    }
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if !has_registry {
        if name.contains('/') {
            name = format!("docker.io/{name}");
        } else {
            name = format!("docker.io/library/{name}");
        }
    }
    name
}

impl ScorePlugin for ImageLocality {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let containers = &pod.spec().containers;
        if containers.is_empty() || node.images.is_empty() {
            return 0;
        }
        let present: std::collections::HashSet<String> =
            node.images.iter().map(|i| normalize_image(i)).collect();
        let have = containers
            .iter()
            .filter(|c| {
                c.image
                    .as_deref()
                    .is_some_and(|i| present.contains(&normalize_image(i)))
            })
            .count() as i64;
        have * MAX_NODE_SCORE / containers.len() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node_info, pod};
    use serde_json::json;

    #[test]
    fn nodes_with_the_image_score_higher() {
        let with = node_info(
            "a",
            "1",
            "1Gi",
            json!({"status": {"images": [{"names": ["docker.io/library/busybox:latest"], "sizeBytes": 1}]}}),
        );
        let without = node_info("b", "1", "1Gi", json!({}));
        let p = pod(
            "p",
            json!({"containers": [{"name": "c", "image": "busybox"}]}),
        );
        let s = CycleState::default();
        assert_eq!(ImageLocality.score(&s, &p, &with), 100);
        assert_eq!(ImageLocality.score(&s, &p, &without), 0);
        assert_eq!(
            normalize_image("127.0.0.1:5000/web:1.0"),
            "127.0.0.1:5000/web:1.0"
        );
        assert_eq!(normalize_image("me/app"), "docker.io/me/app:latest");
    }
}
