//! Delivery: one task per sink, each with its own spool connection and cursor. Batches go
//! out in sequence order; a failed batch is retried with exponential backoff and full jitter
//! (capped) until the sink takes it; the cursor moves only after the sink acknowledged. A slow
//! or dead sink holds back nobody but itself: capture continues into the spool (until the
//! spool's bound), the other sinks continue from their own cursors.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::capture::Wake;
use super::metrics::{AgentMetrics, apple_now_ns};
use super::spool::{ChainHead, SpoolError, SpoolReader};
use super::status::SinkHealth;
use crate::sinks::{Sink, SinkError, SpooledRecord};

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// Records per batch.
    pub batch_records: usize,
    /// Bytes of JSON per batch (a batch holds at least one record).
    pub batch_bytes: usize,
    /// Retry backoff.
    pub backoff: Backoff,
    /// Consecutive transient failures before the sink counts as unhealthy.
    pub unhealthy_after: u32,
    /// How often an idle sink's `health()` is probed.
    pub probe_interval: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            batch_records: 2000,
            batch_bytes: 2 << 20,
            backoff: Backoff::default(),
            unhealthy_after: 3,
            probe_interval: Duration::from_secs(10),
        }
    }
}

/// One sink's delivery task.
pub struct SinkDelivery {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// Its reader of the spool.
    pub reader: Arc<Mutex<SpoolReader>>,
    /// The chain head, as the capture loop commits.
    pub head: watch::Receiver<ChainHead>,
    /// Metrics.
    pub metrics: AgentMetrics,
    /// This sink's health.
    pub health: Arc<SinkHealth>,
    /// Settings.
    pub settings: DeliverySettings,
    /// Wakes the capture loop after an acknowledgement (compaction, back-pressure).
    pub wake_capture: Sender<Wake>,
    /// Cancelled when capture has stopped: finish once caught up with the head.
    pub drain: CancellationToken,
    /// Cancelled when delivery must stop at once (drain timeout).
    pub abort: CancellationToken,
    /// Events at or after this Apple-epoch time count as live for the latency histogram.
    pub live_since_apple_ns: i64,
}

/// Blocking spool calls run off the async threads.
async fn with_reader<T: Send + 'static>(
    reader: &Arc<Mutex<SpoolReader>>,
    f: impl FnOnce(&mut SpoolReader) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    let reader = Arc::clone(reader);
    tokio::task::spawn_blocking(move || {
        let mut guard = reader.blocking_lock();
        f(&mut guard)
    })
    .await
    .expect("spool task does not panic")
}

/// What ended a caught-up delivery task's wait.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    /// The capture loop committed more.
    Head,
    /// Capture stopped: deliver what is left, then finish.
    Drain,
    /// Stop at once.
    Abort,
    /// Time to probe an idle sink's health.
    Probe,
}

/// A caught-up delivery task waiting for something to do.
#[derive(Default)]
struct Waiting {
    /// The capture loop has ended (its head sender is gone): no head will come any more, and
    /// waiting on the closed channel would return at once, again and again.
    capture_ended: bool,
}

impl Waiting {
    async fn next(
        &mut self,
        head: &mut watch::Receiver<ChainHead>,
        drain: &CancellationToken,
        abort: &CancellationToken,
        probe_every: Duration,
    ) -> Woken {
        tokio::select! {
            changed = head.changed(), if !self.capture_ended => match changed {
                Ok(()) => Woken::Head,
                Err(_) => {
                    self.capture_ended = true;
                    // Only the drain, an abort or the probe can end the wait from now on.
                    tokio::select! {
                        _ = drain.cancelled() => Woken::Drain,
                        _ = abort.cancelled() => Woken::Abort,
                        _ = tokio::time::sleep(probe_every) => Woken::Probe,
                    }
                }
            },
            _ = drain.cancelled() => Woken::Drain,
            _ = abort.cancelled() => Woken::Abort,
            _ = tokio::time::sleep(probe_every) => Woken::Probe,
        }
    }
}

/// How often, at most, a busy sink is asked how many acknowledged records it still holds in
/// its own journal ([`Sink::buffered`]); an idle sink is asked at each health probe.
const BUFFERED_REFRESH: Duration = Duration::from_secs(2);

impl SinkDelivery {
    /// Run until drained (caught up after capture stopped) or aborted. Returns the last
    /// acknowledged sequence number.
    pub async fn run(mut self) -> u64 {
        let name = self.sink.name().to_owned();
        self.start(&name).await;
        let mut cursor = loop {
            let sink = name.clone();
            match with_reader(&self.reader, move |r| r.cursor(&sink)).await {
                Ok(cursor) => break cursor.unwrap_or(0),
                Err(error) => {
                    tracing::error!(sink = %name, %error, "cannot read the sink's cursor");
                    if self.sleep(Duration::from_secs(1)).await {
                        return 0;
                    }
                }
            }
        };
        self.metrics.cursor.with_label_values(&[&name]).set(cursor as i64);
        let pending = self.metrics.pending.with_label_values(&[&name]);
        let mut failures = 0u32;
        // Records acknowledged but still in the sink's own journal count as pending too.
        let mut buffered = self.buffered(&name).await.unwrap_or(0);
        let mut buffered_at = Instant::now();
        let mut waiting = Waiting::default();
        loop {
            let head = self.head.borrow_and_update().seq;
            if cursor >= head && buffered_at.elapsed() >= BUFFERED_REFRESH {
                buffered = self.buffered(&name).await.unwrap_or(buffered);
                buffered_at = Instant::now();
            }
            pending.set(head.saturating_sub(cursor).saturating_add(buffered) as i64);
            if cursor >= head {
                if self.drain.is_cancelled() {
                    return cursor;
                }
                match waiting
                    .next(&mut self.head, &self.drain, &self.abort, self.settings.probe_interval)
                    .await
                {
                    Woken::Head | Woken::Drain => {}
                    Woken::Abort => return cursor,
                    Woken::Probe => {
                        self.probe(&name).await;
                        buffered = self.buffered(&name).await.unwrap_or(buffered);
                        buffered_at = Instant::now();
                    }
                }
                continue;
            }
            let (max_records, max_bytes) = (self.settings.batch_records, self.settings.batch_bytes);
            let batch = match with_reader(&self.reader, move |r| r.read_after(cursor, max_records, max_bytes)).await {
                Ok(batch) if !batch.is_empty() => batch,
                Ok(_) => {
                    // Head says more, the spool says none yet: the commit is not visible yet.
                    if self.sleep(Duration::from_millis(10)).await {
                        return cursor;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(sink = %name, %error, "cannot read the spool for delivery");
                    self.health
                        .set_unhealthy("spool unreadable", matches!(error, SpoolError::Missing { .. }));
                    if self.sleep(self.settings.backoff.delay(failures)).await {
                        return cursor;
                    }
                    failures = failures.saturating_add(1);
                    continue;
                }
            };
            let last = batch.records.last().map_or(cursor, |r| r.seq);
            let result = tokio::select! {
                result = self.sink.deliver(&batch.records, &batch) => result,
                _ = self.abort.cancelled() => return cursor,
            };
            match result {
                Ok(()) => {
                    failures = 0;
                    let sink = name.clone();
                    let acked = loop {
                        let sink = sink.clone();
                        match with_reader(&self.reader, move |r| r.ack(&sink, last)).await {
                            Ok(()) => break true,
                            Err(error) => {
                                tracing::error!(sink = %name, %error, "cannot store the sink's cursor; retrying");
                                if self.sleep(Duration::from_millis(500)).await {
                                    break false;
                                }
                            }
                        }
                    };
                    if !acked {
                        return cursor;
                    }
                    self.observe_ack(&name, &batch.records);
                    cursor = last;
                    if buffered_at.elapsed() >= BUFFERED_REFRESH {
                        buffered = self.buffered(&name).await.unwrap_or(buffered);
                        buffered_at = Instant::now();
                    }
                    self.health.set_healthy();
                    self.metrics.sink_healthy.with_label_values(&[&name]).set(1);
                    let _ = self.wake_capture.send(Wake::Acknowledged);
                }
                Err(error) => {
                    self.metrics
                        .delivery_errors
                        .with_label_values(&[&name, error.class()])
                        .inc();
                    let delay = self.settings.backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    self.report_failure(
                        &name,
                        &error,
                        failures,
                        delay,
                        batch.records.first().map_or(0, |r| r.seq),
                    );
                    if self.sleep(delay).await {
                        return cursor;
                    }
                }
            }
        }
    }

    /// `start()` the sink, retrying with backoff until it works (capture continues into the
    /// spool meanwhile).
    async fn start(&self, name: &str) {
        let mut attempt = 0u32;
        loop {
            match self.sink.start().await {
                Ok(()) => {
                    self.health.set_healthy();
                    self.metrics.sink_healthy.with_label_values(&[name]).set(1);
                    tracing::info!(sink = %name, "sink started");
                    return;
                }
                Err(error) => {
                    self.metrics
                        .delivery_errors
                        .with_label_values(&[name, error.class()])
                        .inc();
                    let delay = self.settings.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    self.report_failure(name, &error, attempt.max(self.settings.unhealthy_after), delay, 0);
                    if self.sleep(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// How many acknowledged records the sink still holds in its own journal (None, logged,
    /// when it cannot say).
    async fn buffered(&self, name: &str) -> Option<u64> {
        match self.sink.buffered().await {
            Ok(n) => Some(n),
            Err(error) => {
                tracing::warn!(sink = %name, %error, "cannot count the records the sink still buffers");
                None
            }
        }
    }

    async fn probe(&self, name: &str) {
        match self.sink.health().await {
            Ok(()) => {
                if !self.health.failed_permanently() {
                    self.health.set_healthy();
                    self.metrics.sink_healthy.with_label_values(&[name]).set(1);
                }
            }
            Err(error) => {
                self.health.set_unhealthy(error.class(), false);
                self.metrics.sink_healthy.with_label_values(&[name]).set(0);
                tracing::warn!(sink = %name, %error, "sink health probe failed");
            }
        }
    }

    fn report_failure(&self, name: &str, error: &SinkError, failures: u32, delay: Duration, first_seq: u64) {
        let permanent = !matches!(error, SinkError::Transient(_));
        if permanent {
            // Loud: the records stay in the spool, but someone must act.
            tracing::error!(
                sink = %name, class = error.class(), %error, first_seq, retry_in_ms = delay.as_millis() as u64,
                "sink refused records; they stay in the spool and are retried"
            );
        } else {
            tracing::warn!(
                sink = %name, class = error.class(), %error, failures, retry_in_ms = delay.as_millis() as u64,
                "delivery failed; retrying"
            );
        }
        if permanent || failures >= self.settings.unhealthy_after {
            self.health.set_unhealthy(error.class(), permanent);
            self.metrics.sink_healthy.with_label_values(&[name]).set(0);
        }
    }

    fn observe_ack(&self, name: &str, batch: &[SpooledRecord]) {
        self.metrics
            .delivered
            .with_label_values(&[name])
            .inc_by(batch.len() as u64);
        self.metrics
            .cursor
            .with_label_values(&[name])
            .set(batch.last().map_or(0, |r| r.seq) as i64);
        let now = apple_now_ns();
        let histogram = self.metrics.commit_to_ack.with_label_values(&[name]);
        for record in batch {
            let event = record.meta.event_time_apple_ns;
            if event >= self.live_since_apple_ns && event <= now {
                histogram.observe((now - event) as f64 / 1e9);
            }
        }
    }

    /// Sleep, unless aborted (true) first.
    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => false,
            _ = self.abort.cancelled() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn once_the_capture_loop_is_gone_a_caught_up_task_waits_for_the_drain_instead_of_spinning() {
        let (tx, mut head) = watch::channel(ChainHead::default());
        let (drain, abort) = (CancellationToken::new(), CancellationToken::new());
        let mut waiting = Waiting::default();
        let probe = Duration::from_secs(3600);
        tx.send_replace(ChainHead {
            seq: 1,
            hash: "h".into(),
        });
        assert_eq!(waiting.next(&mut head, &drain, &abort, probe).await, Woken::Head);
        drop(tx);
        // The closed channel must not end the wait: before the fix it did, at once, every time.
        let early = tokio::time::timeout(
            Duration::from_millis(100),
            waiting.next(&mut head, &drain, &abort, probe),
        )
        .await;
        assert!(early.is_err(), "woke up without anything to do: {early:?}");
        let early = tokio::time::timeout(
            Duration::from_millis(100),
            waiting.next(&mut head, &drain, &abort, probe),
        )
        .await;
        assert!(early.is_err(), "woke up without anything to do: {early:?}");
        drain.cancel();
        assert_eq!(waiting.next(&mut head, &drain, &abort, probe).await, Woken::Drain);
    }
}
