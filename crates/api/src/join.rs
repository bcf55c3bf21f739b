//! Joins of two streams: window joins and interval joins.
//!
//! Both are built from parts that exist anyway: the two inputs are tagged
//! ([`JoinSide`]), merged and keyed by their join key, so one keyed operator sees both
//! sides of a key and the watermark is the minimum of the two inputs. A window join is
//! then a window whose function pairs the window's left and right records (as Flink
//! implements it, through co-group); an interval join is a keyed process function that
//! buffers each side until the watermark says no partner can still arrive.

use crate::keyed::KeyedStream;
use crate::stream::DataStream;
use crate::window::WindowSpec;
use serde::{Deserialize, Serialize};
use sluice_dataflow::operators::{KeyFn, KeyedContext, KeyedProcessFunction};
use sluice_types::{Data, Key, Timestamp, MIN_WATERMARK};
use std::sync::Arc;
use std::time::Duration;

/// A record of the left or the right input of a join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinSide<A, B> {
    /// From the left input.
    Left(A),
    /// From the right input.
    Right(B),
}

fn tag_and_key<K: Key, T: Data, U: Data>(
    left: &DataStream<T>,
    right: &DataStream<U>,
    left_key: KeyFn<T, K>,
    right_key: KeyFn<U, K>,
) -> KeyedStream<K, JoinSide<T, U>> {
    let l = left.map(JoinSide::Left).internal_name("join-left");
    let r = right.map(JoinSide::Right).internal_name("join-right");
    l.union(&r).key_by(move |side| match side {
        JoinSide::Left(a) => left_key(a),
        JoinSide::Right(b) => right_key(b),
    })
}

/// Two streams about to be joined in windows: say on which keys.
pub struct JoinedStreams<T, U> {
    left: DataStream<T>,
    right: DataStream<U>,
}

/// A window join with its keys; give it a window, then a join function.
pub struct WindowJoin<K, T, U> {
    left: DataStream<T>,
    right: DataStream<U>,
    left_key: KeyFn<T, K>,
    right_key: KeyFn<U, K>,
    spec: Option<WindowSpec>,
    lateness: Duration,
}

impl<T: Data> DataStream<T> {
    /// Joins this stream with `other` in windows (Flink's `join`): every pair of a left
    /// and a right record with equal keys in the same window.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// // (ad id, event time)
    /// let clicks = env.source(CollectionSource::new(vec![(1u32, 100i64), (2, 200)]), Watermarks::monotonic().with_timestamps(|e: &(u32, i64)| e.1));
    /// let views = env.source(CollectionSource::new(vec![(1u32, 50i64), (1, 1500)]), Watermarks::monotonic().with_timestamps(|e: &(u32, i64)| e.1));
    /// let pairs = clicks
    ///     .join(&views)
    ///     .where_key(|c| c.0)
    ///     .equal_to(|v| v.0)
    ///     .window(Tumbling::event_time(Duration::from_secs(1)))
    ///     .apply(|c, v| (c.0, c.1, v.1))
    ///     .collect();
    /// env.execute("window join").unwrap();
    /// assert_eq!(pairs.values(), vec![(1, 100, 50)]);
    /// ```
    pub fn join<U: Data>(&self, other: &DataStream<U>) -> JoinedStreams<T, U> {
        JoinedStreams { left: self.clone(), right: other.clone() }
    }
}

/// A window join with its left key; give it the right key.
pub struct JoinWhere<K, T, U> {
    left: DataStream<T>,
    right: DataStream<U>,
    left_key: KeyFn<T, K>,
}

impl<T: Data, U: Data> JoinedStreams<T, U> {
    /// The key of left records.
    pub fn where_key<K: Key>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> JoinWhere<K, T, U> {
        JoinWhere { left: self.left, right: self.right, left_key: Arc::new(key) }
    }
}

impl<K: Key, T: Data, U: Data> JoinWhere<K, T, U> {
    /// The key of right records.
    pub fn equal_to(self, key: impl Fn(&U) -> K + Send + Sync + 'static) -> WindowJoin<K, T, U> {
        WindowJoin {
            left: self.left,
            right: self.right,
            left_key: self.left_key,
            right_key: Arc::new(key),
            spec: None,
            lateness: Duration::ZERO,
        }
    }
}

impl<K: Key, T: Data, U: Data> WindowJoin<K, T, U> {
    /// The windows pairs are formed in.
    pub fn window(mut self, spec: WindowSpec) -> Self {
        self.spec = Some(spec);
        self
    }

    /// Keeps each window this long after it fired (event time only): a late record within
    /// it fires the window again with every pair it now holds, as Flink's window join
    /// (a co-group over a window with allowed lateness) does.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// let stamped = |items: Vec<(u32, i64)>| {
    ///     env.source(CollectionSource::new(items), Watermarks::bounded(Duration::from_secs(1)).with_timestamps(|e: &(u32, i64)| e.1))
    /// };
    /// let pairs = stamped(vec![(1, 100), (1, 900)])
    ///     .join(&stamped(vec![(1, 500)]))
    ///     .where_key(|c| c.0)
    ///     .equal_to(|v| v.0)
    ///     .window(Tumbling::event_time(Duration::from_secs(1)))
    ///     .allowed_lateness(Duration::from_secs(5))
    ///     .apply(|c, v| (c.1, v.1))
    ///     .collect();
    /// env.execute("join with lateness").unwrap();
    /// let mut got = pairs.values();
    /// got.sort();
    /// assert_eq!(got, vec![(100, 500), (900, 500)]);
    /// ```
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = lateness;
        self
    }

    /// Emits `f(left, right)` for every pair in a window.
    pub fn apply<O: Data>(self, f: impl Fn(&T, &U) -> O + Send + Sync + 'static) -> DataStream<O> {
        let env = self.left.env.clone();
        let Some(spec) = self.spec else {
            env.record_error("a window join needs a window: call .window(..) before .apply(..)".into());
            return self.left.filter_map(|_| None);
        };
        let keyed = tag_and_key(&self.left, &self.right, self.left_key, self.right_key);
        keyed
            .window(spec)
            .allowed_lateness(self.lateness)
            .process(move |_key, _window, records: &[JoinSide<T, U>]| {
                let mut out = Vec::new();
                for l in records.iter().filter_map(|r| match r {
                    JoinSide::Left(l) => Some(l),
                    JoinSide::Right(_) => None,
                }) {
                    for r in records.iter().filter_map(|r| match r {
                        JoinSide::Right(r) => Some(r),
                        JoinSide::Left(_) => None,
                    }) {
                        out.push(f(l, r));
                    }
                }
                out
            })
            .internal_name("window-join")
    }
}

/// An interval join of two keyed streams: each left record `l` pairs with the right
/// records `r` of its key with `l.time + lower <= r.time <= l.time + upper`.
pub struct IntervalJoin<K, T, U> {
    left: KeyedStream<K, T>,
    right: KeyedStream<K, U>,
    lower: i64,
    upper: i64,
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Joins with `other` by time interval (Flink's `intervalJoin`).
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// let env = StreamEnv::new();
    /// let orders = env.source(CollectionSource::new(vec![(1u32, 1000i64)]), Watermarks::monotonic().with_timestamps(|e: &(u32, i64)| e.1));
    /// let payments = env.source(CollectionSource::new(vec![(1u32, 1500i64), (1, 9000)]), Watermarks::monotonic().with_timestamps(|e: &(u32, i64)| e.1));
    /// let paid = orders
    ///     .key_by(|o| o.0)
    ///     .interval_join(&payments.key_by(|p| p.0))
    ///     .between(0, 1000)
    ///     .process(|o, p| (o.0, p.1 - o.1))
    ///     .collect();
    /// env.execute("interval join").unwrap();
    /// assert_eq!(paid.values(), vec![(1, 500)]);
    /// ```
    pub fn interval_join<U: Data>(&self, other: &KeyedStream<K, U>) -> IntervalJoin<K, T, U> {
        IntervalJoin { left: self.clone(), right: other.clone(), lower: 0, upper: 0 }
    }
}

impl<K: Key, T: Data, U: Data> IntervalJoin<K, T, U> {
    /// The interval, in milliseconds relative to the left record's time (may be negative).
    pub fn between(mut self, lower_millis: i64, upper_millis: i64) -> Self {
        self.lower = lower_millis;
        self.upper = upper_millis;
        self
    }

    /// Emits `f(left, right)` for every pair, at the later of the two timestamps.
    pub fn process<O: Data>(self, f: impl Fn(&T, &U) -> O + Send + Sync + 'static) -> DataStream<O> {
        let env = self.left.stream.env.clone();
        if self.lower > self.upper {
            env.record_error(format!(
                "an interval join's lower bound ({} ms) is above its upper bound ({} ms); swap them",
                self.lower, self.upper
            ));
        }
        let keyed = tag_and_key(&self.left.stream, &self.right.stream, self.left.key_fn, self.right.key_fn);
        let joined = keyed
            .process(IntervalJoinFunction { lower: self.lower, upper: self.upper, f: Arc::new(f) })
            .internal_name("interval-join");
        joined.requires_timestamps();
        joined
    }
}

struct IntervalJoinFunction<F> {
    lower: i64,
    upper: i64,
    f: Arc<F>,
}

impl<F> Clone for IntervalJoinFunction<F> {
    fn clone(&self) -> Self {
        IntervalJoinFunction { lower: self.lower, upper: self.upper, f: self.f.clone() }
    }
}

const LEFT: &str = "interval-join-left";
const RIGHT: &str = "interval-join-right";

impl<K, T, U, O, F> KeyedProcessFunction<K, JoinSide<T, U>, O> for IntervalJoinFunction<F>
where
    K: Key,
    T: Data,
    U: Data,
    O: Send + 'static,
    F: Fn(&T, &U) -> O + Send + Sync + 'static,
{
    fn process_element(&mut self, value: JoinSide<T, U>, ctx: &mut KeyedContext<'_, K, O>) {
        let time = ctx
            .timestamp()
            .expect("an interval join needs event timestamps: give both sources a watermark strategy with timestamps");
        let watermark = ctx.current_watermark();
        if watermark != MIN_WATERMARK && time < watermark {
            // Late: its partners may already be gone (Flink drops these too); counted.
            sluice_dataflow::counters::count(sluice_dataflow::counters::Counter::LateRecordDropped, 1);
            return;
        }
        let (lower, upper) = (self.lower, self.upper);
        let f = &self.f;
        match value {
            JoinSide::Left(left) => {
                let pairs: Vec<(O, Timestamp)> = ctx
                    .list_state::<(Timestamp, U)>(RIGHT)
                    .get()
                    .iter()
                    .filter(|(t, _)| *t >= time.saturating_add(lower) && *t <= time.saturating_add(upper))
                    .map(|(t, right)| (f(&left, right), time.max(*t)))
                    .collect();
                for (out, at) in pairs {
                    ctx.emit_at(out, at);
                }
                ctx.list_state::<(Timestamp, T)>(LEFT).add((time, left));
                ctx.register_event_time_timer(time.saturating_add(upper.max(0)));
            }
            JoinSide::Right(right) => {
                let pairs: Vec<(O, Timestamp)> = ctx
                    .list_state::<(Timestamp, T)>(LEFT)
                    .get()
                    .iter()
                    .filter(|(t, _)| time >= t.saturating_add(lower) && time <= t.saturating_add(upper))
                    .map(|(t, left)| (f(left, &right), time.max(*t)))
                    .collect();
                for (out, at) in pairs {
                    ctx.emit_at(out, at);
                }
                ctx.list_state::<(Timestamp, U)>(RIGHT).add((time, right));
                ctx.register_event_time_timer(time.saturating_sub(lower.min(0)));
            }
        }
    }

    fn on_timer(&mut self, time: Timestamp, ctx: &mut KeyedContext<'_, K, O>) {
        // A left record can still meet right records up to its time + upper; a right
        // record can still meet left records down to its time - lower.
        let (lower, upper) = (self.lower, self.upper);
        ctx.list_state::<(Timestamp, T)>(LEFT).retain(|(t, _)| t.saturating_add(upper.max(0)) > time);
        ctx.list_state::<(Timestamp, U)>(RIGHT).retain(|(t, _)| t.saturating_sub(lower.min(0)) > time);
    }
}
