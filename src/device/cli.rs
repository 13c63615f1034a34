//! `capturefleet device simulate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::info;

use super::{Simulator, SimulatorConfig};

/// Simulator options.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The directory standing for `~/Library/Messages` (chat.db and Attachments/ are written
    /// there; an existing chat.db is replaced).
    #[arg(long, default_value = "Messages")]
    pub dir: PathBuf,
    /// Seed: the same seed and options give the same database.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events of bulk history to write first, dated over the past `--history-days`.
    #[arg(long, default_value_t = 0)]
    pub messages: usize,
    /// After the history, write live events at this many per second (edits, unsends and
    /// deletions of recent rows included) until `--duration` or SIGINT/SIGTERM.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of live traffic (default: until interrupted).
    #[arg(long)]
    pub duration: Option<u64>,
    /// One-to-one contacts.
    #[arg(long, default_value_t = 40)]
    pub contacts: usize,
    /// Group chats.
    #[arg(long, default_value_t = 8)]
    pub groups: usize,
    /// Days the bulk history spans.
    #[arg(long, default_value_t = 5 * 365)]
    pub history_days: u32,
    /// Write a JSON manifest of every event (kind, GUID, revision, text) here on exit.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Play a device runtime: record `booted` in this directory once the database is written,
    /// and `signed-in` after `--sign-in-after` (what `capturefleet device probe` checks).
    #[arg(long, env = "CAPTUREFLEET_DEVICE_STATE")]
    pub state_dir: Option<PathBuf>,
    /// Seconds after boot at which the simulated employee signs in (with `--state-dir`).
    #[arg(long, default_value_t = 0)]
    pub sign_in_after: u64,
}

/// Run the simulator.
pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = SimulatorConfig::new(&args.dir, args.seed);
    cfg.contacts = args.contacts.max(1);
    cfg.groups = args.groups;
    cfg.history_days = args.history_days;
    cfg.record_manifest = args.manifest.is_some();
    let mut sim = Simulator::create(cfg).context("creating chat.db")?;
    let started = Instant::now();
    sim.write_history(args.messages).context("writing history")?;
    info!(
        messages = args.messages,
        seconds = started.elapsed().as_secs_f64(),
        db = %sim.chat_db().display(),
        "history written"
    );
    if let Some(state_dir) = &args.state_dir {
        super::runtime::mark(state_dir, super::runtime::DeviceState::Booted)
            .with_context(|| format!("recording the booted state in {}", state_dir.display()))?;
        let state_dir = state_dir.clone();
        let after = Duration::from_secs(args.sign_in_after);
        std::thread::spawn(move || {
            std::thread::sleep(after);
            if let Err(error) = super::runtime::mark(&state_dir, super::runtime::DeviceState::SignedIn) {
                tracing::error!(%error, "could not record the signed-in state");
            }
        });
    }
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number");
        live(&mut sim, rate, args.duration.map(Duration::from_secs))?;
    }
    if let Some(path) = &args.manifest {
        sim.manifest()
            .write_json(path)
            .with_context(|| format!("writing manifest {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn live(sim: &mut Simulator, rate: f64, duration: Option<Duration>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut steps = 0u64;
        info!(rate, "live traffic");
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sim.step().context("live step")?;
                    steps += 1;
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            }
        }
        info!(steps, "live traffic stopped");
        anyhow::Ok(())
    })
}
