//! The agent's configuration file over time. The operator renders it into a Pod annotation that
//! the kubelet projects as a file (a downward-API volume) and refreshes when the annotation
//! changes, by swapping the directory's `..data` symlink: so the agent re-reads the file *path*
//! on a timer ([`POLL_EVERY`]) instead of relying on file notifications.
//!
//! What a configuration means for the agent ([`assignment`]): no device identity is a warm
//! spare (idle until claimed); an identity with sinks is a device to capture. What a change
//! means ([`classify`]): the same device with other settings is applied by draining and
//! restarting; another device is refused (its records must never enter this chain).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::api::agent::{AGENT_CONFIG_SCHEMA, AgentConfig};

/// How often the configuration file is read again (a small file: cheap).
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Parse a configuration file's text.
pub fn parse(text: &str, path: &Path) -> anyhow::Result<AgentConfig> {
    let config: AgentConfig =
        serde_yaml::from_str(text).with_context(|| format!("{} is not an agent config", path.display()))?;
    anyhow::ensure!(
        config.schema == AGENT_CONFIG_SCHEMA,
        "{}: schema {:?} is not {AGENT_CONFIG_SCHEMA:?}",
        path.display(),
        config.schema
    );
    Ok(config)
}

/// What a configuration says this agent is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// No device identity: a warm spare of the pool, waiting to be claimed.
    Spare,
    /// A device identity but no sink yet: nothing could be delivered, so nothing starts.
    NoSinks,
    /// A device identity and at least one sink: capture.
    Device,
}

impl Assignment {
    /// The `/readyz` reason while waiting (None for a device).
    pub fn waiting_reason(self) -> Option<&'static str> {
        match self {
            Assignment::Spare => Some("unassigned warm spare"),
            Assignment::NoSinks => Some("no sink configured for this device"),
            Assignment::Device => None,
        }
    }
}

/// What `config` makes of this agent.
pub fn assignment(config: &AgentConfig) -> Assignment {
    if config.device.name.is_empty() {
        Assignment::Spare
    } else if config.sinks.is_empty() {
        Assignment::NoSinks
    } else {
        Assignment::Device
    }
}

/// How a new configuration differs from the one running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing that matters changed (e.g. only formatting).
    None,
    /// The same device with other settings (sinks, capture policy, bounds): drain, then exit 0
    /// so the kubelet restarts the container with the new file.
    Settings,
    /// Another device (or none): refused. The running device's spool is drained to its own
    /// sinks and the agent exits non-zero; the spool would refuse the other device anyway.
    Device {
        /// The running device.
        from: String,
        /// The device the new configuration names (empty: none).
        to: String,
    },
}

/// Compare the running configuration with a new one.
pub fn classify(running: &AgentConfig, new: &AgentConfig) -> Change {
    if running.device.name != new.device.name {
        Change::Device {
            from: running.device.name.clone(),
            to: new.device.name.clone(),
        }
    } else if running != new {
        Change::Settings
    } else {
        Change::None
    }
}

/// Reads a configuration file again on demand; parses only when its text changed.
pub struct ConfigWatch {
    path: PathBuf,
    last_text: Option<String>,
    overrides: Box<dyn Fn(AgentConfig) -> anyhow::Result<AgentConfig> + Send>,
}

impl ConfigWatch {
    /// Watch `path`; `overrides` applies command-line flags to every version read.
    pub fn new(
        path: impl Into<PathBuf>,
        overrides: impl Fn(AgentConfig) -> anyhow::Result<AgentConfig> + Send + 'static,
    ) -> Self {
        ConfigWatch {
            path: path.into(),
            last_text: None,
            overrides: Box::new(overrides),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration, if the file's text changed since the last successful read (the
    /// first read always returns it). A file that cannot be read or parsed is an error, and is
    /// read again next time.
    pub fn changed(&mut self) -> anyhow::Result<Option<AgentConfig>> {
        let text = std::fs::read_to_string(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        if self.last_text.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        let config = (self.overrides)(parse(&text, &self.path)?)?;
        self.last_text = Some(text);
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(device: &str, sinks: &[&str]) -> AgentConfig {
        serde_json::from_value(serde_json::json!({
            "schema": AGENT_CONFIG_SCHEMA,
            "device": {"name": device},
            "chatDb": "/messages/chat.db",
            "spoolDir": "/spool",
            "sinks": sinks.iter().map(|n| serde_json::json!({"name": n, "filesystem": {"path": "/a"}})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn spare_device_and_device_without_sinks() {
        assert_eq!(assignment(&config("", &[])), Assignment::Spare);
        assert_eq!(assignment(&config("", &["a"])), Assignment::Spare);
        assert_eq!(assignment(&config("jane", &[])), Assignment::NoSinks);
        assert_eq!(assignment(&config("jane", &["a"])), Assignment::Device);
        assert_eq!(Assignment::Spare.waiting_reason(), Some("unassigned warm spare"));
        assert_eq!(Assignment::Device.waiting_reason(), None);
    }

    #[test]
    fn another_device_is_refused_and_other_settings_are_a_restart() {
        let running = config("jane", &["a"]);
        assert_eq!(classify(&running, &running.clone()), Change::None);
        assert_eq!(classify(&running, &config("jane", &["a", "b"])), Change::Settings);
        let mut slower = running.clone();
        slower.capture.poll_interval_ms = 5000;
        assert_eq!(classify(&running, &slower), Change::Settings);
        assert_eq!(
            classify(&running, &config("john", &["a"])),
            Change::Device {
                from: "jane".into(),
                to: "john".into()
            }
        );
        assert!(matches!(classify(&running, &config("", &[])), Change::Device { .. }));
    }

    #[test]
    fn the_file_is_parsed_again_only_when_it_changed_and_through_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        // The kubelet's layout: agent.yaml -> ..data/agent.yaml, ..data -> a timestamped dir.
        let write = |stamp: &str, config: &AgentConfig| {
            let data = dir.path().join(stamp);
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("agent.yaml"), serde_yaml::to_string(config).unwrap()).unwrap();
            let tmp = dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(stamp, &tmp).unwrap();
            std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
        };
        write("..2026_01_01_00_00_00.1", &config("", &[]));
        std::os::unix::fs::symlink("..data/agent.yaml", dir.path().join("agent.yaml")).unwrap();
        let mut watch = ConfigWatch::new(dir.path().join("agent.yaml"), |mut c: AgentConfig| {
            c.http_listen = "127.0.0.1:1".into();
            Ok(c)
        });
        let first = watch.changed().unwrap().expect("the first read returns the config");
        assert_eq!(assignment(&first), Assignment::Spare);
        assert_eq!(first.http_listen, "127.0.0.1:1", "overrides are applied");
        assert_eq!(watch.changed().unwrap(), None, "unchanged");
        write("..2026_01_01_00_00_05.2", &config("jane", &["a"]));
        let claimed = watch.changed().unwrap().expect("the swapped file is read");
        assert_eq!(assignment(&claimed), Assignment::Device);
        assert_eq!(watch.changed().unwrap(), None);
        std::fs::remove_file(dir.path().join("agent.yaml")).unwrap();
        std::fs::write(dir.path().join("agent.yaml"), "schema: other\n").unwrap();
        assert!(
            watch.changed().is_err(),
            "a broken file is an error, not a new configuration"
        );
    }
}
