//! Shared helpers for integration tests that run against the real control plane started by
//! `tests/cluster/up` (`make test` starts it and exports KUBECONFIG). Such tests are
//! `#[ignore]`d so that a bare `cargo test` skips them; `make test` runs them with
//! `--include-ignored`, and then a missing cluster is a failure, not a skip.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

pub mod operator;

/// A client for the test cluster. Panics with instructions when there is none.
pub async fn client() -> Client {
    capturefleet::tls::install_crypto_provider();
    let path = std::env::var("KUBECONFIG").unwrap_or_default();
    assert!(
        !path.is_empty(),
        "KUBECONFIG is not set: start the test cluster with tests/cluster/up and `source target/cluster/env` (make test does both)"
    );
    let client = Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("cannot build a client from {path}: {e}"));
    client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("the test cluster at {path} does not answer: {e}"));
    client
}

/// A fresh namespace named `<prefix>-<random>`, deleted when the guard drops.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Delete the namespace from a thread with its own runtime, so that it happens even
        // while the test's runtime is shutting down. Best effort: the cluster is torn down
        // after the run anyway.
        // A fresh client: the test's client is bound to the test's runtime, which is blocked
        // here until the thread ends.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = Client::try_default().await else {
                    return;
                };
                let api = Api::<Namespace>::all(client);
                let params = DeleteParams::background();
                let _ = tokio::time::timeout(Duration::from_secs(10), api.delete(&name, &params)).await;
            });
        })
        .join();
    }
}

/// Poll `check` every 200 ms until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Install (server-side apply) every capturefleet CRD and wait until each is Established.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in capturefleet::api::crdgen::all() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("capturefleet-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        wait_crd_established(client, &name).await;
    }
}

/// Wait (up to 60 s) until the CRD `name` is Established. Unlike `kubectl wait
/// --for=condition=Established`, this does not fail on a CRD whose status has no conditions
/// yet (just created).
pub async fn wait_crd_established(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::wait::{await_condition, conditions};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let established = await_condition(crds, name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(60), established)
        .await
        .unwrap_or_else(|_| panic!("CRD {name} did not become Established"))
        .unwrap();
}

/// Server-side apply every document of a YAML text into `namespace`.
pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) {
    use serde::Deserialize;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        if value.is_null() {
            continue;
        }
        apply_value(client, namespace, &value)
            .await
            .unwrap_or_else(|e| panic!("apply {}: {e}", value["metadata"]["name"]));
    }
}

/// Server-side apply one object (as JSON) into `namespace`.
pub async fn apply_value(
    client: &Client,
    namespace: &str,
    doc: &serde_json::Value,
) -> Result<kube::api::DynamicObject, kube::Error> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let mut doc = doc.clone();
    let api_version = doc["apiVersion"].as_str().unwrap().to_owned();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let kind = doc["kind"].as_str().unwrap().to_owned();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, &kind),
        &format!("{}s", kind.to_lowercase()),
    );
    let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
    let api: Api<DynamicObject> = if kind == "Namespace" {
        Api::all_with(client.clone(), &resource)
    } else {
        doc["metadata"]["namespace"] = serde_json::Value::String(namespace.to_owned());
        Api::namespaced_with(client.clone(), namespace, &resource)
    };
    api.patch(&name, &PatchParams::apply("capturefleet-tests"), &Patch::Apply(&doc))
        .await
}

/// A filesystem ArchiveSink named `archive` on a ReadWriteMany claim of the same name, as the
/// start of a multi-document manifest (ends with `---`).
pub const ARCHIVE_SINK_YAML: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: archive}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
---
apiVersion: capturefleet.dev/v1alpha1
kind: ArchiveSink
metadata: {name: archive}
spec:
  filesystem: {claimName: archive}
---
"#;

/// Waits until a device's volume claim is gone or being deleted.
pub async fn claim_deleted(
    wait: std::time::Duration,
    claims: &kube::Api<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    claim: &str,
) {
    eventually(wait, "its volume to be deleted", || async {
        match claims.get(claim).await {
            Err(_) => Some(()),
            Ok(c) => c.metadata.deletion_timestamp.map(|_| ()),
        }
    })
    .await;
}
