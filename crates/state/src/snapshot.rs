//! Cutting keyed entries by key group for snapshots, and reading them back.

use crate::codec::{decode_or_fail, encode};
use serde::{de::DeserializeOwned, Serialize};
use sluice_types::{key_group_of, Key};
use std::collections::BTreeMap;

/// Serializes `(key, value)` entries into one chunk per key group.
pub fn by_key_group<'a, K: Key, V: Serialize + 'a>(
    entries: impl Iterator<Item = (&'a K, V)>,
    max_parallelism: usize,
) -> BTreeMap<u32, Vec<u8>> {
    let mut groups: BTreeMap<u32, Vec<(&K, V)>> = BTreeMap::new();
    for (key, value) in entries {
        groups.entry(key_group_of(key, max_parallelism).0).or_default().push((key, value));
    }
    groups.into_iter().map(|(group, entries)| (group, encode(&entries))).collect()
}

/// Reads a chunk written by [`by_key_group`].
pub fn decode_entries<K: DeserializeOwned, V: DeserializeOwned>(chunk: &[u8], what: &str) -> Vec<(K, V)> {
    decode_or_fail(chunk, &format!("'{what}'"))
}
