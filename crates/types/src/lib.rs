//! Shared vocabulary of Sluice: the record envelope, event time, the data bounds every
//! stream element satisfies, and key groups with the stable hash that assigns keys to them.
//!
//! This crate has no logic beyond pure functions. Everything that must agree across
//! processes and runs (which key group a key belongs to, which subtask owns a key group)
//! lives here, so that the API, the runtime and the state layer cannot disagree.

pub mod failure;
mod hash;
mod keygroup;
mod time;

pub use hash::{stable_hash, Bytes, MapHasher, StableHash, StableHasher};
pub use keygroup::{
    contiguous_subtask_for_key_group, fraction_moved, key_group_of, key_group_owners, key_group_range,
    subtask_for_key_group, KeyGroup, KeyGroupRange, DEFAULT_MAX_PARALLELISM,
};
pub use time::{
    Record, TimeWindow, Timestamp, MAX_TIMESTAMP, MAX_WATERMARK, MIN_TIMESTAMP, MIN_WATERMARK, NO_TIMESTAMP,
};

use serde::{de::DeserializeOwned, Serialize};
use std::hash::Hash;

/// What every stream element satisfies: it can be cloned (broadcast, fan-out), sent to
/// another thread, and serialized so that the same job can later cross process boundaries.
pub trait Data: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> Data for T {}

/// What a key of a keyed stream satisfies: data that can be hashed (stably, see
/// [`stable_hash`]) and compared.
pub trait Key: Data + Hash + Eq + StableHash {}
impl<T: Data + Hash + Eq + StableHash> Key for T {}

/// A hash map with Sluice's fast, deterministic hasher (seeded apart from the key-group
/// hash so that a subtask's keys still spread over all buckets).
pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<MapHasher>>;
/// A hash set with Sluice's fast hasher; see [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<MapHasher>>;
