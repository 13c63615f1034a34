//! Captured attachment files as sinks see them: a byte range of a file (in the agent, a frame
//! of the spool's log; in tests, a whole file), looked up by SHA-256 for one batch.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One captured attachment file's content.
#[derive(Clone, Debug)]
pub struct Attachment {
    file: Arc<File>,
    path: Arc<Path>,
    offset: u64,
    len: u64,
}

/// Read access to the attachment files a batch's records name, by lowercase hex SHA-256.
pub trait AttachmentStore: Send + Sync {
    /// The captured file with this SHA-256, if the spool holds it for this batch.
    fn get(&self, sha256: &str) -> Option<Attachment>;
}

impl Attachment {
    /// `len` bytes of `file` (at `path`) from `offset`.
    pub fn in_file(file: Arc<File>, path: Arc<Path>, offset: u64, len: u64) -> Self {
        Attachment {
            file,
            path,
            offset,
            len,
        }
    }

    /// A whole file.
    pub fn whole_file(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Attachment {
            file: Arc::new(file),
            path: Arc::from(path),
            offset: 0,
            len,
        })
    }

    /// The file holding the content, and where in it the content starts (for clients that
    /// stream from a path, and can then retry).
    pub fn location(&self) -> (&Path, u64) {
        (&self.path, self.offset)
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole content in memory.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut out, self.offset)?;
        Ok(out)
    }

    /// A reader of the content.
    pub fn reader(&self) -> AttachmentReader {
        AttachmentReader {
            attachment: self.clone(),
            done: 0,
        }
    }

    /// Write the content into a new file at `dest` (which must not exist), without syncing:
    /// the caller makes it durable (fsync, or a file-system sync for a whole batch) before
    /// giving it its final name.
    pub fn write_new(&self, dest: &Path) -> io::Result<File> {
        let out = OpenOptions::new().write(true).create_new(true).open(dest)?;
        self.write_into(&out)?;
        Ok(out)
    }

    /// Write the content into `out` (new and empty) from its start, without syncing.
    pub fn write_into(&self, out: &File) -> io::Result<()> {
        let mut copied = 0u64;
        while copied < self.len {
            let n = copy_range(&self.file, self.offset + copied, out, copied, self.len - copied)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the captured attachment ends early",
                ));
            }
            copied += n;
        }
        Ok(())
    }
}

/// Copy up to `len` bytes in the kernel (`copy_file_range`), falling back to a read and a
/// write where the kernel cannot (other file systems, old kernels).
fn copy_range(input: &File, in_at: u64, output: &File, out_at: u64, len: u64) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut off_in = in_at as libc::loff_t;
    let mut off_out = out_at as libc::loff_t;
    let chunk = len.min(1 << 30) as usize;
    // SAFETY: both descriptors are open for the duration of the call, and the offsets are
    // valid pointers to locals.
    let n = unsafe {
        libc::copy_file_range(
            input.as_raw_fd(),
            &mut off_in,
            output.as_raw_fd(),
            &mut off_out,
            chunk,
            0,
        )
    };
    if n >= 0 {
        return Ok(n as u64);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => {
            let mut buf = vec![0u8; chunk.min(1 << 20)];
            let n = input.read_at(&mut buf, in_at)?;
            output.write_all_at(&buf[..n], out_at)?;
            Ok(n as u64)
        }
        _ => Err(error),
    }
}

/// Reads an [`Attachment`]'s content.
pub struct AttachmentReader {
    attachment: Attachment,
    done: u64,
}

impl Read for AttachmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.attachment.len - self.done;
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let read = self
            .attachment
            .file
            .read_at(&mut buf[..n], self.attachment.offset + self.done)?;
        self.done += read as u64;
        Ok(read)
    }
}

/// An [`AttachmentStore`] over whole files by hash (unit tests of sinks).
#[cfg(test)]
#[derive(Default)]
pub struct FilesByHash(pub std::collections::HashMap<String, std::path::PathBuf>);

#[cfg(test)]
impl FilesByHash {
    /// Write `content` under `dir` and serve it by its SHA-256; returns the hash.
    pub fn add(&mut self, dir: &Path, content: &[u8]) -> String {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(content));
        let path = dir.join(format!("file-{sha}"));
        std::fs::write(&path, content).expect("test file written");
        self.0.insert(sha.clone(), path);
        sha
    }
}

#[cfg(test)]
impl AttachmentStore for FilesByHash {
    fn get(&self, sha256: &str) -> Option<Attachment> {
        Attachment::whole_file(self.0.get(sha256)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_reads_writes_and_streams_exactly_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        std::fs::write(&path, b"headerCONTENTtrailer").unwrap();
        let a = Attachment::in_file(Arc::new(File::open(&path).unwrap()), Arc::from(path.as_path()), 6, 7);
        assert_eq!(a.len(), 7);
        assert_eq!(a.read_all().unwrap(), b"CONTENT");
        let mut streamed = Vec::new();
        a.reader().read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, b"CONTENT");
        let dest = tmp.path().join("copy");
        a.write_new(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"CONTENT");
        assert!(a.write_new(&dest).is_err(), "never overwrites");
        let whole = Attachment::whole_file(&path).unwrap();
        assert_eq!(whole.read_all().unwrap(), b"headerCONTENTtrailer");
    }
}
