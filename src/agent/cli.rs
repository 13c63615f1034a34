//! `capturefleet agent`: from the operator's config file, or from flags for local use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::config_file::{self, ConfigWatch};
use super::lifecycle;
use super::run::Telemetry;
use super::source::{ChatDbReader, ReaderConfig, RecordSource};
use crate::api::agent::{AGENT_CONFIG_SCHEMA, AgentConfig, AgentDevice, FilesystemTarget, SinkConfig, SinkTarget};
use crate::telemetry::server;

/// Agent options. With `--config` the file is the configuration and flags override it (a file
/// without a device is a warm spare, which waits for its assignment); without it, `--chat-db`
/// (except with `--drain-only`), `--spool`, `--device` and at least one `--sink` are required.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// AgentConfig file (YAML or JSON) rendered by the operator.
    #[arg(long, env = "CAPTUREFLEET_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Messages' chat.db (read-only; its -wal beside it).
    #[arg(long)]
    pub chat_db: Option<PathBuf>,
    /// Directory attachment paths in chat.db resolve against (default: chat.db's directory).
    #[arg(long)]
    pub messages_dir: Option<PathBuf>,
    /// Spool directory (on the device volume).
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// A sink, `file:DIR` (filesystem archive); repeatable. Replaces the config's sinks.
    #[arg(long = "sink", value_name = "file:DIR")]
    pub sinks: Vec<String>,
    /// Device name stamped on every record.
    #[arg(long)]
    pub device: Option<String>,
    /// Exit 0 once everything readable is delivered to every sink (backfills, tests).
    #[arg(long)]
    pub until_idle: bool,
    /// Deliver what the spool holds to every sink, write the drain receipt and exit; chat.db is
    /// never read (a drain-only Pod on the volume of a device whose agent is gone).
    #[arg(long, conflicts_with = "until_idle")]
    pub drain_only: bool,
    /// Address for /livez, /readyz, /metrics (config default 0.0.0.0:9464; none with flags only).
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Where the drain receipt is written (config default /dev/termination-log; with flags
    /// only, the receipt is just printed).
    #[arg(long)]
    pub termination_message_path: Option<PathBuf>,
    /// Poll interval in milliseconds (file notifications wake it earlier).
    #[arg(long)]
    pub poll_interval_ms: Option<u64>,
    /// Bound of the spool's disk use; reading pauses above it.
    #[arg(long)]
    pub spool_max_bytes: Option<u64>,
    /// Longest drain after SIGTERM.
    #[arg(long)]
    pub drain_timeout_seconds: Option<u64>,
    /// Drafts read and committed per batch (default 1000).
    #[arg(long)]
    pub batch: Option<usize>,
}

/// Parse a `--sink` flag.
pub fn parse_sink_flag(flag: &str, index: usize) -> anyhow::Result<SinkConfig> {
    let Some(dir) = flag.strip_prefix("file:") else {
        anyhow::bail!("unsupported --sink {flag:?}: use file:DIR (other sinks come from a config file)");
    };
    anyhow::ensure!(!dir.is_empty(), "--sink file: needs a directory");
    Ok(SinkConfig {
        name: if index == 0 {
            "filesystem".into()
        } else {
            format!("filesystem-{}", index + 1)
        },
        target: SinkTarget::Filesystem(FilesystemTarget {
            path: PathBuf::from(dir),
            segment_max_records: 100_000,
        }),
    })
}

/// The configuration these arguments describe, validated for capture (a device name and at
/// least one sink).
pub fn resolve_config(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let config = load_config(args)?;
    validate(&config)?;
    Ok(config)
}

/// The configuration these arguments describe: the file (if any) with the flags applied. A
/// file may describe a warm spare (no device name, no sinks); see [`config_file::assignment`].
pub fn load_config(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            apply_flags(config_file::parse(&text, path)?, args)
        }
        None => {
            let missing: Vec<&str> = [
                ("--chat-db", args.chat_db.is_none() && !args.drain_only),
                ("--spool", args.spool.is_none()),
                ("--device", args.device.is_none()),
                ("--sink", args.sinks.is_empty()),
            ]
            .into_iter()
            .filter_map(|(flag, absent)| absent.then_some(flag))
            .collect();
            anyhow::ensure!(missing.is_empty(), "without --config, {} required", missing.join(", "));
            let mut config: AgentConfig = serde_json::from_value(serde_json::json!({
                "schema": AGENT_CONFIG_SCHEMA,
                "device": {"name": ""},
                "chatDb": "",
                "spoolDir": "",
                "sinks": [],
            }))
            .expect("the minimal config parses");
            config.http_listen = String::new();
            config.termination_message_path = PathBuf::new();
            apply_flags(config, args)
        }
    }
}

/// The flags override the file.
fn apply_flags(mut config: AgentConfig, args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    if let Some(p) = &args.chat_db {
        config.chat_db = p.clone();
    }
    if let Some(p) = &args.messages_dir {
        config.messages_dir = Some(p.clone());
    }
    if let Some(p) = &args.spool {
        config.spool_dir = p.clone();
    }
    if let Some(d) = &args.device {
        config.device = AgentDevice {
            name: d.clone(),
            ..config.device
        };
    }
    if !args.sinks.is_empty() {
        config.sinks = args
            .sinks
            .iter()
            .enumerate()
            .map(|(i, s)| parse_sink_flag(s, i))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(v) = &args.http_listen {
        config.http_listen = v.clone();
    }
    if let Some(v) = &args.termination_message_path {
        config.termination_message_path = v.clone();
    }
    if let Some(v) = args.poll_interval_ms {
        config.capture.poll_interval_ms = v;
    }
    if let Some(v) = args.spool_max_bytes {
        config.spool_max_bytes = v;
    }
    if let Some(v) = args.drain_timeout_seconds {
        config.drain_timeout_seconds = v;
    }
    Ok(config)
}

/// A configuration the agent can capture (or drain) with.
pub fn validate(config: &AgentConfig) -> anyhow::Result<()> {
    anyhow::ensure!(!config.device.name.is_empty(), "the device name is empty");
    anyhow::ensure!(!config.sinks.is_empty(), "no sink configured");
    Ok(())
}

/// The chat.db reader for this configuration. It opens chat.db at its first poll and keeps
/// trying while Messages has not created it yet (see [`ChatDbReader::new`]).
pub fn open_source(config: &AgentConfig) -> anyhow::Result<Box<dyn RecordSource>> {
    Ok(Box::new(ChatDbReader::new(&ReaderConfig::from_agent_config(config))))
}

/// Run `capturefleet agent`.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    super::memory::limit_allocator_arenas();
    let mut watch = args.config.clone().map(|path| {
        let flags = args.clone();
        ConfigWatch::new(path, move |config| apply_flags(config, &flags))
    });
    let config = match watch.as_mut() {
        Some(watch) => watch.changed()?.expect("the first read returns the configuration"),
        None => load_config(&args)?,
    };
    if watch.is_none() || args.drain_only {
        // Without a file nothing can be assigned later; a drain needs its device and sinks now.
        validate(&config)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("agent")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let code = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("termination signal received");
            signals.cancel();
        });
        // One set of endpoints for the whole process: a spare answers probes while it waits,
        // and keeps answering when it is claimed and starts capturing.
        let telemetry = Telemetry::new()?;
        let server_stop = CancellationToken::new();
        let server = match Some(config.http_listen.as_str()).filter(|a| !a.is_empty()) {
            Some(addr) => Some(
                server::serve(
                    addr,
                    telemetry.health.clone(),
                    telemetry.metrics.registry.clone(),
                    server_stop.clone(),
                )
                .await?
                .1,
            ),
            None => None,
        };
        let result = lifecycle::supervise(&args, config, watch, telemetry, shutdown).await;
        server_stop.cancel();
        if let Some(task) = server {
            let _ = task.await;
        }
        result
    })?;
    Ok(ExitCode::from(code))
}

/// SIGTERM (Kubernetes) or SIGINT (a person).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
