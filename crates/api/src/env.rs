//! The stream environment: job settings and the graph under construction.

use crate::stream::DataStream;
use sluice_connectors::{CollectionSource, SocketTextSource, TextFileSource};
use sluice_dataflow::{
    CheckpointConfig, CheckpointMode, Edge, GraphError, JobConfig, JobGraph, Node, NodeId, NodeImpl, RestartStrategy,
    Source, SourceNode, StartFrom, WatermarkStrategy, Watermarks,
};
use sluice_types::Data;
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct EnvState {
    pub(crate) nodes: Vec<Node>,
    pub(crate) config: JobConfig,
    pub(crate) errors: Vec<String>,
    pub(crate) side_outputs: HashMap<(usize, String), Box<dyn Any>>,
}

/// Where a job is assembled: its settings and its sources.
///
/// ```
/// use sluice_api::StreamEnv;
/// let env = StreamEnv::new();
/// env.set_parallelism(2);
/// let doubled = env.from_collection(vec![1u64, 2, 3]).map(|v| v * 2);
/// doubled.collect();
/// let graph = env.build_graph("doubling").unwrap();
/// assert_eq!(graph.nodes.len(), 3);
/// ```
#[derive(Clone)]
pub struct StreamEnv {
    pub(crate) state: Rc<RefCell<EnvState>>,
}

impl Default for StreamEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamEnv {
    /// An environment with default settings (parallelism = number of cores).
    pub fn new() -> Self {
        StreamEnv {
            state: Rc::new(RefCell::new(EnvState {
                nodes: Vec::new(),
                config: JobConfig::default(),
                errors: Vec::new(),
                side_outputs: HashMap::new(),
            })),
        }
    }

    /// Default parallelism of operators that set none.
    pub fn set_parallelism(&self, parallelism: usize) -> &Self {
        self.state.borrow_mut().config.parallelism = parallelism;
        self
    }

    /// Number of key groups: the largest parallelism keyed operators can be scaled to.
    pub fn set_max_parallelism(&self, max_parallelism: usize) -> &Self {
        self.state.borrow_mut().config.max_parallelism = max_parallelism;
        self
    }

    /// Records per batch between operators and tasks (default 1024).
    pub fn set_batch_size(&self, batch_size: usize) -> &Self {
        self.state.borrow_mut().config.batch_size = batch_size;
        self
    }

    /// Batches a task's inbox holds before producers block (default 16).
    pub fn set_channel_capacity(&self, batches: usize) -> &Self {
        self.state.borrow_mut().config.channel_capacity = batches;
        self
    }

    /// The most bytes a batch between tasks holds (default 256 KiB): with large records,
    /// batches are cut shorter so that in-flight data stays bounded in bytes.
    pub fn set_max_batch_bytes(&self, bytes: usize) -> &Self {
        self.state.borrow_mut().config.max_batch_bytes = bytes;
        self
    }

    /// How often sources emit watermarks (default 200 ms).
    pub fn set_watermark_interval(&self, interval: Duration) -> &Self {
        self.state.borrow_mut().config.watermark_interval = interval;
        self
    }

    /// How long a task may stay inside one piece of work before it counts as stalled and
    /// the process exits to be restarted (default 60 s; `None`: never). See
    /// [`JobConfig::stall_timeout`](sluice_dataflow::JobConfig::stall_timeout).
    pub fn set_stall_timeout(&self, timeout: Option<Duration>) -> &Self {
        self.state.borrow_mut().config.stall_timeout = timeout;
        self
    }

    /// How long a source may read records without its watermark advancing before it is
    /// reported (default 60 s; `None`: never). See
    /// [`JobConfig::watermark_stall_timeout`](sluice_dataflow::JobConfig::watermark_stall_timeout).
    pub fn set_watermark_stall_timeout(&self, timeout: Option<Duration>) -> &Self {
        self.state.borrow_mut().config.watermark_stall_timeout = timeout;
        self
    }

    /// Keeps every operator in a task of its own.
    pub fn disable_operator_chaining(&self) -> &Self {
        self.state.borrow_mut().config.chaining = false;
        self
    }

    /// Takes a checkpoint every `interval` into folder `location` (under a folder named after
    /// the job), exactly-once, and restarts failed jobs from the latest one (exponential delay
    /// from 100 ms to 10 s unless another strategy is set). A job started again with the same
    /// name and location resumes from its latest completed checkpoint.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let dir = tempfile::tempdir().unwrap();
    /// let env = StreamEnv::new();
    /// env.enable_checkpointing(Duration::from_millis(100), dir.path().to_str().unwrap());
    /// let out = env.source(SequenceSource::new(0..1000), Watermarks::none()).map(|v| v + 1).collect();
    /// let result = env.execute("checkpointed").unwrap();
    /// assert_eq!(out.values().len(), 1000);
    /// assert!(!result.checkpoints.is_empty(), "a bounded job ends with a final checkpoint");
    /// ```
    pub fn enable_checkpointing(&self, interval: Duration, location: &str) -> &Self {
        let mut state = self.state.borrow_mut();
        state.config.checkpointing = Some(CheckpointConfig::new(interval, location));
        if state.config.restart == RestartStrategy::None {
            state.config.restart = RestartStrategy::default_exponential();
        }
        drop(state);
        self
    }

    fn checkpointing(&self, what: &str, f: impl FnOnce(&mut CheckpointConfig)) -> &Self {
        let mut state = self.state.borrow_mut();
        match state.config.checkpointing.as_mut() {
            Some(c) => f(c),
            None => state.errors.push(format!("{what} needs checkpointing: call enable_checkpointing first")),
        }
        drop(state);
        self
    }

    /// Exactly-once (aligned barriers, the default) or at-least-once.
    pub fn set_checkpoint_mode(&self, mode: CheckpointMode) -> &Self {
        self.checkpointing("set_checkpoint_mode", |c| c.mode = mode)
    }

    /// Abandons a checkpoint not complete after `timeout` (default 10 min).
    pub fn set_checkpoint_timeout(&self, timeout: Duration) -> &Self {
        self.checkpointing("set_checkpoint_timeout", |c| c.timeout = timeout)
    }

    /// Least time between the end of a checkpoint and the start of the next (default 0).
    pub fn set_min_pause_between_checkpoints(&self, pause: Duration) -> &Self {
        self.checkpointing("set_min_pause_between_checkpoints", |c| c.min_pause = pause)
    }

    /// Failed checkpoints in a row tolerated before the job fails and restarts (default 0).
    pub fn set_tolerable_checkpoint_failures(&self, failures: u32) -> &Self {
        self.checkpointing("set_tolerable_checkpoint_failures", |c| c.tolerable_failures = failures)
    }

    /// Whether window state is copied at a barrier and encoded on another thread (default:
    /// yes, the stream pauses only for the copy) or encoded at the barrier (no second copy
    /// of the state in memory while it is encoded). See
    /// [`CheckpointConfig::asynchronous_snapshots`](sluice_dataflow::CheckpointConfig::asynchronous_snapshots).
    pub fn set_asynchronous_snapshots(&self, asynchronous: bool) -> &Self {
        self.checkpointing("set_asynchronous_snapshots", |c| c.asynchronous_snapshots = asynchronous)
    }

    /// Completed checkpoints kept (default 3); older ones are deleted.
    pub fn set_retained_checkpoints(&self, count: usize) -> &Self {
        self.checkpointing("set_retained_checkpoints", |c| c.retain = count.max(1))
    }

    /// Where the job starts: the latest checkpoint (default), nothing, or a given checkpoint
    /// or savepoint folder.
    pub fn start_from(&self, start: StartFrom) -> &Self {
        self.checkpointing("start_from", |c| c.start = start)
    }

    /// Drops restored state that no operator claims (by uid) instead of refusing to start.
    pub fn allow_non_restored_state(&self) -> &Self {
        self.checkpointing("allow_non_restored_state", |c| c.allow_non_restored_state = true)
    }

    /// Lets the job resume when the newest checkpoint whose output was committed cannot be
    /// read (corrupted, deleted): it then restores the newest readable older one, or starts
    /// from nothing, and writes again the output committed since, which readers see twice.
    /// Without it such a job refuses to start and names the damaged checkpoint.
    pub fn allow_duplicate_output(&self) -> &Self {
        self.checkpointing("allow_duplicate_output", |c| c.allow_duplicate_output = true)
    }

    /// Installs a failure-injection hook (for tests; see [`sluice_dataflow::Failpoint`]).
    pub fn set_failpoint(&self, failpoint: sluice_dataflow::Failpoint) -> &Self {
        self.checkpointing("set_failpoint", |c| c.failpoint = Some(failpoint))
    }

    /// What happens when a task fails.
    pub fn set_restart_strategy(&self, strategy: RestartStrategy) -> &Self {
        self.state.borrow_mut().config.restart = strategy;
        self
    }

    /// The current settings.
    pub fn config(&self) -> JobConfig {
        self.state.borrow().config.clone()
    }

    /// A stream read from `source`, with event time from `strategy`.
    pub fn source<T: Data, S: Source<T>>(&self, source: S, strategy: WatermarkStrategy<T>) -> DataStream<T> {
        let name = source.name();
        let id = self.add_node(&name, Vec::new(), Box::new(SourceNode { source: Arc::new(source), strategy }), true);
        DataStream::from_node(self.clone(), id)
    }

    /// A bounded stream of the items (no event time until a strategy is given to `source`).
    pub fn from_collection<T: Data + Sync>(&self, items: Vec<T>) -> DataStream<T> {
        self.source(CollectionSource::new(items), Watermarks::none())
    }

    /// The lines of a text file or of the files of a folder.
    pub fn read_text_file(&self, path: impl AsRef<Path>) -> DataStream<String> {
        self.source(TextFileSource::new(path), Watermarks::none())
    }

    /// The lines a TCP server sends (parallelism 1; ends when the server closes).
    pub fn socket_text_stream(&self, host: &str, port: u16) -> DataStream<String> {
        self.source(SocketTextSource::new(host, port), Watermarks::none()).parallelism(1)
    }

    pub(crate) fn add_node(&self, name: &str, inputs: Vec<Edge>, imp: Box<dyn NodeImpl>, chainable: bool) -> NodeId {
        let mut state = self.state.borrow_mut();
        let id = NodeId(state.nodes.len());
        let fallback_state_id = format!("{name}-{}", id.0);
        let name = name.to_string();
        state.nodes.push(Node {
            id,
            name,
            uid: None,
            requires_timestamps: false,
            fallback_state_id,
            parallelism: None,
            inputs,
            chainable,
            imp,
        });
        id
    }

    pub(crate) fn with_node(&self, id: NodeId, f: impl FnOnce(&mut Node)) {
        f(&mut self.state.borrow_mut().nodes[id.0])
    }

    pub(crate) fn record_error(&self, message: String) {
        self.state.borrow_mut().errors.push(message);
    }

    /// Takes the graph built so far, checked, leaving the environment empty for another job.
    pub fn build_graph(&self, name: &str) -> Result<JobGraph, GraphError> {
        let mut state = self.state.borrow_mut();
        state.side_outputs.clear();
        let nodes = std::mem::take(&mut state.nodes);
        if let Some(error) = state.errors.drain(..).next() {
            return Err(GraphError(error));
        }
        let graph = JobGraph { name: name.to_string(), nodes, config: state.config.clone() };
        graph.validate()?;
        Ok(graph)
    }
}
