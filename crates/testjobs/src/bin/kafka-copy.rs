//! The Kafka copy job: a bounded read of `--input`, each value transformed by
//! [`sluice_testjobs::kafka_copy_transform`] with its key kept, written exactly-once to
//! `--output`. The job flags of [`sluice::JobArgs`] apply; `--help` lists every flag.
//!
//! `--pace-every N` sleeps 1 ms every N records per subtask, so that a test can kill the
//! job in the middle of its input.

use clap::Parser;
use sluice::prelude::*;
use sluice_kafka::{codec, DeliveryGuarantee, KafkaRecord, KafkaSink, KafkaSource, ProducerRecord};
use sluice_testjobs::kafka_copy_transform;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Copies a Kafka topic exactly once, transforming each value.
#[derive(Parser)]
struct Cli {
    /// The broker, `host:port`.
    #[arg(long)]
    bootstrap: String,
    /// The topic read (to its end at the first start).
    #[arg(long)]
    input: String,
    /// The topic written.
    #[arg(long)]
    output: String,
    /// The transactional id prefix of the sink.
    #[arg(long)]
    prefix: String,
    /// Sleeps 1 ms every N records per subtask (0: never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pace_every: u64,
    /// Dies (abort) at STEP ("upload" or "commit") of the N-th checkpoint after the first
    /// record, as STEP:N.
    #[arg(long, value_name = "STEP:N")]
    crash_at: Option<String>,
    #[command(flatten)]
    job: sluice::JobArgs,
}

static RECORDS_SEEN: AtomicBool = AtomicBool::new(false);

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

fn main() -> std::process::ExitCode {
    sluice::exit_with("kafka-copy", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let pace_every = cli.pace_every;
    let env = StreamEnv::new();
    env.set_parallelism(2);
    cli.job.apply(&env);
    // `--crash-at STEP:N`: the process dies (abort, no clean-up, like SIGKILL) at the
    // "upload" step (state written, checkpoint not complete) or the "commit" step (complete,
    // sink transactions not yet committed) of the N-th checkpoint after the first record.
    if let Some(spec) = &cli.crash_at {
        let (step, n) = spec.split_once(':').ok_or("--crash-at takes STEP:N, e.g. commit:2")?;
        let n: u64 = n.parse().map_err(|e| format!("--crash-at {spec}: N is not a number ({e})"))?;
        let step = step.to_string();
        let counted = AtomicU64::new(0);
        env.set_failpoint(std::sync::Arc::new(move |at: &str, _id: u64| {
            if at == step && RECORDS_SEEN.load(Ordering::Relaxed) && counted.fetch_add(1, Ordering::Relaxed) + 1 == n {
                std::process::abort();
            }
            Ok(())
        }));
    }
    let source = KafkaSource::builder()
        .bootstrap_servers(&cli.bootstrap)
        .topics([cli.input.clone()])
        .bounded()
        .deserializer(codec::with_metadata(codec::text()))
        .build()?;
    let sink = KafkaSink::builder()
        .bootstrap_servers(&cli.bootstrap)
        .topic(&cli.output)
        .serializer(|(key, value): (Option<Vec<u8>>, String)| ProducerRecord {
            key,
            value: Some(value.into_bytes()),
            headers: Vec::new(),
        })
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(&cli.prefix)
        .transaction_timeout(Duration::from_secs(60))
        .build()?;
    env.source(source, Watermarks::none())
        .uid("input")
        .map(move |r: KafkaRecord<String>| {
            RECORDS_SEEN.store(true, Ordering::Relaxed);
            if pace_every > 0 {
                let seen = SEEN.with(|s| {
                    s.set(s.get() + 1);
                    s.get()
                });
                if seen.is_multiple_of(pace_every) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            (r.key, kafka_copy_transform(&r.value))
        })
        .uid("transform")
        .sink(sink)
        .uid("output");
    let result = env.execute("kafka-copy")?;
    eprintln!(
        "done: restored from {}, {} checkpoints, {} restarts",
        result.restored_from.map_or("nothing".to_string(), |c| format!("checkpoint {c}")),
        result.checkpoints.len(),
        result.restarts
    );
    Ok(())
}
