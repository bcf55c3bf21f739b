//! Operators and the chain they form inside a task.
//!
//! An [`Operator`] sees whole batches. Operators of one task are chained: each
//! [`Link`] owns its operator and an [`Output`] whose next stage is the following link,
//! a sink, or the exchange writer that sends batches to other tasks. A call travels down
//! the chain without any queue in between.

use crate::error::{TaskError, TaskResult};
use crate::message::Ending;
use crate::snapshot::{Barrier, BarrierSnapshot, BarrierStates, OperatorState, Restored, SubtaskState};
use sluice_types::{Record, Timestamp};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The current wall-clock time in milliseconds since the Unix epoch (processing time).
pub fn now_millis() -> Timestamp {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Timestamp).unwrap_or(0)
}

/// Where an operator subtask stands in the job.
#[derive(Clone, Debug)]
pub struct SubtaskInfo {
    /// Name of the operator (for errors and logs).
    pub operator: Arc<str>,
    /// The id its state is stored under: its uid, or its name when it has none.
    pub state_id: Arc<str>,
    /// Zero-based index of this subtask.
    pub index: usize,
    /// Number of subtasks of the operator.
    pub parallelism: usize,
    /// Number of key groups.
    pub max_parallelism: usize,
    /// Records per batch.
    pub batch_size: usize,
    /// Bytes per batch between tasks, at most ([`crate::JobConfig::max_batch_bytes`]).
    pub max_batch_bytes: usize,
    /// Whether the operator's state at a barrier may be a copy encoded later
    /// ([`crate::CheckpointConfig::asynchronous_snapshots`]).
    pub asynchronous_snapshots: bool,
}

/// The receiving end of a stage in a chain: the next operator, a sink or an exchange.
pub trait Input<T>: Send {
    /// A batch of records.
    fn batch(&mut self, batch: Vec<Record<T>>) -> TaskResult;
    /// The watermark advanced.
    fn watermark(&mut self, watermark: Timestamp) -> TaskResult;
    /// The stream became idle or active again.
    fn idle(&mut self, idle: bool) -> TaskResult;
    /// The wall clock advanced (a periodic tick).
    fn processing_time(&mut self, now: Timestamp) -> TaskResult;
    /// Send whatever is buffered (the task has nothing else to do right now).
    fn flush(&mut self) -> TaskResult;
    /// A checkpoint barrier: add this stage's state to `states`, then pass the barrier on.
    fn barrier(&mut self, barrier: Barrier, states: &mut BarrierStates) -> TaskResult;
    /// End of input: finish (if the input is exhausted, not when the job stops), add the
    /// final state to `states`, and pass the end on.
    fn end(&mut self, ending: Ending, states: &mut BarrierStates) -> TaskResult;
}

/// What an operator emits into: buffers single records into batches and passes batches on.
pub struct Output<T> {
    buffer: Vec<Record<T>>,
    batch_size: usize,
    next: Box<dyn Input<T>>,
    error: Option<TaskError>,
}

impl<T: Send + 'static> Output<T> {
    /// An output feeding `next`, batching single records `batch_size` at a time.
    pub fn new(next: Box<dyn Input<T>>, batch_size: usize) -> Self {
        Output { buffer: Vec::new(), batch_size: batch_size.max(1), next, error: None }
    }

    /// Emits one record at event time `time`.
    #[inline]
    pub fn emit(&mut self, value: T, time: Timestamp) {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(self.batch_size);
        }
        self.buffer.push(Record { time, value });
        if self.buffer.len() >= self.batch_size {
            self.flush_buffer();
        }
    }

    /// Emits a whole batch (after whatever single records are buffered).
    pub fn emit_batch(&mut self, batch: Vec<Record<T>>) {
        self.flush_buffer();
        if !batch.is_empty() && self.error.is_none() {
            if let Err(e) = self.next.batch(batch) {
                self.error = Some(e);
            }
        }
    }

    fn flush_buffer(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.buffer);
        if self.error.is_none() {
            if let Err(e) = self.next.batch(batch) {
                self.error = Some(e);
            }
        }
    }

    /// Passes buffered records on and reports the first error met downstream.
    fn settle(&mut self) -> TaskResult {
        self.flush_buffer();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The next stage, after the buffer has been passed on.
    fn next(&mut self) -> TaskResult<&mut Box<dyn Input<T>>> {
        self.settle()?;
        Ok(&mut self.next)
    }
}

/// A stateless or stateful step of a pipeline, fed batch by batch.
///
/// Event-time operators fire their timers in [`Operator::on_watermark`]; the chain forwards
/// the watermark after it returns, so results always precede the watermark that caused them.
pub trait Operator<In, Out>: Send {
    /// A batch of input records.
    fn process_batch(&mut self, batch: Vec<Record<In>>, out: &mut Output<Out>);
    /// The input watermark advanced to `watermark`.
    fn on_watermark(&mut self, _watermark: Timestamp, _out: &mut Output<Out>) {}
    /// The wall clock advanced to `now`.
    fn on_processing_time(&mut self, _now: Timestamp, _out: &mut Output<Out>) {}
    /// End of input (after the final watermark of a bounded stream).
    fn finish(&mut self, _out: &mut Output<Out>) {}
    /// The operator's state at a checkpoint barrier (`None`: it has none).
    fn snapshot(&mut self, _max_parallelism: usize) -> Option<OperatorState> {
        None
    }
    /// The operator's state at a checkpoint barrier, where the stream waits for it. An
    /// operator with much state returns [`BarrierSnapshot::Copied`]: a copy of its maps
    /// (cheap next to encoding them) and the function that encodes the copy on another
    /// thread, so the stream pauses only for the copy. By default, [`Operator::snapshot`],
    /// encoded at once. The final state at the end of input is always [`Operator::snapshot`].
    fn snapshot_at_barrier(&mut self, max_parallelism: usize) -> Option<BarrierSnapshot> {
        self.snapshot(max_parallelism).map(BarrierSnapshot::Encoded)
    }
    /// Takes over state from a checkpoint, before the first record.
    fn restore(&mut self, _state: Restored) {}
}

/// Creates the operator instance of one subtask.
pub type OperatorFactory<In, Out> = Arc<dyn Fn(&SubtaskInfo) -> Box<dyn Operator<In, Out>> + Send + Sync>;

/// Runs `f`, turning a panic into an error that names the operator and the subtask.
pub fn guard_panic<R>(info: &SubtaskInfo, f: impl FnOnce() -> R) -> TaskResult<R> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match payload.downcast::<crate::error::Unrecoverable>() {
        // Restored state of another type, a value that never encodes: no restart helps.
        Ok(failure) => {
            TaskError::Unrecoverable { operator: info.operator.to_string(), subtask: info.index, message: failure.0 }
        }
        Err(payload) => TaskError::Panicked {
            operator: info.operator.to_string(),
            subtask: info.index,
            parallelism: info.parallelism,
            message: panic_message(&*payload),
        },
    })
}

/// The message of a panic's payload (`panic!` with a string or a format).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// One operator in a chain, with its output.
pub struct Link<In, Out> {
    operator: Box<dyn Operator<In, Out>>,
    output: Output<Out>,
    info: SubtaskInfo,
}

impl<In, Out: Send + 'static> Link<In, Out> {
    /// Chains `operator` in front of `next`.
    pub fn new(operator: Box<dyn Operator<In, Out>>, next: Box<dyn Input<Out>>, info: SubtaskInfo) -> Self {
        let output = Output::new(next, info.batch_size);
        Link { operator, output, info }
    }
}

impl<In: Send, Out: Send + 'static> Input<In> for Link<In, Out> {
    fn batch(&mut self, batch: Vec<Record<In>>) -> TaskResult {
        let (op, out) = (&mut self.operator, &mut self.output);
        guard_panic(&self.info, || op.process_batch(batch, out))?;
        match self.output.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn watermark(&mut self, watermark: Timestamp) -> TaskResult {
        let (op, out) = (&mut self.operator, &mut self.output);
        guard_panic(&self.info, || op.on_watermark(watermark, out))?;
        self.output.next()?.watermark(watermark)
    }

    fn idle(&mut self, idle: bool) -> TaskResult {
        self.output.next()?.idle(idle)
    }

    fn processing_time(&mut self, now: Timestamp) -> TaskResult {
        let (op, out) = (&mut self.operator, &mut self.output);
        guard_panic(&self.info, || op.on_processing_time(now, out))?;
        self.output.next()?.processing_time(now)
    }

    fn flush(&mut self) -> TaskResult {
        self.output.next()?.flush()
    }

    fn barrier(&mut self, barrier: Barrier, states: &mut BarrierStates) -> TaskResult {
        self.output.settle()?;
        let (op, max_parallelism) = (&mut self.operator, self.info.max_parallelism);
        let (operator, subtask) = (self.info.state_id.to_string(), self.info.index);
        let asynchronous = self.info.asynchronous_snapshots;
        let snapshot = guard_panic(&self.info, || match asynchronous {
            true => op.snapshot_at_barrier(max_parallelism),
            false => op.snapshot(max_parallelism).map(BarrierSnapshot::Encoded),
        })?;
        match snapshot {
            Some(BarrierSnapshot::Encoded(state)) => states.push(SubtaskState { operator, subtask, state }),
            Some(BarrierSnapshot::Copied(encode)) => {
                let info = self.info.clone();
                states.push_copy(operator, subtask, Box::new(move || guard_panic(&info, encode)));
            }
            None => {}
        }
        self.output.next.barrier(barrier, states)
    }

    fn end(&mut self, ending: Ending, states: &mut BarrierStates) -> TaskResult {
        if ending == Ending::Finished {
            let (op, out) = (&mut self.operator, &mut self.output);
            guard_panic(&self.info, || op.finish(out))?;
        }
        self.output.settle()?;
        let (op, max_parallelism) = (&mut self.operator, self.info.max_parallelism);
        if let Some(state) = guard_panic(&self.info, || op.snapshot(max_parallelism))? {
            states.push(SubtaskState { operator: self.info.state_id.to_string(), subtask: self.info.index, state });
        }
        self.output.next.end(ending, states)
    }
}
