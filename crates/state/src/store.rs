//! Named keyed state tables and the handles a user function reads and writes them through.

use crate::snapshot::{by_key_group, decode_entries};
use sluice_types::{Data, FastMap, Key};
use std::any::Any;
use std::collections::BTreeMap;
use std::hash::Hash;

/// One named state, type-erased so that a store can hold states of different value types.
trait StateTable: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn type_name(&self) -> &'static str;
    /// The entries, serialized per key group.
    fn snapshot(&self, max_parallelism: usize) -> BTreeMap<u32, Vec<u8>>;
}

struct Table<K, V>(FastMap<K, V>);

impl<K: Key, V: Data> StateTable for Table<K, V> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<V>()
    }
    fn snapshot(&self, max_parallelism: usize) -> BTreeMap<u32, Vec<u8>> {
        by_key_group(self.0.iter(), max_parallelism)
    }
}

/// All keyed state of one operator subtask, by state name.
///
/// ```
/// use sluice_state::KeyedStateStore;
/// let mut store = KeyedStateStore::<String>::default();
/// let key = "a".to_string();
/// store.value::<u64>("count", &key).update(1);
/// assert_eq!(store.value::<u64>("count", &key).get(), Some(&1));
/// store.list::<i32>("seen", &key).add(7);
/// assert_eq!(store.list::<i32>("seen", &key).get(), &[7]);
/// ```
pub struct KeyedStateStore<K> {
    /// The states by name. A function has a handful, looked up on every access: a short
    /// list compared by name beats hashing the name twice (what a map took: a fifth of a
    /// join's time in Nexmark's q4).
    tables: Vec<(String, Box<dyn StateTable>)>,
    /// Restored chunks (key group, entries) of states not touched since the restore: their
    /// types are known only when the function first uses them.
    pending: FastMap<String, Vec<(u32, Vec<u8>)>>,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K> Default for KeyedStateStore<K> {
    fn default() -> Self {
        KeyedStateStore { tables: Vec::new(), pending: FastMap::default(), _key: std::marker::PhantomData }
    }
}

impl<K: Key> KeyedStateStore<K> {
    fn table<V: Data>(&mut self, name: &str) -> &mut FastMap<K, V> {
        let index = match self.tables.iter().position(|(n, _)| n == name) {
            Some(index) => index,
            None => {
                let mut map = FastMap::default();
                for (_, chunk) in self.pending.remove(name).unwrap_or_default() {
                    map.extend(decode_entries::<K, V>(&chunk, name));
                }
                self.tables.push((name.to_string(), Box::new(Table(map))));
                self.tables.len() - 1
            }
        };
        let table = &mut self.tables[index].1;
        let found = table.type_name();
        match table.as_any_mut().downcast_mut::<FastMap<K, V>>() {
            Some(t) => t,
            None => panic!(
                "state '{name}' is used as {} but was first declared as {found}; give each state its own name",
                std::any::type_name::<V>()
            ),
        }
    }

    /// Every state's entries, per key group: `group -> [(state name, entries)]`.
    pub fn snapshot(&self, max_parallelism: usize) -> BTreeMap<u32, Vec<(String, Vec<u8>)>> {
        let mut groups: BTreeMap<u32, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (name, table) in &self.tables {
            for (group, bytes) in table.snapshot(max_parallelism) {
                groups.entry(group).or_default().push((name.clone(), bytes));
            }
        }
        for (name, chunks) in &self.pending {
            for (group, bytes) in chunks {
                groups.entry(*group).or_default().push((name.clone(), bytes.clone()));
            }
        }
        groups
    }

    /// Takes over one state's entries of one key group from a snapshot.
    pub fn restore(&mut self, group: u32, name: String, entries: Vec<u8>) {
        self.pending.entry(name).or_default().push((group, entries));
    }

    /// The value state `name` of `key`.
    pub fn value<'a, V: Data>(&'a mut self, name: &str, key: &'a K) -> ValueState<'a, K, V> {
        ValueState { map: self.table::<V>(name), key }
    }

    /// The list state `name` of `key`.
    pub fn list<'a, V: Data>(&'a mut self, name: &str, key: &'a K) -> ListState<'a, K, V> {
        ListState { map: self.table::<Vec<V>>(name), key }
    }

    /// The map state `name` of `key`.
    pub fn map<'a, UK: Key, UV: Data>(&'a mut self, name: &str, key: &'a K) -> MapState<'a, K, UK, UV> {
        MapState { map: self.table::<FastMap<UK, UV>>(name), key }
    }

    /// How many named states exist.
    pub fn state_count(&self) -> usize {
        self.tables.len()
    }
}

/// A single value per key.
pub struct ValueState<'a, K, V> {
    map: &'a mut FastMap<K, V>,
    key: &'a K,
}

impl<K: Key, V: Data> ValueState<'_, K, V> {
    /// The current value, if any.
    pub fn get(&self) -> Option<&V> {
        self.map.get(self.key)
    }
    /// Sets the value.
    pub fn update(&mut self, value: V) {
        match self.map.get_mut(self.key) {
            Some(slot) => *slot = value,
            None => {
                self.map.insert(self.key.clone(), value);
            }
        }
    }
    /// Removes the value and returns it.
    pub fn clear(&mut self) -> Option<V> {
        self.map.remove(self.key)
    }
}

/// A list of values per key.
pub struct ListState<'a, K, V> {
    map: &'a mut FastMap<K, Vec<V>>,
    key: &'a K,
}

impl<K: Key, V: Data> ListState<'_, K, V> {
    /// The values, oldest first (empty if none).
    pub fn get(&self) -> &[V] {
        self.map.get(self.key).map(Vec::as_slice).unwrap_or(&[])
    }
    /// Appends a value.
    pub fn add(&mut self, value: V) {
        self.entry().push(value);
    }
    /// Replaces the list (an empty list clears it).
    pub fn update(&mut self, values: Vec<V>) {
        if values.is_empty() {
            self.map.remove(self.key);
        } else {
            *self.entry() = values;
        }
    }
    /// Keeps only the values for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&V) -> bool) {
        if let Some(list) = self.map.get_mut(self.key) {
            list.retain(keep);
            if list.is_empty() {
                self.map.remove(self.key);
            }
        }
    }
    /// Removes the list and returns it.
    pub fn clear(&mut self) -> Vec<V> {
        self.map.remove(self.key).unwrap_or_default()
    }
    fn entry(&mut self) -> &mut Vec<V> {
        if !self.map.contains_key(self.key) {
            self.map.insert(self.key.clone(), Vec::new());
        }
        self.map.get_mut(self.key).expect("inserted above")
    }
}

/// A map per key.
pub struct MapState<'a, K, UK, UV> {
    map: &'a mut FastMap<K, FastMap<UK, UV>>,
    key: &'a K,
}

impl<K: Key, UK: Key + Hash + Eq, UV: Data> MapState<'_, K, UK, UV> {
    /// The value under `user_key`.
    pub fn get(&self, user_key: &UK) -> Option<&UV> {
        self.map.get(self.key).and_then(|m| m.get(user_key))
    }
    /// Sets the value under `user_key`.
    pub fn put(&mut self, user_key: UK, value: UV) {
        if !self.map.contains_key(self.key) {
            self.map.insert(self.key.clone(), FastMap::default());
        }
        self.map.get_mut(self.key).expect("inserted above").insert(user_key, value);
    }
    /// Removes the value under `user_key`.
    pub fn remove(&mut self, user_key: &UK) -> Option<UV> {
        let inner = self.map.get_mut(self.key)?;
        let removed = inner.remove(user_key);
        if inner.is_empty() {
            self.map.remove(self.key);
        }
        removed
    }
    /// All entries of this key, in no particular order.
    pub fn entries(&self) -> Vec<(UK, UV)> {
        self.map.get(self.key).map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }
    /// Removes every entry of this key.
    pub fn clear(&mut self) {
        self.map.remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_scoped_by_key() {
        let mut store = KeyedStateStore::<u32>::default();
        store.value::<String>("v", &1).update("one".into());
        assert_eq!(store.value::<String>("v", &2).get(), None);
        store.map::<String, u8>("m", &2).put("x".into(), 9);
        assert_eq!(store.map::<String, u8>("m", &2).get(&"x".into()), Some(&9));
        assert_eq!(store.map::<String, u8>("m", &1).entries(), vec![]);
        assert_eq!(store.value::<String>("v", &1).clear(), Some("one".into()));
        let mut list = store.list::<u8>("l", &3);
        list.add(1);
        list.add(2);
        list.retain(|v| *v > 1);
        assert_eq!(list.get(), &[2]);
        assert_eq!(store.state_count(), 3);
    }

    #[test]
    fn a_snapshot_restores_by_key_group_even_into_untouched_states() {
        let mut store = KeyedStateStore::<u32>::default();
        for k in 0..50u32 {
            store.value::<u64>("v", &k).update(k as u64 * 10);
            store.list::<u8>("l", &k).add(k as u8);
        }
        let snapshot = store.snapshot(8);
        assert!(snapshot.len() > 1 && snapshot.keys().all(|g| *g < 8));
        // Two new subtasks take half of the groups each; state survives a second snapshot
        // before it is ever read.
        let mut halves = [KeyedStateStore::<u32>::default(), KeyedStateStore::<u32>::default()];
        for (group, tables) in snapshot {
            for (name, entries) in tables {
                halves[(group / 4) as usize].restore(group, name, entries);
            }
        }
        let again = halves[0].snapshot(8);
        let mut restored = KeyedStateStore::<u32>::default();
        for (group, tables) in again {
            for (name, entries) in tables {
                restored.restore(group, name, entries);
            }
        }
        for k in 0..50u32 {
            let group = sluice_types::key_group_of(&k, 8).0;
            let store = if group < 4 { &mut restored } else { &mut halves[1] };
            assert_eq!(store.value::<u64>("v", &k).get(), Some(&(k as u64 * 10)));
            assert_eq!(store.list::<u8>("l", &k).get(), &[k as u8]);
        }
    }

    #[test]
    #[should_panic(expected = "give each state its own name")]
    fn a_name_keeps_its_type() {
        let mut store = KeyedStateStore::<u32>::default();
        store.value::<u64>("x", &1).update(1);
        store.list::<u64>("x", &1).add(1);
    }
}
