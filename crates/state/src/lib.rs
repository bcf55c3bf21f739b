//! Keyed state of Sluice operators: value, list and map state, and event-time and
//! processing-time timers, each scoped to the key of the record being processed.
//!
//! This is the heap backend: state lives in hash maps in the operator's memory. Every
//! entry is keyed by the record key, whose key group is a pure function of the key
//! ([`sluice_types::key_group_of`]), so a snapshot can be cut by key group without storing
//! the group beside each entry. The crate knows nothing of tasks, channels or time sources:
//! the operator decides when timers are due and which key is current.

mod backend;
pub mod codec;
mod snapshot;
mod store;
mod timers;

pub use backend::KeyedStateBackend;
pub use codec::StateError;
pub use snapshot::{by_key_group, decode_entries};
pub use store::{KeyedStateStore, ListState, MapState, ValueState};
pub use timers::{TimeDomain, TimerQueue, TimerService};
