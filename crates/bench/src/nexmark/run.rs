//! Runs one Nexmark query over the generator: `sluice-bench nexmark --query qN --events N
//! --parallelism P [--dump FILE] [--checkpoint-every MS]`.
//!
//! The source is the generator of NEXMARK.md as a parallel source (each subtask generates
//! its share of the one global sequence), with event time `dateTime` and a watermark of
//! `dateTime - 4 s`; at the end of the input the final watermark fires every window. The
//! query's rows go to a sink that discards them (counting), or with `--dump` are collected
//! and written as NEXMARK.md section 6 says: one CSV line per row, sorted by bytes.

use super::{event, Event};
use sluice::connectors::DiscardHandle;
use sluice::prelude::*;
use sluice::types::Data;
use std::path::Path;
use std::time::{Duration, Instant};

/// The queries there are (q6 is not part of the suite).
pub const QUERIES: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];

/// What one run measured.
pub struct Outcome {
    /// Seconds from building the job to its end (start-up included, as Flink's figures).
    pub secs: f64,
    /// Rows the query emitted (for q4 with a dump: the final rows; without, upserts).
    pub rows: u64,
}

/// Runs `query` over events `0..events` at `parallelism`; with `dump`, writes its output
/// there; with `checkpoint_every`, takes exactly-once checkpoints that often.
pub fn run(
    query: &str,
    events: u64,
    parallelism: usize,
    dump: Option<&Path>,
    checkpoint_every: Option<Duration>,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let env = StreamEnv::new();
    env.set_parallelism(parallelism);
    let checkpoints = std::env::temp_dir().join(format!("sluice-nexmark-{}", std::process::id()));
    if let Some(interval) = checkpoint_every {
        let _ = std::fs::remove_dir_all(&checkpoints);
        env.enable_checkpointing(interval, &checkpoints.to_string_lossy());
    }
    let source = events_source(&env, GeneratorSource::new(0..events, event));
    let output = build(query, &source, if dump.is_some() { Rows::Collect } else { Rows::Discard })?;
    env.execute(&format!("nexmark-{query}")).map_err(|e| format!("nexmark {query}: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    if checkpoint_every.is_some() {
        let _ = std::fs::remove_dir_all(&checkpoints);
    }
    let (rows, lines) = output.finish();
    if let (Some(path), Some(lines)) = (dump, &lines) {
        write_dump(path, lines)?;
    }
    Ok(Outcome { secs, rows })
}

/// Writes sorted output lines as NEXMARK.md section 6 says: a line each, `\n` after each.
pub fn write_dump(path: &Path, lines: &[String]) -> Result<(), String> {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Runs `query` over events `0..events` paced at `per_second`, checkpointed every 50 ms,
/// failing once (a panic) when `fail_at` events have entered the query, and resuming from
/// its latest checkpoint; its rows go exactly once into files in `out`, one CSV line each
/// (q4: its upserts, `category,average,version`). What the tests of restored runs compare
/// with their references ([`sluice::connectors::committed_lines`] reads the files).
pub fn run_failing_once(
    query: &str,
    events: u64,
    parallelism: usize,
    per_second: f64,
    fail_at: u64,
    out: &Path,
    checkpoints: &Path,
) -> Result<sluice::JobResult, String> {
    let env = StreamEnv::new();
    env.set_parallelism(parallelism);
    env.enable_checkpointing(Duration::from_millis(50), &checkpoints.to_string_lossy());
    env.set_restart_strategy(RestartStrategy::FixedDelay { attempts: 2, delay: Duration::from_millis(10) });
    let source = events_source(&env, GeneratorSource::new(0..events, event).with_rate_limit(per_second));
    // Counted over every subtask and attempt: the panic comes once, at the `fail_at`-th event.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failing = source
        .map(move |event| {
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == fail_at {
                panic!("injected failure at event {fail_at}");
            }
            event
        })
        .uid("nexmark-failure");
    build(query, &failing, Rows::Files(out))?;
    env.execute(&format!("nexmark-{query}-failing-once")).map_err(|e| format!("nexmark {query}: {e}"))
}

/// The final result from the lines [`run_failing_once`] committed, sorted as `--dump`
/// writes it: the lines themselves, or for q4 each category's upsert of the highest
/// version, without the version.
pub fn final_lines(query: &str, mut lines: Vec<String>) -> Result<Vec<String>, String> {
    if query == "q4" {
        let upserts = lines.iter().map(|line| super::q4::parse_upsert(line)).collect::<Result<Vec<_>, _>>()?;
        lines = super::q4::finalize(upserts).iter().map(super::q4::csv).collect();
    }
    lines.sort_unstable();
    Ok(lines)
}

/// The generator as the queries' source: event time `dateTime`, watermark `dateTime - 4 s`.
fn events_source<F>(env: &StreamEnv, generator: GeneratorSource<F>) -> DataStream<Event>
where
    GeneratorSource<F>: Source<Event>,
{
    env.source(generator, Watermarks::bounded(Duration::from_secs(4)).with_timestamps(|e: &Event| e.date_time()))
        .uid("nexmark-events")
}

/// `query` over `events`, its rows sent where `rows` says.
fn build(query: &str, events: &DataStream<Event>, rows: Rows<'_>) -> Result<Output, String> {
    use super::{q0, q1, q2, q3, q4, q5, q7, q8};
    Ok(match query {
        "q0" => Output::of(q0::query(events), q0::csv, q0::csv, keep, rows),
        "q1" => Output::of(q1::query(events), q1::csv, q1::csv, keep, rows),
        "q2" => Output::of(q2::query(events), q2::csv, q2::csv, keep, rows),
        "q3" => Output::of(q3::query(events), q3::csv, q3::csv, keep, rows),
        "q4" => Output::of(q4::query(events), q4::csv, q4::upsert_csv, q4::finalize, rows),
        "q5" => Output::of(q5::query(events), q5::csv, q5::csv, keep, rows),
        "q7" => Output::of(q7::query(events), q7::csv, q7::csv, keep, rows),
        "q8" => Output::of(q8::query(events), q8::csv, q8::csv, keep, rows),
        other => return Err(format!("--query {other}: give one of {}", QUERIES.join(", "))),
    })
}

/// Every row as it came (all queries but q4, whose output is upserts).
fn keep<R>(rows: Vec<R>) -> Vec<R> {
    rows
}

/// Where a query's rows go.
enum Rows<'a> {
    /// Counted and dropped (what the benchmark measures).
    Discard,
    /// Collected in memory for `--dump`.
    Collect,
    /// Exactly once into files in this folder, a line per row (q4: per upsert).
    Files(&'a Path),
}

/// A query's sink: discarding (counted), collecting for the dump, or files.
enum Output {
    Discarded(DiscardHandle),
    Collected(Box<dyn FnOnce() -> Vec<String>>),
    Files,
}

impl Output {
    fn of<R: Data>(
        stream: DataStream<R>,
        csv: fn(&R) -> String,
        change_csv: fn(&R) -> String,
        finalize: fn(Vec<R>) -> Vec<R>,
        rows: Rows<'_>,
    ) -> Self {
        match rows {
            Rows::Discard => Output::Discarded(stream.discard()),
            Rows::Collect => {
                let handle = stream.collect();
                Output::Collected(Box::new(move || finalize(handle.values()).iter().map(csv).collect()))
            }
            Rows::Files(dir) => {
                stream
                    .map(move |row| change_csv(&row))
                    .uid("nexmark-lines")
                    .sink(TransactionalFileSink::new(dir))
                    .uid("nexmark-files");
                Output::Files
            }
        }
    }

    /// (rows emitted, the sorted lines of a dump).
    fn finish(self) -> (u64, Option<Vec<String>>) {
        match self {
            Output::Discarded(handle) => (handle.count(), None),
            Output::Collected(lines) => {
                let mut lines = lines();
                lines.sort_unstable();
                (lines.len() as u64, Some(lines))
            }
            Output::Files => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each query against a reference computed independently: a plain loop over the same
    //! events, with maps and no engine, written from queries.sql.
    use super::super::{Auction, Bid, Person};
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    const EVENTS: u64 = 40_000;

    fn all_events() -> Vec<Event> {
        (0..EVENTS).map(event).collect()
    }

    fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
        events.iter().filter_map(|e| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
    }

    fn persons(events: &[Event]) -> impl Iterator<Item = &Person> {
        events.iter().filter_map(|e| match e {
            Event::Person(p) => Some(&**p),
            _ => None,
        })
    }

    fn auctions(events: &[Event]) -> impl Iterator<Item = &Auction> {
        events.iter().filter_map(|e| match e {
            Event::Auction(a) => Some(&**a),
            _ => None,
        })
    }

    fn reference(query: &str, events: &[Event]) -> Vec<String> {
        let mut lines: Vec<String> = match query {
            "q0" => bids(events)
                .map(|b| format!("{},{},{},{},{}", b.auction, b.bidder, b.price, b.date_time, b.extra))
                .collect(),
            "q1" => bids(events)
                .map(|b| {
                    let euros = b.price * 908;
                    format!(
                        "{},{},{}.{:03},{},{}",
                        b.auction,
                        b.bidder,
                        euros / 1000,
                        euros % 1000,
                        b.date_time,
                        b.extra
                    )
                })
                .collect(),
            "q2" => {
                bids(events).filter(|b| b.auction % 123 == 0).map(|b| format!("{},{}", b.auction, b.price)).collect()
            }
            "q3" => {
                let sellers: HashMap<i64, &Person> =
                    persons(events).filter(|p| ["OR", "ID", "CA"].contains(&&*p.state)).map(|p| (p.id, p)).collect();
                auctions(events)
                    .filter(|a| a.category == 10)
                    .filter_map(|a| {
                        sellers.get(&a.seller).map(|p| format!("{},{},{},{}", p.name, p.city, p.state, a.id))
                    })
                    .collect()
            }
            "q4" => {
                let by_id: HashMap<i64, &Auction> = auctions(events).map(|a| (a.id, a)).collect();
                let mut winning: HashMap<i64, (i64, i64)> = HashMap::new();
                for b in bids(events) {
                    let Some(a) = by_id.get(&b.auction) else { continue };
                    if b.date_time >= a.date_time && b.date_time <= a.expires {
                        let entry = winning.entry(a.id).or_insert((a.category, b.price));
                        entry.1 = entry.1.max(b.price);
                    }
                }
                let mut per_category: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
                for (category, price) in winning.values() {
                    let totals = per_category.entry(*category).or_default();
                    totals.0 += price;
                    totals.1 += 1;
                }
                per_category.iter().map(|(c, (sum, n))| format!("{c},{}", sum / n)).collect()
            }
            "q5" => {
                let mut counts: HashMap<(i64, i64), u64> = HashMap::new();
                for b in bids(events) {
                    let last = b.date_time.div_euclid(2000) * 2000;
                    for start in (last - 8000..=last).step_by(2000) {
                        *counts.entry((start, b.auction)).or_default() += 1;
                    }
                }
                let mut best: HashMap<i64, u64> = HashMap::new();
                for ((start, _), n) in &counts {
                    let top = best.entry(*start).or_default();
                    *top = (*top).max(*n);
                }
                counts
                    .iter()
                    .filter(|((start, _), n)| best[start] == **n)
                    .map(|((start, auction), n)| format!("{start},{},{auction},{n}", start + 10_000))
                    .collect()
            }
            "q7" => {
                let window = |t: i64| t.div_euclid(10_000);
                let mut best: HashMap<i64, i64> = HashMap::new();
                for b in bids(events) {
                    let top = best.entry(window(b.date_time)).or_insert(b.price);
                    *top = (*top).max(b.price);
                }
                bids(events)
                    .filter(|b| best[&window(b.date_time)] == b.price)
                    .map(|b| format!("{},{},{},{},{}", b.auction, b.price, b.bidder, b.date_time, b.extra))
                    .collect()
            }
            "q8" => {
                let start = |t: i64| t.div_euclid(10_000) * 10_000;
                let sellers: HashSet<(i64, i64)> = auctions(events).map(|a| (a.seller, start(a.date_time))).collect();
                persons(events)
                    .filter(|p| sellers.contains(&(p.id, start(p.date_time))))
                    .map(|p| format!("{},{},{}", p.id, p.name, start(p.date_time)))
                    .collect()
            }
            other => panic!("no reference for {other}"),
        };
        lines.sort_unstable();
        lines
    }

    fn check(query: &str) {
        let events = all_events();
        let want = reference(query, &events);
        assert!(!want.is_empty(), "{query}: the reference is empty; a test of nothing");
        for parallelism in [1, 3] {
            let dir =
                std::env::temp_dir().join(format!("sluice-nexmark-test-{query}-{parallelism}-{}", std::process::id()));
            let outcome = run(query, EVENTS, parallelism, Some(&dir), None).unwrap();
            let written = std::fs::read_to_string(&dir).unwrap();
            let _ = std::fs::remove_file(&dir);
            let got: Vec<&str> = written.lines().collect();
            assert_eq!(outcome.rows, got.len() as u64, "{query}: the dump holds every row");
            assert_eq!(got.len(), want.len(), "{query} at parallelism {parallelism}: rows");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(*g, w.as_str(), "{query} at parallelism {parallelism}: line {i} of the sorted output");
            }
        }
    }

    /// The run that fails at event 25,000 of 40,000 (paced over a second, checkpointed
    /// every 50 ms, so a dozen checkpoints lie before the failure) resumes from one of them;
    /// its committed output equals the reference, nothing lost and nothing twice.
    fn check_restored(query: &str) {
        let want = reference(query, &all_events());
        for parallelism in [1, 3] {
            let scratch = std::env::temp_dir()
                .join(format!("sluice-nexmark-restored-{query}-{parallelism}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&scratch);
            let (out, checkpoints) = (scratch.join("out"), scratch.join("checkpoints"));
            let result = run_failing_once(query, EVENTS, parallelism, 40_000.0, 25_000, &out, &checkpoints).unwrap();
            let committed = sluice::connectors::committed_lines(&out).unwrap();
            let _ = std::fs::remove_dir_all(&scratch);
            let at = format!("{query} at parallelism {parallelism}");
            assert_eq!(result.restarts, 1, "{at}: the injected failure restarted the job once");
            assert!(result.restored_from.is_some(), "{at}: the restart resumed from a checkpoint, not from the start");
            if query == "q4" {
                // Upserts: every version of a category committed once, none skipped.
                let mut versions: HashMap<i64, Vec<u64>> = HashMap::new();
                for line in &committed {
                    let upsert = super::super::q4::parse_upsert(line).unwrap();
                    versions.entry(upsert.category).or_default().push(upsert.version);
                }
                for (category, mut seen) in versions {
                    seen.sort_unstable();
                    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
                    assert_eq!(seen, expected, "{at}: the versions of category {category}'s upserts");
                }
            }
            let got = final_lines(query, committed).unwrap();
            assert_eq!(got.len(), want.len(), "{at}, restored: rows");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{at}, restored: line {i} of the sorted output");
            }
        }
    }

    macro_rules! query_tests {
        ($($query:ident: $plain:ident, $restored:ident;)*) => {$(
            #[test]
            fn $plain() {
                check(stringify!($query));
            }

            #[test]
            fn $restored() {
                check_restored(stringify!($query));
            }
        )*};
    }

    query_tests! {
        q0: q0_equals_the_reference, q0_restored_from_a_mid_run_checkpoint_equals_the_reference;
        q1: q1_equals_the_reference, q1_restored_from_a_mid_run_checkpoint_equals_the_reference;
        q2: q2_equals_the_reference, q2_restored_from_a_mid_run_checkpoint_equals_the_reference;
        q3: q3_equals_the_reference, q3_restored_from_a_mid_run_checkpoint_equals_the_reference;
        q4: q4_equals_the_reference, q4_restored_from_a_mid_run_checkpoint_equals_the_reference;
        q5: q5_equals_the_reference, q5_restored_from_a_mid_run_checkpoint_equals_the_reference;
        q7: q7_equals_the_reference, q7_restored_from_a_mid_run_checkpoint_equals_the_reference;
        q8: q8_equals_the_reference, q8_restored_from_a_mid_run_checkpoint_equals_the_reference;
    }

    #[test]
    fn an_unknown_query_is_refused_with_the_list() {
        let error = run("q6", 100, 1, None, None).err().unwrap();
        assert!(error.contains("q0, q1, q2, q3, q4, q5, q7, q8"), "{error}");
    }
}
