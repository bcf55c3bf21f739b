//! [`DataStream`]: a typed stream and its transformations.

use crate::env::StreamEnv;
use crate::keyed::KeyedStream;
use sluice_connectors::{CollectHandle, CollectSink, DiscardHandle, DiscardSink, StdoutSink, TextFileSink};
use sluice_dataflow::operators::{FilterOp, FlatMapOp, KeyFn, MapOp};
use sluice_dataflow::{Edge, NodeId, Operator, OperatorFactory, OperatorNode, Partitioning, Sink, SinkNode};
use sluice_types::{stable_hash, Data, Key};
use std::fmt::{Debug, Display};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

/// Names a side output and its record type (late window records, for instance).
///
/// ```
/// use sluice_api::OutputTag;
/// let late: OutputTag<(String, i64)> = OutputTag::new("late");
/// assert_eq!(late.name(), "late");
/// ```
pub struct OutputTag<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> OutputTag<T> {
    /// A tag called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        OutputTag { name: name.into(), _t: PhantomData }
    }
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A stream of `T`.
///
/// Transformations take `&self`, so one stream can feed several consumers; settings
/// (`uid`, `name`, `parallelism`) take `self` and apply to the operator that produced it.
pub struct DataStream<T> {
    pub(crate) env: StreamEnv,
    /// The producing nodes (several after a union) and the partitioning towards the next.
    pub(crate) parts: Vec<(NodeId, Partitioning)>,
    /// The nodes that settings apply to; the first owns the state (gets the uid).
    pub(crate) nodes: Vec<NodeId>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        DataStream { env: self.env.clone(), parts: self.parts.clone(), nodes: self.nodes.clone(), _t: PhantomData }
    }
}

/// The end of a stream in a sink; settings apply to the sink operator.
pub struct DataStreamSink {
    env: StreamEnv,
    node: NodeId,
}

impl DataStreamSink {
    /// The sink's stable id.
    pub fn uid(self, uid: &str) -> Self {
        self.env.with_node(self.node, |n| n.uid = Some(uid.to_string()));
        self
    }
    /// The sink's display name.
    pub fn name(self, name: &str) -> Self {
        self.env.with_node(self.node, |n| {
            n.name = name.to_string();
            n.fallback_state_id = name.to_string();
        });
        self
    }
    /// The sink's parallelism.
    pub fn parallelism(self, parallelism: usize) -> Self {
        self.env.with_node(self.node, |n| n.parallelism = Some(parallelism));
        self
    }
}

impl<T: Data> DataStream<T> {
    pub(crate) fn from_node(env: StreamEnv, id: NodeId) -> Self {
        DataStream { env, parts: vec![(id, Partitioning::Forward)], nodes: vec![id], _t: PhantomData }
    }

    pub(crate) fn edges(&self) -> Vec<Edge> {
        self.parts.iter().map(|(from, partitioning)| Edge { from: *from, partitioning: partitioning.clone() }).collect()
    }

    /// Adds an operator reading this stream.
    pub(crate) fn then<O: Data>(&self, name: &str, factory: OperatorFactory<T, O>) -> DataStream<O> {
        let id = self.env.add_node(name, self.edges(), Box::new(OperatorNode { factory }), true);
        DataStream::from_node(self.env.clone(), id)
    }

    /// Adds an operator made by `make` for each subtask.
    pub(crate) fn then_op<O: Data, Op: Operator<T, O> + 'static>(
        &self,
        name: &str,
        make: impl Fn() -> Op + Send + Sync + 'static,
    ) -> DataStream<O> {
        self.then(name, Arc::new(move |_| Box::new(make()) as Box<dyn Operator<T, O>>))
    }

    fn single_node(&self, what: &str) -> Option<&[NodeId]> {
        if self.nodes.is_empty() {
            self.env.record_error(format!("{what} was set on a union of streams; set it on each input instead"));
            None
        } else {
            Some(&self.nodes)
        }
    }

    /// Sets the stable id by which the operator's state is matched across runs and code
    /// changes.
    ///
    /// ```
    /// # use sluice_api::StreamEnv;
    /// let env = StreamEnv::new();
    /// env.from_collection(vec![1u64]).map(|v| v + 1).uid("add-one").collect();
    /// let graph = env.build_graph("uid").unwrap();
    /// assert_eq!(graph.nodes[1].uid.as_deref(), Some("add-one"));
    /// ```
    pub fn uid(self, uid: &str) -> Self {
        if let Some(nodes) = self.single_node("a uid") {
            self.env.with_node(nodes[0], |n| n.uid = Some(uid.to_string()));
        }
        self
    }

    /// Marks the operator as working in event time: the graph is refused if its input
    /// carries no timestamps.
    pub(crate) fn requires_timestamps(&self) {
        for node in &self.nodes {
            self.env.with_node(*node, |n| n.requires_timestamps = true);
        }
    }

    /// Names an operator the API builds for the user (the join's parts): its display
    /// name only, so that its state id stays unique by position.
    pub(crate) fn internal_name(self, name: &str) -> Self {
        if let Some(nodes) = self.single_node("a name") {
            self.env.with_node(nodes[0], |n| n.name = name.to_string());
        }
        self
    }

    /// Sets the operator's display name (used in errors and logs).
    pub fn name(self, name: &str) -> Self {
        if let Some(nodes) = self.single_node("a name") {
            self.env.with_node(nodes[0], |n| {
                n.name = name.to_string();
                n.fallback_state_id = name.to_string();
            });
        }
        self
    }

    /// Sets the operator's parallelism.
    ///
    /// ```
    /// # use sluice_api::StreamEnv;
    /// let env = StreamEnv::new();
    /// env.from_collection(vec![1u64]).parallelism(1).map(|v| v * 2).parallelism(3).collect();
    /// assert_eq!(env.build_graph("p").unwrap().parallelism_of(sluice_dataflow::NodeId(1)), 3);
    /// ```
    pub fn parallelism(self, parallelism: usize) -> Self {
        if let Some(nodes) = self.single_node("a parallelism") {
            for &node in nodes {
                self.env.with_node(node, |n| n.parallelism = Some(parallelism));
            }
        }
        self
    }

    /// Starts a new task at this operator instead of chaining it to its input.
    pub fn disable_chaining(self) -> Self {
        if let Some(nodes) = self.single_node("disable_chaining") {
            self.env.with_node(nodes[0], |n| n.chainable = false);
        }
        self
    }

    /// Applies `f` to every value.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let out = env.from_collection(vec![1u64, 2, 3]).map(|v| v * 10).collect();
    /// env.execute("map").unwrap();
    /// let mut values = out.values();
    /// values.sort();
    /// assert_eq!(values, vec![10, 20, 30]);
    /// ```
    pub fn map<O: Data>(&self, f: impl Fn(T) -> O + Send + Sync + 'static) -> DataStream<O> {
        let f = Arc::new(f);
        self.then_op("map", move || {
            let f = f.clone();
            MapOp::new(move |v| f(v))
        })
    }

    /// Keeps the values for which `f` is true.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let out = env.from_collection((0..10u64).collect()).filter(|v| v % 3 == 0).collect();
    /// env.execute("filter").unwrap();
    /// let mut values = out.values();
    /// values.sort();
    /// assert_eq!(values, vec![0, 3, 6, 9]);
    /// ```
    pub fn filter(&self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DataStream<T> {
        let f = Arc::new(f);
        self.then_op("filter", move || {
            let f = f.clone();
            FilterOp::new(move |v: &T| f(v))
        })
    }

    /// Maps each value to any number of values.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let words = env
    ///     .from_collection(vec!["a b".to_string(), "c".to_string()])
    ///     .flat_map(|line| line.split(' ').map(str::to_string).collect::<Vec<_>>())
    ///     .collect();
    /// env.execute("flat_map").unwrap();
    /// let mut values = words.values();
    /// values.sort();
    /// assert_eq!(values, vec!["a", "b", "c"]);
    /// ```
    pub fn flat_map<O: Data, I: IntoIterator<Item = O> + 'static>(
        &self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> DataStream<O> {
        let f = Arc::new(f);
        self.then_op("flat_map", move || {
            let f = f.clone();
            FlatMapOp::new(move |v| f(v))
        })
    }

    /// Maps each value to zero or one value.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let numbers = env
    ///     .from_collection(vec!["1".to_string(), "x".to_string()])
    ///     .filter_map(|s| s.parse::<u64>().ok())
    ///     .collect();
    /// env.execute("filter_map").unwrap();
    /// assert_eq!(numbers.values(), vec![1]);
    /// ```
    pub fn filter_map<O: Data>(&self, f: impl Fn(T) -> Option<O> + Send + Sync + 'static) -> DataStream<O> {
        let f = Arc::new(f);
        self.then_op("filter_map", move || {
            let f = f.clone();
            FlatMapOp::new(move |v| f(v))
        })
    }

    /// Partitions the stream by key: records with equal keys go to the same subtask
    /// (through the key's key group).
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let sums = env
    ///     .from_collection(vec![('a', 1u64), ('b', 2), ('a', 3)])
    ///     .map(|(k, v)| (k.to_string(), v))
    ///     .key_by(|(k, _)| k.clone())
    ///     .reduce(|a, b| (a.0, a.1 + b.1))
    ///     .collect();
    /// env.execute("key_by").unwrap();
    /// let mut last: Vec<_> = sums.values();
    /// last.sort();
    /// assert_eq!(last.last(), Some(&("b".to_string(), 2)));
    /// assert!(last.contains(&("a".to_string(), 4)));
    /// ```
    pub fn key_by<K: Key>(&self, f: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T> {
        let f = Arc::new(f);
        let for_hash = f.clone();
        let hash: Arc<dyn Fn(&T) -> u64 + Send + Sync> = Arc::new(move |v: &T| stable_hash(&for_hash(v)));
        let key_fn: KeyFn<T, K> = f;
        let mut stream = self.clone();
        for part in &mut stream.parts {
            part.1 = Partitioning::Hash(Arc::new(hash.clone()));
        }
        stream.nodes = Vec::new();
        KeyedStream { stream, key_fn }
    }

    /// Merges streams of the same type.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let a = env.from_collection(vec![1u64, 2]);
    /// let b = env.from_collection(vec![3u64]);
    /// let all = a.union(&b).map(|v| v).collect();
    /// env.execute("union").unwrap();
    /// let mut values = all.values();
    /// values.sort();
    /// assert_eq!(values, vec![1, 2, 3]);
    /// ```
    pub fn union(&self, other: &DataStream<T>) -> DataStream<T> {
        let mut parts = self.parts.clone();
        parts.extend(other.parts.iter().cloned());
        DataStream { env: self.env.clone(), parts, nodes: Vec::new(), _t: PhantomData }
    }

    fn repartition(&self, partitioning: Partitioning) -> DataStream<T> {
        let mut stream = self.clone();
        for part in &mut stream.parts {
            part.1 = partitioning.clone();
        }
        stream.nodes = Vec::new();
        stream
    }

    /// Spreads batches round-robin over the next operator's subtasks.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let out = env.from_collection((0..100u64).collect()).parallelism(1).rebalance().map(|v| v).parallelism(3).collect();
    /// env.execute("rebalance").unwrap();
    /// assert_eq!(out.values().len(), 100);
    /// ```
    pub fn rebalance(&self) -> DataStream<T> {
        self.repartition(Partitioning::Rebalance)
    }

    /// Sends every record to every subtask of the next operator.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let out = env.from_collection(vec![7u64]).parallelism(1).broadcast().map(|v| v).parallelism(3).collect();
    /// env.execute("broadcast").unwrap();
    /// assert_eq!(out.values(), vec![7, 7, 7]);
    /// ```
    pub fn broadcast(&self) -> DataStream<T> {
        self.repartition(Partitioning::Broadcast)
    }

    /// Ends the stream in `sink`.
    pub fn sink(&self, sink: impl Sink<T>) -> DataStreamSink {
        let name = sink.name();
        let id = self.env.add_node(&name, self.edges(), Box::new(SinkNode { sink: Arc::new(sink) }), true);
        DataStreamSink { env: self.env.clone(), node: id }
    }

    /// Collects the stream in memory (for tests): read it through the handle after the job.
    pub fn collect(&self) -> CollectHandle<T> {
        let (sink, handle) = CollectSink::new();
        self.sink(sink);
        handle
    }

    /// Drops the records, counting them.
    pub fn discard(&self) -> DiscardHandle {
        let (sink, handle) = DiscardSink::new();
        self.sink(sink);
        handle
    }

    /// The side output `tag` of the operator that produced this stream.
    pub fn side_output<L: Data>(&self, tag: &OutputTag<L>) -> DataStream<L> {
        let owner = self.nodes.first().map(|n| n.0).unwrap_or(usize::MAX);
        let state = self.env.state.borrow();
        let found = state.side_outputs.get(&(owner, tag.name.clone())).and_then(|s| s.downcast_ref::<DataStream<L>>());
        match found {
            Some(stream) => stream.clone(),
            None => {
                drop(state);
                self.env.record_error(format!(
                    "no side output '{}' of this type on this stream; declare it where the stream is produced \
                     (e.g. .side_output_late_data(&tag) on the window)",
                    tag.name
                ));
                self.clone().filter_map(|_| None)
            }
        }
    }
}

impl<T: Data + Debug> DataStream<T> {
    /// Prints each value to stdout (`Debug` form), prefixed by the subtask when parallel.
    pub fn print(&self) -> DataStreamSink {
        self.sink(StdoutSink::default())
    }
}

impl<T: Data + Display> DataStream<T> {
    /// Writes each value's `Display` form as a line into `part-<subtask>` files of `dir`.
    pub fn write_as_text(&self, dir: impl AsRef<Path>) -> DataStreamSink {
        self.sink(TextFileSink::new(dir))
    }
}
