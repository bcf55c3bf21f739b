//! [`KeyedStream`]: a stream partitioned by key, with keyed state, timers, rolling
//! aggregations and windows.

use crate::stream::DataStream;
use crate::window::{WindowSpec, WindowedStream};
use sluice_dataflow::operators::{
    AggregateFunction, KeyFn, KeyedProcessFunction, KeyedProcessOperator, RollingAggregate, RollingReduce,
};
use sluice_types::{Data, Key};
use std::time::Duration;

/// A stream partitioned by a key of type `K`.
pub struct KeyedStream<K, T> {
    pub(crate) stream: DataStream<T>,
    pub(crate) key_fn: KeyFn<T, K>,
}

impl<K, T> Clone for KeyedStream<K, T> {
    fn clone(&self) -> Self {
        KeyedStream { stream: self.stream.clone(), key_fn: self.key_fn.clone() }
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Runs a process function with keyed state and timers on each record.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// /// Emits each key's running count.
    /// #[derive(Clone)]
    /// struct Count;
    /// impl KeyedProcessFunction<u64, u64, (u64, u64)> for Count {
    ///     fn process_element(&mut self, _v: u64, ctx: &mut KeyedContext<'_, u64, (u64, u64)>) {
    ///         let mut count = ctx.value_state::<u64>("count");
    ///         let next = count.get().copied().unwrap_or(0) + 1;
    ///         count.update(next);
    ///         let key = *ctx.key();
    ///         ctx.emit((key, next));
    ///     }
    /// }
    /// let env = StreamEnv::new();
    /// let out = env.from_collection(vec![1u64, 2, 1, 1]).key_by(|v| *v).process(Count).collect();
    /// env.execute("count").unwrap();
    /// assert!(out.values().contains(&(1, 3)));
    /// ```
    pub fn process<O: Data, F: KeyedProcessFunction<K, T, O> + Sync>(&self, function: F) -> DataStream<O> {
        let key_fn = self.key_fn.clone();
        self.stream.then_op("process", move || KeyedProcessOperator::new(key_fn.clone(), function.clone()))
    }

    /// Rolling reduce: emits each key's reduced value after every record.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let out = env.from_collection(vec![(1u8, 5u64), (1, 7)]).parallelism(1)
    ///     .key_by(|p| p.0).reduce(|a, b| (a.0, a.1.max(b.1))).collect();
    /// env.execute("max").unwrap();
    /// assert_eq!(out.values(), vec![(1, 5), (1, 7)]);
    /// ```
    pub fn reduce(&self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DataStream<T> {
        let key_fn = self.key_fn.clone();
        let f = std::sync::Arc::new(f);
        self.stream.then_op("reduce", move || {
            let f = f.clone();
            RollingReduce::new(key_fn.clone(), move |a, b| f(a, b))
        })
    }

    /// Rolling aggregate: emits each key's aggregate result after every record.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let out = env.from_collection(vec![3u64, 3, 4]).parallelism(1).key_by(|v| *v).aggregate(Count).collect();
    /// env.execute("count").unwrap();
    /// let mut counts = out.values(); // keys 3 and 4 may be counted by different subtasks
    /// counts.sort();
    /// assert_eq!(counts, vec![1, 1, 2]);
    /// ```
    pub fn aggregate<A: AggregateFunction<T>>(&self, aggregate: A) -> DataStream<A::Out> {
        let key_fn = self.key_fn.clone();
        self.stream.then_op("aggregate", move || RollingAggregate::new(key_fn.clone(), aggregate.clone()))
    }

    /// Groups each key's records into windows.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// let sums = env
    ///     .source(
    ///         CollectionSource::new(vec![('a', 1u64, 100i64), ('a', 2, 900), ('a', 4, 1500)]),
    ///         Watermarks::monotonic().with_timestamps(|e: &(char, u64, i64)| e.2),
    ///     )
    ///     .parallelism(1)
    ///     .key_by(|e| e.0)
    ///     .window(Tumbling::event_time(Duration::from_secs(1)))
    ///     .reduce(|a, b| (a.0, a.1 + b.1, a.2))
    ///     .collect();
    /// env.execute("tumbling").unwrap();
    /// let totals: Vec<u64> = sums.values().iter().map(|e| e.1).collect();
    /// assert_eq!(totals, vec![3, 4]);
    /// ```
    ///
    /// Windows exist only on keyed streams; on a plain stream this does not compile:
    ///
    /// ```compile_fail
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// env.from_collection(vec![1u64]).window(Tumbling::event_time(Duration::from_secs(1)));
    /// ```
    pub fn window(&self, spec: WindowSpec) -> WindowedStream<K, T> {
        if let Err(message) = spec.check() {
            self.stream.env.record_error(message);
        }
        WindowedStream { keyed: self.clone(), spec, lateness: Duration::ZERO, late_tag: None }
    }
}
