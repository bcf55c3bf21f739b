//! Sinks for development and tests: stdout, a collecting sink and a discarding sink.

use sluice_dataflow::{Sink, SinkWriter};
use sluice_types::Record;
use std::fmt::Debug;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Prints each record's `Debug` form to stdout, prefixed by the subtask number
/// (`2> value`, counting from 1 as Flink's `print()` does) when there are several.
pub struct StdoutSink<T>(PhantomData<fn(T)>);

impl<T> Default for StdoutSink<T> {
    fn default() -> Self {
        StdoutSink(PhantomData)
    }
}

impl<T: Debug + Send + 'static> Sink<T> for StdoutSink<T> {
    fn name(&self) -> String {
        "stdout".into()
    }
    fn create_writer(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SinkWriter<T>>> {
        let prefix = if parallelism > 1 { format!("{}> ", index + 1) } else { String::new() };
        Ok(Box::new(StdoutWriter { prefix, _t: PhantomData }))
    }
}

struct StdoutWriter<T> {
    prefix: String,
    _t: PhantomData<fn(T)>,
}

impl<T: Debug + Send> SinkWriter<T> for StdoutWriter<T> {
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> io::Result<()> {
        let mut out = io::stdout().lock();
        for record in batch {
            writeln!(out, "{}{:?}", self.prefix, record.value)?;
        }
        Ok(())
    }
}

/// Collects every record in memory, for tests; read them through the [`CollectHandle`].
pub struct CollectSink<T> {
    records: Arc<Mutex<Vec<Record<T>>>>,
}

/// Reads what a [`CollectSink`] collected.
#[derive(Clone)]
pub struct CollectHandle<T> {
    records: Arc<Mutex<Vec<Record<T>>>>,
}

impl<T> CollectSink<T> {
    /// A sink and the handle to its records.
    pub fn new() -> (Self, CollectHandle<T>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        (CollectSink { records: records.clone() }, CollectHandle { records })
    }
}

impl<T: Clone> CollectHandle<T> {
    /// The values collected so far (in arrival order across subtasks).
    pub fn values(&self) -> Vec<T> {
        self.lock().iter().map(|r| r.value.clone()).collect()
    }
    /// The records (values with timestamps) collected so far.
    pub fn records(&self) -> Vec<Record<T>> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Record<T>>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    fn name(&self) -> String {
        "collect".into()
    }
    fn create_writer(&self, _index: usize, _parallelism: usize) -> io::Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(CollectWriter { records: self.records.clone() }))
    }
}

struct CollectWriter<T> {
    records: Arc<Mutex<Vec<Record<T>>>>,
}

impl<T: Send> SinkWriter<T> for CollectWriter<T> {
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> io::Result<()> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).extend(batch);
        Ok(())
    }
}

/// Drops every record, counting them (for benchmarks).
pub struct DiscardSink<T> {
    count: Arc<AtomicU64>,
    _t: PhantomData<fn(T)>,
}

/// Reads how many records a [`DiscardSink`] dropped.
#[derive(Clone)]
pub struct DiscardHandle(Arc<AtomicU64>);

impl DiscardHandle {
    /// Records dropped so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl<T> DiscardSink<T> {
    /// A sink and the handle to its count.
    pub fn new() -> (Self, DiscardHandle) {
        let count = Arc::new(AtomicU64::new(0));
        (DiscardSink { count: count.clone(), _t: PhantomData }, DiscardHandle(count))
    }
}

impl<T: Send + 'static> Sink<T> for DiscardSink<T> {
    fn name(&self) -> String {
        "discard".into()
    }
    fn create_writer(&self, _index: usize, _parallelism: usize) -> io::Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(DiscardWriter { count: self.count.clone(), _t: PhantomData }))
    }
}

struct DiscardWriter<T> {
    count: Arc<AtomicU64>,
    _t: PhantomData<fn(T)>,
}

impl<T: Send> SinkWriter<T> for DiscardWriter<T> {
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> io::Result<()> {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
