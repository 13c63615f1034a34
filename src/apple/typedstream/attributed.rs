//! The `NSAttributedString` that Messages stores in `attributedBody`: its text and its runs of
//! attributes, and the message parts they describe.

use std::collections::BTreeMap;

use super::decode::{self, DecodeError, Decoded, Object, Value};
use super::graph_text::nsstring_text;
use super::{FILE_TRANSFER_ATTRIBUTE, PART_ATTRIBUTE};

/// Objective-C integer type characters an `NSNumber` attribute may carry.
const INTEGER_TYPES: &[u8] = b"cCsSiIlLqQB";

/// An attribute value as Messages writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// An `NSString`.
    Str(String),
    /// An `NSNumber` with its Objective-C type (`i`, `q`, …).
    Int {
        /// The `NSNumber`'s Objective-C type character.
        objc_type: char,
        /// The value.
        value: i64,
    },
    /// Any other object, by class name (kept for inspection; the encoder writes nil).
    Other(String),
}

/// A run of text sharing one attribute dictionary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Run {
    /// Length in UTF-16 code units (as `NSString` counts).
    pub len_utf16: usize,
    /// The attributes, in the order they were written.
    pub attributes: Vec<(String, AttrValue)>,
}

impl Run {
    /// A run of `len_utf16` units belonging to message part `part`.
    pub fn part(len_utf16: usize, part: u32) -> Self {
        Run {
            len_utf16,
            attributes: vec![(
                PART_ATTRIBUTE.to_owned(),
                AttrValue::Int {
                    objc_type: 'i',
                    value: part as i64,
                },
            )],
        }
    }

    /// An attachment's U+FFFC run: the file transfer GUID, then the part.
    pub fn attachment(part: u32, transfer_guid: &str) -> Self {
        let mut run = Run::part(1, part);
        run.attributes.insert(
            0,
            (
                FILE_TRANSFER_ATTRIBUTE.to_owned(),
                AttrValue::Str(transfer_guid.to_owned()),
            ),
        );
        run
    }

    /// The attribute named `key`.
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The message part (`__kIMMessagePartAttributeName`), if present.
    pub fn part_index(&self) -> Option<u32> {
        match self.get(PART_ATTRIBUTE)? {
            AttrValue::Int { value, .. } => u32::try_from(*value).ok(),
            AttrValue::Str(s) => s.parse().ok(),
            AttrValue::Other(_) => None,
        }
    }

    /// The attachment GUID shown by this run (`__kIMFileTransferGUIDAttributeName`), if any.
    pub fn file_transfer_guid(&self) -> Option<&str> {
        match self.get(FILE_TRANSFER_ATTRIBUTE)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One message part: consecutive runs with the same part index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part index.
    pub index: u32,
    /// Its text (U+FFFC for an attachment part).
    pub text: String,
    /// The attachment it shows, if any.
    pub attachment_guid: Option<String>,
}

/// The decoded `attributedBody`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttributedBody {
    /// The whole text.
    pub text: String,
    /// The attribute runs, in order.
    pub runs: Vec<Run>,
    /// `NSMutableAttributedString` (what `attributedBody` holds) rather than
    /// `NSAttributedString` (what edit histories hold).
    pub mutable: bool,
}

impl AttributedBody {
    /// A single-part plain message, as Messages writes one.
    pub fn plain(text: &str) -> Self {
        AttributedBody {
            text: text.to_owned(),
            runs: vec![Run::part(utf16_len(text), 0)],
            mutable: true,
        }
    }

    /// Decodes an `attributedBody` (or an edit-history `t`) blob.
    pub fn from_typedstream(bytes: &[u8]) -> Result<Self, DecodeError> {
        match super::fast::with_decoded(bytes, |fast| fast.map(|f| f.to_body())) {
            Some(body) => Ok(body),
            None => Self::from_typedstream_generic(bytes),
        }
    }

    /// Decodes through the generic object graph only (what [`Self::from_typedstream`] falls
    /// back to when the blob is not in the layout its fast path reads). For tests and fuzzing.
    pub fn from_typedstream_generic(bytes: &[u8]) -> Result<Self, DecodeError> {
        let decoded = decode::decode(bytes)?;
        from_graph(&decoded)
    }

    /// Encodes as typedstream.
    pub fn to_typedstream(&self) -> Vec<u8> {
        super::encode::encode_attributed(self)
    }

    /// The message parts: consecutive runs with the same part index, with their text.
    /// A body without runs is one part 0; text past the last run joins the last part.
    pub fn parts(&self) -> Vec<Part> {
        parts_of(
            &self.text,
            self.runs
                .iter()
                .map(|r| (r.len_utf16, r.part_index(), r.file_transfer_guid())),
        )
    }
}

/// The message parts of an `attributedBody` blob: the same as
/// `AttributedBody::from_typedstream(bytes)?.parts()`, without building the body when the blob
/// has the layout Messages writes.
pub fn parts_from_typedstream(bytes: &[u8]) -> Result<Vec<Part>, DecodeError> {
    match super::fast::with_decoded(bytes, |fast| fast.map(|f| f.parts())) {
        Some(parts) => Ok(parts),
        None => Ok(AttributedBody::from_typedstream_generic(bytes)?.parts()),
    }
}

/// The parts of `text` given its runs as (length in UTF-16 units, part index, attachment
/// GUID): consecutive runs with the same part index (a run without one continues the previous
/// part, or is part 0) form one part; a run boundary inside a surrogate pair moves to the next
/// character; text past the last run joins the last part.
pub(crate) fn parts_of<'r>(text: &str, runs: impl Iterator<Item = (usize, Option<u32>, Option<&'r str>)>) -> Vec<Part> {
    let mut cursor = Utf16Cursor::new(text);
    let mut parts: Vec<Part> = Vec::new();
    let mut pos16 = 0usize;
    for (len_utf16, part_index, guid) in runs {
        let start = cursor.byte_at(pos16);
        pos16 = pos16.saturating_add(len_utf16);
        let end = cursor.byte_at(pos16);
        let piece = &text[start..end.max(start)];
        let index = part_index.or_else(|| parts.last().map(|p| p.index)).unwrap_or(0);
        match parts.last_mut() {
            Some(last) if last.index == index => {
                last.text.push_str(piece);
                if last.attachment_guid.is_none() {
                    last.attachment_guid = guid.map(str::to_owned);
                }
            }
            _ => parts.push(Part {
                index,
                text: piece.to_owned(),
                attachment_guid: guid.map(str::to_owned),
            }),
        }
    }
    let covered = cursor.byte_at(pos16);
    if covered < text.len() {
        let rest = &text[covered..];
        match parts.last_mut() {
            Some(last) => last.text.push_str(rest),
            None => parts.push(Part {
                index: 0,
                text: rest.to_owned(),
                attachment_guid: None,
            }),
        }
    }
    parts
}

/// Maps non-decreasing UTF-16 positions to byte offsets, walking the text once.
struct Utf16Cursor<'t> {
    bytes: &'t [u8],
    /// Byte offset of the character boundary reached.
    byte: usize,
    /// Its UTF-16 position.
    pos16: usize,
}

impl<'t> Utf16Cursor<'t> {
    fn new(text: &'t str) -> Self {
        Utf16Cursor {
            bytes: text.as_bytes(),
            byte: 0,
            pos16: 0,
        }
    }

    /// The byte offset of the first character boundary at UTF-16 position `pos16` or after
    /// (the text's end when `pos16` is past it). Positions must not decrease between calls.
    fn byte_at(&mut self, pos16: usize) -> usize {
        while self.pos16 < pos16 && self.byte < self.bytes.len() {
            // The text is UTF-8: the leading byte gives the character's length.
            let (len8, len16) = match self.bytes[self.byte] {
                0x00..=0x7f => (1, 1),
                0x80..=0xdf => (2, 1),
                0xe0..=0xef => (3, 1),
                _ => (4, 2),
            };
            self.byte += len8;
            self.pos16 += len16;
        }
        self.byte.min(self.bytes.len())
    }
}

/// UTF-16 length of a string (how `NSString` counts).
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

fn attr_value(decoded: &Decoded, value: &Value) -> Option<AttrValue> {
    let obj = decoded.object(value)?;
    if obj.is_a("NSString") {
        return nsstring_text(decoded, obj)?.ok().map(AttrValue::Str);
    }
    if obj.is_a("NSNumber") || obj.is_a("NSValue") {
        let mut objc_type = 'i';
        for v in obj.groups.iter().flatten() {
            match v {
                // Keep integer types; anything else (floats, corrupt types) is stored as `q`.
                Value::CString(Some(t)) if !t.is_empty() => {
                    objc_type = if INTEGER_TYPES.contains(&t[0]) {
                        t[0] as char
                    } else {
                        'q'
                    }
                }
                Value::Int(n) => return Some(AttrValue::Int { objc_type, value: *n }),
                Value::Float(f) => {
                    return Some(AttrValue::Int {
                        objc_type,
                        value: *f as i64,
                    });
                }
                _ => {}
            }
        }
    }
    Some(AttrValue::Other(obj.classes.first().cloned().unwrap_or_default()))
}

fn dictionary(decoded: &Decoded, obj: &Object) -> Vec<(String, AttrValue)> {
    let mut out = Vec::new();
    if !obj.is_a("NSDictionary") {
        return out;
    }
    // Group 0 is the count; then one group per key and per value.
    let items: Vec<&Value> = obj.groups.iter().skip(1).flatten().collect();
    for pair in items.chunks(2) {
        let [k, v] = pair else { break };
        let key = decoded
            .object(k)
            .and_then(|o| nsstring_text(decoded, o))
            .and_then(Result::ok);
        if let (Some(key), Some(value)) = (key, attr_value(decoded, v)) {
            out.push((key, value));
        }
    }
    out
}

fn from_graph(decoded: &Decoded) -> Result<AttributedBody, DecodeError> {
    let top = decoded.top_level.iter().filter_map(|v| decoded.object(v));
    let mut plain_string = None;
    for obj in top {
        if obj.is_a("NSAttributedString") {
            return attributed_string(decoded, obj);
        }
        if plain_string.is_none()
            && let Some(text) = nsstring_text(decoded, obj)
        {
            plain_string = Some(text);
        }
    }
    match plain_string {
        Some(text) => Ok(AttributedBody {
            runs: Vec::new(),
            mutable: false,
            text: text?,
        }),
        None => Err(DecodeError::NoText),
    }
}

fn attributed_string(decoded: &Decoded, obj: &Object) -> Result<AttributedBody, DecodeError> {
    let mut groups = obj.groups.iter();
    let text = groups
        .next()
        .and_then(|g| g.first())
        .and_then(|v| decoded.object(v))
        .and_then(|s| nsstring_text(decoded, s))
        .ok_or(DecodeError::NoText)??;
    let mut dicts: BTreeMap<i64, Vec<(String, AttrValue)>> = BTreeMap::new();
    let mut raw_runs: Vec<(i64, usize)> = Vec::new();
    for group in groups {
        match group.as_slice() {
            [Value::Int(idx), Value::Int(len)] => raw_runs.push((*idx, (*len).max(0) as usize)),
            [v @ Value::Object(_)] => {
                if let (Some(&(idx, _)), Some(d)) = (raw_runs.last(), decoded.object(v)) {
                    dicts.entry(idx).or_insert_with(|| dictionary(decoded, d));
                }
            }
            _ => {}
        }
    }
    let runs = raw_runs
        .into_iter()
        .map(|(idx, len)| Run {
            len_utf16: len,
            attributes: dicts.get(&idx).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(AttributedBody {
        text,
        runs,
        mutable: obj.is_a("NSMutableAttributedString"),
    })
}
