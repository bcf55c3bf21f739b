//! The job graph: what the API builds and the runtime runs.
//!
//! Nodes carry their typed behaviour behind [`NodeImpl`], so the runtime can chain, wire
//! and start them knowing only their shape (source, operator or sink), their parallelism
//! and how each edge partitions records.

use crate::error::{GraphError, TaskError, TaskResult};
use crate::exchange::{EdgeWriter, ErasedInput, ExchangeOutput, Head, Target};
use crate::operator::{Input, Link, OperatorFactory, SubtaskInfo};
use crate::sink::{Sink, SinkInput};
use crate::snapshot::Restored;
use crate::source::{Source, SourceRunner, SourceTask, WatermarkStrategy};
use sluice_types::{Data, Record, DEFAULT_MAX_PARALLELISM};
use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// A type-erased `Box<dyn Input<T>>` for the record type of the edge it feeds.
pub type AnyInput = Box<dyn Any + Send>;

/// Index of a node in its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// How an edge distributes the producer's records over the consumer's subtasks.
#[derive(Clone)]
pub enum Partitioning {
    /// Subtask i to subtask i when both sides have the same parallelism (and the two can be
    /// chained into one task); round-robin over all consumers otherwise.
    Forward,
    /// Batches round-robin over all consumer subtasks.
    Rebalance,
    /// Every record to every consumer subtask.
    Broadcast,
    /// By key group of the record's key: holds an `Arc<dyn Fn(&T) -> u64 + Send + Sync>`
    /// giving the stable hash of a record's key.
    Hash(Arc<dyn Any + Send + Sync>),
}

impl std::fmt::Debug for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Partitioning::Forward => "Forward",
            Partitioning::Rebalance => "Rebalance",
            Partitioning::Broadcast => "Broadcast",
            Partitioning::Hash(_) => "Hash",
        })
    }
}

/// An input of a node.
#[derive(Clone, Debug)]
pub struct Edge {
    /// The producing node.
    pub from: NodeId,
    /// How records are distributed.
    pub partitioning: Partitioning,
}

/// The shape of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Produces records; has no inputs.
    Source,
    /// Transforms records.
    Operator,
    /// Consumes records; has no outputs.
    Sink,
}

/// One outgoing edge of a producer subtask, resolved to concrete targets by the runtime.
pub enum OutEdge {
    /// Batches round-robin over the targets (a single target is a forward edge).
    RoundRobin(Vec<Target>),
    /// Every batch to every target.
    Broadcast(Vec<Target>),
    /// By key group; the hash function as in [`Partitioning::Hash`].
    Hash(Arc<dyn Any + Send + Sync>, Vec<Target>),
}

/// The typed behaviour of a node, behind an interface the runtime can call.
pub trait NodeImpl: Send + Sync {
    /// Source, operator or sink.
    fn kind(&self) -> NodeKind;
    /// The largest parallelism the node supports, if limited.
    fn max_parallelism(&self) -> Option<usize> {
        None
    }
    /// The tail of a chain ending at this node: writes its output to `edges`.
    fn exchange(&self, edges: Vec<OutEdge>, info: &SubtaskInfo) -> AnyInput;
    /// This node as a chain stage in front of `next` (`None` for sinks), its operator
    /// restored from `state` if given.
    fn link(&self, next: Option<AnyInput>, info: &SubtaskInfo, state: Option<Restored>) -> TaskResult<AnyInput>;
    /// Wraps the stage that [`NodeImpl::link`] built so the untyped inbox can feed it.
    fn head(&self, stage: AnyInput) -> Box<dyn ErasedInput>;
    /// How a batch of this node's input that came from another process is decoded into
    /// what [`Message::Data`](crate::Message) carries. Sources have no input.
    fn batch_decoder(&self) -> Option<BatchDecoder> {
        None
    }
    /// The source subtask feeding `next` (sources only), resumed from `state` if given.
    fn source(
        &self,
        _next: AnyInput,
        _info: &SubtaskInfo,
        _config: &JobConfig,
        _state: Option<Restored>,
    ) -> TaskResult<Box<dyn SourceTask>> {
        unreachable!("only source nodes start source tasks")
    }
    /// Whether the records it emits carry event time (sources only): a timestamp assigner,
    /// or timestamps of the source's own ([`Source::has_timestamps`]).
    fn provides_timestamps(&self) -> bool {
        true
    }
    /// Checks the node's settings against the job's (sources and sinks).
    fn validate(&self, _config: &JobConfig) -> Result<(), String> {
        Ok(())
    }
    /// Redistributes a source's checkpointed positions over a new parallelism (sources
    /// only; see [`Source::rescale`]).
    fn rescale_positions(&self, old: Vec<Vec<u8>>, parallelism: usize) -> Result<Vec<Vec<u8>>, String> {
        let _ = (old, parallelism);
        Err("only a source holds positions to redistribute".into())
    }
    /// Frees what a sink's writer kept for a transaction another process committed (sinks
    /// only; see [`Sink::release`](crate::Sink::release)).
    fn release(&self, _committable: &[u8]) {}
    /// Commits a sink's pre-committed transaction (sinks only).
    fn commit(&self, _committable: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    /// Aborts what earlier attempts of a sink left, except `keep` (sinks only).
    fn recover(&self, _keep: &[Vec<u8>]) -> std::io::Result<()> {
        Ok(())
    }
}

/// The default of [`JobConfig::max_batch_bytes`]: 256 KiB lets small records fill whole
/// batches of 1024 (W2's are 16 bytes) while 16 batches of 100 KB records hold 4 MB per
/// inbox instead of 1.6 GB. Flink's network buffers are 32 KiB, with a few per channel.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 256 * 1024;

fn build_exchange<T: Data>(edges: Vec<OutEdge>, info: &SubtaskInfo) -> AnyInput {
    let batch_size = crate::exchange::BatchLimit::<T>::new(info);
    let writers = edges
        .into_iter()
        .map(|edge| match edge {
            OutEdge::RoundRobin(targets) => EdgeWriter::round_robin(targets, batch_size.clone()),
            OutEdge::Broadcast(targets) => EdgeWriter::broadcast(targets, batch_size.clone()),
            OutEdge::Hash(hash, targets) => {
                let hash = hash
                    .downcast_ref::<Arc<dyn Fn(&T) -> u64 + Send + Sync>>()
                    .expect("a hash edge carries the key hash of its record type")
                    .clone();
                EdgeWriter::hashed(hash, targets, info.max_parallelism, batch_size.clone())
            }
        })
        .collect();
    let input: Box<dyn Input<T>> = Box::new(ExchangeOutput { edges: writers });
    Box::new(input)
}

/// Decodes an encoded `Vec<Record<T>>` into the boxed batch a task's inbox carries.
pub type BatchDecoder = fn(&[u8]) -> Result<Box<dyn Any + Send>, String>;

fn decode_batch<T: Data>(bytes: &[u8]) -> Result<Box<dyn Any + Send>, String> {
    let batch: Vec<Record<T>> =
        sluice_state::codec::decode(bytes, "a batch from another process").map_err(|e| e.to_string())?;
    Ok(Box::new(batch))
}

fn downcast_input<T: 'static>(input: AnyInput) -> Box<dyn Input<T>> {
    *input.downcast::<Box<dyn Input<T>>>().expect("the job graph connects only stages of one record type")
}

/// A source node producing `T`.
pub struct SourceNode<T> {
    /// The source.
    pub source: Arc<dyn Source<T>>,
    /// Its watermark strategy.
    pub strategy: WatermarkStrategy<T>,
}

impl<T: Data> NodeImpl for SourceNode<T> {
    fn kind(&self) -> NodeKind {
        NodeKind::Source
    }
    fn provides_timestamps(&self) -> bool {
        self.strategy.timestamps.is_some() || self.source.has_timestamps()
    }
    fn validate(&self, _config: &JobConfig) -> Result<(), String> {
        self.source.validate()
    }
    fn max_parallelism(&self) -> Option<usize> {
        self.source.max_parallelism()
    }
    fn rescale_positions(&self, old: Vec<Vec<u8>>, parallelism: usize) -> Result<Vec<Vec<u8>>, String> {
        self.source.rescale(old, parallelism)
    }
    fn exchange(&self, edges: Vec<OutEdge>, info: &SubtaskInfo) -> AnyInput {
        build_exchange::<T>(edges, info)
    }
    fn link(&self, _next: Option<AnyInput>, _info: &SubtaskInfo, _state: Option<Restored>) -> TaskResult<AnyInput> {
        unreachable!("a source is always the head of its chain")
    }
    fn head(&self, _stage: AnyInput) -> Box<dyn ErasedInput> {
        unreachable!("a source has no inbox")
    }
    fn source(
        &self,
        next: AnyInput,
        info: &SubtaskInfo,
        config: &JobConfig,
        state: Option<Restored>,
    ) -> TaskResult<Box<dyn SourceTask>> {
        let io_error = |what: &str, source| TaskError::Io {
            operator: info.operator.to_string(),
            subtask: info.index,
            what: what.into(),
            source,
        };
        let mut reader =
            self.source.create_reader(info.index, info.parallelism).map_err(|e| io_error("opening the source", e))?;
        match state {
            Some(Restored::Plain(position)) => {
                reader.seek(&position).map_err(|e| io_error("resuming the source", e))?
            }
            Some(Restored::Keyed(_)) => {
                return Err(TaskError::Unrecoverable {
                    operator: info.operator.to_string(),
                    subtask: info.index,
                    message: format!(
                        "the checkpoint holds keyed state under this source's id '{}': it belonged to a keyed \
                         operator of the job that wrote it. Give the source a uid of its own (.uid(..)), and allow \
                         non-restored state if that operator is gone",
                        info.state_id
                    ),
                })
            }
            None => {}
        }
        Ok(Box::new(SourceRunner {
            limit: crate::exchange::BatchLimit::new(info),
            reader,
            strategy: self.strategy.clone(),
            output: downcast_input::<T>(next),
            info: info.clone(),
            watermark_interval: config.watermark_interval,
            tick: config.tick,
        }))
    }
}

/// An operator node from `In` to `Out`.
pub struct OperatorNode<In, Out> {
    /// Makes each subtask's operator.
    pub factory: OperatorFactory<In, Out>,
}

impl<In: Data, Out: Data> NodeImpl for OperatorNode<In, Out> {
    fn kind(&self) -> NodeKind {
        NodeKind::Operator
    }
    fn exchange(&self, edges: Vec<OutEdge>, info: &SubtaskInfo) -> AnyInput {
        build_exchange::<Out>(edges, info)
    }
    fn link(&self, next: Option<AnyInput>, info: &SubtaskInfo, state: Option<Restored>) -> TaskResult<AnyInput> {
        let next = downcast_input::<Out>(next.expect("an operator always has a next stage"));
        let operator = crate::operator::guard_panic(info, || {
            let mut operator = (self.factory)(info);
            if let Some(state) = state {
                operator.restore(state);
            }
            operator
        })?;
        let stage: Box<dyn Input<In>> = Box::new(Link::new(operator, next, info.clone()));
        Ok(Box::new(stage))
    }
    fn head(&self, stage: AnyInput) -> Box<dyn ErasedInput> {
        Box::new(Head(downcast_input::<In>(stage)))
    }
    fn batch_decoder(&self) -> Option<BatchDecoder> {
        Some(decode_batch::<In>)
    }
}

/// A sink node consuming `T`.
pub struct SinkNode<T> {
    /// The sink.
    pub sink: Arc<dyn Sink<T>>,
}

impl<T: Data> NodeImpl for SinkNode<T> {
    fn kind(&self) -> NodeKind {
        NodeKind::Sink
    }
    fn exchange(&self, _edges: Vec<OutEdge>, _info: &SubtaskInfo) -> AnyInput {
        unreachable!("a sink has no outputs")
    }
    fn link(&self, _next: Option<AnyInput>, info: &SubtaskInfo, _state: Option<Restored>) -> TaskResult<AnyInput> {
        let writer = self.sink.create_writer(info.index, info.parallelism).map_err(|source| TaskError::Io {
            operator: info.operator.to_string(),
            subtask: info.index,
            what: "opening the sink".into(),
            source,
        })?;
        let stage: Box<dyn Input<T>> = Box::new(SinkInput::new(writer, info.clone()));
        Ok(Box::new(stage))
    }
    fn head(&self, stage: AnyInput) -> Box<dyn ErasedInput> {
        Box::new(Head(downcast_input::<T>(stage)))
    }
    fn batch_decoder(&self) -> Option<BatchDecoder> {
        Some(decode_batch::<T>)
    }
    fn validate(&self, config: &JobConfig) -> Result<(), String> {
        self.sink.validate(config)
    }
    fn commit(&self, committable: &[u8]) -> std::io::Result<()> {
        self.sink.commit(committable)
    }
    fn release(&self, committable: &[u8]) {
        self.sink.release(committable)
    }
    fn recover(&self, keep: &[Vec<u8>]) -> std::io::Result<()> {
        self.sink.recover(keep)
    }
}

/// One node of the graph.
pub struct Node {
    /// Its index.
    pub id: NodeId,
    /// Its display name: the user's (`.name(..)`), or the operator's kind ("map").
    pub name: String,
    /// The stable id that state is matched by across code changes.
    pub uid: Option<String>,
    /// Whether it works in event time (an event-time window, an interval join): its input
    /// must carry timestamps, which [`JobGraph::validate`] checks.
    pub requires_timestamps: bool,
    /// The id its state is stored under when it has no uid: the user's name, or the
    /// kind and the node's position ("map-2"), which names need not be unique for.
    pub fallback_state_id: String,
    /// Its parallelism; `None` takes the job's default.
    pub parallelism: Option<usize>,
    /// Its inputs.
    pub inputs: Vec<Edge>,
    /// Whether it may be chained to its input (`false` starts a new task).
    pub chainable: bool,
    /// Its typed behaviour.
    pub imp: Box<dyn NodeImpl>,
}

impl Node {
    /// The id its state is stored under: the uid, or [`Node::fallback_state_id`].
    pub fn state_id(&self) -> &str {
        self.uid.as_deref().unwrap_or(&self.fallback_state_id)
    }
}

/// Settings of a job that apply to every node.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Default parallelism of nodes that set none.
    pub parallelism: usize,
    /// Number of key groups (the largest parallelism of a keyed operator).
    pub max_parallelism: usize,
    /// Records per batch.
    pub batch_size: usize,
    /// Batches in flight to one consumer subtask before its producers block
    /// (backpressure), shared as credits among its input channels (at least 2 each).
    pub channel_capacity: usize,
    /// The most bytes (as encoded) a batch between tasks holds: batches of large records
    /// are cut shorter, so that an inbox holds at most `channel_capacity` of these bytes
    /// (plus one record a batch), whatever the records weigh.
    pub max_batch_bytes: usize,
    /// How often sources emit watermarks; zero emits one after every source batch
    /// (deterministic, for tests with a batch size of 1).
    pub watermark_interval: Duration,
    /// How often processing time advances (processing-time timers fire at this grain).
    pub tick: Duration,
    /// Whether operators are chained into tasks where partitioning allows.
    pub chaining: bool,
    /// Checkpointing, if on.
    pub checkpointing: Option<CheckpointConfig>,
    /// What happens when a task fails.
    pub restart: RestartStrategy,
    /// A task inside one piece of work (a batch, a timer, a source's poll; waiting for
    /// credit from a slow consumer does not count) for this long is stalled: the process
    /// reports it on stderr and exits with status 70, because a thread stuck in user code
    /// cannot be stopped from outside (a cluster then restarts the job elsewhere from its
    /// latest checkpoint; run alone, the next start resumes from it). Default 60 s: far
    /// above any batch's work, so only a hang (a deadlock, an endless loop, a call without
    /// a timeout) trips it. `None`: never.
    pub stall_timeout: Option<Duration>,
    /// A source that reads records while its watermark does not advance for this long is
    /// reported on stderr, once per period (detector: stuck watermark): event time stops
    /// and windows stop firing, which a restart would not mend (timestamps that stopped
    /// moving, or a split that holds the others back). Default 60 s. `None`: never.
    pub watermark_stall_timeout: Option<Duration>,
}

/// How barriers are aligned at tasks with several input channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Channels that delivered the barrier wait for the others: state and output are
    /// exactly-once.
    ExactlyOnce,
    /// No waiting: lower latency, but records after the barrier on a fast channel may be
    /// replayed after a restore (at-least-once).
    AtLeastOnce,
}

/// Where a job starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The latest completed checkpoint of the same job name and location, if any.
    Latest,
    /// Nothing: ignore existing checkpoints.
    Fresh,
    /// The checkpoint or savepoint in this folder.
    Path(String),
}

/// A test hook: called at named points ("upload" after a checkpoint's state files are
/// written and before its manifest, "commit" between a checkpoint's completion and its sink
/// commits); an `Err` is a failure injected there.
pub type Failpoint = Arc<dyn Fn(&str, u64) -> Result<(), String> + Send + Sync>;

/// Checkpoint settings.
#[derive(Clone)]
pub struct CheckpointConfig {
    /// Time between checkpoint triggers.
    pub interval: Duration,
    /// A checkpoint not complete after this long is abandoned (and counts as failed).
    pub timeout: Duration,
    /// Least time between the end of one checkpoint and the start of the next.
    pub min_pause: Duration,
    /// Failed checkpoints in a row tolerated before the job fails.
    pub tolerable_failures: u32,
    /// Barrier alignment.
    pub mode: CheckpointMode,
    /// Folder (or `file://` URL) checkpoints go to.
    pub location: String,
    /// Completed checkpoints kept.
    pub retain: usize,
    /// Where the job starts from.
    pub start: StartFrom,
    /// Drop restored state that no operator of the job claims, instead of failing.
    pub allow_non_restored_state: bool,
    /// Resume from an older checkpoint (or from nothing) even when a newer checkpoint's
    /// output was committed and that checkpoint cannot be read: the output between them is
    /// written again (duplicates). Off by default: the job refuses to start.
    pub allow_duplicate_output: bool,
    /// Whether an operator with much state (a window) copies it at a barrier and has the
    /// copy encoded on another thread (Flink's asynchronous snapshots), rather than
    /// encoding it at the barrier. On by default: the stream pauses for the copy only (W3:
    /// a median 6-10 ms per window subtask and checkpoint instead of 26-30 ms), at the
    /// same throughput measured. Off, no copy: the state is not held twice while it is
    /// encoded (mind it where memory is tight and window state large).
    pub asynchronous_snapshots: bool,
    /// Injected failures, for tests.
    pub failpoint: Option<Failpoint>,
}

impl std::fmt::Debug for CheckpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointConfig")
            .field("interval", &self.interval)
            .field("mode", &self.mode)
            .field("location", &self.location)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl CheckpointConfig {
    /// Checkpoints every `interval` into folder `location`, with Flink's defaults otherwise
    /// (exactly-once, 10 min timeout, no pause, no tolerated failure), keeping 3.
    pub fn new(interval: Duration, location: impl Into<String>) -> Self {
        CheckpointConfig {
            interval,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            tolerable_failures: 0,
            mode: CheckpointMode::ExactlyOnce,
            location: location.into(),
            retain: 3,
            start: StartFrom::Latest,
            allow_non_restored_state: false,
            allow_duplicate_output: false,
            asynchronous_snapshots: true,
            failpoint: None,
        }
    }
}

/// What happens when a task fails (Flink's restart strategies).
#[derive(Clone, Debug, PartialEq)]
pub enum RestartStrategy {
    /// The job fails.
    None,
    /// Up to `attempts` restarts, `delay` apart.
    FixedDelay {
        /// Restarts allowed.
        attempts: u32,
        /// Wait before each.
        delay: Duration,
    },
    /// Restarts without limit, the wait growing from `initial` by `multiplier` up to `max`,
    /// back to `initial` after `reset_after` without failure.
    ExponentialDelay {
        /// First wait.
        initial: Duration,
        /// Longest wait.
        max: Duration,
        /// Growth per failure.
        multiplier: f64,
        /// Quiet time that resets the wait.
        reset_after: Duration,
    },
    /// Restarts while fewer than `max_failures` happen within `interval`.
    FailureRate {
        /// Failures allowed per interval.
        max_failures: u32,
        /// The measuring interval.
        interval: Duration,
        /// Wait before each restart.
        delay: Duration,
    },
}

impl RestartStrategy {
    /// The default with checkpointing on: exponential delay from 100 ms to 10 s.
    pub fn default_exponential() -> Self {
        RestartStrategy::ExponentialDelay {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            parallelism: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            batch_size: 1024,
            channel_capacity: 16,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            watermark_interval: Duration::from_millis(200),
            tick: Duration::from_millis(10),
            chaining: true,
            checkpointing: None,
            restart: RestartStrategy::None,
            stall_timeout: Some(Duration::from_secs(60)),
            watermark_stall_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// A whole job: its nodes, in an order where every input precedes its consumer.
pub struct JobGraph {
    /// The job's name.
    pub name: String,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Job-wide settings.
    pub config: JobConfig,
}

impl JobGraph {
    /// The effective parallelism of `node`.
    pub fn parallelism_of(&self, node: NodeId) -> usize {
        self.nodes[node.0].parallelism.unwrap_or(self.config.parallelism)
    }

    /// The consumers of each node, in node order.
    pub fn consumers(&self) -> Vec<Vec<(NodeId, usize)>> {
        let mut consumers = vec![Vec::new(); self.nodes.len()];
        for node in &self.nodes {
            for (index, edge) in node.inputs.iter().enumerate() {
                consumers[edge.from.0].push((node.id, index));
            }
        }
        consumers
    }

    /// Runs every source's and sink's own checks ([`Source::validate`](crate::Source::validate),
    /// [`Sink::validate`](crate::Sink::validate)): inputs that exist, folders that can be
    /// created, brokers that answer. They may do I/O (a Kafka client asks for metadata), so
    /// the runtime calls this once, just before the job starts, after [`JobGraph::validate`].
    pub fn validate_connectors(&self) -> Result<(), GraphError> {
        for node in &self.nodes {
            node.imp.validate(&self.config).map_err(|message| GraphError(format!("'{}': {message}", node.name)))?;
        }
        Ok(())
    }

    /// Checks what the type system cannot: settings in range, unique uids, a sink to run
    /// towards, parallelism within each source's and each keyed operator's limits.
    pub fn validate(&self) -> Result<(), GraphError> {
        let c = &self.config;
        if c.parallelism == 0 {
            return Err(GraphError("the default parallelism is 0; set it to at least 1".into()));
        }
        if c.max_parallelism == 0 || c.max_parallelism > 32768 {
            return Err(GraphError(format!(
                "max parallelism {} is out of range; use a value from 1 to 32768 (default 128)",
                c.max_parallelism
            )));
        }
        if c.batch_size == 0 || c.channel_capacity == 0 || c.max_batch_bytes == 0 {
            return Err(GraphError("batch size and channel capacity must be at least 1".into()));
        }
        for (name, timeout) in
            [("stall timeout", c.stall_timeout), ("watermark stall timeout", c.watermark_stall_timeout)]
        {
            if timeout.is_some_and(|t| t < Duration::from_millis(100)) {
                return Err(GraphError(format!(
                    "the {name} {:?} is too short (a busy machine would trip it); use at least 100 ms, or none",
                    timeout.unwrap_or_default()
                )));
            }
        }
        if let Some(cp) = &c.checkpointing {
            if cp.interval < Duration::from_millis(10) {
                return Err(GraphError(format!(
                    "the checkpoint interval {:?} is too short; use at least 10 ms",
                    cp.interval
                )));
            }
            if cp.location.trim().is_empty() {
                return Err(GraphError("checkpointing needs a location: a folder for the checkpoints".into()));
            }
        }
        if c.tick.is_zero() {
            return Err(GraphError("the processing-time tick must be longer than 0".into()));
        }
        if !self.nodes.iter().any(|n| n.imp.kind() == NodeKind::Sink) {
            return Err(GraphError(
                "the job has no sink, so it would compute nothing; end a stream in .sink(..), .print() or .collect()"
                    .into(),
            ));
        }
        let mut uids = HashSet::new();
        // Records carry event time from a source that gives it on; operators keep their
        // input's (a union needs it on every input).
        let mut stamped = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let has = match node.imp.kind() {
                NodeKind::Source => node.imp.provides_timestamps(),
                _ => node.inputs.iter().all(|e| stamped.get(e.from.0).copied().unwrap_or(false)),
            };
            stamped.push(has);
            if node.requires_timestamps && !has {
                return Err(GraphError(format!(
                    "'{}' works in event time but its input has no timestamps; give the source a watermark strategy \
                     that assigns them (Watermarks::bounded(..).with_timestamps(|e| ..)), or use a processing-time \
                     window",
                    node.name
                )));
            }
        }
        for node in &self.nodes {
            let p = self.parallelism_of(node.id);
            if p == 0 {
                return Err(GraphError(format!("operator '{}' has parallelism 0; set it to at least 1", node.name)));
            }
            if let Some(uid) = &node.uid {
                if !uids.insert(uid.as_str()) {
                    return Err(GraphError(format!(
                        "uid '{uid}' is used by more than one operator; give each operator its own uid"
                    )));
                }
            }
            if let Some(limit) = node.imp.max_parallelism() {
                if p > limit {
                    return Err(GraphError(format!(
                        "'{}' supports parallelism up to {limit} but is set to {p}; call .parallelism({limit}) on it",
                        node.name
                    )));
                }
            }
            let keyed = node.inputs.iter().any(|e| matches!(e.partitioning, Partitioning::Hash(_)));
            if keyed && p > c.max_parallelism {
                return Err(GraphError(format!(
                    "keyed operator '{}' has parallelism {p} above the max parallelism {}; raise the max parallelism",
                    node.name, c.max_parallelism
                )));
            }
            for edge in &node.inputs {
                if edge.from.0 >= node.id.0 {
                    return Err(GraphError(format!("operator '{}' reads from a later node", node.name)));
                }
            }
        }
        Ok(())
    }
}
