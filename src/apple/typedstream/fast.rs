//! A fast path for the one layout Messages writes in `attributedBody` and in edit histories:
//! an `NSAttributedString` (or `NSMutableAttributedString`) holding an `NSString` and runs
//! whose attribute dictionaries map `NSString` keys to `NSString` or integer `NSNumber`
//! values. It reads the stream in one pass, borrowing from the blob, into tables it reuses.
//!
//! It reads exactly as the generic decoder does (same bytes, same tables, same back-references)
//! but accepts only that layout, and only when the whole stream decodes: for anything else —
//! another class, another type encoding, a back-reference it does not follow, invalid UTF-8,
//! a table fuller than it holds, an error of any kind — it answers `None` and the caller uses
//! the generic decoder, which gives the result or the precise error. So when it answers, its
//! result is the generic decoder's (the unit tests and the fuzz target check this).

use super::attributed::{AttrValue, AttributedBody, Part, Run, parts_of};
use super::{
    FILE_TRANSFER_ATTRIBUTE, PART_ATTRIBUTE, REFERENCE_BASE, SIGNATURE, STREAM_VERSION, TAG_END, TAG_FLOAT, TAG_INT16,
    TAG_INT32, TAG_NEW, TAG_NIL,
};

/// Entries the shared-string and object tables may hold (a message with a dozen parts fits).
const CAP: usize = 64;
/// Deepest class chain followed (Messages' are three long).
const MAX_CLASS_DEPTH: u32 = 8;
/// Objective-C integer type characters.
const INTEGER_TYPES: &[u8] = b"cCsSiIlLqQB";

/// A byte range of the blob.
type Span = (u32, u32);

/// A class, known only when its whole chain is one of those Messages writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Object,
    String,
    MutableString,
    Attributed,
    MutableAttributed,
    Dictionary,
    Value,
    Number,
    Other,
}

impl Class {
    fn of(name: &[u8], superclass: Option<Class>) -> Class {
        match (name, superclass) {
            (b"NSObject", None) => Class::Object,
            (b"NSString", Some(Class::Object)) => Class::String,
            (b"NSMutableString", Some(Class::String)) => Class::MutableString,
            (b"NSAttributedString", Some(Class::Object)) => Class::Attributed,
            (b"NSMutableAttributedString", Some(Class::Attributed)) => Class::MutableAttributed,
            (b"NSDictionary", Some(Class::Object)) => Class::Dictionary,
            (b"NSValue", Some(Class::Object)) => Class::Value,
            (b"NSNumber", Some(Class::Value)) => Class::Number,
            _ => Class::Other,
        }
    }
}

/// An entry of the object/class/C-string table.
#[derive(Clone, Copy, Debug, Default)]
enum Entry {
    /// Being decoded (a reference to it is not followed).
    #[default]
    Pending,
    Class(Class),
    CString(Span),
    /// An `NSString` with valid UTF-8 text.
    Str(Span),
    /// An integer `NSNumber`: its attribute value.
    Number(char, i64),
    /// An `NSDictionary`: its attributes, `attrs[start..end]`.
    Dict(u32, u32),
    /// Any other object.
    Object,
}

/// An attribute value.
#[derive(Clone, Copy, Debug)]
enum Attr {
    Str(Span),
    Int(char, i64),
}

/// A table of the stream (shared strings; objects, classes and C strings), kept in the
/// scratch; pushing past [`CAP`] entries fails (and the fast path gives up).
#[derive(Default)]
struct Table<T: Copy>(Vec<T>);

impl<T: Copy> Table<T> {
    fn push(&mut self, item: T) -> Option<usize> {
        if self.0.len() >= CAP {
            return None;
        }
        self.0.push(item);
        Some(self.0.len() - 1)
    }

    fn get(&self, i: usize) -> Option<T> {
        self.0.get(i).copied()
    }

    fn set(&mut self, i: usize, item: T) {
        if let Some(slot) = self.0.get_mut(i) {
            *slot = item;
        }
    }
}

/// The fast path's growable tables, reused from blob to blob.
#[derive(Default)]
pub struct Scratch {
    /// (attribute-dictionary index, length in UTF-16 units), in order.
    runs: Vec<(i64, usize)>,
    /// Each dictionary index's attributes, `attrs[start..end]` (the first one written wins).
    dicts: Vec<(i64, u32, u32)>,
    attrs: Vec<(Span, Attr)>,
    /// Shared strings (type encodings, class names, C strings' contents).
    strings: Table<Span>,
    /// Objects, classes and C strings, as the generic decoder numbers them.
    table: Table<Entry>,
}

impl Scratch {
    /// Entries kept between blobs; an unusual blob's bigger tables are given back.
    const KEEP: usize = 256;

    fn clear(&mut self) {
        self.runs.clear();
        self.dicts.clear();
        self.attrs.clear();
        self.strings.0.clear();
        self.table.0.clear();
    }

    fn trim(&mut self) {
        self.runs.shrink_to(Self::KEEP);
        self.dicts.shrink_to(Self::KEEP);
        self.attrs.shrink_to(Self::KEEP);
    }
}

/// An `attributedBody` read by the fast path, borrowing from the blob and the scratch tables.
pub struct FastBody<'a, 's> {
    bytes: &'a [u8],
    text: &'a str,
    mutable: bool,
    runs: &'s [(i64, usize)],
    dicts: &'s [(i64, u32, u32)],
    attrs: &'s [(Span, Attr)],
}

impl<'a> FastBody<'a, '_> {
    fn str(&self, span: Span) -> &'a str {
        // Spans of strings were checked to be UTF-8 when read; this cannot fail.
        std::str::from_utf8(&self.bytes[span.0 as usize..span.1 as usize]).unwrap_or_default()
    }

    fn attributes(&self, dict_index: i64) -> &[(Span, Attr)] {
        self.dicts
            .iter()
            .find(|(i, _, _)| *i == dict_index)
            .and_then(|&(_, start, end)| self.attrs.get(start as usize..end as usize))
            .unwrap_or(&[])
    }

    fn attribute(&self, dict_index: i64, key: &str) -> Option<Attr> {
        self.attributes(dict_index)
            .iter()
            .find(|(k, _)| self.bytes.get(k.0 as usize..k.1 as usize) == Some(key.as_bytes()))
            .map(|(_, v)| *v)
    }

    /// As [`Run::part_index`].
    fn part_index(&self, dict_index: i64) -> Option<u32> {
        match self.attribute(dict_index, PART_ATTRIBUTE)? {
            Attr::Int(_, value) => u32::try_from(value).ok(),
            Attr::Str(s) => self.str(s).parse().ok(),
        }
    }

    /// As [`Run::file_transfer_guid`].
    fn file_transfer_guid(&self, dict_index: i64) -> Option<&'a str> {
        match self.attribute(dict_index, FILE_TRANSFER_ATTRIBUTE)? {
            Attr::Str(s) => Some(self.str(s)),
            Attr::Int(..) => None,
        }
    }

    /// As [`AttributedBody::parts`].
    pub fn parts(&self) -> Vec<Part> {
        parts_of(
            self.text,
            self.runs
                .iter()
                .map(|&(idx, len)| (len, self.part_index(idx), self.file_transfer_guid(idx))),
        )
    }

    /// The owned body.
    pub fn to_body(&self) -> AttributedBody {
        let runs = self
            .runs
            .iter()
            .map(|&(idx, len)| Run {
                len_utf16: len,
                attributes: self
                    .attributes(idx)
                    .iter()
                    .map(|&(k, v)| {
                        let value = match v {
                            Attr::Str(s) => AttrValue::Str(self.str(s).to_owned()),
                            Attr::Int(objc_type, value) => AttrValue::Int { objc_type, value },
                        };
                        (self.str(k).to_owned(), value)
                    })
                    .collect(),
            })
            .collect();
        AttributedBody {
            text: self.text.to_owned(),
            runs,
            mutable: self.mutable,
        }
    }
}

/// Runs `f` on the fast path's reading of `bytes`: `Some` if it is an attributed string in the
/// layout Messages writes, `None` otherwise. Uses this thread's scratch tables.
pub fn with_decoded<R>(bytes: &[u8], f: impl FnOnce(Option<&FastBody<'_, '_>>) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let out = f(decode_with(bytes, &mut scratch).as_ref());
            scratch.trim();
            out
        }
        // Called from inside `f`: tables of its own.
        Err(_) => f(decode_with(bytes, &mut Scratch::default()).as_ref()),
    })
}

/// Reads `bytes` (see [`with_decoded`]) using `scratch`'s tables.
pub fn decode_with<'a, 's>(bytes: &'a [u8], scratch: &'s mut Scratch) -> Option<FastBody<'a, 's>> {
    if u32::try_from(bytes.len()).is_err() {
        return None;
    }
    scratch.clear();
    let mut r = Reader { bytes, pos: 0, scratch };
    let (text, mutable) = r.attributed_string()?;
    let Reader { scratch, .. } = r;
    let scratch: &'s Scratch = scratch;
    Some(FastBody {
        bytes,
        text,
        mutable,
        runs: &scratch.runs,
        dicts: &scratch.dicts,
        attrs: &scratch.attrs,
    })
}

struct Reader<'a, 's> {
    bytes: &'a [u8],
    pos: usize,
    scratch: &'s mut Scratch,
}

impl<'a> Reader<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn take(&mut self, n: usize) -> Option<Span> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len())?;
        let span = (self.pos as u32, end as u32);
        self.pos = end;
        Some(span)
    }

    fn slice(&self, span: Span) -> &'a [u8] {
        self.bytes.get(span.0 as usize..span.1 as usize).unwrap_or_default()
    }

    fn le<const N: usize>(&mut self) -> Option<[u8; N]> {
        let span = self.take(N)?;
        self.slice(span).try_into().ok()
    }

    /// An integer in the compact encoding.
    fn int(&mut self) -> Option<i64> {
        let b = self.peek()?;
        self.pos += 1;
        match b {
            TAG_INT16 => Some(i16::from_le_bytes(self.le()?) as i64),
            TAG_INT32 => Some(i32::from_le_bytes(self.le()?) as i64),
            TAG_FLOAT => Some(i64::from_le_bytes(self.le()?)),
            0x80..=0x91 => None,
            _ => Some(b as i8 as i64),
        }
    }

    fn length(&mut self) -> Option<usize> {
        let n = self.int()?;
        let n = usize::try_from(n).ok()?;
        (n <= self.bytes.len() - self.pos).then_some(n)
    }

    fn reference(&mut self) -> Option<usize> {
        let raw = self.int()?;
        usize::try_from(raw.checked_sub(REFERENCE_BASE)?).ok()
    }

    /// The table entry a back-reference points to.
    fn referenced(&mut self) -> Option<Entry> {
        let i = self.reference()?;
        self.scratch.table.get(i)
    }

    /// A shared string (new or a back-reference; nil is not accepted).
    fn shared_span(&mut self) -> Option<Span> {
        match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let n = self.length()?;
                let span = self.take(n)?;
                self.scratch.strings.push(span)?;
                Some(span)
            }
            TAG_NIL => None,
            _ => {
                let i = self.reference()?;
                self.scratch.strings.get(i)
            }
        }
    }

    /// A shared string's bytes.
    fn shared(&mut self) -> Option<&'a [u8]> {
        let span = self.shared_span()?;
        Some(self.slice(span))
    }

    /// A type encoding that must be `expected`.
    fn expect_type(&mut self, expected: &[u8]) -> Option<()> {
        (self.shared()? == expected).then_some(())
    }

    /// An integer of Objective-C type `ty`, converted as the generic decoder does.
    fn typed_int(&mut self, ty: u8) -> Option<i64> {
        let v = self.int()?;
        Some(match ty {
            b'C' | b'B' => v as u8 as i64,
            b'S' => v as u16 as i64,
            b'I' | b'L' => v as u32 as i64,
            b'c' | b's' | b'i' | b'l' | b'q' | b'Q' => v,
            _ => return None,
        })
    }

    /// The end of an object.
    fn end(&mut self) -> Option<()> {
        if self.peek()? != TAG_END {
            return None;
        }
        self.pos += 1;
        Some(())
    }

    /// A class (new or a back-reference); `None` inside for Nil.
    fn class(&mut self, depth: u32) -> Option<Option<Class>> {
        if depth > MAX_CLASS_DEPTH {
            return None;
        }
        match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let name = self.shared()?;
                let _version = self.int()?;
                let slot = self.scratch.table.push(Entry::Pending)?;
                let superclass = self.class(depth + 1)?;
                let class = Class::of(name, superclass);
                self.scratch.table.set(slot, Entry::Class(class));
                Some(Some(class))
            }
            TAG_NIL => {
                self.pos += 1;
                Some(None)
            }
            _ => match self.referenced()? {
                Entry::Class(c) => Some(Some(c)),
                _ => None,
            },
        }
    }

    /// After `TAG_NEW` of an object: its table slot and class.
    fn object_header(&mut self) -> Option<(usize, Class)> {
        let slot = self.scratch.table.push(Entry::Pending)?;
        let class = self.class(0)??;
        Some((slot, class))
    }

    /// The rest of an `NSString`: `+` bytes (UTF-8), end.
    fn string_body(&mut self, slot: usize) -> Option<(Span, &'a str)> {
        self.expect_type(b"+")?;
        let n = self.length()?;
        let span = self.take(n)?;
        let text = std::str::from_utf8(self.slice(span)).ok()?;
        self.end()?;
        self.scratch.table.set(slot, Entry::Str(span));
        Some((span, text))
    }

    /// The rest of an integer `NSNumber`: `*` its Objective-C type, the value, end.
    fn number_body(&mut self, slot: usize) -> Option<(char, i64)> {
        self.expect_type(b"*")?;
        let objc = match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let span = self.shared_span()?;
                self.scratch.table.push(Entry::CString(span))?;
                self.slice(span)
            }
            TAG_NIL => return None,
            _ => match self.referenced()? {
                Entry::CString(span) => self.slice(span),
                _ => return None,
            },
        };
        let objc_type = match objc.first() {
            Some(c) if INTEGER_TYPES.contains(c) => *c as char,
            Some(_) => 'q',
            None => 'i',
        };
        let ty = match self.shared()? {
            [t] if INTEGER_TYPES.contains(t) => *t,
            _ => return None,
        };
        let value = self.typed_int(ty)?;
        self.end()?;
        self.scratch.table.set(slot, Entry::Number(objc_type, value));
        Some((objc_type, value))
    }

    /// A dictionary key or value (`@`): a string, an integer number, or nil (`Ok(None)`).
    fn attribute_object(&mut self) -> Option<Option<Attr>> {
        match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let (slot, class) = self.object_header()?;
                match class {
                    Class::String | Class::MutableString => Some(Some(Attr::Str(self.string_body(slot)?.0))),
                    Class::Number => {
                        let (objc_type, value) = self.number_body(slot)?;
                        Some(Some(Attr::Int(objc_type, value)))
                    }
                    _ => None,
                }
            }
            TAG_NIL => {
                self.pos += 1;
                Some(None)
            }
            _ => match self.referenced()? {
                Entry::Str(span) => Some(Some(Attr::Str(span))),
                Entry::Number(objc_type, value) => Some(Some(Attr::Int(objc_type, value))),
                _ => None,
            },
        }
    }

    /// The rest of an `NSDictionary`: `i` count, then `@` key, `@` value … (nil values are
    /// left out, a key without a value is ignored), end. Returns its `attrs` range.
    fn dictionary_body(&mut self, slot: usize) -> Option<(u32, u32)> {
        self.expect_type(b"i")?;
        self.int()?;
        let start = u32::try_from(self.scratch.attrs.len()).ok()?;
        let mut key: Option<Span> = None;
        loop {
            if self.peek()? == TAG_END {
                self.pos += 1;
                break;
            }
            self.expect_type(b"@")?;
            let item = self.attribute_object()?;
            match key.take() {
                None => match item {
                    Some(Attr::Str(span)) => key = Some(span),
                    _ => return None,
                },
                Some(k) => {
                    if let Some(value) = item {
                        self.scratch.attrs.push((k, value));
                    }
                }
            }
        }
        let end = u32::try_from(self.scratch.attrs.len()).ok()?;
        self.scratch.table.set(slot, Entry::Dict(start, end));
        Some((start, end))
    }

    /// The whole stream: header, `@`, the attributed string, and nothing after it.
    /// Returns the text and whether the string is mutable; the runs are in the scratch tables.
    fn attributed_string(&mut self) -> Option<(&'a str, bool)> {
        if self.int()? != STREAM_VERSION || self.int()? != SIGNATURE.len() as i64 {
            return None;
        }
        let sig = self.take(SIGNATURE.len())?;
        if self.slice(sig) != SIGNATURE {
            return None;
        }
        self.int()?;
        self.expect_type(b"@")?;
        if self.peek()? != TAG_NEW {
            return None;
        }
        self.pos += 1;
        let (slot, class) = self.object_header()?;
        let mutable = match class {
            Class::MutableAttributed => true,
            Class::Attributed => false,
            _ => return None,
        };
        // The string.
        self.expect_type(b"@")?;
        if self.peek()? != TAG_NEW {
            return None;
        }
        self.pos += 1;
        let (string_slot, string_class) = self.object_header()?;
        if !matches!(string_class, Class::String | Class::MutableString) {
            return None;
        }
        let (_, text) = self.string_body(string_slot)?;
        // The runs and their dictionaries.
        loop {
            if self.peek()? == TAG_END {
                self.pos += 1;
                break;
            }
            let ty = self.shared()?;
            match ty {
                [a, b] if INTEGER_TYPES.contains(a) && INTEGER_TYPES.contains(b) => {
                    let idx = self.typed_int(*a)?;
                    let len = self.typed_int(*b)?;
                    self.scratch.runs.push((idx, len.max(0) as usize));
                }
                b"@" => {
                    let range = match self.peek()? {
                        TAG_NEW => {
                            self.pos += 1;
                            let (dict_slot, dict_class) = self.object_header()?;
                            if dict_class != Class::Dictionary {
                                return None;
                            }
                            Some(self.dictionary_body(dict_slot)?)
                        }
                        TAG_NIL => {
                            self.pos += 1;
                            None
                        }
                        _ => match self.referenced()? {
                            Entry::Dict(start, end) => Some((start, end)),
                            _ => return None,
                        },
                    };
                    if let (Some(&(idx, _)), Some((start, end))) = (self.scratch.runs.last(), range)
                        && !self.scratch.dicts.iter().any(|(i, _, _)| *i == idx)
                    {
                        self.scratch.dicts.push((idx, start, end));
                    }
                }
                _ => return None,
            }
        }
        self.scratch.table.set(slot, Entry::Object);
        if self.pos != self.bytes.len() {
            return None;
        }
        Some((text, mutable))
    }
}
