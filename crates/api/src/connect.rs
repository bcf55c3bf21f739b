//! Two inputs into one keyed operator with state for each (Flink's `connect` and
//! `KeyedCoProcessFunction`): the building block of regular (unwindowed) joins, of a
//! stream enriched by another, and of any logic that reads one input to act on the other.
//!
//! Built like the joins beside it: both inputs are tagged ([`JoinSide`]), merged and keyed,
//! so the same key of both sides lands in one subtask, shares one keyed state and one set
//! of timers, and the operator's watermark is the minimum of the two inputs'. The user's
//! function sees which input a record came from through the method called.

use crate::join::JoinSide;
use crate::stream::DataStream;
use sluice_dataflow::operators::{KeyFn, KeyedContext, KeyedProcessFunction};
use sluice_types::{Data, Key, Timestamp};
use std::sync::Arc;

/// A function of two keyed inputs (Flink's `KeyedCoProcessFunction`): one method per
/// input, and timers. Both see the same keyed state (`ctx.value_state`, `ctx.map_state`,
/// `ctx.list_state`, by name), the same timers and the same key.
pub trait KeyedCoProcessFunction<K, A, B, O>: Clone + Send + 'static {
    /// Called for each record of the first input; `ctx.key()` is its key.
    fn process_element1(&mut self, value: A, ctx: &mut KeyedContext<'_, K, O>);
    /// Called for each record of the second input.
    fn process_element2(&mut self, value: B, ctx: &mut KeyedContext<'_, K, O>);
    /// Called when a timer registered for `ctx.key()` fires at `time`.
    fn on_timer(&mut self, _time: Timestamp, _ctx: &mut KeyedContext<'_, K, O>) {}
}

/// Two streams connected, about to be keyed: one stream of records tagged by the input
/// they belong to.
pub struct ConnectedStreams<A, B> {
    tagged: DataStream<JoinSide<A, B>>,
}

/// Two connected streams keyed by one key type: give them a [`KeyedCoProcessFunction`].
pub struct ConnectedKeyedStreams<K, A, B> {
    tagged: DataStream<JoinSide<A, B>>,
    first_key: KeyFn<A, K>,
    second_key: KeyFn<B, K>,
}

impl<A: Data> DataStream<A> {
    /// Connects this stream with `other` (Flink's `connect`), to key both and process
    /// them in one operator with shared keyed state.
    ///
    /// A regular inner join, the way Nexmark's q3 needs one: each side's records are kept
    /// in state, and a record of either side is paired with what the other side holds.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// // (person id, name) and (auction id, seller id)
    /// let env = StreamEnv::new();
    /// let people = env.from_collection(vec![(1u32, "Ann".to_string()), (2, "Bob".to_string())]);
    /// let auctions = env.from_collection(vec![(10u32, 1u32), (11, 1), (12, 3)]);
    ///
    /// #[derive(Clone)]
    /// struct SellerOf;
    /// impl KeyedCoProcessFunction<u32, (u32, String), (u32, u32), (String, u32)> for SellerOf {
    ///     fn process_element1(&mut self, person: (u32, String), ctx: &mut KeyedContext<'_, u32, (String, u32)>) {
    ///         let waiting = ctx.list_state::<u32>("auctions").get().to_vec();
    ///         for auction in waiting {
    ///             ctx.emit((person.1.clone(), auction));
    ///         }
    ///         ctx.list_state::<u32>("auctions").update(Vec::new());
    ///         ctx.value_state::<String>("name").update(person.1);
    ///     }
    ///     fn process_element2(&mut self, auction: (u32, u32), ctx: &mut KeyedContext<'_, u32, (String, u32)>) {
    ///         match ctx.value_state::<String>("name").get().cloned() {
    ///             Some(name) => ctx.emit((name, auction.0)),
    ///             None => ctx.list_state::<u32>("auctions").add(auction.0),
    ///         }
    ///     }
    /// }
    ///
    /// let joined = people.connect(&auctions).key_by(|p| p.0, |a| a.1).process(SellerOf).collect();
    /// env.execute("sellers").unwrap();
    /// let mut values = joined.values();
    /// values.sort();
    /// assert_eq!(values, vec![("Ann".to_string(), 10), ("Ann".to_string(), 11)]);
    /// ```
    pub fn connect<B: Data>(&self, other: &DataStream<B>) -> ConnectedStreams<A, B> {
        let first = self.map(JoinSide::Left).internal_name("connect-first");
        let second = other.map(JoinSide::Right).internal_name("connect-second");
        ConnectedStreams { tagged: first.union(&second) }
    }

    /// Splits this stream into the two inputs of a connected operator in one pass: `split`
    /// says which input a record feeds (or none). Where both inputs come from one stream
    /// (the persons and the auctions of one event stream), this reads each record once,
    /// where two filters over the stream and [`DataStream::connect`] would copy every record
    /// to each filter first.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// // Orders (positive) and refunds (negative) of one account stream: the net per account.
    /// // One source subtask, so that account 1's order then refund stay in that order.
    /// let events = env.from_collection(vec![(1u32, 30i64), (1, -10), (2, 5)]).parallelism(1);
    ///
    /// #[derive(Clone)]
    /// struct Net;
    /// impl KeyedCoProcessFunction<u32, (u32, i64), (u32, i64), (u32, i64)> for Net {
    ///     fn process_element1(&mut self, order: (u32, i64), ctx: &mut KeyedContext<'_, u32, (u32, i64)>) {
    ///         let net = ctx.value_state::<i64>("net").get().copied().unwrap_or(0) + order.1;
    ///         ctx.value_state::<i64>("net").update(net);
    ///         ctx.emit((order.0, net));
    ///     }
    ///     fn process_element2(&mut self, refund: (u32, i64), ctx: &mut KeyedContext<'_, u32, (u32, i64)>) {
    ///         let net = ctx.value_state::<i64>("net").get().copied().unwrap_or(0) + refund.1;
    ///         ctx.value_state::<i64>("net").update(net);
    ///         ctx.emit((refund.0, net));
    ///     }
    /// }
    ///
    /// let net = events
    ///     .split_connect(|e| Some(if e.1 >= 0 { JoinSide::Left(e) } else { JoinSide::Right(e) }))
    ///     .key_by(|order| order.0, |refund| refund.0)
    ///     .process(Net)
    ///     .collect();
    /// env.execute("net").unwrap();
    /// let mut values = net.values();
    /// values.sort();
    /// assert_eq!(values, vec![(1, 20), (1, 30), (2, 5)]);
    /// ```
    pub fn split_connect<L: Data, R: Data>(
        &self,
        split: impl Fn(A) -> Option<JoinSide<L, R>> + Send + Sync + 'static,
    ) -> ConnectedStreams<L, R> {
        ConnectedStreams { tagged: self.filter_map(split).internal_name("split-connect") }
    }
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    /// Keys the first input by `first` and the second by `second`; records of both with
    /// equal keys meet in one subtask.
    pub fn key_by<K: Key>(
        self,
        first: impl Fn(&A) -> K + Send + Sync + 'static,
        second: impl Fn(&B) -> K + Send + Sync + 'static,
    ) -> ConnectedKeyedStreams<K, A, B> {
        ConnectedKeyedStreams { tagged: self.tagged, first_key: Arc::new(first), second_key: Arc::new(second) }
    }
}

impl<K: Key, A: Data, B: Data> ConnectedKeyedStreams<K, A, B> {
    /// Runs `function` over both inputs (see [`DataStream::connect`] for an example).
    pub fn process<O: Data, F: KeyedCoProcessFunction<K, A, B, O> + Sync>(self, function: F) -> DataStream<O> {
        let (first_key, second_key) = (self.first_key, self.second_key);
        self.tagged
            .key_by(move |side| match side {
                JoinSide::Left(a) => first_key(a),
                JoinSide::Right(b) => second_key(b),
            })
            .process(CoProcess(function))
            .internal_name("co-process")
    }
}

/// A [`KeyedCoProcessFunction`] as the one-input function over tagged records that the
/// keyed operator runs.
#[derive(Clone)]
struct CoProcess<F>(F);

impl<K, A, B, O, F> KeyedProcessFunction<K, JoinSide<A, B>, O> for CoProcess<F>
where
    K: Key,
    A: Data,
    B: Data,
    O: Send + 'static,
    F: KeyedCoProcessFunction<K, A, B, O>,
{
    fn process_element(&mut self, value: JoinSide<A, B>, ctx: &mut KeyedContext<'_, K, O>) {
        match value {
            JoinSide::Left(a) => self.0.process_element1(a, ctx),
            JoinSide::Right(b) => self.0.process_element2(b, ctx),
        }
    }

    fn on_timer(&mut self, time: Timestamp, ctx: &mut KeyedContext<'_, K, O>) {
        self.0.on_timer(time, ctx);
    }
}
