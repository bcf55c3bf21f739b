//! Restart strategies as a pure state machine: given the failures so far, wait how long
//! before the next attempt, or give up.

use sluice_dataflow::RestartStrategy;
use std::time::{Duration, Instant};

/// Applies a [`RestartStrategy`] to a job's failures.
pub struct RestartTracker {
    strategy: RestartStrategy,
    failures: Vec<Instant>,
    restarts: u32,
    backoff: Option<Duration>,
}

impl RestartTracker {
    /// A tracker with no failure yet.
    pub fn new(strategy: RestartStrategy) -> Self {
        RestartTracker { strategy, failures: Vec::new(), restarts: 0, backoff: None }
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A failure happened at `now`: how long to wait before restarting, or `None` to fail.
    pub fn on_failure(&mut self, now: Instant) -> Option<Duration> {
        let previous = self.failures.last().copied();
        self.failures.push(now);
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => (self.restarts < *attempts).then_some(*delay),
            RestartStrategy::ExponentialDelay { initial, max, multiplier, reset_after } => {
                let quiet = previous.is_none_or(|p| now.duration_since(p) >= *reset_after);
                let next = match self.backoff {
                    Some(last) if !quiet => last.mul_f64(*multiplier).min(*max),
                    _ => *initial,
                };
                self.backoff = Some(next);
                Some(next)
            }
            RestartStrategy::FailureRate { max_failures, interval, delay } => {
                let recent = self.failures.iter().filter(|t| now.duration_since(**t) <= *interval).count();
                (recent <= *max_failures as usize).then_some(*delay)
            }
        };
        if delay.is_some() {
            self.restarts += 1;
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn strategies_decide_delay_or_failure() {
        let t0 = Instant::now();
        let mut none = RestartTracker::new(RestartStrategy::None);
        assert_eq!(none.on_failure(t0), None);

        let mut fixed = RestartTracker::new(RestartStrategy::FixedDelay { attempts: 2, delay: 5 * MS });
        assert_eq!(fixed.on_failure(t0), Some(5 * MS));
        assert_eq!(fixed.on_failure(t0), Some(5 * MS));
        assert_eq!(fixed.on_failure(t0), None);
        assert_eq!(fixed.restarts(), 2);

        let mut exp = RestartTracker::new(RestartStrategy::ExponentialDelay {
            initial: 10 * MS,
            max: 35 * MS,
            multiplier: 2.0,
            reset_after: 1000 * MS,
        });
        assert_eq!(exp.on_failure(t0), Some(10 * MS));
        assert_eq!(exp.on_failure(t0 + MS), Some(20 * MS));
        assert_eq!(exp.on_failure(t0 + 2 * MS), Some(35 * MS));
        assert_eq!(exp.on_failure(t0 + 3 * MS), Some(35 * MS));
        assert_eq!(exp.on_failure(t0 + 2000 * MS), Some(10 * MS), "a quiet period resets the backoff");

        let mut rate =
            RestartTracker::new(RestartStrategy::FailureRate { max_failures: 2, interval: 100 * MS, delay: MS });
        assert_eq!(rate.on_failure(t0), Some(MS));
        assert_eq!(rate.on_failure(t0 + 10 * MS), Some(MS));
        assert_eq!(rate.on_failure(t0 + 20 * MS), None, "three failures within 100 ms");
        let mut rate =
            RestartTracker::new(RestartStrategy::FailureRate { max_failures: 2, interval: 100 * MS, delay: MS });
        for i in 0..10 {
            assert_eq!(rate.on_failure(t0 + i * 60 * MS), Some(MS), "spread-out failures keep restarting");
        }
    }
}
