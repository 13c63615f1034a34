//! The spool's idempotency-key index: every key ever chained, exactly, so that a re-read
//! (rescan window, restart, a replaced chat.db) never chains an event twice.
//!
//! Two levels:
//! - **recent**: the keys chained since the last flush, in memory (an arena of key bytes and
//!   a hash table chaining entries with equal hashes). They are durable through the log: on
//!   open the spool replays the records after its checkpoint and adds their keys again.
//! - **runs** (`keyrun.rs`): every [`KeyIndex::flush_every`] keys the recent ones are sorted
//!   and written as an immutable run file; runs of similar size are merged, [`FAN_IN`] at a
//!   time, so their number stays logarithmic. One Bloom filter over all runs answers
//!   "certainly not chained" without reading them; a "maybe" reads one block of each run
//!   (newest first) and compares the stored key itself.
//!
//! A batch's keys are staged into the recent level as the batch is sealed; if the batch is
//! not committed, [`KeyIndex::rollback`] removes exactly them again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use super::bloom::Bloom;
use super::keyrun::{self, Run, key_hash};

/// Recent keys flushed into a run at once (~1.3 MB of memory at the most).
pub const FLUSH_EVERY: usize = 16_384;
/// Runs of one size class merged at once.
pub const FAN_IN: usize = 8;
const NONE: u32 = u32::MAX;

/// The hash table's keys are already hashes: use them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type HashIndex = HashMap<u64, u32, BuildHasherDefault<Identity>>;

/// One recent key (16 bytes: its hash is recomputed from the key when needed).
#[derive(Clone, Copy)]
struct Recent {
    /// Its sequence number minus [`KeyIndex::seq_base`].
    seq: u32,
    /// Where its bytes are in the arena.
    at: u32,
    /// The next older recent key with the same hash (or NONE).
    next: u32,
    len: u16,
}

/// The key index (see the module docs).
pub struct KeyIndex {
    dir: PathBuf,
    arena: Vec<u8>,
    recent: Vec<Recent>,
    /// Sequence numbers of recent keys are stored relative to this (the first one's).
    seq_base: u64,
    by_hash: HashIndex,
    runs: Vec<Run>,
    bloom: Bloom,
    flush_every: usize,
    /// Tests make every key collide.
    #[cfg(test)]
    hash_override: Option<fn(&[u8]) -> u64>,
}

/// A position in the recent level to roll back to.
#[derive(Clone, Copy, Debug)]
pub struct Mark(usize);

impl KeyIndex {
    /// Open the runs named by the checkpoint (in `dir`) and build the filter over them.
    pub fn open(dir: &Path, run_names: &[String], flush_every: usize) -> io::Result<KeyIndex> {
        let runs = run_names
            .iter()
            .map(|name| Run::open(&dir.join(name)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut index = KeyIndex {
            dir: dir.to_path_buf(),
            arena: Vec::new(),
            recent: Vec::new(),
            seq_base: 0,
            by_hash: HashIndex::default(),
            runs,
            bloom: Bloom::with_capacity(0),
            flush_every: flush_every.max(1),
            #[cfg(test)]
            hash_override: None,
        };
        index.rebuild_filter()?;
        Ok(index)
    }

    /// The file names of the runs (for the checkpoint), oldest first.
    pub fn run_names(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter_map(|r| r.path().file_name()?.to_str().map(str::to_owned))
            .collect()
    }

    /// Flush after this many recent keys from now on.
    #[cfg(test)]
    pub fn set_flush_every(&mut self, n: usize) {
        self.flush_every = n.max(1);
    }

    /// Bytes of disk the runs use.
    pub fn disk_bytes(&self) -> u64 {
        self.runs.iter().map(Run::file_bytes).sum()
    }

    /// Keys in the recent level.
    #[cfg(test)]
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Whether the recent level is due to be flushed into a run.
    pub fn is_full(&self) -> bool {
        self.recent.len() >= self.flush_every
    }

    /// Bytes of memory the index holds (filter, recent keys, run indexes).
    pub fn memory_bytes(&self) -> usize {
        self.bloom.bytes()
            + self.arena.capacity()
            + self.recent.capacity() * std::mem::size_of::<Recent>()
            + self.by_hash.capacity() * 12
            + self.runs.iter().map(Run::index_bytes).sum::<usize>()
    }

    fn rebuild_filter(&mut self) -> io::Result<()> {
        let count: u64 = self.runs.iter().map(Run::count).sum();
        let mut bloom = Bloom::with_capacity((count as usize * 3 / 2).max(4 * self.flush_every));
        for run in &self.runs {
            for entry in run.entries() {
                bloom.insert(entry?.hash);
            }
        }
        self.bloom = bloom;
        Ok(())
    }

    fn recent_key(&self, r: &Recent) -> &[u8] {
        &self.arena[r.at as usize..r.at as usize + r.len as usize]
    }

    /// The hash of a key ([`key_hash`], unless a test overrides it).
    fn hash_of(&self, key: &[u8]) -> u64 {
        #[cfg(test)]
        if let Some(hash) = self.hash_override {
            return hash(key);
        }
        key_hash(key)
    }

    fn recent_seq(&self, r: &Recent) -> u64 {
        self.seq_base + u64::from(r.seq)
    }

    /// The sequence number that chained `key`, if any.
    pub fn find(&self, key: &str) -> io::Result<Option<u64>> {
        let hash = self.hash_of(key.as_bytes());
        let mut i = self.by_hash.get(&hash).copied().unwrap_or(NONE);
        while i != NONE {
            let r = &self.recent[i as usize];
            if self.recent_key(r) == key.as_bytes() {
                return Ok(Some(self.recent_seq(r)));
            }
            i = r.next;
        }
        if !self.bloom.may_contain(hash) {
            return Ok(None);
        }
        for run in self.runs.iter().rev() {
            if let Some(seq) = run.find(hash, key.as_bytes())? {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// Where the recent level is now (to roll back to).
    pub fn mark(&self) -> Mark {
        Mark(self.recent.len())
    }

    /// Chain `key` at `seq` unless it is chained (or staged) already: then false.
    pub fn stage(&mut self, key: &str, seq: u64) -> io::Result<bool> {
        if self.find(key)?.is_some() {
            return Ok(false);
        }
        self.insert(key.as_bytes(), seq);
        Ok(true)
    }

    /// Add a key known not to be in the index (replaying the log on open).
    pub fn insert(&mut self, key: &[u8], seq: u64) {
        let hash = self.hash_of(key);
        if self.recent.is_empty() {
            self.seq_base = seq;
        }
        // Keys longer than an entry can say are kept whole in the runs; here they would only
        // cost memory, and such keys cannot come from Messages (GUIDs are short).
        let key = &key[..key.len().min(u16::MAX as usize)];
        let index = self.recent.len() as u32;
        let next = self.by_hash.insert(hash, index).unwrap_or(NONE);
        self.recent.push(Recent {
            seq: u32::try_from(seq.saturating_sub(self.seq_base)).unwrap_or(u32::MAX),
            at: self.arena.len() as u32,
            next,
            len: key.len() as u16,
        });
        self.arena.extend_from_slice(key);
    }

    /// Forget the keys staged after `mark` (a batch that was not committed).
    pub fn rollback(&mut self, mark: Mark) {
        while self.recent.len() > mark.0 {
            let r = self.recent.pop().expect("above the mark");
            let hash = self.hash_of(&self.arena[r.at as usize..]);
            if r.next == NONE {
                self.by_hash.remove(&hash);
            } else {
                self.by_hash.insert(hash, r.next);
            }
            self.arena.truncate(r.at as usize);
        }
    }

    /// Write the recent keys as a new run (named after the sequence numbers it covers) and
    /// empty the recent level. The caller then records the new run list in a checkpoint; until
    /// it does, the run is not part of the spool (a crash leaves it to be removed at open).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.recent.is_empty() {
            return Ok(());
        }
        // Sorted by index, not by copies of the keys: a flush needs no second copy of them.
        let hashes: Vec<u64> = self.recent.iter().map(|r| self.hash_of(self.recent_key(r))).collect();
        let mut order: Vec<u32> = (0..self.recent.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (ra, rb) = (&self.recent[a as usize], &self.recent[b as usize]);
            (hashes[a as usize], self.recent_key(ra), ra.seq).cmp(&(hashes[b as usize], self.recent_key(rb), rb.seq))
        });
        let first = self.recent.iter().map(|r| self.recent_seq(r)).min().unwrap_or(0);
        let last = self.recent.iter().map(|r| self.recent_seq(r)).max().unwrap_or(0);
        let name = run_name(first, last);
        let entries = order.iter().map(|&i| {
            let r = &self.recent[i as usize];
            keyrun::EntryRef {
                hash: hashes[i as usize],
                seq: self.recent_seq(r),
                key: self.recent_key(r),
            }
        });
        let run = keyrun::write(&self.dir.join(&name), entries)?;
        drop(order);
        for hash in hashes {
            self.bloom.insert(hash);
        }
        self.runs.push(run);
        self.arena = Vec::new();
        self.recent = Vec::new();
        self.by_hash = HashIndex::default();
        if self.bloom.is_overfull() {
            self.rebuild_filter()?;
        }
        Ok(())
    }

    /// Merge the newest [`FAN_IN`] runs when they are of one size class (each no larger than
    /// twice the smallest). Returns the replaced runs, which the caller removes with
    /// [`KeyIndex::remove_runs`] once a checkpoint no longer names them.
    pub fn merge_if_due(&mut self) -> io::Result<Vec<Run>> {
        if self.runs.len() < FAN_IN {
            return Ok(Vec::new());
        }
        let tail = &self.runs[self.runs.len() - FAN_IN..];
        let smallest = tail.iter().map(Run::count).min().unwrap_or(0);
        if tail
            .iter()
            .any(|r| r.count() > smallest.saturating_mul(2).max(self.flush_every as u64))
        {
            return Ok(Vec::new());
        }
        let sources: Vec<&Run> = tail.iter().collect();
        let name = {
            let bounds = |n: &str| -> Option<(u64, u64)> {
                let (a, b) = n.strip_suffix(".run")?.split_once('-')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            };
            let spans: Vec<(u64, u64)> = self
                .run_names()
                .iter()
                .rev()
                .take(FAN_IN)
                .filter_map(|n| bounds(n))
                .collect();
            run_name(
                spans.iter().map(|s| s.0).min().unwrap_or(0),
                spans.iter().map(|s| s.1).max().unwrap_or(0),
            )
        };
        let mut failed = None;
        let merged = keyrun::write(
            &self.dir.join(&name),
            keyrun::merge(&sources).map_while(|e| match e {
                Ok(entry) => Some(entry),
                Err(error) => {
                    failed = Some(error);
                    None
                }
            }),
        )?;
        if let Some(error) = failed {
            let _ = merged.remove();
            return Err(error);
        }
        let replaced = self.runs.split_off(self.runs.len() - FAN_IN);
        self.runs.push(merged);
        tracing::debug!(keys = self.runs.last().map(Run::count), "spool key runs merged");
        Ok(replaced)
    }

    /// Remove replaced runs' files (after a checkpoint stopped naming them).
    pub fn remove_runs(replaced: Vec<Run>) {
        for run in replaced {
            let path = run.path().to_path_buf();
            if let Err(error) = run.remove() {
                tracing::warn!(%error, run = %path.display(), "cannot remove a merged key run");
            }
        }
    }
}

/// The file name of a run covering sequence numbers `first..=last`.
pub fn run_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.run")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(dir: &Path, every: usize) -> KeyIndex {
        KeyIndex::open(dir, &[], every).unwrap()
    }

    #[test]
    fn staged_keys_are_found_and_duplicates_refused_before_and_after_a_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let mut keys = index(tmp.path(), 4);
        assert!(keys.stage("d/b/0", 1).unwrap());
        assert!(keys.stage("d/a/0", 2).unwrap());
        assert!(!keys.stage("d/b/0", 3).unwrap());
        assert_eq!(keys.find("d/a/0").unwrap(), Some(2));
        keys.flush().unwrap();
        assert_eq!(keys.recent_len(), 0);
        assert_eq!(keys.find("d/a/0").unwrap(), Some(2), "found in the run");
        assert!(!keys.stage("d/a/0", 4).unwrap());
        assert!(keys.stage("d/c/0", 4).unwrap());
        let names = keys.run_names();
        assert_eq!(names, [run_name(1, 2)]);

        let reopened = KeyIndex::open(tmp.path(), &names, 4).unwrap();
        assert_eq!(reopened.find("d/b/0").unwrap(), Some(1));
        assert_eq!(
            reopened.find("d/c/0").unwrap(),
            None,
            "recent keys come back from the log, not here"
        );
    }

    #[test]
    fn a_rollback_forgets_exactly_the_staged_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let mut keys = index(tmp.path(), 100);
        assert!(keys.stage("d/a/0", 1).unwrap());
        let mark = keys.mark();
        assert!(keys.stage("d/b/0", 2).unwrap());
        assert!(keys.stage("d/c/0", 3).unwrap());
        keys.rollback(mark);
        assert_eq!(keys.find("d/a/0").unwrap(), Some(1));
        assert_eq!(keys.find("d/b/0").unwrap(), None);
        assert!(keys.stage("d/b/0", 2).unwrap());
        assert_eq!(keys.find("d/b/0").unwrap(), Some(2));
    }

    #[test]
    fn keys_that_all_share_one_hash_are_still_answered_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let mut keys = index(tmp.path(), 4);
        // What the 64-bit hash would do only by chance, for every key at once.
        keys.hash_override = Some(|_| 5);
        assert!(keys.stage("k1", 1).unwrap());
        let mark = keys.mark();
        assert!(keys.stage("k2", 2).unwrap());
        assert!(keys.stage("k3", 3).unwrap());
        assert!(!keys.stage("k2", 9).unwrap(), "found along the chain");
        keys.rollback(mark);
        assert_eq!(keys.find("k1").unwrap(), Some(1));
        assert_eq!((keys.find("k2").unwrap(), keys.find("k3").unwrap()), (None, None));
        for (i, key) in ["k2", "k3", "k4"].iter().enumerate() {
            assert!(keys.stage(key, 2 + i as u64).unwrap());
        }
        keys.flush().unwrap();
        assert!(keys.stage("k5", 5).unwrap());
        for (i, key) in ["k1", "k2", "k3", "k4", "k5"].iter().enumerate() {
            assert_eq!(keys.find(key).unwrap(), Some(1 + i as u64), "{key}");
        }
        assert_eq!(keys.find("k6").unwrap(), None);
    }

    #[test]
    fn runs_of_one_size_merge_and_every_key_stays_found() {
        let tmp = tempfile::tempdir().unwrap();
        let mut keys = index(tmp.path(), 10);
        let mut seq = 0;
        let mut replaced_total = 0;
        for _ in 0..FAN_IN * 2 {
            for _ in 0..10 {
                seq += 1;
                assert!(keys.stage(&format!("d/G{seq}/0"), seq).unwrap());
            }
            keys.flush().unwrap();
            let replaced = keys.merge_if_due().unwrap();
            replaced_total += replaced.len();
            KeyIndex::remove_runs(replaced);
        }
        assert_eq!(replaced_total, FAN_IN * 2);
        assert_eq!(keys.runs.len(), 2, "{:?}", keys.run_names());
        assert_eq!(keys.run_names()[0], run_name(1, 80));
        for s in 1..=seq {
            assert_eq!(keys.find(&format!("d/G{s}/0")).unwrap(), Some(s));
        }
        assert_eq!(keys.find("d/G0/0").unwrap(), None);
        let on_disk = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(on_disk, 2, "replaced runs are removed");
    }
}
