//! A clean-room typedstream decoder producing a generic object graph. It never panics and never
//! allocates more than the input can justify: every length is checked against the bytes left,
//! and nesting is bounded.

use super::{REFERENCE_BASE, SIGNATURE, TAG_END, TAG_FLOAT, TAG_INT16, TAG_INT32, TAG_NEW, TAG_NIL};

/// Deepest nesting of objects and types accepted.
const MAX_DEPTH: usize = 64;

/// Why a typedstream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes ended inside a value.
    #[error("typedstream truncated at byte {0}")]
    Truncated(usize),
    /// The header is not `streamtyped`.
    #[error("not a typedstream (bad header at byte {0})")]
    BadHeader(usize),
    /// A byte that cannot start what was expected there.
    #[error("unexpected byte 0x{byte:02x} at byte {offset} (expected {expected})")]
    Unexpected {
        /// Where.
        offset: usize,
        /// The byte found.
        byte: u8,
        /// What was expected.
        expected: &'static str,
    },
    /// A back-reference to an entry that does not exist or is of another kind.
    #[error("invalid reference {reference} at byte {offset}")]
    BadReference {
        /// Where.
        offset: usize,
        /// The reference number.
        reference: i64,
    },
    /// A type encoding that cannot be parsed.
    #[error("invalid type encoding {encoding:?} at byte {offset}")]
    BadType {
        /// Where.
        offset: usize,
        /// The encoding (lossy UTF-8).
        encoding: String,
    },
    /// A length that is negative or longer than the remaining input.
    #[error("invalid length {length} at byte {offset}")]
    BadLength {
        /// Where.
        offset: usize,
        /// The length read.
        length: i64,
    },
    /// Objects or types nested deeper than the decoder accepts.
    #[error("nesting deeper than {MAX_DEPTH} at byte {0}")]
    TooDeep(usize),
    /// The blob decoded but holds no `NSString` text.
    #[error("the typedstream holds no text (no NSString or NSAttributedString)")]
    NoText,
    /// The string's bytes are not UTF-8.
    #[error("the text is not valid UTF-8: {0}")]
    InvalidUtf8(String),
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any integer type (unsigned 64-bit values are stored bit for bit).
    Int(i64),
    /// `f` or `d`.
    Float(f64),
    /// `+`: length-prefixed bytes.
    Bytes(Vec<u8>),
    /// `*`: a C string, or None for NULL.
    CString(Option<Vec<u8>>),
    /// `%` atom or `:` selector.
    Atom(Option<Vec<u8>>),
    /// `@`: index into [`Decoded::objects`], or None for nil.
    Object(Option<usize>),
    /// `#`: a class name, or None for Nil.
    Class(Option<String>),
    /// `[N t]`.
    Array(Vec<Value>),
    /// `{name=…}`.
    Struct(Vec<Value>),
}

/// A decoded object: its class chain and the groups of values it wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object {
    /// The class, then its superclasses, most derived first.
    pub classes: Vec<String>,
    /// Each group of values the object wrote, in order (one group per type encoding).
    pub groups: Vec<Vec<Value>>,
}

impl Object {
    /// Whether the object is an instance of `class` or a subclass of it.
    pub fn is_a(&self, class: &str) -> bool {
        self.classes.iter().any(|c| c == class)
    }
}

/// A whole decoded stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// Every object, in the order they were introduced.
    pub objects: Vec<Object>,
    /// The values written at the top level.
    pub top_level: Vec<Value>,
}

impl Decoded {
    /// The object a value refers to, if it is a non-nil object.
    pub fn object(&self, value: &Value) -> Option<&Object> {
        match value {
            Value::Object(Some(i)) => self.objects.get(*i),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Type {
    Object,
    Class,
    CString,
    Atom,
    Bytes,
    Int { bits: u8, signed: bool },
    Float { double: bool },
    CharArray(usize),
    Array(usize, Box<Type>),
    Struct(Vec<Type>),
}

#[derive(Debug, Clone)]
enum Entry {
    Object(usize),
    Class(usize),
    CString(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Class {
    name: String,
    superclass: Option<usize>,
}

/// Decodes a typedstream into its object graph.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut reader = Reader {
        bytes,
        pos: 0,
        strings: Vec::new(),
        table: Vec::new(),
        classes: Vec::new(),
        decoded: Decoded::default(),
    };
    reader.header()?;
    while reader.pos < bytes.len() {
        let start = reader.pos;
        let types = reader.type_encoding(0)?;
        for ty in &types {
            let value = reader.value(ty, 0)?;
            reader.decoded.top_level.push(value);
        }
        if reader.pos == start {
            break;
        }
    }
    Ok(reader.decoded)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    strings: Vec<Vec<u8>>,
    table: Vec<Entry>,
    classes: Vec<Class>,
    decoded: Decoded,
}

impl Reader<'_> {
    fn header(&mut self) -> Result<(), DecodeError> {
        let version = self.int()?;
        let len = self.int()?;
        if version != super::STREAM_VERSION || len != SIGNATURE.len() as i64 {
            return Err(DecodeError::BadHeader(0));
        }
        let sig = self.take(SIGNATURE.len())?;
        if sig != SIGNATURE {
            return Err(DecodeError::BadHeader(1));
        }
        let _system = self.int()?;
        Ok(())
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated(self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated(self.bytes.len()))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// An integer in typedstream's compact encoding.
    fn int(&mut self) -> Result<i64, DecodeError> {
        let offset = self.pos;
        let b = self.peek()?;
        self.pos += 1;
        match b {
            TAG_INT16 => Ok(i16::from_le_bytes(self.le()?) as i64),
            TAG_INT32 => Ok(i32::from_le_bytes(self.le()?) as i64),
            TAG_FLOAT => Ok(i64::from_le_bytes(self.le()?)),
            0x80..=0x91 => Err(DecodeError::Unexpected {
                offset,
                byte: b,
                expected: "an integer",
            }),
            _ => Ok(b as i8 as i64),
        }
    }

    fn length(&mut self) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.int()?;
        if n < 0 || n as u64 > (self.bytes.len() - self.pos) as u64 {
            return Err(DecodeError::BadLength { offset, length: n });
        }
        Ok(n as usize)
    }

    fn reference(&mut self, len: usize) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let raw = self.int()?;
        let idx = raw - REFERENCE_BASE;
        if idx < 0 || idx as u64 >= len as u64 {
            return Err(DecodeError::BadReference { offset, reference: raw });
        }
        Ok(idx as usize)
    }

    /// A shared string (type encodings, class names): new, nil or a back-reference. Returns
    /// its index in the shared-string table.
    fn shared_index(&mut self) -> Result<Option<usize>, DecodeError> {
        match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let n = self.length()?;
                let s = self.take(n)?.to_vec();
                self.strings.push(s);
                Ok(Some(self.strings.len() - 1))
            }
            TAG_NIL => {
                self.pos += 1;
                Ok(None)
            }
            _ => Ok(Some(self.reference(self.strings.len())?)),
        }
    }

    /// A shared string's bytes.
    fn shared_string(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        Ok(self.shared_index()?.map(|i| self.strings[i].clone()))
    }

    fn type_encoding(&mut self, depth: usize) -> Result<Vec<Type>, DecodeError> {
        let offset = self.pos;
        let Some(idx) = self.shared_index()? else {
            return Err(DecodeError::Unexpected {
                offset,
                byte: TAG_NIL,
                expected: "a type encoding",
            });
        };
        let enc = &self.strings[idx];
        let bad = || DecodeError::BadType {
            offset,
            encoding: String::from_utf8_lossy(enc).into_owned(),
        };
        let mut i = 0;
        let mut types = Vec::new();
        while i < enc.len() {
            types.push(parse_type(enc, &mut i, depth).ok_or_else(bad)?);
        }
        if types.is_empty() {
            return Err(bad());
        }
        Ok(types)
    }

    fn value(&mut self, ty: &Type, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(self.pos));
        }
        Ok(match ty {
            Type::Object => Value::Object(self.object(depth + 1)?),
            Type::Class => Value::Class(self.class(depth + 1)?.map(|c| self.classes[c].name.clone())),
            Type::CString => Value::CString(self.c_string()?),
            Type::Atom => Value::Atom(self.shared_string()?),
            Type::Bytes => {
                let n = self.length()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            Type::Int { bits, signed } => {
                let v = self.int()?;
                Value::Int(match (bits, signed) {
                    (8, false) => v as u8 as i64,
                    (16, false) => v as u16 as i64,
                    (32, false) => v as u32 as i64,
                    _ => v,
                })
            }
            Type::Float { double } => {
                if self.peek()? == TAG_FLOAT {
                    self.pos += 1;
                    if *double {
                        Value::Float(f64::from_le_bytes(self.le()?))
                    } else {
                        Value::Float(f32::from_le_bytes(self.le()?) as f64)
                    }
                } else {
                    Value::Float(self.int()? as f64)
                }
            }
            Type::CharArray(n) => Value::Bytes(self.take(*n)?.to_vec()),
            Type::Array(n, inner) => {
                // Every element takes at least one byte: refuse counts the input cannot hold.
                if *n > self.bytes.len() - self.pos {
                    return Err(DecodeError::BadLength {
                        offset: self.pos,
                        length: *n as i64,
                    });
                }
                let mut items = Vec::with_capacity(*n);
                for _ in 0..*n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            Type::Struct(fields) => {
                let mut items = Vec::with_capacity(fields.len());
                for f in fields {
                    items.push(self.value(f, depth + 1)?);
                }
                Value::Struct(items)
            }
        })
    }

    fn c_string(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let offset = self.pos;
                let s = self.shared_string()?.ok_or(DecodeError::Unexpected {
                    offset,
                    byte: TAG_NIL,
                    expected: "a string",
                })?;
                self.table.push(Entry::CString(s.clone()));
                Ok(Some(s))
            }
            TAG_NIL => {
                self.pos += 1;
                Ok(None)
            }
            _ => {
                let offset = self.pos;
                let i = self.reference(self.table.len())?;
                match &self.table[i] {
                    Entry::CString(s) => Ok(Some(s.clone())),
                    _ => Err(DecodeError::BadReference {
                        offset,
                        reference: i as i64 + REFERENCE_BASE,
                    }),
                }
            }
        }
    }

    fn class(&mut self, depth: usize) -> Result<Option<usize>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(self.pos));
        }
        match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let offset = self.pos;
                let name = self.shared_string()?.ok_or(DecodeError::Unexpected {
                    offset,
                    byte: TAG_NIL,
                    expected: "a class name",
                })?;
                let _version = self.int()?;
                let id = self.classes.len();
                self.classes.push(Class {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    superclass: None,
                });
                self.table.push(Entry::Class(id));
                let superclass = self.class(depth + 1)?;
                self.classes[id].superclass = superclass;
                Ok(Some(id))
            }
            TAG_NIL => {
                self.pos += 1;
                Ok(None)
            }
            _ => {
                let offset = self.pos;
                let i = self.reference(self.table.len())?;
                match self.table[i] {
                    Entry::Class(c) => Ok(Some(c)),
                    _ => Err(DecodeError::BadReference {
                        offset,
                        reference: i as i64 + REFERENCE_BASE,
                    }),
                }
            }
        }
    }

    fn class_chain(&self, mut class: Option<usize>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(c) = class {
            if out.len() > self.classes.len() {
                break; // a cycle cannot be built by `class`, but stay bounded anyway
            }
            out.push(self.classes[c].name.clone());
            class = self.classes[c].superclass;
        }
        out
    }

    fn object(&mut self, depth: usize) -> Result<Option<usize>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(self.pos));
        }
        match self.peek()? {
            TAG_NEW => {
                self.pos += 1;
                let id = self.decoded.objects.len();
                self.decoded.objects.push(Object::default());
                self.table.push(Entry::Object(id));
                let class = self.class(depth + 1)?;
                self.decoded.objects[id].classes = self.class_chain(class);
                loop {
                    if self.peek()? == TAG_END {
                        self.pos += 1;
                        break;
                    }
                    let types = self.type_encoding(depth)?;
                    let mut group = Vec::with_capacity(types.len());
                    for ty in &types {
                        group.push(self.value(ty, depth + 1)?);
                    }
                    self.decoded.objects[id].groups.push(group);
                }
                Ok(Some(id))
            }
            TAG_NIL => {
                self.pos += 1;
                Ok(None)
            }
            _ => {
                let offset = self.pos;
                let i = self.reference(self.table.len())?;
                match self.table[i] {
                    Entry::Object(o) => Ok(Some(o)),
                    _ => Err(DecodeError::BadReference {
                        offset,
                        reference: i as i64 + REFERENCE_BASE,
                    }),
                }
            }
        }
    }
}

/// Parses one type from an Objective-C type encoding.
fn parse_type(enc: &[u8], i: &mut usize, depth: usize) -> Option<Type> {
    if depth > MAX_DEPTH {
        return None;
    }
    let c = *enc.get(*i)?;
    *i += 1;
    Some(match c {
        b'@' => Type::Object,
        b'#' => Type::Class,
        b'*' => Type::CString,
        b'%' | b':' => Type::Atom,
        b'+' => Type::Bytes,
        b'c' | b'C' | b'B' => Type::Int {
            bits: 8,
            signed: c == b'c',
        },
        b's' | b'S' => Type::Int {
            bits: 16,
            signed: c == b's',
        },
        b'i' | b'I' | b'l' | b'L' => Type::Int {
            bits: 32,
            signed: c == b'i' || c == b'l',
        },
        b'q' | b'Q' => Type::Int {
            bits: 64,
            signed: c == b'q',
        },
        b'f' => Type::Float { double: false },
        b'd' => Type::Float { double: true },
        b'[' => {
            let start = *i;
            while enc.get(*i)?.is_ascii_digit() {
                *i += 1;
            }
            let n: usize = std::str::from_utf8(&enc[start..*i]).ok()?.parse().ok()?;
            let inner = parse_type(enc, i, depth + 1)?;
            if *enc.get(*i)? != b']' {
                return None;
            }
            *i += 1;
            match inner {
                Type::Int { bits: 8, .. } => Type::CharArray(n),
                other => Type::Array(n, Box::new(other)),
            }
        }
        b'{' => {
            while *enc.get(*i)? != b'=' {
                *i += 1;
            }
            *i += 1;
            let mut fields = Vec::new();
            while *enc.get(*i)? != b'}' {
                fields.push(parse_type(enc, i, depth + 1)?);
            }
            *i += 1;
            Type::Struct(fields)
        }
        _ => return None,
    })
}
