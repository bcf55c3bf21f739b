//! Window specifications and [`WindowedStream`].

use crate::keyed::KeyedStream;
use crate::stream::{DataStream, OutputTag};
use sluice_dataflow::operators::{
    AggregateFunction, AggregateWindow, DropLate, LateToSideOutput, ProcessWindow, ReduceWindow, WindowAssigner,
    WindowFunction, WindowOperator, WindowOutput, WindowTime,
};
use sluice_types::{Data, Key, TimeWindow};
use std::sync::Arc;
use std::time::Duration;

/// Which windows, in which time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub(crate) assigner: WindowAssigner,
    pub(crate) time: WindowTime,
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl WindowSpec {
    /// Shifts window starts by `offset` (e.g. to align days to a time zone).
    pub fn with_offset(mut self, offset: Duration) -> Self {
        match &mut self.assigner {
            WindowAssigner::Tumbling { offset: o, .. } | WindowAssigner::Sliding { offset: o, .. } => {
                *o = millis(offset)
            }
            WindowAssigner::Session { .. } => {}
        }
        self
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        match self.assigner {
            WindowAssigner::Tumbling { size, offset } if size <= 0 || offset.abs() >= size => Err(format!(
                "a tumbling window needs a size of at least 1 ms and an offset below the size (size {size} ms, offset {offset} ms)"
            )),
            WindowAssigner::Sliding { size, slide, offset } if size <= 0 || slide <= 0 || offset.abs() >= slide => {
                Err(format!(
                    "a sliding window needs a size and a slide of at least 1 ms and an offset below the slide \
                     (size {size} ms, slide {slide} ms, offset {offset} ms)"
                ))
            }
            WindowAssigner::Session { gap } if gap <= 0 => {
                Err("a session window needs a gap of at least 1 ms".to_string())
            }
            _ => Ok(()),
        }
    }
}

/// Fixed-size, non-overlapping windows.
pub struct Tumbling;

impl Tumbling {
    /// Windows of `size` in event time.
    pub fn event_time(size: Duration) -> WindowSpec {
        WindowSpec { assigner: WindowAssigner::Tumbling { size: millis(size), offset: 0 }, time: WindowTime::EventTime }
    }
    /// Windows of `size` in processing time.
    pub fn processing_time(size: Duration) -> WindowSpec {
        WindowSpec { time: WindowTime::ProcessingTime, ..Self::event_time(size) }
    }
}

/// Fixed-size windows that start every `slide` (a record can be in several).
pub struct Sliding;

impl Sliding {
    /// Windows of `size` every `slide` in event time.
    pub fn event_time(size: Duration, slide: Duration) -> WindowSpec {
        WindowSpec {
            assigner: WindowAssigner::Sliding { size: millis(size), slide: millis(slide), offset: 0 },
            time: WindowTime::EventTime,
        }
    }
    /// Windows of `size` every `slide` in processing time.
    pub fn processing_time(size: Duration, slide: Duration) -> WindowSpec {
        WindowSpec { time: WindowTime::ProcessingTime, ..Self::event_time(size, slide) }
    }
}

/// Per-key windows closed by a gap of inactivity; they merge as records bridge them.
pub struct Session;

impl Session {
    /// Sessions with inactivity `gap` in event time.
    pub fn event_time(gap: Duration) -> WindowSpec {
        WindowSpec { assigner: WindowAssigner::Session { gap: millis(gap) }, time: WindowTime::EventTime }
    }
    /// Sessions with inactivity `gap` in processing time.
    pub fn processing_time(gap: Duration) -> WindowSpec {
        WindowSpec { time: WindowTime::ProcessingTime, ..Self::event_time(gap) }
    }
}

/// A keyed stream grouped into windows; a window function turns it back into a stream.
pub struct WindowedStream<K, T> {
    pub(crate) keyed: KeyedStream<K, T>,
    pub(crate) spec: WindowSpec,
    pub(crate) lateness: Duration,
    pub(crate) late_tag: Option<String>,
}

impl<K: Key, T: Data> WindowedStream<K, T> {
    /// Keeps window state this long after the window fired; records arriving in that time
    /// update and re-fire the window (event time only).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = lateness;
        self
    }

    /// Sends records that arrive after their window's state is gone to the side output
    /// `tag` (read it with [`DataStream::side_output`]) instead of dropping them.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// let late = OutputTag::<(u8, i64)>::new("late");
    /// let counts = env
    ///     .source(
    ///         CollectionSource::new(vec![(1u8, 100i64), (1, 5000), (1, 200)]),
    ///         Watermarks::monotonic().with_timestamps(|e: &(u8, i64)| e.1),
    ///     )
    ///     .parallelism(1)
    ///     .key_by(|e| e.0)
    ///     .window(Tumbling::event_time(Duration::from_secs(1)))
    ///     .side_output_late_data(&late)
    ///     .aggregate(Count);
    /// let late_records = counts.side_output(&late).collect();
    /// let on_time = counts.collect();
    /// env.set_watermark_interval(Duration::from_millis(1));
    /// env.execute("late").unwrap();
    /// // (1, 200) is late only if the watermark passed 999 before it arrived, which the
    /// // source's batching does not promise: every record is counted or reported late.
    /// assert_eq!(on_time.values().iter().sum::<u64>() + late_records.values().len() as u64, 3);
    /// ```
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late_tag = Some(tag.name().to_string());
        self
    }

    fn apply<W>(self, name: &str, function: impl Fn() -> W + Send + Sync + 'static) -> DataStream<W::Out>
    where
        W: WindowFunction<K, T>,
        W::Out: Data,
    {
        let WindowSpec { assigner, time } = self.spec;
        let lateness = millis(self.lateness);
        let key_fn = self.keyed.key_fn.clone();
        let input = &self.keyed.stream;
        match self.late_tag {
            None => {
                let results = input.then_op(name, move || {
                    WindowOperator::<K, T, W, DropLate>::new(key_fn.clone(), assigner, time, lateness, function())
                });
                if time == WindowTime::EventTime {
                    results.requires_timestamps();
                }
                results
            }
            Some(tag) => {
                let both: DataStream<WindowOutput<W::Out, T>> = input.then_op(name, move || {
                    WindowOperator::<K, T, W, LateToSideOutput>::new(
                        key_fn.clone(),
                        assigner,
                        time,
                        lateness,
                        function(),
                    )
                });
                if time == WindowTime::EventTime {
                    both.requires_timestamps();
                }
                let results = both.filter_map(|o| match o {
                    WindowOutput::Result(r) => Some(r),
                    WindowOutput::Late(_) => None,
                });
                let late = both.filter_map(|o| match o {
                    WindowOutput::Late(l) => Some(l),
                    WindowOutput::Result(_) => None,
                });
                let owner = both.nodes[0];
                let mut main = results.clone();
                main.nodes = vec![owner, results.nodes[0], late.nodes[0]];
                input.env.state.borrow_mut().side_outputs.insert((owner.0, tag), Box::new(late));
                main
            }
        }
    }

    /// Reduces each window's values incrementally with `f`.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// let max = env
    ///     .source(CollectionSource::new(vec![(0u8, 3i64), (0, 9), (0, 4)]), Watermarks::monotonic().with_timestamps(|_: &(u8, i64)| 0))
    ///     .key_by(|e| e.0)
    ///     .window(Sliding::event_time(Duration::from_secs(2), Duration::from_secs(1)))
    ///     .reduce(|a, b| if a.1 >= b.1 { a } else { b })
    ///     .collect();
    /// env.execute("max").unwrap();
    /// assert_eq!(max.values(), vec![(0, 9), (0, 9)]); // time 0 is in two sliding windows
    /// ```
    pub fn reduce(self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DataStream<T> {
        let f = Arc::new(f);
        self.apply("window-reduce", move || ReduceWindow(f.clone()))
    }

    /// Aggregates each window's values incrementally.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// let counts = env
    ///     .source(CollectionSource::new(vec![('a', 10i64), ('a', 20), ('b', 30)]), Watermarks::monotonic().with_timestamps(|e: &(char, i64)| e.1))
    ///     .key_by(|e| e.0)
    ///     .window(Tumbling::event_time(Duration::from_secs(1)))
    ///     .aggregate(Count)
    ///     .collect();
    /// env.execute("count").unwrap();
    /// let mut values = counts.values();
    /// values.sort();
    /// assert_eq!(values, vec![1, 2]);
    /// ```
    pub fn aggregate<A: AggregateFunction<T>>(self, aggregate: A) -> DataStream<A::Out> {
        self.aggregate_with(aggregate, |_key: &K, _window: &TimeWindow, result| result)
    }

    /// Aggregates each window's values incrementally, then turns each result, with its key
    /// and window, into the output with `finish`.
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// let counts = env
    ///     .source(CollectionSource::new(vec![('a', 10i64), ('a', 1020)]), Watermarks::monotonic().with_timestamps(|e: &(char, i64)| e.1))
    ///     .parallelism(1)
    ///     .key_by(|e| e.0.to_string())
    ///     .window(Tumbling::event_time(Duration::from_secs(1)))
    ///     .aggregate_with(Count, |key, window, n| (key.clone(), window.start, n))
    ///     .collect();
    /// env.execute("count").unwrap();
    /// assert_eq!(counts.values(), vec![("a".to_string(), 0, 1), ("a".to_string(), 1000, 1)]);
    /// ```
    pub fn aggregate_with<A: AggregateFunction<T>, O: Data>(
        self,
        aggregate: A,
        finish: impl Fn(&K, &TimeWindow, A::Out) -> O + Send + Sync + 'static,
    ) -> DataStream<O> {
        let finish = Arc::new(finish);
        self.apply("window-aggregate", move || AggregateWindow { aggregate: aggregate.clone(), finish: finish.clone() })
    }

    /// Calls `f` with all of a window's values when it fires (buffers them until then).
    ///
    /// ```
    /// # use sluice::prelude::*;
    /// # use std::time::Duration;
    /// let env = StreamEnv::new();
    /// let sessions = env
    ///     .source(CollectionSource::new(vec![(1u8, 0i64), (1, 400), (1, 5000)]), Watermarks::monotonic().with_timestamps(|e: &(u8, i64)| e.1))
    ///     .parallelism(1)
    ///     .key_by(|e| e.0)
    ///     .window(Session::event_time(Duration::from_secs(1)))
    ///     .process(|key, window, events| vec![(*key, window.start, window.end, events.len())])
    ///     .collect();
    /// env.execute("sessions").unwrap();
    /// assert_eq!(sessions.values(), vec![(1, 0, 1400, 2), (1, 5000, 6000, 1)]);
    /// ```
    pub fn process<O: Data, I: IntoIterator<Item = O> + 'static>(
        self,
        f: impl Fn(&K, &TimeWindow, &[T]) -> I + Send + Sync + 'static,
    ) -> DataStream<O> {
        let f = Arc::new(f);
        self.apply("window-process", move || ProcessWindow(f.clone()))
    }
}
