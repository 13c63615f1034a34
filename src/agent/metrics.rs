//! The agent's Prometheus metrics, all prefixed `capture_`, registered on a per-process
//! [`Registry`] that `/metrics` serves.
//!
//! Labels are limited to a record kind, a sink name (from the agent configuration) and an
//! error class: never message text, phone numbers or e-mail addresses.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric of the agent.
#[derive(Clone)]
pub struct AgentMetrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// `capture_records_captured_total{kind}`: records sealed into the chain.
    pub captured: IntCounterVec,
    /// `capture_duplicates_dropped_total`: drafts dropped because their key was chained.
    pub duplicates: IntCounter,
    /// `capture_decode_errors_total`: undecodable fields archived with their raw bytes.
    pub decode_errors: IntCounter,
    /// `capture_attachment_failures_total`: attachment files that could not be captured.
    pub attachment_failures: IntCounter,
    /// `capture_poll_errors_total`: failed chat.db polls.
    pub poll_errors: IntCounter,
    /// `capture_chain_sequence`: sequence number of the chain head.
    pub chain_sequence: IntGauge,
    /// `capture_records_delivered_total{sink}`.
    pub delivered: IntCounterVec,
    /// `capture_records_pending{sink}`: records in the spool the sink has not acknowledged.
    pub pending: IntGaugeVec,
    /// `capture_sink_cursor{sink}`: last sequence number the sink acknowledged.
    pub cursor: IntGaugeVec,
    /// `capture_delivery_errors_total{sink,class}`.
    pub delivery_errors: IntCounterVec,
    /// `capture_sink_healthy{sink}`: 1 healthy, 0 not.
    pub sink_healthy: IntGaugeVec,
    /// `capture_lag_seconds`: now minus the event time of the last captured record.
    pub lag_seconds: Gauge,
    /// `capture_commit_to_ack_seconds{sink}`: from the event's time in chat.db (its commit)
    /// to the sink's acknowledgement, for events that happened while the agent ran (backfill
    /// is excluded so it does not swamp the live figure).
    pub commit_to_ack: HistogramVec,
    /// `capture_spool_bytes`: disk used by the spool.
    pub spool_bytes: IntGauge,
    /// `capture_spool_backlog_bytes`: record bodies and attachment files awaiting delivery
    /// (what `spool_max_bytes` bounds).
    pub spool_backlog_bytes: IntGauge,
    /// `capture_spool_max_bytes`: the configured bound.
    pub spool_max_bytes: IntGauge,
    /// `capture_spool_full`: 1 while reading is paused because the spool is full (alarm).
    pub spool_full: IntGauge,
    /// `capture_last_poll_timestamp_seconds`: Unix time of the last successful poll.
    pub last_poll: Gauge,
}

impl AgentMetrics {
    /// Create and register every metric on a fresh registry (plus the process collector).
    pub fn new() -> prometheus::Result<AgentMetrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let m = IntCounter::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let m = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let gauge_vec = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let m = IntGaugeVec::new(Opts::new(name, help), &["sink"])?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let int_gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let m = IntGauge::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<Gauge> {
            let m = Gauge::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let commit_to_ack = HistogramVec::new(
            HistogramOpts::new(
                "capture_commit_to_ack_seconds",
                "Seconds from an event's commit in chat.db to the sink's acknowledgement (live events only)",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["sink"],
        )?;
        registry.register(Box::new(commit_to_ack.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(AgentMetrics {
            captured: counter_vec(
                "capture_records_captured_total",
                "Records sealed into the device's chain, by kind",
                &["kind"],
            )?,
            duplicates: counter(
                "capture_duplicates_dropped_total",
                "Drafts dropped because their idempotency key was already chained",
            )?,
            decode_errors: counter(
                "capture_decode_errors_total",
                "Undecodable fields archived with their raw bytes",
            )?,
            attachment_failures: counter(
                "capture_attachment_failures_total",
                "Attachment files that could not be captured (the record says so)",
            )?,
            poll_errors: counter("capture_poll_errors_total", "chat.db polls that failed")?,
            chain_sequence: int_gauge("capture_chain_sequence", "Sequence number of the chain head")?,
            delivered: counter_vec(
                "capture_records_delivered_total",
                "Records acknowledged by the sink",
                &["sink"],
            )?,
            pending: gauge_vec("capture_records_pending", "Records the sink has not acknowledged yet")?,
            cursor: gauge_vec("capture_sink_cursor", "Last sequence number the sink acknowledged")?,
            delivery_errors: counter_vec(
                "capture_delivery_errors_total",
                "Failed delivery attempts, by sink and error class",
                &["sink", "class"],
            )?,
            sink_healthy: gauge_vec("capture_sink_healthy", "1 when the sink is healthy")?,
            lag_seconds: gauge(
                "capture_lag_seconds",
                "Now minus the event time of the last captured record",
            )?,
            commit_to_ack,
            spool_bytes: int_gauge(
                "capture_spool_bytes",
                "Disk used by the spool (database pages and attachment files)",
            )?,
            spool_backlog_bytes: int_gauge(
                "capture_spool_backlog_bytes",
                "Record bodies and attachment files in the spool awaiting delivery (bounded by spool_max_bytes)",
            )?,
            spool_max_bytes: int_gauge("capture_spool_max_bytes", "Configured bound of the spool")?,
            spool_full: int_gauge(
                "capture_spool_full",
                "1 while reading is paused because the spool reached its bound",
            )?,
            last_poll: gauge(
                "capture_last_poll_timestamp_seconds",
                "Unix time of the last successful chat.db poll",
            )?,
            registry,
        })
    }
}

/// Nanoseconds since 2001-01-01T00:00:00Z now (the Apple epoch chat.db uses).
pub fn apple_now_ns() -> i64 {
    const APPLE_EPOCH_UNIX_S: i64 = 978_307_200;
    let now = jiff::Timestamp::now();
    now.as_nanosecond() as i64 - APPLE_EPOCH_UNIX_S * 1_000_000_000
}

/// Unix time now, in seconds.
pub fn unix_now_s() -> f64 {
    jiff::Timestamp::now().as_nanosecond() as f64 / 1e9
}
