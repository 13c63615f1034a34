//! Key runs: immutable files of idempotency keys sorted by their 64-bit hash, the spool's
//! permanent record of every key ever chained (`<spool>/keys/<first>-<last>.run`).
//!
//! ```text
//! run    = header  block*  index  footer
//! header = "CFKEYRN1"  version:u32le  0:u32le  count:u64le  0:u64le            (32 bytes)
//! block  = n:u16le  0:u16le  entry[n]           (about 4 KiB; one larger entry may be alone)
//! entry  = hash:u64le  seq:u64le  len:u16le  key[len]                 (sorted by hash, key)
//! index  = (first_hash:u64le  offset:u64le)[blocks]
//! footer = index_offset:u64le  blocks:u64le  count:u64le  crc:u32le  "KRN1"   (32 bytes)
//! ```
//!
//! The index (16 bytes per 4 KiB block) is kept in memory; a lookup reads one block (rarely
//! two). The CRC covers the index and the header. A run is written under a temporary name,
//! fsync'd and renamed; only a checkpoint that names it makes it part of the spool.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CFKEYRN1";
const FOOTER_MAGIC: &[u8; 4] = b"KRN1";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 32;
const FOOTER_LEN: u64 = 32;
/// Target size of a block.
pub const BLOCK: usize = 4096;
const BLOCK_HEADER: usize = 4;
const ENTRY_FIXED: usize = 8 + 8 + 2;

/// The spool's stable 64-bit hash of an idempotency key: runs are sorted by it, so it must
/// never change between versions. Eight bytes at a time with a multiply-rotate step, the
/// length mixed in, then MurmurHash3's 64-bit finaliser for avalanche. Not cryptographic:
/// every hash match is confirmed against the stored key.
pub fn key_hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(K).rotate_left(27);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(K).rotate_left(27);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One key of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// [`key_hash`] of the key.
    pub hash: u64,
    /// Sequence number of the record that chained it.
    pub seq: u64,
    /// The idempotency key.
    pub key: Vec<u8>,
}

/// An entry to write, borrowing its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'k> {
    /// [`key_hash`] of the key.
    pub hash: u64,
    /// Sequence number of the record that chained it.
    pub seq: u64,
    /// The idempotency key.
    pub key: &'k [u8],
}

/// What [`write`] takes: owned or borrowed entries.
pub trait AsEntry {
    /// The entry, borrowed.
    fn as_entry(&self) -> EntryRef<'_>;
}

impl AsEntry for Entry {
    fn as_entry(&self) -> EntryRef<'_> {
        EntryRef {
            hash: self.hash,
            seq: self.seq,
            key: &self.key,
        }
    }
}

impl AsEntry for EntryRef<'_> {
    fn as_entry(&self) -> EntryRef<'_> {
        *self
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.hash, &self.key, self.seq).cmp(&(other.hash, &other.key, other.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// An open run: its file and its block index.
pub struct Run {
    path: PathBuf,
    file: File,
    /// (first hash, file offset) of each block.
    index: Vec<(u64, u64)>,
    /// Where the blocks end (the index's offset).
    blocks_end: u64,
    count: u64,
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: not a valid key run ({what})", path.display()),
    )
}

/// Write `entries` (sorted by hash, then key) as a run at `path`: under a temporary name,
/// fsync'd, renamed. The directory is not fsync'd (the caller does, once, before a checkpoint
/// names the run).
pub fn write<E: AsEntry>(path: &Path, entries: impl IntoIterator<Item = E>) -> io::Result<Run> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(256 << 10, &file);
    out.write_all(&[0u8; HEADER_LEN as usize])?;
    let mut index: Vec<(u64, u64)> = Vec::new();
    let mut offset = HEADER_LEN;
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK);
    let mut in_block = 0u16;
    let mut count = 0u64;
    let mut last: Option<(u64, Vec<u8>)> = None;
    let flush_block = |out: &mut BufWriter<&File>, block: &mut Vec<u8>, n: &mut u16, offset: &mut u64| {
        if *n == 0 {
            return Ok(());
        }
        block[..2].copy_from_slice(&n.to_le_bytes());
        out.write_all(block)?;
        *offset += block.len() as u64;
        block.clear();
        *n = 0;
        io::Result::Ok(())
    };
    for entry in entries {
        let entry = entry.as_entry();
        if let Some((hash, key)) = &last
            && (*hash, key.as_slice()) > (entry.hash, entry.key)
        {
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "key run entries out of order",
            ));
        }
        let key = &entry.key[..entry.key.len().min(u16::MAX as usize)];
        let size = ENTRY_FIXED + key.len();
        if in_block > 0 && (block.len() + size > BLOCK || in_block == u16::MAX) {
            flush_block(&mut out, &mut block, &mut in_block, &mut offset)?;
        }
        if in_block == 0 {
            block.extend_from_slice(&[0u8; BLOCK_HEADER]);
            index.push((entry.hash, offset));
        }
        block.extend_from_slice(&entry.hash.to_le_bytes());
        block.extend_from_slice(&entry.seq.to_le_bytes());
        block.extend_from_slice(&(key.len() as u16).to_le_bytes());
        block.extend_from_slice(key);
        in_block += 1;
        count += 1;
        match &mut last {
            Some((hash, prev)) => {
                *hash = entry.hash;
                prev.clear();
                prev.extend_from_slice(entry.key);
            }
            None => last = Some((entry.hash, entry.key.to_vec())),
        }
    }
    flush_block(&mut out, &mut block, &mut in_block, &mut offset)?;
    let index_offset = offset;
    let mut index_bytes = Vec::with_capacity(index.len() * 16);
    for (hash, at) in &index {
        index_bytes.extend_from_slice(&hash.to_le_bytes());
        index_bytes.extend_from_slice(&at.to_le_bytes());
    }
    out.write_all(&index_bytes)?;
    let header = header_bytes(count);
    let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
    footer.extend_from_slice(&index_offset.to_le_bytes());
    footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
    footer.extend_from_slice(&count.to_le_bytes());
    footer.extend_from_slice(&checksum(&header, &index_bytes).to_le_bytes());
    footer.extend_from_slice(FOOTER_MAGIC);
    out.write_all(&footer)?;
    out.flush()?;
    drop(out);
    file.write_all_at(&header, 0)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    Run::open(path)
}

fn header_bytes(count: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&count.to_le_bytes());
    header
}

fn checksum(header: &[u8], index: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(header);
    crc.update(index);
    crc.finalize()
}

impl Run {
    /// Open a run and load its index.
    pub fn open(path: &Path) -> io::Result<Run> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < HEADER_LEN + FOOTER_LEN {
            return Err(invalid(path, "too short"));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)?;
        let mut footer = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut footer, len - FOOTER_LEN)?;
        let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        if &header[..8] != MAGIC || &footer[28..] != FOOTER_MAGIC {
            return Err(invalid(path, "bad magic"));
        }
        let (index_offset, blocks, count) = (word(&footer, 0), word(&footer, 8), word(&footer, 16));
        let crc = u32::from_le_bytes(footer[24..28].try_into().expect("4 bytes"));
        if index_offset < HEADER_LEN || blocks.checked_mul(16) != Some(len - FOOTER_LEN - index_offset) {
            return Err(invalid(path, "bad footer"));
        }
        let mut index_bytes = vec![0u8; (blocks * 16) as usize];
        file.read_exact_at(&mut index_bytes, index_offset)?;
        if checksum(&header, &index_bytes) != crc || word(&header, 16) != count {
            return Err(invalid(path, "checksum mismatch"));
        }
        let index = index_bytes.chunks_exact(16).map(|c| (word(c, 0), word(c, 8))).collect();
        Ok(Run {
            path: path.to_path_buf(),
            file,
            index,
            blocks_end: index_offset,
            count,
        })
    }

    /// The run's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keys in the run.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Size of the run's file.
    pub fn file_bytes(&self) -> u64 {
        self.blocks_end + self.index.len() as u64 * 16 + FOOTER_LEN
    }

    /// Bytes of memory the run's index holds.
    pub fn index_bytes(&self) -> usize {
        self.index.len() * 16
    }

    fn block(&self, i: usize) -> io::Result<Vec<u8>> {
        let start = self.index[i].1;
        let end = self.index.get(i + 1).map_or(self.blocks_end, |b| b.1);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(buf)
    }

    /// The sequence number that chained `key` (whose hash is `hash`), if this run holds it.
    pub fn find(&self, hash: u64, key: &[u8]) -> io::Result<Option<u64>> {
        // Entries with this hash start in the last block whose first hash is below it (or in
        // the first block starting with it) and may continue into following blocks.
        let mut i = self.index.partition_point(|(first, _)| *first < hash).saturating_sub(1);
        while i < self.index.len() && self.index[i].0 <= hash {
            let block = self.block(i)?;
            for entry in BlockEntries::new(&block, &self.path)? {
                let entry = entry?;
                match entry.0.cmp(&hash) {
                    Ordering::Less => continue,
                    Ordering::Greater => return Ok(None),
                    Ordering::Equal if entry.2 == key => return Ok(Some(entry.1)),
                    Ordering::Equal => {}
                }
            }
            i += 1;
        }
        Ok(None)
    }

    /// Every entry, in order (for merges and for rebuilding the filter).
    pub fn entries(&self) -> RunEntries<'_> {
        RunEntries {
            run: self,
            block: 0,
            buf: Vec::new(),
            at: 0,
            left: 0,
        }
    }

    /// Remove the run's file.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_file(&self.path)
    }
}

/// Iterates the entries of one block: (hash, seq, key).
struct BlockEntries<'b> {
    bytes: &'b [u8],
    at: usize,
    left: u16,
    path: &'b Path,
}

impl<'b> BlockEntries<'b> {
    fn new(bytes: &'b [u8], path: &'b Path) -> io::Result<Self> {
        let n = bytes
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| invalid(path, "empty block"))?;
        Ok(BlockEntries {
            bytes,
            at: BLOCK_HEADER,
            left: n,
            path,
        })
    }
}

impl<'b> Iterator for BlockEntries<'b> {
    type Item = io::Result<(u64, u64, &'b [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let b = self.bytes;
        let fixed = b.get(self.at..self.at + ENTRY_FIXED);
        let Some(fixed) = fixed else {
            self.left = 0;
            return Some(Err(invalid(self.path, "truncated entry")));
        };
        let hash = u64::from_le_bytes(fixed[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
        let len = u16::from_le_bytes([fixed[16], fixed[17]]) as usize;
        let start = self.at + ENTRY_FIXED;
        let Some(key) = b.get(start..start + len) else {
            self.left = 0;
            return Some(Err(invalid(self.path, "truncated key")));
        };
        self.at = start + len;
        Some(Ok((hash, seq, key)))
    }
}

/// Every entry of a run, in order, reading a block at a time.
pub struct RunEntries<'r> {
    run: &'r Run,
    block: usize,
    buf: Vec<u8>,
    at: usize,
    left: u16,
}

impl Iterator for RunEntries<'_> {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.left == 0 {
            if self.block >= self.run.index.len() {
                return None;
            }
            self.buf = match self.run.block(self.block) {
                Ok(buf) => buf,
                Err(e) => {
                    self.block = self.run.index.len();
                    return Some(Err(e));
                }
            };
            self.block += 1;
            self.left = u16::from_le_bytes([self.buf[0], self.buf[1]]);
            self.at = BLOCK_HEADER;
        }
        let mut entries = BlockEntries {
            bytes: &self.buf,
            at: self.at,
            left: 1,
            path: &self.run.path,
        };
        let item = entries.next()?;
        self.at = entries.at;
        self.left -= 1;
        Some(item.map(|(hash, seq, key)| Entry {
            hash,
            seq,
            key: key.to_vec(),
        }))
    }
}

/// Merge runs into one sorted stream (for writing the merged run).
pub fn merge<'r>(runs: &'r [&'r Run]) -> impl Iterator<Item = io::Result<Entry>> + 'r {
    struct Head {
        entry: Entry,
        source: usize,
    }
    impl PartialEq for Head {
        fn eq(&self, other: &Self) -> bool {
            self.entry == other.entry
        }
    }
    impl Eq for Head {}
    impl PartialOrd for Head {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Head {
        // The smallest entry first (BinaryHeap is a max-heap).
        fn cmp(&self, other: &Self) -> Ordering {
            other.entry.cmp(&self.entry)
        }
    }
    let mut sources: Vec<RunEntries<'r>> = runs.iter().map(|r| r.entries()).collect();
    let mut heap = BinaryHeap::new();
    let mut failed: Option<io::Error> = None;
    for (source, entries) in sources.iter_mut().enumerate() {
        match entries.next() {
            Some(Ok(entry)) => heap.push(Head { entry, source }),
            Some(Err(e)) => failed = Some(e),
            None => {}
        }
    }
    std::iter::from_fn(move || {
        if let Some(e) = failed.take() {
            heap.clear();
            return Some(Err(e));
        }
        let Head { entry, source } = heap.pop()?;
        match sources[source].next() {
            Some(Ok(next)) => heap.push(Head { entry: next, source }),
            Some(Err(e)) => failed = Some(e),
            None => {}
        }
        Some(Ok(entry))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(keys: impl IntoIterator<Item = String>) -> Vec<Entry> {
        let mut out: Vec<Entry> = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| Entry {
                hash: key_hash(k.as_bytes()),
                seq: i as u64 + 1,
                key: k.into_bytes(),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_hash_is_stable_across_versions() {
        // Runs on disk are sorted by it: these values must never change.
        assert_eq!(key_hash(b""), 0);
        assert_eq!(key_hash(b"dev-a/G1/0"), key_hash(b"dev-a/G1/0"));
        assert_ne!(key_hash(b"dev-a/G1/0"), key_hash(b"dev-a/G1/1"));
        assert_eq!(
            key_hash(b"bench/C1DF1D06-E229-444E-AD84-A35FD98BACFF/0"),
            0x32cf_d5a0_8582_dfd6
        );
    }

    #[test]
    fn every_key_is_found_across_blocks_and_others_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let list = entries((0..5_000).map(|i| format!("dev/GUID-{i:06}/0")));
        let run = write(&tmp.path().join("a.run"), list.clone()).unwrap();
        assert!(run.index.len() > 10, "several blocks");
        assert_eq!(run.count(), 5_000);
        for e in &list {
            assert_eq!(run.find(e.hash, &e.key).unwrap(), Some(e.seq));
        }
        assert_eq!(run.find(key_hash(b"dev/GUID-x/0"), b"dev/GUID-x/0").unwrap(), None);
        // Same hash, other key: not found (a hash match is never enough).
        assert_eq!(run.find(list[7].hash, b"another key").unwrap(), None);
        let back: Vec<Entry> = Run::open(run.path())
            .unwrap()
            .entries()
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn equal_hashes_spanning_blocks_and_oversized_keys_are_found() {
        let tmp = tempfile::tempdir().unwrap();
        let mut list: Vec<Entry> = (0..600)
            .map(|i| Entry {
                hash: 77,
                seq: i,
                key: format!("collision-{i:04}").into_bytes(),
            })
            .collect();
        list.push(Entry {
            hash: 78,
            seq: 999,
            key: vec![b'k'; 9_000],
        });
        list.sort();
        let run = write(&tmp.path().join("b.run"), list.clone()).unwrap();
        for e in &list {
            assert_eq!(run.find(e.hash, &e.key).unwrap(), Some(e.seq), "{}", e.seq);
        }
    }

    #[test]
    fn runs_merge_into_one_sorted_run_and_damage_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let a = write(&tmp.path().join("a.run"), entries((0..300).map(|i| format!("a{i}")))).unwrap();
        let b = write(&tmp.path().join("b.run"), entries((0..200).map(|i| format!("b{i}")))).unwrap();
        let merged: Vec<Entry> = merge(&[&a, &b]).collect::<io::Result<_>>().unwrap();
        assert_eq!(merged.len(), 500);
        assert!(merged.windows(2).all(|w| w[0] <= w[1]));
        let c = write(&tmp.path().join("c.run"), merged).unwrap();
        assert!(c.find(key_hash(b"b199"), b"b199").unwrap().is_some());

        assert!(write(&tmp.path().join("d.run"), vec![list_entry(5), list_entry(1)]).is_err());
        let bytes = fs::read(c.path()).unwrap();
        let mut damaged = bytes.clone();
        let at = damaged.len() - 40;
        damaged[at] ^= 1;
        fs::write(tmp.path().join("e.run"), &damaged).unwrap();
        assert!(Run::open(&tmp.path().join("e.run")).is_err());
        fs::write(tmp.path().join("f.run"), &bytes[..bytes.len() - 1]).unwrap();
        assert!(Run::open(&tmp.path().join("f.run")).is_err());
    }

    fn list_entry(hash: u64) -> Entry {
        Entry {
            hash,
            seq: hash,
            key: b"k".to_vec(),
        }
    }
}
