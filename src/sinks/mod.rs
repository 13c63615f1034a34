//! Archive sinks: one file per sink behind the [`Sink`] trait.
//!
//! Sinks know records, not where they came from. The agent's delivery loop hands each sink
//! batches of sealed records in sequence order, through that sink's own cursor in the spool;
//! a batch is acknowledged by returning `Ok(())`, after which the cursor moves past it.
//! A batch may be delivered again after a crash or a timeout, so every sink writes
//! idempotently (deterministic object keys, message ids, idempotency headers, or a
//! sequence check).

pub mod attachment;
pub mod factory;
pub mod files;
pub mod filesystem;
pub mod spooled;

use async_trait::async_trait;

pub use attachment::{Attachment, AttachmentStore};
pub use spooled::{RecordMeta, SpooledRecord, StoredJson};

pub mod ca;
pub mod eml;
pub mod kafka;
pub mod s3;
pub mod s3_keys;
pub mod secret;
pub mod smtp;
pub mod smtp_day;
pub mod webhook;

/// Why a sink call failed. The delivery loop retries `Transient` with backoff forever (the
/// spool keeps the records), keeps `Permanent` failures in the spool too but reports them
/// loudly (metric, log, readiness), and refuses to start a `Misconfigured` sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Network error, timeout, 5xx, throttling: try again later.
    #[error("transient sink error: {0}")]
    Transient(String),
    /// The server refused the records for a reason a retry will not fix (4xx, schema).
    #[error("permanent sink error: {0}")]
    Permanent(String),
    /// The sink's configuration or the server's setup is wrong (e.g. no Object Lock).
    #[error("sink misconfigured: {0}")]
    Misconfigured(String),
}

impl SinkError {
    /// A short label for metrics (`transient`, `permanent`, `misconfigured`).
    pub fn class(&self) -> &'static str {
        match self {
            SinkError::Transient(_) => "transient",
            SinkError::Permanent(_) => "permanent",
            SinkError::Misconfigured(_) => "misconfigured",
        }
    }
}

/// One archive destination.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name from the agent configuration.
    fn name(&self) -> &str;

    /// The sink type (`filesystem`, `s3`, …).
    fn type_name(&self) -> &'static str;

    /// Called once before the first delivery: check the configuration against the server
    /// (bucket exists and has Object Lock, broker reachable, …).
    async fn start(&self) -> Result<(), SinkError>;

    /// A cheap reachability probe used by the agent's readiness.
    async fn health(&self) -> Result<(), SinkError>;

    /// Deliver a batch (sequence order, no gaps within the batch). `Ok` acknowledges the
    /// whole batch durably.
    async fn deliver(&self, batch: &[SpooledRecord], attachments: &dyn AttachmentStore) -> Result<(), SinkError>;

    /// Flush anything the sink buffers (e.g. per-conversation-day EMLs) before a drain ends.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Records this sink acknowledged but holds in its own durable buffer, not yet in the
    /// archive (SMTP per-conversation-day journals them until the day is over). A drain is only
    /// complete when this is 0 after `flush`; the drain receipt and the pending gauge should
    /// count these as pending.
    async fn buffered(&self) -> Result<u64, SinkError> {
        Ok(0)
    }
}
