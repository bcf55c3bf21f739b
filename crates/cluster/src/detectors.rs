//! The time detector as a pure function: which workers have been silent for longer than
//! the heartbeat timeout at a given moment. The coordinator calls it every half heartbeat
//! interval with the real clock; the tests here drive it with a clock of their own, so that
//! the boundaries (a heartbeat just in time, one just too late, a worker that comes back)
//! are checked without sleeping.

use std::time::{Duration, Instant};

/// The workers whose last heartbeat is more than `timeout` before `now`, with how long each
/// has been silent, by worker id.
pub fn silent_workers(
    last_heartbeats: impl IntoIterator<Item = (u64, Instant)>,
    now: Instant,
    timeout: Duration,
) -> Vec<(u64, Duration)> {
    let mut silent: Vec<(u64, Duration)> = last_heartbeats
        .into_iter()
        .map(|(worker, last)| (worker, now.saturating_duration_since(last)))
        .filter(|(_, quiet)| *quiet > timeout)
        .collect();
    silent.sort_unstable();
    silent
}

/// Whether the heartbeat detector itself was held up (the coordinator stopped with SIGSTOP,
/// a paused machine, a starved process): its previous check, due every half heartbeat
/// interval, was more than a whole interval ago. Every worker then looks silent for as
/// long as the coordinator was, through no fault of its own, and the heartbeats that
/// queued up meanwhile have not been read yet. The coordinator gives every worker one more
/// timeout from then instead of declaring them lost; a worker that died meanwhile is still
/// caught by its closed connection at once, or by its silence one timeout later.
pub fn detector_held_up(since_previous_check: Duration, heartbeat_interval: Duration) -> bool {
    since_previous_check > heartbeat_interval
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand.
    struct FakeClock(Instant);

    impl FakeClock {
        fn advance(&mut self, ms: u64) -> Instant {
            self.0 += Duration::from_millis(ms);
            self.0
        }
    }

    #[test]
    fn a_worker_is_silent_only_past_the_timeout_and_a_heartbeat_resets_it() {
        let timeout = Duration::from_millis(500);
        let mut clock = FakeClock(Instant::now());
        let start = clock.0;
        let mut last = vec![(1, start), (2, start), (3, start)];
        // Heartbeats every 100 ms from workers 1 and 3; worker 2 stops after the first.
        for _ in 0..5 {
            let now = clock.advance(100);
            last[0].1 = now;
            last[2].1 = now;
            assert!(silent_workers(last.clone(), now, timeout).is_empty(), "silent for at most the timeout");
        }
        // 501 ms after its last heartbeat, worker 2 is silent; the others are not.
        let now = clock.advance(1);
        assert_eq!(silent_workers(last.clone(), now, timeout), vec![(2, Duration::from_millis(501))]);
        // Workers 1 and 3 stop at 500 ms; 601 ms later worker 2 speaks again and only they
        // are silent.
        let now = clock.advance(600);
        last[1].1 = now;
        assert_eq!(
            silent_workers(last.clone(), now, timeout),
            vec![(1, Duration::from_millis(601)), (3, Duration::from_millis(601))]
        );
        // A heartbeat stamped after `now` (read the clock before taking the lock) is not silence.
        let early = clock.0;
        last[0].1 = clock.advance(5);
        assert!(silent_workers(vec![last[0]], early, timeout).is_empty());
    }

    #[test]
    fn a_detector_held_up_past_the_timeout_is_told_apart_from_silent_workers() {
        let interval = Duration::from_millis(100);
        // Checked every half interval: on time, or late by less than another half.
        assert!(!detector_held_up(Duration::from_millis(50), interval));
        assert!(!detector_held_up(interval, interval));
        assert!(detector_held_up(Duration::from_millis(101), interval));
        assert!(detector_held_up(Duration::from_secs(2), interval));
    }
}
