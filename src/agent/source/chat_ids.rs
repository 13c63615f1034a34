//! The chat of each message of a ROWID range, in one query: what the correlated subquery in
//! [`super::message::COLUMNS`] gives per row — the first `chat_message_join.chat_id` in
//! `ORDER BY chat_id` order, when it is an integer — without a subquery and a sort per row.

use std::cmp::Ordering;

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::SourceError;
use super::message::MessageRow;

fn query_error(e: rusqlite::Error) -> SourceError {
    SourceError::Query {
        table: "message",
        reason: e.to_string(),
    }
}

/// The first `chat_id` of a message so far, in SQLite's `ORDER BY` order: NULL, then numbers
/// (integers and reals by value), then text, then blobs. Only whether it is an integer, and
/// which, matters, so text and blobs are not told apart.
#[derive(Clone, Copy, Debug, PartialEq)]
enum First {
    Null,
    Integer(i64),
    Real(f64),
    TextOrBlob,
}

impl First {
    fn of(v: ValueRef<'_>) -> First {
        match v {
            ValueRef::Null => First::Null,
            ValueRef::Integer(i) => First::Integer(i),
            ValueRef::Real(r) => First::Real(r),
            ValueRef::Text(_) | ValueRef::Blob(_) => First::TextOrBlob,
        }
    }

    /// The earlier of the two (`self` on a tie: SQLite leaves ties in no particular order,
    /// and INTEGER affinity stores no real equal to an integer).
    fn min(self, other: First) -> First {
        if order(other, self) == Ordering::Less {
            other
        } else {
            self
        }
    }

    fn chat_id(self) -> Option<i64> {
        match self {
            First::Integer(i) => Some(i),
            _ => None,
        }
    }
}

fn rank(v: First) -> u8 {
    match v {
        First::Null => 0,
        First::Integer(_) | First::Real(_) => 1,
        First::TextOrBlob => 2,
    }
}

/// SQLite's order of two values (text and blobs compare equal here, see [`First`]).
fn order(a: First, b: First) -> Ordering {
    match (a, b) {
        (First::Integer(x), First::Integer(y)) => x.cmp(&y),
        (First::Real(x), First::Real(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (First::Integer(i), First::Real(r)) => int_real(i, r),
        (First::Real(r), First::Integer(i)) => int_real(i, r).reverse(),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// An integer against a real, exactly (as SQLite compares them).
fn int_real(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater; // SQLite stores NaN as NULL: not reached
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    let t = r.trunc();
    // |t| < 2^63: the conversion is exact.
    match i.cmp(&(t as i64)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(r - t)).unwrap_or(Ordering::Equal),
        other => other,
    }
}

/// Sets `chat_id` of `rows` (in ROWID order, every ROWID of `(after, upto]`).
pub(super) fn fill(conn: &Connection, rows: &mut [MessageRow], after: i64, upto: i64) -> Result<(), SourceError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT j.message_id, j.chat_id FROM chat_message_join j \
             WHERE j.message_id > ?1 AND j.message_id <= ?2 ORDER BY j.message_id",
        )
        .map_err(query_error)?;
    let mut joins = stmt.query([after, upto]).map_err(query_error)?;
    let mut rows = rows.iter_mut().peekable();
    let mut current: Option<(i64, First)> = None;
    let mut set = |message_id: i64, first: First| {
        while rows.next_if(|r| r.rowid < message_id).is_some() {}
        if let Some(row) = rows.next_if(|r| r.rowid == message_id) {
            row.chat_id = first.chat_id();
        }
    };
    while let Some(j) = joins.next().map_err(query_error)? {
        // A message_id that is not an integer equals no ROWID.
        let Ok(ValueRef::Integer(message_id)) = j.get_ref(0) else {
            continue;
        };
        let chat = First::of(j.get_ref(1).map_err(query_error)?);
        current = match current {
            Some((id, first)) if id == message_id => Some((id, first.min(chat))),
            Some((id, first)) => {
                set(id, first);
                Some((message_id, chat))
            }
            None => Some((message_id, chat)),
        };
    }
    if let Some((id, first)) = current {
        set(id, first);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_order_as_sqlite_orders_them() {
        let conn = Connection::open_in_memory().expect("database");
        conn.execute_batch(
            "CREATE TABLE v (x); INSERT INTO v VALUES (NULL), (-3), (2), (2.5), (-2.5), (9007199254740993), \
             (9007199254740992.0), (1e19), (-1e19), (9223372036854775807), (-9223372036854775808), \
             (9.223372036854775807e18), ('a'), ('b'), (x'00'), (0), (-0.0), (0.5), (-1);",
        )
        .expect("values");
        let mut stmt = conn.prepare("SELECT x FROM v ORDER BY x").expect("query");
        let sorted: Vec<First> = stmt
            .query_map([], |r| Ok(First::of(r.get_ref(0)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                let ours = order(*a, *b);
                let theirs = i.cmp(&j);
                if ours != Ordering::Equal {
                    assert_eq!(ours, theirs, "{a:?} against {b:?}");
                }
            }
        }
        assert_eq!(order(First::Integer(2), First::Real(2.5)), Ordering::Less);
        assert_eq!(order(First::Integer(-3), First::Real(-2.5)), Ordering::Less);
        assert_eq!(
            order(
                First::Integer(9_007_199_254_740_993),
                First::Real(9_007_199_254_740_992.0)
            ),
            Ordering::Greater
        );
        assert_eq!(
            order(First::Integer(i64::MAX), First::Real(9_223_372_036_854_775_808.0)),
            Ordering::Less
        );
    }
}
