//! Sluice's checkpoint layer: where snapshots go and how a restart finds them.
//!
//! - [`manifest`]: the manifest of a checkpoint, written last; a checkpoint without one
//!   does not exist.
//! - [`recovery`]: pure decisions, tested without I/O: which checkpoint to restore, which to
//!   delete, which key groups and committables each new subtask gets.
//! - [`storage`]: state files with CRC-32 checksums and the manifest, through the
//!   `object_store` crate (a local folder by default).
//!
//! The coordinator that triggers checkpoints and collects task states lives in the runtime;
//! this crate decides and stores, and never talks to tasks.

pub mod manifest;
pub mod recovery;
pub mod storage;

pub use manifest::{Manifest, StateEntry, StateKind};
pub use recovery::{no_rescale, pick_restorable, plan_restore, to_prune, OperatorShape, Rescale, RestorePlan};
pub use storage::{CheckpointMeta, CheckpointStore, LoadedCheckpoint, SavepointAsk, SavepointBox, StoreError};
