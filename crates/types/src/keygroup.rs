//! Key groups: the unit in which keyed state is partitioned, moved and rescaled.
//!
//! A key belongs to group `stable_hash(key) % max_parallelism`; subtask `i` of `p` owns the
//! contiguous range of groups that Flink assigns (`[ceil(i*m/p), ceil((i+1)*m/p))`), so a
//! rescale moves whole ranges and keeps most groups where they were.

use crate::hash::stable_hash;
use serde::{Deserialize, Serialize};
use std::hash::Hash;
use std::ops::Range;

/// The default number of key groups (the largest parallelism a keyed operator can reach).
pub const DEFAULT_MAX_PARALLELISM: usize = 128;

/// One key group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyGroup(pub u32);

/// The key groups a subtask owns.
pub type KeyGroupRange = Range<u32>;

/// The key group of `key` when there are `max_parallelism` groups.
#[inline]
pub fn key_group_of<K: crate::StableHash + ?Sized>(key: &K, max_parallelism: usize) -> KeyGroup {
    KeyGroup((stable_hash(key) % max_parallelism as u64) as u32)
}

/// The subtask (of `parallelism`) that owns `group`.
#[inline]
pub fn subtask_for_key_group(group: KeyGroup, max_parallelism: usize, parallelism: usize) -> usize {
    group.0 as usize * parallelism / max_parallelism
}

/// The key groups owned by subtask `index` of `parallelism`.
pub fn key_group_range(index: usize, parallelism: usize, max_parallelism: usize) -> KeyGroupRange {
    let start = (index * max_parallelism).div_ceil(parallelism);
    let end = ((index + 1) * max_parallelism).div_ceil(parallelism);
    start as u32..end as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_owner_agree() {
        for max in [1usize, 7, 128, 1000] {
            for p in 1..=max.min(20) {
                let mut covered = 0;
                for i in 0..p {
                    let range = key_group_range(i, p, max);
                    for g in range.clone() {
                        assert_eq!(subtask_for_key_group(KeyGroup(g), max, p), i, "max {max} p {p}");
                    }
                    assert_eq!(range.start as usize, covered);
                    covered = range.end as usize;
                }
                assert_eq!(covered, max);
            }
        }
    }

    #[test]
    fn keys_spread_over_groups() {
        let mut counts = vec![0usize; 128];
        for k in 0..128_000u64 {
            counts[key_group_of(&k, 128).0 as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
    }
}
