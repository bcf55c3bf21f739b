//! Key groups: the unit in which keyed state is partitioned, moved and rescaled.
//!
//! A key belongs to group `stable_hash(key) % max_parallelism`. Which subtask owns a group
//! is [`subtask_for_key_group`], built so that a change of parallelism moves as few groups
//! as can be moved while every subtask keeps an equal share (`m/p`, rounded): going from
//! `p` to `q < p` moves only the groups of the subtasks that go away, and going back up
//! moves only the groups the new subtasks take, so each change moves the least it can
//! (`|p - q| / max(p, q)` of the groups, rounded). Flink's contiguous ranges
//! ([`contiguous_subtask_for_key_group`]) move about half of them for most changes by one;
//! `sluice-bench keygroups` prints both.
//!
//! The assignment grows one subtask at a time: at parallelism 1, subtask 0 owns every
//! group in order; going from `k - 1` to `k` subtasks, each existing subtask keeps the
//! first groups of its list up to its new share and hands the rest, from the end, to the
//! new subtask `k - 1`. A group therefore only ever moves to a new subtask, and so going
//! down from `p` to `q` moves exactly the groups of subtasks `q..p`.

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

/// The subtask (of `parallelism`) that owns `group`, out of `max_parallelism` groups.
pub fn subtask_for_key_group(group: KeyGroup, max_parallelism: usize, parallelism: usize) -> usize {
    key_group_owners(max_parallelism, parallelism)[group.0 as usize] as usize
}

/// The owner of every key group (index: the group) at `parallelism`, as
/// [`subtask_for_key_group`] assigns. Built once per (groups, parallelism) in a process.
pub fn key_group_owners(max_parallelism: usize, parallelism: usize) -> std::sync::Arc<[u32]> {
    type Tables = std::collections::HashMap<(usize, usize), std::sync::Arc<[u32]>>;
    static TABLES: std::sync::LazyLock<std::sync::Mutex<Tables>> = std::sync::LazyLock::new(Default::default);
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    tables.entry((max_parallelism, parallelism)).or_insert_with(|| build_owners(max_parallelism, parallelism)).clone()
}

fn build_owners(max_parallelism: usize, parallelism: usize) -> std::sync::Arc<[u32]> {
    assert!(parallelism >= 1 && max_parallelism >= 1, "key groups need a parallelism and groups");
    let share = |index: usize, of: usize| max_parallelism / of + usize::from(index < max_parallelism % of);
    let mut lists: Vec<Vec<u32>> = vec![(0..max_parallelism as u32).collect()];
    for k in 2..=parallelism {
        let mut newcomer = Vec::with_capacity(share(k - 1, k));
        for (index, list) in lists.iter_mut().enumerate() {
            // Each existing subtask's share shrinks (or stays): what it no longer keeps
            // goes to the new subtask.
            let keep = share(index, k);
            newcomer.extend(list.drain(keep.min(list.len())..).rev());
        }
        lists.push(newcomer);
    }
    let mut owners = vec![0u32; max_parallelism];
    for (index, list) in lists.iter().enumerate() {
        for group in list {
            owners[*group as usize] = index as u32;
        }
    }
    owners.into()
}

/// The subtask that owns `group` under Flink's contiguous ranges (subtask `i` of `p` owns
/// `[ceil(i*m/p), ceil((i+1)*m/p))`): for comparison only, Sluice assigns by
/// [`subtask_for_key_group`].
pub fn contiguous_subtask_for_key_group(group: KeyGroup, max_parallelism: usize, parallelism: usize) -> usize {
    group.0 as usize * parallelism / max_parallelism
}

/// The fraction of the `max_parallelism` groups whose owner differs between parallelism
/// `from` and `to` under the assignment `owner`.
pub fn fraction_moved(
    max_parallelism: usize,
    from: usize,
    to: usize,
    owner: impl Fn(KeyGroup, usize, usize) -> usize,
) -> f64 {
    let moved = (0..max_parallelism as u32)
        .filter(|g| owner(KeyGroup(*g), max_parallelism, from) != owner(KeyGroup(*g), max_parallelism, to))
        .count();
    moved as f64 / max_parallelism as f64
}

/// The contiguous range of key groups that subtask `index` of `parallelism` owns under
/// Flink's assignment ([`contiguous_subtask_for_key_group`]).
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
                        assert_eq!(contiguous_subtask_for_key_group(KeyGroup(g), max, p), i, "max {max} p {p}");
                    }
                    assert_eq!(range.start as usize, covered);
                    covered = range.end as usize;
                }
                assert_eq!(covered, max);
            }
        }
    }

    #[test]
    fn every_subtask_owns_an_equal_share_and_a_change_of_parallelism_moves_the_least_it_can() {
        for max in [1usize, 7, 128, 1000] {
            for p in 1..=max.min(24) {
                let owners = key_group_owners(max, p);
                let mut counts = vec![0usize; p];
                owners.iter().for_each(|o| counts[*o as usize] += 1);
                for (i, c) in counts.iter().enumerate() {
                    assert_eq!(*c, max / p + usize::from(i < max % p), "max {max} p {p} subtask {i}");
                }
                for q in 1..p {
                    // Down from p to q: exactly the groups of subtasks q..p move; the rest stay.
                    for g in 0..max as u32 {
                        let (at_p, at_q) =
                            (subtask_for_key_group(KeyGroup(g), max, p), subtask_for_key_group(KeyGroup(g), max, q));
                        assert!(
                            at_p == at_q || at_p >= q,
                            "max {max}: group {g} moved from {at_p} at {p} to {at_q} at {q}"
                        );
                    }
                    let least = counts[q..].iter().sum::<usize>() as f64 / max as f64;
                    assert_eq!(fraction_moved(max, p, q, subtask_for_key_group), least);
                    assert_eq!(fraction_moved(max, q, p, subtask_for_key_group), least, "and back up");
                }
            }
        }
        // Flink's ranges, for comparison: 4 -> 3 moves 65 of 128 groups, Sluice 32.
        assert_eq!(fraction_moved(128, 4, 3, contiguous_subtask_for_key_group), 65.0 / 128.0);
        assert_eq!(fraction_moved(128, 4, 3, subtask_for_key_group), 0.25);
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
