//! Event time: timestamps in milliseconds, watermarks and the time window type.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (event time or processing time).
pub type Timestamp = i64;

/// The timestamp of a record that carries none (no timestamp assigner, no native time).
pub const NO_TIMESTAMP: Timestamp = i64::MIN;
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
        self.end - 1
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
