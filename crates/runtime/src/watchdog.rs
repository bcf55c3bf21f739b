//! The data detectors of a running attempt, on one thread that looks at every task's
//! [`TaskProgress`] a few times per timeout:
//!
//! - **stalled subtask**: a task inside one piece of work (a batch, a timer, a source's
//!   poll) for longer than [`JobConfig::stall_timeout`], not counting time spent waiting
//!   for credit (that is its consumer being slow, and the consumer is the one judged). A
//!   thread stuck in user code cannot be stopped from outside, so the process says which
//!   task stalled and exits with [`EXIT_STALLED`]; a cluster restarts the job elsewhere
//!   from its latest checkpoint (the process-exit detector reports it), and a job run alone
//!   resumes from it at its next start.
//! - **stuck watermark**: a source that read records while its watermark did not advance
//!   for [`JobConfig::watermark_stall_timeout`]. Reported on stderr, once per period, and
//!   the job goes on: a restart would not make its timestamps move.
//!
//! The judging is a pure function of the tasks' progress and the time ([`judge`]), tested
//! with made-up times.

use sluice_dataflow::progress::{now_ms, ProgressView, TaskProgress};
use sluice_dataflow::JobConfig;
use std::sync::Arc;
use std::time::Duration;

/// The exit status of a process whose task stalled (`EX_SOFTWARE` of sysexits.h).
pub const EXIT_STALLED: i32 = 70;

/// What a detector found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detection {
    /// A task inside one piece of work for `for_ms`.
    Stalled {
        /// The task.
        task: String,
        /// How long.
        for_ms: u64,
    },
    /// A source whose watermark has not advanced for `for_ms` while it read `records`.
    StuckWatermark {
        /// The source task.
        task: String,
        /// How long.
        for_ms: u64,
        /// Records read meanwhile.
        records: u64,
    },
}

impl std::fmt::Display for Detection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detection::Stalled { task, for_ms } => write!(
                f,
                "{task} stalled: inside one piece of work for {:.1} s (detector: stalled subtask); a thread stuck in \
                 user code cannot be stopped, so this process exits to be restarted from the latest checkpoint \
                 (a deadlock, an endless loop or a call without a timeout in its code?)",
                *for_ms as f64 / 1000.0
            ),
            Detection::StuckWatermark { task, for_ms, records } => write!(
                f,
                "{task}: its watermark has not advanced for {:.1} s while it read {records} records (detector: stuck \
                 watermark); event time stands still and windows do not fire: check the timestamps it assigns, or \
                 a split that holds the others back (set an idleness timeout)",
                *for_ms as f64 / 1000.0
            ),
        }
    }
}

/// Which detectors are on, with their timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// See [`JobConfig::stall_timeout`].
    pub stall: Option<Duration>,
    /// See [`JobConfig::watermark_stall_timeout`].
    pub watermark: Option<Duration>,
}

impl Settings {
    /// The job's settings.
    pub fn of(config: &JobConfig) -> Settings {
        Settings { stall: config.stall_timeout, watermark: config.watermark_stall_timeout }
    }

    /// How often to look: a quarter of the shortest timeout, between 25 ms and 1 s.
    fn period(&self) -> Option<Duration> {
        let shortest = [self.stall, self.watermark].into_iter().flatten().min()?;
        Some((shortest / 4).clamp(Duration::from_millis(25), Duration::from_secs(1)))
    }
}

/// Judges the tasks at `now` (milliseconds on [`now_ms`]'s clock). `reported_at` holds,
/// per task, where its last stuck-watermark report was (the `watermark_advanced_at` it was
/// about), so that a period is reported once.
pub fn judge(views: &[ProgressView], now: u64, settings: Settings, reported_at: &mut [u64]) -> Vec<Detection> {
    let mut found = Vec::new();
    for (view, reported) in views.iter().zip(reported_at.iter_mut()) {
        if view.ended {
            continue;
        }
        if let (Some(limit), Some(since)) = (settings.stall, view.busy_since) {
            let for_ms = now.saturating_sub(since);
            if !view.waiting_for_credit && for_ms > limit.as_millis() as u64 {
                found.push(Detection::Stalled { task: view.name.clone(), for_ms });
            }
        }
        if let Some(limit) = settings.watermark {
            // Judged from the last advance, or from the last report of this same stretch.
            let from = view.watermark_advanced_at.max(*reported);
            let for_ms = now.saturating_sub(from);
            let records = view.records.saturating_sub(view.records_at_advance);
            if view.source && view.emits_watermarks && records > 0 && for_ms > limit.as_millis() as u64 {
                found.push(Detection::StuckWatermark {
                    task: view.name.clone(),
                    for_ms: now.saturating_sub(view.watermark_advanced_at),
                    records,
                });
                *reported = now;
            }
        }
    }
    found
}

/// Watches `tasks` until they have all ended, on a thread of its own; does nothing when
/// both detectors are off.
pub(crate) fn watch(tasks: Vec<Arc<TaskProgress>>, settings: Settings) {
    let Some(period) = settings.period() else { return };
    let spawned = std::thread::Builder::new().name("sluice:watchdog".into()).spawn(move || {
        let mut reported = vec![0u64; tasks.len()];
        loop {
            std::thread::sleep(period);
            let views: Vec<ProgressView> = tasks.iter().map(|t| t.view()).collect();
            if views.iter().all(|v| v.ended) {
                return;
            }
            for detection in judge(&views, now_ms(), settings, &mut reported) {
                match detection {
                    Detection::Stalled { .. } => {
                        tracing::error!("{detection}");
                        eprintln!("sluice: {detection}");
                        std::process::exit(EXIT_STALLED);
                    }
                    Detection::StuckWatermark { .. } => tracing::warn!("{detection}"),
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("the data detectors could not start ({e}); the job runs without them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str) -> ProgressView {
        ProgressView {
            name: name.into(),
            source: false,
            busy_since: None,
            waiting_for_credit: false,
            records: 0,
            watermark_advanced_at: 1,
            records_at_advance: 0,
            emits_watermarks: false,
            ended: false,
        }
    }

    const SETTINGS: Settings =
        Settings { stall: Some(Duration::from_secs(60)), watermark: Some(Duration::from_secs(60)) };

    #[test]
    fn a_task_stuck_in_its_work_is_stalled_but_one_waiting_for_credit_or_ended_is_not() {
        let mut reported = vec![0; 4];
        let busy = ProgressView { busy_since: Some(1_000), ..view("map#0") };
        let backpressured = ProgressView { waiting_for_credit: true, ..busy.clone() };
        let ended = ProgressView { ended: true, ..busy.clone() };
        let idle = view("sink#1");
        let views = [busy, backpressured, ended, idle];
        assert!(judge(&views, 61_000, SETTINGS, &mut reported).is_empty(), "not longer than the timeout yet");
        let found = judge(&views, 61_001, SETTINGS, &mut reported);
        assert_eq!(found, vec![Detection::Stalled { task: "map#0".into(), for_ms: 60_001 }]);
        assert!(found[0].to_string().contains("(detector: stalled subtask)"));
        let off = Settings { stall: None, ..SETTINGS };
        assert!(judge(&views, 1_000_000, off, &mut reported).is_empty());
    }

    #[test]
    fn a_source_reading_while_its_watermark_stands_still_is_reported_once_per_period() {
        let mut reported = vec![0; 3];
        let source = ProgressView {
            source: true,
            emits_watermarks: true,
            records: 500,
            records_at_advance: 200,
            watermark_advanced_at: 10_000,
            ..view("events#0")
        };
        let quiet = ProgressView { records: 200, ..source.clone() }; // nothing read since
        let without = ProgressView { emits_watermarks: false, ..source.clone() }; // no watermarks at all
        let views = [source, quiet, without];
        assert!(judge(&views, 70_000, SETTINGS, &mut reported).is_empty());
        let found = judge(&views, 70_001, SETTINGS, &mut reported);
        assert_eq!(found, vec![Detection::StuckWatermark { task: "events#0".into(), for_ms: 60_001, records: 300 }]);
        assert!(found[0].to_string().contains("(detector: stuck watermark)"));
        // Not again within the next period; again after it, with the whole stretch named.
        assert!(judge(&views, 100_000, SETTINGS, &mut reported).is_empty());
        let again = judge(&views, 130_002, SETTINGS, &mut reported);
        assert_eq!(again, vec![Detection::StuckWatermark { task: "events#0".into(), for_ms: 120_002, records: 300 }]);
    }

    #[test]
    fn the_period_follows_the_shortest_timeout() {
        let s = Settings { stall: Some(Duration::from_millis(200)), watermark: Some(Duration::from_secs(60)) };
        assert_eq!(s.period(), Some(Duration::from_millis(50)));
        assert_eq!(SETTINGS.period(), Some(Duration::from_secs(1)));
        assert_eq!(Settings { stall: None, watermark: None }.period(), None);
    }
}
