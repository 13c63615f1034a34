//! Capturing attachment files into the log: each file becomes a blob frame holding its
//! content, checked against the SHA-256 the reader announced. Small files go through the
//! batch's frame buffer; large ones stream straight into the segment file, so no file is ever
//! held in memory whole beyond [`IN_MEMORY_MAX`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::frame::{self, BlobCrc};

/// Files up to this size are read whole (one read, one hash) into the batch's frames.
pub const IN_MEMORY_MAX: u64 = 1 << 20;
const STREAM_CHUNK: usize = 256 << 10;

/// Why a file could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Reading the device's file failed.
    #[error("cannot read attachment file: {0}")]
    Source(io::Error),
    /// Writing into the spool failed (disk full, permissions).
    #[error("cannot write attachment into the spool at {path}: {source}")]
    Spool {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file's content does not have the hash the reader announced.
    #[error("attachment content hash {actual} differs from the announced {expected}")]
    HashMismatch {
        /// What the reader announced.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The file is larger than a spool frame can hold.
    #[error("attachment file of {0} bytes is larger than the spool can hold in one frame")]
    TooLarge(u64),
}

fn mismatch(expected: &[u8; 32], actual: &[u8; 32]) -> BlobError {
    BlobError::HashMismatch {
        expected: frame::to_hex(expected),
        actual: frame::to_hex(actual),
    }
}

/// Read `source` whole into `content` (reused) and append its blob frame to `frames`, if its
/// content hashes to `sha256`. Returns its size.
pub fn capture_small(
    source: &mut File,
    sha256: &[u8; 32],
    content: &mut Vec<u8>,
    frames: &mut Vec<u8>,
) -> Result<u64, BlobError> {
    content.clear();
    source.read_to_end(content).map_err(BlobError::Source)?;
    let actual: [u8; 32] = Sha256::digest(&content[..]).into();
    if actual != *sha256 {
        return Err(mismatch(sha256, &actual));
    }
    frame::encode_blob(frames, sha256, content);
    Ok(content.len() as u64)
}

/// Stream `source` (of `len` bytes) as a blob frame into `out` at `offset`, hashing as it
/// goes. Returns the frame's length. On any failure the caller truncates `out` back to
/// `offset` (nothing of the frame counts).
pub fn capture_large(
    source: &mut File,
    len: u64,
    sha256: &[u8; 32],
    out: &File,
    out_path: &Path,
    offset: u64,
) -> Result<u64, BlobError> {
    if len + 32 > frame::MAX_PAYLOAD {
        return Err(BlobError::TooLarge(len));
    }
    let spool_err = |source| BlobError::Spool {
        path: out_path.to_path_buf(),
        source,
    };
    let header = frame::blob_header(sha256, len);
    out.write_all_at(&header, offset).map_err(spool_err)?;
    let mut crc = BlobCrc::new(&header);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; STREAM_CHUNK];
    let mut at = offset + header.len() as u64;
    let mut copied = 0u64;
    while copied < len {
        let want = ((len - copied) as usize).min(chunk.len());
        let n = match source.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BlobError::Source(e)),
        };
        hasher.update(&chunk[..n]);
        crc.update(&chunk[..n]);
        out.write_all_at(&chunk[..n], at).map_err(spool_err)?;
        at += n as u64;
        copied += n as u64;
    }
    let mut probe = [0u8; 1];
    let grew = matches!(source.read(&mut probe), Ok(n) if n > 0);
    let actual: [u8; 32] = hasher.finalize().into();
    if copied != len || grew || actual != *sha256 {
        // The file changed while it was copied (or is not what the reader hashed).
        return Err(mismatch(sha256, &actual));
    }
    out.write_all_at(&crc.finish(), at).map_err(spool_err)?;
    Ok(at + 4 - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::spool::frame::{Frame, decode};

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn small_and_streamed_captures_give_the_same_frame() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("photo.jpg");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&src, &content).unwrap();
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        let n = capture_small(&mut File::open(&src).unwrap(), &sha(&content), &mut buf, &mut frames).unwrap();
        assert_eq!(n, content.len() as u64);

        let out_path = tmp.path().join("seg");
        let out = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&out_path)
            .unwrap();
        let len = capture_large(
            &mut File::open(&src).unwrap(),
            content.len() as u64,
            &sha(&content),
            &out,
            &out_path,
            7,
        )
        .unwrap();
        let mut streamed = vec![0u8; len as usize];
        out.read_exact_at(&mut streamed, 7).unwrap();
        assert_eq!(streamed, frames);
        assert!(matches!(decode(&streamed).unwrap().0, Frame::Blob { len: 300_000, .. }));
    }

    #[test]
    fn content_that_is_not_what_was_announced_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("f");
        std::fs::write(&src, b"changed").unwrap();
        let mut frames = Vec::new();
        let err = capture_small(
            &mut File::open(&src).unwrap(),
            &sha(b"original"),
            &mut Vec::new(),
            &mut frames,
        )
        .unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
        assert!(frames.is_empty());
        let out_path = tmp.path().join("seg");
        let out = File::create(&out_path).unwrap();
        // Announced longer than it is: the file shrank after it was hashed.
        let err = capture_large(
            &mut File::open(&src).unwrap(),
            100,
            &sha(b"changed"),
            &out,
            &out_path,
            0,
        )
        .unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
    }
}
