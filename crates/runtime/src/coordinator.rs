//! The checkpoint coordinator as a state machine: it is fed events (a task's report, an
//! upload's or a commit's outcome, a savepoint request, the passing of time) and answers
//! with actions for its driver to carry out (send barriers, upload a checkpoint, commit
//! its transactions, answer savepoint waiters, fail the job). It owns no thread, channel,
//! clock or store, so every rule below is unit-tested with scripted events; the local
//! runtime drives it from its attempt loop, and a cluster coordinator can drive the same
//! machine from remote reports.
//!
//! The rules, as Flink's `CheckpointCoordinator` has them:
//! - one checkpoint in flight at a time (pending, uploading or committing), triggered at
//!   the interval, never sooner than `min_pause` after the previous one ended;
//! - a checkpoint completes when every task that had not finished acknowledged it (a task
//!   that finishes before passing the barrier acknowledges with its final state);
//! - acknowledgements of an abandoned checkpoint (timed out, declined, failed upload) are
//!   late: their sink transactions were pre-committed, so they are carried into the next
//!   checkpoint to be committed with it, never dropped;
//! - more failed checkpoints in a row than tolerated fail the job;
//! - a commit that fails is retried a few times, then the job fails (a restore commits
//!   the completed checkpoint's transactions again);
//! - when every task has finished, a final checkpoint holds their last states.

use sluice_dataflow::snapshot::{Barrier, OperatorState, SubtaskState};
use sluice_dataflow::TaskReport;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Commit attempts of one checkpoint before the job fails (the restore tries again).
pub(crate) const COMMIT_ATTEMPTS: u32 = 3;
/// Wait before the first commit retry; it doubles with each further one.
pub(crate) const COMMIT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// When checkpoints are taken and how many may fail.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    pub interval: Duration,
    pub min_pause: Duration,
    pub timeout: Duration,
    pub tolerable_failures: u32,
}

/// A piece of a checkpoint as the coordinator tracks it: a subtask's state (local mode), or
/// a reference to one that its process holds (a job spread over processes). Only whether
/// it is a sink's pre-committed transaction matters here.
pub(crate) trait Part: Clone + PartialEq + std::fmt::Debug {
    /// Whether it is a sink's pre-committed transaction (never dropped: carried into the
    /// next checkpoint if its own is abandoned).
    fn is_committable(&self) -> bool;
}

impl Part for SubtaskState {
    fn is_committable(&self) -> bool {
        matches!(self.state, OperatorState::Committable(_))
    }
}

/// What the driver is asked to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Action<P = SubtaskState> {
    /// Send this barrier to these source tasks.
    Trigger { barrier: Barrier, sources: Vec<usize> },
    /// Write checkpoint `id` (its state files, then its manifest), then report
    /// [`CheckpointCoordinator::on_uploaded`]. `finished`: the input ended (final one).
    Upload { id: u64, finished: bool, states: Vec<P> },
    /// Checkpoint `id` is durable: commit its sinks' transactions, then report
    /// [`CheckpointCoordinator::on_committed`].
    Commit { id: u64, states: Vec<P> },
    /// Checkpoint `id` is complete (written); a savepoint is kept now.
    Completed { id: u64, savepoint: bool, bytes: u64, took: Duration },
    /// Checkpoint `id` failed; a savepoint's waiters get the reason.
    Failed { id: u64, savepoint: bool, reason: String },
    /// A savepoint was asked for but cannot be taken.
    SavepointRefused(String),
    /// The job must fail.
    FailJob(String),
}

#[derive(Debug)]
struct Pending<P> {
    id: u64,
    savepoint: bool,
    started: Instant,
    awaiting: BTreeSet<usize>,
    states: Vec<P>,
}

#[derive(Debug)]
struct Uploading<P> {
    id: u64,
    savepoint: bool,
    started: Instant,
    states: Vec<P>,
}

#[derive(Debug)]
struct Committing<P> {
    id: u64,
    states: Vec<P>,
    attempts: u32,
    /// Set while waiting to retry: when to ask again.
    retry_at: Option<Instant>,
    /// Whether this is the final checkpoint's commit.
    last: bool,
}

/// The coordinator of one attempt's checkpoints.
#[derive(Debug)]
pub(crate) struct CheckpointCoordinator<P: Part = SubtaskState> {
    schedule: Schedule,
    tasks: usize,
    sources: Vec<usize>,
    next_id: u64,
    finished: BTreeMap<usize, Vec<P>>,
    pending: Option<Pending<P>>,
    uploading: Option<Uploading<P>>,
    committing: Option<Committing<P>>,
    /// Pre-committed transactions of abandoned checkpoints, for the next one.
    carried: Vec<P>,
    failed_in_a_row: u32,
    last_trigger: Instant,
    last_done: Instant,
    savepoint_requested: bool,
    stopping: bool,
    final_state: FinalState,
    final_started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinalState {
    NotStarted,
    Uploading,
    Committing,
    Done,
}

impl CheckpointCoordinator<SubtaskState> {
    /// A task passed a barrier (`checkpoint: Some`) or finished (`None`).
    pub(crate) fn on_report(&mut self, report: TaskReport, now: Instant, out: &mut Vec<Action>) {
        let TaskReport { task, checkpoint, states } = report;
        self.on_parts(task, checkpoint, states, now, out);
    }
}

impl<P: Part> CheckpointCoordinator<P> {
    /// A coordinator of `tasks` tasks, of which `sources` receive barriers; checkpoint ids
    /// start at `next_id` (they grow across attempts).
    pub(crate) fn new(schedule: Schedule, tasks: usize, sources: Vec<usize>, next_id: u64, now: Instant) -> Self {
        CheckpointCoordinator {
            schedule,
            tasks,
            sources,
            next_id,
            finished: BTreeMap::new(),
            pending: None,
            uploading: None,
            committing: None,
            carried: Vec::new(),
            failed_in_a_row: 0,
            last_trigger: now,
            last_done: now,
            savepoint_requested: false,
            stopping: false,
            final_state: FinalState::NotStarted,
            final_started: now,
        }
    }

    /// The id the next checkpoint gets.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Whether every task has reported that it finished.
    pub(crate) fn all_finished(&self) -> bool {
        self.finished.len() >= self.tasks
    }

    /// Whether the final checkpoint is written and committed.
    pub(crate) fn done(&self) -> bool {
        self.final_state == FinalState::Done
    }

    /// The sources are stopping (cancel, abort): trigger nothing more.
    pub(crate) fn stop(&mut self) {
        self.stopping = true;
    }

    /// A savepoint is wanted: the next checkpoint is one, taken as soon as possible.
    pub(crate) fn request_savepoint(&mut self) {
        self.savepoint_requested = true;
    }

    /// Task `task` passed barrier `checkpoint` (`Some`) or finished (`None`), with these
    /// parts of its state.
    pub(crate) fn on_parts(
        &mut self,
        task: usize,
        checkpoint: Option<u64>,
        states: Vec<P>,
        now: Instant,
        out: &mut Vec<Action<P>>,
    ) {
        match checkpoint {
            Some(id) => match self.pending.as_mut().filter(|p| p.id == id && p.awaiting.contains(&task)) {
                Some(p) => {
                    p.awaiting.remove(&task);
                    p.states.extend(states);
                }
                // A late acknowledgement of an abandoned checkpoint (or a duplicate).
                None => carry_committables(&mut self.carried, states),
            },
            None => {
                if let Some(p) = self.pending.as_mut() {
                    // It ended before passing the barrier: its final state is its state at it.
                    if p.awaiting.remove(&task) {
                        p.states.extend(states.iter().cloned());
                    }
                }
                self.finished.insert(task, states);
            }
        }
        self.advance(now, out);
    }

    /// A task declined checkpoint `id` (it cannot take it): the checkpoint is abandoned.
    /// Local tasks never decline (a failed snapshot fails the task); a job process of a
    /// cluster declines a barrier of an attempt it does not run.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn on_declined(&mut self, task: usize, id: u64, reason: &str, now: Instant, out: &mut Vec<Action<P>>) {
        if let Some(p) = self.pending.take_if(|p| p.id == id) {
            self.abandon(p, format!("task {task} declined it: {reason}"), now, out);
        }
    }

    /// The upload of checkpoint `id` ended: `Ok(bytes written)` or the error.
    pub(crate) fn on_uploaded(&mut self, id: u64, result: Result<u64, String>, now: Instant, out: &mut Vec<Action<P>>) {
        if self.final_state == FinalState::Uploading {
            match result {
                Ok(bytes) => {
                    self.final_state = FinalState::Committing;
                    out.push(Action::Completed { id, savepoint: false, bytes, took: now - self.final_started });
                    let states = std::mem::take(&mut self.carried);
                    self.start_commit(id, states, true, out);
                }
                Err(e) => out.push(Action::FailJob(format!("the final checkpoint {id} could not be written: {e}"))),
            }
            return;
        }
        let Some(u) = self.uploading.take_if(|u| u.id == id) else { return };
        self.last_done = now;
        match result {
            Ok(bytes) => {
                self.failed_in_a_row = 0;
                out.push(Action::Completed { id, savepoint: u.savepoint, bytes, took: now - u.started });
                self.start_commit(id, u.states, false, out);
            }
            Err(e) => {
                carry_committables(&mut self.carried, u.states);
                self.failed(id, u.savepoint, e, out);
            }
        }
        self.advance(now, out);
    }

    /// Checkpoint `id` was written, but the leading coordinator did not record it (with
    /// coordinator HA: there is no leader, or it refused): it is not complete. Its sinks'
    /// transactions carry over to the next checkpoint, and it does not count against the
    /// tolerated failures: a job goes on processing while no coordinator leads.
    pub(crate) fn on_unrecorded(&mut self, id: u64, reason: String, now: Instant, out: &mut Vec<Action<P>>) {
        if self.final_state == FinalState::Uploading {
            out.push(Action::FailJob(format!("the final checkpoint {id} was not recorded as complete: {reason}")));
            return;
        }
        let Some(u) = self.uploading.take_if(|u| u.id == id) else { return };
        self.last_done = now;
        carry_committables(&mut self.carried, u.states);
        out.push(Action::Failed { id, savepoint: u.savepoint, reason: format!("not recorded as complete: {reason}") });
        self.advance(now, out);
    }

    /// The commit of checkpoint `id` ended.
    pub(crate) fn on_committed(&mut self, id: u64, result: Result<(), String>, now: Instant, out: &mut Vec<Action<P>>) {
        let Some(c) = self.committing.as_mut().filter(|c| c.id == id && c.retry_at.is_none()) else { return };
        match result {
            Ok(()) => {
                if c.last {
                    self.final_state = FinalState::Done;
                }
                self.committing = None;
            }
            Err(e) if c.attempts >= COMMIT_ATTEMPTS => {
                out.push(Action::FailJob(format!("committing checkpoint {id} failed {} times, last: {e}", c.attempts)));
            }
            Err(e) => {
                let delay = COMMIT_RETRY_DELAY * 2u32.pow(c.attempts - 1);
                tracing::warn!(checkpoint = id, attempt = c.attempts, error = %e, "commit failed; retrying in {delay:?}");
                c.retry_at = Some(now + delay);
            }
        }
        self.advance(now, out);
    }

    /// Time passed: retry commits, abandon a checkpoint that timed out, trigger the next.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<Action<P>>) {
        self.advance(now, out);
    }

    /// Every task has finished and nothing is in flight: write the final checkpoint,
    /// holding every task's last state and the transactions carried from abandoned
    /// checkpoints. `finished_input`: the input ended (not a stop).
    pub(crate) fn finish(&mut self, finished_input: bool, now: Instant, out: &mut Vec<Action<P>>) {
        if self.final_state != FinalState::NotStarted {
            return;
        }
        debug_assert!(self.all_finished() && self.is_idle());
        let mut states: Vec<P> = self.finished.values().flatten().cloned().collect();
        carry_committables(&mut states, std::mem::take(&mut self.carried));
        let id = self.next_id;
        self.next_id += 1;
        self.final_state = FinalState::Uploading;
        self.final_started = now;
        // The committables are kept for the commit once the upload is written.
        self.carried = states.iter().filter(|s| s.is_committable()).cloned().collect();
        out.push(Action::Upload { id, finished: finished_input, states });
    }

    /// The finished tasks' last states (for a job without checkpoints, whose sinks commit
    /// their last transactions without one).
    pub(crate) fn take_finished_states(&mut self) -> Vec<P> {
        std::mem::take(&mut self.finished).into_values().flatten().collect()
    }

    /// Whether no checkpoint is pending, uploading or committing.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_none() && self.uploading.is_none() && self.committing.is_none()
    }

    fn start_commit(&mut self, id: u64, states: Vec<P>, last: bool, out: &mut Vec<Action<P>>) {
        let states: Vec<P> = states.into_iter().filter(|s| s.is_committable()).collect();
        out.push(Action::Commit { id, states: states.clone() });
        self.committing = Some(Committing { id, states, attempts: 1, retry_at: None, last });
    }

    fn advance(&mut self, now: Instant, out: &mut Vec<Action<P>>) {
        if let Some(c) = self.committing.as_mut() {
            if c.retry_at.is_some_and(|at| now >= at) {
                c.retry_at = None;
                c.attempts += 1;
                out.push(Action::Commit { id: c.id, states: c.states.clone() });
            }
        }
        if let Some(p) = self.pending.take() {
            if p.awaiting.is_empty() {
                out.push(Action::Upload { id: p.id, finished: false, states: p.states.clone() });
                self.uploading =
                    Some(Uploading { id: p.id, savepoint: p.savepoint, started: p.started, states: p.states });
            } else if now.duration_since(p.started) > self.schedule.timeout {
                let reason = format!("not complete within {:?}", self.schedule.timeout);
                self.abandon(p, reason, now, out);
            } else {
                self.pending = Some(p);
            }
        }
        let sources_running = self.sources.iter().any(|t| !self.finished.contains_key(t));
        if self.savepoint_requested && (!sources_running || self.stopping) {
            self.savepoint_requested = false;
            out.push(Action::SavepointRefused(
                if self.stopping { "the job is stopping" } else { "the job's sources have finished" }.into(),
            ));
        }
        let due = self.savepoint_requested
            || (now.duration_since(self.last_trigger) >= self.schedule.interval
                && now.duration_since(self.last_done) >= self.schedule.min_pause);
        if self.is_idle() && due && sources_running && !self.stopping {
            let id = self.next_id;
            self.next_id += 1;
            self.last_trigger = now;
            let awaiting: BTreeSet<usize> = (0..self.tasks).filter(|t| !self.finished.contains_key(t)).collect();
            // Finished tasks take part with their final states.
            let mut states: Vec<P> = self.finished.values().flatten().cloned().collect();
            states.extend(std::mem::take(&mut self.carried));
            let savepoint = std::mem::take(&mut self.savepoint_requested);
            let sources: Vec<usize> = self.sources.iter().copied().filter(|t| !self.finished.contains_key(t)).collect();
            let barrier = Barrier { id, timestamp: sluice_dataflow::now_millis() };
            out.push(Action::Trigger { barrier, sources });
            self.pending = Some(Pending { id, savepoint, started: now, awaiting, states });
        }
    }

    fn abandon(&mut self, p: Pending<P>, reason: String, now: Instant, out: &mut Vec<Action<P>>) {
        carry_committables(&mut self.carried, p.states);
        self.last_done = now;
        self.failed(p.id, p.savepoint, reason, out);
    }

    fn failed(&mut self, id: u64, savepoint: bool, reason: String, out: &mut Vec<Action<P>>) {
        self.failed_in_a_row += 1;
        out.push(Action::Failed { id, savepoint, reason: reason.clone() });
        if self.failed_in_a_row > self.schedule.tolerable_failures {
            out.push(Action::FailJob(format!(
                "{} checkpoint(s) failed in a row, more than the {} tolerated (detector: checkpoint failures; the \
                 last: {reason})",
                self.failed_in_a_row, self.schedule.tolerable_failures
            )));
        }
    }
}

/// Keeps the sink transactions among `states` (pre-committed, so they must be committed
/// with a later checkpoint and recorded in it for a restore to commit).
fn carry_committables<P: Part>(carried: &mut Vec<P>, states: impl IntoIterator<Item = P>) {
    for state in states {
        if state.is_committable() && !carried.contains(&state) {
            carried.push(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn schedule() -> Schedule {
        Schedule { interval: SECOND, min_pause: Duration::ZERO, timeout: 10 * SECOND, tolerable_failures: 1 }
    }

    /// Tasks 0 and 1 are sources, 2 is a sink.
    fn coordinator(t0: Instant) -> CheckpointCoordinator<SubtaskState> {
        CheckpointCoordinator::new(schedule(), 3, vec![0, 1], 1, t0)
    }

    fn keyed(task: usize) -> SubtaskState {
        SubtaskState {
            operator: format!("op{task}"),
            subtask: 0,
            state: OperatorState::Keyed([(task as u32, vec![1])].into()),
        }
    }

    fn txn(name: &str) -> SubtaskState {
        SubtaskState {
            operator: "sink".into(),
            subtask: 0,
            state: OperatorState::Committable(name.as_bytes().to_vec()),
        }
    }

    fn ack(task: usize, id: u64, states: Vec<SubtaskState>) -> TaskReport {
        TaskReport { task, checkpoint: Some(id), states }
    }

    fn end(task: usize, states: Vec<SubtaskState>) -> TaskReport {
        TaskReport { task, checkpoint: None, states }
    }

    /// Ticks at `at` and returns the id of the barrier it triggered.
    fn trigger(c: &mut CheckpointCoordinator<SubtaskState>, at: Instant) -> u64 {
        let mut out = Vec::new();
        c.tick(at, &mut out);
        match out.as_slice() {
            [Action::Trigger { barrier, sources }] => {
                assert_eq!(sources, &vec![0, 1]);
                barrier.id
            }
            other => panic!("expected one trigger, got {other:?}"),
        }
    }

    fn committed_names(states: &[SubtaskState]) -> Vec<String> {
        let mut names: Vec<String> = states
            .iter()
            .filter_map(|s| match &s.state {
                OperatorState::Committable(b) => Some(String::from_utf8(b.clone()).unwrap()),
                _ => None,
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_checkpoint_triggers_at_the_interval_and_completes_on_acks_in_any_order() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        c.tick(t0 + SECOND / 2, &mut out);
        assert!(out.is_empty(), "not due yet");
        let id = trigger(&mut c, t0 + SECOND);
        assert_eq!(id, 1);
        // The sink acknowledges before the sources: order does not matter.
        c.on_report(ack(2, id, vec![txn("a")]), t0 + SECOND, &mut out);
        c.on_report(ack(1, id, vec![keyed(1)]), t0 + SECOND, &mut out);
        assert!(out.is_empty(), "task 0 has not acknowledged");
        c.on_report(ack(0, id, vec![keyed(0)]), t0 + SECOND, &mut out);
        let [Action::Upload { id: 1, finished: false, states }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(states.len(), 3);
        out.clear();
        // Nothing new is triggered while it uploads, even when the interval passed.
        c.tick(t0 + 3 * SECOND, &mut out);
        assert!(out.is_empty());
        c.on_uploaded(1, Ok(100), t0 + 3 * SECOND, &mut out);
        assert!(matches!(out[0], Action::Completed { id: 1, savepoint: false, bytes: 100, .. }));
        let Action::Commit { id: 1, states } = &out[1] else { panic!("{out:?}") };
        assert_eq!(committed_names(states), vec!["a"]);
        assert_eq!(out.len(), 2, "nothing is triggered while a commit runs: {out:?}");
        out.clear();
        c.on_committed(1, Ok(()), t0 + 3 * SECOND, &mut out);
        // Idle again and past the interval: the next one starts at once.
        assert!(matches!(out.as_slice(), [Action::Trigger { barrier: Barrier { id: 2, .. }, .. }]));
    }

    #[test]
    fn a_failed_upload_carries_its_transactions_into_the_next_checkpoint() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        let id = trigger(&mut c, t0 + SECOND);
        for task in 0..3 {
            c.on_report(ack(task, id, if task == 2 { vec![txn("a")] } else { vec![keyed(task)] }), t0, &mut out);
        }
        out.clear();
        c.on_uploaded(id, Err("disk full".into()), t0 + SECOND, &mut out);
        assert_eq!(out, vec![Action::Failed { id, savepoint: false, reason: "disk full".into() }]);
        out.clear();
        let next = trigger(&mut c, t0 + 2 * SECOND);
        for task in 0..3 {
            c.on_report(ack(task, next, if task == 2 { vec![txn("b")] } else { vec![keyed(task)] }), t0, &mut out);
        }
        let Action::Upload { states, .. } = &out[0] else { panic!("{out:?}") };
        assert_eq!(committed_names(states), vec!["a", "b"], "the failed one's transaction is recorded too");
        out.clear();
        c.on_uploaded(next, Ok(1), t0 + 2 * SECOND, &mut out);
        let Action::Commit { states, .. } = &out[1] else { panic!("{out:?}") };
        assert_eq!(committed_names(states), vec!["a", "b"]);
    }

    #[test]
    fn a_declined_checkpoint_is_abandoned_and_its_late_acks_are_carried() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        let id = trigger(&mut c, t0 + SECOND);
        c.on_report(ack(0, id, vec![keyed(0)]), t0 + SECOND, &mut out);
        c.on_declined(1, id, "not ready", t0 + SECOND, &mut out);
        assert!(matches!(&out[0], Action::Failed { id: 1, reason, .. } if reason.contains("declined")));
        out.clear();
        // The sink's acknowledgement of the abandoned checkpoint arrives late.
        c.on_report(ack(2, id, vec![txn("late")]), t0 + SECOND, &mut out);
        assert!(out.is_empty());
        let next = trigger(&mut c, t0 + 2 * SECOND);
        assert_eq!(next, 2);
        for task in 0..3 {
            c.on_report(ack(task, next, vec![keyed(task)]), t0 + 2 * SECOND, &mut out);
        }
        let Action::Upload { states, .. } = &out[0] else { panic!("{out:?}") };
        assert_eq!(committed_names(states), vec!["late"]);
    }

    #[test]
    fn a_timed_out_checkpoint_counts_as_failed_and_too_many_in_a_row_fail_the_job() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        let first = trigger(&mut c, t0 + SECOND);
        c.tick(t0 + 12 * SECOND, &mut out);
        assert!(matches!(&out[0], Action::Failed { id, .. } if *id == first));
        assert!(!out.iter().any(|a| matches!(a, Action::FailJob(_))), "one failure is tolerated");
        // Abandoned at 12 s and past the interval: the next starts in the same tick.
        let Some(Action::Trigger { barrier, .. }) = out.get(1) else { panic!("{out:?}") };
        let second = barrier.id;
        out.clear();
        c.on_declined(0, second, "no", t0 + 13 * SECOND, &mut out);
        assert!(matches!(out.last(), Some(Action::FailJob(m)) if m.contains("2 checkpoint(s) failed in a row")));
    }

    #[test]
    fn a_failed_commit_is_retried_after_a_delay_then_fails_the_job() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        let id = trigger(&mut c, t0 + SECOND);
        for task in 0..3 {
            c.on_report(ack(task, id, vec![txn(&format!("t{task}"))]), t0 + SECOND, &mut out);
        }
        c.on_uploaded(id, Ok(1), t0 + SECOND, &mut out);
        out.clear();
        let mut now = t0 + SECOND;
        for attempt in 1..COMMIT_ATTEMPTS {
            c.on_committed(id, Err("broker away".into()), now, &mut out);
            assert!(out.is_empty(), "attempt {attempt}: a retry waits: {out:?}");
            c.tick(now + COMMIT_RETRY_DELAY / 2, &mut out);
            assert!(out.is_empty());
            now += COMMIT_RETRY_DELAY * 2u32.pow(attempt - 1);
            c.tick(now, &mut out);
            let [Action::Commit { id: again, states }] = out.as_slice() else { panic!("{out:?}") };
            assert_eq!((*again, states.len()), (id, 3));
            out.clear();
        }
        // Success of a retry ends it...
        let mut ok = coordinator(t0);
        ok.committing = Some(Committing { id: 9, states: vec![], attempts: 2, retry_at: None, last: false });
        ok.on_committed(9, Ok(()), now, &mut out);
        assert!(ok.committing.is_none());
        out.clear();
        // ...and the last allowed failure fails the job.
        c.on_committed(id, Err("broker away".into()), now, &mut out);
        assert!(matches!(out.as_slice(), [Action::FailJob(m)] if m.contains("failed 3 times")));
    }

    #[test]
    fn tasks_that_finish_before_the_barrier_acknowledge_with_their_final_state() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        c.on_report(end(0, vec![keyed(0)]), t0, &mut out);
        let id = {
            c.tick(t0 + SECOND, &mut out);
            let [Action::Trigger { barrier, sources }] = out.as_slice() else { panic!("{out:?}") };
            assert_eq!(sources, &vec![1], "a finished source gets no barrier");
            barrier.id
        };
        out.clear();
        c.on_report(ack(1, id, vec![keyed(1)]), t0 + SECOND, &mut out);
        c.on_report(end(2, vec![txn("last")]), t0 + SECOND, &mut out);
        let [Action::Upload { states, .. }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(states.len(), 3, "the finished source's state is part of it");
    }

    #[test]
    fn the_final_checkpoint_holds_every_last_state_and_carried_transactions() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        let id = trigger(&mut c, t0 + SECOND);
        c.on_report(ack(2, id, vec![txn("a")]), t0, &mut out);
        c.stop();
        c.tick(t0 + 20 * SECOND, &mut out); // times out: "a" is carried
        assert!(matches!(out.as_slice(), [Action::Failed { .. }]), "and no next one is triggered: {out:?}");
        out.clear();
        for task in 0..3 {
            c.on_report(end(task, if task == 2 { vec![txn("b")] } else { vec![keyed(task)] }), t0, &mut out);
        }
        assert!(out.is_empty(), "a stopping job triggers nothing: {out:?}");
        assert!(c.all_finished() && c.is_idle());
        c.finish(false, t0, &mut out);
        let [Action::Upload { id: last, finished: false, states }] = out.as_slice() else { panic!("{out:?}") };
        let last = *last;
        assert_eq!(states.len(), 4);
        assert_eq!(committed_names(states), vec!["a", "b"]);
        out.clear();
        c.on_uploaded(last, Ok(10), t0, &mut out);
        let [Action::Completed { bytes: 10, .. }, Action::Commit { states, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(committed_names(states), vec!["a", "b"]);
        out.clear();
        assert!(!c.done());
        c.on_committed(last, Ok(()), t0, &mut out);
        assert!(c.done());
    }

    #[test]
    fn a_savepoint_is_taken_at_once_and_refused_once_the_sources_finished() {
        let t0 = Instant::now();
        let mut c = coordinator(t0);
        let mut out = Vec::new();
        c.request_savepoint();
        c.tick(t0 + Duration::from_millis(1), &mut out);
        assert!(matches!(out.as_slice(), [Action::Trigger { .. }]), "no waiting for the interval");
        out.clear();
        for task in 0..3 {
            c.on_report(ack(task, 1, vec![keyed(task)]), t0, &mut out);
        }
        out.clear();
        c.on_uploaded(1, Ok(5), t0, &mut out);
        assert!(matches!(out[0], Action::Completed { id: 1, savepoint: true, .. }));
        out.clear();
        c.on_committed(1, Ok(()), t0, &mut out);
        c.on_report(end(0, vec![]), t0, &mut out);
        c.on_report(end(1, vec![]), t0, &mut out);
        c.request_savepoint();
        c.tick(t0, &mut out);
        assert_eq!(out, vec![Action::SavepointRefused("the job's sources have finished".into())]);
    }
}
