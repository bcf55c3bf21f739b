//! Event time at the ends of `i64`: windows, sessions and watermarks near `i64::MIN` and
//! `i64::MAX` neither overflow (a debug build would panic) nor wrap around (a release
//! build would put records in windows that do not hold them); timestamps outside the
//! valid range are refused with the range in the message. `scripts/test.sh` runs this
//! file in release mode too.

use sluice::prelude::*;
use sluice::types::{MAX_TIMESTAMP, MIN_TIMESTAMP};
use std::time::Duration;

type Event = (u8, i64);

fn windows_of(input: Vec<Event>, spec: WindowSpec) -> Vec<(i64, i64, i64, usize)> {
    let env = StreamEnv::new();
    env.set_parallelism(1);
    let out = env
        .source(
            CollectionSource::new(input),
            Watermarks::bounded(Duration::from_secs(1)).with_timestamps(|e: &Event| e.1),
        )
        .key_by(|e| e.0)
        .window(spec)
        .process(|_k, w, all| all.iter().map(|e| (e.1, w.start, w.end, all.len())).collect::<Vec<_>>())
        .collect();
    env.execute("limits").unwrap();
    let mut got = out.values();
    got.sort();
    got
}

const EXTREMES: [i64; 6] = [MIN_TIMESTAMP, MIN_TIMESTAMP + 7, -1, 0, MAX_TIMESTAMP - 7, MAX_TIMESTAMP];

#[test]
fn tumbling_and_session_windows_at_both_ends_hold_their_records() {
    let input: Vec<Event> = EXTREMES.iter().map(|t| (0u8, *t)).collect();
    for spec in [Tumbling::event_time(Duration::from_secs(10)), Session::event_time(Duration::from_secs(10))] {
        let got = windows_of(input.clone(), spec);
        assert_eq!(got.len(), EXTREMES.len(), "every record is in one window: {got:?}");
        for (t, start, end, _) in &got {
            assert!(start <= t && t < end, "{t} lies in [{start}, {end})");
        }
        // The two records at each end share a window; -1 and 0 do only in a session.
        let by_time = |t: i64| got.iter().find(|g| g.0 == t).copied().unwrap();
        assert_eq!(by_time(MIN_TIMESTAMP).1, by_time(MIN_TIMESTAMP + 7).1);
        assert_eq!(by_time(MAX_TIMESTAMP).2, i64::MAX, "the last window ends at i64::MAX, not wrapped");
        assert_eq!(by_time(MAX_TIMESTAMP).1, by_time(MAX_TIMESTAMP - 7).1);
    }
}

#[test]
fn sliding_windows_near_the_lower_end_stop_at_i64_min() {
    let got = windows_of(
        vec![(0, MIN_TIMESTAMP), (0, MIN_TIMESTAMP + 6_000), (0, MAX_TIMESTAMP)],
        Sliding::event_time(Duration::from_secs(10), Duration::from_secs(5)),
    );
    for (t, start, end, _) in &got {
        assert!(start <= t && t < end, "{t} lies in [{start}, {end})");
    }
    assert!(got.iter().all(|g| g.2 > g.1), "no window is empty or wrapped: {got:?}");
    assert!(got.iter().filter(|g| g.0 == MAX_TIMESTAMP).count() >= 1);
    assert!(got.iter().filter(|g| g.0 == MIN_TIMESTAMP + 6_000).count() == 2, "two overlapping windows: {got:?}");
}

#[test]
fn a_huge_watermark_bound_does_not_wrap() {
    let env = StreamEnv::new();
    env.set_parallelism(1);
    let out = env
        .source(
            CollectionSource::new(vec![(0u8, MIN_TIMESTAMP), (0, 5), (0, 1)]),
            Watermarks::bounded(Duration::MAX).with_timestamps(|e: &Event| e.1),
        )
        .key_by(|e| e.0)
        .window(Tumbling::event_time(Duration::from_secs(10)))
        .process(|_k, w, all| vec![(w.start, all.len())])
        .collect();
    env.execute("bound").unwrap();
    // With an unbounded lateness bound nothing is late: both windows hold their records.
    let mut got = out.values();
    got.sort();
    assert_eq!(got.iter().map(|g| g.1).sum::<usize>(), 3, "{got:?}");
}

#[test]
fn timestamps_outside_the_valid_range_are_refused_with_the_range() {
    for bad in [i64::MIN, i64::MAX] {
        let env = StreamEnv::new();
        env.set_parallelism(1);
        env.source(CollectionSource::new(vec![1u64, 2, 3]), Watermarks::monotonic().with_timestamps(move |_| bad))
            .name("clock")
            .discard();
        let error = env.execute("range").unwrap_err().to_string();
        assert!(
            error.contains(&format!("the timestamp assigner returned {bad}"))
                && error.contains(&format!("{MIN_TIMESTAMP}..={MAX_TIMESTAMP}"))
                && error.contains("clock"),
            "{error}"
        );
    }
}
