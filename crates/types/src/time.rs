//! Event time: timestamps in milliseconds, watermarks and the time window type.
//!
//! Event timestamps lie in [`MIN_TIMESTAMP`]`..=`[`MAX_TIMESTAMP`]: the two values outside
//! are markers (no timestamp, the end of input), and a timestamp assigner that returns
//! one fails the job with that range in its message. Arithmetic on times saturates at the
//! ends of `i64`: a window that would end after `i64::MAX` ends at `i64::MAX`, one that
//! would start before `i64::MIN` starts there, so records near the limits still land in
//! a window that contains them, and nothing wraps around.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (event time or processing time).
pub type Timestamp = i64;

/// The timestamp of a record that carries none (no timestamp assigner, no native time).
pub const NO_TIMESTAMP: Timestamp = i64::MIN;
/// The earliest event timestamp a record can have (`i64::MIN` means "no timestamp").
pub const MIN_TIMESTAMP: Timestamp = i64::MIN + 1;
/// The latest event timestamp a record can have (`i64::MAX` is the final watermark, which
/// a window or timer must be able to lie below).
pub const MAX_TIMESTAMP: Timestamp = i64::MAX - 1;
/// The watermark before any has been seen.
pub const MIN_WATERMARK: Timestamp = i64::MIN;
/// The final watermark of a bounded stream: every event-time window and timer fires.
pub const MAX_WATERMARK: Timestamp = i64::MAX;

/// One stream element with its event timestamp.
///
/// Records travel in `Vec<Record<T>>` batches; the timestamp sits beside the value so that
/// stateless operators pass it through without touching it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<T> {
    /// Event time in milliseconds, or [`NO_TIMESTAMP`].
    pub time: Timestamp,
    /// The element itself.
    pub value: T,
}

impl<T> Record<T> {
    /// A record at event time `time`.
    pub fn new(value: T, time: Timestamp) -> Self {
        Record { time, value }
    }
}

/// A window of time `[start, end)` in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeWindow {
    /// First millisecond in the window.
    pub start: Timestamp,
    /// First millisecond after the window.
    pub end: Timestamp,
}

impl TimeWindow {
    /// The window `[start, end)`.
    pub fn new(start: Timestamp, end: Timestamp) -> Self {
        TimeWindow { start, end }
    }

    /// The largest timestamp that belongs to the window; results carry it as their time,
    /// and the window fires when the watermark reaches it.
    pub fn max_timestamp(&self) -> Timestamp {
        self.end.saturating_sub(1)
    }

    /// Whether the two windows overlap or touch (session windows merge such windows).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }
}
