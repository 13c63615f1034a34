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
    client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api = Api::<Namespace>::all(self.client.clone());
        let name = self.name.clone();
        // Best effort, without blocking the test's runtime: the cluster is torn down after
        // the run anyway.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::background()).await;
            });
        }
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
