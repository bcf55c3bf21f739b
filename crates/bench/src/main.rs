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
//! `r1` measures recovery after a lost worker on a local cluster ([`r1`]; `r1-job` is the
//! job it submits, this same binary).
//! `nexmark-events` writes the first `--n` events of the Nexmark generator ([`nexmark`])
//! as CSV; `nexmark --query qN --events N` runs one of its queries ([`nexmark::run`]);
//! `nexmark-baseline` generates and drops `--n` events in a plain loop on one thread (what
//! any query at parallelism 1 pays before its own work). `keygroups` prints, for 128 key groups, the fraction of groups that change owner when
//! the parallelism goes from p to p-1 and back, under Sluice's assignment and Flink's
//! contiguous ranges, beside the least any balanced assignment can move.
//! Every run checks its own output count and fails if it is wrong.

mod nexmark;
mod r1;

/// mimalloc instead of the system allocator: allocating and freeing the short strings of
/// Nexmark's events cost half of a filtering query's time with glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use sluice::prelude::*;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs one benchmark workload and prints one RESULT line.
#[derive(clap::Parser)]
#[command(name = "sluice-bench")]
struct Args {
    /// The workload: w1, w2, w3, w1-baseline, w2-baseline, k1, k1-baseline, k1-fill,
    /// k1-topic, k1-count, r1 (or r1-job, the job r1 submits), r2 (r1 losing the leading coordinator), keygroups, nexmark-events, nexmark-baseline, nexmark.
    #[arg(value_parser = ["w1", "w2", "w3", "w1-baseline", "w2-baseline", "k1", "k1-baseline", "k1-fill", "k1-topic", "k1-count", "r1", "r1-job", "r2", "keygroups", "nexmark-events", "nexmark-baseline", "nexmark"])]
    workload: String,
    /// Records (events) to process; a multiple of the parallelism (not for nexmark).
    #[arg(long, visible_alias = "events", default_value_t = 10_000_000, value_parser = parse_count)]
    n: u64,
    /// nexmark: the query (q0, q1, q2, q3, q4, q5, q7, q8).
    #[arg(long, value_name = "QUERY", default_value = "q0")]
    query: String,
    /// nexmark: write the query's output to FILE (sorted CSV lines, NEXMARK.md section 6).
    #[arg(long, value_name = "FILE")]
    dump: Option<std::path::PathBuf>,
    /// nexmark: take exactly-once checkpoints every MS milliseconds.
    #[arg(long, value_name = "MS")]
    checkpoint_every: Option<u64>,
    /// nexmark: fail once (a panic) when this many events have entered the query, resume
    /// from the latest checkpoint (taken every 50 ms, the events paced at --rate), and write
    /// the exactly-once output to --dump, to diff with a run without the failure.
    #[arg(long, value_name = "EVENT")]
    fail_at: Option<u64>,
    /// w3: encode window state at each barrier instead of copying it there and encoding
    /// the copy on another thread (the default), to compare the two.
    #[arg(long)]
    synchronous_snapshots: bool,
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
    /// Runs w1 or w2 spread over this many local processes of this binary, connected by
    /// Sluice's network exchange (subtask s on process s mod N, so W2's keyed exchange
    /// crosses process boundaries). The time includes starting the processes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    cluster: Option<u64>,
    /// With --cluster: the processes' data connections use TLS 1.3 (a CA and a certificate
    /// for 127.0.0.1 made for the run), to measure what encryption costs.
    #[arg(long, requires = "cluster")]
    tls: bool,
    /// R1: events per second of the wall-clock schedule; nexmark with --fail-at: the pace.
    #[arg(long, default_value_t = 200_000.0)]
    rate: f64,
    /// R1: seconds from the schedule's start to the SIGKILL of a worker.
    #[arg(long, default_value_t = 25.0)]
    kill_after_secs: f64,
    /// R1/R2: the kill comes a seeded random 0..N ms after --kill-after-secs, so that runs
    /// sample every moment of the 1 s checkpoint cycle (an adopted job's output becomes
    /// visible at its next commit, so where the kill falls in that cycle is most of R2's
    /// caught-up time). Default: 1000 for R2, 0 for R1.
    #[arg(long, value_name = "MS")]
    kill_spread_ms: Option<u64>,
    /// R1/R2: the seed of that offset (printed with the result); default from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// R1: the worker killed is the one running this process index.
    #[arg(long, default_value_t = 1)]
    kill_process: usize,
    /// R2: leave the dead leader's lease to lapse (as after a lost machine) instead of
    /// letting `sluice cluster`, which sees the process die, revoke it.
    #[arg(long)]
    let_leases_lapse: bool,
    /// R1: tell what happens as it happens (the README's demo).
    #[arg(long)]
    live: bool,
    /// r1-job: the schedule's start (milliseconds since the epoch).
    #[arg(long, value_name = "MS")]
    t0_ms: Option<i64>,
    /// r1-job: the output folder.
    #[arg(long, value_name = "DIR")]
    out: Option<String>,
    /// r1-job: the checkpoint folder.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<String>,
}

fn parse_parallelism(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(p) if (1..=1024).contains(&p) => Ok(p),
        _ => Err(format!("'{text}' is not a parallelism from 1 to 1024")),
    }
}

/// `nexmark --fail-at`: the run that fails once and resumes, its output written to
/// `--dump` as a run without failure writes it; returns its RESULT line.
fn nexmark_failing_once(args: &Args) -> Result<String, String> {
    let (Some(fail_at), Some(dump)) = (args.fail_at, args.dump.as_deref()) else {
        return Err(
            "nexmark --fail-at: give --dump FILE too (the output to diff with a run without the failure)".into()
        );
    };
    if fail_at >= args.n {
        return Err(format!("nexmark --fail-at {fail_at}: give an event below --events ({})", args.n));
    }
    let scratch = std::env::temp_dir().join(format!("sluice-nexmark-fail-{}", std::process::id()));
    let (out, checkpoints) = (scratch.join("out"), scratch.join("checkpoints"));
    let _ = std::fs::remove_dir_all(&scratch);
    let started = Instant::now();
    let result =
        nexmark::run::run_failing_once(&args.query, args.n, args.parallelism, args.rate, fail_at, &out, &checkpoints);
    let secs = started.elapsed().as_secs_f64();
    let committed = result.and_then(|result| {
        let lines = sluice::connectors::committed_lines(&out).map_err(|e| format!("reading {}: {e}", out.display()))?;
        Ok((result, lines))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let (result, lines) = committed?;
    let lines = nexmark::run::final_lines(&args.query, lines)?;
    nexmark::run::write_dump(dump, &lines)?;
    let restored = result.restored_from.map_or("none".to_string(), |id| id.to_string());
    Ok(format!(
        "RESULT workload=nexmark-{}-failing-once n={} p={} secs={secs:.3} rows={} restarts={} restored_from={restored}",
        args.query,
        args.n,
        args.parallelism,
        lines.len(),
        result.restarts
    ))
}

/// A count, with `_` allowed between digits (`10_000_000`).
fn parse_count(text: &str) -> Result<u64, String> {
    text.replace('_', "").parse().map_err(|e| format!("'{text}' is not a whole number: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let args = <Args as clap::Parser>::parse();
    if args.workload != "nexmark" && (args.n == 0 || args.n % args.parallelism as u64 != 0) {
        return Err(format!(
            "--n must be a positive multiple of --parallelism (got n={}, p={})",
            args.n, args.parallelism
        ));
    }
    Ok(args)
}

/// What a run produced: how many records, and an order-independent checksum of their
/// content (the wrapping sum of a fingerprint of each record), so that wrong values, lost
/// or doubled records fail the run, not only a wrong count. The fingerprints are a few
/// arithmetic operations, so the sink still costs what WORKLOADS.md's discarding sink does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    count: u64,
    checksum: u64,
}

impl Tally {
    fn add(&mut self, fingerprint: u64) {
        self.count += 1;
        self.checksum = self.checksum.wrapping_add(fingerprint);
    }
}

/// W1's fingerprint of an output value: the value.
#[inline(always)]
fn w1_fingerprint(v: &u64) -> u64 {
    *v
}

/// W2's fingerprint of an output (key, window start, count): each part multiplied by its
/// own odd constant, so a wrong count, key or window changes the sum.
#[inline(always)]
fn w2_fingerprint(&(key, start, count): &(i64, i64, i64)) -> u64 {
    (key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (start as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ (count as u64).wrapping_mul(0x1656_67b1_9e37_79f9)
}

/// A sink that keeps only the [`Tally`] of what it is given, by a fingerprint function (a
/// discarding sink that still lets the run check its output). The function is a type
/// parameter, so it inlines into the fold over each batch.
struct TallySink<F> {
    fingerprint: F,
    total: Arc<Mutex<Tally>>,
}

struct TallyWriter<F> {
    fingerprint: F,
    tally: Tally,
    total: Arc<Mutex<Tally>>,
}

impl<T, F: Fn(&T) -> u64 + Copy + Send + Sync + 'static> Sink<T> for TallySink<F> {
    fn name(&self) -> String {
        "tally".into()
    }
    fn create_writer(&self, _: usize, _: usize) -> std::io::Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(TallyWriter { fingerprint: self.fingerprint, tally: Tally::default(), total: self.total.clone() }))
    }
}

impl<T, F: Fn(&T) -> u64 + Copy + Send> SinkWriter<T> for TallyWriter<F> {
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> std::io::Result<()> {
        let f = self.fingerprint;
        self.tally.count += batch.len() as u64;
        self.tally.checksum = batch.iter().fold(self.tally.checksum, |sum, record| sum.wrapping_add(f(&record.value)));
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        let mut total = self.total.lock().unwrap_or_else(|e| e.into_inner());
        total.count += self.tally.count;
        total.checksum = total.checksum.wrapping_add(self.tally.checksum);
        self.tally = Tally::default();
        Ok(())
    }
}

fn tally_sink<F>(fingerprint: F) -> (TallySink<F>, Arc<Mutex<Tally>>) {
    let total = Arc::new(Mutex::new(Tally::default()));
    (TallySink { fingerprint, total: total.clone() }, total)
}

fn tally_of(total: &Arc<Mutex<Tally>>) -> Tally {
    *total.lock().unwrap_or_else(|e| e.into_inner())
}

/// K1's fingerprint of a record: the stable hash of its key and value bytes.
fn k1_fingerprint(key: &[u8], value: &[u8]) -> u64 {
    sluice::types::stable_hash(&(sluice::types::Bytes(key), sluice::types::Bytes(value)))
}

/// W2's key of event `i`.
#[inline]
fn w2_key(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % 10_000
}

/// What W1 must output, computed by a plain loop: the values 2i+1 that are not multiples
/// of 3 (of these there are n - (n + 1) / 3).
fn w1_reference(n: u64) -> Tally {
    let mut tally = Tally::default();
    for i in 0..n {
        let v = i.wrapping_mul(2).wrapping_add(1);
        if v % 3 != 0 {
            tally.add(w1_fingerprint(&v));
        }
    }
    tally
}

/// What W2 (and W3) must output, computed by a plain loop over the events: a
/// (key, window start, count) for every key that had events in a window.
fn w2_reference(n: u64) -> Tally {
    let mut counts: HashMap<(u64, i64), i64> = HashMap::new();
    let mut tally = Tally::default();
    let mut window = 0i64;
    for i in 0..n {
        let start = i as i64 - (i as i64).rem_euclid(1000);
        if start != window {
            for ((key, w), count) in counts.drain() {
                tally.add(w2_fingerprint(&(key as i64, w, count)));
            }
            window = start;
        }
        *counts.entry((w2_key(i), start)).or_insert(0) += 1;
    }
    for ((key, w), count) in counts {
        tally.add(w2_fingerprint(&(key as i64, w, count)));
    }
    tally
}

/// W1: longs -> map v*2+1 -> filter v%3 != 0 -> discard.
fn w1(n: u64, parallelism: usize, batch_size: usize) -> Result<Tally, String> {
    let env = StreamEnv::new();
    env.set_parallelism(parallelism).set_batch_size(batch_size);
    // WORKLOADS.md's W1 sink counts records only: reading every value to checksum it would
    // add a tenth to a pipeline this cheap. Its values are checked by `w1_checked`.
    let out = env
        .source(SequenceSource::new(0..n), Watermarks::none())
        .map(|v| v.wrapping_mul(2).wrapping_add(1))
        .filter(|v| v % 3 != 0)
        .discard();
    env.execute("w1").map_err(|e| e.to_string())?;
    Ok(Tally { count: out.count(), checksum: 0 })
}

/// W1 with a checksumming sink, run after the timed run on a tenth of the input (at most
/// 10^8), so that W1's values are checked too, not only their number.
fn w1_checked(n: u64, parallelism: usize, batch_size: usize) -> Result<(), String> {
    let n = (n / 10).clamp(parallelism as u64, 100_000_000) / parallelism as u64 * parallelism as u64;
    let env = StreamEnv::new();
    env.set_parallelism(parallelism).set_batch_size(batch_size);
    let (sink, out) = tally_sink(w1_fingerprint);
    env.source(SequenceSource::new(0..n), Watermarks::none())
        .map(|v| v.wrapping_mul(2).wrapping_add(1))
        .filter(|v| v % 3 != 0)
        .sink(sink);
    env.execute("w1-checked").map_err(|e| e.to_string())?;
    let (got, want) = (tally_of(&out), w1_reference(n));
    if got != want {
        return Err(format!(
            "wrong W1 values: {} records with checksum {:#x}, expected {} with checksum {:#x} (n={n})",
            got.count, got.checksum, want.count, want.checksum
        ));
    }
    Ok(())
}

/// W2: keyed tumbling event-time window of 1 s counting per key, emitting
/// (key, window start, count) as three i64.
fn w2(n: u64, parallelism: usize, batch_size: usize) -> Result<Tally, String> {
    let env = StreamEnv::new();
    env.set_parallelism(parallelism).set_batch_size(batch_size).set_watermark_interval(Duration::from_millis(200));
    let (sink, out) = tally_sink(w2_fingerprint);
    env.source(SequenceSource::new(0..n), Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64))
        .key_by(|i| w2_key(*i))
        .window(Tumbling::event_time(Duration::from_millis(1000)))
        .aggregate_with(Count, |key, window, count| (*key as i64, window.start, count as i64))
        .uid("w2-counts")
        .sink(sink);
    env.execute("w2").map_err(|e| e.to_string())?;
    Ok(tally_of(&out))
}

/// W3: W2 with aligned exactly-once checkpoints every second into a fresh local folder.
/// Returns the output and the (duration, bytes) of each checkpoint.
fn w3(
    n: u64,
    parallelism: usize,
    batch_size: usize,
    asynchronous_snapshots: bool,
) -> Result<(Tally, Vec<(Duration, u64)>), String> {
    let dir = std::env::temp_dir().join(format!("sluice-w3-{}", std::process::id()));
    let env = StreamEnv::new();
    env.set_parallelism(parallelism)
        .set_batch_size(batch_size)
        .set_watermark_interval(Duration::from_millis(200))
        .enable_checkpointing(Duration::from_millis(1000), dir.to_str().ok_or("temp dir is not UTF-8")?)
        .set_asynchronous_snapshots(asynchronous_snapshots)
        .start_from(StartFrom::Fresh);
    let (sink, out) = tally_sink(w2_fingerprint);
    env.source(SequenceSource::new(0..n), Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64))
        .uid("w3-events")
        .key_by(|i| w2_key(*i))
        .window(Tumbling::event_time(Duration::from_millis(1000)))
        .aggregate_with(Count, |key, window, count| (*key as i64, window.start, count as i64))
        .uid("w3-counts")
        .sink(sink);
    let result = env.execute("w3").map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let checkpoints = result?.checkpoints;
    // The last checkpoint is the final one at the end of input: a W3 without a periodic
    // one measured nothing of what checkpoints cost while the stream runs.
    if checkpoints.len() < 2 {
        return Err(format!(
            "W3 took no periodic checkpoint (the job ended within the 1 s interval): use a larger --n than {n}"
        ));
    }
    Ok((tally_of(&out), checkpoints))
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
        let (key, value) = k1_record(i);
        TestRecord { key: Some(key), value: Some(value), ..Default::default() }
    });
    produce(bootstrap, topic, records).map_err(|e| e.to_string())?;
    Ok(())
}

/// Input record `i` of K1, as `k1_fill` writes it: (key, value).
fn k1_record(i: u64) -> (Vec<u8>, Vec<u8>) {
    let mut value = format!("{i:020}").into_bytes();
    value.resize(100, b'a' + (i % 26) as u8);
    (format!("{:08}", w2_key(i) * 100 + i % 100).into_bytes(), value)
}

/// What K1's output topic must hold: every input record with its value upper-cased.
fn k1_reference(n: u64) -> Tally {
    let mut tally = Tally::default();
    for i in 0..n {
        let (key, mut value) = k1_record(i);
        value.make_ascii_uppercase();
        tally.add(k1_fingerprint(&key, &value));
    }
    tally
}

/// The [`Tally`] of what a `read_committed` consumer sees in `topic`.
fn k1_output(bootstrap: &str, topic: &str) -> Result<Tally, String> {
    let mut tally = Tally::default();
    sluice_kafka::testing::for_each_committed(bootstrap, topic, Duration::from_secs(600), |key, value| {
        tally.add(k1_fingerprint(key.unwrap_or_default(), value.unwrap_or_default()))
    })
    .map_err(|e| e.to_string())?;
    Ok(tally)
}

/// K1: Kafka (100-byte keyed records) -> map -> Kafka, exactly-once, checkpoints every
/// second. Returns the records the job read, after checking that a `read_committed`
/// consumer sees exactly that many in the output topic.
fn k1(bootstrap: &str, input: &str, parallelism: usize) -> Result<(Tally, Duration), String> {
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
    Ok((k1_output(bootstrap, &output)?, elapsed))
}

/// Prints an R1 or R2 run's RESULT line (its own fields from `fields`, then
/// `exactly_once`) and the run's detail on stderr; fails unless the output was exact.
fn recovery_result(
    workload: &str,
    measured: Result<r1::Measured, String>,
    fields: impl Fn(&r1::Measured, &dyn Fn(Option<u64>) -> String) -> String,
) -> ExitCode {
    match measured {
        Ok(m) => {
            let ms = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
            eprintln!("{}", m.detail);
            println!("RESULT workload={workload} {} exactly_once={}", fields(&m, &ms), m.exactly_once);
            if m.exactly_once {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{workload}: {e}");
            ExitCode::FAILURE
        }
    }
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
    if args.workload == "r1-job" {
        return match r1::job(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("r1-job: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.workload == "nexmark-events" {
        // The first --n events of NEXMARK.md's generator as CSV (section 6), to diff with
        // another implementation.
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for n in 0..args.n {
            if writeln!(out, "{}", nexmark::csv_line(n, &nexmark::event(n))).is_err() {
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.workload == "nexmark-baseline" {
        let started = Instant::now();
        let mut checksum = 0i64;
        for n in 0..args.n {
            checksum = checksum.wrapping_add(std::hint::black_box(nexmark::event(n)).date_time());
        }
        let secs = started.elapsed().as_secs_f64();
        std::hint::black_box(checksum);
        println!("RESULT workload=nexmark-baseline n={} p=1 secs={secs:.3} rate={:.0}", args.n, args.n as f64 / secs);
        return ExitCode::SUCCESS;
    }
    if args.workload == "nexmark" && args.fail_at.is_some() {
        return match nexmark_failing_once(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.workload == "nexmark" {
        let every = args.checkpoint_every.map(Duration::from_millis);
        return match nexmark::run::run(&args.query, args.n, args.parallelism, args.dump.as_deref(), every) {
            Ok(outcome) => {
                let checkpoints =
                    args.checkpoint_every.map_or(String::new(), |ms| format!(" checkpoint_every_ms={ms}"));
                println!(
                    "RESULT workload=nexmark-{} n={} p={} secs={:.3} rate={:.0} rows={}{checkpoints}",
                    args.query,
                    args.n,
                    args.parallelism,
                    outcome.secs,
                    args.n as f64 / outcome.secs,
                    outcome.rows
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.workload == "keygroups" {
        key_groups_moved();
        return ExitCode::SUCCESS;
    }
    if args.workload == "r2" {
        return recovery_result("r2", r1::run(&args, true), |m, ms| {
            format!(
                "elect_ms={} adopt_ms={} caught_up_ms={} restarted={} lease={} kill_offset_ms={} seed={}",
                ms(m.elect_ms),
                ms(m.adopt_ms),
                ms(m.caught_up_ms),
                m.restarted,
                if args.let_leases_lapse { "lapsed" } else { "revoked" },
                m.kill_offset.0,
                m.kill_offset.1
            )
        });
    }
    if args.workload == "r1" {
        return recovery_result("r1", r1::run(&args, false), |m, ms| {
            format!(
                "detect_ms={} running_ms={} first_output_ms={} caught_up_ms={}",
                ms(m.detect_ms),
                ms(m.running_ms),
                ms(m.first_output_ms),
                ms(m.caught_up_ms)
            )
        });
    }
    if std::env::var_os("SLUICE_PROCESS").is_some() {
        return cluster_process(&args);
    }
    let started = Instant::now();
    // Engine runs are checked against a reference computed afterwards by a plain loop;
    // the baseline loops count what they produce (their output is black-boxed).
    let produced: Result<(u64, Option<Tally>), String> = match args.workload.as_str() {
        _ if args.cluster.is_some() => cluster(&args),
        "w1" => w1(args.n, args.parallelism, args.batch_size).map(|t| (t.count, Some(t))),
        "w2" => w2(args.n, args.parallelism, args.batch_size).map(|t| (t.count, Some(t))),
        "w3" => {
            w3(args.n, args.parallelism, args.batch_size, !args.synchronous_snapshots).map(|(tally, checkpoints)| {
                // The periodic checkpoints are what the stream pays while running.
                let periodic = &checkpoints[..checkpoints.len() - 1];
                let ms = median(periodic.iter().map(|c| c.0.as_micros() as u64).collect()).unwrap_or(0) as f64 / 1000.0;
                let bytes = median(periodic.iter().map(|c| c.1).collect()).unwrap_or(0);
                eprintln!("CHECKPOINTS count={} median_ms={ms:.1} median_bytes={bytes}", periodic.len());
                (tally.count, Some(tally))
            })
        }
        "w1-baseline" => Ok((w1_baseline(args.n), None)),
        "w2-baseline" => Ok((w2_baseline(args.n), None)),
        other => {
            eprintln!("unknown workload '{other}': use w1, w2, w3, w1-baseline or w2-baseline");
            return ExitCode::from(2);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let reference = match args.workload.as_str() {
        "w1" | "w1-baseline" => w1_reference(args.n),
        _ => w2_reference(args.n),
    };
    let produced = match (args.workload.as_str(), produced) {
        ("w1", Ok((count, _))) if args.cluster.is_none() => {
            w1_checked(args.n, args.parallelism, args.batch_size).map(|()| (count, None))
        }
        (_, produced) => produced,
    };
    let wrong = match &produced {
        Ok((_, Some(tally))) if *tally != reference => Some(format!(
            "wrong output: {} records with checksum {:#x}, expected {} with checksum {:#x}",
            tally.count, tally.checksum, reference.count, reference.checksum
        )),
        Ok((count, None)) if *count != reference.count => {
            Some(format!("wrong output: {count} records, expected {}", reference.count))
        }
        Ok(_) => None,
        Err(e) => Some(e.clone()),
    };
    match wrong {
        None => {
            let tls = if args.tls { " tls=true" } else { "" };
            let cluster = args.cluster.map_or(String::new(), |n| format!(" cluster={n}{tls}"));
            println!(
                "RESULT workload={} n={} p={} secs={:.3} rate={:.0}{cluster}",
                args.workload,
                args.n,
                args.parallelism,
                secs,
                args.n as f64 / secs
            );
            ExitCode::SUCCESS
        }
        Some(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the workload spread over `--cluster` processes of this binary and adds up their
/// tallies (each process's sinks see their share of the output; a tally is a count and a
/// wrapping sum, so shares add).
fn cluster(args: &Args) -> Result<(u64, Option<Tally>), String> {
    let processes = args.cluster.unwrap_or(1) as usize;
    if !matches!(args.workload.as_str(), "w1" | "w2") {
        return Err(format!("--cluster runs w1 or w2, not {}", args.workload));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Ports the kernel picks now, released for the processes to listen on.
    let listeners: Vec<_> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    drop(listeners);
    let secret = format!("bench-{}-{:?}", std::process::id(), Instant::now());
    let tls_dir = std::env::temp_dir().join(format!("sluice-bench-tls-{}", std::process::id()));
    let tls = match args.tls {
        true => Some(sluice_net::tls::generate(&["127.0.0.1"])?.write_to(&tls_dir)?),
        false => None,
    };
    let mut children = Vec::new();
    for process in 0..processes {
        let child = std::process::Command::new(&exe)
            .args([args.workload.as_str(), "--n", &args.n.to_string(), "-p", &args.parallelism.to_string()])
            .args(["--batch-size", &args.batch_size.to_string()])
            .env("SLUICE_PROCESS", process.to_string())
            .env("SLUICE_PEERS", peers.join(","))
            .env("SLUICE_SECRET", &secret)
            .envs(tls.iter().flat_map(|t| t.env()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting process {process}: {e}"))?;
        children.push(ChildGuard(child));
    }
    let mut total = Tally::default();
    for (process, mut child) in children.into_iter().enumerate() {
        let mut stdout = String::new();
        if let Some(mut out) = child.0.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout).map_err(|e| e.to_string())?;
        }
        let status = child.0.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("process {process} failed: {status}"));
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("TALLY "))
            .ok_or(format!("process {process} printed no tally"))?;
        let field = |name: &str| {
            line.split(' ').find_map(|kv| kv.strip_prefix(name)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        total.count += field("count=");
        total.checksum = total.checksum.wrapping_add(field("checksum="));
    }
    let _ = std::fs::remove_dir_all(&tls_dir);
    // W1's timed sink counts only (as in one process); its count is checked.
    Ok((total.count, (args.workload == "w2").then_some(total)))
}

/// The `keygroups` table: one RESULT line per change of parallelism.
fn key_groups_moved() {
    use sluice::types::{contiguous_subtask_for_key_group, fraction_moved, subtask_for_key_group};
    let groups = sluice::types::DEFAULT_MAX_PARALLELISM;
    for p in 2..=16usize {
        for (from, to) in [(p, p - 1), (p - 1, p)] {
            // A balanced assignment must move at least the groups of the subtasks that go
            // away (or that arrive): their share.
            let least = (groups / p + usize::from(p - 1 < groups % p)) as f64 / groups as f64;
            println!(
                "RESULT workload=keygroups groups={groups} from={from} to={to} sluice={:.3} flink_contiguous={:.3} least={least:.3}",
                fraction_moved(groups, from, to, subtask_for_key_group),
                fraction_moved(groups, from, to, contiguous_subtask_for_key_group),
            );
        }
    }
}

/// Kills a child process that is dropped before it was waited for (a failed run).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One process of a `--cluster` run: runs its share and prints its tally.
fn cluster_process(args: &Args) -> ExitCode {
    let tally = match args.workload.as_str() {
        "w1" => w1(args.n, args.parallelism, args.batch_size),
        "w2" => w2(args.n, args.parallelism, args.batch_size),
        other => Err(format!("a cluster process runs w1 or w2, not {other}")),
    };
    match tally {
        Ok(t) => {
            println!("TALLY count={} checksum={}", t.count, t.checksum);
            ExitCode::SUCCESS
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
fn k1_baseline(bootstrap: &str, input: &str) -> Result<(Tally, Duration), String> {
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
    Ok((k1_output(bootstrap, &output)?, elapsed))
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
    // The output is checked record for record (count and content checksum) against the
    // input's formula, whenever the input is K1's own (k1-fill's records).
    let reference = k1_reference(args.n);
    match run {
        Ok((written, elapsed)) if written == reference => {
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
            eprintln!(
                "wrong output: a read_committed consumer sees {} records with checksum {:#x}, expected {} with \
                 checksum {:#x}",
                written.count, written.checksum, reference.count, reference.checksum
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
