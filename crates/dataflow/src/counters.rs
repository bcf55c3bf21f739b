//! Counters of records a job left out on purpose (late records dropped by a window,
//! records a decode policy skipped), summed over every subtask and attempt and reported
//! in the job's result.
//!
//! Operators and readers do not hold a handle: each task thread enters its job's counters
//! when it starts, and [`count`] adds to those of the thread it runs on. Counting is on the
//! rare path only (a record dropped), so a thread-local lookup costs nothing that matters.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The counters of one job.
#[derive(Debug, Default)]
pub struct JobCounters {
    late_records_dropped: AtomicU64,
    records_skipped: AtomicU64,
}

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record arrived after its windows' state was cleaned up, with no side output.
    LateRecordDropped,
    /// A record a decode policy skipped (or sent to a dead-letter topic).
    RecordSkipped,
}

impl JobCounters {
    fn cell(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::LateRecordDropped => &self.late_records_dropped,
            Counter::RecordSkipped => &self.records_skipped,
        }
    }

    /// The current value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.cell(counter).load(Ordering::Relaxed)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<JobCounters>>> = const { RefCell::new(None) };
}

/// Makes `counters` the ones [`count`] adds to on this thread (a task thread, at its start).
pub fn enter(counters: Arc<JobCounters>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(counters));
}

/// Adds `n` to `counter` of the job this thread runs a task of (nothing outside a job, as
/// in an operator test harness).
pub fn count(counter: Counter, n: u64) {
    CURRENT.with(|c| {
        if let Some(counters) = c.borrow().as_ref() {
            counters.cell(counter).fetch_add(n, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_to_the_job_of_the_thread() {
        let job = Arc::new(JobCounters::default());
        count(Counter::RecordSkipped, 5); // no job yet: not counted anywhere
        enter(job.clone());
        count(Counter::RecordSkipped, 2);
        count(Counter::LateRecordDropped, 1);
        let other = std::thread::spawn(|| count(Counter::RecordSkipped, 100));
        other.join().unwrap();
        assert_eq!(job.get(Counter::RecordSkipped), 2);
        assert_eq!(job.get(Counter::LateRecordDropped), 1);
    }
}
