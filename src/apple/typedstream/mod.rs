//! Apple's typedstream (the NeXTSTEP `NXTypedStream` archive written by `NSArchiver`), as used
//! for `message.attributedBody`: format facts, a clean-room decoder to a generic object graph,
//! the `NSAttributedString` model the reader needs, and the encoder the simulator uses.
//!
//! The format, as learned from the published blobs and public descriptions:
//! - Header: an integer stream version (4), the length-prefixed signature `streamtyped`, an
//!   integer system version (1000).
//! - Integers are one signed byte when in `-110..=127`; otherwise a tag byte — [`TAG_INT16`]
//!   (two bytes little-endian follow) or [`TAG_INT32`] (four bytes) — precedes them.
//!   [`TAG_FLOAT`] precedes a raw IEEE float/double (or, for `q`/`Q`, a raw 64-bit integer).
//! - Then values, each group introduced by its Objective-C type encoding (a "shared string"):
//!   `@` object, `#` class, `*` C string, `+` length-prefixed bytes, `c s i l q` and unsigned
//!   capitals for integers, `f d` floats, `[N t]` arrays, `{name=…}` structs, `:` selectors,
//!   `%` atoms.
//! - [`TAG_NEW`] introduces something written for the first time, [`TAG_NIL`] a null, and any
//!   other integer `n` is a back-reference to entry `n - REFERENCE_BASE` of a table: one table
//!   for shared strings (type encodings, class names), one for objects, classes and C strings.
//! - An object is `NEW`, its class (`NEW` name version superclass… ending in `NIL`, or a
//!   reference), then groups of typed values until [`TAG_END`].
//! - `NSAttributedString` writes its string object, then runs: `iI` (attribute-dictionary
//!   index, run length in UTF-16 units) followed, the first time an index appears, by the
//!   `NSDictionary`. `NSString` writes `+` (UTF-8 bytes); `NSDictionary` writes `i` (count) and
//!   that many key/value objects; `NSNumber` writes `*` (its Objective-C type) and the value.

pub mod attributed;
pub mod decode;
pub mod encode;
pub mod fast;
mod graph_text;

pub use attributed::{AttrValue, AttributedBody, Part, Run, parts_from_typedstream};
pub use decode::{DecodeError, Decoded, Object, Value};

/// The stream version Messages writes.
pub const STREAM_VERSION: i64 = 4;
/// The signature that follows the version.
pub const SIGNATURE: &[u8] = b"streamtyped";
/// The system version Messages writes.
pub const SYSTEM_VERSION: i64 = 1000;

/// A two-byte little-endian integer follows.
pub const TAG_INT16: u8 = 0x81;
/// A four-byte little-endian integer follows.
pub const TAG_INT32: u8 = 0x82;
/// A raw floating-point value (or a 64-bit integer) follows.
pub const TAG_FLOAT: u8 = 0x83;
/// Something new (object, class, string) follows.
pub const TAG_NEW: u8 = 0x84;
/// A null object, class or string.
pub const TAG_NIL: u8 = 0x85;
/// The end of an object's values.
pub const TAG_END: u8 = 0x86;
/// Back-reference `n` is written as the integer `n + REFERENCE_BASE` (so 0 is byte 0x92).
pub const REFERENCE_BASE: i64 = -110;

/// The attribute key whose `NSNumber` value is the message part a run belongs to.
pub const PART_ATTRIBUTE: &str = "__kIMMessagePartAttributeName";
/// The attribute key whose `NSString` value is the GUID of the attachment shown at a U+FFFC.
pub const FILE_TRANSFER_ATTRIBUTE: &str = "__kIMFileTransferGUIDAttributeName";
/// The attribute key for the base writing direction (an `NSNumber`, `q`).
pub const WRITING_DIRECTION_ATTRIBUTE: &str = "__kIMBaseWritingDirectionAttributeName";
/// The object replacement character that marks an attachment's place in the text.
pub const OBJECT_REPLACEMENT: char = '\u{FFFC}';

#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod tests;

/// The directory of the real Apple blobs shipped beside the checkout (tests only).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/apple")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()))
}
