//! Late firings within the allowed lateness: every late record fires its window again,
//! also when the subtask held no data for that window when the watermark passed it (the
//! output must not depend on which keys share a subtask). Checked at parallelism 1 and 3
//! against a plain-Rust model of Flink's default event-time trigger, firing by firing.

mod common;

use common::{multiset, seed, Rng, SumValues};
use sluice::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// (key, value, event time)
type Event = (u8, u64, i64);

/// Every firing (key, window start, sum) of an aligned window sum with allowed lateness,
/// for one source read in order with a watermark after every record: a record is added to
/// each of its windows whose cleanup time has not passed, and fires it at once when the
/// watermark is already past its end; a watermark fires windows not fired yet.
fn reference_firings(input: &[Event], size: i64, slide: i64, bound: i64, lateness: i64) -> Vec<(u8, i64, u64)> {
    let mut windows: BTreeMap<(i64, u8), (u64, bool)> = BTreeMap::new();
    let mut fired = Vec::new();
    let mut watermark = i64::MIN;
    let mut max_seen = i64::MIN;
    for &(k, v, t) in input {
        let mut start = t - t.rem_euclid(slide);
        while start > t - size {
            let end = start + size;
            if end - 1 + lateness > watermark {
                let state = windows.entry((start, k)).or_insert((0, false));
                state.0 += v;
                if end - 1 <= watermark {
                    state.1 = true;
                    fired.push((k, start, state.0));
                }
            }
            start -= slide;
        }
        max_seen = max_seen.max(t);
        let next = max_seen - bound - 1;
        if next > watermark {
            watermark = next;
            for (&(start, k), state) in windows.iter_mut() {
                if !state.1 && start + size - 1 <= watermark {
                    state.1 = true;
                    fired.push((k, start, state.0));
                }
            }
            windows.retain(|&(start, _), _| start + size - 1 + lateness > watermark);
        }
    }
    fired.extend(windows.into_iter().filter(|(_, s)| !s.1).map(|((start, k), s)| (k, start, s.0)));
    fired
}

fn env(parallelism: usize) -> StreamEnv {
    let env = StreamEnv::new();
    // One record per batch and a watermark after each: the order of records and
    // watermarks, and so every firing, is deterministic at any window parallelism.
    env.set_parallelism(parallelism).set_batch_size(1).set_watermark_interval(Duration::ZERO);
    env
}

fn run_aligned(input: &[Event], spec: WindowSpec, lateness: i64, parallelism: usize) -> Vec<(u8, i64, u64)> {
    let env = env(parallelism);
    let out = env
        .source(
            CollectionSource::new(input.to_vec()),
            Watermarks::bounded(Duration::from_secs(2)).with_timestamps(|e: &Event| e.2),
        )
        .parallelism(1)
        .key_by(|e| e.0)
        .window(spec)
        .allowed_lateness(Duration::from_millis(lateness as u64))
        .aggregate_with(SumValues, |k, w, sum| (*k, w.start, sum))
        .collect();
    env.execute("late firings").unwrap();
    out.values()
}

#[test]
fn the_issue_reproduction_fires_once_per_late_record() {
    let input = vec![(0u8, 1u64, 22_000i64), (0, 2, 15_000), (0, 3, 16_000)];
    for parallelism in [1, 3] {
        let mut got: Vec<u64> = run_aligned(&input, Tumbling::event_time(Duration::from_secs(10)), 1000, parallelism)
            .into_iter()
            .map(|(_, _, sum)| sum)
            .collect();
        got.sort();
        assert_eq!(got, vec![1, 2, 5], "parallelism {parallelism}");
    }
}

/// Keys 1 ms apart in a strided order with seeded late records, so that windows pass on
/// subtasks that have no data for them and the late records arrive there first.
fn late_input(seed: u64) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    (0..1500)
        .map(|i| {
            // A few records per window: windows often pass a subtask that has none of them.
            let mut t = i as i64 * 300;
            if rng.below(4) == 0 {
                t -= 2000 + rng.below(2500) as i64;
            }
            (rng.below(5) as u8, rng.below(100), t.max(0))
        })
        .collect()
}

#[test]
fn tumbling_and_sliding_late_firings_match_the_reference_at_every_parallelism() {
    let seed = seed();
    for (size, slide) in [(1000i64, 1000i64), (1500, 500)] {
        let lateness = 2500;
        let input = late_input(seed ^ size as u64);
        let want = reference_firings(&input, size, slide, 2000, lateness);
        let late_firings = want.len() - reference_firings(&input, size, slide, 2000, 0).len();
        assert!(late_firings > 30, "the input must cause late firings (seed {seed})");
        for parallelism in [1, 3] {
            let spec = if size == slide {
                Tumbling::event_time(Duration::from_millis(size as u64))
            } else {
                Sliding::event_time(Duration::from_millis(size as u64), Duration::from_millis(slide as u64))
            };
            let got = run_aligned(&input, spec, lateness, parallelism);
            assert_eq!(
                multiset(got),
                multiset(want.clone()),
                "size {size} slide {slide}, parallelism {parallelism}, SLUICE_TEST_SEED={seed}"
            );
        }
    }
}

#[test]
fn a_late_record_that_starts_a_session_past_the_watermark_fires_it_at_once() {
    // Watermark 19_999 after the first record; the next two are late (within the lateness
    // of 10 s) and merge: each fires at once, the session at 22_000 fires at the end.
    let input = vec![(0u8, 1u64, 22_000i64), (0, 2, 15_000), (0, 3, 16_000), (1, 4, 14_000)];
    for parallelism in [1, 3] {
        let env = env(parallelism);
        let out = env
            .source(
                CollectionSource::new(input.clone()),
                Watermarks::bounded(Duration::from_secs(2)).with_timestamps(|e: &Event| e.2),
            )
            .parallelism(1)
            .key_by(|e| e.0)
            .window(Session::event_time(Duration::from_secs(1)))
            .allowed_lateness(Duration::from_secs(10))
            .aggregate_with(SumValues, |k, w, sum| (*k, w.start, w.end, sum))
            .collect();
        env.execute("late sessions").unwrap();
        let want = vec![(0, 15_000, 16_000, 2), (0, 15_000, 17_000, 5), (1, 14_000, 15_000, 4), (0, 22_000, 23_000, 1)];
        assert_eq!(multiset(out.values()), multiset(want), "parallelism {parallelism}");
    }
}

#[test]
fn a_window_join_accepts_allowed_lateness() {
    // One source per side, every record in time: a window join with lateness gives the
    // same pairs as without (late firings of the join's window are checked on the
    // operator, where their order is deterministic: crates/dataflow/tests/operators.rs).
    let left = vec![(0u8, 10i64), (0, 15_000), (5, 22_000)];
    let right = vec![(0u8, 11i64), (0, 16_000), (5, 22_000)];
    for parallelism in [1, 3] {
        let env = env(parallelism);
        let strategy = || Watermarks::bounded(Duration::from_secs(2)).with_timestamps(|e: &(u8, i64)| e.1);
        let l = env.source(CollectionSource::new(left.clone()), strategy()).parallelism(1);
        let r = env.source(CollectionSource::new(right.clone()), strategy()).parallelism(1);
        let pairs = l
            .join(&r)
            .where_key(|e| e.0)
            .equal_to(|e| e.0)
            .window(Tumbling::event_time(Duration::from_secs(10)))
            .allowed_lateness(Duration::from_secs(30))
            .apply(|a, b| (a.0, a.1, b.1))
            .collect();
        env.execute("join with lateness").unwrap();
        let want = multiset(vec![(0u8, 10i64, 11i64), (0, 15_000, 16_000), (5, 22_000, 22_000)]);
        assert_eq!(multiset(pairs.values()), want, "parallelism {parallelism}");
    }
}
