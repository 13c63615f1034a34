//! What the spool derives from the records it chained, besides their keys: the highest source
//! ROWID per table (where the reader resumes) and the live GUIDs (which archived rows are
//! checked for deletion). Pure: applied to each record as it is committed or replayed, and
//! snapshotted into the checkpoint.

use std::collections::{BTreeMap, HashMap};

use super::checkpoint::{Checkpoint, LiveGuid};
use super::frame::SourceTable;
use crate::api::record::RecordKind;

/// The derived state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    rowids: BTreeMap<String, i64>,
    /// guid → (latest key, latest event time).
    live: HashMap<String, (String, i64)>,
}

/// What a record contributes.
pub struct Effect<'a> {
    /// Its kind.
    pub kind: RecordKind,
    /// `source.table`.
    pub table: SourceTable,
    /// `source.rowid`.
    pub rowid: i64,
    /// `source.guid`.
    pub guid: &'a str,
    /// Its idempotency key.
    pub key: &'a str,
    /// Its event time.
    pub event_ns: i64,
}

impl Derived {
    /// The state a checkpoint recorded.
    pub fn from_checkpoint(cp: &Checkpoint) -> Self {
        Derived {
            rowids: cp.rowids.clone(),
            live: cp
                .live
                .iter()
                .map(|l| (l.guid.clone(), (l.key.clone(), l.event_ns)))
                .collect(),
        }
    }

    /// Record the state into a checkpoint (live GUIDs sorted).
    pub fn fill(&self, cp: &mut Checkpoint) {
        cp.rowids = self.rowids.clone();
        let mut live: Vec<LiveGuid> = self
            .live
            .iter()
            .map(|(guid, (key, event_ns))| LiveGuid {
                guid: guid.clone(),
                key: key.clone(),
                event_ns: *event_ns,
            })
            .collect();
        live.sort_by(|a, b| a.guid.cmp(&b.guid));
        cp.live = live;
    }

    /// Apply a committed record. `live_floor`: records with an older event time are not added
    /// to the live GUIDs (deletion detection does not look that far back).
    pub fn apply(&mut self, e: &Effect<'_>, live_floor: Option<i64>) {
        if e.table == SourceTable::Other {
            return;
        }
        let max = self.rowids.entry(e.table.name().to_owned()).or_insert(0);
        *max = (*max).max(e.rowid);
        if e.kind == RecordKind::DeletionDetected {
            self.live.remove(e.guid);
        } else if live_floor.is_none_or(|floor| e.event_ns >= floor) {
            match self.live.get_mut(e.guid) {
                Some((key, event_ns)) => {
                    key.clear();
                    key.push_str(e.key);
                    *event_ns = (*event_ns).max(e.event_ns);
                }
                None => {
                    self.live.insert(e.guid.to_owned(), (e.key.to_owned(), e.event_ns));
                }
            }
        }
    }

    /// Forget live GUIDs whose latest event is older than `floor`.
    pub fn prune_live(&mut self, floor: i64) {
        self.live.retain(|_, (_, event_ns)| *event_ns >= floor);
    }

    /// The highest ROWID archived from `table` (0 when none).
    pub fn max_rowid(&self, table: &str) -> i64 {
        self.rowids.get(table).copied().unwrap_or(0).max(0)
    }

    /// Live GUIDs whose latest event is at or after `since`, sorted by GUID, each with its
    /// latest key.
    pub fn live_since(&self, since: i64) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .live
            .iter()
            .filter(|(_, (_, event_ns))| *event_ns >= since)
            .map(|(guid, (key, _))| (guid.clone(), key.clone()))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect<'a>(kind: RecordKind, guid: &'a str, key: &'a str, rowid: i64, event_ns: i64) -> Effect<'a> {
        Effect {
            kind,
            table: SourceTable::Message,
            rowid,
            guid,
            key,
            event_ns,
        }
    }

    #[test]
    fn rowids_and_live_guids_follow_the_records_and_survive_a_checkpoint() {
        let mut d = Derived::default();
        d.apply(&effect(RecordKind::Message, "G1", "d/G1/0", 5, 100), None);
        d.apply(&effect(RecordKind::Edit, "G1", "d/G1/p0e1", 5, 90), None);
        d.apply(&effect(RecordKind::Message, "G2", "d/G2/0", 3, 50), Some(60));
        d.apply(&effect(RecordKind::Message, "G3", "d/G3/0", 7, 70), None);
        d.apply(
            &effect(RecordKind::DeletionDetected, "G3", "d/G3/deleted", 0, 200),
            None,
        );
        assert_eq!(d.max_rowid("message"), 7);
        assert_eq!(d.max_rowid("attachment"), 0);
        assert_eq!(d.live_since(0), vec![("G1".into(), "d/G1/p0e1".into())]);
        assert_eq!(d.live_since(101), vec![]);

        let mut cp = Checkpoint::empty("d");
        d.fill(&mut cp);
        assert_eq!(Derived::from_checkpoint(&cp), d);
        d.prune_live(150);
        assert!(d.live_since(0).is_empty());
    }
}
