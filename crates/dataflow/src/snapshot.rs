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

/// Writes an [`OperatorState`] as raw bytes (tag, then length-prefixed chunks), so that the
/// chunks, already serialized, are copied rather than re-encoded byte by byte.
pub fn write_state(state: &OperatorState) -> Vec<u8> {
    let mut out = Vec::new();
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend((bytes.len() as u64).to_le_bytes());
        out.extend(bytes);
    };
    match state {
        OperatorState::Keyed(groups) => {
            out.push(0);
            out.extend((groups.len() as u64).to_le_bytes());
            for (group, chunk) in groups {
                out.extend(group.to_le_bytes());
                put(&mut out, chunk);
            }
        }
        OperatorState::Plain(bytes) => {
            out.push(1);
            put(&mut out, bytes);
        }
        OperatorState::Committable(bytes) => {
            out.push(2);
            put(&mut out, bytes);
        }
    }
    out
}

/// Reads what [`write_state`] wrote; `None` if the bytes are not such a state.
pub fn read_state(bytes: &[u8]) -> Option<OperatorState> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = tail;
            Some(head)
        }
        fn word(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn chunk(&mut self) -> Option<Vec<u8>> {
            let len = usize::try_from(self.word()?).ok()?;
            Some(self.take(len)?.to_vec())
        }
    }
    let mut c = Cursor(bytes);
    let state = match c.take(1)?[0] {
        0 => {
            let count = c.word()?;
            let mut groups = BTreeMap::new();
            for _ in 0..count {
                let group = u32::from_le_bytes(c.take(4)?.try_into().ok()?);
                groups.insert(group, c.chunk()?);
            }
            OperatorState::Keyed(groups)
        }
        1 => OperatorState::Plain(c.chunk()?),
        2 => OperatorState::Committable(c.chunk()?),
        _ => return None,
    };
    c.0.is_empty().then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_state_encoding_round_trips_and_rejects_garbage() {
        let states = [
            OperatorState::Keyed(BTreeMap::from([(0, vec![]), (7, vec![1, 2, 3])])),
            OperatorState::Plain(vec![9; 20]),
            OperatorState::Committable(vec![]),
        ];
        for state in states {
            let bytes = write_state(&state);
            assert_eq!(read_state(&bytes), Some(state));
            assert_eq!(read_state(&bytes[..bytes.len() - 1]), None);
        }
        assert_eq!(read_state(&[5]), None);
    }
}
