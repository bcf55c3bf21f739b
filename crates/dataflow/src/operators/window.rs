//! Windows on keyed streams: tumbling, sliding and session windows in event time or
//! processing time, with incremental reduce/aggregate or a function over all elements,
//! allowed lateness and late records to a side output.
//!
//! Tumbling and sliding windows fire for every key at once when time passes their end, so
//! their state is grouped by window first (`window -> key -> accumulator`): firing walks
//! the windows in time order and needs no timer per key. Session windows are per key and
//! merge, so they keep per-key sessions and a per-key timer queue.
//!
//! Sliding windows whose size is a multiple of their slide share **panes** (when the
//! function is incremental, a reduce or an aggregate): a record is added once, to the
//! slide-long pane it falls in, not copied into each of the `size / slide` windows that
//! hold it; a window, when it fires, merges the accumulators of its panes. That is one
//! `add` per record instead of one per window, and one accumulator per key and pane.

use crate::operator::{now_millis, Operator, Output};
use crate::operators::keyed::{AggregateFunction, KeyFn};
use crate::snapshot::{decode_or_fail, encode_into, BarrierSnapshot, OperatorState, Restored};
use serde::{Deserialize, Serialize};
use sluice_state::TimerQueue;
use sluice_types::{key_group_of, Data, FastMap, Key, Record, TimeWindow, Timestamp, MIN_WATERMARK, NO_TIMESTAMP};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// Which clock assigns records to windows and fires them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowTime {
    /// The record's timestamp; windows fire on the watermark.
    EventTime,
    /// The wall clock when the record arrives; windows fire on the wall clock.
    ProcessingTime,
}

/// How records are assigned to windows (all lengths in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed, non-overlapping windows of `size`, aligned to `offset`.
    Tumbling {
        /// Window length.
        size: i64,
        /// Alignment offset.
        offset: i64,
    },
    /// Windows of `size` starting every `slide`.
    Sliding {
        /// Window length.
        size: i64,
        /// Distance between window starts.
        slide: i64,
        /// Alignment offset.
        offset: i64,
    },
    /// Per-key windows that close after `gap` without records, merging as records arrive.
    Session {
        /// Inactivity gap.
        gap: i64,
    },
}

impl WindowAssigner {
    /// Appends the windows `timestamp` belongs to.
    #[inline]
    pub fn assign(&self, timestamp: Timestamp, out: &mut Vec<TimeWindow>) {
        match *self {
            WindowAssigner::Tumbling { size, offset } => {
                let start = window_start(timestamp, offset, size);
                out.push(TimeWindow::new(start, start.saturating_add(size)));
            }
            WindowAssigner::Sliding { size, slide, offset } => {
                let mut start = window_start(timestamp, offset, slide);
                // `timestamp - size` may lie below i64::MIN: saturated, every start is above
                // it, and the loop ends when the next start would be below i64::MIN.
                while start > timestamp.saturating_sub(size) {
                    out.push(TimeWindow::new(start, start.saturating_add(size)));
                    match start.checked_sub(slide) {
                        Some(next) => start = next,
                        None => break,
                    }
                }
            }
            WindowAssigner::Session { gap } => out.push(TimeWindow::new(timestamp, timestamp.saturating_add(gap))),
        }
    }

    /// Whether windows merge (session windows).
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }
}

/// The start of the aligned window of length `size` (shifted by `offset`) holding
/// `timestamp`, computed without overflow: near `i64::MIN` it is clamped there.
#[inline]
fn window_start(timestamp: Timestamp, offset: i64, size: i64) -> Timestamp {
    match timestamp.checked_sub(offset) {
        // The start is at most `size - 1` below the timestamp: only near i64::MIN can it
        // fall below, and then it is clamped there.
        Some(shifted) => timestamp.checked_sub(shifted.rem_euclid(size)).unwrap_or(Timestamp::MIN),
        // An offset that overflows the subtraction (rare): the same in i128, which is
        // slow (a software division) and so kept off the common path.
        None => {
            let (t, offset, size) = (timestamp as i128, offset as i128, size as i128);
            (t - (t - offset).rem_euclid(size)).max(i64::MIN as i128) as Timestamp
        }
    }
}

/// What a window computes: an accumulator per key and window, and what it emits.
pub trait WindowFunction<K, T>: Send + 'static {
    /// Per key and window state.
    type Acc: Data;
    /// What the window emits.
    type Out: Send + 'static;
    /// A new accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds a record's value.
    fn add(&self, acc: &mut Self::Acc, value: T);
    /// Merges two accumulators (when session windows merge); `a` is the older.
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    /// Emits the results of a window for a key.
    fn emit(&self, key: &K, window: &TimeWindow, acc: &Self::Acc, out: &mut dyn FnMut(Self::Out));
    /// Whether sliding windows may keep this function's accumulators per pane and merge
    /// them when a window fires (true for incremental functions: merging is cheap and
    /// exact). A function over all elements keeps each window's elements in arrival order.
    fn shares_panes(&self) -> bool {
        true
    }
}

/// Incremental reduce: keeps one value per key and window.
pub struct ReduceWindow<F>(pub Arc<F>);

impl<K, T: Data, F: Fn(T, T) -> T + Send + Sync + 'static> WindowFunction<K, T> for ReduceWindow<F> {
    type Acc = Option<T>;
    type Out = T;
    fn create(&self) -> Option<T> {
        None
    }
    fn add(&self, acc: &mut Option<T>, value: T) {
        *acc = Some(match acc.take() {
            Some(previous) => (self.0)(previous, value),
            None => value,
        });
    }
    fn merge(&self, a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some((self.0)(a, b)),
            (a, b) => a.or(b),
        }
    }
    fn emit(&self, _key: &K, _window: &TimeWindow, acc: &Option<T>, out: &mut dyn FnMut(T)) {
        if let Some(value) = acc {
            out(value.clone());
        }
    }
}

/// Incremental aggregate, its result passed with key and window through `finish`.
pub struct AggregateWindow<A, P> {
    /// The aggregate function.
    pub aggregate: A,
    /// Turns (key, window, result) into the emitted value.
    pub finish: Arc<P>,
}

impl<K, T, A, P, O> WindowFunction<K, T> for AggregateWindow<A, P>
where
    A: AggregateFunction<T>,
    P: Fn(&K, &TimeWindow, A::Out) -> O + Send + Sync + 'static,
    O: Send + 'static,
{
    type Acc = A::Acc;
    type Out = O;
    fn create(&self) -> A::Acc {
        self.aggregate.create_accumulator()
    }
    fn add(&self, acc: &mut A::Acc, value: T) {
        self.aggregate.add(acc, value)
    }
    fn merge(&self, a: A::Acc, b: A::Acc) -> A::Acc {
        self.aggregate.merge(a, b)
    }
    fn emit(&self, key: &K, window: &TimeWindow, acc: &A::Acc, out: &mut dyn FnMut(O)) {
        out((self.finish)(key, window, self.aggregate.get_result(acc)))
    }
}

/// A function over all of a window's elements (buffers them until the window fires).
pub struct ProcessWindow<F>(pub Arc<F>);

impl<K, T, F, I> WindowFunction<K, T> for ProcessWindow<F>
where
    T: Data,
    F: Fn(&K, &TimeWindow, &[T]) -> I + Send + Sync + 'static,
    I: IntoIterator,
    I::Item: Send + 'static,
{
    type Acc = Vec<T>;
    type Out = I::Item;
    fn create(&self) -> Vec<T> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<T>, value: T) {
        acc.push(value)
    }
    fn merge(&self, mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
        a.extend(b);
        a
    }
    fn emit(&self, key: &K, window: &TimeWindow, acc: &Vec<T>, out: &mut dyn FnMut(I::Item)) {
        for value in (self.0)(key, window, acc) {
            out(value)
        }
    }
    fn shares_panes(&self) -> bool {
        false
    }
}

/// The output of a window operator whose late records go to a side output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowOutput<O, T> {
    /// A window result.
    Result(O),
    /// A record that arrived after its windows were cleaned up.
    Late(T),
}

/// What a window operator does with late records.
pub trait LatePolicy<T, O>: Send + 'static {
    /// The operator's output type.
    type Out: Send + 'static;
    /// Wraps a window result.
    fn result(value: O) -> Self::Out;
    /// Wraps a late record, or drops it (`None`).
    fn late(value: T) -> Option<Self::Out>;
}

/// Late records are dropped (and counted).
pub struct DropLate;

impl<T, O: Send + 'static> LatePolicy<T, O> for DropLate {
    type Out = O;
    fn result(value: O) -> O {
        value
    }
    fn late(_value: T) -> Option<O> {
        None
    }
}

/// Late records are emitted as [`WindowOutput::Late`].
pub struct LateToSideOutput;

impl<T: Send + 'static, O: Send + 'static> LatePolicy<T, O> for LateToSideOutput {
    type Out = WindowOutput<O, T>;
    fn result(value: O) -> Self::Out {
        WindowOutput::Result(value)
    }
    fn late(value: T) -> Option<Self::Out> {
        Some(WindowOutput::Late(value))
    }
}

/// One key group of a window operator's snapshot.
#[derive(Serialize, Deserialize)]
struct WindowChunk<K, A> {
    aligned: Vec<(TimeWindow, bool, Vec<(K, A)>)>,
    sessions: Vec<(K, Vec<(TimeWindow, A, bool)>)>,
}

#[derive(Clone)]
struct Bucket<K, A> {
    accumulators: FastMap<K, A>,
    fired: bool,
}

#[derive(Clone)]
struct Session<A> {
    window: TimeWindow,
    acc: A,
    fired: bool,
}

/// Encodes a window operator's state as one `WindowChunk` per key group, writing each
/// straight into a buffer of its own, window by window (postcard's pieces concatenate into
/// the struct they make up): no vector of references per window and group, no chunk struct
/// to build, then encode, then drop, and no copy of a chunk's body to put its window count in
/// front. `windows` is the fired flag of every window, with panes. `sizes` holds each
/// group's chunk size of the last snapshot, the next one's starting capacity (window state
/// changes little from one checkpoint to the next), and is updated.
fn encode_windows<K: Key, A: Data>(
    aligned: &BTreeMap<TimeWindow, Bucket<K, A>>,
    windows: Option<&BTreeMap<TimeWindow, bool>>,
    sessions: &FastMap<K, Vec<Session<A>>>,
    sizes: &Mutex<FastMap<u32, usize>>,
    max_parallelism: usize,
) -> OperatorState {
    let mut sizes = sizes.lock().unwrap_or_else(|e| e.into_inner());
    // Pass 1: the key group of every entry, in the order pass 2 visits them; per window, the
    // groups it has entries in with how many (first-touch order); per group, how many
    // windows. A group's chunk starts with its window count and each window's part with
    // its entry count: knowing them first lets pass 2 write each chunk once, into a buffer
    // sized from the last snapshot, and each entry where it goes as it is met.
    let mut groups_in_order: Vec<u32> = Vec::with_capacity(aligned.values().map(|b| b.accumulators.len()).sum());
    let mut parts: Vec<(u32, usize)> = Vec::new();
    let mut parts_end: Vec<usize> = Vec::with_capacity(aligned.len());
    let mut windows_per_group: Vec<usize> = vec![0; max_parallelism];
    let mut in_window: Vec<usize> = vec![0; max_parallelism];
    let mut touched: Vec<u32> = Vec::new();
    for bucket in aligned.values() {
        for key in bucket.accumulators.keys() {
            let group = key_group_of(key, max_parallelism).0;
            groups_in_order.push(group);
            if in_window[group as usize] == 0 {
                touched.push(group);
            }
            in_window[group as usize] += 1;
        }
        for group in touched.drain(..) {
            parts.push((group, std::mem::take(&mut in_window[group as usize])));
            windows_per_group[group as usize] += 1;
        }
        parts_end.push(parts.len());
    }
    let fired_flags = windows.map_or(0, |w| w.len());
    let mut bodies: Vec<Vec<u8>> = (0..max_parallelism).map(|_| Vec::new()).collect();
    for (group, count) in windows_per_group.iter().enumerate().filter(|(_, w)| **w > 0) {
        let body = &mut bodies[group];
        body.reserve_exact(sizes.get(&(group as u32)).map_or(0, |s| s + s / 8));
        encode_into(&(count + fired_flags), body);
    }
    // Pass 2: for each window, its part's head (window, fired flag, entry count) in each
    // group it has entries in, then the entries in the map's own order, each appended to
    // its group's chunk: the map is read front to back (the state is far larger than the
    // caches, and reading it in group order stalled on a miss per entry). Byte for byte
    // the chunk postcard writes for `(window, fired, [(key, acc)..])` per part.
    let mut groups = groups_in_order.iter();
    let mut part = 0;
    for ((window, bucket), end) in aligned.iter().zip(parts_end) {
        for &(group, entries) in &parts[part..end] {
            let body = &mut bodies[group as usize];
            encode_into(&(window, bucket.fired), body);
            encode_into(&entries, body);
        }
        part = end;
        for entry in &bucket.accumulators {
            let group = *groups.next().expect("pass 2 visits the entries of pass 1") as usize;
            encode_into(&entry, &mut bodies[group]);
        }
    }
    if let Some(windows) = windows {
        // The windows' fired flags go with every key group that has panes: whichever
        // subtask restores a group knows which of its windows have fired.
        let none: &[(&K, &A)] = &[];
        for (body, _) in bodies.iter_mut().zip(&windows_per_group).filter(|(_, w)| **w > 0) {
            for (window, fired) in windows {
                encode_into(&(window, *fired, none), body);
            }
        }
    }
    type SessionsRef<'a, K, A> = Vec<(&'a K, Vec<(TimeWindow, &'a A, bool)>)>;
    let mut sessions_by_group: BTreeMap<u32, SessionsRef<'_, K, A>> = BTreeMap::new();
    for (key, list) in sessions {
        let list = list.iter().map(|s| (s.window, &s.acc, s.fired)).collect();
        sessions_by_group.entry(key_group_of(key, max_parallelism).0).or_default().push((key, list));
    }
    let mut chunks = BTreeMap::new();
    for (group, mut bytes) in bodies.into_iter().enumerate() {
        let group_sessions = sessions_by_group.remove(&(group as u32));
        if windows_per_group[group] == 0 && group_sessions.is_none() {
            continue;
        }
        // A WindowChunk: the aligned windows (a count, then each), then the sessions.
        if windows_per_group[group] == 0 {
            encode_into(&0usize, &mut bytes);
        }
        encode_into(&group_sessions.unwrap_or_default(), &mut bytes);
        chunks.insert(group as u32, bytes);
    }
    *sizes = chunks.iter().map(|(group, bytes)| (*group, bytes.len())).collect();
    OperatorState::Keyed(chunks)
}

/// A keyed window operator.
pub struct WindowOperator<K, T, W: WindowFunction<K, T>, L> {
    key_fn: KeyFn<T, K>,
    assigner: WindowAssigner,
    time: WindowTime,
    lateness: i64,
    function: W,
    aligned: BTreeMap<TimeWindow, Bucket<K, W::Acc>>,
    sessions: FastMap<K, Vec<Session<W::Acc>>>,
    session_timers: TimerQueue<K>,
    watermark: Timestamp,
    scratch: Vec<TimeWindow>,
    late_dropped: u64,
    /// Keys in the last window that fired (the capacity new windows start with).
    typical_keys: usize,
    /// With panes (sliding windows, see the module docs): the slide. `aligned` then holds
    /// panes, and `windows` the windows that hold data, with whether each has fired.
    pane: Option<i64>,
    windows: BTreeMap<TimeWindow, bool>,
    /// With panes: the pane of the last record, if all of its windows are in `windows`,
    /// none has fired and none is late. Records come in bursts of one pane, and the next of
    /// this one needs no window looked up (forgotten whenever time advances or state is
    /// restored: then a window may have fired).
    open_pane: Option<TimeWindow>,
    /// The size of each key group's chunk in the last snapshot: the next one's buffers
    /// start that big (window state changes little from one checkpoint to the next).
    snapshot_sizes: Arc<Mutex<FastMap<u32, usize>>>,
    _late: PhantomData<fn() -> L>,
}

impl<K: Key, T: Data, W: WindowFunction<K, T>, L: LatePolicy<T, W::Out>> WindowOperator<K, T, W, L> {
    /// A window operator; `lateness` in milliseconds (event time only).
    pub fn new(key_fn: KeyFn<T, K>, assigner: WindowAssigner, time: WindowTime, lateness: i64, function: W) -> Self {
        WindowOperator {
            key_fn,
            assigner,
            time,
            lateness: if time == WindowTime::EventTime { lateness.max(0) } else { 0 },
            aligned: BTreeMap::new(),
            sessions: FastMap::default(),
            session_timers: TimerQueue::default(),
            watermark: MIN_WATERMARK,
            scratch: Vec::new(),
            late_dropped: 0,
            typical_keys: 0,
            pane: match assigner {
                WindowAssigner::Sliding { size, slide, .. }
                    if size > slide && size % slide == 0 && function.shares_panes() =>
                {
                    Some(slide)
                }
                _ => None,
            },
            function,
            windows: BTreeMap::new(),
            open_pane: None,
            snapshot_sizes: Arc::default(),
            _late: PhantomData,
        }
    }

    /// Records dropped as late (when no side output takes them).
    pub fn late_dropped(&self) -> u64 {
        self.late_dropped
    }

    fn cleanup_time(&self, window: &TimeWindow) -> Timestamp {
        window.max_timestamp().saturating_add(self.lateness)
    }

    /// Whether the window's state is gone (its cleanup time has passed) in event time.
    fn is_late(&self, window: &TimeWindow) -> bool {
        self.time == WindowTime::EventTime && self.cleanup_time(window) <= self.watermark
    }

    fn reject_late(&mut self, value: T, time: Timestamp, out: &mut Output<L::Out>) {
        match L::late(value) {
            Some(late) => out.emit(late, time),
            None => {
                self.late_dropped += 1;
                crate::counters::count(crate::counters::Counter::LateRecordDropped, 1);
            }
        }
    }

    fn add_aligned(&mut self, key: K, time: Timestamp, value: T, out: &mut Output<L::Out>) {
        let mut windows = std::mem::take(&mut self.scratch);
        windows.clear();
        self.assigner.assign(time, &mut windows);
        windows.retain(|w| !self.is_late(w));
        let Some(last) = windows.len().checked_sub(1) else {
            self.scratch = windows;
            return self.reject_late(value, time, out);
        };
        let mut value = Some(value);
        for (i, window) in windows.iter().enumerate() {
            let v = if i == last { value.take().expect("taken once") } else { value.clone().expect("present") };
            let (typical, time, watermark) = (self.typical_keys, self.time, self.watermark);
            let bucket = self.aligned.entry(*window).or_insert_with(|| Bucket {
                // Sized like the last window that fired: no rehashing as the window fills.
                accumulators: FastMap::with_capacity_and_hasher(typical, Default::default()),
                // A window the watermark has already passed (within the allowed lateness)
                // was due even if this subtask held nothing for it then: it counts as fired,
                // so this late record fires it at once, as every later one will.
                fired: time == WindowTime::EventTime && window.max_timestamp() <= watermark,
            });
            let acc = match bucket.accumulators.get_mut(&key) {
                Some(acc) => acc,
                None => bucket.accumulators.entry(key.clone()).or_insert_with(|| self.function.create()),
            };
            self.function.add(acc, v);
            if bucket.fired {
                // A late record within the allowed lateness: fire again with the update.
                let at = window.max_timestamp();
                self.function.emit(&key, window, acc, &mut |o| out.emit(L::result(o), at));
            }
        }
        self.scratch = windows;
    }

    /// The windows that hold `pane` (sliding windows with panes), oldest first.
    fn windows_of_pane(&self, pane: &TimeWindow, out: &mut Vec<TimeWindow>) {
        let WindowAssigner::Sliding { size, slide, .. } = self.assigner else { return };
        let mut start = pane.start.saturating_sub(size - slide);
        while start <= pane.start {
            out.push(TimeWindow::new(start, start.saturating_add(size)));
            start = start.saturating_add(slide);
        }
    }

    /// The panes of `window`, oldest first.
    fn panes_of_window(&self, window: &TimeWindow) -> impl Iterator<Item = TimeWindow> {
        let slide = self.pane.unwrap_or(1);
        let (start, end) = (window.start, window.end);
        (0..)
            .map(move |i| start.saturating_add(i * slide))
            .take_while(move |s| *s < end)
            .map(move |s| TimeWindow::new(s, s.saturating_add(slide)))
    }

    /// `key`'s accumulator over `window`: its panes' accumulators merged, oldest first.
    fn merged(&self, key: &K, window: &TimeWindow) -> Option<W::Acc> {
        let mut merged: Option<W::Acc> = None;
        for pane in self.panes_of_window(window) {
            let Some(acc) = self.aligned.get(&pane).and_then(|b| b.accumulators.get(key)) else { continue };
            merged = Some(match merged {
                None => acc.clone(),
                Some(older) => self.function.merge(older, acc.clone()),
            });
        }
        merged
    }

    /// Adds a record to its pane (sliding windows with panes).
    fn add_to_pane(&mut self, slide: i64, key: K, time: Timestamp, value: T, out: &mut Output<L::Out>) {
        let offset = match self.assigner {
            WindowAssigner::Sliding { offset, .. } => offset,
            _ => 0,
        };
        let start = window_start(time, offset, slide);
        let pane = TimeWindow::new(start, start.saturating_add(slide));
        if self.open_pane == Some(pane) {
            self.add_to_bucket(pane, key, value);
            return;
        }
        let mut windows = std::mem::take(&mut self.scratch);
        windows.clear();
        self.windows_of_pane(&pane, &mut windows);
        let holding = windows.len();
        windows.retain(|w| !self.is_late(w));
        let none_late = windows.len() == holding;
        if windows.is_empty() {
            self.scratch = windows;
            return self.reject_late(value, time, out);
        }
        let (clock, watermark) = (self.time, self.watermark);
        self.add_to_bucket(pane, key.clone(), value);
        let mut any_fired = false;
        for window in &windows {
            // A window the watermark has already passed (within the allowed lateness) was
            // due even if this subtask held nothing for it then: it counts as fired.
            let fired = *self
                .windows
                .entry(*window)
                .or_insert(clock == WindowTime::EventTime && window.max_timestamp() <= watermark);
            if fired {
                any_fired = true;
                // A late record within the allowed lateness: fire again with the update.
                if let Some(acc) = self.merged(&key, window) {
                    let at = window.max_timestamp();
                    self.function.emit(&key, window, &acc, &mut |o| out.emit(L::result(o), at));
                }
            }
        }
        self.open_pane = (!any_fired && none_late).then_some(pane);
        self.scratch = windows;
    }

    /// Adds `value` to `key`'s accumulator in `pane` (both made if new).
    fn add_to_bucket(&mut self, pane: TimeWindow, key: K, value: T) {
        let typical = self.typical_keys;
        let bucket = self.aligned.entry(pane).or_insert_with(|| Bucket {
            accumulators: FastMap::with_capacity_and_hasher(typical, Default::default()),
            fired: false,
        });
        match bucket.accumulators.get_mut(&key) {
            Some(acc) => self.function.add(acc, value),
            None => {
                let mut acc = self.function.create();
                self.function.add(&mut acc, value);
                bucket.accumulators.insert(key, acc);
            }
        }
    }

    /// Fires the windows (of panes) that end at or before `upto`, and drops the windows and
    /// panes past their cleanup time.
    fn advance_panes(&mut self, upto: Timestamp, out: &mut Output<L::Out>) {
        let due: Vec<TimeWindow> = self.windows.keys().take_while(|w| w.max_timestamp() <= upto).copied().collect();
        for window in due {
            if !self.windows[&window] {
                self.windows.insert(window, true);
                let mut merged: FastMap<K, W::Acc> =
                    FastMap::with_capacity_and_hasher(self.typical_keys, Default::default());
                for pane in self.panes_of_window(&window) {
                    let Some(bucket) = self.aligned.get(&pane) else { continue };
                    for (key, acc) in &bucket.accumulators {
                        match merged.remove(key) {
                            None => merged.insert(key.clone(), acc.clone()),
                            Some(older) => merged.insert(key.clone(), self.function.merge(older, acc.clone())),
                        };
                    }
                }
                self.typical_keys = merged.len();
                let at = window.max_timestamp();
                for (key, acc) in &merged {
                    self.function.emit(key, &window, acc, &mut |o| out.emit(L::result(o), at));
                }
            }
            if window.max_timestamp().saturating_add(self.lateness) <= upto {
                self.windows.remove(&window);
            }
        }
        // A pane is needed until the last window that holds it (the one starting with it)
        // is past its cleanup time.
        let size = match self.assigner {
            WindowAssigner::Sliding { size, .. } => size,
            _ => 0,
        };
        let lateness = self.lateness;
        let expired: Vec<TimeWindow> = self
            .aligned
            .keys()
            .take_while(|p| p.start.saturating_add(size - 1).saturating_add(lateness) <= upto)
            .copied()
            .collect();
        for pane in expired {
            self.aligned.remove(&pane);
        }
    }

    fn add_to_session(&mut self, key: K, time: Timestamp, value: T, out: &mut Output<L::Out>) {
        let gap = match self.assigner {
            WindowAssigner::Session { gap } => gap,
            _ => unreachable!("only session windows merge"),
        };
        let fresh = TimeWindow::new(time, time.saturating_add(gap));
        let existing = self.sessions.remove(&key).unwrap_or_default();
        let (hits, mut kept): (Vec<_>, Vec<_>) = existing.into_iter().partition(|s| s.window.intersects(&fresh));
        if hits.is_empty() && self.is_late(&fresh) {
            if !kept.is_empty() {
                self.sessions.insert(key, kept);
            }
            return self.reject_late(value, time, out);
        }
        let mut acc = self.function.create();
        self.function.add(&mut acc, value);
        let mut window = fresh;
        for old in hits {
            window = window.cover(&old.window);
            acc = self.function.merge(old.acc, acc);
            self.session_timers.delete(old.window.max_timestamp(), &key);
        }
        self.session_timers.register(window.max_timestamp(), &key);
        let mut session = Session { window, acc, fired: false };
        if self.time == WindowTime::EventTime && window.max_timestamp() <= self.watermark {
            // Merged into a session whose end has passed, within the allowed lateness.
            let at = window.max_timestamp();
            self.function.emit(&key, &window, &session.acc, &mut |o| out.emit(L::result(o), at));
            session.fired = true;
            self.session_timers.register(self.cleanup_time(&window), &key);
        }
        kept.push(session);
        self.sessions.insert(key, kept);
    }

    /// Fires windows whose end is at or before `upto` and drops state past its cleanup time.
    fn advance(&mut self, upto: Timestamp, out: &mut Output<L::Out>) {
        self.open_pane = None;
        if self.assigner.is_merging() {
            self.advance_sessions(upto, out);
        } else if self.pane.is_some() {
            self.advance_panes(upto, out);
        } else {
            self.advance_aligned(upto, out);
        }
    }

    fn advance_aligned(&mut self, upto: Timestamp, out: &mut Output<L::Out>) {
        let mut expired = Vec::new();
        for (window, bucket) in self.aligned.iter_mut() {
            // Windows of one assigner share a length, so start order is end order.
            if window.max_timestamp() > upto {
                break;
            }
            if !bucket.fired {
                bucket.fired = true;
                self.typical_keys = bucket.accumulators.len();
                let at = window.max_timestamp();
                for (key, acc) in &bucket.accumulators {
                    self.function.emit(key, window, acc, &mut |o| out.emit(L::result(o), at));
                }
            }
            if window.max_timestamp().saturating_add(self.lateness) <= upto {
                expired.push(*window);
            }
        }
        for window in expired {
            self.aligned.remove(&window);
        }
    }

    fn advance_sessions(&mut self, upto: Timestamp, out: &mut Output<L::Out>) {
        while let Some((due, key)) = self.session_timers.pop_due(upto) {
            let Some(mut sessions) = self.sessions.remove(&key) else {
                continue;
            };
            for session in sessions.iter_mut() {
                // Each session has a timer at its end, so firing by timer keeps time order.
                if !session.fired && session.window.max_timestamp() <= due {
                    session.fired = true;
                    let at = session.window.max_timestamp();
                    let window = session.window;
                    self.function.emit(&key, &window, &session.acc, &mut |o| out.emit(L::result(o), at));
                    if self.lateness > 0 {
                        self.session_timers.register(self.cleanup_time(&window), &key);
                    }
                }
            }
            let lateness = self.lateness;
            sessions.retain(|s| !(s.fired && s.window.max_timestamp().saturating_add(lateness) <= upto));
            if !sessions.is_empty() {
                self.sessions.insert(key, sessions);
            }
        }
    }
}

impl<K, T, W, L> Operator<T, L::Out> for WindowOperator<K, T, W, L>
where
    K: Key,
    T: Data,
    W: WindowFunction<K, T>,
    L: LatePolicy<T, W::Out>,
{
    fn process_batch(&mut self, batch: Vec<Record<T>>, out: &mut Output<L::Out>) {
        let arrival = match self.time {
            WindowTime::ProcessingTime => now_millis(),
            WindowTime::EventTime => NO_TIMESTAMP,
        };
        for record in batch {
            let time = match self.time {
                WindowTime::ProcessingTime => arrival,
                WindowTime::EventTime => {
                    if record.time == NO_TIMESTAMP {
                        panic!(
                            "an event-time window got a record without a timestamp; give the source a watermark \
                             strategy with timestamps (Watermarks::..().with_timestamps(..)) or use a processing-time window"
                        );
                    }
                    record.time
                }
            };
            let key = (self.key_fn)(&record.value);
            if self.assigner.is_merging() {
                self.add_to_session(key, time, record.value, out);
            } else if let Some(slide) = self.pane {
                self.add_to_pane(slide, key, time, record.value, out);
            } else {
                self.add_aligned(key, time, record.value, out);
            }
        }
    }

    fn on_watermark(&mut self, watermark: Timestamp, out: &mut Output<L::Out>) {
        if self.time == WindowTime::EventTime {
            self.watermark = watermark;
            self.advance(watermark, out);
        }
    }

    fn on_processing_time(&mut self, now: Timestamp, out: &mut Output<L::Out>) {
        if self.time == WindowTime::ProcessingTime {
            self.advance(now, out);
        }
    }

    /// The state at the end of input (or at a barrier without asynchronous snapshots), encoded
    /// on the task's thread: one chunk per key group, written in two passes over the windows.
    fn snapshot(&mut self, max_parallelism: usize) -> Option<OperatorState> {
        let windows = self.pane.is_some().then_some(&self.windows);
        Some(encode_windows(&self.aligned, windows, &self.sessions, &self.snapshot_sizes, max_parallelism))
    }

    /// At a barrier the maps are copied and the copy is encoded on the task's encoder
    /// thread, so the stream pauses only for the copy (in W3, a median 6-10 ms per subtask
    /// and checkpoint instead of 26-30 ms encoding). No state, nothing to copy.
    fn snapshot_at_barrier(&mut self, max_parallelism: usize) -> Option<BarrierSnapshot> {
        if self.aligned.is_empty() && self.sessions.is_empty() {
            return self.snapshot(max_parallelism).map(BarrierSnapshot::Encoded);
        }
        let aligned = self.aligned.clone();
        let windows = self.pane.is_some().then(|| self.windows.clone());
        let sessions = self.sessions.clone();
        let sizes = Arc::clone(&self.snapshot_sizes);
        Some(BarrierSnapshot::Copied(Box::new(move || {
            encode_windows(&aligned, windows.as_ref(), &sessions, &sizes, max_parallelism)
        })))
    }

    fn restore(&mut self, state: Restored) {
        self.open_pane = None;
        let Restored::Keyed(chunks) = state else { return };
        for (_, bytes) in chunks {
            let chunk: WindowChunk<K, W::Acc> = decode_or_fail(&bytes, "a window");
            for (window, fired, entries) in chunk.aligned {
                let length = window.end.saturating_sub(window.start);
                let expected = match self.assigner {
                    WindowAssigner::Tumbling { size, .. } => Some(size),
                    WindowAssigner::Sliding { size, .. } => Some(size),
                    WindowAssigner::Session { .. } => None,
                };
                // Windows at the ends of time are cut short (saturated), whatever their kind.
                let saturated = window.start == Timestamp::MIN || window.end == Timestamp::MAX;
                if let Some(slide) = self.pane {
                    // A window's fired flag has no entries; a pane always has some.
                    if entries.is_empty() {
                        self.windows.entry(window).or_insert(fired);
                        continue;
                    }
                    if length == slide || saturated {
                        let bucket = self
                            .aligned
                            .entry(window)
                            .or_insert_with(|| Bucket { accumulators: FastMap::default(), fired: false });
                        bucket.accumulators.extend(entries);
                        continue;
                    }
                }
                if self.pane.is_some() || (!saturated && expected.is_some_and(|size| size != length)) {
                    panic!(
                        "a window operator restores state of windows [{}, {}) that its assigner ({:?}) does not make: \
                         the state was written by another window definition (or by a Sluice that kept sliding \
                         windows whole, before panes); give the changed operator a new uid, or restore with the \
                         definition and build that wrote it",
                        window.start, window.end, self.assigner
                    );
                }
                let bucket =
                    self.aligned.entry(window).or_insert_with(|| Bucket { accumulators: FastMap::default(), fired });
                bucket.accumulators.extend(entries);
            }
            for (key, sessions) in chunk.sessions {
                for (window, _, fired) in &sessions {
                    let due = if *fired { self.cleanup_time(window) } else { window.max_timestamp() };
                    self.session_timers.register(due, &key);
                }
                let sessions =
                    sessions.into_iter().map(|(window, acc, fired)| Session { window, acc, fired }).collect();
                self.sessions.insert(key, sessions);
            }
        }
    }

    fn finish(&mut self, out: &mut Output<L::Out>) {
        if self.time == WindowTime::ProcessingTime {
            // A bounded job's end would otherwise drop the open windows' records.
            self.advance(Timestamp::MAX, out);
        }
        if self.late_dropped > 0 {
            tracing::info!(late_dropped = self.late_dropped, "window dropped late records");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigners() {
        let mut out = Vec::new();
        WindowAssigner::Tumbling { size: 10, offset: 0 }.assign(-3, &mut out);
        assert_eq!(out, vec![TimeWindow::new(-10, 0)]);
        out.clear();
        WindowAssigner::Sliding { size: 10, slide: 5, offset: 0 }.assign(12, &mut out);
        assert_eq!(out, vec![TimeWindow::new(10, 20), TimeWindow::new(5, 15)]);
        out.clear();
        WindowAssigner::Tumbling { size: 10, offset: 3 }.assign(12, &mut out);
        assert_eq!(out, vec![TimeWindow::new(3, 13)]);
    }
}
