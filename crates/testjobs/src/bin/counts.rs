//! The counting job: events `0..n` at a steady rate, keyed, counted in tumbling event-time
//! windows, written exactly-once to `--out`. The job flags of [`sluice::JobArgs`]
//! (`--checkpoint-dir`, `--fresh`, `--from`, ...) apply; `--help` lists them all.
//!
//! With `--n 0` the source has no end: the job runs until Ctrl-C (SIGINT), which stops it
//! with a final checkpoint that the next run resumes from.

use clap::Parser;
use sluice::prelude::*;
use sluice_testjobs::{key_of, WINDOW_MS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts events per key in 100 ms event-time windows, exactly once into files.
#[derive(Parser)]
struct Cli {
    /// The folder the committed files go to.
    #[arg(long, value_name = "DIR")]
    out: String,
    /// How many events (0: without end, until Ctrl-C).
    #[arg(long, default_value_t = 300_000)]
    n: u64,
    /// Events per second, over all subtasks.
    #[arg(long, default_value_t = 100_000.0)]
    rate: f64,
    /// Panics once, in this process, after this many events have been counted (to see a
    /// restart reported).
    #[arg(long, value_name = "N")]
    fail_once_at: Option<u64>,
    /// Hangs forever in the pass-through stage after this many events, once: only if the
    /// file `--hang-marker` does not exist yet (it is created first), so that the restarted
    /// job does not hang again (to see the stalled-subtask detector at work).
    #[arg(long, value_name = "N", requires = "hang_marker")]
    hang_once_at: Option<u64>,
    /// See `--hang-once-at`.
    #[arg(long, value_name = "FILE")]
    hang_marker: Option<std::path::PathBuf>,
    /// The uid of the pass-through stage. Read from the environment too, as a job might
    /// read its set-up where it runs: a graph that differs between the machine that submits
    /// it and the workers is refused (the cluster tests show it).
    #[arg(long, env = "COUNTS_PASS_UID", default_value = "pass")]
    pass_uid: String,
    #[command(flatten)]
    job: sluice::JobArgs,
}

static SEEN: AtomicU64 = AtomicU64::new(0);

fn main() -> std::process::ExitCode {
    sluice::exit_with("counts", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let env = StreamEnv::new();
    env.set_parallelism(2).set_watermark_interval(Duration::from_millis(20));
    cli.job.apply(&env);
    let numbers = if cli.n == 0 { SequenceSource::unbounded(0) } else { SequenceSource::new(0..cli.n) };
    let fail_at = cli.fail_once_at;
    let hang_at = cli.hang_once_at;
    let marker = cli.hang_marker.clone();
    env.source(numbers.with_rate_limit(cli.rate), Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64))
        .uid("events")
        .map(move |i| {
            let seen = SEEN.fetch_add(1, Ordering::Relaxed);
            if fail_at == Some(seen) {
                panic!("failing once, as asked (--fail-once-at)");
            }
            if hang_at == Some(seen) {
                let marker = marker.as_ref().expect("clap requires it");
                if std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok() {
                    eprintln!("hanging, as asked (--hang-once-at)");
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
            }
            i
        })
        .uid(&cli.pass_uid)
        .key_by(|i| key_of(*i))
        .window(Tumbling::event_time(Duration::from_millis(WINDOW_MS as u64)))
        .aggregate_with(Count, |k, w, c| format!("{k},{},{c}", w.start))
        .uid("counts")
        .sink(TransactionalFileSink::new(&cli.out))
        .uid("files");
    let result = env.execute("counts")?;
    eprintln!(
        "done: restored from {}, {} checkpoints, {} restarts",
        result.restored_from.map_or("nothing".to_string(), |c| format!("checkpoint {c}")),
        result.checkpoints.len(),
        result.restarts
    );
    Ok(())
}
