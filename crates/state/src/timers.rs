//! Timers per key, in event time and in processing time, deduplicated as in Flink: a key
//! has at most one timer per timestamp and domain.

use sluice_types::{FastSet, Key, Timestamp};
use std::collections::BTreeMap;

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timestamp.
    EventTime,
    /// Fires when the wall clock reaches the timestamp.
    ProcessingTime,
}

/// Timers of one domain, ordered by time.
pub struct TimerQueue<K> {
    by_time: BTreeMap<Timestamp, Vec<K>>,
    live: FastSet<(Timestamp, K)>,
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue { by_time: BTreeMap::new(), live: FastSet::default() }
    }
}

impl<K: Key> TimerQueue<K> {
    /// Registers a timer; registering the same (time, key) twice keeps one.
    pub fn register(&mut self, time: Timestamp, key: &K) {
        if self.live.insert((time, key.clone())) {
            self.by_time.entry(time).or_default().push(key.clone());
        }
    }

    /// Deletes a timer if it exists.
    pub fn delete(&mut self, time: Timestamp, key: &K) {
        self.live.remove(&(time, key.clone()));
    }

    /// Removes and returns one timer due at or before `upto`, earliest first. Call it in
    /// a loop: a firing timer may register another that is already due.
    pub fn pop_due(&mut self, upto: Timestamp) -> Option<(Timestamp, K)> {
        loop {
            let mut entry = self.by_time.first_entry()?;
            let time = *entry.key();
            if time > upto {
                return None;
            }
            match entry.get_mut().pop() {
                Some(key) => {
                    if self.live.remove(&(time, key.clone())) {
                        return Some((time, key));
                    }
                }
                None => {
                    entry.remove();
                }
            }
        }
    }

    /// The earliest registered time, if any.
    pub fn next_time(&self) -> Option<Timestamp> {
        self.by_time.keys().next().copied()
    }

    /// How many live timers there are.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// The live timers, as (time, key).
    pub fn entries(&self) -> impl Iterator<Item = &(Timestamp, K)> {
        self.live.iter()
    }

    /// Whether no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// The event-time and processing-time timers of one keyed operator subtask.
pub struct TimerService<K> {
    /// Timers that fire on the watermark.
    pub event: TimerQueue<K>,
    /// Timers that fire on the wall clock.
    pub processing: TimerQueue<K>,
}

impl<K> Default for TimerService<K> {
    fn default() -> Self {
        TimerService { event: TimerQueue::default(), processing: TimerQueue::default() }
    }
}

impl<K: Key> TimerService<K> {
    /// The queue of `domain`.
    pub fn queue(&mut self, domain: TimeDomain) -> &mut TimerQueue<K> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_order_once() {
        let mut q = TimerQueue::<u8>::default();
        q.register(20, &1);
        q.register(10, &2);
        q.register(10, &2);
        q.register(30, &3);
        q.delete(30, &3);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_due(25), Some((10, 2)));
        assert_eq!(q.pop_due(25), Some((20, 1)));
        assert_eq!(q.pop_due(25), None);
        assert_eq!(q.pop_due(i64::MAX), None);
        assert!(q.is_empty());
    }
}
