//! A job of large records for the in-flight byte bound: `--n` records of `--kb` KiB each
//! go through an exchange to a deliberately slow consumer, so every channel between
//! them fills up. At the end it prints the records and bytes it saw and the process's peak
//! resident memory (`VmHWM`), which a test compares with what the channels may hold.

use clap::Parser;
use sluice::prelude::*;
use std::time::Duration;

/// Pushes large records through a full exchange and reports peak memory.
#[derive(Parser)]
struct Cli {
    /// How many records.
    #[arg(long, default_value_t = 5_000)]
    n: u64,
    /// Size of each record in KiB.
    #[arg(long, default_value_t = 100)]
    kb: usize,
    /// Microseconds the consumer spends on each record.
    #[arg(long, default_value_t = 200)]
    consumer_micros: u64,
    /// Overrides the bytes a batch may hold (default: the engine's).
    #[arg(long)]
    max_batch_bytes: Option<usize>,
    #[command(flatten)]
    job: sluice::JobArgs,
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> std::process::ExitCode {
    sluice::exit_with("big-records", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let env = StreamEnv::new();
    env.set_parallelism(2);
    if let Some(bytes) = cli.max_batch_bytes {
        env.set_max_batch_bytes(bytes);
    }
    cli.job.apply(&env);
    let size = cli.kb * 1024;
    let pause = Duration::from_micros(cli.consumer_micros);
    let seen = env
        .source(GeneratorSource::new(0..cli.n, move |i| vec![(i % 251) as u8; size]), Watermarks::none())
        .rebalance()
        .map(move |v| {
            std::thread::sleep(pause);
            (v.len() as u64, v[0] as u64)
        })
        .key_by(|_| 0u64)
        .reduce(|a, b| (a.0 + b.0, a.1 + b.1))
        .collect();
    env.execute("big records")?;
    let (bytes, checksum) = seen.values().into_iter().max().unwrap_or((0, 0));
    println!("records={} bytes={bytes} checksum={checksum} peak_rss_kb={}", cli.n, peak_rss_kb());
    Ok(())
}
