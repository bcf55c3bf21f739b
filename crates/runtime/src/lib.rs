//! Sluice's local runtime: turns a [`sluice_dataflow::JobGraph`] into tasks and runs them
//! on threads of this process.
//!
//! Planning ([`mod@plan`]) is a pure function of the graph: which operators chain into one
//! task, and which input channel of which task each producer subtask writes to. Running
//! ([`run`], [`spawn`]) builds every task's typed chain through the graph's erased node
//! interfaces, connects tasks with bounded channels (a full inbox blocks its producers:
//! backpressure), aligns watermarks and checkpoint barriers over each task's input
//! channels, coordinates checkpoints, and restarts failed attempts from the latest one as
//! the restart strategy ([`restart`]) says. The runtime never names a record type.
//!
//! A job can also run spread over several processes of its binary ([`processes`]): each
//! builds the whole graph, runs the subtasks placed on it and reaches the others' through
//! `sluice-net` connections, the channels' credits included.
//!
//! While an attempt runs, the data detectors ([`watchdog`]) watch for a task stalled in
//! its work and for a source whose watermark stands still.

mod attempt;
mod coordinator;
pub mod pause_points;
pub mod plan;
pub mod processes;
mod report;
pub mod restart;
mod run;
mod spread;
mod task;
pub mod watchdog;

pub use plan::{plan, Plan, PlannedChain};
pub use processes::Placement;
pub use report::init_logging;
pub use restart::RestartTracker;
pub use run::{run, spawn, JobError, JobHandle, JobResult};
