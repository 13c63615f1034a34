//! Install the chart into the test cluster, take a token for its ServiceAccount from the API
//! server (TokenRequest), and run the operator binary locally with exactly the arguments and
//! environment of the chart's Deployment, authenticated as that ServiceAccount.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::tools::{chart, documents, helm, kubectl};

/// A Helm release of the chart, uninstalled when dropped.
pub struct Release {
    pub name: String,
    pub namespace: String,
    /// The manifest Helm applied (`helm get manifest`), one JSON value per object.
    pub docs: Vec<Value>,
}

impl Release {
    /// `helm install` the chart (CRDs left out: the tests install them once, server-side).
    pub fn install(name: &str, namespace: &str, sets: &[String]) -> Self {
        let chart = chart();
        let mut args = vec![
            "install",
            name,
            chart.to_str().unwrap(),
            "--namespace",
            namespace,
            "--set",
            "crds.install=false",
        ];
        for s in sets {
            args.extend(["--set", s.as_str()]);
        }
        let r = helm(&args);
        assert!(r.ok, "helm install {name} failed:\n{}", r.stderr);
        let manifest = helm(&["get", "manifest", name, "--namespace", namespace]);
        assert!(manifest.ok, "helm get manifest: {}", manifest.stderr);
        Release {
            name: name.into(),
            namespace: namespace.into(),
            docs: documents(&manifest.stdout),
        }
    }

    /// The rendered object of `kind`.
    pub fn object(&self, kind: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("the release renders no {kind}"))
    }

    /// The operator's ServiceAccount name.
    pub fn service_account(&self) -> String {
        self.object("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", &self.name, "--namespace", &self.namespace, "--wait=false"]);
    }
}

/// A kubeconfig for the test cluster that authenticates with a fresh token of the
/// ServiceAccount (the TokenRequest API, via `kubectl create token`).
pub fn service_account_kubeconfig(release: &Release, dir: &Path) -> PathBuf {
    let sa = release.service_account();
    let token = kubectl(
        &[
            "create",
            "token",
            &sa,
            "--namespace",
            &release.namespace,
            "--duration",
            "2h",
        ],
        None,
    );
    assert!(token.ok, "TokenRequest for {sa} failed: {}", token.stderr);
    let admin_path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let admin: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&admin_path).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": cluster["server"].as_str().unwrap(),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().unwrap(),
        }}],
        "users": [{"name": sa, "user": {"token": token.stdout.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": sa, "namespace": release.namespace}}],
        "current-context": "sa",
    });
    let path = dir.join(format!("{}-sa.kubeconfig", release.name));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// The operator binary, running as the chart configures it, as the chart's ServiceAccount.
pub struct OperatorAsSa {
    child: Child,
    /// host:port of /metrics, /readyz.
    pub addr: String,
    pub log: PathBuf,
    /// The arguments it runs with (from the Deployment).
    pub args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl OperatorAsSa {
    /// Start `capturefleet` with the Deployment's container args and env; `--listen` moves to
    /// a free loopback port, and the downward-API variables get this test's values.
    pub fn start(release: &Release, kubeconfig: &Path, dir: &Path) -> Self {
        let container = &release.object("Deployment")["spec"]["template"]["spec"]["containers"][0];
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let listen = args
            .iter()
            .position(|a| a == "--listen")
            .expect("--listen in the Deployment");
        args[listen + 1] = addr.clone();
        let log = dir.join(format!("{}-operator.log", release.name));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capturefleet"));
        cmd.args(&args)
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for var in container["env"].as_array().cloned().unwrap_or_default() {
            let name = var["name"].as_str().unwrap();
            let value = match (&var["value"], var["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                (Value::String(v), _) => v.clone(),
                (_, Some("metadata.name")) => format!("{}-local-test", release.name),
                (_, Some("metadata.namespace")) => release.namespace.clone(),
                _ => panic!("env {name}: unexpected source {var}"),
            };
            cmd.env(name, value);
        }
        let child = cmd.spawn().expect("start the operator");
        OperatorAsSa { child, addr, log, args }
    }

    /// Its log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrape /metrics.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("scrape the operator")
            .text()
            .await
            .unwrap()
    }

    /// Wait until it holds the leader Lease (or panic with its log).
    pub async fn wait_leading(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/metrics", self.addr)).await
                && let Ok(text) = r.text().await
                && text.lines().any(|l| l == "capturefleet_operator_leader 1")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the operator did not take the leader Lease within 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for OperatorAsSa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(verb, resource, code)` of every API request the operator counted.
pub fn api_requests(metrics: &str) -> Vec<(String, String, String, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("capturefleet_operator_api_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            let get = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            Some((get("verb"), get("resource"), get("code"), value.parse().ok()?))
        })
        .collect()
}
