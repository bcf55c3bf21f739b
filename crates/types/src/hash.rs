//! The stable key hash: the same value in every process, on every run, on every
//! little- or big-endian 64-bit machine, because integers are mixed by value and not by
//! their in-memory bytes. Key groups depend on it, so changing it breaks every savepoint.

use std::hash::{Hash, Hasher};

const MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;

/// A fast, deterministic [`Hasher`] (an FxHash-style mix finished with MurmurHash3's
/// 64-bit finalizer so that the low bits used for key groups are well distributed).
#[derive(Clone, Copy, Debug)]
pub struct StableHasher {
    state: u64,
}

impl StableHasher {
    /// A hasher starting from `seed`.
    pub const fn with_seed(seed: u64) -> Self {
        StableHasher { state: seed }
    }

    #[inline(always)]
    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::with_seed(0)
    }
}

#[inline(always)]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Hasher for StableHasher {
    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.state)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i)
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.mix(i as u64);
        self.mix((i >> 64) as u64)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_i8(&mut self, i: i8) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_i16(&mut self, i: i16) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.mix(i as u64)
    }
    #[inline]
    fn write_isize(&mut self, i: isize) {
        self.mix(i as u64)
    }
}

/// The hasher of in-memory hash maps: the same mix under another seed, so that the keys of
/// one subtask (which share key-group bits) still spread over all buckets.
#[derive(Clone, Copy, Debug)]
pub struct MapHasher(StableHasher);

impl Default for MapHasher {
    fn default() -> Self {
        MapHasher(StableHasher::with_seed(0x9e37_79b9_7f4a_7c15))
    }
}

impl Hasher for MapHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i)
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.0.write_i64(i)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.0.write_u32(i)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0.write_usize(i)
    }
}

/// The stable hash of a key (see the module docs for what "stable" promises).
#[inline]
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = StableHasher::default();
    key.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_runs() {
        // Pinned values: if these change, every key group and savepoint changes with them.
        assert_eq!(stable_hash(&42u64), stable_hash(&42u64));
        assert_eq!(stable_hash("word"), stable_hash(&String::from("word")));
        assert_ne!(stable_hash(&1u64), stable_hash(&2u64));
        let pinned = stable_hash(&12345u64);
        assert_eq!(pinned, fmix64((0u64.rotate_left(5) ^ 12345).wrapping_mul(MULTIPLIER)));
    }
}
