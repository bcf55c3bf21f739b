//! A job for the backpressure test across processes: an unbounded counting source at
//! parallelism 1, batches dealt round-robin to a sink at parallelism 2 whose subtask 1 is
//! slow (it sleeps per batch). Spread over two processes (subtask s on process s mod 2),
//! the source (process 0) feeds the slow sink subtask (process 1) over the network. Every
//! 20 ms each process writes "produced consumed" (records its source subtask produced,
//! records its sink subtask consumed) to `--report DIR/process-<i>.txt`.

use clap::Parser;
use sluice::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The slow-sink job.
#[derive(Parser)]
struct Cli {
    /// The folder the counts are written to.
    #[arg(long, value_name = "DIR")]
    report: std::path::PathBuf,
    /// Milliseconds the slow sink subtask sleeps per batch.
    #[arg(long, default_value_t = 20)]
    sleep_ms: u64,
    #[command(flatten)]
    job: sluice::JobArgs,
}

static PRODUCED: AtomicU64 = AtomicU64::new(0);
static CONSUMED: AtomicU64 = AtomicU64::new(0);

struct Slow(u64);

impl Sink<u64> for Slow {
    fn name(&self) -> String {
        "slow".into()
    }
    fn create_writer(&self, index: usize, _: usize) -> std::io::Result<Box<dyn SinkWriter<u64>>> {
        Ok(Box::new(SlowWriter { sleep: if index == 1 { self.0 } else { 0 } }))
    }
}

struct SlowWriter {
    sleep: u64,
}

impl SinkWriter<u64> for SlowWriter {
    fn write_batch(&mut self, batch: Vec<Record<u64>>) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_millis(self.sleep));
        CONSUMED.fetch_add(batch.len() as u64, Ordering::SeqCst);
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    sluice::exit_with("backpressure", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let env = StreamEnv::new();
    env.set_batch_size(10).set_channel_capacity(4);
    cli.job.apply(&env);
    let process = std::env::var("SLUICE_PROCESS").unwrap_or_else(|_| "0".into());
    let report = Arc::new(cli.report.join(format!("process-{process}.txt")));
    std::fs::create_dir_all(&cli.report)?;
    std::thread::spawn(move || loop {
        let line = format!("{} {}", PRODUCED.load(Ordering::SeqCst), CONSUMED.load(Ordering::SeqCst));
        let partial = report.with_extension("partial");
        if std::fs::write(&partial, line).is_ok() {
            let _ = std::fs::rename(&partial, &*report);
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    env.source(
        GeneratorSource::unbounded_from(0, |i: u64| {
            PRODUCED.fetch_add(1, Ordering::SeqCst);
            i
        }),
        Watermarks::none(),
    )
    .parallelism(1)
    .rebalance()
    .sink(Slow(cli.sleep_ms))
    .parallelism(2);
    env.execute("backpressure")?;
    Ok(())
}
