//! Sources: the reader trait connectors implement, watermark strategies, and the loop that
//! drives one source subtask (timestamps, periodic watermarks, idleness, end of input).

use crate::error::{TaskError, TaskResult};
use crate::message::Ending;
use crate::operator::{guard_panic, now_millis, Input, SubtaskInfo};
use crate::snapshot::{Barrier, BarrierStates, OperatorState, SubtaskState};
use sluice_types::{Record, Timestamp, MAX_TIMESTAMP, MAX_WATERMARK, MIN_TIMESTAMP, MIN_WATERMARK, NO_TIMESTAMP};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a poll of a source reader produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records were appended (possibly none, if the reader wants to be polled again at once).
    Ready,
    /// Nothing available now; poll again after at most this long.
    Pending(Duration),
    /// The reader has no more records, ever (a bounded source has ended). Records it
    /// appended in the same poll are still emitted.
    Finished,
}

/// A splittable, possibly unbounded source of records.
pub trait Source<T>: Send + Sync + 'static {
    /// A short name for errors and logs.
    fn name(&self) -> String;
    /// The largest parallelism this source supports (a socket source supports one).
    fn max_parallelism(&self) -> Option<usize> {
        None
    }
    /// Whether its records carry timestamps of their own (a Kafka record's), so that event
    /// time works without a timestamp assigner. A source that knows its records have none
    /// says `false`, and an event-time window behind it without an assigner is refused
    /// when the graph is built rather than when the first record arrives.
    fn has_timestamps(&self) -> bool {
        true
    }
    /// Checks what can be checked before the job starts (an input that exists, settings
    /// in range); the message says what to change.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// The reader of subtask `index` of `parallelism`: it reads its share of the input.
    fn create_reader(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SourceReader<T>>>;
    /// Redistributes the positions that the old subtasks checkpointed (in subtask order,
    /// from [`SourceReader::position`]) over `parallelism` new subtasks, for a restore at
    /// another parallelism: one position per new subtask, which its reader is then
    /// [`SourceReader::seek`]ed to. Together the new positions must cover exactly what the
    /// old ones had left to read: nothing twice, nothing dropped. The default refuses, with
    /// a message that says what to do instead.
    fn rescale(&self, old: Vec<Vec<u8>>, parallelism: usize) -> Result<Vec<Vec<u8>>, String> {
        let _ = parallelism;
        Err(format!("the {} source cannot be rescaled; run it at parallelism {} (its old one)", self.name(), old.len()))
    }
}

/// Reads one subtask's share of a source.
pub trait SourceReader<T>: Send {
    /// Appends up to `max` records to `out`. Records carry their native timestamp or
    /// [`NO_TIMESTAMP`]; a watermark strategy's timestamp assigner overrides it.
    fn poll(&mut self, out: &mut Vec<Record<T>>, max: usize) -> io::Result<Poll>;
    /// Where the reader stands, to resume from after a failure; `None` if the source cannot
    /// replay (then it gives no guarantee across failures).
    fn position(&self) -> Option<Vec<u8>> {
        None
    }
    /// Moves to a position that [`SourceReader::position`] returned.
    fn seek(&mut self, _position: &[u8]) -> io::Result<()> {
        Ok(())
    }
    /// For a reader of several splits whose timestamps advance independently (the
    /// partitions of a Kafka topic): called after every poll, it appends how the records of
    /// that poll divide into runs of one split each, in order, and the splits assigned or
    /// ended since the last call, and returns `true`. The runner then keeps a watermark per
    /// split and emits their minimum, leaving out splits idle for longer than the idleness
    /// timeout and splits that ended. The default (`false`) treats the reader as one split.
    fn split_info(&mut self, _runs: &mut Vec<SplitRun>, _events: &mut Vec<SplitEvent>) -> bool {
        false
    }
}

/// Consecutive records of one poll that came from the same split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitRun {
    /// The split, numbered by the reader.
    pub split: u32,
    /// How many records in a row came from it.
    pub len: usize,
}

/// A change in the splits a reader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitEvent {
    /// The reader started reading this split: it holds the watermark back until it has
    /// records or turns idle.
    Added(u32),
    /// This split has no more records (a bounded read reached its end).
    Ended(u32),
}

/// Per-split watermark generators of a reader that reports splits.
struct SplitWatermarks {
    kind: WatermarkKind,
    splits: HashMap<u32, (WatermarkGenerator, Instant)>,
    runs: Vec<SplitRun>,
    events: Vec<SplitEvent>,
}

impl SplitWatermarks {
    fn apply_events(&mut self, now: Instant) {
        for event in self.events.drain(..) {
            match event {
                SplitEvent::Added(split) => {
                    self.splits.entry(split).or_insert((WatermarkGenerator::new(self.kind), now));
                }
                SplitEvent::Ended(split) => {
                    self.splits.remove(&split);
                }
            }
        }
    }

    fn observe<T>(&mut self, batch: &[Record<T>], now: Instant) {
        let mut start = 0;
        for run in self.runs.drain(..) {
            let entry = self.splits.entry(run.split).or_insert((WatermarkGenerator::new(self.kind), now));
            entry.1 = now;
            for record in &batch[start..(start + run.len).min(batch.len())] {
                entry.0.observe(record.time);
            }
            start += run.len;
        }
    }

    /// The minimum over splits that had records within `idleness` (all splits without a
    /// timeout); `None` when every split is idle or none is assigned.
    fn current(&self, now: Instant, idleness: Option<Duration>) -> Option<Timestamp> {
        self.splits
            .values()
            .filter(|(_, last)| idleness.is_none_or(|timeout| now.duration_since(*last) < timeout))
            .map(|(generator, _)| generator.current())
            .min()
    }
}

/// How the watermark follows the timestamps a source subtask has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatermarkKind {
    /// No watermarks (processing-time jobs); the final watermark still ends a bounded job.
    None,
    /// Timestamps never decrease: watermark = largest timestamp seen - 1 ms.
    Monotonic,
    /// Records are at most this late: watermark = largest timestamp - bound - 1 ms.
    Bounded(Duration),
}

/// Reads a record's event time.
pub type TimestampFn<T> = Arc<dyn Fn(&T) -> Timestamp + Send + Sync>;

/// A source's watermark strategy: how timestamps are read, how watermarks follow them,
/// and after how long without records a subtask counts as idle.
///
/// ```
/// use sluice_dataflow::Watermarks;
/// use std::time::Duration;
/// let strategy = Watermarks::bounded(Duration::from_secs(2))
///     .with_timestamps(|event: &(u64, i64)| event.1)
///     .with_idleness(Duration::from_secs(5));
/// # let _ = strategy;
/// ```
pub struct WatermarkStrategy<T> {
    /// How the watermark follows the timestamps.
    pub kind: WatermarkKind,
    /// Reads a record's event time; `None` keeps the source's native timestamps.
    pub timestamps: Option<TimestampFn<T>>,
    /// After this long without records the subtask is marked idle.
    pub idleness: Option<Duration>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy { kind: self.kind, timestamps: self.timestamps.clone(), idleness: self.idleness }
    }
}

/// Constructors of watermark strategies.
pub struct Watermarks;

impl Watermarks {
    /// No event time.
    pub fn none<T>() -> WatermarkStrategy<T> {
        WatermarkStrategy { kind: WatermarkKind::None, timestamps: None, idleness: None }
    }
    /// Timestamps increase monotonically per source subtask.
    pub fn monotonic<T>() -> WatermarkStrategy<T> {
        WatermarkStrategy { kind: WatermarkKind::Monotonic, timestamps: None, idleness: None }
    }
    /// Records arrive at most `bound` out of order.
    pub fn bounded<T>(bound: Duration) -> WatermarkStrategy<T> {
        WatermarkStrategy { kind: WatermarkKind::Bounded(bound), timestamps: None, idleness: None }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Reads each record's event time (milliseconds) with `f`.
    pub fn with_timestamps(mut self, f: impl Fn(&T) -> Timestamp + Send + Sync + 'static) -> Self {
        self.timestamps = Some(Arc::new(f));
        self
    }
    /// Marks a subtask idle after `timeout` without records, so it does not hold back
    /// the watermark downstream.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }
}

/// Tracks the largest timestamp seen and derives the watermark from it.
#[derive(Clone, Copy, Debug)]
pub struct WatermarkGenerator {
    kind: WatermarkKind,
    max_timestamp: Timestamp,
}

impl WatermarkGenerator {
    /// A generator following `kind`.
    pub fn new(kind: WatermarkKind) -> Self {
        WatermarkGenerator { kind, max_timestamp: MIN_WATERMARK }
    }
    /// Records a timestamp.
    #[inline]
    pub fn observe(&mut self, timestamp: Timestamp) {
        if timestamp > self.max_timestamp && timestamp != NO_TIMESTAMP {
            self.max_timestamp = timestamp;
        }
    }
    /// The current watermark.
    pub fn current(&self) -> Timestamp {
        if self.max_timestamp == MIN_WATERMARK {
            return MIN_WATERMARK;
        }
        match self.kind {
            WatermarkKind::None => MIN_WATERMARK,
            WatermarkKind::Monotonic => self.max_timestamp.saturating_sub(1),
            WatermarkKind::Bounded(bound) => {
                let bound = Timestamp::try_from(bound.as_millis()).unwrap_or(Timestamp::MAX);
                self.max_timestamp.saturating_sub(bound).saturating_sub(1)
            }
        }
    }
}

/// What a task tells the checkpoint coordinator.
#[derive(Debug)]
pub struct TaskReport {
    /// The task's index in the job.
    pub task: usize,
    /// The barrier the task has passed (`Some`), or `None`: the task has finished.
    pub checkpoint: Option<u64>,
    /// The state of the task's operators at that point.
    pub states: Vec<SubtaskState>,
}

/// What the runtime does with a task error found off the task's thread (it fails the
/// attempt as the task's own error would).
pub type FailureHandler = Arc<dyn Fn(TaskError) + Send + Sync>;

/// A task's link to the checkpoint coordinator.
pub struct TaskControl {
    /// The task's index in the job.
    pub task: usize,
    /// Barriers to inject (source tasks only).
    pub barriers: Option<Receiver<Barrier>>,
    /// Where reports go.
    pub reports: Sender<TaskReport>,
    /// The thread encoding the copies of the last report, if it had any; the next report
    /// waits for it, so that the coordinator gets a task's reports in order.
    encoding: Mutex<Option<JoinHandle<TaskResult>>>,
    /// Where an encoding that fails goes (without one, the task's next report returns it).
    on_failure: Option<FailureHandler>,
}

impl TaskControl {
    /// The link of task `task`.
    pub fn new(task: usize, barriers: Option<Receiver<Barrier>>, reports: Sender<TaskReport>) -> Self {
        TaskControl { task, barriers, reports, encoding: Mutex::new(None), on_failure: None }
    }

    /// Sends a failure to encode a copied state to `handler` as soon as it happens, rather
    /// than leaving it for the task's next report (which a checkpoint that never completes
    /// may hold off for a long time).
    pub fn on_failure(&mut self, handler: FailureHandler) {
        self.on_failure = Some(handler);
    }

    /// Reports a passed barrier (or the end, with `checkpoint` `None`) and the states. States
    /// copied at the barrier are encoded on a thread of their own, and the report sent from
    /// there, while the task goes on; a report first waits for the encoding of the one
    /// before it. The error is that earlier encoding's failure.
    pub fn report(&self, checkpoint: Option<u64>, states: BarrierStates) -> TaskResult {
        let mut encoding = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(earlier) = encoding.take() {
            earlier.join().unwrap_or_else(|_| unreachable!("an encoding reports its panic as an error"))?;
        }
        let (task, reports) = (self.task, self.reports.clone());
        // The coordinator is gone only when the job is being torn down.
        let send = move |states| drop(reports.send(TaskReport { task, checkpoint, states }));
        if !states.has_copies() {
            send(states.encode()?);
            return Ok(());
        }
        let on_failure = self.on_failure.clone();
        let encode = move || {
            match states.encode() {
                Ok(states) => send(states),
                Err(error) => match on_failure {
                    Some(fail) => fail(error),
                    None => return Err(error),
                },
            }
            Ok(())
        };
        match std::thread::Builder::new().name(format!("sluice:encode#{task}")).spawn(encode) {
            Ok(thread) => *encoding = Some(thread),
            Err(e) => {
                return Err(TaskError::Checkpoint(format!(
                    "could not start a thread to encode the state of task {task}: {e}"
                )))
            }
        }
        Ok(())
    }
}

/// A runnable source subtask, type-erased for the runtime.
pub trait SourceTask: Send {
    /// Reads until the input ends, the job is cancelled or an error occurs, injecting the
    /// barriers `control` delivers.
    fn run(&mut self, cancelled: &AtomicBool, control: &TaskControl) -> TaskResult;
}

/// Drives one source subtask: polls its reader, assigns timestamps, emits periodic
/// watermarks and idleness, and ends with the final watermark when the input ends.
pub struct SourceRunner<T> {
    /// How many records a poll may return (fewer when records are large).
    pub(crate) limit: crate::exchange::BatchLimit<T>,
    /// The subtask's reader.
    pub reader: Box<dyn SourceReader<T>>,
    /// Timestamps, watermarks and idleness.
    pub strategy: WatermarkStrategy<T>,
    /// The first stage of the chain.
    pub output: Box<dyn Input<T>>,
    /// Where this subtask stands.
    pub info: SubtaskInfo,
    /// How often watermarks are emitted (Flink's auto-watermark interval).
    pub watermark_interval: Duration,
    /// How often processing time advances for the chained operators.
    pub tick: Duration,
}

impl<T: Send + 'static> SourceRunner<T> {
    fn position(&self) -> BarrierStates {
        let mut states = BarrierStates::new();
        if let Some(p) = self.reader.position() {
            states.push(SubtaskState {
                operator: self.info.state_id.to_string(),
                subtask: self.info.index,
                state: OperatorState::Plain(p),
            });
        }
        states
    }

    /// Passes a checkpoint barrier down the chain with the reader's position (rare next to
    /// batches, so kept out of the read loop).
    #[cold]
    #[inline(never)]
    fn inject(&mut self, barrier: Barrier, control: &TaskControl) -> TaskResult {
        let mut states = self.position();
        self.output.barrier(barrier, &mut states)?;
        control.report(Some(barrier.id), states)
    }

    /// Ends the stream and reports the final state.
    fn finish(&mut self, ending: Ending, control: &TaskControl) -> TaskResult {
        let mut states = self.position();
        self.output.end(ending, &mut states)?;
        control.report(None, states)
    }
}

impl<T: Send + 'static> SourceTask for SourceRunner<T> {
    fn run(&mut self, cancelled: &AtomicBool, control: &TaskControl) -> TaskResult {
        let mut generator = WatermarkGenerator::new(self.strategy.kind);
        let mut emitted_watermark = MIN_WATERMARK;
        let mut last_watermark = Instant::now();
        let mut last_tick = Instant::now();
        let mut last_record = Instant::now();
        let mut idle = false;

        if self.strategy.kind != WatermarkKind::None {
            crate::progress::emits_watermarks();
        }
        let mut split_marks =
            SplitWatermarks { kind: self.strategy.kind, splits: HashMap::new(), runs: Vec::new(), events: Vec::new() };
        let mut per_split = false;
        loop {
            if cancelled.load(Ordering::Relaxed) {
                // Cancelled: end the stream without the final watermark, so that no window
                // fires for input that was never read.
                self.output.flush()?;
                return self.finish(Ending::Stopped, control);
            }
            if let Some(barrier) = control.barriers.as_ref().and_then(|b| b.try_recv().ok()) {
                self.inject(barrier, control)?;
            }
            // Everything up to the wait below is this source's work, for the stall detector.
            let work = crate::progress::busy();
            let batch_size = self.limit.records();
            let mut batch = Vec::with_capacity(batch_size);
            // The reader is the user's (or a connector's) code: a panic in it fails the
            // job like a panic in any operator, naming the source and subtask.
            let reader = &mut self.reader;
            let poll =
                guard_panic(&self.info, || reader.poll(&mut batch, batch_size))?.map_err(|source| TaskError::Io {
                    operator: self.info.operator.to_string(),
                    subtask: self.info.index,
                    what: "reading the source".into(),
                    source,
                })?;
            // Records appended by the poll that reported the end still go out first.
            let (poll, end_after) = match poll {
                Poll::Finished if !batch.is_empty() => (Poll::Ready, true),
                poll => (poll, false),
            };
            let now = Instant::now();
            let reader = &mut self.reader;
            if guard_panic(&self.info, || reader.split_info(&mut split_marks.runs, &mut split_marks.events))? {
                per_split = true;
                split_marks.apply_events(now);
            }
            crate::progress::source_read(batch.len());
            match poll {
                Poll::Ready => {
                    self.limit.observe(&batch);
                    if !batch.is_empty() {
                        if let Some(assign) = &self.strategy.timestamps {
                            let out_of_range = guard_panic(&self.info, || {
                                let mut out_of_range = None;
                                for record in batch.iter_mut() {
                                    record.time = assign(&record.value);
                                    if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&record.time) {
                                        out_of_range = Some(record.time);
                                    }
                                }
                                out_of_range
                            })?;
                            if let Some(time) = out_of_range {
                                // The same record gets the same timestamp after a restart.
                                return Err(TaskError::Unrecoverable {
                                    operator: self.info.operator.to_string(),
                                    subtask: self.info.index,
                                    message: format!(
                                        "the timestamp assigner returned {time}, outside the valid event time \
                                         {MIN_TIMESTAMP}..={MAX_TIMESTAMP} (i64::MIN marks \"no timestamp\" and \
                                         i64::MAX the end of input); clamp or fix the timestamps"
                                    ),
                                });
                            }
                        }
                        if self.strategy.kind != WatermarkKind::None {
                            if per_split {
                                split_marks.observe(&batch, now);
                            } else {
                                for record in &batch {
                                    generator.observe(record.time);
                                }
                            }
                        }
                        if idle {
                            idle = false;
                            self.output.idle(false)?;
                        }
                        last_record = now;
                        self.output.batch(batch)?;
                    }
                }
                Poll::Pending(wait) => {
                    self.output.flush()?;
                    if let Some(timeout) = self.strategy.idleness {
                        if !idle && now.duration_since(last_record) >= timeout {
                            idle = true;
                            self.output.idle(true)?;
                        }
                    }
                    drop(work);
                    std::thread::sleep(wait.min(self.tick));
                }
                Poll::Finished => {
                    self.output.flush()?;
                    self.output.watermark(MAX_WATERMARK)?;
                    return self.finish(Ending::Finished, control);
                }
            }
            split_marks.runs.clear();
            if end_after {
                self.output.flush()?;
                self.output.watermark(MAX_WATERMARK)?;
                return self.finish(Ending::Finished, control);
            }
            if self.watermark_interval.is_zero() || now.duration_since(last_watermark) >= self.watermark_interval {
                last_watermark = now;
                let watermark = if per_split {
                    split_marks.current(now, self.strategy.idleness).unwrap_or(MIN_WATERMARK)
                } else {
                    generator.current()
                };
                if watermark > emitted_watermark {
                    emitted_watermark = watermark;
                    crate::progress::watermark_advanced();
                    self.output.watermark(watermark)?;
                }
            }
            if now.duration_since(last_tick) >= self.tick {
                last_tick = now;
                self.output.processing_time(now_millis())?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_follow_the_largest_timestamp() {
        let mut g = WatermarkGenerator::new(WatermarkKind::Bounded(Duration::from_millis(100)));
        assert_eq!(g.current(), MIN_WATERMARK);
        g.observe(1000);
        g.observe(500);
        assert_eq!(g.current(), 899);
        let mut m = WatermarkGenerator::new(WatermarkKind::Monotonic);
        m.observe(7);
        assert_eq!(m.current(), 6);
    }

    fn records(times: &[Timestamp]) -> Vec<Record<()>> {
        times.iter().map(|t| Record { time: *t, value: () }).collect()
    }

    #[test]
    fn split_watermarks_are_the_minimum_over_active_splits() {
        let mut marks = SplitWatermarks {
            kind: WatermarkKind::Monotonic,
            splits: HashMap::new(),
            runs: Vec::new(),
            events: vec![SplitEvent::Added(0), SplitEvent::Added(1)],
        };
        let start = Instant::now();
        marks.apply_events(start);
        assert_eq!(marks.current(start, None), Some(MIN_WATERMARK), "a split without records holds back");
        marks.runs = vec![SplitRun { split: 0, len: 2 }, SplitRun { split: 1, len: 1 }];
        marks.observe(&records(&[100, 200, 50]), start);
        assert_eq!(marks.current(start, None), Some(49));
        // Split 1 has no records for longer than the idleness timeout: it no longer counts.
        let later = start + Duration::from_secs(2);
        marks.runs = vec![SplitRun { split: 0, len: 1 }];
        marks.observe(&records(&[300]), later);
        assert_eq!(marks.current(later, None), Some(49));
        assert_eq!(marks.current(later, Some(Duration::from_secs(1))), Some(299));
        // An ended split no longer counts either; with every split idle there is no watermark.
        marks.events = vec![SplitEvent::Ended(0)];
        marks.apply_events(later);
        assert_eq!(marks.current(later, None), Some(49));
        assert_eq!(marks.current(later + Duration::from_secs(5), Some(Duration::from_secs(1))), None);
    }
}
