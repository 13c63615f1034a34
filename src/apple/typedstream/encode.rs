//! The typedstream encoder (used by the device simulator). It writes what Messages writes:
//! the same class versions, the same sharing of type encodings, classes, C strings and
//! dictionary keys, so the bytes match real blobs for the same content.

use std::collections::HashMap;

use super::attributed::{AttrValue, AttributedBody, utf16_len};
use super::{REFERENCE_BASE, SIGNATURE, STREAM_VERSION, SYSTEM_VERSION, TAG_END, TAG_FLOAT, TAG_INT16, TAG_INT32};
use super::{TAG_NEW, TAG_NIL};

/// Class chains as Messages writes them: (name, version), most derived first.
const MUTABLE_ATTRIBUTED: &[(&str, i64)] = &[
    ("NSMutableAttributedString", 0),
    ("NSAttributedString", 0),
    ("NSObject", 0),
];
const ATTRIBUTED: &[(&str, i64)] = &[("NSAttributedString", 0), ("NSObject", 0)];
const MUTABLE_STRING: &[(&str, i64)] = &[("NSMutableString", 1), ("NSString", 1), ("NSObject", 0)];
const STRING: &[(&str, i64)] = &[("NSString", 1), ("NSObject", 0)];
const DICTIONARY: &[(&str, i64)] = &[("NSDictionary", 0), ("NSObject", 0)];
const NUMBER: &[(&str, i64)] = &[("NSNumber", 0), ("NSValue", 0), ("NSObject", 0)];

/// A typedstream writer keeping the tables a reader rebuilds.
#[derive(Default)]
pub struct Writer {
    out: Vec<u8>,
    shared: HashMap<Vec<u8>, i64>,
    table_len: i64,
    classes: HashMap<&'static str, i64>,
    c_strings: HashMap<Vec<u8>, i64>,
    keys: HashMap<String, i64>,
}

impl Writer {
    /// A writer with the stream header already written.
    pub fn new() -> Self {
        let mut w = Writer::default();
        w.int(STREAM_VERSION);
        w.int(SIGNATURE.len() as i64);
        w.out.extend_from_slice(SIGNATURE);
        w.int(SYSTEM_VERSION);
        w
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// An integer in the compact encoding.
    pub fn int(&mut self, v: i64) {
        if (REFERENCE_BASE..=127).contains(&v) {
            self.out.push(v as i8 as u8);
        } else if let Ok(v) = i16::try_from(v) {
            self.out.push(TAG_INT16);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.out.push(TAG_INT32);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.push(TAG_FLOAT);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn reference(&mut self, index: i64) {
        self.int(index + REFERENCE_BASE);
    }

    /// A shared string (type encoding or class name): new the first time, then a reference.
    pub fn shared(&mut self, s: &[u8]) {
        if let Some(&i) = self.shared.get(s) {
            self.reference(i);
        } else {
            self.out.push(TAG_NEW);
            self.int(s.len() as i64);
            self.out.extend_from_slice(s);
            self.shared.insert(s.to_vec(), self.shared.len() as i64);
        }
    }

    fn class(&mut self, chain: &[(&'static str, i64)]) {
        let Some(((name, version), rest)) = chain.split_first() else {
            self.out.push(TAG_NIL);
            return;
        };
        if let Some(&i) = self.classes.get(name) {
            self.reference(i);
            return;
        }
        self.out.push(TAG_NEW);
        self.shared(name.as_bytes());
        self.int(*version);
        self.classes.insert(name, self.table_len);
        self.table_len += 1;
        self.class(rest);
    }

    fn new_object(&mut self, chain: &[(&'static str, i64)]) -> i64 {
        self.out.push(TAG_NEW);
        let id = self.table_len;
        self.table_len += 1;
        self.class(chain);
        id
    }

    fn c_string(&mut self, s: &[u8]) {
        if let Some(&i) = self.c_strings.get(s) {
            self.reference(i);
            return;
        }
        self.out.push(TAG_NEW);
        self.c_strings.insert(s.to_vec(), self.table_len);
        self.table_len += 1;
        self.shared(s);
    }

    fn string_object(&mut self, chain: &[(&'static str, i64)], text: &str) -> i64 {
        let id = self.new_object(chain);
        self.shared(b"+");
        self.int(text.len() as i64);
        self.out.extend_from_slice(text.as_bytes());
        self.out.push(TAG_END);
        id
    }

    fn key(&mut self, key: &str) {
        if let Some(&i) = self.keys.get(key) {
            self.reference(i);
        } else {
            let id = self.string_object(STRING, key);
            self.keys.insert(key.to_owned(), id);
        }
    }

    fn number(&mut self, objc_type: char, value: i64) {
        self.new_object(NUMBER);
        let mut buf = [0u8; 4];
        let ty = objc_type.encode_utf8(&mut buf).as_bytes().to_vec();
        self.shared(b"*");
        self.c_string(&ty);
        self.shared(&ty);
        self.int(value);
        self.out.push(TAG_END);
    }

    fn dictionary(&mut self, attributes: &[(String, AttrValue)]) {
        self.new_object(DICTIONARY);
        self.shared(b"i");
        self.int(attributes.len() as i64);
        for (k, v) in attributes {
            self.shared(b"@");
            self.key(k);
            self.shared(b"@");
            match v {
                AttrValue::Str(s) => {
                    self.string_object(STRING, s);
                }
                AttrValue::Int { objc_type, value } => self.number(*objc_type, *value),
                AttrValue::Other(_) => self.out.push(TAG_NIL),
            }
        }
        self.out.push(TAG_END);
    }
}

/// Encodes an attributed body as Messages does.
pub fn encode_attributed(body: &AttributedBody) -> Vec<u8> {
    let mut w = Writer::new();
    w.shared(b"@");
    w.new_object(if body.mutable { MUTABLE_ATTRIBUTED } else { ATTRIBUTED });
    w.shared(b"@");
    w.string_object(if body.mutable { MUTABLE_STRING } else { STRING }, &body.text);
    let mut dicts: Vec<&[(String, AttrValue)]> = Vec::new();
    let runs: Vec<_> = if body.runs.is_empty() {
        vec![super::Run {
            len_utf16: utf16_len(&body.text),
            attributes: Vec::new(),
        }]
    } else {
        body.runs.clone()
    };
    for run in &runs {
        let existing = dicts.iter().position(|d| *d == run.attributes.as_slice());
        let (index, new) = match existing {
            Some(i) => (i + 1, false),
            None => {
                dicts.push(&run.attributes);
                (dicts.len(), true)
            }
        };
        w.shared(b"iI");
        w.int(index as i64);
        w.int(run.len_utf16 as i64);
        if new {
            w.shared(b"@");
            w.dictionary(&run.attributes);
        }
    }
    w.out.push(TAG_END);
    w.finish()
}
