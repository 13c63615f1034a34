//! The `handle` table: the other parties' addresses (phone numbers, e-mail addresses).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use super::SourceError;

/// A cache of `handle.ROWID → handle.id`, filled on demand, cleared when the database changes.
#[derive(Default)]
pub struct Handles {
    ids: HashMap<i64, Option<Arc<str>>>,
}

impl Handles {
    /// Forget everything (the database changed).
    pub fn clear(&mut self) {
        self.ids.clear();
    }

    /// The address of handle `rowid` (None for 0 or a handle that does not exist).
    pub fn id(&mut self, conn: &Connection, rowid: i64) -> Result<Option<Arc<str>>, SourceError> {
        if rowid <= 0 {
            return Ok(None);
        }
        if let Some(id) = self.ids.get(&rowid) {
            return Ok(id.clone());
        }
        let id: Option<Arc<str>> = conn
            .prepare_cached("SELECT id FROM handle WHERE ROWID = ?1")
            .and_then(|mut s| s.query_row([rowid], |r| r.get::<_, Option<String>>(0)).optional())
            .map_err(|e| SourceError::Query {
                table: "handle",
                reason: e.to_string(),
            })?
            .flatten()
            .map(Arc::from);
        self.ids.insert(rowid, id.clone());
        Ok(id)
    }
}

/// Strips the `e:` / `p:` prefixes Messages puts on account addresses.
pub fn bare_address(raw: &str) -> &str {
    raw.strip_prefix("e:")
        .or_else(|| raw.strip_prefix("E:"))
        .or_else(|| raw.strip_prefix("p:"))
        .or_else(|| raw.strip_prefix("P:"))
        .unwrap_or(raw)
}
