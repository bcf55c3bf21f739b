//! What travels on an edge between two tasks.

use crate::snapshot::Barrier;
use sluice_types::Timestamp;
use std::any::Any;

/// One message on an edge: data and control signals share this enum, in order.
pub enum Message {
    /// A batch of records: a `Vec<Record<T>>` for the edge's record type.
    Data(Box<dyn Any + Send>),
    /// No record with a timestamp at or below this will follow on this channel.
    Watermark(Timestamp),
    /// The channel became idle (`true`) or active again (`false`); an idle channel does
    /// not hold back the watermark of the task it feeds.
    Idle(bool),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The channel has ended: no more messages follow.
    End(Ending),
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The input is exhausted (a bounded source ended; its final watermark came first).
    /// Operators finish: processing-time windows and timers fire.
    Finished,
    /// The job is stopping with a final checkpoint (Ctrl-C, cancel) and will resume from
    /// it: nothing may fire that the rest of the input could still change. Watermarks
    /// stop advancing and operators keep their open windows and timers in the checkpoint.
    Stopped,
}

/// A message and the input channel of the receiving task it arrived on.
pub struct Envelope {
    /// Index of the channel among the receiving task's inputs.
    pub channel: u32,
    /// The message.
    pub message: Message,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Data(_) => write!(f, "Data(..)"),
            Message::Watermark(w) => write!(f, "Watermark({w})"),
            Message::Idle(i) => write!(f, "Idle({i})"),
            Message::Barrier(b) => write!(f, "Barrier({})", b.id),
            Message::End(e) => write!(f, "End({e:?})"),
        }
    }
}
