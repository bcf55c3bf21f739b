//! The Kafka copy job: a bounded read of `--input`, each value transformed by
//! [`sluice_testjobs::kafka_copy_transform`] with its key kept, written exactly-once to
//! `--output`. Checkpoint flags as in `StreamEnv::apply_args`.
//!
//! `kafka-copy --bootstrap HOST:PORT --input T --output T --prefix P --checkpoint-dir DIR
//!  [--parallelism P] [--checkpoint-interval-ms MS] [--pace-every N] [--crash-at STEP:N]`
//!
//! `--pace-every N` sleeps 1 ms every N records per subtask, so that a test can kill the
//! job in the middle of its input.

use sluice::prelude::*;
use sluice_kafka::{codec, DeliveryGuarantee, KafkaRecord, KafkaSink, KafkaSource, ProducerRecord};
use sluice_testjobs::kafka_copy_transform;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn arg(args: &[String], flag: &str) -> Result<String, String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned().ok_or(format!("{flag} is required"))
}

static RECORDS_SEEN: AtomicBool = AtomicBool::new(false);

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bootstrap = arg(&args, "--bootstrap")?;
    let pace_every: u64 = arg(&args, "--pace-every").ok().map(|v| v.parse()).transpose()?.unwrap_or(0);
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.apply_args(&args)?;
    // `--crash-at STEP:N`: the process dies (abort, no clean-up, like SIGKILL) at the
    // "upload" step (state written, checkpoint not complete) or the "commit" step (complete,
    // sink transactions not yet committed) of the N-th checkpoint after the first record.
    if let Ok(spec) = arg(&args, "--crash-at") {
        let (step, n) = spec.split_once(':').ok_or("--crash-at STEP:N")?;
        let (step, n): (String, u64) = (step.to_string(), n.parse()?);
        let counted = AtomicU64::new(0);
        env.set_failpoint(std::sync::Arc::new(move |at: &str, _id: u64| {
            if at == step && RECORDS_SEEN.load(Ordering::Relaxed) && counted.fetch_add(1, Ordering::Relaxed) + 1 == n {
                std::process::abort();
            }
            Ok(())
        }));
    }
    let source = KafkaSource::builder()
        .bootstrap_servers(&bootstrap)
        .topics([arg(&args, "--input")?])
        .bounded()
        .deserializer(codec::with_metadata(codec::text()))
        .build()?;
    let sink = KafkaSink::builder()
        .bootstrap_servers(&bootstrap)
        .topic(&arg(&args, "--output")?)
        .serializer(|(key, value): (Option<Vec<u8>>, String)| ProducerRecord {
            key,
            value: Some(value.into_bytes()),
            headers: Vec::new(),
        })
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(&arg(&args, "--prefix")?)
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
    eprintln!("done: restored from {:?}, {} checkpoints", result.restored_from, result.checkpoints.len());
    Ok(())
}
