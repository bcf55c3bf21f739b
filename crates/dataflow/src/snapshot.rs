//! What operators, sources and sinks hand over at a checkpoint barrier, and what they get
//! back on restore.
//!
//! Keyed state is cut by key group, so a restore at another parallelism hands each new
//! subtask exactly the groups it owns. Everything is serialized with `postcard` at the
//! barrier (a copy of the state); writing it to storage happens elsewhere, in the
//! background.

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
