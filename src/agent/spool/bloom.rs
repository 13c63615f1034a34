//! A Bloom filter over 64-bit key hashes: "certainly absent" answers without a disk lookup.
//! It never answers "absent" for a key that was added; a "maybe" is checked exactly by the
//! caller. Sized for ten bits per key (about 1 % false positives), so a million keys take
//! 1.2 MB.

/// Bits per expected key.
const BITS_PER_KEY: usize = 10;
/// Probes per key (optimal for ten bits per key is about 7).
const PROBES: u64 = 7;

/// The filter.
pub struct Bloom {
    bits: Vec<u64>,
    capacity: usize,
    len: usize,
}

impl Bloom {
    /// An empty filter for up to `capacity` keys at the designed false-positive rate.
    pub fn with_capacity(capacity: usize) -> Bloom {
        let capacity = capacity.max(1024);
        let words = (capacity * BITS_PER_KEY).div_ceil(64);
        Bloom {
            bits: vec![0; words],
            capacity,
            len: 0,
        }
    }

    /// Keys added so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether more keys than designed for were added (the caller should rebuild larger).
    pub fn is_overfull(&self) -> bool {
        self.len > self.capacity
    }

    /// Bit `i` of the `PROBES` a hash sets. Double hashing (Kirsch and Mitzenmacher):
    /// probe i is h1 + i * h2, modulo the number of bits.
    fn bit(&self, hash: u64, i: u64) -> usize {
        let m = (self.bits.len() * 64) as u64;
        let (h1, h2) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize
    }

    /// Add a key by its hash.
    pub fn insert(&mut self, hash: u64) {
        for i in 0..PROBES {
            let bit = self.bit(hash, i);
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
        self.len += 1;
    }

    /// False only when no key with this hash was added.
    pub fn may_contain(&self, hash: u64) -> bool {
        (0..PROBES).all(|i| {
            let bit = self.bit(hash, i);
            self.bits[bit / 64] & (1 << (bit % 64)) != 0
        })
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};

    use super::*;

    #[test]
    fn added_keys_are_always_found_and_others_mostly_not() {
        let hasher = RandomState::new();
        let mut bloom = Bloom::with_capacity(10_000);
        for i in 0..10_000 {
            bloom.insert(hasher.hash_one(format!("dev/G{i}/0")));
        }
        assert!((0..10_000).all(|i| bloom.may_contain(hasher.hash_one(format!("dev/G{i}/0")))));
        let false_positives = (10_000..20_000)
            .filter(|i| bloom.may_contain(hasher.hash_one(format!("dev/G{i}/0"))))
            .count();
        // Designed for ~1 %; 3 % would mean the probes are broken.
        assert!(false_positives < 300, "{false_positives} false positives in 10,000");
        assert!(!bloom.is_overfull());
        bloom.insert(1);
        assert!(bloom.is_overfull());
        assert_eq!(bloom.len(), 10_001);
    }
}
