//! Placing an immutable spool blob at a second path durably: a hard link when both paths are on
//! one file system (no new inode, no data written), otherwise a copy under a temporary name,
//! fsync'd and renamed into place. Used by the filesystem sink for the archive's attachment
//! files and by the SMTP sink's day journal.
//!
//! Spool blobs are content-addressed and never written after they are renamed into place, so
//! sharing their inode is safe: when the spool later removes its name, the other name keeps the
//! file. After a link the file itself is fsync'd too, because its link count lives in its inode,
//! not in the directory; without that, a crash could leave two names and a count of one, and
//! the spool's removal would then free a file the archive still names. The caller fsyncs the
//! directory (once per batch, not once per file).

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// How the file got to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// A hard link to the source.
    Linked,
    /// A copy (the paths are on different file systems, or links are not supported).
    Copied,
    /// The destination already existed; nothing was written.
    Existed,
}

/// Put `source`'s content at `dest` (whose directory exists), durably except for the directory
/// entry: fsync `dest`'s directory afterwards unless the result is [`Placed::Existed`].
pub fn link_or_copy(source: &Path, dest: &Path) -> io::Result<Placed> {
    match fs::hard_link(source, dest) {
        Ok(()) => {
            // Without a durable link count the name must not stay: a retry would find it and
            // take it for a finished placement.
            if let Err(e) = File::open(dest).and_then(|f| f.sync_all()) {
                let _ = fs::remove_file(dest);
                return Err(e);
            }
            return Ok(Placed::Linked);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Placed::Existed),
        // A cross-device link, a file system without links, too many links: copy instead.
        Err(_) => {}
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let copied = fs::copy(source, &tmp).and_then(|_| File::open(&tmp)?.sync_all());
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest)?;
    Ok(Placed::Copied)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn links_on_one_file_system_and_the_file_outlives_the_source_name() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("blob");
        fs::write(&source, b"photo").unwrap();
        let dest = tmp.path().join("archived");
        assert_eq!(link_or_copy(&source, &dest).unwrap(), Placed::Linked);
        assert_eq!(fs::metadata(&dest).unwrap().ino(), fs::metadata(&source).unwrap().ino());
        fs::remove_file(&source).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"photo");
    }

    #[test]
    fn an_existing_destination_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("blob");
        fs::write(&source, b"photo").unwrap();
        let dest = tmp.path().join("archived");
        fs::write(&dest, b"photo").unwrap();
        assert_eq!(link_or_copy(&source, &dest).unwrap(), Placed::Existed);
        assert_ne!(fs::metadata(&dest).unwrap().ino(), fs::metadata(&source).unwrap().ino());
    }

    #[test]
    fn copies_across_file_systems() {
        // /dev/shm is a tmpfs, another file system than the temporary directory's: EXDEV.
        let tmp = tempfile::tempdir().unwrap();
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
            return; // no tmpfs here; the link test covers the other path
        };
        let source = other.path().join("blob");
        fs::write(&source, b"photo").unwrap();
        if fs::metadata(&source).unwrap().dev() == fs::metadata(tmp.path()).unwrap().dev() {
            return; // same file system after all
        }
        let dest = tmp.path().join("copied");
        assert_eq!(link_or_copy(&source, &dest).unwrap(), Placed::Copied);
        assert_eq!(fs::read(&dest).unwrap(), b"photo");
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("copied")],
            "no temporary left behind"
        );
    }

    #[test]
    fn a_missing_source_is_an_error_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("copied");
        assert!(link_or_copy(&tmp.path().join("absent"), &dest).is_err());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
