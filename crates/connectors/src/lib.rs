//! Sources and sinks of Sluice.
//!
//! Sources split their input over the source subtasks deterministically (the same
//! subtask reads the same share on every run), which later lets a restored job resume
//! each share from its checkpointed position. Sinks get one writer per subtask.

mod collection;
mod file;
mod generator;
mod sinks;
mod socket;
mod transactional_file;

pub use collection::CollectionSource;
pub use file::{TextFileSink, TextFileSource};
pub use generator::{GeneratorSource, Identity, IndexFn, SequenceSource};
pub use sinks::{CollectHandle, CollectSink, DiscardHandle, DiscardSink, StdoutSink};
pub use socket::SocketTextSource;
pub use transactional_file::{committed_lines, TransactionalFileSink};
