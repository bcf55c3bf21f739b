//! Sinks: the writer trait connectors implement and the adapter that ends a chain in one.

use crate::error::{TaskError, TaskResult};
use crate::operator::{guard_panic, Input, SubtaskInfo};
use sluice_types::{Record, Timestamp};
use std::io;

/// Where a stream ends. Each sink subtask gets its own writer.
pub trait Sink<T>: Send + Sync + 'static {
    /// A short name for errors and logs.
    fn name(&self) -> String;
    /// The writer of subtask `index` of `parallelism`.
    fn create_writer(&self, index: usize, parallelism: usize)
        -> io::Result<Box<dyn SinkWriter<T>>>;
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

    fn call(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut dyn SinkWriter<T>) -> io::Result<()>,
    ) -> TaskResult {
        let writer = &mut *self.writer;
        guard_panic(&self.info, || f(writer))?.map_err(|source| TaskError::Io {
            operator: self.info.operator.to_string(),
            subtask: self.info.index,
            what: what.to_string(),
            source,
        })
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
    fn end(&mut self) -> TaskResult {
        self.call("finishing", |w| w.finish())
    }
}
