//! The stable key hash: the same value in every process, on every run, on every
//! little- or big-endian 64-bit machine, because integers are mixed by value and not by
//! their in-memory bytes. Key groups depend on it, so changing it breaks every savepoint.

use std::hash::Hasher;

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

/// A key's stable encoding, fed word by word to a [`StableHasher`]. Key groups come from
/// it, and savepoints outlive builds, so the encoding is Sluice's own and written down here
/// rather than `std::hash::Hash`'s (whose calls for `str`, slices or enums are not promised
/// to stay the same across compiler versions):
///
/// - integers up to 64 bits, `bool` (0 or 1) and `char` (its scalar value): one word, signed
///   ones sign-extended to 64 bits (`-1i32` and `-1i64` hash alike); `u128`/`i128`: the low
///   word, then the high word;
/// - `str` and `String`: the UTF-8 bytes in 8-byte little-endian words, the last partial
///   word zero-padded and XORed with its length shifted left by 56, then the word `0xff`;
///   byte slices and `Vec<u8>`: their length as a word, then the bytes the same way (without
///   the `0xff`);
/// - tuples (up to 6) and structs through [`stable_hash_fields!`](crate::stable_hash_fields):
///   the fields in order, nothing between them;
/// - other slices, `Vec`s and arrays: the length as a word, then each element; `Option`:
///   the word 0 for `None`, or 1 and the value; `()`: nothing; references, `Box`, `Rc` and
///   `Arc`: what they point to.
///
/// An enum key implements it by hand: a word for the variant, then its fields.
pub trait StableHash {
    /// Feeds this value's encoding to `hasher`.
    fn stable_hash(&self, hasher: &mut StableHasher);
}

impl StableHasher {
    /// Mixes one word of an encoding.
    #[inline(always)]
    pub fn word(&mut self, word: u64) {
        self.mix(word)
    }

    /// Mixes bytes as 8-byte little-endian words, the last one padded (see [`StableHash`]).
    #[inline]
    pub fn bytes(&mut self, bytes: &[u8]) {
        Hasher::write(self, bytes)
    }
}

macro_rules! stable_hash_as_word {
    ($($t:ty),*) => {$(
        impl StableHash for $t {
            #[inline(always)]
            fn stable_hash(&self, hasher: &mut StableHasher) {
                hasher.word(*self as u64)
            }
        }
    )*};
}

macro_rules! stable_hash_signed {
    ($($t:ty),*) => {$(
        impl StableHash for $t {
            #[inline(always)]
            fn stable_hash(&self, hasher: &mut StableHasher) {
                hasher.word(*self as i64 as u64)
            }
        }
    )*};
}

stable_hash_as_word!(u8, u16, u32, u64, usize);
stable_hash_signed!(i8, i16, i32, i64, isize);

impl StableHash for u128 {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.word(*self as u64);
        hasher.word((*self >> 64) as u64);
    }
}

impl StableHash for i128 {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        (*self as u128).stable_hash(hasher)
    }
}

impl StableHash for bool {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.word(*self as u64)
    }
}

impl StableHash for char {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.word(*self as u64)
    }
}

impl StableHash for str {
    #[inline]
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.bytes(self.as_bytes());
        hasher.word(0xff);
    }
}

impl StableHash for String {
    #[inline]
    fn stable_hash(&self, hasher: &mut StableHasher) {
        self.as_str().stable_hash(hasher)
    }
}

impl StableHash for () {
    fn stable_hash(&self, _hasher: &mut StableHasher) {}
}

/// Slices other than of bytes: the length, then each element.
fn hash_elements<T: StableHash>(items: &[T], hasher: &mut StableHasher) {
    hasher.word(items.len() as u64);
    for item in items {
        item.stable_hash(hasher);
    }
}

impl<T: StableHash> StableHash for [T] {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hash_elements(self, hasher)
    }
}

impl<T: StableHash> StableHash for Vec<T> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hash_elements(self, hasher)
    }
}

impl<T: StableHash, const N: usize> StableHash for [T; N] {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hash_elements(self, hasher)
    }
}

/// Byte strings as bytes, not as a word per byte (a `Vec<u8>` key is hashed as fast as a
/// `String`).
#[derive(Clone, Copy, Debug)]
pub struct Bytes<'a>(pub &'a [u8]);

impl StableHash for Bytes<'_> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.word(self.0.len() as u64);
        hasher.bytes(self.0);
    }
}

impl<T: StableHash> StableHash for Option<T> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        match self {
            None => hasher.word(0),
            Some(value) => {
                hasher.word(1);
                value.stable_hash(hasher);
            }
        }
    }
}

impl<T: StableHash + ?Sized> StableHash for &T {
    #[inline(always)]
    fn stable_hash(&self, hasher: &mut StableHasher) {
        (**self).stable_hash(hasher)
    }
}

impl<T: StableHash + ?Sized> StableHash for Box<T> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        (**self).stable_hash(hasher)
    }
}

impl<T: StableHash + ?Sized> StableHash for std::rc::Rc<T> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        (**self).stable_hash(hasher)
    }
}

impl<T: StableHash + ?Sized> StableHash for std::sync::Arc<T> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        (**self).stable_hash(hasher)
    }
}

macro_rules! stable_hash_tuple {
    ($($name:ident),+) => {
        impl<$($name: StableHash),+> StableHash for ($($name,)+) {
            #[allow(non_snake_case)]
            #[inline]
            fn stable_hash(&self, hasher: &mut StableHasher) {
                let ($($name,)+) = self;
                $($name.stable_hash(hasher);)+
            }
        }
    };
}

stable_hash_tuple!(A);
stable_hash_tuple!(A, B);
stable_hash_tuple!(A, B, C);
stable_hash_tuple!(A, B, C, D);
stable_hash_tuple!(A, B, C, D, E);
stable_hash_tuple!(A, B, C, D, E, F);

/// Implements [`StableHash`] for a struct by its fields, in the order given (which is
/// part of the encoding: keep it when fields are added).
///
/// ```
/// use sluice_types::{stable_hash, stable_hash_fields};
/// #[derive(Clone, PartialEq, Eq, Hash)]
/// struct Account { region: String, id: u64 }
/// stable_hash_fields!(Account { region, id });
/// let a = Account { region: "eu".into(), id: 7 };
/// assert_eq!(stable_hash(&a), stable_hash(&("eu", 7u64)));
/// ```
#[macro_export]
macro_rules! stable_hash_fields {
    ($type:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::StableHash for $type {
            fn stable_hash(&self, hasher: &mut $crate::StableHasher) {
                $($crate::StableHash::stable_hash(&self.$field, hasher);)+
            }
        }
    };
}

/// The stable hash of a key (see [`StableHash`] for the encoding it hashes).
#[inline]
pub fn stable_hash<K: StableHash + ?Sized>(key: &K) -> u64 {
    let mut hasher = StableHasher::default();
    key.stable_hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    struct Account {
        region: String,
        id: u64,
    }
    stable_hash_fields!(Account { region, id });

    /// The hash through `std::hash::Hash`, as Sluice computed it before the encoding was
    /// its own: integers, strings and tuples of them keep their key groups.
    fn through_std<K: Hash + ?Sized>(key: &K) -> u64 {
        let mut hasher = StableHasher::default();
        key.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn the_encoding_is_pinned_by_literal_vectors() {
        // If one of these changes, every key group and every savepoint changes with it.
        let vectors: Vec<(&str, u64)> = vec![
            ("0u64", stable_hash(&0u64)),
            ("42u64", stable_hash(&42u64)),
            ("-1i32", stable_hash(&-1i32)),
            ("u64::MAX", stable_hash(&u64::MAX)),
            ("1u128 << 64", stable_hash(&(1u128 << 64))),
            ("true", stable_hash(&true)),
            ("'x'", stable_hash(&'x')),
            ("\"\"", stable_hash("")),
            ("\"word\"", stable_hash("word")),
            ("\"a longer string key\"", stable_hash("a longer string key")),
            ("(1u32, \"a\")", stable_hash(&(1u32, "a"))),
            ("(7u8, 8u16, 9i64)", stable_hash(&(7u8, 8u16, 9i64))),
            ("Account { eu, 7 }", stable_hash(&Account { region: "eu".into(), id: 7 })),
            ("Some(5u64)", stable_hash(&Some(5u64))),
            ("None::<u64>", stable_hash(&None::<u64>)),
            ("vec![1u32, 2]", stable_hash(&vec![1u32, 2])),
            ("Bytes(b\"ab\")", stable_hash(&Bytes(b"ab"))),
        ];
        let pinned: Vec<(&str, u64)> = vec![
            ("0u64", 0x0000000000000000),
            ("42u64", 0x255858394b61ab76),
            ("-1i32", 0x92f96f6a0392ef8d),
            ("u64::MAX", 0x92f96f6a0392ef8d),
            ("1u128 << 64", 0x37e8d29469497cd2),
            ("true", 0x37e8d29469497cd2),
            ("'x'", 0xb5fb207b6a6eb90e),
            ("\"\"", 0xb1e6473724cbac6f),
            ("\"word\"", 0x06616bc95970eac1),
            ("\"a longer string key\"", 0xd290f52112f8fa56),
            ("(1u32, \"a\")", 0x7aafbc96ee5a5a35),
            ("(7u8, 8u16, 9i64)", 0x847e70ee889138a1),
            ("Account { eu, 7 }", 0x485d5764d8294e8c),
            ("Some(5u64)", 0x3028dd18c8201941),
            ("None::<u64>", 0x0000000000000000),
            ("vec![1u32, 2]", 0x92a807296d5286e5),
            ("Bytes(b\"ab\")", 0xa5c449360e67a283),
        ];
        assert_eq!(vectors, pinned);
    }

    #[test]
    fn integers_strings_and_tuples_keep_the_hash_they_had_through_std() {
        assert_eq!(stable_hash(&42u64), through_std(&42u64));
        assert_eq!(stable_hash(&-3i32), through_std(&-3i32));
        assert_eq!(stable_hash("word"), through_std("word"));
        assert_eq!(stable_hash(&String::from("word")), stable_hash("word"));
        assert_eq!(stable_hash(&(1u32, "a")), through_std(&(1u32, "a")));
        assert_eq!(stable_hash(&Account { region: "eu".into(), id: 7 }), stable_hash(&("eu", 7u64)));
        assert_ne!(stable_hash(&1u64), stable_hash(&2u64));
    }
}
