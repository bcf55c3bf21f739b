//! Sluice's benchmark harness: runs one workload of `shared/bench/WORKLOADS.md` and prints
//! one `RESULT` line, so scripts can collect medians over repeated runs.
//!
//! `cargo run --release -p sluice-bench -- <workload> --n N --parallelism P`
//!
//! Workloads: `w1` (stateless pipeline), `w2` (keyed tumbling window), `w3` (W2 with
//! exactly-once checkpoints every second; also prints a `CHECKPOINTS` line), and the
//! hand-written single-threaded loops `w1-baseline` and `w2-baseline` that do the same
//! arithmetic and counting without an engine, as the yardstick for engine overhead.
//! `k1` is Kafka -> map -> Kafka exactly-once (issue 4), `k1-baseline` the same copy by one
//! thread on librdkafka alone, and `k1-fill` writes their input topic (`k1-topic` and
//! `k1-count` serve `scripts/flink-k1.sh`).
//! Every run checks its own output count and fails if it is wrong.

use sluice::prelude::*;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Runs one benchmark workload and prints one RESULT line.
#[derive(clap::Parser)]
#[command(name = "sluice-bench")]
struct Args {
    /// The workload: w1, w2, w3, w1-baseline, w2-baseline, k1, k1-baseline, k1-fill,
    /// k1-topic or k1-count.
    #[arg(value_parser = ["w1", "w2", "w3", "w1-baseline", "w2-baseline", "k1", "k1-baseline", "k1-fill", "k1-topic", "k1-count"])]
    workload: String,
    /// Records (events) to process; a multiple of the parallelism.
    #[arg(long, default_value_t = 10_000_000, value_parser = parse_count)]
    n: u64,
    /// Parallelism of the job.
    #[arg(long, short = 'p', default_value_t = 1, value_parser = parse_parallelism)]
    parallelism: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// A running broker to use (Kafka workloads); otherwise one is started.
    #[arg(long, value_name = "HOST:PORT", requires = "input")]
    bootstrap: Option<String>,
    /// The input topic on `--bootstrap`.
    #[arg(long, value_name = "TOPIC", requires = "bootstrap")]
    input: Option<String>,
}

fn parse_parallelism(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(p) if (1..=1024).contains(&p) => Ok(p),
        _ => Err(format!("'{text}' is not a parallelism from 1 to 1024")),
    }
}

/// A count, with `_` allowed between digits (`10_000_000`).
fn parse_count(text: &str) -> Result<u64, String> {
    text.replace('_', "").parse().map_err(|e| format!("'{text}' is not a whole number: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let args = <Args as clap::Parser>::parse();
    if args.n == 0 || args.n % args.parallelism as u64 != 0 {
        return Err(format!(
            "--n must be a positive multiple of --parallelism (got n={}, p={})",
            args.n, args.parallelism
        ));
    }
    Ok(args)
}

/// W2's key of event `i`.
#[inline]
fn w2_key(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % 10_000
}

/// How many of 0..n survive W1's filter: 2i+1 is a multiple of 3 exactly when i % 3 == 1.
fn w1_expected(n: u64) -> u64 {
    n - (n + 1) / 3
}

/// W1: longs -> map v*2+1 -> filter v%3 != 0 -> discard.
fn w1(n: u64, parallelism: usize, batch_size: usize) -> Result<u64, String> {
    let env = StreamEnv::new();
    env.set_parallelism(parallelism).set_batch_size(batch_size);
    let out = env
        .source(SequenceSource::new(0..n), Watermarks::none())
        .map(|v| v.wrapping_mul(2).wrapping_add(1))
        .filter(|v| v % 3 != 0)
        .discard();
    env.execute("w1").map_err(|e| e.to_string())?;
    Ok(out.count())
}

/// W2: keyed tumbling event-time window of 1 s counting per key, emitting
/// (key, window start, count) as three i64.
fn w2(n: u64, parallelism: usize, batch_size: usize) -> Result<u64, String> {
    let env = StreamEnv::new();
    env.set_parallelism(parallelism).set_batch_size(batch_size).set_watermark_interval(Duration::from_millis(200));
    let out = env
        .source(SequenceSource::new(0..n), Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64))
        .key_by(|i| w2_key(*i))
        .window(Tumbling::event_time(Duration::from_millis(1000)))
        .aggregate_with(Count, |key, window, count| (*key as i64, window.start, count as i64))
        .uid("w2-counts")
        .discard();
    env.execute("w2").map_err(|e| e.to_string())?;
    Ok(out.count())
}

/// W3: W2 with aligned exactly-once checkpoints every second into a fresh local folder.
/// Returns the output count and the (duration, bytes) of each checkpoint.
fn w3(n: u64, parallelism: usize, batch_size: usize) -> Result<(u64, Vec<(Duration, u64)>), String> {
    let dir = std::env::temp_dir().join(format!("sluice-w3-{}", std::process::id()));
    let env = StreamEnv::new();
    env.set_parallelism(parallelism)
        .set_batch_size(batch_size)
        .set_watermark_interval(Duration::from_millis(200))
        .enable_checkpointing(Duration::from_millis(1000), dir.to_str().ok_or("temp dir is not UTF-8")?)
        .start_from(StartFrom::Fresh);
    let out = env
        .source(SequenceSource::new(0..n), Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64))
        .uid("w3-events")
        .key_by(|i| w2_key(*i))
        .window(Tumbling::event_time(Duration::from_millis(1000)))
        .aggregate_with(Count, |key, window, count| (*key as i64, window.start, count as i64))
        .uid("w3-counts")
        .discard();
    let result = env.execute("w3").map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    Ok((out.count(), result?.checkpoints))
}

fn median<T: Copy + Ord>(mut values: Vec<T>) -> Option<T> {
    values.sort();
    values.get(values.len() / 2).copied()
}

/// The same arithmetic as W1 in a plain loop (no engine).
fn w1_baseline(n: u64) -> u64 {
    let mut kept = 0u64;
    for i in 0..n {
        let v = std::hint::black_box(i).wrapping_mul(2).wrapping_add(1);
        if v % 3 != 0 {
            kept += 1;
        }
    }
    kept
}

/// The same counting as W2 in a std HashMap, firing each window as the next starts.
fn w2_baseline(n: u64) -> u64 {
    let mut counts: HashMap<u64, i64> = HashMap::new();
    let mut window = 0i64;
    let mut emitted = 0u64;
    for i in 0..n {
        let start = i as i64 - (i as i64).rem_euclid(1000);
        if start != window {
            for (key, count) in counts.drain() {
                std::hint::black_box((key as i64, window, count));
                emitted += 1;
            }
            window = start;
        }
        *counts.entry(w2_key(i)).or_insert(0) += 1;
    }
    emitted + counts.len() as u64
}

/// K1's input: `n` keyed records of 100 bytes in a new topic of `partitions` partitions
/// on `bootstrap` (written before the clock starts).
fn k1_fill(bootstrap: &str, topic: &str, partitions: i32, n: u64) -> Result<(), String> {
    use sluice_kafka::testing::{create_topic, produce, TestRecord};
    create_topic(bootstrap, topic, partitions).map_err(|e| e.to_string())?;
    let records = (0..n).map(|i| {
        let mut value = format!("{i:020}").into_bytes();
        value.resize(100, b'a' + (i % 26) as u8);
        TestRecord {
            key: Some(format!("{:08}", w2_key(i) * 100 + i % 100).into_bytes()),
            value: Some(value),
            ..Default::default()
        }
    });
    produce(bootstrap, topic, records).map_err(|e| e.to_string())?;
    Ok(())
}

/// K1: Kafka (100-byte keyed records) -> map -> Kafka, exactly-once, checkpoints every
/// second. Returns the records the job read, after checking that a `read_committed`
/// consumer sees exactly that many in the output topic.
fn k1(bootstrap: &str, input: &str, parallelism: usize) -> Result<(u64, Duration), String> {
    use sluice_kafka::{DeliveryGuarantee, KafkaMessage, KafkaSink, KafkaSource, ProducerRecord};
    let run = format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let output = format!("k1-out-{run}");
    sluice_kafka::testing::create_topic(bootstrap, &output, 4).map_err(|e| e.to_string())?;
    let checkpoints = std::env::temp_dir().join(format!("sluice-k1-{run}"));
    let env = StreamEnv::new();
    env.set_parallelism(parallelism);
    env.enable_checkpointing(Duration::from_secs(1), checkpoints.to_str().unwrap());
    let source = KafkaSource::builder()
        .bootstrap_servers(bootstrap)
        .topics([input])
        .bounded()
        .deserializer(|m: &KafkaMessage| {
            Ok((m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()))
        })
        .build()
        .map_err(|e| e.to_string())?;
    let sink = KafkaSink::builder()
        .bootstrap_servers(bootstrap)
        .topic(&output)
        .serializer(|(key, value): (Vec<u8>, Vec<u8>)| ProducerRecord {
            key: Some(key),
            value: Some(value),
            headers: Vec::new(),
        })
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(&format!("k1-{run}"))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    env.source(source, Watermarks::none())
        .map(|(key, mut value): (Vec<u8>, Vec<u8>)| {
            value.make_ascii_uppercase();
            (key, value)
        })
        .sink(sink);
    let result = env.execute("k1").map_err(|e| e.to_string());
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&checkpoints);
    result?;
    let written = sluice_kafka::testing::count_committed(bootstrap, &output, Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    Ok((written, elapsed))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if args.workload.starts_with("k1") {
        return kafka_main(&args);
    }
    let started = Instant::now();
    let (produced, expected) = match args.workload.as_str() {
        "w1" => (w1(args.n, args.parallelism, args.batch_size), w1_expected(args.n)),
        "w2" => (w2(args.n, args.parallelism, args.batch_size), args.n),
        "w3" => {
            let run = w3(args.n, args.parallelism, args.batch_size);
            if let Ok((_, checkpoints)) = &run {
                // The last checkpoint is the final one at the end of input; the periodic ones
                // are what the stream pays while running.
                let periodic = &checkpoints[..checkpoints.len().saturating_sub(1)];
                let ms = median(periodic.iter().map(|c| c.0.as_micros() as u64).collect()).unwrap_or(0) as f64 / 1000.0;
                let bytes = median(periodic.iter().map(|c| c.1).collect()).unwrap_or(0);
                eprintln!("CHECKPOINTS count={} median_ms={ms:.1} median_bytes={bytes}", periodic.len());
            }
            (run.map(|(count, _)| count), args.n)
        }
        "w1-baseline" => (Ok(w1_baseline(args.n)), w1_expected(args.n)),
        "w2-baseline" => (Ok(w2_baseline(args.n)), args.n),
        other => {
            eprintln!("unknown workload '{other}': use w1, w2, w3, w1-baseline or w2-baseline");
            return ExitCode::from(2);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    match produced {
        Ok(count) if count == expected => {
            println!(
                "RESULT workload={} n={} p={} secs={:.3} rate={:.0}",
                args.workload,
                args.n,
                args.parallelism,
                secs,
                args.n as f64 / secs
            );
            ExitCode::SUCCESS
        }
        Ok(count) => {
            eprintln!("wrong output: {count} records, expected {expected}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// K1's yardstick: one thread copying the input topic to a new one with librdkafka alone
/// (consumer -> upper-case -> idempotent producer, no engine, no transactions, no
/// checkpoints). Returns the records copied and the time taken.
fn k1_baseline(bootstrap: &str, input: &str) -> Result<(u64, Duration), String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let e = |e: rdkafka::error::KafkaError| e.to_string();
    let run = format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let output = format!("k1-baseline-out-{run}");
    sluice_kafka::testing::create_topic(bootstrap, &output, 4).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "k1-baseline")
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "5")
        .create()
        .map_err(e)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(e)?;
    let metadata = consumer.fetch_metadata(Some(input), Duration::from_secs(10)).map_err(e)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0u64;
    let mut stops = HashMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(input, p.id(), Duration::from_secs(10)).map_err(e)?;
        tpl.add_partition_offset(input, p.id(), Offset::Offset(low)).map_err(e)?;
        stops.insert(p.id(), high);
        remaining += (high - low) as u64;
    }
    consumer.assign(&tpl).map_err(e)?;
    let mut copied = 0u64;
    while copied < remaining {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.map_err(e)?;
        if message.offset() >= stops[&message.partition()] {
            continue;
        }
        let mut value = message.payload().unwrap_or_default().to_vec();
        value.make_ascii_uppercase();
        let key = message.key().unwrap_or_default();
        let partition = sluice_kafka::partition::partition_for_key(key, 4);
        let mut record = BaseRecord::<[u8], [u8]>::to(&output).key(key).payload(&value).partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((err, _)) => return Err(err.to_string()),
            }
        }
        copied += 1;
    }
    producer.flush(Duration::from_secs(120)).map_err(e)?;
    let elapsed = started.elapsed();
    let written = sluice_kafka::testing::count_committed(bootstrap, &output, Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    Ok((written, elapsed))
}

/// `k1-fill --bootstrap B --input T --n N` writes K1's input; `k1` runs K1 on it (with no
/// `--bootstrap`, on a broker of its own with a fresh input, for a one-off run).
fn kafka_main(args: &Args) -> ExitCode {
    let broker;
    let (bootstrap, input) = match (&args.bootstrap, &args.input) {
        (Some(b), Some(i)) => (b.clone(), i.clone()),
        (None, None) if args.workload == "k1" || args.workload == "k1-baseline" => {
            broker = match sluice_kafka::testing::KafkaBroker::start() {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("starting a Kafka broker: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let input = "k1-in".to_string();
            if let Err(e) = k1_fill(broker.bootstrap(), &input, 4, args.n) {
                eprintln!("writing K1's input: {e}");
                return ExitCode::FAILURE;
            }
            (broker.bootstrap().to_string(), input)
        }
        _ => {
            eprintln!("give both --bootstrap and --input, or neither (k1 then starts its own broker)");
            return ExitCode::from(2);
        }
    };
    // Helpers of scripts/flink-k1.sh: make an empty 4-partition topic; count what a
    // read_committed consumer sees in one.
    if args.workload == "k1-topic" || args.workload == "k1-count" {
        let done = if args.workload == "k1-topic" {
            sluice_kafka::testing::create_topic(&bootstrap, &input, 4)
        } else {
            sluice_kafka::testing::count_committed(&bootstrap, &input, Duration::from_secs(600))
                .map(|n| println!("{n}"))
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.workload == "k1-fill" {
        return match k1_fill(&bootstrap, &input, 4, args.n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let run = if args.workload == "k1-baseline" {
        k1_baseline(&bootstrap, &input)
    } else {
        k1(&bootstrap, &input, args.parallelism)
    };
    match run {
        Ok((written, elapsed)) if written == args.n => {
            let secs = elapsed.as_secs_f64();
            println!(
                "RESULT workload={} n={} p={} secs={secs:.3} rate={:.0}",
                args.workload,
                args.n,
                args.parallelism,
                args.n as f64 / secs
            );
            ExitCode::SUCCESS
        }
        Ok((written, _)) => {
            eprintln!("wrong output: a read_committed consumer sees {written} records, expected {}", args.n);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
