//! The simulated device runtime's side of the runtime contract: the operator asks any device
//! runtime for a startup probe (booted) and a readiness probe (signed in and syncing). When
//! `capturefleet device simulate --state-dir DIR` plays the device, it records those two states
//! as files in DIR, and `capturefleet device probe booted|signed-in --state-dir DIR` is the exec
//! probe the operator puts on the runtime container by default.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A device state the probes ask about.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// macOS has booted (startup probe).
    Booted,
    /// The employee's Apple ID is signed in and Messages syncs (readiness probe).
    SignedIn,
}

impl DeviceState {
    fn file(self) -> &'static str {
        match self {
            DeviceState::Booted => "booted",
            DeviceState::SignedIn => "signed-in",
        }
    }
}

/// `capturefleet device probe` options.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The state to check.
    #[arg(value_enum)]
    pub state: DeviceState,
    /// The runtime's state directory.
    #[arg(long, env = "CAPTUREFLEET_DEVICE_STATE")]
    pub state_dir: PathBuf,
}

/// Record a state (atomically: write a temporary file, then rename).
pub fn mark(state_dir: &Path, state: DeviceState) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{}.tmp", state.file()));
    std::fs::write(&tmp, jiff::Timestamp::now().to_string())?;
    std::fs::rename(&tmp, state_dir.join(state.file()))
}

/// Whether a state has been recorded.
pub fn is(state_dir: &Path, state: DeviceState) -> bool {
    state_dir.join(state.file()).is_file()
}

/// The probe: exit 0 when the state holds, 1 (with the reason on stderr) when not.
pub fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    if is(&args.state_dir, args.state) {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "device not {:?} yet (no {} in {})",
            args.state,
            args.state.file(),
            args.state_dir.display()
        );
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_the_recorded_states() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is(dir.path(), DeviceState::Booted));
        mark(dir.path(), DeviceState::Booted).unwrap();
        assert!(is(dir.path(), DeviceState::Booted));
        assert!(!is(dir.path(), DeviceState::SignedIn));
        let code = probe(ProbeArgs {
            state: DeviceState::SignedIn,
            state_dir: dir.path().into(),
        })
        .unwrap();
        assert_eq!(code, ExitCode::from(1));
        mark(dir.path(), DeviceState::SignedIn).unwrap();
        assert_eq!(
            probe(ProbeArgs {
                state: DeviceState::SignedIn,
                state_dir: dir.path().into()
            })
            .unwrap(),
            ExitCode::SUCCESS
        );
    }
}
