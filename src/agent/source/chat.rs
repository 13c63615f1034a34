//! The `chat` table with `chat_handle_join` (participants) and `chat_message_join` (which chat
//! a message is in): the record's conversation.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use super::SourceError;
use super::handle::bare_address;
use crate::api::record::{Conversation, conversation_id};
use crate::apple::codes;

fn query_error(table: &'static str) -> impl Fn(rusqlite::Error) -> SourceError {
    move |e| SourceError::Query {
        table,
        reason: e.to_string(),
    }
}

/// A chat's participants (`+?1`: see `message::after_rowid_sql`).
pub(super) const PARTICIPANTS_SQL: &str =
    "SELECT h.id FROM chat_handle_join j JOIN handle h ON h.ROWID = j.handle_id WHERE j.chat_id = +?1";

/// A cache of conversations by `chat.ROWID`, cleared when the database changes (renames and
/// membership changes rewrite `chat` and `chat_handle_join`).
#[derive(Default)]
pub struct Chats {
    by_rowid: HashMap<i64, Option<Arc<Conversation>>>,
}

impl Chats {
    /// Forget everything.
    pub fn clear(&mut self) {
        self.by_rowid.clear();
    }

    /// The conversation of chat `rowid`, with participants sorted.
    pub fn conversation(&mut self, conn: &Connection, rowid: i64) -> Result<Option<Arc<Conversation>>, SourceError> {
        if let Some(c) = self.by_rowid.get(&rowid) {
            return Ok(c.clone());
        }
        let row = conn
            .prepare_cached(
                "SELECT guid, chat_identifier, service_name, style, display_name, last_addressed_handle, account_login \
                 FROM chat WHERE ROWID = ?1",
            )
            .and_then(|mut s| {
                s.query_row([rowid], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                })
                .optional()
            })
            .map_err(query_error("chat"))?;
        let conversation = match row {
            None => None,
            Some((guid, identifier, service, style, display_name, last_addressed, login)) => {
                let mut participants: Vec<String> = conn
                    .prepare_cached(PARTICIPANTS_SQL)
                    .and_then(|mut s| {
                        s.query_map([rowid], |r| r.get::<_, String>(0))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(query_error("chat_handle_join"))?;
                participants.sort();
                participants.dedup();
                let guid = guid.unwrap_or_else(|| format!("chat-rowid-{rowid}"));
                let account = last_addressed
                    .filter(|s| !s.is_empty())
                    .or(login.filter(|s| !s.is_empty()))
                    .map(|s| bare_address(&s).to_owned());
                Some(Arc::new(Conversation {
                    id: conversation_id(&guid),
                    guid,
                    chat_identifier: identifier.unwrap_or_default(),
                    service: codes::canonical_service(service.as_deref().unwrap_or("")),
                    is_group: style == Some(codes::CHAT_STYLE_GROUP),
                    display_name: display_name.filter(|s| !s.is_empty()),
                    participants,
                    account,
                }))
            }
        };
        self.by_rowid.insert(rowid, conversation.clone());
        Ok(conversation)
    }
}
