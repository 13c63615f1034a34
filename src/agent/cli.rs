//! `capturefleet agent`: from the operator's config file, or from flags for local use.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::run::{self as runner, AgentRun};
use super::source::{ChatDbReader, ReaderConfig, RecordSource};
use crate::api::agent::{AGENT_CONFIG_SCHEMA, AgentConfig, AgentDevice, FilesystemTarget, SinkConfig, SinkTarget};
use crate::sinks::{Sink, factory};

/// Agent options. With `--config` the file is the configuration and flags override it; without
/// it, `--chat-db`, `--spool`, `--device` and at least one `--sink` are required.
#[derive(clap::Args, Debug, Default)]
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
    /// Drafts read and committed per batch.
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

/// The configuration these arguments describe.
pub fn resolve_config(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let config: AgentConfig =
                serde_yaml::from_str(&text).with_context(|| format!("{} is not an agent config", path.display()))?;
            anyhow::ensure!(
                config.schema == AGENT_CONFIG_SCHEMA,
                "{}: schema {:?} is not {AGENT_CONFIG_SCHEMA:?}",
                path.display(),
                config.schema
            );
            config
        }
        None => {
            let missing: Vec<&str> = [
                ("--chat-db", args.chat_db.is_none()),
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
            config
        }
    };
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
    anyhow::ensure!(!config.device.name.is_empty(), "the device name is empty");
    anyhow::ensure!(!config.sinks.is_empty(), "no sink configured");
    Ok(config)
}

/// The chat.db reader for this configuration.
pub fn open_source(config: &AgentConfig) -> anyhow::Result<Box<dyn RecordSource>> {
    let reader = ChatDbReader::open(&ReaderConfig::from_agent_config(config))?;
    Ok(Box::new(reader))
}

/// Run `capturefleet agent`.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let config = resolve_config(&args)?;
    let mut settings = AgentRun::from_config(config.clone());
    settings.until_idle = args.until_idle;
    settings.http_listen = Some(config.http_listen.clone()).filter(|s| !s.is_empty());
    settings.termination_path = Some(config.termination_message_path.clone()).filter(|p| !p.as_os_str().is_empty());
    if let Some(batch) = args.batch {
        settings.capture.batch_limit = batch.max(1);
    }
    let sinks: Vec<Arc<dyn Sink>> = config
        .sinks
        .iter()
        .map(|c| factory::build_with_state(c, Some(&factory::state_dir(&config.spool_dir, &c.name))).map(Arc::from))
        .collect::<Result<_, _>>()?;
    let source = open_source(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("agent")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let exit = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("termination signal received");
            signals.cancel();
        });
        runner::run(settings, source, sinks, shutdown).await
    })?;
    Ok(ExitCode::from(exit.code))
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
