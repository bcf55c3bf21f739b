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
    let source = env
        .source(
            GeneratorSource::new(0..events, event),
            Watermarks::bounded(Duration::from_secs(4)).with_timestamps(|e: &Event| e.date_time()),
        )
        .uid("nexmark-events");
    let collect = dump.is_some();
    let output = match query {
        "q0" => Output::of(super::q0::query(&source), super::q0::csv, keep, collect),
        "q1" => Output::of(super::q1::query(&source), super::q1::csv, keep, collect),
        "q2" => Output::of(super::q2::query(&source), super::q2::csv, keep, collect),
        "q3" => Output::of(super::q3::query(&source), super::q3::csv, keep, collect),
        "q4" => Output::of(super::q4::query(&source), super::q4::csv, super::q4::finalize, collect),
        "q5" => Output::of(super::q5::query(&source), super::q5::csv, keep, collect),
        "q7" => Output::of(super::q7::query(&source), super::q7::csv, keep, collect),
        "q8" => Output::of(super::q8::query(&source), super::q8::csv, keep, collect),
        other => return Err(format!("--query {other}: give one of {}", QUERIES.join(", "))),
    };
    env.execute(&format!("nexmark-{query}")).map_err(|e| format!("nexmark {query}: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    if checkpoint_every.is_some() {
        let _ = std::fs::remove_dir_all(&checkpoints);
    }
    let (rows, lines) = output.finish();
    if let (Some(path), Some(lines)) = (dump, &lines) {
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(Outcome { secs, rows })
}

/// Every row as it came (all queries but q4, whose output is upserts).
fn keep<R>(rows: Vec<R>) -> Vec<R> {
    rows
}

/// A query's sink: discarding (counted), or collecting for the dump.
enum Output {
    Discarded(DiscardHandle),
    Collected(Box<dyn FnOnce() -> Vec<String>>),
}

impl Output {
    fn of<R: Data>(
        stream: DataStream<R>,
        csv: fn(&R) -> String,
        finalize: fn(Vec<R>) -> Vec<R>,
        collect: bool,
    ) -> Self {
        match collect {
            false => Output::Discarded(stream.discard()),
            true => {
                let handle = stream.collect();
                Output::Collected(Box::new(move || finalize(handle.values()).iter().map(csv).collect()))
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

    #[test]
    fn q0_equals_the_reference() {
        check("q0");
    }

    #[test]
    fn q1_equals_the_reference() {
        check("q1");
    }

    #[test]
    fn q2_equals_the_reference() {
        check("q2");
    }

    #[test]
    fn q3_equals_the_reference() {
        check("q3");
    }

    #[test]
    fn q4_equals_the_reference() {
        check("q4");
    }

    #[test]
    fn q5_equals_the_reference() {
        check("q5");
    }

    #[test]
    fn q7_equals_the_reference() {
        check("q7");
    }

    #[test]
    fn q8_equals_the_reference() {
        check("q8");
    }

    #[test]
    fn an_unknown_query_is_refused_with_the_list() {
        let error = run("q6", 100, 1, None, None).err().unwrap();
        assert!(error.contains("q0, q1, q2, q3, q4, q5, q7, q8"), "{error}");
    }
}
