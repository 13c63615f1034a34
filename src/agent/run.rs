//! Running the agent: open the spool, start the HTTP endpoints, the capture loop and one
//! delivery task per sink; on shutdown (SIGTERM) or, with `until_idle`, once everything
//! readable is delivered, drain and write the receipt.
//!
//! Exit codes (see `docs/agent.md`): 0 when the drain completed, or when the drain timeout
//! ended it with records still pending (the receipt says `complete: false`; the operator
//! reads the receipt, and the kubelet would kill the container at the end of its grace period
//! anyway); 3 when `until_idle` stopped because a sink failed permanently; 1 on a fatal error
//! (spool unusable, receipt not writable).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::capture::{CaptureLoop, CaptureSettings, Wake};
use super::deliver::{DeliverySettings, SinkDelivery};
use super::drain;
use super::metrics::{AgentMetrics, apple_now_ns};
use super::source::RecordSource;
use super::spool::{Spool, SpoolReader};
use super::status::AgentStatus;
use crate::api::agent::{AgentConfig, DrainReceipt};
use crate::sinks::Sink;
use crate::telemetry::{Health, server};

/// Everything `run` needs besides the source and the sinks.
#[derive(Clone, Debug)]
pub struct AgentRun {
    /// The configuration (device, spool, sinks, bounds).
    pub config: AgentConfig,
    /// Exit once everything readable is delivered to every sink.
    pub until_idle: bool,
    /// Where to write the drain receipt (None: only print it).
    pub termination_path: Option<PathBuf>,
    /// Where to serve `/livez`, `/readyz`, `/metrics` (None: not at all).
    pub http_listen: Option<String>,
    /// Capture loop tuning.
    pub capture: CaptureSettings,
    /// Delivery tuning.
    pub delivery: DeliverySettings,
}

impl AgentRun {
    /// Settings derived from a configuration.
    pub fn from_config(config: AgentConfig) -> Self {
        let capture = CaptureSettings {
            poll_interval: Duration::from_millis(config.capture.poll_interval_ms.max(10)),
            spool_max_bytes: config.spool_max_bytes,
            ..CaptureSettings::default()
        };
        AgentRun {
            termination_path: Some(config.termination_message_path.clone()),
            http_listen: Some(config.http_listen.clone()),
            until_idle: false,
            capture,
            delivery: DeliverySettings::default(),
            config,
        }
    }
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM/SIGINT (or the caller's token).
    Shutdown,
    /// `until_idle`: everything readable was delivered.
    Idle,
    /// `until_idle`: a sink failed permanently, so idle can never be reached.
    SinkFailed,
    /// The capture loop ended by itself (fatal).
    CaptureEnded,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct AgentExit {
    /// Why it stopped.
    pub reason: StopReason,
    /// The receipt written.
    pub receipt: DrainReceipt,
    /// The process exit code.
    pub code: u8,
}

/// Run the agent until `shutdown` is cancelled (or idle, with `until_idle`).
pub async fn run(
    run: AgentRun,
    source: Box<dyn RecordSource>,
    sinks: Vec<Arc<dyn Sink>>,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentExit> {
    let config = &run.config;
    let metrics = AgentMetrics::new().context("registering metrics")?;
    let health = Health::new();
    let status = AgentStatus::new();
    let live_since = apple_now_ns();
    let spool_dir = config.spool_dir.clone();
    let sink_names: Vec<String> = sinks.iter().map(|s| s.name().to_owned()).collect();
    {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = sink_names.iter().find(|n| !seen.insert(n.as_str())) {
            anyhow::bail!("two sinks are named {dup:?}; sink names must be unique");
        }
    }

    let device = config.device.name.clone();
    let names = sink_names.clone();
    let dir = spool_dir.clone();
    let spool = tokio::task::spawn_blocking(move || -> anyhow::Result<Spool> {
        let mut spool = Spool::open(&dir, &device)?;
        for forgotten in spool.sync_cursors(&names)? {
            tracing::warn!(sink = %forgotten, "sink no longer configured: its cursor is forgotten");
        }
        Ok(spool)
    })
    .await??;
    tracing::info!(
        device = %config.device.name, head = spool.head().seq, compacted_through = spool.compacted_through(),
        spool = %spool_dir.display(), "spool open"
    );

    let server_stop = CancellationToken::new();
    let mut server_task = None;
    if let Some(addr) = &run.http_listen {
        let (_, task) = server::serve(addr, health.clone(), metrics.registry.clone(), server_stop.clone()).await?;
        server_task = Some(task);
    }

    let (wake_tx, wake_rx) = mpsc::channel::<Wake>();
    let (head_tx, head_rx) = watch::channel(spool.head().clone());
    let _watcher = watch_source(&source.watch_paths(), wake_tx.clone());
    let blobs = spool.blobs().clone();

    let capture = CaptureLoop {
        spool,
        source,
        settings: run.capture.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        head_tx,
        wake: wake_rx,
    };
    let mut capture_task = tokio::task::spawn_blocking(move || capture.run());

    let drain_token = CancellationToken::new();
    let abort = CancellationToken::new();
    let mut deliveries = Vec::new();
    for sink in &sinks {
        let dir = spool_dir.clone();
        let reader = tokio::task::spawn_blocking(move || SpoolReader::open(&dir)).await??;
        let task = SinkDelivery {
            sink: Arc::clone(sink),
            reader: Arc::new(Mutex::new(reader)),
            blobs: blobs.clone(),
            head: head_rx.clone(),
            metrics: metrics.clone(),
            health: status.sink(sink.name()),
            settings: run.delivery.clone(),
            wake_capture: wake_tx.clone(),
            drain: drain_token.clone(),
            abort: abort.clone(),
            live_since_apple_ns: live_since,
        };
        let span = tracing::info_span!("deliver", sink = %sink.name(), r#type = sink.type_name());
        deliveries.push(tokio::spawn(task.run().instrument(span)));
    }

    let publisher = {
        let (status, health, stop) = (status.clone(), health.clone(), server_stop.clone());
        tokio::spawn(async move {
            loop {
                status.publish(&health);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    };

    let monitor = std::sync::Mutex::new(SpoolReader::open(&spool_dir)?);
    let reason = wait_for_stop(&run, &shutdown, &status, &monitor, &mut capture_task, &sink_names).await;
    tracing::info!(?reason, "stopping capture; draining");

    // Stop reading; the capture loop finishes its current commit.
    let _ = wake_tx.send(Wake::Stop);
    let mut fatal = None;
    if reason != StopReason::CaptureEnded {
        match capture_task.await {
            Ok(end) => fatal = end.error.map(|e| e.to_string()),
            Err(e) => fatal = Some(format!("capture loop panicked: {e}")),
        }
    }
    health.set_not_ready("draining");
    server_stop.cancel();
    publisher.abort();

    // Deliver what is pending, bounded by the drain timeout.
    drain_token.cancel();
    if reason == StopReason::SinkFailed {
        abort.cancel();
    }
    let timeout = Duration::from_secs(config.drain_timeout_seconds);
    let mut all = Box::pin(futures::future::join_all(deliveries));
    let drained = tokio::select! {
        _ = &mut all => true,
        _ = tokio::time::sleep(timeout) => false,
    };
    if !drained {
        tracing::warn!(
            timeout_s = timeout.as_secs(),
            "drain timeout reached with records pending"
        );
        abort.cancel();
        all.await;
    } else {
        for sink in &sinks {
            if let Err(error) = tokio::time::timeout(Duration::from_secs(30), sink.flush())
                .await
                .unwrap_or_else(|_| Err(crate::sinks::SinkError::Transient("flush timed out".into())))
            {
                tracing::error!(sink = %sink.name(), %error, "sink flush failed");
            }
        }
    }

    // The receipt, from what is durable in the spool.
    let (head, cursors) = {
        let monitor = monitor.lock().unwrap_or_else(|p| p.into_inner());
        let mut cursors = BTreeMap::new();
        for name in &sink_names {
            cursors.insert(name.clone(), monitor.cursor(name)?.unwrap_or(0));
        }
        (monitor.head()?, cursors)
    };
    let receipt = drain::receipt(&head, &cursors);
    let json = drain::to_bounded_json(&receipt);
    println!("{json}");
    if let Some(path) = &run.termination_path {
        write_receipt(path, &json)?;
    }
    tracing::info!(
        records = receipt.records_captured,
        pending = receipt.pending_total,
        complete = receipt.complete,
        "drain receipt written"
    );
    if let Some(task) = server_task {
        let _ = task.await;
    }
    let code = match (reason, &fatal) {
        (_, Some(error)) => {
            tracing::error!(%error, "capture loop failed");
            1
        }
        (StopReason::CaptureEnded, None) => 1,
        (StopReason::SinkFailed, None) => 3,
        _ => 0,
    };
    Ok(AgentExit { reason, receipt, code })
}

fn write_receipt(path: &Path, json: &str) -> anyhow::Result<()> {
    drain::write(path, json).with_context(|| format!("writing the drain receipt to {}", path.display()))
}

async fn wait_for_stop(
    run: &AgentRun,
    shutdown: &CancellationToken,
    status: &AgentStatus,
    monitor: &std::sync::Mutex<SpoolReader>,
    capture_task: &mut tokio::task::JoinHandle<super::capture::CaptureEnd>,
    sink_names: &[String],
) -> StopReason {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return StopReason::Shutdown,
            _ = &mut *capture_task => return StopReason::CaptureEnded,
            _ = tick.tick(), if run.until_idle => {
                if !status.permanently_failed_sinks().is_empty() {
                    return StopReason::SinkFailed;
                }
                let Some(idle_head) = status.idle_head() else { continue };
                let delivered = {
                    let monitor = monitor.lock().unwrap_or_else(|p| p.into_inner());
                    sink_names.iter().all(|name| monitor.cursor(name).ok().flatten().is_some_and(|c| c >= idle_head))
                };
                if delivered && status.idle_head() == Some(idle_head) {
                    return StopReason::Idle;
                }
            }
        }
    }
}

/// Watch the directories holding the source's files (chat.db, its WAL): a notification only
/// wakes the poll early; the poll on a timer stays the source of truth. Watching the
/// directory rather than the files survives the WAL being deleted and recreated.
fn watch_source(paths: &[PathBuf], wake: mpsc::Sender<Wake>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    if paths.is_empty() {
        return None;
    }
    let names: Vec<std::ffi::OsString> = paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_owned()))
        .collect();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
        {
            let _ = wake.send(Wake::SourceChanged);
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(error) => {
            tracing::warn!(%error, "file notifications unavailable; polling only");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = paths.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        if let Err(error) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(%error, dir = %dir.display(), "cannot watch; polling only");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests;
