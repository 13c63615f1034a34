//! The API is enforced by the real API server: the CRDs install and become Established, every
//! example applies with server-side apply and a second apply changes nothing, and every
//! manifest in `tests/fixtures/invalid/` is refused with a message that tells the person what
//! to change.

mod support;

use std::path::{Path, PathBuf};

use kube::Client;
use serde::Deserialize;
use serde_json::Value;
use support::{TestNamespace, client, install_crds};

async fn apply(client: &Client, namespace: &str, doc: &Value) -> Result<kube::api::DynamicObject, kube::Error> {
    support::apply_value(client, namespace, doc).await
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn sorted_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn examples_apply_server_side_and_reapplying_changes_nothing() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "examples").await;
    let files = sorted_files("examples");
    assert!(files.len() >= 5, "examples/ should hold the realistic set");
    let mut applied = 0;
    for file in &files {
        for doc in documents(file) {
            if doc["kind"] == "Namespace" {
                continue; // applied into the test namespace instead
            }
            let first = apply(&client, &ns.name, &doc)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let second = apply(&client, &ns.name, &doc).await.unwrap();
            if !doc["apiVersion"].as_str().unwrap().starts_with("capturefleet.dev/") {
                continue; // e.g. a PVC that the volume controller binds between the two applies
            }
            assert_eq!(
                first.metadata.resource_version,
                second.metadata.resource_version,
                "{}: re-applying {} changed the object (defaulting or drift)",
                file.display(),
                doc["metadata"]["name"]
            );
            // What the server stores is what was applied: no field added by defaulting.
            let stored_spec = serde_json::to_value(&second.data["spec"]).unwrap();
            if let Some(spec) = doc.get("spec") {
                assert_eq!(&stored_spec, spec, "{}: the server rewrote the spec", file.display());
            }
            applied += 1;
        }
    }
    assert!(
        applied >= 7,
        "applied only {applied} capturefleet objects (3 sinks, a pool and 3 devices expected)"
    );
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn invalid_manifests_are_refused_with_a_helpful_message() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let files = sorted_files("tests/fixtures/invalid");
    assert!(
        files.len() >= 30,
        "the corpus must hold at least 30 invalid manifests, found {}",
        files.len()
    );
    let mut failures = vec![];
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let header = text.lines().next().unwrap_or_default();
        let (on_update, expected) = if let Some(e) = header.strip_prefix("# expect-on-update: ") {
            (true, e.trim())
        } else if let Some(e) = header.strip_prefix("# expect: ") {
            (false, e.trim())
        } else {
            panic!(
                "{}: first line must be `# expect: <fragment>` or `# expect-on-update: <fragment>`",
                file.display()
            );
        };
        let docs = documents(file);
        // Each fixture gets its own object name so earlier fixtures cannot interfere.
        let unique = file.file_stem().unwrap().to_string_lossy().to_string();
        let rename = |mut doc: Value| {
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            if !name.starts_with("a-very-long") {
                doc["metadata"]["name"] = Value::String(format!("{}-{}", name, &unique[..2]));
            }
            doc
        };
        let target = if on_update {
            assert_eq!(
                docs.len(),
                2,
                "{}: an update fixture has the valid object, then the invalid change",
                file.display()
            );
            apply(&client, &ns.name, &rename(docs[0].clone()))
                .await
                .unwrap_or_else(|e| panic!("{}: the first (valid) document was refused: {e}", file.display()));
            rename(docs[1].clone())
        } else {
            assert_eq!(docs.len(), 1, "{}: one document expected", file.display());
            rename(docs[0].clone())
        };
        match apply(&client, &ns.name, &target).await {
            Ok(_) => failures.push(format!("{}: accepted, but it is invalid", file.display())),
            Err(kube::Error::Api(status)) => {
                // Schema and CEL violations are 422 Invalid; server-side apply reports a field the
                // schema does not declare while building the typed patch (500), naming the field.
                if !status.message.contains(expected) || status.code < 400 {
                    failures.push(format!(
                        "{}: refused with {} {:?}, expected a message containing {:?}",
                        file.display(),
                        status.code,
                        status.message,
                        expected
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: unexpected error {other}", file.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures misbehaved:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
