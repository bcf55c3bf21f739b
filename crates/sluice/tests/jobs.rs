//! Whole jobs at parallelism 1 and 3, checked against an independent plain-Rust
//! computation over the same input: out-of-order and late records, sliding and session
//! windows, both joins, keyed state and timers. Inputs are seeded; a failing run prints
//! its seed (rerun with SLUICE_TEST_SEED=<seed>).

mod common;

use common::{multiset, seed, sorted, window_start, Rng, SumValues};
use sluice::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

/// (key, value, event time)
type Event = (u32, u64, i64);

/// Events 1 ms apart on average, shuffled by up to `jitter` ms; every `late_every`-th
/// event is moved `late_by` ms into the past.
fn events(rng: &mut Rng, n: usize, keys: u64, jitter: i64, late_every: usize, late_by: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut t = i as i64 * 3 - rng.below(jitter as u64 + 1) as i64;
            if late_every > 0 && i % late_every == late_every - 1 {
                t -= late_by;
            }
            (rng.below(keys) as u32, rng.below(100), t.max(0))
        })
        .collect()
}

fn with_seed(test: impl Fn(u64)) {
    let seed = seed();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(seed)));
    if let Err(panic) = result {
        eprintln!("failed with SLUICE_TEST_SEED={seed}");
        std::panic::resume_unwind(panic);
    }
}

/// The reference of a tumbling event-time sum with allowed lateness and a late side
/// output, for one source read in order with a watermark after every record.
fn reference_tumbling(input: &[Event], size: i64, bound: i64, lateness: i64) -> (HashMap<(u32, i64), u64>, Vec<Event>) {
    let mut sums = HashMap::new();
    let mut late = Vec::new();
    let mut max_seen = i64::MIN;
    for &(k, v, t) in input {
        let watermark = if max_seen == i64::MIN { i64::MIN } else { max_seen - bound - 1 };
        let start = window_start(t, size);
        if start + size - 1 + lateness <= watermark {
            late.push((k, v, t));
        } else {
            *sums.entry((k, start)).or_insert(0) += v;
        }
        max_seen = max_seen.max(t);
    }
    (sums, late)
}

#[test]
fn tumbling_windows_with_out_of_order_and_late_records_match_the_reference() {
    with_seed(|seed| {
        for parallelism in [1, 3] {
            let mut rng = Rng::new(seed ^ parallelism as u64);
            let input = events(&mut rng, 3000, 7, 40, 50, 400);
            let (size, bound, lateness) = (100i64, 20i64, 60i64);
            let (want_sums, want_late) = reference_tumbling(&input, size, bound, lateness);
            assert!(!want_late.is_empty(), "the input must contain late records");

            let env = StreamEnv::new();
            // One source subtask and a watermark after every record make lateness
            // deterministic; the windows run at `parallelism` behind a keyed exchange.
            env.set_parallelism(parallelism).set_batch_size(1).set_watermark_interval(Duration::ZERO);
            let late_tag = OutputTag::<Event>::new("late");
            let sums = env
                .source(
                    CollectionSource::new(input.clone()),
                    Watermarks::bounded(Duration::from_millis(bound as u64)).with_timestamps(|e: &Event| e.2),
                )
                .parallelism(1)
                .key_by(|e| e.0)
                .window(Tumbling::event_time(Duration::from_millis(size as u64)))
                .allowed_lateness(Duration::from_millis(lateness as u64))
                .side_output_late_data(&late_tag)
                .aggregate_with(SumValues, |k, w, sum| (*k, w.start, sum))
                .uid("sums");
            let late = sums.side_output(&late_tag).collect();
            let results = sums.collect();
            env.execute("tumbling").unwrap();

            // A window fires again for each late record within the lateness: the last
            // result of each window is the final one.
            let mut got: HashMap<(u32, i64), u64> = HashMap::new();
            for (k, start, sum) in results.values() {
                got.insert((k, start), sum);
            }
            assert_eq!(got, want_sums, "parallelism {parallelism}");
            assert_eq!(sorted(late.values()), sorted(want_late), "parallelism {parallelism}");
        }
    });
}

#[test]
fn sliding_windows_over_parallel_out_of_order_sources_match_the_reference() {
    with_seed(|seed| {
        let n = 20_000u64;
        let jitter = 50u64;
        // Event i happens at 2i ms minus a seeded jitter below the watermark bound, so no
        // record is late and the result does not depend on timing.
        let event = move |i: u64| -> Event {
            let mut r = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9));
            ((r.below(13)) as u32, r.below(1000), (2 * i as i64 - r.below(jitter) as i64).max(0))
        };
        let (size, slide) = (300i64, 100i64);
        let mut want: HashMap<(u32, i64), (u64, u64)> = HashMap::new();
        for i in 0..n {
            let (k, v, t) = event(i);
            let mut start = window_start(t, slide);
            while start > t - size {
                let e = want.entry((k, start)).or_insert((0, 0));
                e.0 += v;
                e.1 = e.1.max(v);
                start -= slide;
            }
        }
        for parallelism in [1, 3] {
            let env = StreamEnv::new();
            env.set_parallelism(parallelism).set_watermark_interval(Duration::from_millis(5));
            let out = env
                .source(
                    GeneratorSource::new(0..n, event),
                    Watermarks::bounded(Duration::from_millis(jitter)).with_timestamps(|e: &Event| e.2),
                )
                .map(|(k, v, t)| (k, v, v, t))
                .key_by(|e| e.0)
                .window(Sliding::event_time(Duration::from_millis(size as u64), Duration::from_millis(slide as u64)))
                .reduce(|a, b| (a.0, a.1 + b.1, a.2.max(b.2), a.3))
                .collect();
            env.execute("sliding").unwrap();
            let got: Vec<((u32, i64), (u64, u64))> = out
                .records()
                .into_iter()
                .map(|r| ((r.value.0, window_start(r.time, slide) + slide - size), (r.value.1, r.value.2)))
                .collect();
            assert_eq!(got.len(), want.len(), "one result per key and window, parallelism {parallelism}");
            assert_eq!(got.into_iter().collect::<HashMap<_, _>>(), want, "parallelism {parallelism}");
        }
    });
}

#[test]
fn session_windows_merge_across_out_of_order_records() {
    with_seed(|seed| {
        let mut rng = Rng::new(seed);
        let gap = 30i64;
        // Per key, bursts of records a few ms apart separated by long pauses; shuffled
        // within 40 ms so that bridging records often arrive after both sides.
        let mut input: Vec<(u32, i64)> = Vec::new();
        for key in 0..9u32 {
            let mut t = rng.below(50) as i64;
            for _ in 0..60 {
                let burst = 1 + rng.below(6);
                for _ in 0..burst {
                    input.push((key, t));
                    t += 1 + rng.below(gap as u64 - 1) as i64;
                }
                t += gap + rng.below(200) as i64;
            }
        }
        let mut shuffled: Vec<(i64, (u32, i64))> = input.iter().map(|&e| (e.1 + rng.below(40) as i64, e)).collect();
        shuffled.sort();
        let input: Vec<(u32, i64)> = shuffled.into_iter().map(|(_, e)| e).collect();
        let mut by_key: HashMap<u32, Vec<i64>> = HashMap::new();
        for &(k, t) in &input {
            by_key.entry(k).or_default().push(t);
        }
        let mut want = Vec::new();
        for (k, mut ts) in by_key {
            ts.sort();
            let (mut start, mut end, mut count) = (ts[0], ts[0] + gap, 0usize);
            for t in ts {
                if t > end {
                    want.push((k, start, end, count));
                    (start, count) = (t, 0);
                }
                end = end.max(t + gap);
                count += 1;
            }
            want.push((k, start, end, count));
        }
        for parallelism in [1, 3] {
            let env = StreamEnv::new();
            env.set_parallelism(parallelism).set_watermark_interval(Duration::from_millis(2));
            let out = env
                .source(
                    CollectionSource::new(input.clone()),
                    Watermarks::bounded(Duration::from_millis(40)).with_timestamps(|e: &(u32, i64)| e.1),
                )
                .key_by(|e| e.0)
                .window(Session::event_time(Duration::from_millis(gap as u64)))
                .process(|k, w, all| vec![(*k, w.start, w.end, all.len())])
                .collect();
            env.execute("sessions").unwrap();
            assert_eq!(sorted(out.values()), sorted(want.clone()), "parallelism {parallelism}, seed {seed}");
        }
    });
}

#[test]
fn window_join_and_interval_join_match_nested_loops() {
    with_seed(|seed| {
        let mut rng = Rng::new(seed);
        let left: Vec<(u32, i64, u32)> =
            (0..800).map(|i| (rng.below(10) as u32, (i * 5 - rng.below(20) as i64).max(0), i as u32)).collect();
        let right: Vec<(u32, i64, u32)> =
            (0..600).map(|i| (rng.below(10) as u32, (i * 7 - rng.below(20) as i64).max(0), i as u32)).collect();
        let size = 100i64;
        let (lower, upper) = (-15i64, 25i64);
        let mut want_window = Vec::new();
        let mut want_interval = Vec::new();
        for l in &left {
            for r in &right {
                if l.0 == r.0 && window_start(l.1, size) == window_start(r.1, size) {
                    want_window.push((l.2, r.2));
                }
                if l.0 == r.0 && r.1 >= l.1 + lower && r.1 <= l.1 + upper {
                    want_interval.push((l.2, r.2));
                }
            }
        }
        assert!(!want_window.is_empty() && !want_interval.is_empty());
        for parallelism in [1, 3] {
            let env = StreamEnv::new();
            env.set_parallelism(parallelism).set_watermark_interval(Duration::from_millis(2));
            let strategy = || Watermarks::bounded(Duration::from_millis(25)).with_timestamps(|e: &(u32, i64, u32)| e.1);
            let l = env.source(CollectionSource::new(left.clone()), strategy());
            let r = env.source(CollectionSource::new(right.clone()), strategy());
            let windowed = l
                .join(&r)
                .where_key(|e| e.0)
                .equal_to(|e| e.0)
                .window(Tumbling::event_time(Duration::from_millis(size as u64)))
                .apply(|a, b| (a.2, b.2))
                .collect();
            let interval = l
                .key_by(|e| e.0)
                .interval_join(&r.key_by(|e| e.0))
                .between(lower, upper)
                .process(|a, b| (a.2, b.2))
                .collect();
            env.execute("joins").unwrap();
            assert_eq!(sorted(windowed.values()), sorted(want_window.clone()), "window join, p {parallelism}");
            assert_eq!(sorted(interval.values()), sorted(want_interval.clone()), "interval join, p {parallelism}");
        }
    });
}

/// Emits (key, count, first timestamp) of each burst of a key once 10 ms of event time
/// pass without a record of it: value and list state, a timer pushed back per record.
#[derive(Clone)]
struct Bursts;

impl KeyedProcessFunction<u32, (u32, i64), (u32, usize, i64)> for Bursts {
    fn process_element(&mut self, e: (u32, i64), ctx: &mut KeyedContext<'_, u32, (u32, usize, i64)>) {
        ctx.list_state::<i64>("times").add(e.1);
        if let Some(old) = ctx.value_state::<i64>("due").clear() {
            ctx.delete_event_time_timer(old);
        }
        ctx.value_state::<i64>("due").update(e.1 + 10);
        ctx.register_event_time_timer(e.1 + 10);
        let mut seen = ctx.map_state::<bool, u64>("parity");
        let n = seen.get(&(e.1 % 2 == 0)).copied().unwrap_or(0);
        seen.put(e.1 % 2 == 0, n + 1);
    }
    fn on_timer(&mut self, _time: Timestamp, ctx: &mut KeyedContext<'_, u32, (u32, usize, i64)>) {
        let times = ctx.list_state::<i64>("times").clear();
        ctx.value_state::<i64>("due").clear();
        let parity: u64 = ctx.map_state::<bool, u64>("parity").entries().iter().map(|(_, n)| n).sum();
        assert_eq!(parity as usize, times.len(), "map state agrees with list state");
        ctx.map_state::<bool, u64>("parity").clear();
        let key = *ctx.key();
        ctx.emit((key, times.len(), times[0]));
    }
}

#[test]
fn keyed_state_and_event_time_timers_match_the_reference() {
    // Event i at i ms; in each 600 ms block three keys take turns (gaps of 3 ms), and a
    // key's next block is 1800 ms later: bursts are the blocks.
    let input: Vec<(u32, i64)> = (0..12_000i64).map(|i| (3 * ((i / 600) % 4) as u32 + (i % 3) as u32, i)).collect();
    let mut want = Vec::new();
    let mut last: HashMap<u32, (usize, i64, i64)> = HashMap::new();
    for &(k, t) in &input {
        match last.get_mut(&k) {
            Some(b) if t - b.2 <= 10 => {
                b.0 += 1;
                b.2 = t;
            }
            Some(b) => {
                want.push((k, b.0, b.1));
                *b = (1, t, t);
            }
            None => {
                last.insert(k, (1, t, t));
            }
        }
    }
    want.extend(last.into_iter().map(|(k, b)| (k, b.0, b.1)));
    for parallelism in [1, 3] {
        let env = StreamEnv::new();
        env.set_parallelism(parallelism).set_batch_size(1).set_watermark_interval(Duration::ZERO);
        let out = env
            .source(CollectionSource::new(input.clone()), Watermarks::monotonic().with_timestamps(|e: &(u32, i64)| e.1))
            .parallelism(1)
            .key_by(|e| e.0)
            .process(Bursts)
            .collect();
        env.execute("bursts").unwrap();
        assert_eq!(sorted(out.values()), sorted(want.clone()), "parallelism {parallelism}");
    }
}

#[test]
fn processing_time_windows_count_every_record_of_a_bounded_job() {
    for parallelism in [1, 3] {
        let env = StreamEnv::new();
        env.set_parallelism(parallelism);
        let counts = env
            .source(SequenceSource::new(0..30_000).with_rate_limit(60_000.0), Watermarks::none())
            .key_by(|i| i % 5)
            .window(Tumbling::processing_time(Duration::from_millis(100)))
            .aggregate_with(Count, |k, _, n| (*k, n))
            .collect();
        env.execute("processing time").unwrap();
        let mut per_key: HashMap<u64, u64> = HashMap::new();
        for (k, n) in counts.values() {
            *per_key.entry(k).or_default() += n;
        }
        assert_eq!(per_key, (0..5).map(|k| (k, 6000)).collect(), "parallelism {parallelism}");
        assert!(counts.values().len() > 5, "a 0.5 s job spans several 100 ms windows");
    }
}

#[test]
fn stateless_operators_union_and_partitionings_match_the_reference() {
    for parallelism in [1, 3] {
        let env = StreamEnv::new();
        env.set_parallelism(parallelism);
        let a = env.source(SequenceSource::new(0..5000), Watermarks::none());
        let b = env.from_collection((10_000..10_100u64).collect()).parallelism(1);
        let out = a
            .map(|v| v * 3)
            .filter(|v| v % 2 == 0)
            .union(&b)
            .rebalance()
            .flat_map(|v| vec![v; (v % 3) as usize])
            .collect();
        let broadcast = b.broadcast().map(|v| v).collect();
        env.execute("stateless").unwrap();
        let want: Vec<u64> = (0..5000u64)
            .map(|v| v * 3)
            .filter(|v| v % 2 == 0)
            .chain(10_000..10_100)
            .flat_map(|v| vec![v; (v % 3) as usize])
            .collect();
        assert_eq!(multiset(out.values()), multiset(want), "parallelism {parallelism}");
        assert_eq!(broadcast.values().len(), 100 * parallelism, "broadcast reaches every subtask");
    }
}
