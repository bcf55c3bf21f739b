//! The ends of an exchange between tasks: the writer at the tail of a producer's chain
//! (partitioning records into per-target batches and sending them over bounded channels,
//! so a slow consumer blocks the producer) and the typed head that a consumer task's
//! untyped inbox feeds.

use crate::error::{TaskError, TaskResult};
use crate::message::{Ending, Envelope, Message};
use crate::operator::Input;
use crate::snapshot::{Barrier, BarrierStates};
use sluice_types::{subtask_for_key_group, KeyGroup, Record, Timestamp};
use std::any::Any;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

/// One downstream subtask: where its messages go, the channel index this producer has
/// there, and the channel's credit. Whether the subtask runs in this process or another
/// is the path's business only: the writer and the task above it are the same.
#[derive(Clone, Debug)]
pub struct Target {
    /// The downstream task's inbox, or a channel of a connection to its process.
    pub path: Path,
    /// This producer's channel index at that inbox.
    pub channel: u32,
    /// The batches this producer may still send on the channel.
    pub credit: Arc<Credit>,
}

/// Where a target's messages go.
#[derive(Clone, Debug)]
pub enum Path {
    /// The inbox of a task of this process: batches move as they are.
    Local(SyncSender<Envelope>),
    /// A channel of a connection to another process: batches are encoded here, and only
    /// here, at the process boundary.
    Remote(Arc<dyn RemoteChannel>),
}

/// The sending end of a channel to a task in another process (see `sluice-net`).
pub trait RemoteChannel: Send + Sync + std::fmt::Debug {
    /// Sends an encoded batch (`Vec<Record<T>>` in [`sluice_state::codec`]); its credit
    /// has been taken.
    fn send_data(&self, batch: Vec<u8>) -> TaskResult;
    /// Sends a watermark, idleness change, barrier or end.
    fn send_control(&self, message: &Message) -> TaskResult;
}

impl Target {
    /// A target in this process.
    pub fn local(inbox: SyncSender<Envelope>, channel: u32, credit: Arc<Credit>) -> Self {
        Target { path: Path::Local(inbox), channel, credit }
    }

    fn send_batch<T: serde::Serialize + Send + 'static>(&self, batch: Vec<Record<T>>) -> TaskResult {
        self.credit.acquire()?;
        match &self.path {
            Path::Local(inbox) => inbox
                .send(Envelope { channel: self.channel, message: Message::Data(Box::new(batch)) })
                .map_err(|_| TaskError::Disconnected),
            Path::Remote(remote) => remote.send_data(sluice_state::codec::encode(&batch)),
        }
    }

    fn send_control(&self, message: Message) -> TaskResult {
        match &self.path {
            Path::Local(inbox) => {
                inbox.send(Envelope { channel: self.channel, message }).map_err(|_| TaskError::Disconnected)
            }
            Path::Remote(remote) => remote.send_control(&message),
        }
    }
}

/// Credit-based flow control of one channel (as Flink's network stack has it): the number
/// of batches its producer may still send before the consumer has processed some. A batch
/// takes a credit when it is sent and gives it back when the consumer task has processed
/// it, not when it was received, so a channel whose batches are held back (its barrier
/// arrived first, during an exactly-once alignment) stops its producer after its credits:
/// nothing piles up in the consumer. Barriers, watermarks and the end travel without
/// credit, so a barrier never waits behind exhausted record credits.
#[derive(Debug)]
pub struct Credit {
    state: std::sync::Mutex<CreditState>,
    returned: std::sync::Condvar,
}

#[derive(Debug)]
struct CreditState {
    available: u32,
    waiting: bool,
    closed: bool,
}

impl Credit {
    /// A channel whose producer may send `initial` batches ahead.
    pub fn new(initial: u32) -> Arc<Self> {
        Arc::new(Credit {
            state: std::sync::Mutex::new(CreditState { available: initial.max(1), waiting: false, closed: false }),
            returned: std::sync::Condvar::new(),
        })
    }

    /// Takes a credit, waiting until the consumer returns one; fails once the consumer
    /// has gone ([`Credit::close`]).
    pub fn acquire(&self) -> TaskResult {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.closed {
                return Err(TaskError::Disconnected);
            }
            if state.available > 0 {
                state.available -= 1;
                return Ok(());
            }
            state.waiting = true;
            // Backpressure, not a stall of this task: the detector does not count it.
            let _waiting = crate::progress::waiting_for_credit();
            state = self.returned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The consumer processed a batch of this channel: its producer may send one more.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.available += 1;
        if std::mem::take(&mut state.waiting) {
            self.returned.notify_all();
        }
    }

    /// The consumer has gone: a producer waiting for credit fails instead of waiting.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        self.returned.notify_all();
    }

    /// Credits the producer holds now (for tests and reports).
    pub fn available(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).available
    }
}

/// How a consumer gives a channel's credit back: to a producer of this process directly,
/// or over the connection to the producer's process.
pub trait CreditReturn: Send + Sync {
    /// A batch of the channel was processed.
    fn release(&self);
    /// The consumer has gone.
    fn close(&self);
}

impl CreditReturn for Credit {
    fn release(&self) {
        Credit::release(self)
    }
    fn close(&self) {
        Credit::close(self)
    }
}

/// The credits of a consumer task's input channels, by channel index; closed when the
/// task ends, so that no producer waits for a consumer that has gone.
pub struct ChannelCredits(pub Vec<Arc<dyn CreditReturn>>);

impl ChannelCredits {
    /// A batch of `channel` was processed.
    #[inline]
    pub fn release(&self, channel: usize) {
        if let Some(credit) = self.0.get(channel) {
            credit.release();
        }
    }
}

impl Drop for ChannelCredits {
    fn drop(&mut self) {
        self.0.iter().for_each(|c| c.close());
    }
}

/// How many records a batch may hold: the configured batch size, or fewer when records
/// are large, so that a batch stays under `max_batch_bytes`. The weight of a record is
/// estimated from a few records of each batch that passes (their encoded length, at least
/// their in-memory size), which costs three size computations a batch.
pub(crate) struct BatchLimit<T> {
    record_bytes: fn(&T) -> usize,
    max_records: usize,
    max_bytes: usize,
    records: usize,
}

impl<T> Clone for BatchLimit<T> {
    fn clone(&self) -> Self {
        BatchLimit { ..*self }
    }
}

impl<T: serde::Serialize> BatchLimit<T> {
    pub(crate) fn new(info: &crate::SubtaskInfo) -> Self {
        BatchLimit {
            record_bytes: sluice_state::codec::encoded_len::<T>,
            max_records: info.batch_size.max(1),
            max_bytes: info.max_batch_bytes.max(1),
            // Until a record has been weighed, start small: a first batch of a thousand
            // 100 MB records must not be asked for.
            records: info.batch_size.clamp(1, 64),
        }
    }
}

impl<T> BatchLimit<T> {
    /// Records per batch now.
    #[inline]
    pub(crate) fn records(&self) -> usize {
        self.records
    }

    /// Weighs a few records of `batch` and adjusts the limit.
    #[inline]
    pub(crate) fn observe(&mut self, batch: &[Record<T>]) {
        let Some(last) = batch.len().checked_sub(1) else { return };
        let weight = [0, last / 2, last]
            .iter()
            .map(|&i| (self.record_bytes)(&batch[i].value))
            .max()
            .unwrap_or(0)
            .max(std::mem::size_of::<Record<T>>());
        self.records = (self.max_bytes / weight).clamp(1, self.max_records);
    }
}

/// How one edge routes records.
pub(crate) enum Route<T> {
    /// Whole batches round-robin over the targets (one target: forward).
    RoundRobin { next: usize },
    /// Every batch to every target.
    Broadcast,
    /// By key group: `hash` gives the stable hash of a record's key.
    Hash { hash: Arc<dyn Fn(&T) -> u64 + Send + Sync>, owner_of_group: Vec<u32>, max_parallelism: u64 },
}

/// The writer of one outgoing edge.
pub(crate) struct EdgeWriter<T> {
    route: Route<T>,
    targets: Vec<Target>,
    buffers: Vec<Vec<Record<T>>>,
    limit: BatchLimit<T>,
}

impl<T: Clone + Send + serde::Serialize + 'static> EdgeWriter<T> {
    pub(crate) fn round_robin(targets: Vec<Target>, limit: BatchLimit<T>) -> Self {
        Self::with_route(Route::RoundRobin { next: 0 }, targets, limit)
    }

    pub(crate) fn broadcast(targets: Vec<Target>, limit: BatchLimit<T>) -> Self {
        Self::with_route(Route::Broadcast, targets, limit)
    }

    pub(crate) fn hashed(
        hash: Arc<dyn Fn(&T) -> u64 + Send + Sync>,
        targets: Vec<Target>,
        max_parallelism: usize,
        limit: BatchLimit<T>,
    ) -> Self {
        let owner_of_group = (0..max_parallelism)
            .map(|g| subtask_for_key_group(KeyGroup(g as u32), max_parallelism, targets.len()) as u32)
            .collect();
        Self::with_route(Route::Hash { hash, owner_of_group, max_parallelism: max_parallelism as u64 }, targets, limit)
    }

    fn with_route(route: Route<T>, targets: Vec<Target>, limit: BatchLimit<T>) -> Self {
        let buffers = targets.iter().map(|_| Vec::new()).collect();
        EdgeWriter { route, targets, buffers, limit }
    }

    fn send_batch(&self, target: usize, batch: Vec<Record<T>>) -> TaskResult {
        self.targets[target].send_batch(batch)
    }

    fn write(&mut self, batch: Vec<Record<T>>) -> TaskResult {
        self.limit.observe(&batch);
        let limit = self.limit.records();
        if batch.len() > limit && !matches!(self.route, Route::Hash { .. } if self.targets.len() > 1) {
            // Large records: cut the batch so no channel holds more than its bytes allow.
            let mut records = batch.into_iter();
            loop {
                let chunk: Vec<Record<T>> = records.by_ref().take(limit).collect();
                if chunk.is_empty() {
                    return Ok(());
                }
                self.write_within_limit(chunk)?;
            }
        }
        self.write_within_limit(batch)
    }

    fn write_within_limit(&mut self, batch: Vec<Record<T>>) -> TaskResult {
        match &mut self.route {
            Route::RoundRobin { next } => {
                let target = *next;
                *next = (*next + 1) % self.targets.len();
                self.send_batch(target, batch)
            }
            Route::Broadcast => {
                for target in 1..self.targets.len() {
                    self.send_batch(target, batch.clone())?;
                }
                self.send_batch(0, batch)
            }
            Route::Hash { hash, owner_of_group, max_parallelism } => {
                if self.targets.len() == 1 {
                    return self.targets[0].send_batch(batch);
                }
                let limit = self.limit.records();
                for record in batch {
                    let group = (hash(&record.value) % *max_parallelism) as usize;
                    let target = owner_of_group[group] as usize;
                    let buffer = &mut self.buffers[target];
                    if buffer.capacity() == 0 {
                        buffer.reserve_exact(limit);
                    }
                    buffer.push(record);
                    if buffer.len() >= limit {
                        let full = std::mem::take(buffer);
                        self.targets[target].send_batch(full)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> TaskResult {
        for target in 0..self.targets.len() {
            if !self.buffers[target].is_empty() {
                let batch = std::mem::take(&mut self.buffers[target]);
                self.send_batch(target, batch)?;
            }
        }
        Ok(())
    }

    fn signal(&mut self, make: impl Fn() -> Message) -> TaskResult {
        self.flush()?;
        for target in &self.targets {
            target.send_control(make())?;
        }
        Ok(())
    }
}

/// The tail of a producer's chain: writes every batch to each outgoing edge.
pub(crate) struct ExchangeOutput<T> {
    pub(crate) edges: Vec<EdgeWriter<T>>,
}

impl<T: Clone + Send + serde::Serialize + 'static> ExchangeOutput<T> {
    fn each(&mut self, mut f: impl FnMut(&mut EdgeWriter<T>) -> TaskResult) -> TaskResult {
        self.edges.iter_mut().try_for_each(&mut f)
    }
}

impl<T: Clone + Send + serde::Serialize + 'static> Input<T> for ExchangeOutput<T> {
    fn batch(&mut self, batch: Vec<Record<T>>) -> TaskResult {
        match self.edges.len() {
            0 => Ok(()),
            1 => self.edges[0].write(batch),
            n => {
                for edge in &mut self.edges[..n - 1] {
                    edge.write(batch.clone())?;
                }
                self.edges[n - 1].write(batch)
            }
        }
    }
    fn watermark(&mut self, watermark: Timestamp) -> TaskResult {
        self.each(|e| e.signal(|| Message::Watermark(watermark)))
    }
    fn idle(&mut self, idle: bool) -> TaskResult {
        self.each(|e| e.signal(|| Message::Idle(idle)))
    }
    fn processing_time(&mut self, _now: Timestamp) -> TaskResult {
        Ok(())
    }
    fn flush(&mut self) -> TaskResult {
        self.each(|e| e.flush())
    }
    fn barrier(&mut self, barrier: Barrier, _states: &mut BarrierStates) -> TaskResult {
        self.each(|e| e.signal(|| Message::Barrier(barrier)))
    }
    fn end(&mut self, ending: Ending, _states: &mut BarrierStates) -> TaskResult {
        self.each(|e| e.signal(|| Message::End(ending)))
    }
}

/// The head of a consumer task's chain, fed from the untyped inbox.
pub trait ErasedInput: Send {
    /// A batch as it came off the channel (a `Vec<Record<T>>`).
    fn batch(&mut self, batch: Box<dyn Any + Send>) -> TaskResult;
    /// The task's combined input watermark advanced.
    fn watermark(&mut self, watermark: Timestamp) -> TaskResult;
    /// All inputs became idle, or one became active again.
    fn idle(&mut self, idle: bool) -> TaskResult;
    /// A processing-time tick.
    fn processing_time(&mut self, now: Timestamp) -> TaskResult;
    /// Nothing is waiting in the inbox: pass buffered records on.
    fn flush(&mut self) -> TaskResult;
    /// Barriers arrived on every input (aligned): snapshot the chain, pass the barrier on.
    fn barrier(&mut self, barrier: Barrier, states: &mut BarrierStates) -> TaskResult;
    /// Every input has ended: finish the chain (if the input is exhausted), collecting its
    /// final state.
    fn end(&mut self, ending: Ending, states: &mut BarrierStates) -> TaskResult;
}

pub(crate) struct Head<T>(pub(crate) Box<dyn Input<T>>);

impl<T: Send + 'static> ErasedInput for Head<T> {
    fn batch(&mut self, batch: Box<dyn Any + Send>) -> TaskResult {
        let batch = batch.downcast::<Vec<Record<T>>>().expect("the job graph connects only edges of one record type");
        self.0.batch(*batch)
    }
    fn watermark(&mut self, watermark: Timestamp) -> TaskResult {
        self.0.watermark(watermark)
    }
    fn idle(&mut self, idle: bool) -> TaskResult {
        self.0.idle(idle)
    }
    fn processing_time(&mut self, now: Timestamp) -> TaskResult {
        self.0.processing_time(now)
    }
    fn flush(&mut self) -> TaskResult {
        self.0.flush()
    }
    fn barrier(&mut self, barrier: Barrier, states: &mut BarrierStates) -> TaskResult {
        self.0.barrier(barrier, states)
    }
    fn end(&mut self, ending: Ending, states: &mut BarrierStates) -> TaskResult {
        self.0.end(ending, states)
    }
}
