//! Running the agent: open the spool, start the HTTP endpoints, the capture loop and one
//! delivery task per sink; on shutdown (SIGTERM), on a configuration change (reload) or, with
//! `until_idle`, once everything readable is delivered, drain and write the receipt. A
//! drain-only run ([`Mode::DrainOnly`]) skips capture and drains at once.
//!
//! Exit codes (see `docs/agent.md`): 0 when the drain completed, or when the drain timeout
//! ended it with records still pending (the receipt says `complete: false`; the operator
//! reads the receipt, and the kubelet would kill the container at the end of its grace period
//! anyway); 3 when `until_idle` stopped because a sink failed permanently; 1 on a fatal error
//! (spool unusable, receipt not writable). [`super::lifecycle`] adds 4 (the device changed).

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
use super::spool::{ChainHead, Spool, SpoolReader};
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

/// What a run does.
pub enum Mode {
    /// Capture from this source into the spool and deliver (the normal agent).
    Capture(Box<dyn RecordSource>),
    /// Deliver what the spool already holds, then stop; chat.db is never read (a drain-only Pod
    /// on the volume of a device whose agent is gone).
    DrainOnly,
}

/// What stops a run (besides `until_idle` and the capture loop ending).
#[derive(Clone, Debug, Default)]
pub struct Signals {
    /// SIGTERM/SIGINT: stop capture, drain, write the receipt. In a drain-only run it cuts the
    /// drain short (the receipt then lists what is pending).
    pub shutdown: CancellationToken,
    /// The configuration changed: stop and drain exactly as on SIGTERM, so the process can
    /// exit and be restarted with the new configuration.
    pub reload: CancellationToken,
}

/// The agent's readiness and metrics. Created once per process, so `/livez`, `/readyz` and
/// `/metrics` can be served before a run starts (a warm spare waiting for its identity) and
/// keep answering through it.
#[derive(Clone)]
pub struct Telemetry {
    /// What `/livez` and `/readyz` report.
    pub health: Health,
    /// What `/metrics` serves.
    pub metrics: AgentMetrics,
}

impl Telemetry {
    /// Fresh state: live, not ready ("starting"), every metric registered.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Telemetry {
            health: Health::new(),
            metrics: AgentMetrics::new().context("registering metrics")?,
        })
    }
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM/SIGINT (or the caller's token).
    Shutdown,
    /// The configuration changed ([`Signals::reload`]).
    Reload,
    /// `until_idle`: everything readable was delivered.
    Idle,
    /// `until_idle`: a sink failed permanently, so idle can never be reached.
    SinkFailed,
    /// The capture loop ended by itself (fatal).
    CaptureEnded,
    /// A drain-only run: it drains from the start.
    DrainOnly,
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

/// Run the agent until `shutdown` is cancelled (or idle, with `until_idle`), with its own
/// telemetry (and HTTP endpoints, if `run.http_listen` says where).
pub async fn run(
    run: AgentRun,
    source: Box<dyn RecordSource>,
    sinks: Vec<Arc<dyn Sink>>,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentExit> {
    let signals = Signals {
        shutdown,
        ..Signals::default()
    };
    run_with(run, Mode::Capture(source), sinks, signals, Telemetry::new()?).await
}

/// Run the agent in `mode` until a signal (or idle, with `until_idle`; or at once, drain-only),
/// then drain and write the receipt. `telemetry` may already be served by the caller (then
/// leave `run.http_listen` empty).
pub async fn run_with(
    run: AgentRun,
    mode: Mode,
    sinks: Vec<Arc<dyn Sink>>,
    signals: Signals,
    telemetry: Telemetry,
) -> anyhow::Result<AgentExit> {
    let config = &run.config;
    let Telemetry { health, metrics } = telemetry;
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
    let drain_only = matches!(mode, Mode::DrainOnly);
    if drain_only && !Spool::exists(&spool_dir) {
        // Nothing was ever spooled on this volume: a complete drain of nothing. The spool is
        // not created.
        tracing::info!(spool = %spool_dir.display(), "drain-only: the volume holds no spool; nothing to deliver");
        let cursors = sink_names.iter().map(|n| (n.clone(), 0)).collect();
        let receipt = drain::receipt(&ChainHead::default(), &cursors);
        publish_receipt(&run, &receipt)?;
        return Ok(AgentExit {
            reason: StopReason::DrainOnly,
            receipt,
            code: 0,
        });
    }

    let device = config.device.name.clone();
    let names = sink_names.clone();
    let dir = spool_dir.clone();
    let live_window = Duration::from_secs(config.capture.rescan_window_seconds);
    let segment_bytes = run.capture.spool_max_bytes / 16;
    let spool = tokio::task::spawn_blocking(move || -> anyhow::Result<Spool> {
        let mut spool = Spool::open(&dir, &device)?;
        spool.set_live_window(live_window);
        spool.set_segment_max_bytes(segment_bytes);
        for forgotten in spool.sync_cursors(&names)? {
            tracing::warn!(sink = %forgotten, "sink no longer configured: its cursor is forgotten");
        }
        Ok(spool)
    })
    .await??;
    tracing::info!(
        device = %config.device.name, head = spool.head().seq, compacted_through = spool.compacted_through(),
        spool = %spool_dir.display(), drain_only, "spool open"
    );

    let server_stop = CancellationToken::new();
    let mut server_task = None;
    if let Some(addr) = &run.http_listen {
        let (_, task) = server::serve(addr, health.clone(), metrics.registry.clone(), server_stop.clone()).await?;
        server_task = Some(task);
    }

    let (wake_tx, wake_rx) = mpsc::channel::<Wake>();
    let (head_tx, head_rx) = watch::channel(spool.head().clone());
    metrics.chain_sequence.set(spool.head().seq as i64);
    // Readers share the spool's state, so they are made before the capture loop takes it.
    let monitor = std::sync::Mutex::new(spool.reader());
    let mut readers: Vec<SpoolReader> = sinks.iter().map(|_| spool.reader()).collect();

    let (mut capture_task, _watcher, _head_tx) = match mode {
        Mode::Capture(source) => {
            let watcher = watch_source(&source.watch_paths(), wake_tx.clone());
            let capture = CaptureLoop {
                spool,
                source,
                settings: run.capture.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                head_tx,
                wake: wake_rx,
            };
            (Some(tokio::task::spawn_blocking(move || capture.run())), watcher, None)
        }
        // Nothing is captured: the head stays where the spool is (the sender is kept so the
        // delivery tasks do not see a closed channel).
        Mode::DrainOnly => (None, None, Some(head_tx)),
    };

    let drain_token = CancellationToken::new();
    let abort = CancellationToken::new();
    let mut deliveries = Vec::new();
    for sink in &sinks {
        let reader = readers.remove(0);
        let task = SinkDelivery {
            sink: Arc::clone(sink),
            reader: Arc::new(Mutex::new(reader)),
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

    let publisher = (!drain_only).then(|| {
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
    });

    let reason = match capture_task.as_mut() {
        Some(task) => wait_for_stop(&run, &signals, &status, &monitor, task, &sink_names).await,
        None => StopReason::DrainOnly,
    };
    tracing::info!(?reason, "stopping capture; draining");

    // Stop reading; the capture loop finishes its current commit.
    let _ = wake_tx.send(Wake::Stop);
    let mut fatal = None;
    if let Some(task) = capture_task
        && reason != StopReason::CaptureEnded
    {
        match task.await {
            Ok(end) => fatal = end.error.map(|e| e.to_string()),
            Err(e) => fatal = Some(format!("capture loop panicked: {e}")),
        }
    }
    if let Some(publisher) = publisher {
        publisher.abort();
    }
    // `/livez` keeps answering through the drain (the kubelet must not kill a long drain);
    // `/readyz` says what is going on.
    health.set_not_ready(if drain_only {
        "drain-only: delivering what the spool holds"
    } else {
        "draining"
    });

    // Deliver what is pending, bounded by the drain timeout (and, drain-only, by SIGTERM).
    drain_token.cancel();
    if reason == StopReason::SinkFailed {
        abort.cancel();
    }
    let timeout = Duration::from_secs(config.drain_timeout_seconds);
    let deadline = tokio::time::Instant::now() + timeout;
    let interrupt = if drain_only {
        signals.shutdown.clone()
    } else {
        CancellationToken::new()
    };
    let mut all = Box::pin(futures::future::join_all(deliveries));
    let drained = tokio::select! {
        _ = &mut all => true,
        _ = tokio::time::sleep_until(deadline) => {
            tracing::warn!(timeout_s = timeout.as_secs(), "drain timeout reached with records pending");
            false
        }
        _ = interrupt.cancelled() => {
            tracing::warn!("termination signal during the drain: stopping it with records pending");
            false
        }
    };
    if !drained {
        abort.cancel();
        all.await;
    } else {
        // Sinks that buffer acknowledged records (SMTP per conversation-day) send them now.
        let flush_deadline = deadline.max(tokio::time::Instant::now() + FLUSH_AT_LEAST.min(timeout));
        futures::future::join_all(
            sinks
                .iter()
                .map(|sink| flush(sink.as_ref(), &run.delivery.backoff, flush_deadline, &interrupt)),
        )
        .await;
    }
    // What each sink still holds in its own journal after the flush is not in the archive.
    let buffered: BTreeMap<String, u64> = futures::future::join_all(sinks.iter().map(|sink| async move {
        let held = match tokio::time::timeout(Duration::from_secs(10), sink.buffered()).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(error)) => {
                tracing::error!(sink = %sink.name(), %error, "cannot count the records the sink still buffers");
                None
            }
            Err(_) => {
                tracing::error!(sink = %sink.name(), "counting the records the sink still buffers timed out");
                None
            }
        };
        (sink.name().to_owned(), held)
    }))
    .await
    .into_iter()
    .map(|(name, held)| {
        // Unknown: everything the sink acknowledged may still be in its journal.
        let held = held.unwrap_or_else(|| {
            let monitor = monitor.lock().unwrap_or_else(|p| p.into_inner());
            monitor.cursor(&name).ok().flatten().unwrap_or(0)
        });
        (name, held)
    })
    .collect();

    // The receipt, from what is durable in the spool and what the sinks still hold.
    let (head, cursors) = {
        let monitor = monitor.lock().unwrap_or_else(|p| p.into_inner());
        let mut cursors = BTreeMap::new();
        for name in &sink_names {
            cursors.insert(name.clone(), monitor.cursor(name)?.unwrap_or(0));
        }
        (monitor.head()?, cursors)
    };
    let receipt = drain::receipt_with_buffered(&head, &cursors, &buffered);
    for (name, pending) in &receipt.pending {
        metrics.pending.with_label_values(&[name]).set(*pending as i64);
    }
    publish_receipt(&run, &receipt)?;
    server_stop.cancel();
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

/// A drain that finished just before its deadline still gets this long (at most the drain
/// timeout) to flush the sinks.
const FLUSH_AT_LEAST: Duration = Duration::from_secs(20);

/// Flush one sink, retrying failures with backoff until `deadline` (or `interrupt`).
async fn flush(
    sink: &dyn Sink,
    backoff: &super::backoff::Backoff,
    deadline: tokio::time::Instant,
    interrupt: &CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let error = match tokio::time::timeout(left, sink.flush()).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "flush timed out".to_owned(),
        };
        let delay = backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        if tokio::time::Instant::now() + delay >= deadline {
            tracing::error!(sink = %sink.name(), %error, attempts = attempt, "sink flush failed; what it buffers stays pending");
            return;
        }
        tracing::warn!(sink = %sink.name(), %error, retry_in_ms = delay.as_millis() as u64, "sink flush failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = interrupt.cancelled() => return,
        }
    }
}

/// Print the receipt (one JSON line on stdout) and write it to the termination-message path.
fn publish_receipt(run: &AgentRun, receipt: &DrainReceipt) -> anyhow::Result<()> {
    let json = drain::to_bounded_json(receipt);
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
    Ok(())
}

fn write_receipt(path: &Path, json: &str) -> anyhow::Result<()> {
    drain::write(path, json).with_context(|| format!("writing the drain receipt to {}", path.display()))
}

async fn wait_for_stop(
    run: &AgentRun,
    signals: &Signals,
    status: &AgentStatus,
    monitor: &std::sync::Mutex<SpoolReader>,
    capture_task: &mut tokio::task::JoinHandle<super::capture::CaptureEnd>,
    sink_names: &[String],
) -> StopReason {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = signals.shutdown.cancelled() => return StopReason::Shutdown,
            _ = signals.reload.cancelled() => return StopReason::Reload,
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
