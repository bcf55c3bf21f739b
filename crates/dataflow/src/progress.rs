//! What a task is doing, for the runtime's data detectors: whether it is inside a piece of
//! work (a batch, a timer, a source's poll) and since when, whether it is only waiting for
//! credit (its consumer is slow: backpressure, not a stall), and for a source how many
//! records it read and when its watermark last advanced.
//!
//! As with [`crate::counters`], nothing holds a handle: a task thread [`enter`]s its
//! task's [`TaskProgress`] when it starts, and the calls below mark that one. Outside a
//! job (an operator test harness) they do nothing. Each mark is one relaxed atomic store.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Milliseconds since the first call in this process, plus one (0 means "not set").
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The progress of one task, as its thread marks it.
#[derive(Debug)]
pub struct TaskProgress {
    /// The task, as reports name it (`operator` subtask `i`).
    pub name: String,
    /// Whether the task is a source.
    pub source: bool,
    busy_since: AtomicU64,
    waiting_for_credit: AtomicBool,
    records: AtomicU64,
    watermark_advanced_at: AtomicU64,
    records_at_advance: AtomicU64,
    emits_watermarks: AtomicBool,
    ended: AtomicBool,
}

/// A copy of a task's progress at one moment, for a detector to judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressView {
    /// The task's name.
    pub name: String,
    /// Whether it is a source.
    pub source: bool,
    /// Since when (`now_ms`) it has been inside one piece of work, if it is.
    pub busy_since: Option<u64>,
    /// Whether it is waiting for credit (backpressure).
    pub waiting_for_credit: bool,
    /// Records a source read.
    pub records: u64,
    /// When (`now_ms`) a source's watermark last advanced (or it started).
    pub watermark_advanced_at: u64,
    /// Records it had read then.
    pub records_at_advance: u64,
    /// Whether it is a source that emits watermarks (one without a watermark strategy is
    /// not judged by the stuck-watermark detector).
    pub emits_watermarks: bool,
    /// Whether the task has ended.
    pub ended: bool,
}

impl TaskProgress {
    /// A task's progress, starting now.
    pub fn new(name: String, source: bool) -> Arc<TaskProgress> {
        Arc::new(TaskProgress {
            name,
            source,
            busy_since: AtomicU64::new(0),
            waiting_for_credit: AtomicBool::new(false),
            records: AtomicU64::new(0),
            watermark_advanced_at: AtomicU64::new(now_ms()),
            records_at_advance: AtomicU64::new(0),
            emits_watermarks: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        })
    }

    /// What it is now.
    pub fn view(&self) -> ProgressView {
        let busy = self.busy_since.load(Ordering::Relaxed);
        ProgressView {
            name: self.name.clone(),
            source: self.source,
            busy_since: (busy != 0).then_some(busy),
            waiting_for_credit: self.waiting_for_credit.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            watermark_advanced_at: self.watermark_advanced_at.load(Ordering::Relaxed),
            records_at_advance: self.records_at_advance.load(Ordering::Relaxed),
            emits_watermarks: self.emits_watermarks.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
        }
    }

    /// The task has ended (its thread marks this last).
    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<TaskProgress>>> = const { RefCell::new(None) };
}

fn with(f: impl FnOnce(&TaskProgress)) {
    CURRENT.with(|c| {
        if let Some(progress) = c.borrow().as_ref() {
            f(progress)
        }
    });
}

/// Makes `progress` the one this thread marks (a task thread, at its start).
pub fn enter(progress: Arc<TaskProgress>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(progress));
}

/// Marks this thread's task busy until the guard is dropped.
#[must_use = "the task is busy while the guard lives"]
pub fn busy() -> Busy {
    with(|p| p.busy_since.store(now_ms(), Ordering::Relaxed));
    Busy(())
}

/// While it lives, this thread's task is inside a piece of work.
#[derive(Debug)]
pub struct Busy(());

impl Drop for Busy {
    fn drop(&mut self) {
        with(|p| p.busy_since.store(0, Ordering::Relaxed));
    }
}

/// Marks this thread's task as waiting for credit until the guard is dropped; the time it
/// waits does not count as being stuck in its work.
pub fn waiting_for_credit() -> CreditWait {
    with(|p| p.waiting_for_credit.store(true, Ordering::Relaxed));
    CreditWait(())
}

/// While it lives, this thread's task waits for credit.
#[derive(Debug)]
pub struct CreditWait(());

impl Drop for CreditWait {
    fn drop(&mut self) {
        with(|p| {
            p.waiting_for_credit.store(false, Ordering::Relaxed);
            // The work goes on from now: the wait is not part of it.
            if p.busy_since.load(Ordering::Relaxed) != 0 {
                p.busy_since.store(now_ms(), Ordering::Relaxed);
            }
        });
    }
}

/// A source read `n` records.
pub fn source_read(n: usize) {
    with(|p| {
        p.records.fetch_add(n as u64, Ordering::Relaxed);
    });
}

/// This thread's source emits watermarks (it has a watermark strategy).
pub fn emits_watermarks() {
    with(|p| {
        p.watermark_advanced_at.store(now_ms(), Ordering::Relaxed);
        p.emits_watermarks.store(true, Ordering::Relaxed);
    });
}

/// A source's watermark advanced.
pub fn watermark_advanced() {
    with(|p| {
        p.records_at_advance.store(p.records.load(Ordering::Relaxed), Ordering::Relaxed);
        p.watermark_advanced_at.store(now_ms(), Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_reach_the_entered_task_only_and_credit_waits_do_not_count_as_work() {
        // Outside a task nothing is marked (and nothing fails).
        drop(busy());
        let progress = TaskProgress::new("map#0".into(), false);
        enter(progress.clone());
        assert_eq!(progress.view().busy_since, None);
        let work = busy();
        let started = progress.view().busy_since.expect("busy");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let wait = waiting_for_credit();
        assert!(progress.view().waiting_for_credit);
        drop(wait);
        let view = progress.view();
        assert!(!view.waiting_for_credit && view.busy_since.unwrap() > started, "restarted after the wait");
        drop(work);
        assert_eq!(progress.view().busy_since, None);
        source_read(10);
        watermark_advanced();
        source_read(5);
        let view = progress.view();
        assert_eq!((view.records, view.records_at_advance), (15, 10));
    }
}
