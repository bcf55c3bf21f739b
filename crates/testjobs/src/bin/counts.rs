//! The counting job: events `0..n` at a steady rate, keyed, counted in tumbling event-time
//! windows, written exactly-once to `--out`. Checkpoint flags as in
//! `StreamEnv::apply_args` (`--checkpoint-dir`, `--fresh`, `--from`, ...).
//!
//! `counts --out DIR --checkpoint-dir DIR [--n N] [--rate R] [--parallelism P]`
//!
//! With `--n 0` the source has no end: the job runs until Ctrl-C (SIGINT), which stops it
//! with a final checkpoint that the next run resumes from.

use sluice::prelude::*;
use sluice_testjobs::{key_of, WINDOW_MS};
use std::time::Duration;

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = arg(&args, "--out").ok_or("--out DIR is required")?;
    let n: u64 = arg(&args, "--n").map(|v| v.parse()).transpose()?.unwrap_or(300_000);
    let rate: f64 = arg(&args, "--rate").map(|v| v.parse()).transpose()?.unwrap_or(100_000.0);
    let env = StreamEnv::new();
    env.set_parallelism(2).set_watermark_interval(Duration::from_millis(20));
    env.apply_args(&args)?;
    let numbers = if n == 0 { SequenceSource::unbounded(0) } else { SequenceSource::new(0..n) };
    env.source(numbers.with_rate_limit(rate), Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64))
        .uid("events")
        .key_by(|i| key_of(*i))
        .window(Tumbling::event_time(Duration::from_millis(WINDOW_MS as u64)))
        .aggregate_with(Count, |k, w, c| format!("{k},{},{c}", w.start))
        .uid("counts")
        .sink(TransactionalFileSink::new(&out))
        .uid("files");
    let result = env.execute("counts")?;
    eprintln!("done: restored from {:?}, {} checkpoints", result.restored_from, result.checkpoints.len());
    Ok(())
}
