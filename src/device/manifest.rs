//! What the simulator wrote: one entry per event a capture agent must archive, keyed like the
//! archive's idempotency keys (without the device prefix), so tests can check that every
//! simulated event was archived exactly once.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One simulated event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ManifestEvent {
    /// The archive record kind (`message`, `reply`, `edit`, `unsend`, `reaction_added`, …).
    pub kind: String,
    /// The GUID in the idempotency key (message GUID; attachment GUID for attachments).
    pub guid: String,
    /// The revision in the idempotency key (see `SourceRef::revision`).
    pub revision: String,
    /// `message.ROWID` (attachment ROWID for attachments).
    pub rowid: i64,
    /// The chat's GUID.
    pub chat_guid: String,
    /// Text written (message text, edit text, new group name, tapback target …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Event time, Apple-epoch nanoseconds.
    pub at_ns: i64,
    /// Whether the file of an attachment was written to disk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_missing: bool,
}

impl ManifestEvent {
    /// `guid/revision`: the idempotency key without its device prefix.
    pub fn key(&self) -> String {
        format!("{}/{}", self.guid, self.revision)
    }
}

/// Everything the simulator wrote.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Manifest {
    /// The seed.
    pub seed: u64,
    /// Events in the order they were written.
    pub events: Vec<ManifestEvent>,
    /// GUIDs of message rows deleted after being written (purged or moved to Recently
    /// Deleted). Their events may be missing from an archive if the rows vanished before the
    /// agent read them; if the agent did read them, a `deleted` record must follow.
    pub deleted: Vec<String>,
    /// GUIDs of messages that were unsent (their text is gone from the row).
    pub unsent: Vec<String>,
}

impl Manifest {
    /// Writes the manifest as JSON.
    pub fn write_json(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer(file, self).map_err(std::io::Error::other)
    }

    /// Reads a manifest.
    pub fn read_json(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        serde_json::from_reader(file).map_err(std::io::Error::other)
    }
}
