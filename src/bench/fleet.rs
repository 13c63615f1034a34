//! `capturefleet bench fleet`: the operator at fleet scale on a real control plane with kwok
//! Mac hosts (`scripts/bench-fleet` starts one sized for the run).
//!
//! It starts the operator as a separate process (so its memory and CPU are its own), creates a
//! pool with warm spares, applies N CaptureDevices at once, plays every employee signing in as
//! soon as their device has booted (the annotation kwok turns into container readiness), and
//! measures: time until all are Capturing, the operator's API writes per device (from its own
//! client metrics) and per minute once idle, its peak and steady memory and CPU, and the
//! apply → claimed latency of employees onboarded one by one onto warm spares. It splits the
//! wait of a cold device into the operator's part and the control plane's part.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::api::{CaptureDevice, DevicePhase, DevicePool};

/// Benchmark options.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchFleetArgs {
    /// CaptureDevices applied at once.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Warm spares of the pool.
    #[arg(long, default_value_t = 20)]
    pub warm_spares: i32,
    /// Employees onboarded one by one afterwards, to measure apply → claimed on warm spares.
    #[arg(long, default_value_t = 20)]
    pub onboard: usize,
    /// Seconds of idle fleet over which steady-state writes are counted.
    #[arg(long, default_value_t = 60)]
    pub steady_seconds: u64,
    /// Namespace to run in (recreated).
    #[arg(long, default_value = "bench-fleet")]
    pub namespace: String,
    /// The operator binary to run (default: this binary).
    #[arg(long)]
    pub operator_bin: Option<PathBuf>,
    /// Device reconciles in parallel in the operator.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_seconds: u64,
}

/// Run the benchmark and print a JSON report.
pub fn run(args: BenchFleetArgs) -> anyhow::Result<ExitCode> {
    crate::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(bench(args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

struct OperatorProc {
    child: Child,
    metrics_url: String,
}

impl OperatorProc {
    fn start(bin: &PathBuf, ns: &str, concurrency: u16) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args([
                "operator",
                "--namespace",
                ns,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--leader-election=false",
            ])
            .args(["--concurrency", &concurrency.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the operator")?;
        Ok(OperatorProc {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        })
    }

    fn proc_status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        self.proc_status("VmRSS:")
    }

    /// Peak resident memory, KiB.
    fn peak_rss_kib(&self) -> u64 {
        self.proc_status("VmHWM:")
    }

    /// User + system CPU seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }

    async fn metrics(&self) -> String {
        for _ in 0..20 {
            if let Ok(r) = reqwest::get(&self.metrics_url).await
                && let Ok(t) = r.text().await
            {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        String::new()
    }
}

impl Drop for OperatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes by resource from the operator's request counter (leader Lease excluded).
fn writes_by_resource(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("capturefleet_operator_api_requests_total{"))
    {
        let write = [
            "verb=\"create\"",
            "verb=\"update\"",
            "verb=\"patch\"",
            "verb=\"delete\"",
        ]
        .iter()
        .any(|v| line.contains(v));
        let resource = line
            .split("resource=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        if !write || resource == "leases" {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(resource.to_owned()).or_insert(0) += value as u64;
    }
    out
}

fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let idx = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[idx.min(values.len() - 1)]
}

#[derive(Default)]
struct Timeline {
    applied: HashMap<String, Instant>,
    pod_seen: HashMap<String, Instant>,
    pod_running: HashMap<String, Instant>,
    signed_in: HashMap<String, Instant>,
    capturing: HashMap<String, Instant>,
    claimed_spare: HashMap<String, bool>,
}

async fn recreate_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await?.is_some() {
        // A previous run's devices keep their drain finalizer (kwok Pods cannot drain); the
        // benchmark owns this namespace, so it releases them itself.
        let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), ns);
        let list = devices.list(&kube::api::ListParams::default()).await?;
        let patch = json!({"metadata": {"finalizers": null}});
        futures::stream::iter(list.items)
            .for_each_concurrent(32, |d| {
                let devices = devices.clone();
                let patch = patch.clone();
                async move {
                    let _ = devices
                        .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                        .await;
                }
            })
            .await;
        api.delete(ns, &DeleteParams::background()).await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while api.get_opt(ns).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {ns} is still terminating; delete it by hand");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

fn device(name: &str, i: usize) -> anyhow::Result<CaptureDevice> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "capturefleet.dev/v1alpha1", "kind": "CaptureDevice",
        "metadata": {"name": name},
        "spec": {"user": {"id": format!("u{i:06}")}, "poolRef": {"name": "bench"}, "sinkRefs": [{"name": "archive"}]}
    }))?)
}

async fn bench(args: BenchFleetArgs) -> anyhow::Result<serde_json::Value> {
    let client = Client::try_default()
        .await
        .context("a kubeconfig for the benchmark cluster (tests/cluster/up)")?;
    let ns = args.namespace.clone();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in crate::api::crdgen::all() {
        crds.patch(
            &crd.metadata.name.clone().unwrap_or_default(),
            &PatchParams::apply("capturefleet-bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    recreate_namespace(&client, &ns).await?;
    let apply = |yaml: serde_json::Value| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let kind = yaml["kind"].as_str().unwrap_or_default().to_owned();
            let name = yaml["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let pp = PatchParams::apply("capturefleet-bench");
            match kind.as_str() {
                "PersistentVolumeClaim" => {
                    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client, &ns)
                        .patch(&name, &pp, &Patch::Apply(&yaml))
                        .await
                        .map(|_| ())
                }
                "ArchiveSink" => Api::<crate::api::ArchiveSink>::namespaced(client, &ns)
                    .patch(&name, &pp, &Patch::Apply(&yaml))
                    .await
                    .map(|_| ()),
                _ => Api::<DevicePool>::namespaced(client, &ns)
                    .patch(&name, &pp, &Patch::Apply(&yaml))
                    .await
                    .map(|_| ()),
            }
        }
    };
    apply(
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "archive"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await?;
    apply(
        json!({"apiVersion": "capturefleet.dev/v1alpha1", "kind": "ArchiveSink", "metadata": {"name": "archive"},
        "spec": {"filesystem": {"claimName": "archive"}}}),
    )
    .await?;
    apply(json!({"apiVersion": "capturefleet.dev/v1alpha1", "kind": "DevicePool", "metadata": {"name": "bench"},
        "spec": {"runtime": {"image": "example.invalid/macos-runtime:15"}, "agent": {"image": "example.invalid/capturefleet:bench"},
                 "volume": {"size": "1Gi"}, "warmSpares": args.warm_spares}}))
    .await?;

    let bin = match &args.operator_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let operator = OperatorProc::start(&bin, &ns, args.concurrency)?;
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let bench_writes = Arc::new(std::sync::atomic::AtomicU64::new(0));

    // The kubelet/employee simulator: sign in every assigned device Pod once it has booted.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let kubelet = {
        let (pods, timeline, bench_writes) = (pods.clone(), timeline.clone(), bench_writes.clone());
        tokio::spawn(async move {
            let stream = watcher(
                pods.clone(),
                watcher::Config::default().labels("capturefleet.dev/component=device"),
            )
            .applied_objects()
            .default_backoff();
            futures::pin_mut!(stream);
            let signing = Arc::new(Semaphore::new(32));
            while let Some(Ok(pod)) = stream.next().await {
                let Some(device) = pod.labels().get("capturefleet.dev/device").cloned() else {
                    continue;
                };
                let now = Instant::now();
                let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let signed = pod.annotations().contains_key("sim.capturefleet.dev/enrolled");
                {
                    let mut t = timeline.lock().expect("timeline");
                    t.pod_seen.entry(device.clone()).or_insert(now);
                    t.claimed_spare
                        .entry(device.clone())
                        .or_insert_with(|| pod.name_any().contains("-spare-"));
                    if running {
                        t.pod_running.entry(device.clone()).or_insert(now);
                    }
                }
                if running && !signed {
                    let (pods, timeline, bench_writes, name) =
                        (pods.clone(), timeline.clone(), bench_writes.clone(), pod.name_any());
                    let permit = signing.clone().acquire_owned().await;
                    tokio::spawn(async move {
                        let _permit = permit;
                        let patch = json!({"metadata": {"annotations": {"sim.capturefleet.dev/enrolled": "true"}}});
                        if pods
                            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .is_ok()
                        {
                            bench_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            timeline
                                .lock()
                                .expect("timeline")
                                .signed_in
                                .entry(device)
                                .or_insert(Instant::now());
                        }
                    });
                }
            }
        })
    };
    // Device phases.
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns);
    let observer = {
        let (devices, timeline) = (devices.clone(), timeline.clone());
        tokio::spawn(async move {
            let stream = watcher(devices, watcher::Config::default())
                .applied_objects()
                .default_backoff();
            futures::pin_mut!(stream);
            while let Some(Ok(d)) = stream.next().await {
                if d.status.as_ref().and_then(|s| s.phase) == Some(DevicePhase::Capturing) {
                    timeline
                        .lock()
                        .expect("timeline")
                        .capturing
                        .entry(d.name_any())
                        .or_insert(Instant::now());
                }
            }
        })
    };

    let pools: Api<DevicePool> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    let wait_warm = |want: i32| {
        let pools = pools.clone();
        async move {
            loop {
                let warm = pools
                    .get("bench")
                    .await
                    .ok()
                    .and_then(|p| p.status)
                    .map(|s| s.warm)
                    .unwrap_or(0);
                if warm >= want {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("warm spares did not reach {want} (have {warm})");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    wait_warm(args.warm_spares).await?;

    // ---- bulk apply ----
    let writes_before = writes_by_resource(&operator.metrics().await);
    let cpu_before = operator.cpu_seconds();
    let bench_writes_before = bench_writes.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let creating = Arc::new(Semaphore::new(64));
    let mut handles = vec![];
    for i in 0..args.devices {
        let name = format!("d{i:05}");
        let api = devices.clone();
        let timeline = timeline.clone();
        let permit = creating.clone().acquire_owned().await?;
        let obj = device(&name, i)?;
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            timeline
                .lock()
                .expect("timeline")
                .applied
                .insert(name.clone(), Instant::now());
            api.create(&PostParams::default(), &obj).await.map(|_| ())
        }));
    }
    for h in handles {
        h.await??;
    }
    let applied_in = started.elapsed();
    let mut peak_sampled = 0;
    loop {
        let done = timeline.lock().expect("timeline").capturing.len();
        peak_sampled = peak_sampled.max(operator.rss_kib());
        if done >= args.devices {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {} devices reached Capturing before the timeout",
                args.devices
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_capturing = started.elapsed();
    let cpu_bulk = operator.cpu_seconds() - cpu_before;
    // Let trailing status/pool writes land before counting.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let writes_bulk = delta(&writes_by_resource(&operator.metrics().await), &writes_before);
    let bench_writes_bulk = bench_writes.load(std::sync::atomic::Ordering::Relaxed) - bench_writes_before;

    // ---- steady state ----
    let steady_before = writes_by_resource(&operator.metrics().await);
    let steady_cpu_before = operator.cpu_seconds();
    let mut steady_rss = vec![];
    let steady_start = Instant::now();
    while steady_start.elapsed() < Duration::from_secs(args.steady_seconds) {
        steady_rss.push(operator.rss_kib());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let steady_writes = delta(&writes_by_resource(&operator.metrics().await), &steady_before);
    let steady_cpu = operator.cpu_seconds() - steady_cpu_before;

    // ---- onboarding onto warm spares, one employee at a time ----
    wait_warm(args.warm_spares.min(args.onboard as i32)).await?;
    let mut claimed_latency = vec![];
    let mut cold = 0;
    for j in 0..args.onboard {
        let name = format!("n{j:04}");
        let t0 = Instant::now();
        timeline.lock().expect("timeline").applied.insert(name.clone(), t0);
        devices
            .create(&PostParams::default(), &device(&name, 900_000 + j)?)
            .await?;
        loop {
            let (seen, spare) = {
                let t = timeline.lock().expect("timeline");
                (
                    t.pod_seen.get(&name).copied(),
                    t.claimed_spare.get(&name).copied().unwrap_or(false),
                )
            };
            if let Some(seen) = seen {
                if spare {
                    claimed_latency.push(seen.duration_since(t0).as_secs_f64());
                } else {
                    cold += 1;
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("onboarding device {name} got no Pod");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Give the pool time to replenish, as a morning of onboarding would.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // ---- split of a cold device's wait ----
    let t = timeline.lock().expect("timeline");
    let mut operator_part = vec![];
    let mut control_plane_part = vec![];
    let mut signin_to_capturing = vec![];
    let mut apply_to_capturing = vec![];
    for i in 0..args.devices {
        let name = format!("d{i:05}");
        let (Some(a), Some(c)) = (t.applied.get(&name), t.capturing.get(&name)) else {
            continue;
        };
        apply_to_capturing.push(c.duration_since(*a).as_secs_f64());
        if t.claimed_spare.get(&name) == Some(&false)
            && let (Some(seen), Some(run), Some(signed)) =
                (t.pod_seen.get(&name), t.pod_running.get(&name), t.signed_in.get(&name))
        {
            operator_part.push(seen.duration_since(*a).as_secs_f64());
            control_plane_part.push(run.duration_since(*seen).as_secs_f64());
            signin_to_capturing.push(c.duration_since(*signed).as_secs_f64());
        }
    }
    let claimed_in_bulk = (0..args.devices)
        .filter(|i| t.claimed_spare.get(&format!("d{i:05}")) == Some(&true))
        .count();
    drop(t);
    kubelet.abort();
    observer.abort();
    let peak_rss = operator.peak_rss_kib().max(peak_sampled);
    let steady_rss_kib = steady_rss.iter().copied().max().unwrap_or(0);
    let report = json!({
        "devices": args.devices,
        "warm_spares": args.warm_spares,
        "claimed_spares_during_bulk": claimed_in_bulk,
        "apply_seconds": applied_in.as_secs_f64(),
        "all_capturing_seconds": all_capturing.as_secs_f64(),
        "apply_to_capturing_p50_s": percentile(&mut apply_to_capturing.clone(), 0.5),
        "apply_to_capturing_p99_s": percentile(&mut apply_to_capturing, 0.99),
        "operator_writes_per_device": total(&writes_bulk) as f64 / args.devices as f64,
        "operator_writes_by_resource": writes_bulk,
        "simulated_sign_in_writes": bench_writes_bulk,
        "steady_writes_per_minute": total(&steady_writes) as f64 * 60.0 / args.steady_seconds as f64,
        "steady_writes_by_resource": steady_writes,
        "operator_peak_rss_mib": peak_rss as f64 / 1024.0,
        "operator_steady_rss_mib": steady_rss_kib as f64 / 1024.0,
        "operator_cpu_seconds_bulk": cpu_bulk,
        "operator_cpu_seconds_per_1000_devices": cpu_bulk * 1000.0 / args.devices as f64,
        "operator_cpu_percent_steady": steady_cpu * 100.0 / args.steady_seconds as f64,
        "cold_wait_split_p50_s": {
            "operator_apply_to_pod": percentile(&mut operator_part.clone(), 0.5),
            "control_plane_pod_to_running": percentile(&mut control_plane_part.clone(), 0.5),
            "sign_in_to_capturing": percentile(&mut signin_to_capturing.clone(), 0.5),
        },
        "cold_wait_split_p99_s": {
            "operator_apply_to_pod": percentile(&mut operator_part, 0.99),
            "control_plane_pod_to_running": percentile(&mut control_plane_part, 0.99),
            "sign_in_to_capturing": percentile(&mut signin_to_capturing, 0.99),
        },
        "onboarding_claims": claimed_latency.len(),
        "onboarding_cold": cold,
        "onboarding_apply_to_claimed_p50_s": percentile(&mut claimed_latency.clone(), 0.5),
        "onboarding_apply_to_claimed_p99_s": percentile(&mut claimed_latency.clone(), 0.99),
        "onboarding_apply_to_claimed_max_s": claimed_latency.iter().copied().fold(0.0, f64::max),
    });
    // The namespace is left as it is: its devices carry drain finalizers that only a drain
    // (which kwok Pods cannot perform) releases. scripts/bench-fleet tears the cluster down.
    Ok(report)
}
