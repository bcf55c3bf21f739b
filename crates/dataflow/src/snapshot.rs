//! What operators, sources and sinks hand over at a checkpoint barrier, and what they get
//! back on restore.
//!
//! Keyed state is cut by key group, so a restore at another parallelism hands each new
//! subtask exactly the groups it owns. Everything is serialized with `postcard`; writing it
//! to storage happens elsewhere, in the background.
//!
//! An operator whose state is large copies it at the barrier instead of encoding it there
//! ([`BarrierSnapshot::Copied`], Flink's asynchronous snapshot): copying the maps costs a
//! fraction of encoding them, and the copy is encoded on a thread of its own
//! ([`crate::TaskControl::report`]) while the task goes on with the records after the
//! barrier. The task's report to the coordinator is sent once the copy is encoded, so the
//! checkpoint still completes only with every state in it.

use crate::error::TaskResult;
use serde::{Deserialize, Serialize};
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

/// An operator's state taken at a checkpoint barrier
/// ([`crate::Operator::snapshot_at_barrier`]).
pub enum BarrierSnapshot {
    /// Encoded at the barrier, on the task's thread.
    Encoded(OperatorState),
    /// A copy of the state, taken at the barrier, and what encodes it: the encoding happens
    /// later, on another thread, while the task goes on (the copy no longer changes).
    Copied(Box<dyn FnOnce() -> OperatorState + Send>),
}

/// A copy still to be encoded, with the operator and subtask it belongs to. `encode`
/// reports a panic as the task error of that operator (see [`crate::guard_panic`]).
struct PendingCopy {
    operator: String,
    subtask: usize,
    encode: Box<dyn FnOnce() -> TaskResult<OperatorState> + Send>,
}

/// The states the stages of one task hand over at a barrier or at the end: the encoded ones,
/// and the copies still to be encoded ([`BarrierStates::encode`]).
#[derive(Default)]
pub struct BarrierStates {
    encoded: Vec<SubtaskState>,
    copies: Vec<PendingCopy>,
}

impl BarrierStates {
    /// No states yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an encoded state.
    pub fn push(&mut self, state: SubtaskState) {
        self.encoded.push(state);
    }

    /// Adds a copy of `operator`'s state (subtask `subtask`) that `encode` will encode.
    pub fn push_copy(
        &mut self,
        operator: String,
        subtask: usize,
        encode: Box<dyn FnOnce() -> TaskResult<OperatorState> + Send>,
    ) {
        self.copies.push(PendingCopy { operator, subtask, encode });
    }

    /// Whether some state is still a copy to encode (worth a thread of its own).
    pub fn has_copies(&self) -> bool {
        !self.copies.is_empty()
    }

    /// Encodes the copies (on the calling thread) and returns every state; the error is the
    /// first encoding that failed.
    pub fn encode(self) -> TaskResult<Vec<SubtaskState>> {
        let mut states = self.encoded;
        states.reserve(self.copies.len());
        for PendingCopy { operator, subtask, encode } in self.copies {
            states.push(SubtaskState { operator, subtask, state: encode()? });
        }
        Ok(states)
    }
}

impl From<Vec<SubtaskState>> for BarrierStates {
    fn from(encoded: Vec<SubtaskState>) -> Self {
        BarrierStates { encoded, copies: Vec::new() }
    }
}

pub use sluice_state::codec::{decode, decode_or_fail, encode, encode_into};

/// The first bytes of every state file.
pub const STATE_MAGIC: &[u8; 4] = b"SLST";

/// The state file layout this code writes and reads: after [`STATE_MAGIC`], a little-endian
/// `u16` version, then the state (tag, then length-prefixed chunks whose contents are
/// `postcard`). A reader refuses a version it does not know instead of guessing.
pub const STATE_FORMAT_VERSION: u16 = 1;

/// Writes an [`OperatorState`] as raw bytes (header, tag, then length-prefixed chunks), so
/// that the chunks, already serialized, are copied rather than re-encoded byte by byte.
pub fn write_state(state: &OperatorState) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(STATE_MAGIC);
    out.extend(STATE_FORMAT_VERSION.to_le_bytes());
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

/// Reads what [`write_state`] wrote; the error says why the bytes are not such a state (an
/// unknown format version, or a damaged file).
pub fn read_state(bytes: &[u8]) -> Result<OperatorState, String> {
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
    if c.take(4) != Some(STATE_MAGIC.as_slice()) {
        return Err("not a Sluice state file (its header is missing)".into());
    }
    let version = c.take(2).map(|v| u16::from_le_bytes([v[0], v[1]])).ok_or("the file ends in its header")?;
    if version != STATE_FORMAT_VERSION {
        return Err(format!(
            "state file format version {version} is unknown to this build, which reads version \
             {STATE_FORMAT_VERSION}; restore it with the Sluice version that wrote it"
        ));
    }
    let body = (|| {
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
    })();
    body.ok_or_else(|| "the state file is damaged (its layout does not parse)".into())
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
            assert_eq!(read_state(&bytes), Ok(state));
            assert!(read_state(&bytes[..bytes.len() - 1]).unwrap_err().contains("damaged"));
        }
        assert!(read_state(&[5]).unwrap_err().contains("header"));
        let mut future = write_state(&OperatorState::Plain(vec![1]));
        future[4] = 2;
        let err = read_state(&future).unwrap_err();
        assert!(err.contains("version 2 is unknown") && err.contains("reads version 1"), "{err}");
    }
}
