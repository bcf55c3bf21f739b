//! A harness for testing operators with scripted input (as Flink's operator test
//! harnesses): push records, watermarks and clock ticks, then read what came out, in order.
//!
//! ```
//! use sluice_dataflow::operators::MapOp;
//! use sluice_dataflow::testing::{Event, OperatorHarness};
//! let mut h = OperatorHarness::new(MapOp::new(|v: u32| v + 1));
//! h.push(1, 10);
//! h.watermark(10);
//! assert_eq!(h.take(), vec![Event::Record(2, 10), Event::Watermark(10)]);
//! ```

use crate::error::TaskResult;
use crate::message::Ending;
use crate::operator::{Input, Link, Operator, SubtaskInfo};
use crate::snapshot::{Barrier, BarrierStates, Restored, SubtaskState};
use sluice_types::{Record, Timestamp};
use std::sync::{Arc, Mutex};

/// Something an operator emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// A record with its timestamp.
    Record(T, Timestamp),
    /// A watermark passed on.
    Watermark(Timestamp),
    /// Idleness passed on.
    Idle(bool),
    /// A checkpoint barrier passed on.
    Barrier(u64),
    /// End of input passed on.
    End,
}

struct Capture<T>(Arc<Mutex<Vec<Event<T>>>>);

impl<T: Send> Capture<T> {
    fn push(&self, event: Event<T>) -> TaskResult {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
        Ok(())
    }
}

impl<T: Send> Input<T> for Capture<T> {
    fn batch(&mut self, batch: Vec<Record<T>>) -> TaskResult {
        for r in batch {
            self.push(Event::Record(r.value, r.time))?;
        }
        Ok(())
    }
    fn watermark(&mut self, watermark: Timestamp) -> TaskResult {
        self.push(Event::Watermark(watermark))
    }
    fn idle(&mut self, idle: bool) -> TaskResult {
        self.push(Event::Idle(idle))
    }
    fn processing_time(&mut self, _now: Timestamp) -> TaskResult {
        Ok(())
    }
    fn flush(&mut self) -> TaskResult {
        Ok(())
    }
    fn barrier(&mut self, barrier: Barrier, _states: &mut BarrierStates) -> TaskResult {
        self.push(Event::Barrier(barrier.id))
    }
    fn end(&mut self, _ending: Ending, _states: &mut BarrierStates) -> TaskResult {
        self.push(Event::End)
    }
}

/// Drives one operator instance; panics on errors (it is for tests).
pub struct OperatorHarness<In, Out> {
    link: Link<In, Out>,
    events: Arc<Mutex<Vec<Event<Out>>>>,
}

impl<In: Send + 'static, Out: Send + 'static> OperatorHarness<In, Out> {
    /// A harness around `operator`, as subtask 0 of 1.
    pub fn new(operator: impl Operator<In, Out> + 'static) -> Self {
        Self::restored(operator, None)
    }

    /// A harness around `operator` restored from `state` (as a restart would).
    pub fn restored(mut operator: impl Operator<In, Out> + 'static, state: Option<Restored>) -> Self {
        if let Some(state) = state {
            operator.restore(state);
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        let info = SubtaskInfo {
            operator: Arc::from("under-test"),
            state_id: Arc::from("under-test"),
            index: 0,
            parallelism: 1,
            max_parallelism: sluice_types::DEFAULT_MAX_PARALLELISM,
            batch_size: 1024,
            max_batch_bytes: crate::graph::DEFAULT_MAX_BATCH_BYTES,
            // As a job's default: a copy at the barrier, encoded when the test asks.
            asynchronous_snapshots: true,
        };
        let link = Link::new(Box::new(operator), Box::new(Capture(events.clone())), info);
        OperatorHarness { link, events }
    }

    /// Pushes one record.
    pub fn push(&mut self, value: In, time: Timestamp) {
        self.push_batch(vec![Record::new(value, time)]);
    }

    /// Pushes a batch, then flushes what the operator buffered.
    pub fn push_batch(&mut self, batch: Vec<Record<In>>) {
        self.link.batch(batch).expect("operator failed");
        self.link.flush().expect("operator failed");
    }

    /// Advances the watermark.
    pub fn watermark(&mut self, watermark: Timestamp) {
        self.link.watermark(watermark).expect("operator failed");
    }

    /// Advances processing time.
    pub fn processing_time(&mut self, now: Timestamp) {
        self.link.processing_time(now).expect("operator failed");
        self.link.flush().expect("operator failed");
    }

    /// Ends the input (it is exhausted); returns the final state.
    pub fn end(&mut self) -> Vec<SubtaskState> {
        self.end_with(Ending::Finished)
    }

    /// Ends the input as `ending` says; returns the final state.
    pub fn end_with(&mut self, ending: Ending) -> Vec<SubtaskState> {
        let mut states = BarrierStates::new();
        self.link.end(ending, &mut states).expect("operator failed");
        states.encode().expect("encoding the state failed")
    }

    /// Passes a checkpoint barrier; returns the operator's state at it.
    pub fn checkpoint(&mut self, id: u64) -> Vec<SubtaskState> {
        // A copy taken at the barrier is encoded here, as the task's encoder thread would.
        self.barrier(id).encode().expect("encoding the state failed")
    }

    /// Passes a checkpoint barrier; returns the operator's state as the task hands it on: a
    /// state the operator copied is not encoded yet ([`BarrierStates::encode`] does it, as
    /// the task's encoder thread would, whatever the operator did since).
    pub fn barrier(&mut self, id: u64) -> BarrierStates {
        let mut states = BarrierStates::new();
        self.link.barrier(Barrier { id, timestamp: 0 }, &mut states).expect("operator failed");
        states
    }

    /// Everything emitted since the last call.
    pub fn take(&mut self) -> Vec<Event<Out>> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The records emitted since the last call (dropping other events).
    pub fn take_records(&mut self) -> Vec<(Out, Timestamp)> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Event::Record(v, t) => Some((v, t)),
                _ => None,
            })
            .collect()
    }
}
