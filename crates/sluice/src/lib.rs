//! Sluice: a stream processor with Apache Flink's programming model (a typed DataStream
//! API, event time and watermarks, windows, joins, keyed state) in one Rust binary.
//!
//! This is the crate a job depends on: it re-exports the API, the connectors and the
//! operator traits, and adds [`Execute`], which runs a job on the local runtime.
//!
//! ```
//! use sluice::prelude::*;
//! use std::time::Duration;
//!
//! let env = StreamEnv::new();
//! env.set_parallelism(2);
//! let counts = env
//!     .source(
//!         SequenceSource::new(0..10_000),
//!         Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64),
//!     )
//!     .key_by(|i| i % 10)
//!     .window(Tumbling::event_time(Duration::from_secs(1)))
//!     .aggregate_with(Count, |key, window, n| (*key, window.start, n))
//!     .uid("counts")
//!     .collect();
//! env.execute("counts").unwrap();
//! assert_eq!(counts.values().len(), 10 * 10);
//! assert!(counts.values().iter().all(|(_, _, n)| *n == 100));
//! ```

pub use sluice_api as api;
pub use sluice_connectors as connectors;
pub use sluice_dataflow as dataflow;
pub use sluice_runtime as runtime;
pub use sluice_state as state;
pub use sluice_types as types;

pub use sluice_api::{
    ConnectedKeyedStreams, ConnectedStreams, DataStream, DataStreamSink, IntervalJoin, JoinSide,
    KeyedCoProcessFunction, KeyedStream, OutputTag, Session, Sliding, StreamEnv, Tumbling, WindowSpec, WindowedStream,
};
pub use sluice_runtime::{JobError, JobHandle, JobResult};

mod args;
pub use args::JobArgs;

/// Ends a job binary: on an error, prints it on stderr as a message (its `Display` and the
/// chain of its sources, not a `Debug` dump) after the program's name, and exits with a
/// failure code.
///
/// ```no_run
/// fn run() -> Result<(), Box<dyn std::error::Error>> {
///     Err("the input folder is missing".into())
/// }
/// fn main() -> std::process::ExitCode {
///     sluice::exit_with("my-job", run())
/// }
/// ```
pub fn exit_with(program: &str, result: Result<(), Box<dyn std::error::Error>>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                // thiserror's transparent and "{source}" messages already hold their cause.
                if !message.contains(&text) {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                source = cause.source();
            }
            eprintln!("{program}: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

use std::sync::{Mutex, OnceLock};

/// Everything a job needs in scope.
pub mod prelude {
    pub use crate::Execute;
    pub use sluice_api::{
        DataStream, JoinSide, KeyedCoProcessFunction, KeyedStream, OutputTag, Session, Sliding, StreamEnv, Tumbling,
        WindowSpec, WindowedStream,
    };
    pub use sluice_connectors::{
        CollectionSource, DiscardSink, GeneratorSource, SequenceSource, SocketTextSource, StdoutSink, TextFileSink,
        TextFileSource, TransactionalFileSink,
    };
    pub use sluice_dataflow::operators::{AggregateFunction, Count, KeyedContext, KeyedProcessFunction};
    pub use sluice_dataflow::{
        CheckpointMode, RestartStrategy, Sink, SinkWriter, Source, SourceReader, StartFrom, Watermarks,
    };
    pub use sluice_state::TimeDomain;
    pub use sluice_types::{stable_hash_fields, Record, StableHash, TimeWindow, Timestamp};
}

/// Runs a job built in a [`StreamEnv`] on the local runtime (threads of this process).
pub trait Execute {
    /// Runs the job to its end (a bounded job) or until Ctrl-C (an unbounded one, which
    /// then stops its sources, drains and finishes its sinks).
    fn execute(&self, name: &str) -> Result<JobResult, JobError>;
    /// Starts the job and returns its handle (cancel it or wait for it).
    fn execute_async(&self, name: &str) -> Result<JobHandle, JobError>;
}

type Canceller = Box<dyn Fn() + Send + Sync>;

/// The cancel functions of the jobs running under `execute`, for the Ctrl-C handler.
fn running_jobs() -> &'static Mutex<Vec<(u64, Canceller)>> {
    static JOBS: OnceLock<Mutex<Vec<(u64, Canceller)>>> = OnceLock::new();
    JOBS.get_or_init(|| {
        // Installing a handler can fail if the program has its own; then Ctrl-C keeps its
        // default meaning and the job is simply killed.
        let _ = ctrlc::set_handler(|| {
            if let Ok(jobs) = running_jobs().lock() {
                for (_, cancel) in jobs.iter() {
                    cancel();
                }
            }
        });
        Mutex::new(Vec::new())
    })
}

impl Execute for StreamEnv {
    fn execute(&self, name: &str) -> Result<JobResult, JobError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let handle = self.execute_async(name)?;
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        running_jobs().lock().unwrap_or_else(|e| e.into_inner()).push((id, Box::new(handle.canceller())));
        let result = handle.join();
        running_jobs().lock().unwrap_or_else(|e| e.into_inner()).retain(|(i, _)| *i != id);
        result
    }

    fn execute_async(&self, name: &str) -> Result<JobHandle, JobError> {
        let graph = self.build_graph(name)?;
        sluice_runtime::spawn(graph)
    }
}
