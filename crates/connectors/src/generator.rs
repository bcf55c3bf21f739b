//! The sequence and generator sources: deterministic, bounded or unbounded, optionally
//! rate-limited. Subtask `s` of `p` produces indices `s, s+p, s+2p, ...`, so every
//! subtask's indices (and event times derived from them) advance at the same pace.

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
    f: std::sync::Arc<F>,
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
}

impl<F> GeneratorSource<F> {
    /// `f(i)` for `i` in `range`.
    pub fn new(range: Range<u64>, f: F) -> Self {
        GeneratorSource { start: range.start, end: Some(range.end), rate: None, f: std::sync::Arc::new(f) }
    }
    /// `f(i)` for `i` from `start` on, without end.
    pub fn unbounded_from(start: u64, f: F) -> Self {
        GeneratorSource { start, end: None, rate: None, f: std::sync::Arc::new(f) }
    }
    /// At most `records_per_second` in all (shared evenly by the subtasks).
    pub fn with_rate_limit(mut self, records_per_second: f64) -> Self {
        self.rate = Some(records_per_second);
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
            _ => Ok(()),
        }
    }
    fn create_reader(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SourceReader<T>>> {
        Source::<T>::validate(self).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Box::new(GeneratorReader {
            next: self.start + index as u64,
            stride: parallelism as u64,
            end: self.end,
            rate: self.rate.map(|r| r / parallelism as f64),
            started: Instant::now(),
            emitted: 0,
            f: self.f.clone(),
        }))
    }
}

struct GeneratorReader<F> {
    next: u64,
    stride: u64,
    end: Option<u64>,
    rate: Option<f64>,
    started: Instant,
    emitted: u64,
    f: std::sync::Arc<F>,
}

impl<T: Send + 'static, F: IndexFn<T>> SourceReader<T> for GeneratorReader<F> {
    fn poll(&mut self, out: &mut Vec<Record<T>>, max: usize) -> io::Result<Poll> {
        let mut count = match self.end {
            Some(end) if self.next >= end => return Ok(Poll::Finished),
            Some(end) => ((end - self.next).div_ceil(self.stride)).min(max as u64),
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
        let f = &*self.f;
        let (base, stride) = (self.next, self.stride);
        // An indexed, trusted-length iterator lets the compiler vectorize the fill.
        out.extend((0..count).map(|k| Record { time: NO_TIMESTAMP, value: f.at(base + k * stride) }));
        self.next = base + count * stride;
        self.emitted += count;
        Ok(Poll::Ready)
    }

    fn position(&self) -> Option<Vec<u8>> {
        Some(self.next.to_le_bytes().to_vec())
    }

    fn seek(&mut self, position: &[u8]) -> io::Result<()> {
        let bytes: [u8; 8] = position.try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a generator position is 8 bytes; the checkpoint is not from this source",
            )
        })?;
        self.next = u64::from_le_bytes(bytes);
        // The rate limit counts from the resume.
        self.started = Instant::now();
        self.emitted = 0;
        Ok(())
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
}
