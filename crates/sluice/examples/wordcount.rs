//! The quick-start demo: a windowed word count in event time.
//!
//! Sentences are generated deterministically (a sentence every 10 ms of event time, a
//! little out of order), split into words, keyed by word and counted in tumbling windows
//! of 1 s; each window prints its top words. Run it with
//! `cargo run --release -p sluice --example wordcount`.

use sluice::prelude::*;
use std::time::Duration;

const WORDS: &[&str] = &[
    "the",
    "stream",
    "never",
    "stops",
    "a",
    "record",
    "is",
    "counted",
    "once",
    "watermarks",
    "close",
    "windows",
    "keys",
    "travel",
    "in",
    "batches",
    "sluice",
    "flows",
];

/// Sentence `i`: a deterministic mix of words, stamped at `i * 10` ms minus up to 50 ms.
fn sentence(i: u64) -> (String, i64) {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut words = Vec::new();
    for _ in 0..(3 + i % 5) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Skewed towards the first words so the top of each window is stable to read.
        let pick = (x % WORDS.len() as u64).min(x.rotate_left(7) % WORDS.len() as u64);
        words.push(WORDS[pick as usize]);
    }
    (words.join(" "), (i * 10) as i64 - (x % 50) as i64)
}

/// A windowed word count in event time over generated sentences.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    job: sluice::JobArgs,
}

fn main() -> std::process::ExitCode {
    sluice::exit_with("wordcount", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    let env = StreamEnv::new();
    env.set_parallelism(2);
    // `--parallelism N`, `--checkpoint-dir DIR` and the other job flags work here too.
    Cli::parse().job.apply(&env);
    let strategy = Watermarks::bounded(Duration::from_millis(50)).with_timestamps(|s: &(String, i64)| s.1);
    let sentences = env.source(GeneratorSource::new(0..6_000, sentence), strategy);
    let counts = sentences
        .flat_map(|(text, _)| text.split_whitespace().map(|w| (w.to_lowercase(), 1u64)).collect::<Vec<_>>())
        .key_by(|(word, _)| word.clone())
        .window(Tumbling::event_time(Duration::from_secs(1)))
        .reduce(|a, b| (a.0, a.1 + b.1))
        .uid("word-counts");
    // Gather each window's counts in one place and print its top five words.
    counts
        .key_by(|_| 0u8)
        .window(Tumbling::event_time(Duration::from_secs(1)))
        .process(|_, window, counts: &[(String, u64)]| {
            let mut top = counts.to_vec();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let total: u64 = counts.iter().map(|c| c.1).sum();
            let shown: Vec<String> = top.iter().take(5).map(|(w, n)| format!("{w}={n}")).collect();
            vec![format!(
                "window [{:>5} ms, {:>5} ms): {total:>4} words, top: {}",
                window.start,
                window.end,
                shown.join(" ")
            )]
        })
        .parallelism(1)
        .sink(LinePrinter)
        .parallelism(1);
    let result = env.execute("windowed word count")?;
    eprintln!("finished in {:.2?} with {} tasks", result.duration, result.tasks);
    Ok(())
}

/// Prints each line as it is (the `print()` sink shows `Debug` forms).
struct LinePrinter;

impl Sink<String> for LinePrinter {
    fn name(&self) -> String {
        "print".into()
    }
    fn create_writer(&self, _: usize, _: usize) -> std::io::Result<Box<dyn SinkWriter<String>>> {
        Ok(Box::new(LinePrinter))
    }
}

impl SinkWriter<String> for LinePrinter {
    fn write_batch(&mut self, batch: Vec<Record<String>>) -> std::io::Result<()> {
        for record in batch {
            println!("{}", record.value);
        }
        Ok(())
    }
}
