//! Apache Kafka sink: one message per record, exactly once.
//!
//! - **Message**: value = the record's stored canonical JSON (byte for byte); key = the
//!   conversation id (so one conversation stays in one partition, in order), or
//!   `device:<namespace>/<name>` for records outside any conversation; headers
//!   `idempotency-key`, `record-sha256`, `seq`, `device`, `schema`. Attachment files are not
//!   sent (records carry their SHA-256; file bytes go to the S3 or filesystem sinks).
//! - **Producer**: idempotent (`enable.idempotence=true`, hence `acks=all`), transactional.
//!   Each batch is one transaction that also commits, as consumer-group offset *metadata* of
//!   the group `capturefleet.<namespace>.<device>.<sink>`, the last sequence number written.
//!   The batch is acknowledged only after `commit_transaction` returns, i.e. once every message
//!   is acknowledged by all in-sync replicas and the transaction is committed.
//! - **Exactly once across crashes**: the transactional id is stable per device and sink, so a
//!   restarted agent fences its previous incarnation and aborts its unfinished transaction
//!   (`init_transactions`); it then reads the committed watermark and skips records at or
//!   below it. A redelivered batch therefore adds nothing to the topic, and a partially
//!   written one was aborted. Consumers must read with `isolation.level=read_committed` (the
//!   default of librdkafka, not of the Java client) to not see aborted messages.
//! - On any error the producer is dropped and rebuilt on the next attempt, which re-runs the
//!   fencing and re-reads the watermark.
//! - TLS: `tls: true` uses SSL with certificate and host-name verification (system CAs plus
//!   `caFile`); SASL (`PLAIN`, `SCRAM-SHA-256/512`) reads `username`/`password` from
//!   `credentialsDir`, and is refused without TLS so a password never travels in clear text.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Mutex;
use tracing::{debug, info, instrument, warn};

use super::ca::CaBundle;
use super::secret::BasicAuth;
use super::{AttachmentStore, Sink, SinkError, SpooledRecord};
use crate::api::agent::KafkaTarget;
use crate::api::record::ArchiveRecord;

/// The partition whose committed offset metadata carries the sink's watermark.
const WATERMARK_PARTITION: i32 = 0;
const WATERMARK_PREFIX: &str = "capturefleet:last-seq=";

/// The Kafka sink.
pub struct KafkaSink {
    name: String,
    target: KafkaTarget,
    base: ClientConfig,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("topic", &self.target.topic)
            .finish_non_exhaustive()
    }
}

/// Remembers librdkafka's last client-level error, whose reason (e.g. "SASL authentication
/// error: Authentication failed") the failing call's own error does not carry.
#[derive(Clone, Default)]
pub struct SinkContext {
    last_error: Arc<std::sync::Mutex<Option<(RDKafkaErrorCode, String)>>>,
}

impl ClientContext for SinkContext {
    /// librdkafka's log, into `tracing`; failures it only logs (SASL, TLS handshakes) are
    /// remembered for [`SinkContext::explain`].
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => warn!(facility = fac, "librdkafka: {log_message}"),
            L::Warning | L::Notice => info!(facility = fac, "librdkafka: {log_message}"),
            L::Info | L::Debug => debug!(facility = fac, "librdkafka: {log_message}"),
        }
        let code = if log_message.contains("SASL authentication error") || log_message.contains("Authentication failed")
        {
            Some(RDKafkaErrorCode::Authentication)
        } else if log_message.contains("SSL handshake failed") {
            Some(RDKafkaErrorCode::SSL)
        } else {
            None
        };
        if let Some(code) = code {
            *self.last_error.lock().expect("last_error lock") = Some((code, log_message.to_owned()));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, "librdkafka: {reason}");
        if let Some(code) = error.rdkafka_error_code() {
            *self.last_error.lock().expect("last_error lock") = Some((code, reason.to_owned()));
        }
    }
}

impl ConsumerContext for SinkContext {}

impl SinkContext {
    /// `err`, reclassified and explained by the last client error: an authentication failure
    /// is a misconfiguration, and a TLS failure's reason is added to the message.
    fn explain(&self, err: SinkError) -> SinkError {
        let last = self.last_error.lock().expect("last_error lock").clone();
        match (last, err) {
            (Some((RDKafkaErrorCode::Authentication, reason)), SinkError::Transient(m)) => {
                SinkError::Misconfigured(format!("{m}; {reason}"))
            }
            (Some((RDKafkaErrorCode::SSL, reason)), SinkError::Transient(m)) => {
                SinkError::Transient(format!("{m}; {reason}"))
            }
            (_, err) => err,
        }
    }
}

/// A transactional producer for one device, and what it knows about the topic.
struct Session {
    device: String,
    producer: FutureProducer<SinkContext>,
    /// The producer's context (shared), for the reasons of its errors.
    producer_context: SinkContext,
    consumer: Arc<BaseConsumer<SinkContext>>,
    group: Arc<ConsumerGroupMetadata>,
    /// Highest sequence number committed to the topic by this device and sink.
    watermark: u64,
}

/// The message key of a record.
pub fn message_key(record: &ArchiveRecord) -> String {
    match &record.conversation {
        Some(c) => c.id.clone(),
        None => format!("device:{}", device_id(record)),
    }
}

fn device_id(record: &ArchiveRecord) -> String {
    format!(
        "{}/{}",
        record.device.namespace.as_deref().unwrap_or("_"),
        record.device.name
    )
}

/// The watermark stored in offset metadata.
pub fn watermark_metadata(last_seq: u64) -> String {
    format!("{WATERMARK_PREFIX}{last_seq}")
}

/// Parse offset metadata; 0 (nothing written) for anything else.
pub fn parse_watermark(metadata: &str) -> u64 {
    metadata
        .strip_prefix(WATERMARK_PREFIX)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A name usable in a transactional id or group id: `[A-Za-z0-9._-]`, others replaced.
fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn kafka_error(what: &str, e: &KafkaError) -> SinkError {
    let message = format!("Kafka {what}: {e}");
    let fatal = match e {
        KafkaError::Transaction(t) => t.is_fatal() && !t.is_retriable(),
        _ => false,
    };
    match e.rdkafka_error_code() {
        Some(
            rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
            | rdkafka::types::RDKafkaErrorCode::ClusterAuthorizationFailed
            | rdkafka::types::RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed
            | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed,
        ) => SinkError::Misconfigured(message),
        Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge) => SinkError::Permanent(message),
        // Fenced or otherwise fatal: a new producer (next attempt) recovers.
        _ if fatal => SinkError::Transient(message),
        _ => SinkError::Transient(message),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SinkError::Transient(format!("Kafka worker thread failed: {e}")))
}

impl KafkaSink {
    /// Build the sink: checks the settings and reads the SASL credentials and CA bundle.
    pub fn new(name: &str, target: &KafkaTarget) -> Result<Self, SinkError> {
        if target.brokers.is_empty() || target.topic.is_empty() {
            return Err(SinkError::Misconfigured("kafka brokers and topic must be set".into()));
        }
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", target.brokers.join(","))
            .set("client.id", format!("capturefleet-{}", id_part(name)))
            .set("socket.connection.setup.timeout.ms", "10000")
            // Not derived from the `log` crate's level (unset under `tracing`): connection,
            // TLS and SASL failures are only logged by librdkafka, and they explain errors.
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        let sasl = match (&target.sasl_mechanism, &target.credentials_dir) {
            (Some(mechanism), Some(dir)) => Some((mechanism.clone(), BasicAuth::read(dir)?)),
            (Some(_), None) => {
                return Err(SinkError::Misconfigured(
                    "kafka saslMechanism needs credentialsDir".into(),
                ));
            }
            (None, _) => None,
        };
        let protocol = match (target.tls, sasl.is_some()) {
            (true, true) => "SASL_SSL",
            (true, false) => "SSL",
            (false, true) => {
                return Err(SinkError::Misconfigured(
                    "kafka SASL without TLS would send the password in clear text; set tls: true".into(),
                ));
            }
            (false, false) => "PLAINTEXT",
        };
        base.set("security.protocol", protocol);
        if target.tls {
            base.set("ssl.endpoint.identification.algorithm", "https")
                .set("enable.ssl.certificate.verification", "true");
            match CaBundle::read_optional(target.ca_file.as_deref())? {
                Some(ca) => base.set("ssl.ca.pem", String::from_utf8_lossy(ca.pem()).into_owned()),
                None => base.set("ssl.ca.location", "probe"),
            };
        }
        if let Some((mechanism, auth)) = sasl {
            base.set("sasl.mechanism", mechanism)
                .set("sasl.username", auth.username.expose())
                .set("sasl.password", auth.password.expose());
        }
        Ok(KafkaSink {
            name: name.to_owned(),
            target: target.clone(),
            base,
            session: Mutex::new(None),
        })
    }

    fn op_timeout(&self) -> Duration {
        Duration::from_secs(self.target.delivery_timeout_seconds.max(1))
    }

    /// A new transactional session for `device`: fences older producers of the same id, aborts
    /// their open transaction, and reads the committed watermark.
    async fn open_session(&self, device: &str) -> Result<Session, SinkError> {
        let ids = format!("capturefleet.{}.{}", id_part(device), id_part(&self.name));
        let timeout_ms = self.op_timeout().as_millis().to_string();
        let producer_context = SinkContext::default();
        let producer: FutureProducer<SinkContext> = self
            .base
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transactional.id", &ids)
            .set("message.timeout.ms", &timeout_ms)
            .set(
                "transaction.timeout.ms",
                (self.op_timeout().as_millis().max(60_000) * 2).to_string(),
            )
            .set("linger.ms", "5")
            .create_with_context(producer_context.clone())
            .map_err(|e| SinkError::Misconfigured(format!("kafka producer settings: {e}")))?;
        let consumer: BaseConsumer<SinkContext> = self
            .base
            .clone()
            .set("group.id", &ids)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create_with_context(SinkContext::default())
            .map_err(|e| SinkError::Misconfigured(format!("kafka consumer settings: {e}")))?;
        let consumer = Arc::new(consumer);
        let group = Arc::new(
            consumer
                .group_metadata()
                .ok_or_else(|| SinkError::Misconfigured("kafka consumer has no group metadata".into()))?,
        );
        let timeout = self.op_timeout();
        let p = producer.clone();
        blocking(move || p.init_transactions(timeout))
            .await?
            .map_err(|e| producer_context.explain(kafka_error("init_transactions", &e)))?;
        let (c, topic) = (consumer.clone(), self.target.topic.clone());
        let committed = blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, WATERMARK_PARTITION);
            c.committed_offsets(tpl, timeout).inspect_err(|_| {
                let _ = c.poll(Duration::from_millis(300)); // serve the log (see topic_metadata)
            })
        })
        .await?
        .map_err(|e| {
            consumer
                .context()
                .explain(kafka_error("reading the committed watermark", &e))
        })?;
        let watermark = committed
            .elements()
            .first()
            .map(|e| parse_watermark(e.metadata()))
            .unwrap_or(0);
        info!(sink = %self.name, watermark, "kafka transactional producer ready");
        Ok(Session {
            device: device.to_owned(),
            producer,
            producer_context,
            consumer,
            group,
            watermark,
        })
    }

    async fn deliver_in(&self, session: &mut Session, batch: &[SpooledRecord]) -> Result<(), SinkError> {
        let fresh: Vec<&SpooledRecord> = batch.iter().filter(|r| r.seq > session.watermark).collect();
        let Some(last) = fresh.last().map(|r| r.seq) else {
            debug!(sink = %self.name, watermark = session.watermark, "batch already committed; nothing to send");
            return Ok(());
        };
        if fresh.len() < batch.len() {
            info!(sink = %self.name, skipped = batch.len() - fresh.len(), "records already committed to Kafka");
        }
        // Parsed before the transaction begins, so a damaged record cannot leave one open.
        let parsed = fresh.iter().map(|r| r.record()).collect::<Result<Vec<_>, _>>()?;
        session
            .producer
            .begin_transaction()
            .map_err(|e| kafka_error("begin_transaction", &e))?;
        let mut pending = Vec::with_capacity(fresh.len());
        for (rec, parsed) in fresh.iter().zip(parsed) {
            let seq = rec.seq.to_string();
            let device = device_id(parsed);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "idempotency-key",
                    value: Some(parsed.idempotency_key.as_str()),
                })
                .insert(Header {
                    key: "record-sha256",
                    value: Some(rec.meta.hash.as_str()),
                })
                .insert(Header {
                    key: "seq",
                    value: Some(seq.as_str()),
                })
                .insert(Header {
                    key: "device",
                    value: Some(device.as_str()),
                })
                .insert(Header {
                    key: "schema",
                    value: Some(parsed.schema.as_ref()),
                });
            let key = message_key(parsed);
            let mut record = FutureRecord::to(&self.target.topic)
                .key(&key)
                .payload(rec.json.as_bytes())
                .headers(headers);
            let delivery = loop {
                match session.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err((e, _)) => return Err(kafka_error("produce", &e)),
                }
            };
            pending.push(delivery);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka_error("delivery", &e)),
                Err(_) => return Err(SinkError::Transient("Kafka delivery was cancelled".into())),
            }
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.target.topic, WATERMARK_PARTITION, Offset::Offset(last as i64))
            .map_err(|e| kafka_error("watermark", &e))?;
        if let Some(mut elem) = offsets.find_partition(&self.target.topic, WATERMARK_PARTITION) {
            elem.set_metadata(watermark_metadata(last));
        }
        let (producer, group, timeout) = (session.producer.clone(), session.group.clone(), self.op_timeout());
        blocking(move || {
            producer.send_offsets_to_transaction(&offsets, &group, timeout)?;
            producer.commit_transaction(timeout)
        })
        .await?
        .map_err(|e| kafka_error("commit_transaction", &e))?;
        session.watermark = last;
        debug!(sink = %self.name, last, "kafka transaction committed");
        Ok(())
    }

    async fn topic_metadata(
        &self,
        consumer: Arc<BaseConsumer<SinkContext>>,
        timeout: Duration,
    ) -> Result<(), SinkError> {
        let topic = self.target.topic.clone();
        let c = consumer.clone();
        let metadata = blocking(move || {
            c.fetch_metadata(Some(&topic), timeout).inspect_err(|_| {
                // librdkafka reports why a connection failed (SASL, TLS) only in its log, which
                // is queued on the client's main queue: serve it so the context sees it.
                let _ = c.poll(Duration::from_millis(300));
            })
        })
        .await?
        .map_err(|e| consumer.context().explain(kafka_error("metadata", &e)))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.target.topic)
            .ok_or_else(|| SinkError::Misconfigured(format!("topic {} not found", self.target.topic)))?;
        if let Some(err) = topic.error() {
            let code = rdkafka::types::RDKafkaErrorCode::from(err);
            return Err(if code == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                SinkError::Misconfigured(format!("topic {} does not exist", self.target.topic))
            } else {
                SinkError::Transient(format!("topic {}: {code}", self.target.topic))
            });
        }
        if topic.partitions().is_empty() {
            return Err(SinkError::Misconfigured(format!(
                "topic {} has no partitions",
                self.target.topic
            )));
        }
        Ok(())
    }

    fn probe_consumer(&self) -> Result<Arc<BaseConsumer<SinkContext>>, SinkError> {
        let consumer: BaseConsumer<SinkContext> = self
            .base
            .create_with_context(SinkContext::default())
            .map_err(|e| SinkError::Misconfigured(format!("kafka settings: {e}")))?;
        Ok(Arc::new(consumer))
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "kafka"
    }

    /// The brokers answer and the topic exists (the sink never creates topics: their
    /// partitions, replication and retention are the archive owner's decision).
    async fn start(&self) -> Result<(), SinkError> {
        self.topic_metadata(self.probe_consumer()?, self.op_timeout()).await
    }

    async fn health(&self) -> Result<(), SinkError> {
        let consumer = match self.session.try_lock() {
            Ok(guard) => guard.as_ref().map(|s| s.consumer.clone()),
            Err(_) => None,
        };
        let consumer = match consumer {
            Some(c) => c,
            None => self.probe_consumer()?,
        };
        self.topic_metadata(consumer, Duration::from_secs(5)).await
    }

    #[instrument(name = "kafka_deliver", skip_all, fields(sink = %self.name, records = batch.len()))]
    async fn deliver(&self, batch: &[SpooledRecord], _attachments: &dyn AttachmentStore) -> Result<(), SinkError> {
        let Some(first) = batch.first() else { return Ok(()) };
        let device = device_id(first.record()?);
        if batch
            .iter()
            .map(|r| r.record().map(device_id))
            .any(|d| d.is_ok_and(|d| d != device))
        {
            return Err(SinkError::Permanent(
                "a Kafka batch must hold one device's records".into(),
            ));
        }
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| s.device != device) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.open_session(&device).await?);
        }
        let session = guard.as_mut().expect("session just opened");
        let result = self.deliver_in(session, batch).await;
        let result = result.map_err(|e| session.producer_context.explain(e));
        if result.is_err() {
            // Drop the producer: the next attempt fences and aborts whatever is left of this
            // transaction and re-reads the watermark.
            if let Some(session) = guard.take() {
                let producer = session.producer;
                let timeout = Duration::from_secs(5);
                let _ = blocking(move || producer.abort_transaction(timeout)).await;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_round_trips_and_ignores_foreign_metadata() {
        assert_eq!(parse_watermark(&watermark_metadata(42)), 42);
        assert_eq!(parse_watermark(""), 0);
        assert_eq!(parse_watermark("something else"), 0);
    }

    #[test]
    fn ids_are_sanitised() {
        assert_eq!(id_part("compliance/dev a"), "compliance_dev_a");
    }

    #[test]
    fn sasl_without_tls_is_refused_and_credentials_are_required() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("username"), "u").unwrap();
        std::fs::write(dir.path().join("password"), "p").unwrap();
        let mut target = KafkaTarget {
            brokers: vec!["127.0.0.1:9092".into()],
            topic: "archive".into(),
            tls: false,
            ca_file: None,
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            credentials_dir: Some(dir.path().to_owned()),
            delivery_timeout_seconds: 30,
        };
        assert!(matches!(KafkaSink::new("k", &target), Err(SinkError::Misconfigured(_))));
        target.tls = true;
        assert!(KafkaSink::new("k", &target).is_ok());
        target.credentials_dir = None;
        assert!(matches!(KafkaSink::new("k", &target), Err(SinkError::Misconfigured(_))));
    }
}
