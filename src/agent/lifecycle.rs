//! The agent process over its life in a Pod: wait for a device assignment (a warm spare),
//! capture (or drain only), and apply a change of the configuration file by draining and
//! exiting — 0 for new settings of the same device, [`EXIT_DEVICE_CHANGED`] for another device.
//! See `docs/agent.md` ("Warm spares and configuration changes").

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::cli::{AgentArgs, open_source, validate};
use super::config_file::{self, Change, ConfigWatch};
use super::drain;
use super::run::{self as runner, AgentRun, Mode, Signals, StopReason, Telemetry};
use super::spool::ChainHead;
use crate::api::agent::AgentConfig;
use crate::sinks::{Sink, factory};

/// Exit code when the configuration file changed to another device (see `docs/agent.md`).
pub const EXIT_DEVICE_CHANGED: u8 = 4;

/// Wait for an assignment (a warm spare), run, and map a reload to an exit code.
pub async fn supervise(
    args: &AgentArgs,
    mut config: AgentConfig,
    mut watch: Option<ConfigWatch>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    if !args.drain_only {
        match wait_for_assignment(config, watch.as_mut(), &telemetry, &shutdown).await? {
            Some(assigned) => config = assigned,
            None => return Ok(0),
        }
    }
    validate(&config)?;

    let mut settings = AgentRun::from_config(config.clone());
    settings.until_idle = args.until_idle;
    settings.http_listen = None; // served by `run` for the whole process
    settings.termination_path = Some(config.termination_message_path.clone()).filter(|p| !p.as_os_str().is_empty());
    if let Some(batch) = args.batch {
        settings.capture.batch_limit = batch.max(1);
    }
    let sinks: Vec<Arc<dyn Sink>> = config
        .sinks
        .iter()
        .map(|c| factory::build_with_state(c, Some(&factory::state_dir(&config.spool_dir, &c.name))).map(Arc::from))
        .collect::<Result<_, _>>()?;
    let mode = if args.drain_only {
        Mode::DrainOnly
    } else {
        Mode::Capture(open_source(&config)?)
    };
    let signals = Signals {
        shutdown,
        reload: CancellationToken::new(),
    };
    // A later change of the file is applied by draining and exiting (the kubelet restarts the
    // container with the new file); another device is refused.
    let change = Arc::new(std::sync::Mutex::new(Change::None));
    let watcher = match watch {
        Some(watch) if !args.drain_only => Some(tokio::spawn(watch_changes(
            watch,
            config.clone(),
            signals.reload.clone(),
            Arc::clone(&change),
        ))),
        _ => None,
    };
    let exit = runner::run_with(settings, mode, sinks, signals, telemetry).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    let exit = exit?;
    let change = change.lock().map(|c| c.clone()).unwrap_or(Change::None);
    Ok(match (exit.reason, change) {
        (StopReason::Reload, Change::Device { from, to }) if exit.code == 0 => {
            tracing::error!(
                running = %from, configured = %to,
                "the configuration now names another device: refused (this spool holds only {from}'s chain); \
                 drained and exiting with code {EXIT_DEVICE_CHANGED}"
            );
            EXIT_DEVICE_CHANGED
        }
        (StopReason::Reload, _) => {
            tracing::info!(
                code = exit.code,
                "configuration changed: drained; exiting so the container restarts with it"
            );
            exit.code
        }
        _ => exit.code,
    })
}

/// Until the configuration names a device with sinks: serve `/readyz` as not ready (a warm
/// spare), touch neither chat.db nor the spool, and read the file every
/// [`config_file::POLL_EVERY`]. None when a termination signal came first (after writing an
/// empty, complete receipt: nothing was captured).
async fn wait_for_assignment(
    mut config: AgentConfig,
    mut watch: Option<&mut ConfigWatch>,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<AgentConfig>> {
    let mut said = None;
    let mut unreadable = false;
    loop {
        let assignment = config_file::assignment(&config);
        let Some(reason) = assignment.waiting_reason() else {
            if said.is_some() {
                tracing::info!(device = %config.device.name, sinks = config.sinks.len(), "assigned: starting capture");
            }
            return Ok(Some(config));
        };
        let Some(watch) = watch.as_deref_mut() else {
            // Flags only: validated before; cannot happen.
            validate(&config)?;
            return Ok(Some(config));
        };
        telemetry.health.set_not_ready(reason);
        if said != Some(assignment) {
            tracing::info!(
                config = %watch.path().display(), reason,
                "waiting for a device assignment; chat.db and the spool are left alone"
            );
            said = Some(assignment);
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let receipt = drain::receipt(&ChainHead::default(), &Default::default());
                let json = drain::to_bounded_json(&receipt);
                println!("{json}");
                let path = &config.termination_message_path;
                if !path.as_os_str().is_empty() {
                    drain::write(path, &json)
                        .with_context(|| format!("writing the drain receipt to {}", path.display()))?;
                }
                tracing::info!(reason, "stopped before any assignment; nothing was captured");
                return Ok(None);
            }
            _ = tokio::time::sleep(config_file::POLL_EVERY) => {}
        }
        match watch.changed() {
            Ok(Some(new)) => {
                config = new;
                unreadable = false;
            }
            Ok(None) => unreadable = false,
            Err(error) => {
                if !unreadable {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "the configuration file cannot be used; still waiting"
                    );
                }
                unreadable = true;
            }
        }
    }
}

/// Read the file every [`config_file::POLL_EVERY`] while capturing; on a change that matters,
/// record it and ask the run to stop (it drains as on SIGTERM).
async fn watch_changes(
    mut watch: ConfigWatch,
    running: AgentConfig,
    reload: CancellationToken,
    change: Arc<std::sync::Mutex<Change>>,
) {
    let mut unreadable = false;
    loop {
        tokio::time::sleep(config_file::POLL_EVERY).await;
        match watch.changed() {
            Ok(None) => unreadable = false,
            Ok(Some(new)) => {
                unreadable = false;
                let found = config_file::classify(&running, &new);
                if found == Change::None {
                    continue;
                }
                tracing::info!(change = ?found, "the configuration file changed; draining to apply it");
                if let Ok(mut c) = change.lock() {
                    *c = found;
                }
                reload.cancel();
                return;
            }
            Err(error) => {
                if !unreadable {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "the configuration file cannot be used; keeping the running configuration"
                    );
                }
                unreadable = true;
            }
        }
    }
}
