//! The sequence and generator sources: deterministic, bounded or unbounded, optionally
//! rate-limited. Subtask `s` of `p` produces indices `s, s+p, s+2p, ...`, so every
//! subtask's indices (and event times derived from them) advance at the same pace.
//!
//! Such an arithmetic progression is a *lane*, and lanes are the splits of a restore at
//! another parallelism: the lanes the old subtasks had left go round-robin to the new ones,
//! and when there are fewer lanes than new subtasks a lane splits in two (its even and odd
//! steps), so every subtask gets work and no index is produced twice or dropped. A reader
//! of several lanes merges them in index order, so its indices still only grow.

use sluice_dataflow::{Poll, Source, SourceReader};
use sluice_types::{Record, NO_TIMESTAMP};
use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Turns an index into a record value.
pub trait IndexFn<T>: Send + Sync + 'static {
    /// The value at index `i`.
    fn at(&self, i: u64) -> T;
}

impl<T, F: Fn(u64) -> T + Send + Sync + 'static> IndexFn<T> for F {
    #[inline(always)]
    fn at(&self, i: u64) -> T {
        self(i)
    }
}

/// The index itself.
#[derive(Clone, Copy, Debug)]
pub struct Identity;

impl IndexFn<u64> for Identity {
    #[inline(always)]
    fn at(&self, i: u64) -> u64 {
        i
    }
}

/// Generates `f(i)` for indices `i` in a range (or from a start, without end).
///
/// ```
/// use sluice_connectors::GeneratorSource;
/// let words = GeneratorSource::new(0..100, |i: u64| format!("word{}", i % 7));
/// # let _ = words;
/// ```
pub struct GeneratorSource<F> {
    start: u64,
    end: Option<u64>,
    rate: Option<f64>,
    schedule: Option<Schedule>,
    f: std::sync::Arc<F>,
}

/// A wall-clock schedule: index `i` is due at `t0 + i / per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Schedule {
    /// Milliseconds since the Unix epoch.
    t0_ms: i64,
    per_second: f64,
}

impl Schedule {
    /// The highest index due now (`None` before index 0 is due).
    fn due(&self) -> Option<u64> {
        let elapsed = sluice_dataflow::now_millis() - self.t0_ms;
        (elapsed >= 0).then(|| (elapsed as f64 / 1000.0 * self.per_second) as u64)
    }
    /// How long until index `i` is due (at most 50 ms, to look again).
    fn wait_for(&self, i: u64) -> Duration {
        let due_ms = self.t0_ms as f64 + i as f64 * 1000.0 / self.per_second;
        let wait = (due_ms - sluice_dataflow::now_millis() as f64).max(0.0);
        Duration::from_secs_f64(wait / 1000.0).min(Duration::from_millis(50))
    }
}

/// The numbers of a range, as `u64`.
///
/// ```
/// use sluice_connectors::SequenceSource;
/// let numbers = SequenceSource::new(0..1_000).with_rate_limit(10_000.0);
/// # let _ = numbers;
/// ```
pub struct SequenceSource(GeneratorSource<Identity>);

impl SequenceSource {
    /// The numbers `range.start..range.end`.
    pub fn new(range: Range<u64>) -> Self {
        SequenceSource(GeneratorSource::new(range, Identity))
    }
    /// The numbers from `start` on, without end.
    pub fn unbounded(start: u64) -> Self {
        SequenceSource(GeneratorSource::unbounded_from(start, Identity))
    }
    /// At most `records_per_second` in all (shared evenly by the subtasks).
    pub fn with_rate_limit(self, records_per_second: f64) -> Self {
        SequenceSource(self.0.with_rate_limit(records_per_second))
    }
    /// Paced by the wall clock: see [`GeneratorSource::on_schedule`].
    pub fn on_schedule(self, t0_epoch_ms: i64, per_second: f64) -> Self {
        SequenceSource(self.0.on_schedule(t0_epoch_ms, per_second))
    }
}

impl Source<u64> for SequenceSource {
    /// Records have no event time until a timestamp assigner gives them one.
    fn has_timestamps(&self) -> bool {
        false
    }

    fn name(&self) -> String {
        "sequence".into()
    }
    fn validate(&self) -> Result<(), String> {
        Source::<u64>::validate(&self.0)
    }
    fn create_reader(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SourceReader<u64>>> {
        self.0.create_reader(index, parallelism)
    }
    fn rescale(&self, old: Vec<Vec<u8>>, parallelism: usize) -> Result<Vec<Vec<u8>>, String> {
        Source::<u64>::rescale(&self.0, old, parallelism)
    }
}

impl<F> GeneratorSource<F> {
    /// `f(i)` for `i` in `range`.
    pub fn new(range: Range<u64>, f: F) -> Self {
        GeneratorSource {
            start: range.start,
            end: Some(range.end),
            rate: None,
            schedule: None,
            f: std::sync::Arc::new(f),
        }
    }
    /// `f(i)` for `i` from `start` on, without end.
    pub fn unbounded_from(start: u64, f: F) -> Self {
        GeneratorSource { start, end: None, rate: None, schedule: None, f: std::sync::Arc::new(f) }
    }
    /// At most `records_per_second` in all (shared evenly by the subtasks).
    pub fn with_rate_limit(mut self, records_per_second: f64) -> Self {
        self.rate = Some(records_per_second);
        self
    }
    /// Paced by the wall clock, the same for every subtask and every attempt: index `i` is
    /// due at `t0_epoch_ms + i / per_second` seconds and not produced before; an index whose
    /// time has passed (the backlog after a restore) is produced at once. A stream of
    /// events "as they happen", for measuring how far behind the output runs after a
    /// failure.
    ///
    /// ```
    /// use sluice_connectors::SequenceSource;
    /// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    /// let events = SequenceSource::new(0..9_000_000).on_schedule(now, 200_000.0);
    /// # let _ = events;
    /// ```
    pub fn on_schedule(mut self, t0_epoch_ms: i64, per_second: f64) -> Self {
        self.schedule = Some(Schedule { t0_ms: t0_epoch_ms, per_second });
        self
    }
}

impl<T: Send + 'static, F: IndexFn<T>> Source<T> for GeneratorSource<F> {
    /// Records have no event time until a timestamp assigner gives them one.
    fn has_timestamps(&self) -> bool {
        false
    }

    fn name(&self) -> String {
        "generator".into()
    }
    fn validate(&self) -> Result<(), String> {
        match self.rate {
            Some(rate) if !(rate > 0.0 && rate.is_finite()) => Err(format!(
                "the rate limit is {rate} records/s; give a number above 0 (or no rate limit: with_rate_limit only \
                 slows a source down)"
            )),
            _ => match self.schedule {
                Some(s) if !(s.per_second > 0.0 && s.per_second.is_finite()) => {
                    Err(format!("the schedule's rate is {} events/s; give a number above 0", s.per_second))
                }
                _ => Ok(()),
            },
        }
    }
    fn create_reader(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SourceReader<T>>> {
        Source::<T>::validate(self).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Box::new(GeneratorReader {
            next: self.start + index as u64,
            stride: parallelism as u64,
            more_lanes: Vec::new(),
            parallelism: parallelism as u64,
            end: self.end,
            rate: self.rate.map(|r| r / parallelism as f64),
            schedule: self.schedule,
            started: Instant::now(),
            emitted: 0,
            f: self.f.clone(),
        }))
    }

    fn rescale(&self, old: Vec<Vec<u8>>, parallelism: usize) -> Result<Vec<Vec<u8>>, String> {
        let old_parallelism = old.len() as u64;
        let mut lanes = Vec::new();
        for bytes in &old {
            lanes.extend(decode_lanes(bytes, old_parallelism).map_err(|e| e.to_string())?);
        }
        lanes.retain(|lane| self.end.is_none_or(|end| lane.next < end));
        lanes.sort_by_key(|lane| lane.next);
        while !lanes.is_empty() && lanes.len() < parallelism {
            lanes = lanes.into_iter().flat_map(Lane::halves).collect();
        }
        let mut shares: Vec<Vec<Lane>> = vec![Vec::new(); parallelism];
        for (i, lane) in lanes.into_iter().enumerate() {
            shares[i % parallelism].push(lane);
        }
        Ok(shares.iter().map(|lanes| encode_lanes(lanes)).collect())
    }
}

/// The indices `next, next + stride, next + 2 * stride, ...` (up to the source's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lane {
    next: u64,
    stride: u64,
}

impl Lane {
    /// Its even and odd steps, as two lanes that together produce what it would.
    fn halves(self) -> [Lane; 2] {
        let stride = self.stride * 2;
        [Lane { next: self.next, stride }, Lane { next: self.next + self.stride, stride }]
    }
}

/// A position of several lanes: a tag byte, then (next, stride) per lane. Its length is
/// never 8, the length of a single lane's position (its next index, the stride being the
/// parallelism), which is what a reader of one lane writes.
const LANES_TAG: u8 = 1;

fn encode_lanes(lanes: &[Lane]) -> Vec<u8> {
    let mut out = vec![LANES_TAG];
    for lane in lanes {
        out.extend(lane.next.to_le_bytes());
        out.extend(lane.stride.to_le_bytes());
    }
    out
}

/// The lanes of a position; `stride` is the parallelism the position was written at, for a
/// position of one lane.
fn decode_lanes(bytes: &[u8], stride: u64) -> io::Result<Vec<Lane>> {
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    match bytes {
        _ if bytes.len() == 8 => Ok(vec![Lane { next: word(bytes), stride }]),
        [LANES_TAG, rest @ ..] if rest.len() % 16 == 0 => {
            Ok(rest.chunks_exact(16).map(|c| Lane { next: word(&c[..8]), stride: word(&c[8..]) }).collect())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "this is not a generator position (8 bytes, or a tag and 16 bytes per lane); the checkpoint is not from \
             this source",
        )),
    }
}

struct GeneratorReader<F> {
    /// The first lane, kept apart so that a reader of one lane (every reader but one
    /// restored at another parallelism) fills its batches in one vectorized loop.
    next: u64,
    stride: u64,
    /// The other lanes, after a restore at another parallelism.
    more_lanes: Vec<Lane>,
    /// The source's parallelism: the stride of a position of one lane (8 bytes).
    parallelism: u64,
    end: Option<u64>,
    rate: Option<f64>,
    schedule: Option<Schedule>,
    started: Instant,
    emitted: u64,
    f: std::sync::Arc<F>,
}

impl<T: Send + 'static, F: IndexFn<T>> SourceReader<T> for GeneratorReader<F> {
    fn poll(&mut self, out: &mut Vec<Record<T>>, max: usize) -> io::Result<Poll> {
        if !self.more_lanes.is_empty() {
            return self.poll_lanes(out, max);
        }
        let mut count = match self.end {
            Some(end) if self.next >= end => return Ok(Poll::Finished),
            Some(end) => ((end - self.next).div_ceil(self.stride)).min(max as u64),
            // A reader restored with no lane has nothing to read.
            None if self.next == u64::MAX => return Ok(Poll::Finished),
            None => max as u64,
        };
        if let Some(rate) = self.rate {
            let allowed = (self.started.elapsed().as_secs_f64() * rate) as u64;
            let budget = allowed.saturating_sub(self.emitted);
            if budget == 0 {
                let wait = (self.emitted + 1) as f64 / rate - self.started.elapsed().as_secs_f64();
                return Ok(Poll::Pending(Duration::from_secs_f64(wait.clamp(0.0, 0.1))));
            }
            count = count.min(budget);
        }
        if let Some(schedule) = self.schedule {
            let due = schedule.due().map_or(0, |d| if d < self.next { 0 } else { (d - self.next) / self.stride + 1 });
            if due == 0 {
                return Ok(Poll::Pending(schedule.wait_for(self.next)));
            }
            count = count.min(due);
        }
        let f = &*self.f;
        let (base, stride) = (self.next, self.stride);
        // An indexed, trusted-length iterator lets the compiler vectorize the fill.
        out.extend((0..count).map(|k| Record { time: NO_TIMESTAMP, value: f.at(base + k * stride) }));
        self.next = base + count * stride;
        self.emitted += count;
        Ok(Poll::Ready)
    }

    fn position(&self) -> Option<Vec<u8>> {
        if self.more_lanes.is_empty() && self.stride == self.parallelism {
            return Some(self.next.to_le_bytes().to_vec());
        }
        Some(encode_lanes(&self.lanes()))
    }

    fn seek(&mut self, position: &[u8]) -> io::Result<()> {
        let mut lanes = decode_lanes(position, self.parallelism)?.into_iter();
        // A reader given no lane (all its work done elsewhere) starts at the end.
        let first = lanes.next().unwrap_or(Lane { next: u64::MAX, stride: 1 });
        (self.next, self.stride) = (first.next, first.stride);
        self.more_lanes = lanes.collect();
        // The rate limit counts from the resume.
        self.started = Instant::now();
        self.emitted = 0;
        Ok(())
    }
}

impl<F> GeneratorReader<F> {
    fn lanes(&self) -> Vec<Lane> {
        let mut lanes = vec![Lane { next: self.next, stride: self.stride }];
        lanes.extend(&self.more_lanes);
        lanes
    }

    /// A reader of several lanes: merges them in index order, one record at a time (only
    /// readers restored at another parallelism take this path).
    fn poll_lanes<T>(&mut self, out: &mut Vec<Record<T>>, max: usize) -> io::Result<Poll>
    where
        F: IndexFn<T>,
    {
        let mut lanes = self.lanes();
        let end = self.end.unwrap_or(u64::MAX);
        lanes.retain(|lane| lane.next < end);
        if lanes.is_empty() {
            self.next = end;
            self.more_lanes.clear();
            return Ok(Poll::Finished);
        }
        let mut count = max as u64;
        if let Some(rate) = self.rate {
            let allowed = (self.started.elapsed().as_secs_f64() * rate) as u64;
            count = count.min(allowed.saturating_sub(self.emitted));
            if count == 0 {
                let wait = (self.emitted + 1) as f64 / rate - self.started.elapsed().as_secs_f64();
                return Ok(Poll::Pending(Duration::from_secs_f64(wait.clamp(0.0, 0.1))));
            }
        }
        let due = self.schedule.map(|s| s.due());
        let before = out.len();
        for _ in 0..count {
            let Some(lane) = lanes.iter_mut().filter(|l| l.next < end).min_by_key(|l| l.next) else { break };
            if let Some(due) = due {
                if due.is_none_or(|d| lane.next > d) {
                    break;
                }
            }
            out.push(Record { time: NO_TIMESTAMP, value: self.f.at(lane.next) });
            lane.next = lane.next.saturating_add(lane.stride);
            self.emitted += 1;
        }
        let earliest = lanes.iter().map(|l| l.next).min().unwrap_or(0);
        let first = lanes.remove(0);
        (self.next, self.stride) = (first.next, first.stride);
        self.more_lanes = lanes;
        match self.schedule {
            Some(schedule) if out.len() == before => Ok(Poll::Pending(schedule.wait_for(earliest))),
            _ => Ok(Poll::Ready),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T: Send + 'static>(mut reader: Box<dyn SourceReader<T>>) -> Vec<T> {
        let mut out = Vec::new();
        while reader.poll(&mut out, 7).unwrap() != Poll::Finished {}
        out.into_iter().map(|r| r.value).collect()
    }

    #[test]
    fn subtasks_split_the_range_by_stride() {
        let source = SequenceSource::new(10..30);
        let mut all: Vec<u64> = (0..3).flat_map(|s| drain(source.create_reader(s, 3).unwrap())).collect();
        assert_eq!(drain(source.create_reader(1, 3).unwrap()), vec![11, 14, 17, 20, 23, 26, 29]);
        all.sort();
        assert_eq!(all, (10..30).collect::<Vec<_>>());
    }

    #[test]
    fn a_reader_resumes_from_its_position() {
        let source = SequenceSource::new(0..100);
        let mut reader = source.create_reader(1, 2).unwrap();
        let mut out = Vec::new();
        reader.poll(&mut out, 5).unwrap();
        let position = reader.position().unwrap();
        let mut resumed = source.create_reader(1, 2).unwrap();
        resumed.seek(&position).unwrap();
        let rest = drain(resumed);
        assert_eq!(rest[0], 11);
        assert_eq!(out.len() + rest.len(), 50);
    }

    /// Reads `n` records from every reader, checkpoints, and returns the positions and
    /// what was read.
    fn read_some(
        source: &SequenceSource,
        parallelism: usize,
        restore: Option<&[Vec<u8>]>,
        n: usize,
    ) -> (Vec<Vec<u8>>, Vec<u64>) {
        let mut read = Vec::new();
        let mut positions = Vec::new();
        for s in 0..parallelism {
            let mut reader = source.create_reader(s, parallelism).unwrap();
            if let Some(restore) = restore {
                reader.seek(&restore[s]).unwrap();
            }
            let mut out = Vec::new();
            while out.len() < n {
                let room = n - out.len();
                if reader.poll(&mut out, room).unwrap() == Poll::Finished {
                    break;
                }
            }
            let values: Vec<u64> = out.into_iter().map(|r| r.value).collect();
            assert!(values.windows(2).all(|w| w[0] < w[1]), "a reader's indices only grow: {values:?}");
            read.extend(values);
            positions.push(reader.position().unwrap());
        }
        (positions, read)
    }

    #[test]
    fn a_schedule_holds_back_what_is_not_due_and_releases_the_backlog_at_once() {
        let now = sluice_dataflow::now_millis();
        // Started 10 s ago at 100 events/s: about 1,000 are due, the rest are not yet.
        let source = SequenceSource::new(0..1_000_000).on_schedule(now - 10_000, 100.0);
        let mut reader = source.create_reader(0, 2).unwrap();
        let mut out = Vec::new();
        for _ in 0..10 {
            if let Poll::Pending(wait) = reader.poll(&mut out, 100_000).unwrap() {
                assert!(wait <= Duration::from_millis(50));
            }
        }
        // Subtask 0 of 2 has the even half of indices 0..~1,000: the backlog, not more.
        assert!((495..=520).contains(&out.len()), "{} released", out.len());
        assert!(out.iter().all(|r| r.value <= 1_040), "only due indices");
        let future = SequenceSource::new(0..10).on_schedule(now + 60_000, 100.0);
        let mut reader = future.create_reader(0, 1).unwrap();
        assert!(matches!(reader.poll(&mut out, 10).unwrap(), Poll::Pending(_)), "nothing is due before t0");
    }

    #[test]
    fn a_restore_at_another_parallelism_produces_every_index_exactly_once() {
        let source = SequenceSource::new(0..1000);
        // 2 -> 3 -> 1 -> 5 -> 2 subtasks, reading a little at each step, then everything.
        let (mut positions, mut read) = read_some(&source, 2, None, 7);
        for (from, to, n) in [(2, 3, 11), (3, 1, 5), (1, 5, 40), (5, 2, usize::MAX)] {
            assert_eq!(positions.len(), from);
            positions = Source::<u64>::rescale(&source, positions, to).unwrap();
            let (next, more) = read_some(&source, to, Some(&positions), n);
            positions = next;
            read.extend(more);
        }
        read.sort();
        assert_eq!(read, (0..1000).collect::<Vec<_>>());
        let err = Source::<u64>::rescale(&source, vec![vec![1, 2, 3]], 2).unwrap_err();
        assert!(err.contains("not a generator position"), "{err}");
    }
}
