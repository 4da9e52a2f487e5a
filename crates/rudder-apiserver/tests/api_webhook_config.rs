//! Admission webhook configurations over HTTP: served cluster-wide,
//! defaulted and validated as kube-apiserver does.

use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use rudder_apiserver::ApiServer;
use rudder_store::{SqliteConfig, SqliteStore};
use serde_json::json;

async fn client() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("state.db")))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ApiServer::new(Arc::new(store), addr.to_string());
    server.bootstrap().await.unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (Client::try_from(config).unwrap(), dir)
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn webhook_configurations_are_defaulted_validated_and_served() {
    let (client, _dir) = client().await;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "policy"},
        "webhooks": [{
            "name": "policy.example.com",
            "clientConfig": {"service": {"namespace": "policy", "name": "webhook", "path": "/validate"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    }))
    .unwrap();
    let created = validating
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    let hook = &created.webhooks.as_ref().unwrap()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.match_policy.as_deref(), Some("Equivalent"));
    assert_eq!(hook.timeout_seconds, Some(10));
    assert!(hook.namespace_selector.is_some() && hook.object_selector.is_some());
    let service = hook.client_config.service.as_ref().unwrap();
    assert_eq!(service.port, Some(443));
    assert_eq!(hook.rules.as_ref().unwrap()[0].scope.as_deref(), Some("*"));
    let names: Vec<String> = validating
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap_or_default())
        .collect();
    assert_eq!(names, vec!["policy".to_owned()]);

    // An update that breaks a rule is refused with kube-apiserver's message.
    let mut broken = created.clone();
    broken.webhooks.as_mut().unwrap()[0].timeout_seconds = Some(60);
    let status = api_error(
        validating
            .replace("policy", &PostParams::default(), &broken)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        r#"ValidatingWebhookConfiguration "policy" is invalid: webhooks[0].timeoutSeconds: Invalid value: 60: the timeout value must be between 1 and 30 seconds"#
    );
    validating
        .delete("policy", &DeleteParams::default())
        .await
        .unwrap();

    // matchConditions are kept, and the writer is warned they are not
    // evaluated.
    let with_conditions = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "conditional"},
        "webhooks": [{
            "name": "conditional.example.com",
            "clientConfig": {"url": "https://conditional.example.com/validate"},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "matchConditions": [{"name": "not-leases", "expression": "request.resource.resource != 'leases'"}],
        }],
    });
    let request = http::Request::post(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
    )
    .header("content-type", "application/json")
    .body(kube::client::Body::from(
        serde_json::to_vec(&with_conditions).unwrap(),
    ))
    .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 201);
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        warnings,
        vec![r#"299 - "webhooks[0].matchConditions: Rudder does not evaluate CEL; webhook \"conditional.example.com\" is called as if every condition held""#.to_owned()]
    );
    let stored = validating.get("conditional").await.unwrap();
    assert_eq!(
        stored.webhooks.unwrap()[0]
            .match_conditions
            .as_ref()
            .map(Vec::len),
        Some(1)
    );

    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "inject"},
        "webhooks": [{
            "name": "inject",
            "clientConfig": {"url": "http://inject.example.com/mutate"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "admissionReviewVersions": ["v1beta1"],
        }],
    }))
    .unwrap();
    let status = api_error(
        mutating
            .create(&PostParams::default(), &config)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    for expected in [
        r#"webhooks[0].name: Invalid value: "inject": should be a domain with at least three segments separated by dots"#,
        // k8s-openapi sends the unset field as "".
        r#"webhooks[0].sideEffects: Unsupported value: "": supported values: "None", "NoneOnDryRun""#,
        r#"webhooks[0].admissionReviewVersions: Invalid value: ["v1beta1"]: must include at least one of v1"#,
        r#"webhooks[0].clientConfig.url: Invalid value: "http": 'https' is the only allowed URL scheme; desired format: https://host[/path]"#,
    ] {
        assert!(
            status.message.contains(expected),
            "{expected} in {}",
            status.message
        );
    }
    let mut fixed = config.clone();
    let hook = &mut fixed.webhooks.as_mut().unwrap()[0];
    hook.name = "inject.example.com".into();
    hook.side_effects = "NoneOnDryRun".into();
    hook.admission_review_versions = vec!["v1".into()];
    hook.client_config.url = Some("https://inject.example.com/mutate".into());
    let created = mutating
        .create(&PostParams::default(), &fixed)
        .await
        .unwrap();
    assert_eq!(
        created.webhooks.unwrap()[0].reinvocation_policy.as_deref(),
        Some("Never")
    );
}
