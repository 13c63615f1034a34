//! The spool log's frames: the unit written to, and read back from, a log segment.
//!
//! ```text
//! frame    = len:u32le  type:u8  payload[len]  crc:u32le
//! crc      = CRC-32 (IEEE) of len, type and payload
//! ```
//!
//! A frame whose length runs past the end of the file, whose CRC does not match, or whose
//! type is unknown ends the readable log: on open the writer cuts the file there (a torn
//! tail, see `docs/spool.md`). All integers are little-endian.
//!
//! Two frame types:
//! - **record**: a sealed record — its chain fields and what the spool indexes in binary
//!   (so recovery and delivery never parse JSON), then the canonical JSON byte for byte;
//! - **blob**: an attachment file's content with its SHA-256, written before the first record
//!   that names it.
//!
//! Encoding and decoding are pure; the files are handled by `segment.rs`.

use crate::api::record::{ArchiveRecord, RecordKind};

/// Bytes of a frame around its payload: length, type, CRC.
pub const OVERHEAD: usize = 4 + 1 + 4;
/// Frame type of a record.
pub const TYPE_RECORD: u8 = 1;
/// Frame type of an attachment file.
pub const TYPE_BLOB: u8 = 2;
/// Largest payload a frame may carry (a larger attachment is not captured: the record says so).
pub const MAX_PAYLOAD: u64 = u32::MAX as u64 - 64;

/// Where a record's source row lives, as far as the spool cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceTable {
    /// `message`.
    Message,
    /// `attachment`.
    Attachment,
    /// Anything else.
    Other,
}

impl SourceTable {
    /// From the record's `source.table`.
    pub fn of(table: &str) -> Self {
        match table {
            "message" => SourceTable::Message,
            "attachment" => SourceTable::Attachment,
            _ => SourceTable::Other,
        }
    }

    fn code(self) -> u8 {
        match self {
            SourceTable::Message => 1,
            SourceTable::Attachment => 2,
            SourceTable::Other => 0,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(SourceTable::Other),
            1 => Some(SourceTable::Message),
            2 => Some(SourceTable::Attachment),
            _ => None,
        }
    }

    /// The table's name (`other` for anything the spool does not track).
    pub fn name(self) -> &'static str {
        match self {
            SourceTable::Message => "message",
            SourceTable::Attachment => "attachment",
            SourceTable::Other => "other",
        }
    }
}

/// Every record kind, in the order of their codes in a frame (append only).
const KINDS: [RecordKind; 14] = [
    RecordKind::Message,
    RecordKind::Reply,
    RecordKind::Edit,
    RecordKind::Unsend,
    RecordKind::ReactionAdded,
    RecordKind::ReactionRemoved,
    RecordKind::Attachment,
    RecordKind::GroupRenamed,
    RecordKind::GroupMemberAdded,
    RecordKind::GroupMemberRemoved,
    RecordKind::GroupMemberLeft,
    RecordKind::GroupIconChanged,
    RecordKind::DeletionDetected,
    RecordKind::DecodeError,
];

fn kind_code(kind: RecordKind) -> u8 {
    KINDS.iter().position(|k| *k == kind).expect("every kind has a code") as u8
}

/// A record frame, borrowed from the bytes it was decoded from (or about to be encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFrame<'a> {
    /// Chain position.
    pub seq: u64,
    /// Event time, Apple-epoch nanoseconds.
    pub event_ns: i64,
    /// Kind.
    pub kind: RecordKind,
    /// `source.table`.
    pub table: SourceTable,
    /// `source.rowid`.
    pub rowid: i64,
    /// The record's hash.
    pub hash: [u8; 32],
    /// The previous record's hash.
    pub prev_hash: [u8; 32],
    /// The idempotency key.
    pub key: &'a str,
    /// `source.guid`.
    pub guid: &'a str,
    /// SHA-256s of the attachment files the record names and the spool captured.
    pub files: Vec<[u8; 32]>,
    /// The canonical JSON, exactly as sinks store it.
    pub json: &'a str,
}

impl<'a> RecordFrame<'a> {
    /// The frame of `record`, sealed at `seq` with `hash` after `prev_hash` into `json`; `files`
    /// are the attachment files of it the spool holds.
    pub fn of(
        record: &'a ArchiveRecord,
        seq: u64,
        hash: [u8; 32],
        prev_hash: [u8; 32],
        files: Vec<[u8; 32]>,
        json: &'a str,
    ) -> Self {
        RecordFrame {
            seq,
            event_ns: record.event_time_apple_ns,
            kind: record.kind,
            table: SourceTable::of(&record.source.table),
            rowid: record.source.rowid,
            hash,
            prev_hash,
            key: &record.idempotency_key,
            guid: &record.source.guid,
            files,
            json,
        }
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A record.
    Record(RecordFrame<'a>),
    /// An attachment file: its hash, and where its content starts within the frame's payload.
    Blob {
        /// SHA-256 of the content.
        sha256: [u8; 32],
        /// Offset of the content from the start of the frame.
        content_offset: usize,
        /// Content length.
        len: u64,
    },
}

/// Why bytes are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The bytes end before the frame does (more must be read, or the tail is torn).
    Incomplete {
        /// Bytes the whole frame needs.
        needed: usize,
    },
    /// The frame is damaged or not a frame at all (zeros, garbage, an unknown type).
    Corrupt,
}

fn put_u16(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v.min(u16::MAX as usize) as u16).to_le_bytes());
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    put_u16(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Start a frame of `kind` in `out`: returns where it starts, for [`finish`].
fn begin(out: &mut Vec<u8>, frame_type: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, frame_type]);
    start
}

/// Fill in the length and append the CRC of the frame that began at `start`.
fn finish(out: &mut Vec<u8>, start: usize) {
    let len = (out.len() - start - 5) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Append a record frame to `out`.
pub fn encode_record(out: &mut Vec<u8>, r: &RecordFrame<'_>) {
    let start = begin(out, TYPE_RECORD);
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.event_ns.to_le_bytes());
    out.push(kind_code(r.kind));
    out.push(r.table.code());
    out.extend_from_slice(&r.rowid.to_le_bytes());
    out.extend_from_slice(&r.hash);
    out.extend_from_slice(&r.prev_hash);
    put_str16(out, r.key);
    put_str16(out, r.guid);
    put_u16(out, r.files.len());
    for sha in r.files.iter().take(u16::MAX as usize) {
        out.extend_from_slice(sha);
    }
    out.extend_from_slice(&(r.json.len() as u32).to_le_bytes());
    out.extend_from_slice(r.json.as_bytes());
    finish(out, start);
}

/// Append a blob frame holding `content` to `out`.
pub fn encode_blob(out: &mut Vec<u8>, sha256: &[u8; 32], content: &[u8]) {
    let start = begin(out, TYPE_BLOB);
    out.extend_from_slice(sha256);
    out.extend_from_slice(content);
    finish(out, start);
}

/// The header of a blob frame whose `len` content bytes are streamed separately: the frame
/// is `header ++ content ++ crc`, with the CRC from [`BlobCrc`].
pub fn blob_header(sha256: &[u8; 32], len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + 32);
    out.extend_from_slice(&((len + 32) as u32).to_le_bytes());
    out.push(TYPE_BLOB);
    out.extend_from_slice(sha256);
    out
}

/// The CRC of a blob frame computed while its content streams (see [`blob_header`]).
pub struct BlobCrc(crc32fast::Hasher);

impl BlobCrc {
    /// Start with the frame's header.
    pub fn new(header: &[u8]) -> Self {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(header);
        BlobCrc(hasher)
    }

    /// More content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The trailer to write after the content.
    pub fn finish(self) -> [u8; 4] {
        self.0.finalize().to_le_bytes()
    }
}

/// How long the frame starting at `bytes` is, from its length field (None: fewer than 4
/// bytes, or a length no frame can have).
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as u64;
    (len <= MAX_PAYLOAD).then_some(len as usize + OVERHEAD)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u16(&mut self) -> Option<usize> {
        Some(u16::from_le_bytes(self.array()?) as usize)
    }
    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.array()?) as usize)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
    fn str16(&mut self) -> Option<&'a str> {
        let n = self.u16()?;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// Decode the frame at the start of `bytes` (which may hold more after it). Returns the frame
/// and its total length.
pub fn decode(bytes: &[u8]) -> Result<(Frame<'_>, usize), Invalid> {
    let Some(total) = frame_len(bytes) else {
        return Err(if bytes.len() < 4 {
            Invalid::Incomplete { needed: 4 }
        } else {
            Invalid::Corrupt
        });
    };
    if bytes.len() < total {
        return Err(Invalid::Incomplete { needed: total });
    }
    let (body, crc) = bytes[..total].split_at(total - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(Invalid::Corrupt);
    }
    let payload = &body[5..];
    let frame = match body[4] {
        TYPE_RECORD => Frame::Record(decode_record(payload).ok_or(Invalid::Corrupt)?),
        TYPE_BLOB => {
            let sha256: [u8; 32] = payload.get(..32).ok_or(Invalid::Corrupt)?.try_into().expect("32 bytes");
            Frame::Blob {
                sha256,
                content_offset: 5 + 32,
                len: (payload.len() - 32) as u64,
            }
        }
        _ => return Err(Invalid::Corrupt),
    };
    Ok((frame, total))
}

fn decode_record(payload: &[u8]) -> Option<RecordFrame<'_>> {
    let mut c = Cursor { bytes: payload, pos: 0 };
    let seq = c.u64()?;
    let event_ns = c.u64()? as i64;
    let kind = *KINDS.get(c.take(1)?[0] as usize)?;
    let table = SourceTable::from_code(c.take(1)?[0])?;
    let rowid = c.u64()? as i64;
    let hash = c.array()?;
    let prev_hash = c.array()?;
    let key = c.str16()?;
    let guid = c.str16()?;
    let n = c.u16()?;
    let mut files = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        files.push(c.array()?);
    }
    let len = c.u32()?;
    let json = std::str::from_utf8(c.take(len)?).ok()?;
    (c.pos == payload.len()).then_some(RecordFrame {
        seq,
        event_ns,
        kind,
        table,
        rowid,
        hash,
        prev_hash,
        key,
        guid,
        files,
        json,
    })
}

/// Lowercase hex of a hash.
pub fn to_hex(hash: &[u8; 32]) -> String {
    crate::api::record::sha256_hex(hash)
}

/// A lowercase hex SHA-256 as bytes (None when it is not one).
pub fn from_hex(hex_str: &str) -> Option<[u8; 32]> {
    if !crate::agent::spool::is_sha256_hex(hex_str) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(json: &str) -> RecordFrame<'_> {
        RecordFrame {
            seq: 42,
            event_ns: -5,
            kind: RecordKind::DeletionDetected,
            table: SourceTable::Attachment,
            rowid: 7,
            hash: [1; 32],
            prev_hash: [2; 32],
            key: "dev/G-1/0",
            guid: "G-1",
            files: vec![[3; 32], [4; 32]],
            json,
        }
    }

    #[test]
    fn records_and_blobs_round_trip_back_to_back() {
        let mut out = Vec::new();
        encode_blob(&mut out, &[9; 32], b"jpeg bytes");
        let record = sample("{\"k\":\"h\u{e9}\"}");
        encode_record(&mut out, &record);
        let (first, n) = decode(&out).unwrap();
        assert_eq!(
            first,
            Frame::Blob {
                sha256: [9; 32],
                content_offset: 37,
                len: 10
            }
        );
        assert_eq!(&out[37..47], b"jpeg bytes");
        let (second, m) = decode(&out[n..]).unwrap();
        assert_eq!(second, Frame::Record(record));
        assert_eq!(n + m, out.len());
    }

    #[test]
    fn every_kind_has_a_code_that_decodes_to_it() {
        for kind in KINDS {
            let mut out = Vec::new();
            encode_record(&mut out, &RecordFrame { kind, ..sample("{}") });
            match decode(&out).unwrap().0 {
                Frame::Record(r) => assert_eq!(r.kind, kind),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_streamed_blob_equals_an_encoded_one() {
        let content = b"0123456789";
        let header = blob_header(&[7; 32], content.len() as u64);
        let mut crc = BlobCrc::new(&header);
        crc.update(&content[..4]);
        crc.update(&content[4..]);
        let mut streamed = header;
        streamed.extend_from_slice(content);
        streamed.extend_from_slice(&crc.finish());
        let mut encoded = Vec::new();
        encode_blob(&mut encoded, &[7; 32], content);
        assert_eq!(streamed, encoded);
    }

    #[test]
    fn torn_damaged_and_empty_bytes_are_not_frames() {
        let mut out = Vec::new();
        encode_record(&mut out, &sample("{}"));
        for cut in [0, 3, 4, 10, out.len() - 1] {
            assert!(
                matches!(decode(&out[..cut]), Err(Invalid::Incomplete { .. })),
                "cut at {cut}"
            );
        }
        for at in [0usize, 4, 20, out.len() - 6, out.len() - 1] {
            let mut damaged = out.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "flipped byte {at}");
        }
        assert_eq!(decode(&[0u8; 64]), Err(Invalid::Corrupt), "zeros are not a frame");
        assert_eq!(decode(&[0xffu8; 64]), Err(Invalid::Corrupt), "nor is a huge length");
    }

    #[test]
    fn hashes_convert_to_and_from_hex() {
        let hash = [0xab; 32];
        assert_eq!(from_hex(&to_hex(&hash)), Some(hash));
        assert_eq!(from_hex("AB"), None);
        assert_eq!(from_hex(&"AB".repeat(32)), None, "uppercase is not the spool's form");
    }
}
