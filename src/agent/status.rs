//! Shared state between the capture loop, the delivery tasks and readiness: whether capture
//! runs, and each sink's health. `/readyz` is ready only while capturing and every sink is
//! healthy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::telemetry::Health;

/// One sink's health as the delivery task last saw it.
#[derive(Debug, Default)]
pub struct SinkHealth {
    healthy: AtomicBool,
    /// The sink failed with `Permanent` or `Misconfigured` and has not succeeded since.
    failed_permanently: AtomicBool,
    /// Why unhealthy: the error class only (sink error texts go to the logs).
    reason: Mutex<String>,
}

impl SinkHealth {
    /// Mark healthy.
    pub fn set_healthy(&self) {
        self.healthy.store(true, Ordering::SeqCst);
        self.failed_permanently.store(false, Ordering::SeqCst);
    }

    /// Mark unhealthy with a short reason (`transient`, `permanent`, `misconfigured`, …).
    pub fn set_unhealthy(&self, reason: &str, permanent: bool) {
        self.healthy.store(false, Ordering::SeqCst);
        self.failed_permanently.store(permanent, Ordering::SeqCst);
        if let Ok(mut r) = self.reason.lock() {
            reason.clone_into(&mut r);
        }
    }

    /// Whether healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Whether the last failure was permanent (and nothing succeeded since).
    pub fn failed_permanently(&self) -> bool {
        self.failed_permanently.load(Ordering::SeqCst)
    }

    fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Capture and sink status, shared by every task.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    capturing: AtomicBool,
    capture_reason: Mutex<String>,
    /// Set when a poll found nothing new to read; cleared when records are appended.
    idle: AtomicBool,
    /// Head sequence at the moment `idle` was set.
    idle_head: AtomicU64,
    sinks: Mutex<BTreeMap<String, Arc<SinkHealth>>>,
}

impl AgentStatus {
    /// A fresh status: not capturing yet.
    pub fn new() -> Self {
        let status = AgentStatus::default();
        status.set_not_capturing("starting");
        status
    }

    /// The health of sink `name` (created on first use, unhealthy until it starts).
    pub fn sink(&self, name: &str) -> Arc<SinkHealth> {
        let mut sinks = self.inner.sinks.lock().unwrap_or_else(|p| p.into_inner());
        let health = sinks.entry(name.to_owned()).or_default();
        if !health.is_healthy() && health.reason().is_empty() {
            health.set_unhealthy("starting", false);
        }
        Arc::clone(health)
    }

    /// Capture is running.
    pub fn set_capturing(&self) {
        self.inner.capturing.store(true, Ordering::SeqCst);
    }

    /// Capture is paused or stopped, and why.
    pub fn set_not_capturing(&self, reason: &str) {
        self.inner.capturing.store(false, Ordering::SeqCst);
        if let Ok(mut r) = self.inner.capture_reason.lock() {
            reason.clone_into(&mut r);
        }
    }

    /// Record that a poll found nothing new while the chain head was `head`.
    pub fn set_idle(&self, head: u64) {
        self.inner.idle_head.store(head, Ordering::SeqCst);
        self.inner.idle.store(true, Ordering::SeqCst);
    }

    /// Record that new records were appended.
    pub fn set_busy(&self) {
        self.inner.idle.store(false, Ordering::SeqCst);
    }

    /// The chain head at the last idle poll, if the last poll was idle.
    pub fn idle_head(&self) -> Option<u64> {
        self.inner
            .idle
            .load(Ordering::SeqCst)
            .then(|| self.inner.idle_head.load(Ordering::SeqCst))
    }

    /// Names of the sinks that failed permanently.
    pub fn permanently_failed_sinks(&self) -> Vec<String> {
        let sinks = self.inner.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks
            .iter()
            .filter(|(_, h)| h.failed_permanently())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Push the current state into `/readyz`: ready while capturing and every sink healthy.
    pub fn publish(&self, health: &Health) {
        let mut reasons = Vec::new();
        if !self.inner.capturing.load(Ordering::SeqCst) {
            let reason = self.inner.capture_reason.lock().map(|r| r.clone()).unwrap_or_default();
            reasons.push(format!("not capturing ({reason})"));
        }
        let sinks = self.inner.sinks.lock().unwrap_or_else(|p| p.into_inner());
        for (name, sink) in sinks.iter() {
            if !sink.is_healthy() {
                reasons.push(format!("sink {name} unhealthy ({})", sink.reason()));
            }
        }
        if reasons.is_empty() {
            health.set_ready();
        } else {
            health.set_not_ready(reasons.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_capturing_and_every_sink_healthy() {
        let status = AgentStatus::new();
        let health = Health::new();
        let a = status.sink("a");
        let b = status.sink("b");
        status.publish(&health);
        assert!(!health.is_ready());
        status.set_capturing();
        a.set_healthy();
        status.publish(&health);
        assert_eq!(health.reason(), "sink b unhealthy (starting)");
        b.set_healthy();
        status.publish(&health);
        assert!(health.is_ready());
        b.set_unhealthy("permanent", true);
        status.publish(&health);
        assert!(!health.is_ready());
        assert_eq!(status.permanently_failed_sinks(), vec!["b".to_string()]);
        b.set_healthy();
        status.set_not_capturing("spool full");
        status.publish(&health);
        assert_eq!(health.reason(), "not capturing (spool full)");
    }
}
