//! The contract between Sluice's API and its runtime.
//!
//! The API crate turns a user's typed program into a [`JobGraph`]: nodes that carry
//! type-erased factories ([`NodeImpl`]) and edges that say how records are partitioned.
//! The runtime wires the graph into tasks without knowing any record type: every typed
//! piece a task is made of (the source loop, chained operators, the exchange writer that
//! routes batches to downstream tasks, the sink adapter) is built here, behind the erased
//! [`NodeImpl`] and [`ErasedInput`] interfaces.
//!
//! Records move in batches (`Vec<Record<T>>`); data and control signals (watermarks,
//! idleness, end of input) share one [`Message`] enum on every edge, so a watermark can
//! never overtake the records before it.

pub mod counters;
mod error;
mod exchange;
mod graph;
mod message;
mod operator;
pub mod operators;
pub mod progress;
mod sink;
pub mod snapshot;
mod source;
pub mod testing;

pub use error::{fail_unrecoverable, GraphError, TaskError, TaskResult, Unrecoverable};
pub use exchange::{ChannelCredits, Credit, CreditReturn, ErasedInput, Path, RemoteChannel, Target};
pub use graph::{
    AnyInput, BatchDecoder, CheckpointConfig, CheckpointMode, Edge, Failpoint, JobConfig, JobGraph, Node, NodeId,
    NodeImpl, NodeKind, OperatorNode, OutEdge, Partitioning, RestartStrategy, SinkNode, SourceNode, StartFrom,
};
pub use message::{Ending, Envelope, Message};
pub use operator::{
    guard_panic, now_millis, panic_message, Input, Link, Operator, OperatorFactory, Output, SubtaskInfo,
};
pub use sink::{Sink, SinkInput, SinkWriter};
pub use source::{
    FailureHandler, Poll, Source, SourceReader, SourceRunner, SourceTask, SplitEvent, SplitRun, TaskControl,
    TaskReport, TimestampFn, WatermarkGenerator, WatermarkKind, WatermarkStrategy, Watermarks,
};
