//! The capture loop: poll the source, seal what is new into the spool, pause when the spool
//! is full, compact what every sink has. Runs on its own thread (SQLite and the reader are
//! blocking); woken early by file notifications and sink acknowledgements.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::metrics::{AgentMetrics, apple_now_ns, unix_now_s};
use super::spool::{ChainHead, Spool, SpoolError};
use super::status::AgentStatus;
use crate::agent::backoff::Backoff;
use crate::agent::source::{Draft, RecordSource, SourceError};

/// A chat.db that cannot be used (not a Messages database, corrupt) is logged again this often
/// while it stays so.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// The readiness reason of a failed poll (`/readyz` shows it as `not capturing (…)`); no path,
/// no content.
pub fn poll_failure(error: &SourceError) -> String {
    match error {
        SourceError::NotYet { reason, .. } => format!("waiting for Messages: {reason}"),
        SourceError::Open { reason, .. } => format!("chat.db cannot be used: {reason}"),
        SourceError::Query { .. } => "chat.db unreadable".to_owned(),
    }
}

/// After a file notification whose poll found nothing, look again after these delays before
/// falling back to the poll interval. A notification can precede the change it announces:
/// SQLite writes a transaction's frames to the WAL (each write is a file event) and only then
/// makes it visible by updating the WAL index, a shared-memory write that produces no event.
/// With `synchronous=FULL` the WAL is fsync'd between the two, so a poll woken by the last
/// frame's write can run before the commit is visible and, without a second look, the change
/// would wait a whole poll interval. The delays cost nothing while no notifications arrive.
pub const SETTLE_DELAYS: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// How long an idle loop waits before polling again: the next settle delay while settling
/// after a notification (`settle` is the index of the next one), else the poll interval.
pub fn idle_wait(settle: Option<usize>, poll_interval: Duration) -> Duration {
    settle
        .and_then(|step| SETTLE_DELAYS.get(step).copied())
        .map_or(poll_interval, |delay| delay.min(poll_interval))
}

/// The settle state after an idle wait: a file notification (re)starts settling, a wait that
/// ended otherwise moves to the next delay, and settling ends after the last one.
pub fn settle_after_wait(settle: Option<usize>, source_changed: bool) -> Option<usize> {
    if source_changed {
        return Some(0);
    }
    settle.map(|step| step + 1).filter(|step| *step < SETTLE_DELAYS.len())
}

/// Why the capture loop wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// chat.db or its WAL changed.
    SourceChanged,
    /// A sink acknowledged records (compaction may free space).
    Acknowledged,
    /// Stop reading.
    Stop,
}

/// Capture loop settings.
#[derive(Clone, Debug)]
pub struct CaptureSettings {
    /// Poll at least this often.
    pub poll_interval: Duration,
    /// Drafts per poll (and per durable commit).
    pub batch_limit: usize,
    /// Reading pauses while the spool uses this much disk.
    pub spool_max_bytes: u64,
    /// Compact once this many records are delivered everywhere (or whenever the spool is
    /// above half its bound).
    pub compact_threshold: u64,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            poll_interval: Duration::from_millis(1000),
            batch_limit: 1000,
            spool_max_bytes: 2 << 30,
            compact_threshold: 20_000,
        }
    }
}

/// The capture loop and what it owns.
pub struct CaptureLoop {
    /// The spool (writer).
    pub spool: Spool,
    /// The reader.
    pub source: Box<dyn RecordSource>,
    /// Settings.
    pub settings: CaptureSettings,
    /// Metrics.
    pub metrics: AgentMetrics,
    /// Shared status.
    pub status: AgentStatus,
    /// Publishes the chain head to the delivery tasks.
    pub head_tx: watch::Sender<ChainHead>,
    /// Wake-ups.
    pub wake: Receiver<Wake>,
}

/// How the loop ended.
#[derive(Debug)]
pub struct CaptureEnd {
    /// The final chain head.
    pub head: ChainHead,
    /// A fatal error, if the loop stopped because of one.
    pub error: Option<SpoolError>,
}

impl CaptureLoop {
    /// Run until told to stop. Drafts a poll returned are kept in memory until they are
    /// durable: a failed commit is retried (with backoff) before anything new is read, so
    /// the reader never gets ahead of the spool.
    pub fn run(mut self) -> CaptureEnd {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        };
        let mut unsaved: Option<Vec<Draft>> = None;
        let mut commit_failures = 0u32;
        let mut last_event_ns: Option<i64> = None;
        let mut last_used_check = Instant::now() - Duration::from_secs(3600);
        let mut used = 0u64;
        // The last poll failure's readiness reason, and when a loud one was last logged.
        let mut last_failure: Option<String> = None;
        let mut last_failure_log: Option<Instant> = None;
        // Looking again soon after a notification (see SETTLE_DELAYS).
        let mut settle: Option<usize> = None;
        self.metrics.spool_max_bytes.set(self.settings.spool_max_bytes as i64);
        self.metrics.chain_sequence.set(self.spool.head().seq as i64);
        loop {
            // Compact what every sink has, and measure the spool.
            let over_half = used >= self.settings.spool_max_bytes / 2;
            if let Err(error) = self.compact(over_half) {
                tracing::error!(%error, "spool compaction failed");
            }
            if last_used_check.elapsed() > Duration::from_secs(1) {
                match self.spool.used_bytes() {
                    Ok(bytes) => self.metrics.spool_bytes.set(bytes as i64),
                    Err(error) => tracing::error!(%error, "cannot measure the spool"),
                }
                last_used_check = Instant::now();
            }
            used = self.spool.backlog_bytes();
            self.metrics.spool_backlog_bytes.set(used as i64);
            if let Some(ns) = last_event_ns {
                self.metrics.lag_seconds.set((apple_now_ns() - ns) as f64 / 1e9);
            }

            // Back-pressure: never read more than the spool can hold; never drop.
            if unsaved.is_none() && used >= self.settings.spool_max_bytes {
                if self.metrics.spool_full.get() == 0 {
                    tracing::error!(
                        used_bytes = used,
                        max_bytes = self.settings.spool_max_bytes,
                        "spool full: reading paused until sinks catch up"
                    );
                }
                self.metrics.spool_full.set(1);
                self.status.set_not_capturing("spool full");
                if self.wait(Duration::from_millis(500)) {
                    break;
                }
                continue;
            }
            if self.metrics.spool_full.get() == 1 {
                tracing::info!(used_bytes = used, "spool below its bound again: reading resumes");
                self.metrics.spool_full.set(0);
            }

            // Read (unless a batch is still waiting to become durable).
            if self.stop_requested() {
                break;
            }
            let poll_started = Instant::now();
            let mut drafts = match unsaved.take() {
                Some(drafts) => drafts,
                None => match self.source.poll(&self.spool, self.settings.batch_limit) {
                    Ok(drafts) => {
                        if last_failure.take().is_some() {
                            tracing::info!("chat.db readable; capturing");
                        }
                        self.metrics.last_poll.set(unix_now_s());
                        self.status.set_capturing();
                        drafts
                    }
                    Err(error) => {
                        let reason = poll_failure(&error);
                        let repeat = last_failure_log.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY);
                        let changed = last_failure.as_deref() != Some(reason.as_str());
                        match &error {
                            // A device that has just booted: expected, said once.
                            SourceError::NotYet { .. } => {
                                if changed {
                                    tracing::info!(%error, "waiting for Messages to create chat.db; polling");
                                }
                            }
                            SourceError::Open { .. } => {
                                self.metrics.poll_errors.inc();
                                if changed || repeat {
                                    tracing::error!(%error, "chat.db cannot be used; retrying (nothing is captured meanwhile)");
                                    last_failure_log = Some(Instant::now());
                                }
                            }
                            SourceError::Query { .. } => {
                                self.metrics.poll_errors.inc();
                                tracing::warn!(%error, "chat.db poll failed; retrying");
                            }
                        }
                        self.status.set_not_capturing(&reason);
                        last_failure = Some(reason);
                        if self.wait(self.settings.poll_interval) {
                            break;
                        }
                        continue;
                    }
                },
            };
            let read = drafts.len();
            let full_page = read >= self.settings.batch_limit;
            if read == 0 {
                self.status.set_idle(self.spool.head().seq);
                let (stop, source_changed) = self.wait_noting_source(idle_wait(settle, self.settings.poll_interval));
                if stop {
                    break;
                }
                settle = settle_after_wait(settle, source_changed);
                continue;
            }
            // The change was visible: no second look needed.
            settle = None;

            // Make them durable.
            let poll_ms = poll_started.elapsed().as_millis() as u64;
            let commit_started = Instant::now();
            let span = tracing::info_span!("commit", drafts = read);
            let _enter = span.enter();
            match self.spool.append(&mut drafts) {
                Ok(outcome) => {
                    commit_failures = 0;
                    self.metrics.duplicates.inc_by(outcome.duplicates as u64);
                    self.metrics
                        .attachment_failures
                        .inc_by(outcome.attachment_failures as u64);
                    for appended in &outcome.appended {
                        self.metrics.captured.with_label_values(&[appended.kind.as_str()]).inc();
                        self.metrics.decode_errors.inc_by(appended.decode_errors as u64);
                        last_event_ns = Some(appended.event_apple_ns);
                    }
                    let head = self.spool.head().clone();
                    self.metrics.chain_sequence.set(head.seq as i64);
                    if full_page || !outcome.appended.is_empty() {
                        self.status.set_busy();
                    } else {
                        self.status.set_idle(head.seq);
                    }
                    if !outcome.appended.is_empty() {
                        tracing::debug!(
                            appended = outcome.appended.len(),
                            head = head.seq,
                            poll_ms,
                            commit_ms = commit_started.elapsed().as_millis() as u64,
                            "records committed"
                        );
                        self.head_tx.send_replace(head);
                    }
                    if !full_page && outcome.appended.is_empty() && self.wait(self.settings.poll_interval) {
                        break;
                    }
                }
                Err(error) => {
                    let delay = backoff.delay(commit_failures);
                    commit_failures = commit_failures.saturating_add(1);
                    tracing::error!(%error, retry_in_ms = delay.as_millis() as u64, "spool commit failed; the batch is kept and retried");
                    self.status.set_not_capturing("spool commit failing");
                    unsaved = Some(drafts);
                    if self.wait(delay) {
                        // Stopping with an unsaved batch: the reader re-reads it after a
                        // restart, because nothing of it is in the spool.
                        break;
                    }
                }
            }
        }
        self.status.set_not_capturing("stopped");
        CaptureEnd {
            head: self.spool.head().clone(),
            error: None,
        }
    }

    fn compact(&mut self, pressed: bool) -> Result<(), SpoolError> {
        let cursors = self.spool.cursors()?;
        let Some(floor) = cursors.values().copied().min() else {
            return Ok(());
        };
        let deliverable = floor.saturating_sub(self.spool.compacted_through());
        if deliverable >= self.settings.compact_threshold || (pressed && deliverable > 0) {
            let removed = self.spool.compact(50_000)?;
            tracing::debug!(removed, through = self.spool.compacted_through(), "spool compacted");
        }
        Ok(())
    }

    /// Whether a stop is pending (without waiting).
    fn stop_requested(&self) -> bool {
        let mut stop = false;
        loop {
            match self.wake.try_recv() {
                Ok(wake) => stop |= wake == Wake::Stop,
                Err(std::sync::mpsc::TryRecvError::Empty) => return stop,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Sleep until woken or `timeout`; true when told to stop.
    fn wait(&self, timeout: Duration) -> bool {
        self.wait_noting_source(timeout).0
    }

    /// [`Self::wait`], also saying whether a source-change notification was among the wake-ups.
    fn wait_noting_source(&self, timeout: Duration) -> (bool, bool) {
        let first = match self.wake.recv_timeout(timeout) {
            Ok(wake) => wake,
            Err(RecvTimeoutError::Timeout) => return (false, false),
            Err(RecvTimeoutError::Disconnected) => return (true, false),
        };
        let mut stop = first == Wake::Stop;
        let mut source_changed = first == Wake::SourceChanged;
        // Coalesce a burst of notifications into one poll.
        while let Ok(wake) = self.wake.try_recv() {
            stop |= wake == Wake::Stop;
            source_changed |= wake == Wake::SourceChanged;
        }
        (stop, source_changed)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;
    use crate::agent::seal::tests::sample_record;
    use crate::agent::source::ArchiveIndex;

    #[test]
    fn settling_follows_a_notification_then_falls_back_to_the_poll_interval() {
        let interval = Duration::from_secs(1);
        assert_eq!(idle_wait(None, interval), interval);
        let mut settle = settle_after_wait(None, true);
        let mut waits = Vec::new();
        while settle.is_some() {
            waits.push(idle_wait(settle, interval));
            settle = settle_after_wait(settle, false);
        }
        assert_eq!(waits, SETTLE_DELAYS.to_vec());
        assert_eq!(idle_wait(settle, interval), interval, "back to the interval");
        // A new notification while settling starts again; a short interval caps the delays.
        assert_eq!(settle_after_wait(Some(2), true), Some(0));
        assert_eq!(
            idle_wait(Some(2), Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        // A wait that did not end with a notification does not start settling.
        assert_eq!(settle_after_wait(None, false), None);
    }

    /// Test double of the reader whose change becomes visible one poll after its notification
    /// (as a SQLite commit does after its last WAL write): polls 1 and 2 find nothing, poll 3
    /// returns the draft.
    struct LateCommitSourceDouble {
        polls: Arc<AtomicUsize>,
        draft: Option<Draft>,
    }

    impl RecordSource for LateCommitSourceDouble {
        fn poll(&mut self, _index: &dyn ArchiveIndex, _limit: usize) -> Result<Vec<Draft>, SourceError> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(if n >= 3 {
                self.draft.take().into_iter().collect()
            } else {
                vec![]
            })
        }

        fn watch_paths(&self) -> Vec<PathBuf> {
            vec![]
        }
    }

    #[test]
    fn a_notification_that_precedes_its_commit_is_followed_by_a_second_look() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path(), "dev-a").unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let (wake_tx, wake_rx) = mpsc::channel();
        let (head_tx, head_rx) = watch::channel(ChainHead::default());
        let capture = CaptureLoop {
            spool,
            source: Box::new(LateCommitSourceDouble {
                polls: Arc::clone(&polls),
                draft: Some(Draft {
                    record: sample_record("dev-a", "GUID-1", "0"),
                    files: vec![],
                }),
            }),
            // Only a second look after the notification can find the draft before the test
            // gives up: the timer would not poll again for an hour.
            settings: CaptureSettings {
                poll_interval: Duration::from_secs(3600),
                ..CaptureSettings::default()
            },
            metrics: AgentMetrics::new().unwrap(),
            status: AgentStatus::new(),
            head_tx,
            wake: wake_rx,
        };
        let thread = std::thread::spawn(move || capture.run());
        while polls.load(Ordering::SeqCst) < 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        wake_tx.send(Wake::SourceChanged).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while head_rx.borrow().seq == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        wake_tx.send(Wake::Stop).unwrap();
        let end = thread.join().unwrap();
        assert_eq!(end.head.seq, 1, "the draft was committed after the second look");
        assert!(polls.load(Ordering::SeqCst) >= 3);
    }
}
