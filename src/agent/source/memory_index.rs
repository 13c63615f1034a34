//! [`MemoryIndex`]: an in-memory [`ArchiveIndex`] fed with the drafts a consumer archived. Used
//! by the reader benchmark, `inspect`-style tools and tests; the agent's pipeline keeps the
//! same facts in its durable spool.

use std::collections::{HashMap, HashSet};

use super::{ArchiveIndex, Draft};
use crate::api::record::RecordKind;

/// What has been archived, in memory.
#[derive(Default, Debug)]
pub struct MemoryIndex {
    keys: HashSet<String>,
    max_rowid: HashMap<String, i64>,
    /// guid → (event time of its first record, latest key); removed on deletion.
    live: HashMap<String, (i64, String)>,
    records: u64,
}

impl MemoryIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one archived draft. Returns false (and changes nothing) when its key was
    /// already archived.
    pub fn archive(&mut self, draft: &Draft) -> bool {
        let r = &draft.record;
        if !self.keys.insert(r.idempotency_key.clone()) {
            return false;
        }
        self.records += 1;
        let max = self.max_rowid.entry(r.source.table.to_string()).or_insert(0);
        *max = (*max).max(r.source.rowid);
        if r.kind == RecordKind::DeletionDetected {
            self.live.remove(&r.source.guid);
        } else if r.source.table == "message" {
            let entry = self
                .live
                .entry(r.source.guid.clone())
                .or_insert((r.event_time_apple_ns, String::new()));
            entry.1 = r.idempotency_key.clone();
        }
        true
    }

    /// Records archived.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// Whether nothing is archived.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

impl ArchiveIndex for MemoryIndex {
    fn contains_key(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    fn live_guids_since(&self, since_apple_ns: i64) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .live
            .iter()
            .filter(|(_, (t, _))| *t >= since_apple_ns)
            .map(|(g, (_, k))| (g.clone(), k.clone()))
            .collect();
        out.sort();
        out
    }

    fn max_rowid(&self, table: &str) -> i64 {
        self.max_rowid.get(table).copied().unwrap_or(0)
    }
}
