//! The `NSAttributedString` that Messages stores in `attributedBody`: its text and its runs of
//! attributes, and the message parts they describe.

use std::collections::BTreeMap;

use super::decode::{self, DecodeError, Decoded, Object, Value};
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
        let bounds = utf16_to_byte_offsets(&self.text);
        let total16 = bounds.len() - 1;
        let byte_at = |u16pos: usize| -> usize {
            let p = u16pos.min(total16);
            // A position inside a surrogate pair maps to the next char boundary.
            bounds[p..].iter().flatten().next().copied().unwrap_or(self.text.len())
        };
        let mut parts: Vec<Part> = Vec::new();
        let mut pos16 = 0usize;
        for run in &self.runs {
            let start = byte_at(pos16);
            pos16 = pos16.saturating_add(run.len_utf16);
            let end = byte_at(pos16);
            let text = &self.text[start..end.max(start)];
            let index = run.part_index().or_else(|| parts.last().map(|p| p.index)).unwrap_or(0);
            match parts.last_mut() {
                Some(last) if last.index == index => {
                    last.text.push_str(text);
                    if last.attachment_guid.is_none() {
                        last.attachment_guid = run.file_transfer_guid().map(str::to_owned);
                    }
                }
                _ => parts.push(Part {
                    index,
                    text: text.to_owned(),
                    attachment_guid: run.file_transfer_guid().map(str::to_owned),
                }),
            }
        }
        let covered = byte_at(pos16);
        if covered < self.text.len() {
            let rest = &self.text[covered..];
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
}

/// UTF-16 length of a string (how `NSString` counts).
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// For each UTF-16 position 0..=len, the byte offset when it is a char boundary.
fn utf16_to_byte_offsets(s: &str) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(s.len() + 1);
    for (byte, ch) in s.char_indices() {
        out.push(Some(byte));
        if ch.len_utf16() == 2 {
            out.push(None);
        }
    }
    out.push(Some(s.len()));
    out
}

fn nsstring_text(decoded: &Decoded, obj: &Object) -> Option<Result<String, DecodeError>> {
    if !obj.is_a("NSString") {
        return None;
    }
    obj.groups.iter().flatten().find_map(|v| match v {
        Value::Bytes(b) => Some(String::from_utf8(b.clone()).map_err(|e| DecodeError::InvalidUtf8(e.to_string()))),
        Value::Object(_) => {
            let inner = decoded.object(v)?;
            nsstring_text(decoded, inner)
        }
        _ => None,
    })
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
