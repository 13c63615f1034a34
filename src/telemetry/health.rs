//! Liveness and readiness state, shared between the work loops and the HTTP server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Liveness/readiness flags. `/livez` answers 200 while `live`; `/readyz` answers 200 while
/// `ready`, and otherwise 503 with the reason.
#[derive(Clone, Default, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default, Debug)]
struct Inner {
    live: AtomicBool,
    ready: AtomicBool,
    /// Why not ready, for the `/readyz` body.
    reason: Mutex<String>,
}

impl Health {
    /// Live, not yet ready ("starting").
    pub fn new() -> Self {
        let health = Health::default();
        health.inner.live.store(true, Ordering::SeqCst);
        health.set_not_ready("starting");
        health
    }

    /// Mark ready.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::SeqCst);
        self.inner.reason.lock().map(|mut r| r.clear()).ok();
    }

    /// Mark ready, with a note shown by `/readyz` (e.g. a standby replica).
    pub fn set_ready_with(&self, note: impl Into<String>) {
        self.inner.ready.store(true, Ordering::SeqCst);
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = note.into();
        }
    }

    /// Mark not ready, with a reason shown by `/readyz`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.inner.ready.store(false, Ordering::SeqCst);
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = reason.into();
        }
    }

    /// Mark dead: `/livez` fails so the kubelet restarts the container.
    pub fn set_dead(&self) {
        self.inner.live.store(false, Ordering::SeqCst);
    }

    /// Whether live.
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// Whether ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Why not ready (empty when ready).
    pub fn reason(&self) -> String {
        self.inner.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_live_but_not_ready_and_reports_reason() {
        let h = Health::new();
        assert!(h.is_live());
        assert!(!h.is_ready());
        assert_eq!(h.reason(), "starting");
        h.set_ready();
        assert!(h.is_ready());
        assert_eq!(h.reason(), "");
        h.set_not_ready("sink s3 failing");
        assert_eq!(h.reason(), "sink s3 failing");
        h.set_dead();
        assert!(!h.is_live());
    }
}
