//! The manifest: what a checkpoint holds, with a checksum per state file.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format version this code writes and reads.
pub const FORMAT: u32 = 1;

/// Kind of a state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// Keyed state, by key group.
    Keyed,
    /// A subtask's own state (a source position).
    Plain,
    /// A sink's pre-committed transaction.
    Committable,
}

/// One state file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    /// The operator's state id (uid or name).
    pub operator: String,
    /// The subtask that wrote it.
    pub subtask: usize,
    /// What it holds.
    pub kind: StateKind,
    /// File name inside the checkpoint's folder.
    pub file: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its CRC-32.
    pub crc32: u32,
    /// The key groups a keyed state file holds (absent in manifests written before it was
    /// recorded, and for other kinds): a process restoring a spread job reads only the files
    /// holding groups its subtasks own.
    // No `skip_serializing_if`: entries also travel between processes in postcard, which
    // has no field names and cannot skip one.
    #[serde(default)]
    pub key_groups: Option<Vec<u32>>,
}

/// The manifest of a completed checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The job's name.
    pub job: String,
    /// The checkpoint id.
    pub checkpoint: u64,
    /// Whether this is a savepoint (kept until deleted by hand).
    pub savepoint: bool,
    /// Whether the job had finished its bounded input (nothing is left to run).
    pub finished: bool,
    /// When it was triggered (milliseconds since the epoch).
    pub timestamp_ms: i64,
    /// Number of key groups of the job.
    pub max_parallelism: usize,
    /// Parallelism of each operator with state, by state id.
    pub parallelism: BTreeMap<String, usize>,
    /// The state files.
    pub states: Vec<StateEntry>,
}

impl Manifest {
    /// Parses a manifest, rejecting other format versions.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("unreadable manifest: {e}"))?;
        if manifest.format != FORMAT {
            return Err(format!("manifest format {} is not {FORMAT}", manifest.format));
        }
        Ok(manifest)
    }

    /// The manifest as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serializes")
    }
}
