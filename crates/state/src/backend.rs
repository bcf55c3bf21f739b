//! The state backend interface: what keyed operators need from a store of keyed state,
//! in get/put form so that a backend keeping state outside the heap (an LSM tree on local
//! disk) can implement it without handing out references into its memory.
//!
//! [`KeyedStateStore`] is the heap implementation. The built-in operators still use the
//! heap store's borrowing handles directly; making them generic over this trait is the step
//! that comes with a second backend.

use crate::store::KeyedStateStore;
use sluice_types::{Data, Key};
use std::collections::BTreeMap;

/// A store of keyed state, snapshotted by key group.
pub trait KeyedStateBackend<K: Key>: Send {
    /// The value of state `name` for `key`.
    fn get_value<V: Data>(&mut self, name: &str, key: &K) -> Option<V>;
    /// Sets the value of state `name` for `key`.
    fn put_value<V: Data>(&mut self, name: &str, key: &K, value: V);
    /// The list of state `name` for `key`.
    fn get_list<V: Data>(&mut self, name: &str, key: &K) -> Vec<V>;
    /// Appends to the list of state `name` for `key`.
    fn append<V: Data>(&mut self, name: &str, key: &K, value: V);
    /// The entry `user_key` of map state `name` for `key`.
    fn get_entry<UK: Key, UV: Data>(&mut self, name: &str, key: &K, user_key: &UK) -> Option<UV>;
    /// Sets the entry `user_key` of map state `name` for `key`.
    fn put_entry<UK: Key, UV: Data>(&mut self, name: &str, key: &K, user_key: UK, value: UV);
    /// Every state's entries, per key group: `group -> [(state name, entries)]`.
    fn snapshot(&self, max_parallelism: usize) -> BTreeMap<u32, Vec<(String, Vec<u8>)>>;
    /// Takes over one state's entries of one key group from a snapshot.
    fn restore(&mut self, group: u32, name: String, entries: Vec<u8>);
}

impl<K: Key> KeyedStateBackend<K> for KeyedStateStore<K> {
    fn get_value<V: Data>(&mut self, name: &str, key: &K) -> Option<V> {
        self.value::<V>(name, key).get().cloned()
    }
    fn put_value<V: Data>(&mut self, name: &str, key: &K, value: V) {
        self.value::<V>(name, key).update(value)
    }
    fn get_list<V: Data>(&mut self, name: &str, key: &K) -> Vec<V> {
        self.list::<V>(name, key).get().to_vec()
    }
    fn append<V: Data>(&mut self, name: &str, key: &K, value: V) {
        self.list::<V>(name, key).add(value)
    }
    fn get_entry<UK: Key, UV: Data>(&mut self, name: &str, key: &K, user_key: &UK) -> Option<UV> {
        self.map::<UK, UV>(name, key).get(user_key).cloned()
    }
    fn put_entry<UK: Key, UV: Data>(&mut self, name: &str, key: &K, user_key: UK, value: UV) {
        self.map::<UK, UV>(name, key).put(user_key, value)
    }
    fn snapshot(&self, max_parallelism: usize) -> BTreeMap<u32, Vec<(String, Vec<u8>)>> {
        KeyedStateStore::snapshot(self, max_parallelism)
    }
    fn restore(&mut self, group: u32, name: String, entries: Vec<u8>) {
        KeyedStateStore::restore(self, group, name, entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What any backend must do; run here against the heap backend.
    fn exercise<B: KeyedStateBackend<u64>>(mut backend: B, mut fresh: impl FnMut() -> B) {
        backend.put_value("v", &1, 10u32);
        backend.append("l", &1, 'a');
        backend.append("l", &1, 'b');
        backend.put_entry("m", &2, "x".to_string(), 5i64);
        assert_eq!(backend.get_value::<u32>("v", &1), Some(10));
        assert_eq!(backend.get_value::<u32>("v", &2), None);
        assert_eq!(backend.get_list::<char>("l", &1), vec!['a', 'b']);
        assert_eq!(backend.get_entry::<String, i64>("m", &2, &"x".to_string()), Some(5));
        let mut restored = fresh();
        for (group, tables) in backend.snapshot(16) {
            for (name, entries) in tables {
                restored.restore(group, name, entries);
            }
        }
        assert_eq!(restored.get_value::<u32>("v", &1), Some(10));
        assert_eq!(restored.get_list::<char>("l", &1), vec!['a', 'b']);
        assert_eq!(restored.get_entry::<String, i64>("m", &2, &"x".to_string()), Some(5));
    }

    #[test]
    fn the_heap_backend_meets_the_contract() {
        exercise(KeyedStateStore::<u64>::default(), KeyedStateStore::default);
    }
}
