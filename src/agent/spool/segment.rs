//! Log segments: `<spool>/log/<first_seq>.seg`, each a 32-byte header followed by frames
//! (`frame.rs`). Segments are only ever appended to; compaction deletes whole segments.
//!
//! ```text
//! header = "CFSPLOG1"  first_seq:u64le  first_pos:u64le  version:u32le  crc:u32le
//! ```
//!
//! `first_seq` is the sequence number the segment's first record has (or will have);
//! `first_pos` is the log position of its first frame: positions count frame bytes since the
//! spool was created, across segments, so the distance between two positions is the bytes
//! between them whatever segments they are in.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{self, Frame, Invalid, RecordFrame};

/// Bytes of a segment's header.
pub const HEADER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"CFSPLOG1";
const VERSION: u32 = 1;
const SUFFIX: &str = ".seg";
/// Frames up to this size are read whole into the scanner's buffer; larger blob frames are
/// checked by streaming their CRC, so a large attachment never needs its size in memory.
const WHOLE_FRAME_MAX: usize = 4 << 20;
/// The scanner's read size.
const READ_CHUNK: usize = 256 << 10;

/// What a segment's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Log position of its first frame.
    pub first_pos: u64,
}

/// The file name of the segment whose first record is `first_seq`.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

/// The segments in `dir`, by first sequence number.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn encode_header(h: &Header) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&h.first_seq.to_le_bytes());
    out[16..24].copy_from_slice(&h.first_pos.to_le_bytes());
    out[24..28].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Read and check a segment's header.
pub fn read_header(file: &File, path: &Path) -> io::Result<Header> {
    let mut buf = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut buf, 0).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: cannot read the segment header: {e}", path.display()),
        )
    })?;
    let crc = u32::from_le_bytes(buf[28..].try_into().expect("4 bytes"));
    let version = u32::from_le_bytes(buf[24..28].try_into().expect("4 bytes"));
    if &buf[..8] != MAGIC || crc32fast::hash(&buf[..28]) != crc || version != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a spool log segment of version {VERSION}", path.display()),
        ));
    }
    Ok(Header {
        first_seq: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        first_pos: u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes")),
    })
}

/// Create a new segment with its header, durably (the file and the directory entry), so a
/// commit into it can rely on the file being there after a crash.
pub fn create(dir: &Path, header: Header) -> io::Result<(File, PathBuf)> {
    let path = dir.join(file_name(header.first_seq));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    file.write_all_at(&encode_header(&header), 0)?;
    file.sync_all()?;
    super::sync_dir(dir)?;
    Ok((file, path))
}

/// One frame found by a [`Scanner`].
#[derive(Debug)]
pub struct Item<'a> {
    /// File offset of the frame.
    pub offset: u64,
    /// Its total length.
    pub len: u64,
    /// What it is.
    pub frame: Scanned<'a>,
}

/// A scanned frame.
#[derive(Debug)]
pub enum Scanned<'a> {
    /// A record, borrowed from the scanner's buffer.
    Record(RecordFrame<'a>),
    /// An attachment file, by position in the segment file.
    Blob {
        /// SHA-256 of the content.
        sha256: [u8; 32],
        /// File offset of the content.
        content_offset: u64,
        /// Content length.
        len: u64,
    },
}

/// How a scan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// At `limit`, or at the end of the file exactly after a frame.
    Clean,
    /// A frame starting at this offset is incomplete or damaged: a torn tail (or, before the
    /// committed end, corruption).
    Torn(u64),
}

/// Reads a segment's frames in order, checking each one's CRC.
pub struct Scanner<'f> {
    file: &'f File,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
    /// Next frame within `buf`.
    at: usize,
    /// Stop here (the committed end, or the file's length).
    limit: u64,
    end: Option<End>,
}

impl<'f> Scanner<'f> {
    /// Scan `file` from `offset` up to `limit` (exclusive).
    pub fn new(file: &'f File, offset: u64, limit: u64) -> Self {
        Scanner {
            file,
            base: offset,
            buf: Vec::new(),
            at: 0,
            limit,
            end: None,
        }
    }

    /// Where the next frame starts.
    pub fn offset(&self) -> u64 {
        self.base + self.at as u64
    }

    /// How the scan ended (None while frames remain).
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// Make `buf[at..]` hold at least `want` bytes (or everything up to the limit).
    fn fill(&mut self, want: usize) -> io::Result<()> {
        let have = self.buf.len() - self.at;
        if have >= want {
            return Ok(());
        }
        self.buf.drain(..self.at);
        self.base += self.at as u64;
        self.at = 0;
        let file_end = self.limit;
        let mut pos = self.base + self.buf.len() as u64;
        let target = want.max(READ_CHUNK);
        while self.buf.len() < target && pos < file_end {
            let n = (target - self.buf.len()).min((file_end - pos) as usize);
            let old = self.buf.len();
            self.buf.resize(old + n, 0);
            let read = self.file.read_at(&mut self.buf[old..], pos)?;
            self.buf.truncate(old + read);
            if read == 0 {
                break;
            }
            pos += read as u64;
        }
        Ok(())
    }

    /// The next frame, or None at the end (see [`Scanner::end`]).
    pub fn next_frame(&mut self) -> io::Result<Option<Item<'_>>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let offset = self.offset();
        if offset >= self.limit {
            self.end = Some(End::Clean);
            return Ok(None);
        }
        self.fill(4)?;
        let Some(total) = frame::frame_len(&self.buf[self.at..]) else {
            self.end = Some(End::Torn(offset));
            return Ok(None);
        };
        if offset + total as u64 > self.limit {
            self.end = Some(End::Torn(offset));
            return Ok(None);
        }
        if total > WHOLE_FRAME_MAX {
            return self.large_blob(offset, total);
        }
        self.fill(total)?;
        let at = self.at;
        match frame::decode(&self.buf[at..]) {
            Ok((frame, len)) => {
                self.at += len;
                let frame = match frame {
                    Frame::Record(r) => Scanned::Record(r),
                    Frame::Blob {
                        sha256,
                        content_offset,
                        len: content_len,
                    } => Scanned::Blob {
                        sha256,
                        content_offset: offset + content_offset as u64,
                        len: content_len,
                    },
                };
                Ok(Some(Item {
                    offset,
                    len: len as u64,
                    frame,
                }))
            }
            Err(Invalid::Incomplete { .. } | Invalid::Corrupt) => {
                self.end = Some(End::Torn(offset));
                Ok(None)
            }
        }
    }

    /// A frame too large for the buffer: only a blob may be this large; its CRC is checked by
    /// streaming the file.
    fn large_blob(&mut self, offset: u64, total: usize) -> io::Result<Option<Item<'_>>> {
        self.fill(5 + 32)?;
        let head = &self.buf[self.at..];
        if head.len() < 37 || head[4] != frame::TYPE_BLOB {
            self.end = Some(End::Torn(offset));
            return Ok(None);
        }
        let sha256: [u8; 32] = head[5..37].try_into().expect("32 bytes");
        let mut crc = crc32fast::Hasher::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        let body_end = offset + total as u64 - 4;
        let mut pos = offset;
        while pos < body_end {
            let n = ((body_end - pos) as usize).min(chunk.len());
            self.file.read_exact_at(&mut chunk[..n], pos)?;
            crc.update(&chunk[..n]);
            pos += n as u64;
        }
        let mut stored = [0u8; 4];
        self.file.read_exact_at(&mut stored, body_end)?;
        if crc.finalize() != u32::from_le_bytes(stored) {
            self.end = Some(End::Torn(offset));
            return Ok(None);
        }
        self.buf.clear();
        self.at = 0;
        self.base = offset + total as u64;
        Ok(Some(Item {
            offset,
            len: total as u64,
            frame: Scanned::Blob {
                sha256,
                content_offset: offset + 37,
                len: total as u64 - 37 - 4,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::spool::frame::{SourceTable, encode_blob, encode_record};
    use crate::api::record::RecordKind;

    fn header(first_seq: u64, first_pos: u64) -> Header {
        Header { first_seq, first_pos }
    }

    fn record(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(
            &mut out,
            &RecordFrame {
                seq,
                event_ns: 1,
                kind: RecordKind::Message,
                table: SourceTable::Message,
                rowid: seq as i64,
                hash: [seq as u8; 32],
                prev_hash: [0; 32],
                key: "d/g/0",
                guid: "g",
                files: vec![],
                json: "{}",
            },
        );
        out
    }

    fn seqs(file: &File, limit: u64) -> (Vec<u64>, Option<End>) {
        let mut scanner = Scanner::new(file, HEADER_LEN, limit);
        let mut out = Vec::new();
        while let Some(item) = scanner.next_frame().unwrap() {
            match item.frame {
                Scanned::Record(r) => out.push(r.seq),
                Scanned::Blob { len, .. } => out.push(1000 + len),
            }
        }
        (out, scanner.end())
    }

    #[test]
    fn segments_list_in_order_and_scan_back_what_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, path) = create(tmp.path(), header(11, 500)).unwrap();
        create(tmp.path(), header(2, 0)).unwrap();
        assert!(create(tmp.path(), header(2, 0)).is_err());
        assert_eq!(
            list(tmp.path()).unwrap().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [2, 11]
        );
        assert_eq!(read_header(&file, &path).unwrap(), header(11, 500));
        let mut bytes = record(11);
        encode_blob(&mut bytes, &[5; 32], &[7; 100]);
        bytes.extend(record(12));
        file.write_all_at(&bytes, HEADER_LEN).unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(seqs(&file, len), (vec![11, 1100, 12], Some(End::Clean)));
        // A scan stops at its limit (the committed end).
        assert_eq!(seqs(&file, HEADER_LEN + record(11).len() as u64).0, vec![11]);
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_scan_where_it_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, _) = create(tmp.path(), header(1, 0)).unwrap();
        let mut bytes = record(1);
        let second = HEADER_LEN + bytes.len() as u64;
        bytes.extend(record(2));
        file.write_all_at(&bytes[..bytes.len() - 3], HEADER_LEN).unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(seqs(&file, len), (vec![1], Some(End::Torn(second))));
        file.write_all_at(&bytes, HEADER_LEN).unwrap();
        file.write_all_at(&[0xEE], second + 20).unwrap();
        assert_eq!(seqs(&file, len + 3), (vec![1], Some(End::Torn(second))));
    }

    #[test]
    fn a_blob_larger_than_the_buffer_is_checked_by_streaming() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, _) = create(tmp.path(), header(1, 0)).unwrap();
        let content: Vec<u8> = (0..(WHOLE_FRAME_MAX + 1000)).map(|i| (i % 251) as u8).collect();
        let mut bytes = Vec::new();
        encode_blob(&mut bytes, &[1; 32], &content);
        bytes.extend(record(1));
        file.write_all_at(&bytes, HEADER_LEN).unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(
            seqs(&file, len),
            (vec![1000 + content.len() as u64, 1], Some(End::Clean))
        );
        file.write_all_at(&[0], HEADER_LEN + 5000).unwrap();
        assert_eq!(seqs(&file, len), (vec![], Some(End::Torn(HEADER_LEN))));
    }
}
