//! The measured load of a worker: how much CPU its job processes used over the last
//! second, in percent of one core (a process with two busy threads shows 200). Workers
//! send it with their heartbeats; the least-loaded placement breaks ties between workers
//! with as many busy slots by it, so a process goes where the work already there is
//! lightest, not only where fewer processes run.
//!
//! Read from `/proc/<pid>/stat` (user and system time). The unit there is `USER_HZ`, a
//! constant of Linux's interface to user space (100 per second on every architecture it
//! supports), not the kernel's internal tick rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Clock ticks per second in `/proc/<pid>/stat`.
const USER_HZ: u64 = 100;
/// How long a measurement spans: long enough to smooth bursts, short enough to follow a
/// migration within a couple of seconds.
const WINDOW: Duration = Duration::from_secs(1);

/// The user plus system CPU time, in clock ticks, of a `/proc/<pid>/stat` line.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// The CPU used between two samples of processes' ticks, in percent of one core. Only
/// processes in both samples count: one that started in between has no earlier figure,
/// one that ended has no later one.
pub fn cpu_percent(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>, elapsed: Duration) -> u32 {
    let ticks: u64 = after.iter().filter_map(|(pid, now)| before.get(pid).map(|then| now.saturating_sub(*then))).sum();
    let elapsed_ms = elapsed.as_millis().max(1) as u64;
    // ticks / USER_HZ seconds of CPU over elapsed_ms / 1000 seconds, as a percentage.
    (ticks * 1000 * 100 / USER_HZ / elapsed_ms) as u32
}

/// Measures the CPU of a changing set of processes over windows of a second.
pub struct CpuMeter {
    started: Instant,
    at_start: HashMap<u32, u64>,
    last: u32,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter { started: Instant::now(), at_start: HashMap::new(), last: 0 }
    }
}

impl CpuMeter {
    /// The load of the last complete window, starting a new window when one has passed.
    pub fn sample(&mut self, pids: impl IntoIterator<Item = u32>) -> u32 {
        let now = Instant::now();
        if now.duration_since(self.started) >= WINDOW {
            let ticks = read_ticks(pids);
            self.last = cpu_percent(&self.at_start, &ticks, now.duration_since(self.started));
            self.at_start = ticks;
            self.started = now;
        }
        self.last
    }
}

/// The ticks of each process that still exists.
fn read_ticks(pids: impl IntoIterator<Item = u32>) -> HashMap<u32, u64> {
    pids.into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, cpu_ticks(&stat)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my job (v2)) S 1 4242 4242 0 -1 4194304 120 0 0 0 250 31 0 0 20 0 9 0 100 0";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(cpu_ticks("4242 (cut) S 1"), None);
    }

    #[test]
    fn the_load_counts_processes_present_in_both_samples_in_percent_of_a_core() {
        let before = HashMap::from([(1, 100), (2, 50)]);
        // Process 1 used 80 ticks (0.8 s) in 2 s; 2 ended; 3 started (no earlier figure).
        let after = HashMap::from([(1, 180), (3, 500)]);
        assert_eq!(cpu_percent(&before, &after, Duration::from_secs(2)), 40);
        // Two busy threads for a whole second: 200 % of one core.
        let after = HashMap::from([(1, 300)]);
        assert_eq!(cpu_percent(&before, &after, Duration::from_secs(1)), 200);
        assert_eq!(cpu_percent(&before, &HashMap::new(), Duration::ZERO), 0);
    }

    #[test]
    fn this_process_has_a_readable_cpu_time() {
        let me = std::process::id();
        assert!(read_ticks([me]).contains_key(&me), "/proc/{me}/stat is readable and parses");
    }
}
