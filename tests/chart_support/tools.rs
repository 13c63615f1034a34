//! The command-line tools the chart tests drive: the cluster's helm and kubectl (built by
//! tests/cluster into its bin directory), and promtool (scripts/install-promtool).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart directory.
pub fn chart() -> PathBuf {
    repo().join("charts/capturefleet")
}

/// A scratch directory under target/ for this test (recreated empty).
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo().join("target/chart-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Kubernetes version of the test cluster (tests/cluster/versions.env). helm is built
/// without version ldflags, so `helm template`/`lint` must be told (its default is v1.20).
pub fn kube_version() -> String {
    let env = std::fs::read_to_string(repo().join("tests/cluster/versions.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("K8S_VERSION in tests/cluster/versions.env")
        .trim()
        .to_owned()
}

/// A binary from the test cluster's bin directory. Panics (a failure, not a skip) when the
/// cluster environment is missing.
pub fn cluster_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("CAPTUREFLEET_CLUSTER_BIN").unwrap_or_default();
    assert!(
        !dir.is_empty(),
        "CAPTUREFLEET_CLUSTER_BIN is not set: start the test cluster with tests/cluster/up and \
         `source target/cluster/env` (make test does both); helm and kubectl come from there"
    );
    let path = Path::new(&dir).join(tool);
    assert!(
        path.exists(),
        "{} is missing (rebuild with tests/cluster/build.sh)",
        path.display()
    );
    path
}

/// The outcome of a command: success and its output.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run a program with arguments and optional standard input.
pub fn run(program: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        // A thread, so a large input cannot deadlock against a full stdout pipe.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run and require success; returns stdout.
pub fn must(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let r = run(program, args, stdin, &[]);
    assert!(
        r.ok,
        "{} {} failed:\n{}\n{}",
        program.display(),
        args.join(" "),
        r.stderr,
        r.stdout
    );
    r.stdout
}

/// `helm` with the given arguments.
pub fn helm(args: &[&str]) -> Run {
    run(&cluster_bin("helm"), args, None, &[])
}

/// `kubectl` (admin) with the given arguments.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Run {
    run(&cluster_bin("kubectl"), args, stdin, &[])
}

/// Render the chart (`helm template`) and return its stdout, or helm's error.
pub fn template(release: &str, namespace: &str, values: &[&str], sets: &[String]) -> Result<String, String> {
    let chart = chart();
    let kv = kube_version();
    let mut args: Vec<&str> = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        &kv,
    ];
    let files: Vec<String> = values
        .iter()
        .map(|v| chart.join(v).to_string_lossy().into_owned())
        .collect();
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    let r = helm(&args);
    if r.ok { Ok(r.stdout) } else { Err(r.stderr) }
}

/// Every document of a multi-document YAML text, as JSON (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("valid YAML")).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// promtool, installed (once, cached) by scripts/install-promtool.
pub fn promtool() -> PathBuf {
    let r = run(&repo().join("scripts/install-promtool"), &[], None, &[]);
    assert!(r.ok, "scripts/install-promtool failed:\n{}", r.stderr);
    PathBuf::from(r.stdout.trim())
}

/// The directory holding the Prometheus Operator CRDs (scripts/install-prometheus-operator-crds).
pub fn prometheus_operator_crds() -> PathBuf {
    let r = run(&repo().join("scripts/install-prometheus-operator-crds"), &[], None, &[]);
    assert!(r.ok, "scripts/install-prometheus-operator-crds failed:\n{}", r.stderr);
    PathBuf::from(r.stdout.trim())
}
