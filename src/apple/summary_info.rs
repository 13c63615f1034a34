//! `message.message_summary_info`: a binary plist that Messages keeps for edited and unsent
//! messages. Keys: `ec` (edit history: part → list of `{d: seconds since 2001, t: typedstream
//! NSAttributedString, bcg: GUID}`, item 0 = the original), `ep` (edited parts), `rp` (unsent
//! parts), `otr` (original text ranges: part → `{lo, le}`), `ust`, `amc`.

use std::collections::BTreeMap;

use plist::{Dictionary, Value};

use super::epoch;
use super::typedstream::{AttributedBody, DecodeError as TypedstreamError};

/// Key of the edit history.
pub const KEY_EDIT_HISTORY: &str = "ec";
/// Key of the edited parts.
pub const KEY_EDITED_PARTS: &str = "ep";
/// Key of the unsent (retracted) parts.
pub const KEY_UNSENT_PARTS: &str = "rp";
/// Key of the original text ranges.
pub const KEY_ORIGINAL_RANGES: &str = "otr";

/// Why a summary could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// Not a property list.
    #[error("message_summary_info is not a property list: {0}")]
    Plist(String),
    /// A property list, but not a dictionary.
    #[error("message_summary_info is not a dictionary")]
    NotDictionary,
}

/// One revision of one part.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// The part.
    pub part: u32,
    /// Position in the part's history (0 = the original).
    pub index: u32,
    /// The raw `d` (seconds since 2001-01-01, fractional).
    pub at_seconds: f64,
    /// `d` as Apple-epoch nanoseconds, truncated to whole seconds (None when `d` is missing or
    /// not a number).
    pub at_ns: Option<i64>,
    /// The decoded text, or why it could not be decoded.
    pub body: Result<AttributedBody, TypedstreamError>,
    /// The raw `t` bytes.
    pub raw: Vec<u8>,
    /// `bcg`, when present.
    pub guid: Option<String>,
}

impl Revision {
    /// The revision's text, when it decoded.
    pub fn text(&self) -> Option<&str> {
        self.body.as_ref().ok().map(|b| b.text.as_str())
    }
}

/// The decoded summary.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SummaryInfo {
    /// Every revision of every part, by part then index (index 0 = the original).
    pub history: BTreeMap<u32, Vec<Revision>>,
    /// `ep`: parts marked edited.
    pub edited_parts: Vec<u32>,
    /// `rp`: parts unsent.
    pub unsent_parts: Vec<u32>,
    /// `otr`: original text range (start, length in UTF-16 units) per part.
    pub original_ranges: BTreeMap<u32, (i64, i64)>,
}

impl SummaryInfo {
    /// Decodes the plist.
    pub fn decode(bytes: &[u8]) -> Result<Self, SummaryError> {
        let value = Value::from_reader(std::io::Cursor::new(bytes)).map_err(|e| SummaryError::Plist(e.to_string()))?;
        let dict = value.as_dictionary().ok_or(SummaryError::NotDictionary)?;
        let mut out = SummaryInfo::default();
        if let Some(ec) = dict.get(KEY_EDIT_HISTORY).and_then(Value::as_dictionary) {
            for (part, list) in ec {
                let Ok(part) = part.parse::<u32>() else { continue };
                let Some(list) = list.as_array() else { continue };
                let revisions = list
                    .iter()
                    .enumerate()
                    .map(|(i, item)| revision(part, i as u32, item))
                    .collect();
                out.history.insert(part, revisions);
            }
        }
        out.edited_parts = int_list(dict.get(KEY_EDITED_PARTS));
        out.unsent_parts = int_list(dict.get(KEY_UNSENT_PARTS));
        if let Some(otr) = dict.get(KEY_ORIGINAL_RANGES).and_then(Value::as_dictionary) {
            for (part, range) in otr {
                let (Ok(part), Some(r)) = (part.parse::<u32>(), range.as_dictionary()) else {
                    continue;
                };
                let get = |k: &str| r.get(k).and_then(as_i64).unwrap_or(0);
                out.original_ranges.insert(part, (get("lo"), get("le")));
            }
        }
        Ok(out)
    }

    /// Edits: every revision after the original of every part, in time order.
    pub fn edits(&self) -> Vec<&Revision> {
        let mut out: Vec<&Revision> = self.history.values().flat_map(|v| v.iter().skip(1)).collect();
        out.sort_by_key(|r| (r.at_ns.unwrap_or(i64::MIN), r.part, r.index));
        out
    }

    /// Whether any part was unsent.
    pub fn is_unsent(&self) -> bool {
        !self.unsent_parts.is_empty()
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => i.as_signed().or_else(|| i.as_unsigned().map(|u| u as i64)),
        Value::Real(f) => Some(*f as i64),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn int_list(v: Option<&Value>) -> Vec<u32> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(as_i64)
                .filter_map(|i| u32::try_from(i).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn revision(part: u32, index: u32, item: &Value) -> Revision {
    let dict = item.as_dictionary();
    let get = |k: &str| dict.and_then(|d| d.get(k));
    let at_seconds = match get("d") {
        Some(Value::Real(f)) => *f,
        Some(other) => as_i64(other).map(|i| i as f64).unwrap_or(f64::NAN),
        None => f64::NAN,
    };
    let raw = get("t")
        .and_then(Value::as_data)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let body = if raw.is_empty() {
        Err(TypedstreamError::NoText)
    } else {
        AttributedBody::from_typedstream(&raw)
    };
    Revision {
        part,
        index,
        at_seconds,
        at_ns: epoch::ns_from_float_seconds(at_seconds),
        body,
        raw,
        guid: get("bcg").and_then(Value::as_string).map(str::to_owned),
    }
}

/// What the simulator writes for an edited or unsent message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SummaryBuilder {
    /// Per part: (seconds since 2001-01-01, text) for the original and each edit, in order.
    pub history: BTreeMap<u32, Vec<(f64, String)>>,
    /// Unsent parts.
    pub unsent_parts: Vec<u32>,
    /// Original text ranges (UTF-16 start, length) per part.
    pub original_ranges: BTreeMap<u32, (i64, i64)>,
}

impl SummaryBuilder {
    /// Encodes as a binary plist, with the keys in the order Messages writes them.
    pub fn encode(&self) -> Vec<u8> {
        let mut dict = Dictionary::new();
        dict.insert("amc".into(), Value::Integer(0.into()));
        if !self.history.is_empty() {
            let mut ec = Dictionary::new();
            for (part, revisions) in &self.history {
                let list = revisions
                    .iter()
                    .map(|(d, text)| {
                        let mut body = AttributedBody::plain(text);
                        body.mutable = false;
                        body.runs[0].attributes = vec![(
                            super::typedstream::PART_ATTRIBUTE.to_owned(),
                            super::typedstream::AttrValue::Int {
                                objc_type: 'i',
                                value: *part as i64,
                            },
                        )];
                        let mut r = Dictionary::new();
                        r.insert("t".into(), Value::Data(body.to_typedstream()));
                        r.insert("d".into(), Value::Real(*d));
                        Value::Dictionary(r)
                    })
                    .collect();
                ec.insert(part.to_string(), Value::Array(list));
            }
            dict.insert(KEY_EDIT_HISTORY.into(), Value::Dictionary(ec));
        }
        dict.insert("ust".into(), Value::Boolean(true));
        let edited: Vec<Value> = self
            .history
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(p, _)| Value::Integer((*p as u64).into()))
            .collect();
        if !edited.is_empty() {
            dict.insert(KEY_EDITED_PARTS.into(), Value::Array(edited));
        }
        let mut otr = Dictionary::new();
        for (part, (lo, le)) in &self.original_ranges {
            let mut r = Dictionary::new();
            r.insert("lo".into(), Value::Integer((*lo).into()));
            r.insert("le".into(), Value::Integer((*le).into()));
            otr.insert(part.to_string(), Value::Dictionary(r));
        }
        dict.insert(KEY_ORIGINAL_RANGES.into(), Value::Dictionary(otr));
        if !self.unsent_parts.is_empty() {
            let rp = self
                .unsent_parts
                .iter()
                .map(|p| Value::Integer((*p as u64).into()))
                .collect();
            dict.insert(KEY_UNSENT_PARTS.into(), Value::Array(rp));
        }
        let mut out = Vec::new();
        Value::Dictionary(dict)
            .to_writer_binary(&mut out)
            .expect("writing a plist to memory cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apple::typedstream::fixture;

    #[test]
    fn edited_fixture_has_four_timed_revisions() {
        let info = SummaryInfo::decode(&fixture("Edited.plist")).unwrap();
        let part0 = &info.history[&0];
        let got: Vec<(i64, &str)> = part0.iter().map(|r| (r.at_ns.unwrap(), r.text().unwrap())).collect();
        assert_eq!(
            got,
            [
                (690_513_474_000_000_000, "First message  "),
                (690_513_480_000_000_000, "Edit 1"),
                (690_513_485_000_000_000, "Edit 2"),
                (690_513_494_000_000_000, "Edited message"),
            ]
        );
        assert_eq!(info.edits().len(), 3, "revision 0 is the original");
        assert_eq!(info.edited_parts, [0]);
        assert!(!info.is_unsent());
        assert_eq!(info.original_ranges[&0], (0, 15));
    }

    #[test]
    fn deleted_fixture_is_unsent_with_no_history() {
        let info = SummaryInfo::decode(&fixture("Deleted.plist")).unwrap();
        assert!(info.history.is_empty());
        assert!(info.edits().is_empty());
        assert!(info.is_unsent());
        assert_eq!(info.unsent_parts, [0]);
        assert_eq!(info.original_ranges[&0], (0, 13));
    }

    #[test]
    fn builder_round_trips() {
        let mut b = SummaryBuilder::default();
        b.history.insert(
            0,
            vec![(700_000_000.5, "orig".into()), (700_000_060.25, "édit 1".into())],
        );
        b.history
            .insert(2, vec![(700_000_001.0, "p2".into()), (700_000_090.0, "p2 new".into())]);
        b.unsent_parts = vec![1];
        b.original_ranges.insert(0, (0, 4));
        let info = SummaryInfo::decode(&b.encode()).unwrap();
        assert_eq!(info.history[&0][1].text(), Some("édit 1"));
        assert_eq!(info.history[&0][1].at_ns, Some(700_000_060_000_000_000));
        assert_eq!(info.history[&0][1].at_seconds, 700_000_060.25);
        assert_eq!(info.history[&2][1].text(), Some("p2 new"));
        assert_eq!(info.edited_parts, [0, 2]);
        assert_eq!(info.unsent_parts, [1]);
        assert_eq!(info.original_ranges[&0], (0, 4));
        assert_eq!(info.edits().len(), 2);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(SummaryInfo::decode(b"").is_err());
        assert!(SummaryInfo::decode(&fixture("MultiPart")).is_err());
        let mut arr = Vec::new();
        Value::Array(vec![]).to_writer_binary(&mut arr).unwrap();
        assert!(matches!(SummaryInfo::decode(&arr), Err(SummaryError::NotDictionary)));
    }
}
