//! A Bloom filter of keys: which certificates the change log may remember (so a lookup for
//! any other, nearly every request, searches nothing), and which it may have forgotten when
//! it was full.
//!
//! A Bloom filter never says "no" for a key it holds; it says "maybe" for a few it does not,
//! which costs those a search of the runs, or a confirmation by the primary. Blocked: the 4
//! bits of a key are in one 512-bit block, so a lookup touches one cache line. With 8 bits
//! per key it holds, about 2.5% of other keys get a "maybe"; twice as full, about 16%; past
//! that it tends to "maybe" for every key. Bits are only ever set, atomically, so keys can be
//! added while lookups read it; the log replaces a filter rather than clearing it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::runs::Key;

/// Bits per key a filter is sized for.
pub(super) const BITS_PER_KEY: usize = 8;

const WORDS_PER_BLOCK: usize = 8;
const BLOCK_BITS: usize = WORDS_PER_BLOCK * 64;

pub(super) struct Filter {
    words: Box<[AtomicU64]>,
    /// log2 of the number of blocks.
    block_bits: u32,
}

impl Filter {
    /// A filter for about `keys` keys (at least a few thousand).
    pub(super) fn for_keys(keys: usize) -> Self {
        let bits = keys.saturating_mul(BITS_PER_KEY).max(1 << 16).next_power_of_two();
        let blocks = bits / BLOCK_BITS;
        Filter { words: (0..bits / 64).map(|_| AtomicU64::new(0)).collect(), block_bits: blocks.ilog2() }
    }

    /// How many keys it is sized for.
    pub(super) fn capacity(&self) -> usize {
        self.words.len() * 64 / BITS_PER_KEY
    }

    /// The block of `key` from its top bits, the four bits in it from its low ones: the key
    /// is a keyed hash already, uniform and unknown outside this process.
    fn bits(&self, key: Key) -> impl Iterator<Item = (usize, u64)> {
        let block = key.checked_shr(64 - self.block_bits).unwrap_or(0) as usize * WORDS_PER_BLOCK;
        (0..4).map(move |i| {
            let bit = (key >> (9 * i)) as usize % BLOCK_BITS;
            (block + bit / 64, 1u64 << (bit % 64))
        })
    }

    pub(super) fn insert(&self, key: Key) {
        for (word, bit) in self.bits(key) {
            self.words[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    pub(super) fn insert_all(&self, keys: impl Iterator<Item = Key>) {
        keys.for_each(|key| self.insert(key));
    }

    /// False only if `key` was never inserted. Relaxed loads suffice: a key a lookup must find
    /// is inserted under the log's lock, or before the filter is put in force under it, and a
    /// lookup reads the filter under that lock.
    pub(super) fn may_hold(&self, key: Key) -> bool {
        self.bits(key).all(|(word, bit)| self.words[word].load(Ordering::Relaxed) & bit != 0)
    }
}
