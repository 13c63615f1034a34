//! Running the real operator binary against the test cluster, and reading its metrics.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

/// A `capturefleet operator` process, killed (by PID) when dropped.
pub struct OperatorProcess {
    child: Child,
    /// `host:port` of its /metrics.
    pub addr: String,
    /// Its log file.
    pub log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl OperatorProcess {
    /// Start an operator managing only `namespace`, with leader election on a Lease there.
    pub fn start(namespace: &str, identity: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("operator-{namespace}-{identity}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_capturefleet"))
            .args([
                "operator",
                "--listen",
                &addr,
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
            ])
            // CAPTUREFLEET_TEST_OPERATOR_LOG overrides the filter when debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("CAPTUREFLEET_TEST_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start the operator");
        OperatorProcess { child, addr, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the process (no graceful shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Scrape /metrics.
    pub async fn metrics(&self) -> Option<String> {
        let url = format!("http://{}/metrics", self.addr);
        reqwest::get(url).await.ok()?.text().await.ok()
    }

    /// Wait until /readyz answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr);
        eventually(Duration::from_secs(60), "the operator to be ready", || async {
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    /// Write requests (create, update, patch, delete) this process has sent, excluding its
    /// leader Lease renewals.
    pub async fn writes(&self) -> u64 {
        let text = self.metrics().await.expect("metrics");
        count_writes(&text)
    }
}

/// Sum `capturefleet_operator_api_requests_total` over write verbs, leases excluded.
pub fn count_writes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("capturefleet_operator_api_requests_total{"))
        .filter(|l| {
            [
                "verb=\"create\"",
                "verb=\"update\"",
                "verb=\"patch\"",
                "verb=\"delete\"",
            ]
            .iter()
            .any(|v| l.contains(v))
        })
        .filter(|l| !l.contains("resource=\"leases\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
