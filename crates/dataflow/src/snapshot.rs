//! What operators, sources and sinks hand over at a checkpoint barrier, and what they get
//! back on restore.
//!
//! Keyed state is cut by key group, so a restore at another parallelism hands each new
//! subtask exactly the groups it owns. Everything is serialized with `bincode` at the
//! barrier (a copy of the state); writing it to storage happens elsewhere, in the
//! background.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

/// A checkpoint barrier: everything before it on a channel belongs to checkpoint `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// The checkpoint's id (increasing over the job's life, across restarts).
    pub id: u64,
    /// Wall-clock time the checkpoint was triggered (milliseconds).
    pub timestamp: i64,
}

/// The state of one operator subtask at a barrier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorState {
    /// Keyed state, by key group.
    Keyed(BTreeMap<u32, Vec<u8>>),
    /// State that belongs to the subtask as a whole (a source's position).
    Plain(Vec<u8>),
    /// What a two-phase-commit sink must commit once the checkpoint is complete.
    Committable(Vec<u8>),
}

/// One subtask's state, labelled with the operator's state id (its uid, or its name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskState {
    /// The operator's state id.
    pub operator: String,
    /// Zero-based subtask index.
    pub subtask: usize,
    /// The state.
    pub state: OperatorState,
}

/// State handed to a new operator subtask on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// (key group, serialized chunk) for the groups this subtask owns, from any old subtask.
    Keyed(Vec<(u32, Vec<u8>)>),
    /// The subtask's own state.
    Plain(Vec<u8>),
}

/// Serializes state for a snapshot.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory state always serializes")
}

/// Deserializes state from a snapshot; a mismatch (state written by another version of the
/// operator) is reported with the operator's own words.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> T {
    bincode::deserialize(bytes).unwrap_or_else(|e| {
        panic!("cannot read the restored state of {what}: {e}; was the operator's state type changed?")
    })
}
