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
}
