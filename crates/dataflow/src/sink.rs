//! Sinks: the writer trait connectors implement and the adapter that ends a chain in one.

use crate::error::{TaskError, TaskResult};
use crate::graph::JobConfig;
use crate::message::Ending;
use crate::operator::{guard_panic, Input, SubtaskInfo};
use crate::snapshot::{Barrier, BarrierStates, OperatorState, SubtaskState};
use sluice_types::{Record, Timestamp};
use std::io;

/// Where a stream ends. Each sink subtask gets its own writer.
pub trait Sink<T>: Send + Sync + 'static {
    /// A short name for errors and logs.
    fn name(&self) -> String;
    /// The writer of subtask `index` of `parallelism`.
    fn create_writer(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SinkWriter<T>>>;
    /// Checks the sink's settings against the job's before anything runs (for example a
    /// transaction timeout against the checkpoint interval); the error names the fix.
    fn validate(&self, _config: &JobConfig) -> Result<(), String> {
        Ok(())
    }
    /// Makes a pre-committed transaction visible: called once the checkpoint holding it is
    /// complete, and again after a restart, so it must be idempotent.
    fn commit(&self, _committable: &[u8]) -> io::Result<()> {
        Ok(())
    }
    /// Another process committed this pre-committed transaction of one of this process's
    /// writers (in a job spread over processes, process 0 commits every sink's), so the
    /// writer's process can free what it kept for it (a Kafka sink's producer). Called in
    /// the writer's process, after the commit; the default keeps nothing to free.
    fn release(&self, _committable: &[u8]) {}
    /// Called before a (re)started job writes: abort whatever earlier attempts left behind
    /// except the transactions in `keep` (those of the checkpoint restored from, which the
    /// runtime commits).
    fn recover(&self, _keep: &[Vec<u8>]) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one sink subtask's records.
pub trait SinkWriter<T>: Send {
    /// Writes a batch.
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> io::Result<()>;
    /// The watermark reached the sink.
    fn on_watermark(&mut self, _watermark: Timestamp) -> io::Result<()> {
        Ok(())
    }
    /// Makes what was written visible (called when the task has nothing else to do).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The input has ended: write out everything.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
    /// At a checkpoint barrier (`Some(id)`) or after [`SinkWriter::finish`] (`None`): make
    /// what was written durable but not yet visible, and return what commits it (phase one
    /// of a two-phase commit). Sinks without transactions flush and return `None`.
    fn pre_commit(&mut self, _checkpoint: Option<u64>) -> io::Result<Option<Vec<u8>>> {
        self.flush()?;
        Ok(None)
    }
}

/// Ends a chain in a sink writer.
pub struct SinkInput<T> {
    writer: Box<dyn SinkWriter<T>>,
    info: SubtaskInfo,
}

impl<T> SinkInput<T> {
    /// Wraps `writer`.
    pub fn new(writer: Box<dyn SinkWriter<T>>, info: SubtaskInfo) -> Self {
        SinkInput { writer, info }
    }

    fn call<R>(&mut self, what: &str, f: impl FnOnce(&mut dyn SinkWriter<T>) -> io::Result<R>) -> TaskResult<R> {
        let writer = &mut *self.writer;
        guard_panic(&self.info, || f(writer))?.map_err(|source| TaskError::Io {
            operator: self.info.operator.to_string(),
            subtask: self.info.index,
            what: what.to_string(),
            source,
        })
    }
}

impl<T> SinkInput<T> {
    fn push_committable(&self, committable: Option<Vec<u8>>, states: &mut BarrierStates) {
        if let Some(bytes) = committable {
            states.push(SubtaskState {
                operator: self.info.state_id.to_string(),
                subtask: self.info.index,
                state: OperatorState::Committable(bytes),
            });
        }
    }
}

impl<T: Send> Input<T> for SinkInput<T> {
    fn batch(&mut self, batch: Vec<Record<T>>) -> TaskResult {
        self.call("writing", |w| w.write_batch(batch))
    }
    fn watermark(&mut self, watermark: Timestamp) -> TaskResult {
        self.call("handling a watermark", |w| w.on_watermark(watermark))
    }
    fn idle(&mut self, _idle: bool) -> TaskResult {
        Ok(())
    }
    fn processing_time(&mut self, _now: Timestamp) -> TaskResult {
        Ok(())
    }
    fn flush(&mut self) -> TaskResult {
        self.call("flushing", |w| w.flush())
    }
    fn barrier(&mut self, barrier: Barrier, states: &mut BarrierStates) -> TaskResult {
        let committable = self.call("pre-committing", |w| w.pre_commit(Some(barrier.id)))?;
        self.push_committable(committable, states);
        Ok(())
    }
    fn end(&mut self, _ending: Ending, states: &mut BarrierStates) -> TaskResult {
        self.call("finishing", |w| w.finish())?;
        let committable = self.call("pre-committing", |w| w.pre_commit(None))?;
        self.push_committable(committable, states);
        Ok(())
    }
}
