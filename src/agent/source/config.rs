//! What the chat.db reader needs from the agent's configuration.

use std::path::PathBuf;

use crate::api::agent::{AgentConfig, CaptureSettings};
use crate::api::record::DeviceInfo;

/// Reader settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ReaderConfig {
    /// Path of Messages' `chat.db` (its `-wal` and `-shm` beside it).
    pub chat_db: PathBuf,
    /// The directory `~/Library/Messages` maps to: attachment paths in chat.db
    /// (`~/Library/Messages/Attachments/…`) resolve against it.
    pub messages_dir: PathBuf,
    /// Services, attachment policy, backfill and rescan windows.
    pub capture: CaptureSettings,
    /// The identity stamped on every record (its `name` is the idempotency keys' prefix).
    pub device: DeviceInfo,
}

impl ReaderConfig {
    /// The reader settings of an agent configuration; `agent_version` is this binary's version.
    pub fn from_agent_config(config: &AgentConfig) -> Self {
        ReaderConfig {
            chat_db: config.chat_db.clone(),
            messages_dir: config.messages_dir.clone().unwrap_or_else(|| {
                config
                    .chat_db
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
            }),
            capture: config.capture.clone(),
            device: DeviceInfo {
                name: config.device.name.clone(),
                namespace: config.device.namespace.clone(),
                user_id: config.device.user_id.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        }
    }

    /// Settings for a local run: default capture settings, `messages_dir` = chat.db's directory.
    pub fn local(chat_db: impl Into<PathBuf>, device_name: &str) -> Self {
        let chat_db = chat_db.into();
        ReaderConfig {
            messages_dir: chat_db
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
            chat_db,
            capture: CaptureSettings::default(),
            device: DeviceInfo {
                name: device_name.to_owned(),
                namespace: None,
                user_id: None,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        }
    }
}
