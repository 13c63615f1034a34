//! Content-addressed attachment files in the spool: `<spool>/blobs/<aa>/<sha256>`.
//!
//! A file is copied into a temporary name while its SHA-256 is computed, fsync'd, renamed into
//! place and its directory fsync'd, all before the record naming it is committed. A crash in
//! between leaves at most an orphan (a temporary file, or a blob no record names), never a
//! record whose file is missing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::sinks::AttachmentStore;

/// The spool's attachment directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

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
}

/// Whether `s` is a lowercase hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    /// The store under `spool_dir/blobs`.
    pub fn new(spool_dir: &Path) -> Self {
        BlobStore {
            root: spool_dir.join("blobs"),
        }
    }

    /// Where the blob with this hash lives (whether or not it exists).
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2]).join(sha256)
    }

    /// Copy `source` into the store, checking it hashes to `sha256`. Returns the blob's size
    /// and the directory that must be fsync'd before the naming record commits (None when the
    /// blob was already there).
    pub fn put(&self, sha256: &str, source: &Path) -> Result<(u64, Option<PathBuf>), BlobError> {
        if !is_sha256_hex(sha256) {
            return Err(BlobError::HashMismatch {
                expected: sha256.to_owned(),
                actual: "(not a lowercase hex SHA-256)".to_owned(),
            });
        }
        let dest = self.path_for(sha256);
        if let Ok(meta) = fs::metadata(&dest) {
            return Ok((meta.len(), None));
        }
        let dir = dest.parent().expect("blob path has a parent").to_path_buf();
        let spool_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Spool { path, source }
        };
        let created_dir = !dir.exists();
        fs::create_dir_all(&dir).map_err(spool_err(&dir))?;
        if created_dir {
            sync_dir(&self.root).map_err(spool_err(&self.root))?;
        }
        let tmp = dir.join(format!(".{sha256}.{}.tmp", std::process::id()));
        let mut input = File::open(source).map_err(BlobError::Source)?;
        let mut output = File::create(&tmp).map_err(spool_err(&tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(BlobError::Source(e));
                }
            };
            hasher.update(&buf[..n]);
            output.write_all(&buf[..n]).map_err(spool_err(&tmp))?;
            size += n as u64;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            let _ = fs::remove_file(&tmp);
            return Err(BlobError::HashMismatch {
                expected: sha256.to_owned(),
                actual,
            });
        }
        output.sync_all().map_err(spool_err(&tmp))?;
        drop(output);
        fs::rename(&tmp, &dest).map_err(spool_err(&dest))?;
        Ok((size, Some(dir)))
    }

    /// Remove a blob (compaction). Missing files are fine.
    pub fn remove(&self, sha256: &str) -> io::Result<()> {
        if !is_sha256_hex(sha256) {
            return Ok(());
        }
        match fs::remove_file(self.path_for(sha256)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove temporary files a crash left behind.
    pub fn remove_temporaries(&self) {
        let Ok(dirs) = fs::read_dir(&self.root) else { return };
        for dir in dirs.flatten() {
            let Ok(files) = fs::read_dir(dir.path()) else { continue };
            for file in files.flatten() {
                if file.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
    }
}

impl AttachmentStore for BlobStore {
    fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        let path = self.path_for(sha256);
        path.is_file().then_some(path)
    }
}

/// fsync a directory, so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn put_copies_verifies_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path());
        let src = tmp.path().join("photo.jpg");
        fs::write(&src, b"jpeg bytes").unwrap();
        let hash = sha(b"jpeg bytes");
        let (size, dir) = store.put(&hash, &src).unwrap();
        assert_eq!(size, 10);
        assert!(dir.is_some());
        assert_eq!(fs::read(store.path_of(&hash).unwrap()).unwrap(), b"jpeg bytes");
        let (_, dir) = store.put(&hash, &src).unwrap();
        assert!(dir.is_none(), "second put finds the blob");
    }

    #[test]
    fn put_refuses_content_with_another_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path());
        let src = tmp.path().join("f");
        fs::write(&src, b"changed").unwrap();
        let err = store.put(&sha(b"original"), &src).unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
        assert!(store.path_of(&sha(b"original")).is_none());
        assert!(matches!(
            store.put(&sha(b"x"), &tmp.path().join("absent")),
            Err(BlobError::Source(_))
        ));
        assert!(store.path_of("../../etc/passwd").is_none());
    }
}
