//! Durable file placement shared by the spool and the file-writing sinks.
//!
//! A new file becomes durable under its final name in one of two ways:
//! - **per file**: write it under a temporary name, fsync it, rename it, fsync its directory
//!   ([`place_durably`]) — right for a handful of files;
//! - **per batch** ([`BatchPlacer`]): write every file of a batch under a temporary name, make
//!   them all durable with one `syncfs(2)` of their file system, rename them all, and make the
//!   renames durable with a second `syncfs`. Two flushes for the batch instead of two per
//!   file; on a shared file system it also flushes other writers' dirty data, which is why
//!   small batches use the per-file way.
//!
//! Either way a final name only ever appears with its complete content: a crash leaves at
//! most temporary files, which the writers remove or overwrite.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::attachment::Attachment;

/// fsync a directory, so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `syncfs(2)`: write back and flush everything dirty on the file system holding `path`.
pub fn sync_file_system(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(path)?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The temporary name a file is written under before it gets `dest`.
pub fn temporary_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()))
}

/// Whether a file name is one of [`temporary_name`]'s.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Put `content` at `dest` (whose directory exists) durably except for the directory entry:
/// the caller fsyncs `dest`'s directory when this returns true. False: `dest` existed already
/// and nothing was written.
pub fn place_durably(content: &Attachment, dest: &Path) -> io::Result<bool> {
    if dest.exists() {
        return Ok(false);
    }
    let tmp = temporary_name(dest);
    let written = content.write_new(&tmp).and_then(|f| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest)?;
    Ok(true)
}

/// Places many files durably with two file-system syncs in all (see the module docs).
#[derive(Default)]
pub struct BatchPlacer {
    /// (temporary, final) names of the files written so far.
    pending: Vec<(PathBuf, PathBuf)>,
}

impl BatchPlacer {
    /// Write `content` for `dest` under a temporary name (nothing happens when `dest` exists).
    pub fn write(&mut self, content: &Attachment, dest: &Path) -> io::Result<()> {
        if dest.exists() {
            return Ok(());
        }
        let tmp = temporary_name(dest);
        if let Err(e) = content.write_new(&tmp) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.pending.push((tmp, dest.to_path_buf()));
        Ok(())
    }

    /// Files written so far.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Make the written files durable and give them their final names. `root` is any path on
    /// their file system. The renames themselves are made durable by the caller's next
    /// [`sync_file_system`] (the sink's final flush of the batch).
    pub fn commit(self, root: &Path) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = sync_file_system(root).and_then(|()| {
            for (tmp, dest) in &self.pending {
                fs::rename(tmp, dest)?;
            }
            Ok(())
        });
        if result.is_err() {
            for (tmp, _) in &self.pending {
                let _ = fs::remove_file(tmp);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(dir: &Path, bytes: &[u8]) -> Attachment {
        let path = dir.join(format!("src-{}", bytes.len()));
        fs::write(&path, bytes).unwrap();
        Attachment::whole_file(&path).unwrap()
    }

    #[test]
    fn placing_writes_once_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("a");
        assert!(place_durably(&content(tmp.path(), b"abc"), &dest).unwrap());
        assert!(!place_durably(&content(tmp.path(), b"other"), &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"abc");
        let names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| is_temporary(n)), "{names:?}");
    }

    #[test]
    fn a_batch_appears_under_its_final_names_only_at_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut batch = BatchPlacer::default();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        batch.write(&content(tmp.path(), b"1"), &a).unwrap();
        batch.write(&content(tmp.path(), b"22"), &b).unwrap();
        assert_eq!(batch.len(), 2);
        assert!(!a.exists() && !b.exists(), "not before commit");
        batch.commit(tmp.path()).unwrap();
        assert_eq!(
            (fs::read(&a).unwrap(), fs::read(&b).unwrap()),
            (b"1".to_vec(), b"22".to_vec())
        );
    }
}
