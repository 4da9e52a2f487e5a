//! Which Ingresses are ours: those of class `rudder` (or of any
//! IngressClass whose controller is `rudder.io/ingress`), and those naming
//! no class while one of our classes is the cluster's default.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The IngressClass the controller manager creates.
pub const CLASS_NAME: &str = "rudder";
/// `spec.controller` of our IngressClasses.
pub const CONTROLLER: &str = "rudder.io/ingress";
/// What marks the cluster's default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// How Ingresses named their class before `spec.ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Whether an IngressClass is handled by this controller.
pub fn is_ours(class: &IngressClass) -> bool {
    class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
}

/// Whether an IngressClass is marked as the default.
pub fn is_default(class: &IngressClass) -> bool {
    class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// The class an Ingress names, if any.
pub fn class_of(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
                .map(String::as_str)
        })
        .filter(|c| !c.is_empty())
}

/// Whether this controller serves `ingress`, given the cluster's classes.
/// A class named `rudder` that does not exist (yet) is ours; one that
/// exists is ours if its controller is.
pub fn served(ingress: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    match class_of(ingress) {
        Some(name) => match classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
        {
            Some(class) => is_ours(class),
            None => name == CLASS_NAME,
        },
        None => classes.iter().any(|c| is_ours(c) && is_default(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(spec: serde_json::Value, annotations: serde_json::Value) -> Ingress {
        serde_json::from_value(
            json!({"metadata": {"name": "i", "annotations": annotations}, "spec": spec}),
        )
        .unwrap()
    }

    fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
        let annotations = if default {
            json!({DEFAULT_CLASS_ANNOTATION: "true"})
        } else {
            json!({})
        };
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "annotations": annotations},
                "spec": {"controller": controller}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn classes_decide() {
        let named = |c: &str| ingress(json!({"ingressClassName": c}), json!({}));
        let unnamed = ingress(json!({}), json!({}));
        let ours_default = vec![class("rudder", CONTROLLER, true)];
        let ours_plain = vec![class("rudder", CONTROLLER, false)];
        let other = vec![
            class("nginx", "k8s.io/ingress-nginx", true),
            class("edge", CONTROLLER, false),
        ];

        assert!(served(&named("rudder"), &[]));
        assert!(served(&named("rudder"), &ours_plain));
        assert!(!served(&named("nginx"), &other));
        assert!(served(&named("edge"), &other));
        assert!(!served(
            &named("rudder"),
            &[class("rudder", "example.com/x", false)]
        ));

        assert!(served(&unnamed, &ours_default));
        assert!(!served(&unnamed, &ours_plain));
        assert!(!served(&unnamed, &other));
        assert!(!served(&unnamed, &[]));

        let legacy = ingress(json!({}), json!({LEGACY_CLASS_ANNOTATION: "rudder"}));
        assert!(served(&legacy, &[]));
        let legacy_other = ingress(json!({}), json!({LEGACY_CLASS_ANNOTATION: "nginx"}));
        assert!(!served(&legacy_other, &ours_default));
    }
}
