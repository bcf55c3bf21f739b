//! Sluice's local runtime: turns a [`JobGraph`] into tasks and runs them on threads of
//! this process.
//!
//! Planning ([`plan`]) is a pure function of the graph: which operators chain into one
//! task, and which input channel of which task each producer subtask writes to. Running
//! ([`run`]) builds every task's typed chain through the graph's erased node interfaces,
//! connects tasks with bounded channels (a full inbox blocks its producers: backpressure)
//! and aligns watermarks over each task's input channels. The runtime never names a
//! record type.

mod attempt;
pub mod plan;
pub mod restart;
mod run;
mod task;

pub use plan::{plan, Plan, PlannedChain};
pub use restart::RestartTracker;
pub use run::{run, spawn, JobError, JobHandle, JobResult};
