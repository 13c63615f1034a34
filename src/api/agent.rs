//! The operator ↔ agent contract: the configuration file the operator renders for each device's
//! capture agent, and the drain receipt the agent writes to its termination message.
//!
//! Secrets never appear here: a sink that needs credentials gets the *directory* where the
//! operator mounted the referenced Secret, and the agent reads the files itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Schema identifier of [`AgentConfig`] files.
pub const AGENT_CONFIG_SCHEMA: &str = "capturefleet.dev/agent-config/v1";
/// Schema identifier of [`DrainReceipt`]s.
pub const DRAIN_RECEIPT_SCHEMA: &str = "capturefleet.dev/drain-receipt/v1";

/// Everything the capture agent needs to run, as rendered by the operator (YAML or JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// Always [`AGENT_CONFIG_SCHEMA`].
    pub schema: String,
    /// Which device and employee the records belong to.
    pub device: AgentDevice,
    /// Path of Messages' `chat.db` (read-only; its `-wal` must sit beside it).
    pub chat_db: PathBuf,
    /// Root that `~/Library/Messages/Attachments/...` paths in chat.db resolve against; by
    /// default the directory holding `chat.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_dir: Option<PathBuf>,
    /// Directory of the durable spool (on the device volume).
    pub spool_dir: PathBuf,
    /// What to capture.
    #[serde(default)]
    pub capture: CaptureSettings,
    /// Where records go; every record goes to every sink.
    pub sinks: Vec<SinkConfig>,
    /// Upper bound of the spool's disk use; reading pauses above it (never drops).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Address of `/livez`, `/readyz` and `/metrics`.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// Where the drain receipt is written on shutdown.
    #[serde(default = "default_termination_path")]
    pub termination_message_path: PathBuf,
    /// How long a drain may take before the agent gives up and reports what is pending.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: u64,
}

fn default_spool_max_bytes() -> u64 {
    2 << 30
}
fn default_http_listen() -> String {
    "0.0.0.0:9464".into()
}
fn default_termination_path() -> PathBuf {
    PathBuf::from("/dev/termination-log")
}
fn default_drain_timeout() -> u64 {
    3000
}

/// The device identity stamped on every record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentDevice {
    /// CaptureDevice name.
    pub name: String,
    /// CaptureDevice namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The employee's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Capture policy, resolved by the operator from `spec.capture` (defaults filled in).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureSettings {
    /// Services to capture (`iMessage`, `SMS`, `RCS`); others are skipped.
    pub services: Vec<String>,
    /// Whether attachment files are archived or only described.
    pub attachments: AttachmentPolicy,
    /// Only messages newer than this many days are backfilled on first start (None: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill_days: Option<u32>,
    /// How far back (seconds of message date) each poll re-reads rows to catch edits,
    /// unsends and deletions.
    pub rescan_window_seconds: u64,
    /// Poll interval; file notifications only wake the poll early.
    pub poll_interval_ms: u64,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            services: vec!["iMessage".into(), "SMS".into(), "RCS".into()],
            attachments: AttachmentPolicy::Include,
            backfill_days: None,
            rescan_window_seconds: 7 * 24 * 3600,
            poll_interval_ms: 1000,
        }
    }
}

/// Attachment capture policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachmentPolicy {
    /// Archive the file (hash, size, and the bytes to sinks that take files).
    #[default]
    Include,
    /// Archive only the metadata (name, MIME type, size); no bytes.
    MetadataOnly,
}

/// One sink as the agent sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkConfig {
    /// A short name, unique within the device (the ArchiveSink's name). Used in metric labels
    /// and the drain receipt.
    pub name: String,
    /// The sink and its settings.
    #[serde(flatten)]
    pub target: SinkTarget,
}

/// The sink type and its settings. Exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum SinkTarget {
    /// Append-only JSON Lines segments on a filesystem (WORM volume in production).
    Filesystem(FilesystemTarget),
    /// S3 (optionally with Object Lock).
    S3(S3Target),
    /// SMTP journaling.
    Smtp(SmtpTarget),
    /// Apache Kafka.
    Kafka(KafkaTarget),
    /// HTTPS webhook.
    Webhook(WebhookTarget),
}

impl SinkTarget {
    /// The sink type's name (`filesystem`, `s3`, …), used as a metric label.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkTarget::Filesystem(_) => "filesystem",
            SinkTarget::S3(_) => "s3",
            SinkTarget::Smtp(_) => "smtp",
            SinkTarget::Kafka(_) => "kafka",
            SinkTarget::Webhook(_) => "webhook",
        }
    }
}

/// Filesystem sink settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesystemTarget {
    /// Archive root directory.
    pub path: PathBuf,
    /// Records per segment file before a new one is started.
    #[serde(default = "default_segment_records")]
    pub segment_max_records: u64,
}

fn default_segment_records() -> u64 {
    100_000
}

/// S3 sink settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Target {
    /// Endpoint URL; None for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Key prefix (no leading slash).
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (most non-AWS servers).
    #[serde(default)]
    pub path_style: bool,
    /// Object Lock settings; None writes without retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
    /// Directory with `accessKeyId` and `secretAccessKey` files (a mounted Secret); None uses
    /// the default AWS credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
    /// PEM bundle of extra CAs to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Most records in one JSON Lines object; a larger batch is written as several objects.
    #[serde(default = "default_s3_records_per_object")]
    pub max_records_per_object: u32,
}

/// Default of [`S3Target::max_records_per_object`].
pub fn default_s3_records_per_object() -> u32 {
    1000
}

/// S3 Object Lock retention for each object written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectLock {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: ObjectLockMode,
    /// Retain-until = write time + this many days.
    pub retention_days: u32,
    /// Also place a legal hold on each object.
    #[serde(default)]
    pub legal_hold: bool,
}

/// S3 Object Lock mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ObjectLockMode {
    /// Nobody can shorten or remove the retention.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can.
    Governance,
}

/// SMTP journaling settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpTarget {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// Envelope and header sender.
    pub from: String,
    /// The journal mailbox of the archive.
    pub journal_address: String,
    /// One EML per record, or one per conversation and day.
    #[serde(default)]
    pub grouping: SmtpGrouping,
    /// Directory with `username` and `password` files; None sends without AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
    /// PEM bundle of extra CAs to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// SMTP transport security.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS, required (the default).
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// Plain text. Only when the ArchiveSink explicitly allows it.
    None,
}

/// EML grouping.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SmtpGrouping {
    /// One message per record.
    #[default]
    PerRecord,
    /// One message per conversation and UTC day, sent once the day has ended or on drain.
    PerConversationDay,
}

/// Kafka settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaTarget {
    /// Bootstrap servers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic.
    pub topic: String,
    /// Use TLS.
    #[serde(default)]
    pub tls: bool,
    /// PEM bundle of extra CAs to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`); None for no SASL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    /// Directory with `username` and `password` files for SASL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
    /// How long a batch may wait for the brokers (message delivery, transaction commit) before
    /// the attempt fails and is retried.
    #[serde(default = "default_kafka_delivery_timeout")]
    pub delivery_timeout_seconds: u64,
}

/// Default of [`KafkaTarget::delivery_timeout_seconds`].
pub fn default_kafka_delivery_timeout() -> u64 {
    30
}

/// Webhook settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookTarget {
    /// HTTPS URL records are POSTed to.
    pub url: String,
    /// File holding the HMAC-SHA256 key (a mounted Secret).
    pub hmac_secret_file: PathBuf,
    /// PEM bundle of extra CAs to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_seconds: u64,
}

fn default_webhook_timeout() -> u64 {
    10
}

/// What the agent reports when it stops: written as JSON to the termination-message path, so
/// the kubelet copies it into the Pod status where the operator's finalizer reads it.
/// Must stay well under the kubelet's 4096-byte termination-message limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainReceipt {
    /// Always [`DRAIN_RECEIPT_SCHEMA`].
    pub schema: String,
    /// Records in the device's chain (= last sequence number).
    pub records_captured: u64,
    /// Sequence number of the chain head.
    pub last_sequence: u64,
    /// Hash of the chain head (empty when nothing was captured).
    pub chain_head: String,
    /// Records not yet acknowledged, per sink name.
    pub pending: BTreeMap<String, u64>,
    /// Sum of `pending`.
    pub pending_total: u64,
    /// True when the drain finished with nothing pending.
    pub complete: bool,
    /// When the receipt was written (RFC 3339 UTC).
    pub finished_at: String,
}

impl DrainReceipt {
    /// Parse a termination message; None when it is not a drain receipt (e.g. a crash message).
    pub fn parse(message: &str) -> Option<Self> {
        let receipt: DrainReceipt = serde_json::from_str(message.trim()).ok()?;
        (receipt.schema == DRAIN_RECEIPT_SCHEMA).then_some(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_config_is_flat_and_tagged_by_type() {
        let yaml = r#"
name: archive
filesystem:
  path: /archive
"#;
        let sink: SinkConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(sink.target.type_name(), "filesystem");
        let json = serde_json::to_value(&sink).unwrap();
        assert_eq!(json["filesystem"]["segmentMaxRecords"], 100_000);
    }

    #[test]
    fn drain_receipt_round_trips_and_rejects_other_messages() {
        let receipt = DrainReceipt {
            schema: DRAIN_RECEIPT_SCHEMA.into(),
            records_captured: 3,
            last_sequence: 3,
            chain_head: "ab".into(),
            pending: BTreeMap::from([("s3".into(), 2)]),
            pending_total: 2,
            complete: false,
            finished_at: "2026-01-01T00:00:00Z".into(),
        };
        let text = serde_json::to_string(&receipt).unwrap();
        assert_eq!(DrainReceipt::parse(&text), Some(receipt));
        assert_eq!(DrainReceipt::parse("panic: out of memory"), None);
        assert_eq!(DrainReceipt::parse(r#"{"schema":"other"}"#), None);
    }
}
