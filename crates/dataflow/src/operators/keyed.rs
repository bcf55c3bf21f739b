//! Keyed operators: process functions with keyed state and timers, and rolling
//! reduce/aggregate (one updated result per input record, as Flink's keyed reduce).

use crate::operator::{now_millis, Operator, Output};
use crate::snapshot::{decode_or_fail, encode, OperatorState, Restored};
use serde::{Deserialize, Serialize};
use sluice_state::{
    by_key_group, decode_entries, KeyedStateStore, ListState, MapState, TimeDomain, TimerService, ValueState,
};
use sluice_types::{key_group_of, Data, FastMap, Key, Record, Timestamp, MIN_WATERMARK, NO_TIMESTAMP};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One key group of a keyed process operator's snapshot.
#[derive(Serialize, Deserialize)]
struct ProcessChunk<K> {
    tables: Vec<(String, Vec<u8>)>,
    event_timers: Vec<(Timestamp, K)>,
    processing_timers: Vec<(Timestamp, K)>,
}

/// Restores `(key, value)` chunks of a keyed map.
fn restore_map<K: Key, V: Data>(map: &mut FastMap<K, V>, state: Restored, what: &str) {
    if let Restored::Keyed(chunks) = state {
        for (_, chunk) in chunks {
            map.extend(decode_entries::<K, V>(&chunk, what));
        }
    }
}

/// Extracts the key of a record.
pub type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// A function over a keyed stream with keyed state and timers (Flink's
/// `KeyedProcessFunction`). Each subtask gets its own clone.
pub trait KeyedProcessFunction<K, T, O>: Clone + Send + 'static {
    /// Called for each record; `ctx.key()` is its key.
    fn process_element(&mut self, value: T, ctx: &mut KeyedContext<'_, K, O>);
    /// Called when a timer registered for `ctx.key()` fires at `time`.
    fn on_timer(&mut self, _time: Timestamp, _ctx: &mut KeyedContext<'_, K, O>) {}
}

/// What a keyed process function sees: the current key, time, state and timers.
pub struct KeyedContext<'a, K, O> {
    key: &'a K,
    time: Timestamp,
    timer_domain: Option<TimeDomain>,
    watermark: Timestamp,
    state: &'a mut KeyedStateStore<K>,
    timers: &'a mut TimerService<K>,
    out: &'a mut Output<O>,
}

impl<K: Key, O: Send + 'static> KeyedContext<'_, K, O> {
    /// The key of the current record or timer.
    pub fn key(&self) -> &K {
        self.key
    }
    /// The event time of the current record, or the time of the firing timer.
    pub fn timestamp(&self) -> Option<Timestamp> {
        (self.time != NO_TIMESTAMP).then_some(self.time)
    }
    /// The domain of the firing timer (`None` while processing a record).
    pub fn timer_domain(&self) -> Option<TimeDomain> {
        self.timer_domain
    }
    /// The operator's current event-time watermark.
    pub fn current_watermark(&self) -> Timestamp {
        self.watermark
    }
    /// The wall clock in milliseconds.
    pub fn current_processing_time(&self) -> Timestamp {
        now_millis()
    }
    /// Emits a value with the current timestamp.
    pub fn emit(&mut self, value: O) {
        self.out.emit(value, self.time)
    }
    /// Emits a value with timestamp `time`.
    pub fn emit_at(&mut self, value: O, time: Timestamp) {
        self.out.emit(value, time)
    }
    /// Registers an event-time timer for the current key.
    pub fn register_event_time_timer(&mut self, time: Timestamp) {
        self.timers.event.register(time, self.key)
    }
    /// Registers a processing-time timer for the current key.
    pub fn register_processing_time_timer(&mut self, time: Timestamp) {
        self.timers.processing.register(time, self.key)
    }
    /// Deletes an event-time timer of the current key.
    pub fn delete_event_time_timer(&mut self, time: Timestamp) {
        self.timers.event.delete(time, self.key)
    }
    /// Deletes a processing-time timer of the current key.
    pub fn delete_processing_time_timer(&mut self, time: Timestamp) {
        self.timers.processing.delete(time, self.key)
    }
    /// The value state `name` of the current key.
    pub fn value_state<V: Data>(&mut self, name: &str) -> ValueState<'_, K, V> {
        self.state.value(name, self.key)
    }
    /// The list state `name` of the current key.
    pub fn list_state<V: Data>(&mut self, name: &str) -> ListState<'_, K, V> {
        self.state.list(name, self.key)
    }
    /// The map state `name` of the current key.
    pub fn map_state<UK: Key, UV: Data>(&mut self, name: &str) -> MapState<'_, K, UK, UV> {
        self.state.map(name, self.key)
    }
}

/// Runs a [`KeyedProcessFunction`].
pub struct KeyedProcessOperator<K, T, O, F> {
    key_fn: KeyFn<T, K>,
    function: F,
    state: KeyedStateStore<K>,
    timers: TimerService<K>,
    watermark: Timestamp,
    _out: std::marker::PhantomData<fn() -> O>,
}

impl<K, T, O, F> KeyedProcessOperator<K, T, O, F> {
    /// Runs `function` on records keyed by `key_fn`.
    pub fn new(key_fn: KeyFn<T, K>, function: F) -> Self {
        KeyedProcessOperator {
            key_fn,
            function,
            state: KeyedStateStore::default(),
            timers: TimerService::default(),
            watermark: MIN_WATERMARK,
            _out: std::marker::PhantomData,
        }
    }

    fn fire(&mut self, domain: TimeDomain, upto: Timestamp, out: &mut Output<O>)
    where
        K: Key,
        O: Send + 'static,
        F: KeyedProcessFunction<K, T, O>,
    {
        while let Some((time, key)) = self.timers.queue(domain).pop_due(upto) {
            let mut ctx = KeyedContext {
                key: &key,
                time,
                timer_domain: Some(domain),
                watermark: self.watermark,
                state: &mut self.state,
                timers: &mut self.timers,
                out,
            };
            self.function.on_timer(time, &mut ctx);
        }
    }
}

impl<K: Key, T: Send + 'static, O: Send + 'static, F: KeyedProcessFunction<K, T, O>> Operator<T, O>
    for KeyedProcessOperator<K, T, O, F>
{
    fn process_batch(&mut self, batch: Vec<Record<T>>, out: &mut Output<O>) {
        for record in batch {
            let key = (self.key_fn)(&record.value);
            let mut ctx = KeyedContext {
                key: &key,
                time: record.time,
                timer_domain: None,
                watermark: self.watermark,
                state: &mut self.state,
                timers: &mut self.timers,
                out,
            };
            self.function.process_element(record.value, &mut ctx);
        }
    }

    fn on_watermark(&mut self, watermark: Timestamp, out: &mut Output<O>) {
        self.watermark = watermark;
        self.fire(TimeDomain::EventTime, watermark, out);
    }

    fn on_processing_time(&mut self, now: Timestamp, out: &mut Output<O>) {
        self.fire(TimeDomain::ProcessingTime, now, out);
    }

    /// At the end of the input, processing-time timers still pending fire, in time order
    /// and at the time they were set for, as processing-time windows do: what a function
    /// was waiting to emit is not dropped silently. A timer that a firing one sets for
    /// later than every timer pending at the end (a periodic timer) is not waited for; how
    /// many were left is logged.
    fn finish(&mut self, out: &mut Output<O>) {
        let Some(last) = self.timers.queue(TimeDomain::ProcessingTime).entries().map(|(t, _)| *t).max() else {
            return;
        };
        self.fire(TimeDomain::ProcessingTime, last, out);
        let left = self.timers.queue(TimeDomain::ProcessingTime).len();
        if left > 0 {
            tracing::info!(left, "processing-time timers set while the input ended are dropped");
        }
    }

    fn snapshot(&mut self, max_parallelism: usize) -> Option<OperatorState> {
        let mut chunks: BTreeMap<u32, ProcessChunk<K>> = BTreeMap::new();
        let empty = || ProcessChunk { tables: Vec::new(), event_timers: Vec::new(), processing_timers: Vec::new() };
        for (group, tables) in self.state.snapshot(max_parallelism) {
            chunks.entry(group).or_insert_with(empty).tables = tables;
        }
        for (time, key) in self.timers.event.entries() {
            let group = key_group_of(key, max_parallelism).0;
            chunks.entry(group).or_insert_with(empty).event_timers.push((*time, key.clone()));
        }
        for (time, key) in self.timers.processing.entries() {
            let group = key_group_of(key, max_parallelism).0;
            chunks.entry(group).or_insert_with(empty).processing_timers.push((*time, key.clone()));
        }
        Some(OperatorState::Keyed(chunks.into_iter().map(|(g, c)| (g, encode(&c))).collect()))
    }

    fn restore(&mut self, state: Restored) {
        let Restored::Keyed(chunks) = state else { return };
        for (group, bytes) in chunks {
            let chunk: ProcessChunk<K> = decode_or_fail(&bytes, "a keyed process function");
            for (name, entries) in chunk.tables {
                self.state.restore(group, name, entries);
            }
            for (time, key) in chunk.event_timers {
                self.timers.event.register(time, &key);
            }
            for (time, key) in chunk.processing_timers {
                self.timers.processing.register(time, &key);
            }
        }
    }
}

/// Aggregates values into an accumulator (Flink's `AggregateFunction`).
///
/// ```
/// use sluice_dataflow::operators::AggregateFunction;
/// #[derive(Clone)]
/// struct Average;
/// impl AggregateFunction<f64> for Average {
///     type Acc = (f64, u64);
///     type Out = f64;
///     fn create_accumulator(&self) -> (f64, u64) { (0.0, 0) }
///     fn add(&self, acc: &mut (f64, u64), v: f64) { acc.0 += v; acc.1 += 1; }
///     fn get_result(&self, acc: &(f64, u64)) -> f64 { acc.0 / acc.1 as f64 }
///     fn merge(&self, a: (f64, u64), b: (f64, u64)) -> (f64, u64) { (a.0 + b.0, a.1 + b.1) }
/// }
/// let mut acc = Average.create_accumulator();
/// Average.add(&mut acc, 1.0);
/// Average.add(&mut acc, 3.0);
/// assert_eq!(Average.get_result(&acc), 2.0);
/// ```
pub trait AggregateFunction<T>: Clone + Send + Sync + 'static {
    /// The running state.
    type Acc: Data;
    /// The result.
    type Out: Data;
    /// A new, empty accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Adds a value.
    fn add(&self, acc: &mut Self::Acc, value: T);
    /// The result of an accumulator.
    fn get_result(&self, acc: &Self::Acc) -> Self::Out;
    /// Merges two accumulators (session windows merge).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// Keyed rolling reduce: emits the reduced value after every record.
pub struct RollingReduce<K, T, F> {
    key_fn: KeyFn<T, K>,
    f: F,
    values: FastMap<K, T>,
}

impl<K, T, F> RollingReduce<K, T, F> {
    /// Reduces values of each key with `f`.
    pub fn new(key_fn: KeyFn<T, K>, f: F) -> Self {
        RollingReduce { key_fn, f, values: FastMap::default() }
    }
}

impl<K: Key, T: Data, F: Fn(T, T) -> T + Send> Operator<T, T> for RollingReduce<K, T, F> {
    fn process_batch(&mut self, batch: Vec<Record<T>>, out: &mut Output<T>) {
        for record in batch {
            let key = (self.key_fn)(&record.value);
            let reduced = match self.values.remove(&key) {
                Some(previous) => (self.f)(previous, record.value),
                None => record.value,
            };
            out.emit(reduced.clone(), record.time);
            self.values.insert(key, reduced);
        }
    }

    fn snapshot(&mut self, max_parallelism: usize) -> Option<OperatorState> {
        Some(OperatorState::Keyed(by_key_group(self.values.iter(), max_parallelism)))
    }

    fn restore(&mut self, state: Restored) {
        restore_map(&mut self.values, state, "a rolling reduce");
    }
}

/// Keyed rolling aggregate: emits the aggregate's result after every record.
pub struct RollingAggregate<K, T, A: AggregateFunction<T>> {
    key_fn: KeyFn<T, K>,
    aggregate: A,
    accumulators: FastMap<K, A::Acc>,
}

impl<K, T, A: AggregateFunction<T>> RollingAggregate<K, T, A> {
    /// Aggregates values of each key with `aggregate`.
    pub fn new(key_fn: KeyFn<T, K>, aggregate: A) -> Self {
        RollingAggregate { key_fn, aggregate, accumulators: FastMap::default() }
    }
}

impl<K: Key, T: Send + 'static, A: AggregateFunction<T>> Operator<T, A::Out> for RollingAggregate<K, T, A> {
    fn process_batch(&mut self, batch: Vec<Record<T>>, out: &mut Output<A::Out>) {
        for record in batch {
            let key = (self.key_fn)(&record.value);
            let acc = self.accumulators.entry(key).or_insert_with(|| self.aggregate.create_accumulator());
            self.aggregate.add(acc, record.value);
            out.emit(self.aggregate.get_result(acc), record.time);
        }
    }

    fn snapshot(&mut self, max_parallelism: usize) -> Option<OperatorState> {
        Some(OperatorState::Keyed(by_key_group(self.accumulators.iter(), max_parallelism)))
    }

    fn restore(&mut self, state: Restored) {
        restore_map(&mut self.accumulators, state, "a rolling aggregate");
    }
}

/// Counts records (an [`AggregateFunction`] for any record type).
///
/// ```
/// use sluice_dataflow::operators::{AggregateFunction, Count};
/// let mut n = AggregateFunction::<&str>::create_accumulator(&Count);
/// Count.add(&mut n, "x");
/// assert_eq!(AggregateFunction::<&str>::get_result(&Count, &n), 1);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<T> AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, acc: &mut u64, _value: T) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}
