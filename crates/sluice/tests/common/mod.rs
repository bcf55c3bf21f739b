//! Shared helpers of the integration tests: a seeded generator and reference helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::Hash;

/// SplitMix64: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed of a test run: `SLUICE_TEST_SEED` if set, else a fixed default.
pub fn seed() -> u64 {
    std::env::var("SLUICE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed)
}

/// Sorted copy, for comparing multisets.
pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Counts of each distinct item.
pub fn multiset<T: Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// Tumbling window start of `t` for windows of `size`.
pub fn window_start(t: i64, size: i64) -> i64 {
    t - t.rem_euclid(size)
}

/// Every line of the committed part files of a sink folder (what any reader sees).
pub fn committed_lines(dir: &std::path::Path) -> Vec<String> {
    sluice::connectors::committed_lines(dir).unwrap()
}

/// Sums the value (the second field) of (key, value, event time) records.
#[derive(Clone)]
pub struct SumValues;

impl<K> sluice::prelude::AggregateFunction<(K, u64, i64)> for SumValues {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, e: (K, u64, i64)) {
        *acc += e.1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}
