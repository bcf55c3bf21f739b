//! Named keyed state tables and the handles a user function reads and writes them through.

use sluice_types::{Data, FastMap, Key};
use std::any::Any;
use std::hash::Hash;

/// One named state, type-erased so that a store can hold states of different value types.
trait StateTable: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn type_name(&self) -> &'static str;
}

struct Table<T>(T);

impl<T: Send + 'static> StateTable for Table<T> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
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
    tables: FastMap<String, Box<dyn StateTable>>,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K> Default for KeyedStateStore<K> {
    fn default() -> Self {
        KeyedStateStore {
            tables: FastMap::default(),
            _key: std::marker::PhantomData,
        }
    }
}

impl<K: Key> KeyedStateStore<K> {
    fn table<T: Default + Send + 'static>(&mut self, name: &str) -> &mut T {
        if !self.tables.contains_key(name) {
            self.tables
                .insert(name.to_string(), Box::new(Table(T::default())));
        }
        let table = self.tables.get_mut(name).expect("inserted above");
        let found = table.type_name();
        match table.as_any_mut().downcast_mut::<T>() {
            Some(t) => t,
            None => panic!(
                "state '{name}' is used as {} but was first declared as {found}; give each state its own name",
                std::any::type_name::<T>()
            ),
        }
    }

    /// The value state `name` of `key`.
    pub fn value<'a, V: Data>(&'a mut self, name: &str, key: &'a K) -> ValueState<'a, K, V> {
        ValueState {
            map: self.table::<FastMap<K, V>>(name),
            key,
        }
    }

    /// The list state `name` of `key`.
    pub fn list<'a, V: Data>(&'a mut self, name: &str, key: &'a K) -> ListState<'a, K, V> {
        ListState {
            map: self.table::<FastMap<K, Vec<V>>>(name),
            key,
        }
    }

    /// The map state `name` of `key`.
    pub fn map<'a, UK: Key, UV: Data>(
        &'a mut self,
        name: &str,
        key: &'a K,
    ) -> MapState<'a, K, UK, UV> {
        MapState {
            map: self.table::<FastMap<K, FastMap<UK, UV>>>(name),
            key,
        }
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
        self.map
            .get_mut(self.key)
            .expect("inserted above")
            .insert(user_key, value);
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
        self.map
            .get(self.key)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
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
    #[should_panic(expected = "give each state its own name")]
    fn a_name_keeps_its_type() {
        let mut store = KeyedStateStore::<u32>::default();
        store.value::<u64>("x", &1).update(1);
        store.list::<u64>("x", &1).add(1);
    }
}
