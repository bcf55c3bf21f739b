//! The stream environment: job settings and the graph under construction.

use crate::stream::DataStream;
use sluice_connectors::{CollectionSource, SocketTextSource, TextFileSource};
use sluice_dataflow::{
    Edge, GraphError, JobConfig, JobGraph, Node, NodeId, NodeImpl, Source, SourceNode, WatermarkStrategy, Watermarks,
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

    /// How often sources emit watermarks (default 200 ms).
    pub fn set_watermark_interval(&self, interval: Duration) -> &Self {
        self.state.borrow_mut().config.watermark_interval = interval;
        self
    }

    /// Keeps every operator in a task of its own.
    pub fn disable_operator_chaining(&self) -> &Self {
        self.state.borrow_mut().config.chaining = false;
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
        let name = format!("{name}-{}", id.0);
        state.nodes.push(Node { id, name, uid: None, parallelism: None, inputs, chainable, imp });
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
