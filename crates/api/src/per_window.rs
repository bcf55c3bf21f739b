//! What follows a window aggregate: per window, the results with the greatest value (ties
//! included), across all keys. SQL writes it as a join of the aggregate with its own
//! `MAX` per window (Nexmark's q5 and q7); here it is one keyed operator.
//!
//! Records are keyed by their window, so each window's records meet in one subtask, which
//! keeps only the current maximum and the records that reach it (not the window's every
//! record) and emits them when the watermark passes the window's end. Its input is
//! usually a window aggregate's output, a handful of records per key and window, so the
//! one subtask per window is not the bottleneck.

use crate::stream::DataStream;
use sluice_dataflow::operators::{KeyedContext, KeyedProcessFunction};
use sluice_types::{Data, TimeWindow, Timestamp};
use std::sync::Arc;

impl<T: Data> DataStream<T> {
    /// Per window (`window_of` says which window a record belongs to), the records whose
    /// `value` is the greatest, every one of them on a tie, emitted at the window's last
    /// millisecond once the watermark has passed it. A record that arrives after its
    /// window was emitted is late: dropped and counted.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// // Per 10 s window, the auctions with the most bids.
    /// let env = StreamEnv::new();
    /// let bids = env.source(
    ///     CollectionSource::new(vec![(7u32, 1_000i64), (7, 2_000), (8, 3_000), (9, 4_000), (9, 5_000), (8, 12_000)]),
    ///     Watermarks::monotonic().with_timestamps(|b: &(u32, i64)| b.1),
    /// );
    /// let hottest = bids
    ///     .key_by(|b| b.0)
    ///     .window(Tumbling::event_time(Duration::from_secs(10)))
    ///     .aggregate_with(Count, |auction, window, n| (window.start, window.end, *auction, n))
    ///     .max_per_window(|c| TimeWindow::new(c.0, c.1), |c| c.3)
    ///     .collect();
    /// env.execute("hot items").unwrap();
    /// let mut values = hottest.values();
    /// values.sort();
    /// assert_eq!(values, vec![(0, 10_000, 7, 2), (0, 10_000, 9, 2), (10_000, 20_000, 8, 1)]);
    /// ```
    pub fn max_per_window<V: Data + Ord>(
        &self,
        window_of: impl Fn(&T) -> TimeWindow + Send + Sync + 'static,
        value: impl Fn(&T) -> V + Send + Sync + 'static,
    ) -> DataStream<T> {
        let window_of = Arc::new(window_of);
        let key = window_of.clone();
        let out = self
            .key_by(move |record| {
                let window = key(record);
                (window.start, window.end)
            })
            .process(MaxPerWindow { window_of, value: Arc::new(value) })
            .internal_name("max-per-window");
        out.requires_timestamps();
        out
    }
}

struct MaxPerWindow<W, F> {
    window_of: Arc<W>,
    value: Arc<F>,
}

impl<W, F> Clone for MaxPerWindow<W, F> {
    fn clone(&self) -> Self {
        MaxPerWindow { window_of: self.window_of.clone(), value: self.value.clone() }
    }
}

/// The window's greatest value so far.
const MAX: &str = "max-per-window-max";
/// The records that reach it.
const LEADERS: &str = "max-per-window-leaders";

impl<T, V, W, F> KeyedProcessFunction<(Timestamp, Timestamp), T, T> for MaxPerWindow<W, F>
where
    T: Data,
    V: Data + Ord,
    W: Fn(&T) -> TimeWindow + Send + Sync + 'static,
    F: Fn(&T) -> V + Send + Sync + 'static,
{
    fn process_element(&mut self, record: T, ctx: &mut KeyedContext<'_, (Timestamp, Timestamp), T>) {
        let last = (self.window_of)(&record).end - 1;
        if ctx.current_watermark() >= last {
            sluice_dataflow::counters::count(sluice_dataflow::counters::Counter::LateRecordDropped, 1);
            return;
        }
        let value = (self.value)(&record);
        let best = ctx.value_state::<V>(MAX).get().map(|best| value.cmp(best));
        match best {
            None => {
                ctx.value_state::<V>(MAX).update(value);
                ctx.list_state::<T>(LEADERS).update(vec![record]);
                ctx.register_event_time_timer(last);
            }
            Some(std::cmp::Ordering::Greater) => {
                ctx.value_state::<V>(MAX).update(value);
                ctx.list_state::<T>(LEADERS).update(vec![record]);
            }
            Some(std::cmp::Ordering::Equal) => ctx.list_state::<T>(LEADERS).add(record),
            Some(std::cmp::Ordering::Less) => {}
        }
    }

    fn on_timer(&mut self, time: Timestamp, ctx: &mut KeyedContext<'_, (Timestamp, Timestamp), T>) {
        ctx.value_state::<V>(MAX).clear();
        let leaders = ctx.list_state::<T>(LEADERS).get().to_vec();
        ctx.list_state::<T>(LEADERS).update(Vec::new());
        for record in leaders {
            ctx.emit_at(record, time);
        }
    }
}
