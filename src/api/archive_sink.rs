//! `ArchiveSink`: where captured records go.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{ConfigMapKeyRef, DURATION_RULE, SecretRef};

/// CEL fragment: an e-mail address.
const EMAIL_RULE: &str = "self.matches('^[^@\\\\s]+@[^@\\\\s]+\\\\.[^@\\\\s]+$')";

/// A destination for archive records: exactly one of `filesystem`, `s3`, `smtp`, `kafka` or
/// `webhook`. Devices list the sinks they deliver to in `spec.sinkRefs`; every record reaches
/// every listed sink, each with its own delivery cursor, so a slow sink never holds up another.
///
/// Credentials are given only as Secret references. The operator never reads them: it mounts
/// them into each device's capture agent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capturefleet.dev",
    version = "v1alpha1",
    kind = "ArchiveSink",
    doc = "A destination for archive records: filesystem, S3, SMTP journaling, Kafka or webhook (short name asink).",
    namespaced,
    shortname = "asink",
    category = "capturefleet",
    status = "ArchiveSinkStatus",
    derive = "PartialEq",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.type"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Devices",
        type_ = "integer",
        json_path = ".status.devices",
        description = "CaptureDevices delivering to this sink"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.filesystem), has(self.s3), has(self.smtp), has(self.kafka), has(self.webhook)].filter(x, x).size() == 1"
).message("an ArchiveSink must set exactly one of filesystem, s3, smtp, kafka or webhook"))]
pub struct ArchiveSinkSpec {
    /// Append-only JSON Lines files on a volume (use a WORM-capable storage class in
    /// production). The embedded default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemSinkSpec>,

    /// An S3 bucket, optionally with Object Lock retention (WORM; SEC 17a-4(f)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3SinkSpec>,

    /// SMTP journaling into an archive vendor's journal mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSinkSpec>,

    /// An Apache Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkSpec>,

    /// An HTTPS endpoint receiving signed JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSinkSpec>,
}

/// Filesystem sink.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemSinkSpec {
    /// A PersistentVolumeClaim (ReadWriteMany, shared by the devices) mounted into each agent.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,

    /// Directory inside the volume. Default: the volume's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.contains('..')").message(
        "filesystem.subPath is relative to the volume and must not contain '..'"
    ))]
    pub sub_path: Option<String>,

    /// Records per segment file. Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 10000000))]
    pub segment_max_records: Option<i64>,
}

/// S3 sink.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct S3SinkSpec {
    /// Endpoint URL of a non-AWS S3 service (e.g. `https://s3.internal:9000`). Default: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') || self.startsWith('http://')").message(
        "s3.endpoint must be a URL such as https://s3.example.com"
    ))]
    pub endpoint: Option<String>,

    /// Region (e.g. `us-east-1`).
    #[schemars(length(min = 1, max = 64))]
    pub region: String,

    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9][a-z0-9.-]*[a-z0-9]$')").message(
        "s3.bucket must be a valid bucket name: 3-63 lowercase letters, digits, '.' and '-'"
    ))]
    pub bucket: String,

    /// Key prefix for this sink's objects (no leading `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/')").message("s3.prefix must not start with '/'"))]
    pub prefix: Option<String>,

    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,

    /// Object Lock retention for every object written. The bucket must have Object Lock
    /// enabled; the agent refuses to start otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLockSpec>,

    /// Secret with keys `accessKeyId` and `secretAccessKey`. Default: the AWS credential
    /// chain of the agent (e.g. IRSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// PEM bundle of certificate authorities to trust in addition to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<ConfigMapKeyRef>,
}

/// S3 Object Lock settings.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLockSpec {
    /// `COMPLIANCE`: nobody, not even the account root, can shorten or remove the retention
    /// (what SEC 17a-4(f) WORM needs). `GOVERNANCE`: principals with
    /// `s3:BypassGovernanceRetention` can.
    pub mode: ObjectLockModeSpec,

    /// Days each object is retained from when it is written (e.g. 2190 for six years).
    #[x_kube(validation = kube::core::Rule::new("self > 0").message(
        "s3.objectLock.retentionDays must be a positive number of days (e.g. 2190 for six years); Object Lock without retention protects nothing"
    ))]
    #[schemars(range(max = 36500))]
    pub retention_days: i32,

    /// Also place a legal hold on every object (kept until removed explicitly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<bool>,
}

// Object Lock mode.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ObjectLockModeSpec {
    /// Nobody can shorten or remove the retention.
    Compliance,
    /// Privileged principals can.
    Governance,
}

/// SMTP journaling sink.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.tls != 'None' || (has(self.allowInsecure) && self.allowInsecure)").message(
    "smtp.tls: None would send archived messages in clear text; use StartTLS or Implicit, or set smtp.allowInsecure: true to accept the risk"
))]
pub struct SmtpSinkSpec {
    /// Mail server host.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// Mail server port (587 for STARTTLS submission, 465 for implicit TLS, 25 for relay).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// `StartTLS` (upgrade required; the connection fails if the server does not offer it),
    /// `Implicit` (TLS from the first byte), or `None` (clear text; needs `allowInsecure`).
    pub tls: SmtpTlsMode,

    /// Explicitly accept `tls: None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure: Option<bool>,

    /// Sender address of the journal messages.
    #[schemars(length(min = 3, max = 320))]
    #[x_kube(validation = kube::core::Rule::new(EMAIL_RULE).message("smtp.from must be an e-mail address"))]
    pub from: String,

    /// The archive's journal mailbox.
    #[schemars(length(min = 3, max = 320))]
    #[x_kube(validation = kube::core::Rule::new(EMAIL_RULE).message("smtp.journalAddress must be an e-mail address"))]
    pub journal_address: String,

    /// `PerRecord` (default): one message per archive record. `PerConversationDay`: one
    /// message per conversation and UTC day (the TeleMessage/Smarsh convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouping: Option<SmtpGroupingSpec>,

    /// Secret with keys `username` and `password` for SMTP AUTH. Default: no AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// PEM bundle of certificate authorities to trust in addition to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<ConfigMapKeyRef>,
}

// SMTP transport security.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTlsMode {
    /// STARTTLS, required.
    #[serde(rename = "StartTLS")]
    StartTls,
    /// Implicit TLS.
    Implicit,
    /// Clear text.
    None,
}

// SMTP message grouping.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpGroupingSpec {
    /// One message per record.
    PerRecord,
    /// One message per conversation and UTC day.
    PerConversationDay,
}

/// Kafka sink.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSinkSpec {
    /// Bootstrap brokers, `host:port`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 3, max = 261)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(b, b.matches('^[A-Za-z0-9.-]+:[0-9]{1,5}$'))").message(
        "kafka.brokers entries must be host:port, e.g. kafka-0.kafka:9093"
    ))]
    pub brokers: Vec<String>,

    /// Topic records are produced to (key = conversation id).
    #[schemars(length(min = 1, max = 249))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9._-]+$')").message(
        "kafka.topic may contain letters, digits, '.', '_' and '-'"
    ))]
    pub topic: String,

    /// TLS to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTlsSpec>,

    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
}

/// Kafka TLS.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTlsSpec {
    /// Use TLS.
    pub enabled: bool,
    /// PEM bundle of certificate authorities to trust in addition to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<ConfigMapKeyRef>,
}

/// Kafka SASL.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret with keys `username` and `password`.
    pub credentials_secret_ref: SecretRef,
}

// SASL mechanism.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN (only over TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// Webhook sink.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSinkSpec {
    /// HTTPS URL records are POSTed to.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://')").message(
        "webhook.url must be an https:// URL: archived messages never travel in clear text"
    ))]
    pub url: String,

    /// Secret and key holding the HMAC-SHA256 signing key; each request carries a signature
    /// over its timestamp and body.
    pub hmac_secret_ref: SecretKeySelector,

    /// PEM bundle of certificate authorities to trust in addition to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<ConfigMapKeyRef>,

    /// Per-request timeout, as a duration. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message("webhook.timeout must be a duration such as 10s"))]
    pub timeout: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Observed state of an ArchiveSink.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSinkStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Which sink type is configured (`filesystem`, `s3`, `smtp`, `kafka`, `webhook`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,

    /// `Ready`: the configuration is complete and the devices using the sink report it
    /// reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// CaptureDevices that deliver to this sink.
    #[serde(default)]
    pub devices: i32,

    /// Of those, devices whose agent reports every sink healthy.
    #[serde(default)]
    pub healthy_devices: i32,
}
