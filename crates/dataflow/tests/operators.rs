//! Operator tests with scripted input: records, watermarks and clock ticks in, the output
//! checked in order.

use sluice_dataflow::operators::{
    AggregateWindow, Count, DropLate, KeyFn, KeyedContext, KeyedProcessFunction, KeyedProcessOperator,
    LateToSideOutput, ProcessWindow, ReduceWindow, RollingReduce, WindowAssigner, WindowOperator, WindowOutput,
    WindowTime,
};
use sluice_dataflow::testing::{Event, OperatorHarness};
use sluice_types::{TimeWindow, Timestamp};
use std::sync::Arc;

type Pair = (u32, u64);

fn key() -> KeyFn<Pair, u32> {
    Arc::new(|p: &Pair| p.0)
}

fn counting(assigner: WindowAssigner, lateness: i64) -> OperatorHarness<Pair, WindowOutput<(u32, i64, u64), Pair>> {
    let finish = Arc::new(|k: &u32, w: &TimeWindow, n: u64| (*k, w.start, n));
    OperatorHarness::new(WindowOperator::<_, _, _, LateToSideOutput>::new(
        key(),
        assigner,
        WindowTime::EventTime,
        lateness,
        AggregateWindow { aggregate: Count, finish },
    ))
}

#[test]
fn tumbling_window_fires_when_the_watermark_passes_its_end() {
    let mut h = counting(WindowAssigner::Tumbling { size: 10, offset: 0 }, 0);
    h.push((1, 0), 3);
    h.push((1, 0), 9);
    h.push((2, 0), 12);
    assert_eq!(h.take(), vec![]);
    h.watermark(8);
    assert_eq!(h.take(), vec![Event::Watermark(8)]);
    h.watermark(9);
    assert_eq!(h.take(), vec![Event::Record(WindowOutput::Result((1, 0, 2)), 9), Event::Watermark(9)]);
    // Late: its window [0, 10) is gone.
    h.push((1, 7), 5);
    assert_eq!(h.take(), vec![Event::Record(WindowOutput::Late((1, 7)), 5)]);
    h.watermark(i64::MAX);
    assert_eq!(h.take(), vec![Event::Record(WindowOutput::Result((2, 10, 1)), 19), Event::Watermark(i64::MAX)]);
}

#[test]
fn allowed_lateness_refires_then_drops() {
    let mut h = counting(WindowAssigner::Tumbling { size: 10, offset: 0 }, 5);
    h.push((1, 0), 1);
    h.watermark(9);
    assert_eq!(h.take_records(), vec![(WindowOutput::Result((1, 0, 1)), 9)]);
    h.push((1, 0), 2); // within lateness: fires again with the update
    assert_eq!(h.take_records(), vec![(WindowOutput::Result((1, 0, 2)), 9)]);
    h.watermark(14); // cleanup time 9 + 5 reached
    h.push((1, 0), 3);
    assert_eq!(h.take_records(), vec![(WindowOutput::Late((1, 0)), 3)]);
}

#[test]
fn a_late_record_fires_a_window_the_watermark_passed_while_this_subtask_had_no_data_for_it() {
    for assigner in
        [WindowAssigner::Tumbling { size: 10, offset: 0 }, WindowAssigner::Sliding { size: 10, slide: 5, offset: 0 }]
    {
        let mut h = counting(assigner, 20);
        h.watermark(25);
        h.take();
        // Windows ending at 9 (and 4, 14 when sliding) have passed with nothing in them
        // here; each late record within the lateness fires them at once.
        h.push((1, 0), 7);
        let first: Vec<_> = h.take_records();
        assert!(first.contains(&(WindowOutput::Result((1, 0, 1)), 9)), "{assigner:?}: {first:?}");
        h.push((1, 0), 8);
        let second = h.take_records();
        assert!(second.contains(&(WindowOutput::Result((1, 0, 2)), 9)), "{assigner:?}: {second:?}");
    }
}

#[test]
fn a_window_join_shaped_window_fires_once_per_late_record() {
    // What a window join runs: both sides tagged in one keyed window whose function pairs
    // them. The window passed with no data on this subtask; three late records follow.
    type Side = (u32, Result<i64, i64>);
    let pairs = Arc::new(|_: &u32, _: &TimeWindow, all: &[Side]| {
        let mut out = Vec::new();
        for l in all.iter().filter_map(|s| s.1.ok()) {
            for r in all.iter().filter_map(|s| s.1.err()) {
                out.push((l, r));
            }
        }
        out
    });
    let mut h = OperatorHarness::new(WindowOperator::<_, _, _, DropLate>::new(
        Arc::new(|s: &Side| s.0),
        WindowAssigner::Tumbling { size: 10_000, offset: 0 },
        WindowTime::EventTime,
        30_000,
        ProcessWindow(pairs),
    ));
    h.watermark(19_999);
    h.push((0, Ok(15_000)), 15_000);
    assert_eq!(h.take_records(), vec![]);
    h.push((0, Err(16_000)), 16_000);
    assert_eq!(h.take_records(), vec![((15_000, 16_000), 19_999)]);
    h.push((0, Err(17_000)), 17_000);
    assert_eq!(h.take_records(), vec![((15_000, 16_000), 19_999), ((15_000, 17_000), 19_999)]);
}

#[test]
fn sliding_windows_hold_a_record_in_each_overlapping_window() {
    let mut h = OperatorHarness::new(WindowOperator::<_, _, _, DropLate>::new(
        key(),
        WindowAssigner::Sliding { size: 10, slide: 5, offset: 0 },
        WindowTime::EventTime,
        0,
        ReduceWindow(Arc::new(|a: Pair, b: Pair| (a.0, a.1 + b.1))),
    ));
    h.push((1, 1), 7);
    h.push((1, 10), 12);
    h.watermark(i64::MAX);
    assert_eq!(h.take_records(), vec![((1, 1), 9), ((1, 11), 14), ((1, 10), 19)]);
}

#[test]
fn session_windows_merge_when_a_record_bridges_them() {
    let mut h = OperatorHarness::new(WindowOperator::<_, _, _, DropLate>::new(
        key(),
        WindowAssigner::Session { gap: 10 },
        WindowTime::EventTime,
        0,
        ProcessWindow(Arc::new(|k: &u32, w: &TimeWindow, all: &[Pair]| vec![(*k, w.start, w.end, all.len())])),
    ));
    h.push((1, 0), 0);
    h.push((1, 0), 25);
    h.push((1, 0), 100);
    h.push((1, 0), 14); // [14, 24): touches neither [0, 10) nor [25, 35)
    h.watermark(8);
    assert_eq!(h.take_records(), vec![]);
    h.push((1, 0), 9); // [9, 19) bridges [0, 10) and [14, 24) into [0, 24)
    h.watermark(40);
    assert_eq!(h.take_records(), vec![((1, 0, 24, 3), 23), ((1, 25, 35, 1), 34)]);
    h.watermark(i64::MAX);
    assert_eq!(h.take_records(), vec![((1, 100, 110, 1), 109)]);
}

#[test]
fn processing_time_windows_fire_on_the_clock_and_at_the_end() {
    let mut h = OperatorHarness::new(WindowOperator::<_, _, _, DropLate>::new(
        key(),
        WindowAssigner::Tumbling { size: 3_600_000, offset: 0 },
        WindowTime::ProcessingTime,
        0,
        AggregateWindow { aggregate: Count, finish: Arc::new(|k: &u32, _: &TimeWindow, n: u64| (*k, n)) },
    ));
    h.push((4, 0), 0);
    h.push((4, 0), 0);
    h.processing_time(0); // long before the hour-long window ends
    assert_eq!(h.take_records(), vec![]);
    h.end();
    assert_eq!(
        h.take().into_iter().map(|e| if let Event::Record(v, _) = e { Some(v) } else { None }).collect::<Vec<_>>(),
        vec![Some((4, 2)), None]
    );
}

/// Emits a key's count when no record came for 10 ms of event time (a timer per key,
/// pushed back by each record; keyed value state).
#[derive(Clone)]
struct Quiet;

impl KeyedProcessFunction<u32, Pair, (u32, u64)> for Quiet {
    fn process_element(&mut self, _value: Pair, ctx: &mut KeyedContext<'_, u32, (u32, u64)>) {
        let t = ctx.timestamp().unwrap();
        let mut count = ctx.value_state::<u64>("count");
        let n = count.get().copied().unwrap_or(0) + 1;
        count.update(n);
        let due = ctx.value_state::<Timestamp>("due");
        if let Some(old) = due.get().copied() {
            ctx.delete_event_time_timer(old);
        }
        ctx.value_state::<Timestamp>("due").update(t + 10);
        ctx.register_event_time_timer(t + 10);
    }
    fn on_timer(&mut self, _time: Timestamp, ctx: &mut KeyedContext<'_, u32, (u32, u64)>) {
        let n = ctx.value_state::<u64>("count").clear().unwrap_or(0);
        ctx.value_state::<Timestamp>("due").clear();
        let key = *ctx.key();
        ctx.emit((key, n));
    }
}

#[test]
fn keyed_process_function_with_state_and_event_time_timers() {
    let mut h = OperatorHarness::new(KeyedProcessOperator::new(key(), Quiet));
    h.push((1, 0), 0);
    h.push((2, 0), 3);
    h.push((1, 0), 8);
    h.watermark(13);
    assert_eq!(h.take_records(), vec![((2, 1), 13)]);
    h.watermark(18);
    assert_eq!(h.take_records(), vec![((1, 2), 18)]);
    h.push((1, 0), 30);
    h.watermark(i64::MAX);
    assert_eq!(h.take_records(), vec![((1, 1), 40)]);
}

#[test]
fn rolling_reduce_emits_every_update() {
    let mut h = OperatorHarness::new(RollingReduce::new(key(), |a: Pair, b: Pair| (a.0, a.1 + b.1)));
    h.push_batch(vec![
        sluice_types::Record::new((1, 1), 0),
        sluice_types::Record::new((2, 5), 0),
        sluice_types::Record::new((1, 2), 0),
    ]);
    assert_eq!(h.take_records(), vec![((1, 1), 0), ((2, 5), 0), ((1, 3), 0)]);
}

#[test]
fn a_record_without_timestamp_in_an_event_time_window_is_a_clear_failure() {
    let mut h = counting(WindowAssigner::Tumbling { size: 10, offset: 0 }, 0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.push((1, 0), i64::MIN)));
    let message = format!("{:?}", result.err().and_then(|p| p.downcast_ref::<String>().cloned()));
    assert!(message.contains("with_timestamps"), "{message}");
}

/// `SLUICE_TEST_SEED` if set, else `default`.
fn test_seed(default: u64) -> u64 {
    std::env::var("SLUICE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A xorshift generator from `seed`: `random(bound)` is below `bound`. Tests print the seed
/// when they fail (`SLUICE_TEST_SEED` replays it).
fn seeded_random(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed | 1;
    move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    }
}

/// Turns a snapshot into what a restored subtask owning every key group receives.
fn restored(states: Vec<sluice_dataflow::snapshot::SubtaskState>) -> Option<sluice_dataflow::snapshot::Restored> {
    use sluice_dataflow::snapshot::{OperatorState, Restored};
    let mut chunks = Vec::new();
    for s in states {
        if let OperatorState::Keyed(groups) = s.state {
            chunks.extend(groups);
        }
    }
    Some(Restored::Keyed(chunks))
}

#[test]
fn window_state_survives_a_snapshot_and_restore() {
    let mut h = counting(WindowAssigner::Tumbling { size: 10, offset: 0 }, 5);
    h.push((1, 0), 3);
    h.push((2, 0), 4);
    h.watermark(9); // fires [0, 10), kept for the lateness
    h.push((1, 0), 12);
    h.take();
    let snapshot = h.checkpoint(1);
    assert_eq!(snapshot.len(), 1);
    let finish = Arc::new(|k: &u32, w: &TimeWindow, n: u64| (*k, w.start, n));
    let mut r = OperatorHarness::restored(
        WindowOperator::<_, _, _, LateToSideOutput>::new(
            key(),
            WindowAssigner::Tumbling { size: 10, offset: 0 },
            WindowTime::EventTime,
            5,
            AggregateWindow { aggregate: Count, finish },
        ),
        restored(snapshot),
    );
    r.watermark(9);
    r.push((1, 0), 8); // a late firing of the restored, already fired window
    assert_eq!(r.take_records(), vec![(WindowOutput::Result((1, 0, 2)), 9)]);
    r.watermark(i64::MAX);
    assert_eq!(r.take_records(), vec![(WindowOutput::Result((1, 10, 1)), 19)]);
}

/// The copy a window operator takes at a barrier is encoded later, on another thread: what
/// it encodes must be the state at the barrier, whatever the operator did in between (more
/// records into the same windows, windows firing and purged, sessions merging). Two twins
/// get the same seeded input; one is encoded at the barrier, the other's copy only after
/// it went on.
#[test]
fn a_window_state_copied_at_a_barrier_encodes_as_it_was_at_the_barrier() {
    let seed = test_seed(0xc0b1);
    for assigner in [
        WindowAssigner::Tumbling { size: 10, offset: 0 },
        WindowAssigner::Sliding { size: 20, slide: 5, offset: 0 },
        WindowAssigner::Session { gap: 4 },
    ] {
        let mut random = seeded_random(seed);
        let (mut encoded_now, mut copied) = (counting(assigner, 5), counting(assigner, 5));
        for time in 0..200 {
            let value = (random(20) as u32, 0);
            encoded_now.push(value, time);
            copied.push(value, time);
            if time % 25 == 0 {
                encoded_now.watermark(time - 8);
                copied.watermark(time - 8);
            }
        }
        let at_barrier = encoded_now.checkpoint(1);
        let copy = copied.barrier(1);
        assert!(copy.has_copies(), "{assigner:?}: a window operator with state copies it at the barrier");
        for time in 190..400 {
            copied.push((random(20) as u32, 0), time);
        }
        copied.watermark(i64::MAX);
        assert!(!copied.take_records().is_empty(), "{assigner:?}: the twin fired its windows after the barrier");
        let encoded_later = copy.encode().expect("the copy encodes");
        assert_eq!(encoded_later, at_barrier, "seed {seed}, {assigner:?}: the copy changed after the barrier");
    }
}

#[test]
fn keyed_state_and_timers_survive_a_snapshot_and_restore() {
    let mut h = OperatorHarness::new(KeyedProcessOperator::new(key(), Quiet));
    h.push((1, 0), 0);
    h.push((1, 0), 5);
    let snapshot = h.checkpoint(1);
    let mut r = OperatorHarness::restored(KeyedProcessOperator::new(key(), Quiet), restored(snapshot));
    r.watermark(15);
    assert_eq!(r.take_records(), vec![((1, 2), 15)], "the count and the timer came back");
}

/// Emits the key once, a processing-time second after its first record.
#[derive(Clone)]
struct Reminder;

impl KeyedProcessFunction<u32, Pair, u32> for Reminder {
    fn process_element(&mut self, _value: Pair, ctx: &mut KeyedContext<'_, u32, u32>) {
        let mut armed = ctx.value_state::<bool>("armed");
        if armed.get().is_none() {
            armed.update(true);
            ctx.register_processing_time_timer(1_000);
        }
    }
    fn on_timer(&mut self, time: Timestamp, ctx: &mut KeyedContext<'_, u32, u32>) {
        assert_eq!(ctx.timer_domain(), Some(sluice_state::TimeDomain::ProcessingTime));
        let key = *ctx.key();
        ctx.emit_at(key, time);
    }
}

#[test]
fn processing_time_timers_fire_on_the_clock_not_the_watermark() {
    let mut h = OperatorHarness::new(KeyedProcessOperator::new(key(), Reminder));
    h.push((7, 0), 0);
    h.push((7, 0), 0);
    h.watermark(i64::MAX - 1);
    assert_eq!(h.take_records(), vec![]);
    h.processing_time(999);
    assert_eq!(h.take_records(), vec![]);
    h.processing_time(1_000);
    assert_eq!(h.take_records(), vec![(7, 1_000)]);
}

/// Sets a processing-time timer a second ahead of each record's arrival count, and on
/// every firing another one a second later (a periodic timer).
#[derive(Clone)]
struct Periodic;

impl KeyedProcessFunction<u32, Pair, (u32, i64)> for Periodic {
    fn process_element(&mut self, value: Pair, ctx: &mut KeyedContext<'_, u32, (u32, i64)>) {
        ctx.register_processing_time_timer(1_000 + value.1 as i64);
    }
    fn on_timer(&mut self, time: Timestamp, ctx: &mut KeyedContext<'_, u32, (u32, i64)>) {
        let key = *ctx.key();
        ctx.emit_at((key, time), time);
        ctx.register_processing_time_timer(time + 1_000);
    }
}

#[test]
fn pending_processing_time_timers_fire_when_the_input_ends_and_periodic_ones_stop() {
    let mut h = OperatorHarness::new(KeyedProcessOperator::new(key(), Periodic));
    h.push((1, 0), 0);
    h.push((2, 500), 0);
    h.processing_time(10);
    assert_eq!(h.take_records(), vec![]);
    h.end();
    // Both pending timers fire in time order; key 1's follow-up at 2_000 is later than
    // every timer pending at the end, so it is not waited for.
    let fired: Vec<(u32, i64)> = h.take_records().into_iter().map(|(v, _)| v).collect();
    assert_eq!(fired, vec![(1, 1_000), (2, 1_500)]);
}

/// A sliding count with panes (an incremental aggregate) against the same windows kept
/// whole (a function over all elements, which does not share panes), over seeded random
/// input that is out of order, late and within the allowed lateness: the same results,
/// re-firings and late records after every step. Half way, the pane operator is
/// snapshotted and restored, and goes on as if nothing happened.
#[test]
fn sliding_windows_with_panes_equal_windows_kept_whole_also_across_a_restore() {
    let seed = test_seed(0x5eed);
    let mut random = seeded_random(seed);
    let assigner = WindowAssigner::Sliding { size: 20, slide: 5, offset: 0 };
    let panes = |restored_from: Option<Vec<sluice_dataflow::snapshot::SubtaskState>>| {
        let finish = Arc::new(|k: &u32, w: &TimeWindow, n: u64| (*k, w.start, n));
        let operator = WindowOperator::<_, _, _, LateToSideOutput>::new(
            key(),
            assigner,
            WindowTime::EventTime,
            7,
            AggregateWindow { aggregate: Count, finish },
        );
        OperatorHarness::restored(operator, restored_from.and_then(restored))
    };
    let mut whole = OperatorHarness::new(WindowOperator::<_, _, _, LateToSideOutput>::new(
        key(),
        assigner,
        WindowTime::EventTime,
        7,
        ProcessWindow(Arc::new(|k: &u32, w: &TimeWindow, all: &[Pair]| vec![(*k, w.start, all.len() as u64)])),
    ));
    let mut paned = panes(None);
    let sorted = |mut records: Vec<(WindowOutput<(u32, i64, u64), Pair>, Timestamp)>| {
        records.sort_by_key(|r| format!("{r:?}"));
        records
    };
    let (mut now, mut watermark) = (0i64, i64::MIN);
    let mut outputs = 0;
    for step in 0..2_000 {
        if step == 1_000 {
            let snapshot = paned.checkpoint(1);
            paned = panes(Some(snapshot));
            if watermark != i64::MIN {
                // A restored subtask hears the watermark again before new records.
                paned.watermark(watermark);
                paned.take();
            }
        }
        if random(10) < 7 {
            now += random(3) as i64;
            // Mostly near the front of time, sometimes well behind it (late).
            let behind = if random(4) == 0 { 30 } else { 4 };
            let time = now - random(behind) as i64;
            let value = (random(5) as u32, 0);
            whole.push(value, time);
            paned.push(value, time);
        } else {
            watermark = watermark.max(now - 6);
            whole.watermark(watermark);
            paned.watermark(watermark);
        }
        let (want, got) = (sorted(whole.take_records()), sorted(paned.take_records()));
        assert_eq!(got, want, "seed {seed}, step {step}: panes differ from whole windows");
        outputs += want.len();
    }
    whole.watermark(i64::MAX);
    paned.watermark(i64::MAX);
    assert_eq!(sorted(paned.take_records()), sorted(whole.take_records()), "seed {seed}: at the end");
    assert!(outputs > 500, "seed {seed}: only {outputs} outputs; a test of little");
}
