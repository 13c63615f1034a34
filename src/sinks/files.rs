//! Durable file placement shared by the spool and the file-writing sinks.
//!
//! A new file is written without a name first: an `O_TMPFILE` inode in the destination's
//! directory (or, on a file system without `O_TMPFILE`, a temporary name beside it). It
//! becomes durable under its final name in one of two ways:
//! - **per file**: fsync it, give it its name, fsync its directory ([`place_durably`]) —
//!   right for a handful of files;
//! - **per batch** ([`BatchPlacer`]): write every file of a batch, make them all durable with
//!   one `syncfs(2)` of their file system, name them all, and make the names durable with a
//!   second `syncfs`. Two flushes for the batch instead of two per file; on a shared file
//!   system it also flushes other writers' dirty data, which is why small batches use the
//!   per-file way.
//!
//! Either way a final name only ever appears with its complete content. A crash leaves an
//! unnamed inode (which the file system frees) or, in the fallback, a temporary file, which
//! the writers remove or overwrite. Naming an `O_TMPFILE` inode is one directory update
//! (`linkat`), where a temporary name costs two (create, then rename).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// The temporary name a file is written under before it gets `dest` (where `O_TMPFILE` is
/// not available).
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

/// Whether unnamed files can be named: `linkat` of an `O_TMPFILE` descriptor goes through
/// `/proc/self/fd` (the `AT_EMPTY_PATH` form needs `CAP_DAC_READ_SEARCH`).
fn can_name_unnamed() -> bool {
    static PROC_FD: OnceLock<bool> = OnceLock::new();
    *PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// A complete file that does not have its final name yet.
struct Unnamed {
    file: File,
    /// The temporary name it has instead, where `O_TMPFILE` was not available.
    temporary: Option<PathBuf>,
}

impl Unnamed {
    /// Write `content` into a new file in `dest`'s directory, without syncing. `NotFound`
    /// when that directory does not exist.
    fn write(content: &Attachment, dest: &Path) -> io::Result<Unnamed> {
        Self::write_as(content, dest, can_name_unnamed())
    }

    /// [`Unnamed::write`], as an `O_TMPFILE` inode only if `anonymous`.
    fn write_as(content: &Attachment, dest: &Path, anonymous: bool) -> io::Result<Unnamed> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        if anonymous {
            match OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE).open(dir) {
                Ok(file) => {
                    content.write_into(&file)?;
                    return Ok(Unnamed { file, temporary: None });
                }
                // The file system has no O_TMPFILE: use a temporary name.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {}
                Err(e) => return Err(e),
            }
        }
        let tmp = temporary_name(dest);
        match content.write_new(&tmp) {
            Ok(file) => Ok(Unnamed {
                file,
                temporary: Some(tmp),
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Give the file the name `dest`. False: `dest` existed already (names are content
    /// addresses, so it holds the same bytes) and the file is dropped.
    fn name(self, dest: &Path) -> io::Result<bool> {
        if let Some(tmp) = &self.temporary {
            return fs::rename(tmp, dest).map(|()| true);
        }
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let proc_path = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd())).expect("no NUL");
        let dest_c = CString::new(dest.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        // SAFETY: both strings are NUL-terminated and live for the call; the descriptor stays
        // open until `self` drops after it.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc_path.as_ptr(),
                libc::AT_FDCWD,
                dest_c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if linked == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::AlreadyExists {
            Ok(false)
        } else {
            Err(error)
        }
    }

    /// Drop the file without naming it.
    fn discard(self) {
        if let Some(tmp) = &self.temporary {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Put `content` at `dest` (whose directory exists: else `NotFound`) durably except for the
/// directory entry: the caller fsyncs `dest`'s directory when this returns true. False:
/// `dest` existed already and nothing was written.
pub fn place_durably(content: &Attachment, dest: &Path) -> io::Result<bool> {
    if dest.exists() {
        return Ok(false);
    }
    let unnamed = Unnamed::write(content, dest)?;
    if let Err(e) = unnamed.file.sync_all() {
        unnamed.discard();
        return Err(e);
    }
    unnamed.name(dest)
}

/// Files a [`BatchPlacer`] keeps open before it names what it has (bounded by the process's
/// descriptor limit, often 1,024).
const PENDING_MAX: usize = 256;

/// Places many files durably with two file-system syncs per [`PENDING_MAX`] files (see the
/// module docs).
pub struct BatchPlacer {
    /// Any path on the files' file system.
    root: PathBuf,
    /// Written files and their final names.
    pending: Vec<(Unnamed, PathBuf)>,
}

impl BatchPlacer {
    /// A placer for files on the file system holding `root`.
    pub fn new(root: &Path) -> Self {
        BatchPlacer {
            root: root.to_path_buf(),
            pending: Vec::new(),
        }
    }

    /// Write `content` for `dest`, which the caller found absent (`NotFound`: its directory
    /// does not exist). It gets its name at the next flush.
    pub fn write(&mut self, content: &Attachment, dest: &Path) -> io::Result<()> {
        if self.pending.len() >= PENDING_MAX {
            self.flush()?;
        }
        let unnamed = Unnamed::write(content, dest)?;
        self.pending.push((unnamed, dest.to_path_buf()));
        Ok(())
    }

    /// Files written and not yet named.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting for its name.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Make the written files durable and give them their final names. The names themselves
    /// are made durable by the caller's next [`sync_file_system`] (the sink's final flush of
    /// the batch).
    pub fn commit(mut self) -> io::Result<()> {
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending).into_iter();
        let mut result = sync_file_system(&self.root);
        if result.is_ok() {
            for (unnamed, dest) in pending.by_ref() {
                if let Err(e) = unnamed.name(&dest) {
                    result = Err(e);
                    break;
                }
            }
        }
        for (unnamed, _) in pending {
            unnamed.discard();
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
        let mut batch = BatchPlacer::new(tmp.path());
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        batch.write(&content(tmp.path(), b"1"), &a).unwrap();
        batch.write(&content(tmp.path(), b"22"), &b).unwrap();
        assert_eq!(batch.len(), 2);
        assert!(!a.exists() && !b.exists(), "not before commit");
        batch.commit().unwrap();
        assert_eq!(
            (fs::read(&a).unwrap(), fs::read(&b).unwrap()),
            (b"1".to_vec(), b"22".to_vec())
        );
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn both_ways_of_writing_unnamed_files_name_them_and_leave_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let source = content(tmp.path(), b"content");
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        for (anonymous, name) in [(true, "anonymous"), (false, "temporary")] {
            let unnamed = Unnamed::write_as(&source, &out.join(name), anonymous).unwrap();
            assert_eq!(unnamed.temporary.is_none(), anonymous);
            assert!(unnamed.name(&out.join(name)).unwrap());
            assert_eq!(fs::read(out.join(name)).unwrap(), b"content");
        }
        assert_eq!(names(&out), ["anonymous", "temporary"]);
        // A name that exists meanwhile keeps its content; the O_TMPFILE inode just goes.
        fs::write(out.join("taken"), b"first").unwrap();
        let unnamed = Unnamed::write_as(&source, &out.join("taken"), true).unwrap();
        assert!(!unnamed.name(&out.join("taken")).unwrap());
        assert_eq!(fs::read(out.join("taken")).unwrap(), b"first");
        // A discarded temporary file is removed.
        Unnamed::write_as(&source, &out.join("dropped"), false)
            .unwrap()
            .discard();
        assert_eq!(names(&out), ["anonymous", "taken", "temporary"]);
    }

    #[test]
    fn a_missing_directory_is_not_found_so_the_caller_can_create_it() {
        let tmp = tempfile::tempdir().unwrap();
        let source = content(tmp.path(), b"x");
        let dest = tmp.path().join("missing/a");
        let e = place_durably(&source, &dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let mut batch = BatchPlacer::new(tmp.path());
        let e = batch.write(&source, &dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(batch.is_empty());
    }

    #[test]
    fn a_large_batch_names_files_as_it_goes_and_keeps_few_open() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        let source = content(tmp.path(), b"same bytes");
        let mut batch = BatchPlacer::new(tmp.path());
        let total = PENDING_MAX + 44;
        for i in 0..total {
            batch.write(&source, &out.join(format!("f{i:03}"))).unwrap();
            assert!(batch.len() <= PENDING_MAX);
        }
        assert_eq!(
            names(&out).len(),
            PENDING_MAX,
            "the first {PENDING_MAX} are named when the next arrives"
        );
        batch.commit().unwrap();
        let all = names(&out);
        assert_eq!(all.len(), total);
        assert!(all.iter().all(|n| fs::read(out.join(n)).unwrap() == b"same bytes"));
    }
}
