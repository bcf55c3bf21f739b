//! Savepoints and rescaling: a job takes a savepoint through the API, stops, and the next
//! run starts from it at another parallelism (1 -> 3, then 3 -> 2): keyed window state
//! moves by key group, and the union of the runs' committed output is the reference.
//! A savepoint or checkpoint path that is not one, and state no operator claims, are
//! clear errors at start.

mod common;

use common::{committed_lines, multiset};
use sluice::dataflow::Poll;
use sluice::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: u64 = 30_000;
const KEYS: u64 = 17;

/// Emits 0..N, but holds at `limit` (shared, raised by the test) without ending.
struct Held {
    limit: Arc<AtomicU64>,
    reached: Arc<AtomicU64>,
}

impl Source<u64> for Held {
    fn name(&self) -> String {
        "held".into()
    }
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }
    fn create_reader(&self, _: usize, _: usize) -> std::io::Result<Box<dyn SourceReader<u64>>> {
        Ok(Box::new(HeldReader { next: 0, limit: self.limit.clone(), reached: self.reached.clone() }))
    }
}

struct HeldReader {
    next: u64,
    limit: Arc<AtomicU64>,
    reached: Arc<AtomicU64>,
}

impl SourceReader<u64> for HeldReader {
    fn poll(&mut self, out: &mut Vec<Record<u64>>, max: usize) -> std::io::Result<Poll> {
        if self.next >= N {
            return Ok(Poll::Finished);
        }
        let end = self.limit.load(Ordering::SeqCst).min(N).min(self.next + max as u64);
        if self.next >= end {
            return Ok(Poll::Pending(Duration::from_millis(5)));
        }
        out.extend((self.next..end).map(|i| Record::new(i, i as i64)));
        self.next = end;
        self.reached.store(end, Ordering::SeqCst);
        Ok(Poll::Ready)
    }
    fn position(&self) -> Option<Vec<u8>> {
        Some(self.next.to_le_bytes().to_vec())
    }
    fn seek(&mut self, position: &[u8]) -> std::io::Result<()> {
        self.next = u64::from_le_bytes(position.try_into().unwrap());
        self.reached.store(self.next, Ordering::SeqCst);
        Ok(())
    }
}

fn reference() -> Vec<String> {
    let mut counts: HashMap<(u64, i64), u64> = HashMap::new();
    for i in 0..N {
        *counts.entry((i % KEYS, (i as i64 / 1000) * 1000)).or_default() += 1;
    }
    counts.into_iter().map(|((k, w), n)| format!("{k},{w},{n}")).collect()
}

/// Builds the job with windows at `parallelism`, holding its source at `hold`.
fn job(env: &StreamEnv, checkpoints: &Path, out: &Path, parallelism: usize, held: &Held) {
    env.set_watermark_interval(Duration::from_millis(5))
        .enable_checkpointing(Duration::from_millis(50), checkpoints.to_str().unwrap());
    env.source(Held { limit: held.limit.clone(), reached: held.reached.clone() }, Watermarks::monotonic())
        .uid("numbers")
        .parallelism(1)
        .key_by(|i| i % KEYS)
        .window(Tumbling::event_time(Duration::from_secs(1)))
        .aggregate_with(Count, |k, w, n| format!("{k},{},{n}", w.start))
        .uid("counts")
        .parallelism(parallelism)
        .sink(TransactionalFileSink::new(out))
        .uid("files")
        .parallelism(parallelism);
}

/// Runs until the source holds at `hold`, takes a savepoint, cancels; returns its path.
fn run_to_savepoint(env: &StreamEnv, held: &Held, out: &Path, hold: u64) -> String {
    held.limit.store(hold, Ordering::SeqCst);
    let handle = env.execute_async("rescaled").unwrap();
    // With the source held at `hold`, the watermark stops at hold - 2, so the windows ending
    // at or before hold - 1 fire and nothing else will. Once their results are committed,
    // the job is quiet: nothing is emitted between the savepoint and the cancellation.
    let windows = (hold as usize - 1) / 1000;
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_lines(out).len() < windows * KEYS as usize {
        if Instant::now() >= deadline {
            panic!("the windows before {hold} were not committed within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let path = handle.trigger_savepoint(Duration::from_secs(30)).unwrap();
    handle.cancel();
    handle.join().unwrap();
    path
}

#[test]
fn restoring_from_savepoints_at_other_parallelisms_gives_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, out) = (dir.path().join("checkpoints"), dir.path().join("out"));
    let held = Held { limit: Arc::new(AtomicU64::new(0)), reached: Arc::new(AtomicU64::new(0)) };

    let env = StreamEnv::new();
    job(&env, &checkpoints, &out, 1, &held);
    let first = run_to_savepoint(&env, &held, &out, 11_500);
    assert!(Path::new(&first).join("_manifest.json").exists());

    let env = StreamEnv::new();
    job(&env, &checkpoints, &out, 3, &held);
    env.start_from(StartFrom::Path(first));
    let second = run_to_savepoint(&env, &held, &out, 23_250);

    let env = StreamEnv::new();
    job(&env, &checkpoints, &out, 2, &held);
    env.start_from(StartFrom::Path(second.clone()));
    held.limit.store(N, Ordering::SeqCst);
    let result = env.execute("rescaled").unwrap();
    assert!(result.restored_from.is_some());

    let got = committed_lines(&out);
    assert_eq!(got.len(), reference().len());
    assert_eq!(multiset(got), multiset(reference()));

    // The savepoint outlives retention, and stays restorable.
    assert!(Path::new(&second).join("_manifest.json").exists());
}

#[test]
fn bad_start_points_and_unclaimed_state_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, out) = (dir.path().join("checkpoints"), dir.path().join("out"));
    let held = Held { limit: Arc::new(AtomicU64::new(N)), reached: Arc::new(AtomicU64::new(0)) };

    let env = StreamEnv::new();
    job(&env, &checkpoints, &out, 2, &held);
    env.start_from(StartFrom::Path(dir.path().join("nothing-here").to_string_lossy().into_owned()));
    let error = env.execute("rescaled").unwrap_err().to_string();
    assert!(error.contains("no such folder"), "{error}");

    let env = StreamEnv::new();
    job(&env, &checkpoints, &out, 2, &held);
    env.start_from(StartFrom::Path(dir.path().to_string_lossy().into_owned()));
    let error = env.execute("rescaled").unwrap_err().to_string();
    assert!(error.contains("is not a checkpoint"), "{error}");

    // A finished run leaves a checkpoint; a job whose window has another uid cannot claim it.
    let env = StreamEnv::new();
    job(&env, &checkpoints, &out, 2, &held);
    env.execute("rescaled").unwrap();
    let env = StreamEnv::new();
    env.enable_checkpointing(Duration::from_millis(50), checkpoints.to_str().unwrap());
    env.source(Held { limit: held.limit.clone(), reached: held.reached.clone() }, Watermarks::monotonic())
        .uid("numbers")
        .parallelism(1)
        .key_by(|i| i % KEYS)
        .window(Tumbling::event_time(Duration::from_secs(1)))
        .aggregate(Count)
        .uid("renamed")
        .map(|n| n.to_string())
        .sink(TransactionalFileSink::new(&out))
        .uid("files");
    let error = env.execute("rescaled").unwrap_err().to_string();
    assert!(error.contains("'counts'") && error.contains("allow_non_restored_state"), "{error}");
}

#[test]
fn a_job_stopped_with_a_savepoint_mid_stream_resumes_from_it_at_another_parallelism_exactly() {
    // Records flow when the stop comes (no quiet moment): the savepoint is the final
    // checkpoint, so what was committed before the stop is not produced again. The sequence
    // source runs at parallelism 2, then 3: its lanes are redistributed.
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, out) = (dir.path().join("checkpoints"), dir.path().join("out"));
    let build = |parallelism: usize| {
        let env = StreamEnv::new();
        env.set_parallelism(parallelism)
            .set_watermark_interval(Duration::from_millis(5))
            .enable_checkpointing(Duration::from_millis(50), checkpoints.to_str().unwrap());
        env.source(
            SequenceSource::new(0..N).with_rate_limit(20_000.0),
            Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64),
        )
        .uid("numbers")
        .key_by(|i| i % KEYS)
        .window(Tumbling::event_time(Duration::from_secs(1)))
        .aggregate_with(Count, |k, w, n| format!("{k},{},{n}", w.start))
        .uid("counts")
        .sink(TransactionalFileSink::new(&out))
        .uid("files");
        env
    };
    let handle = build(2).execute_async("stopped").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_lines(&out).len() < 3 * KEYS as usize {
        assert!(Instant::now() < deadline, "no window committed within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let path = handle.stop_with_savepoint(Duration::from_secs(30)).unwrap();
    let stopped = handle.join().unwrap();
    assert!(stopped.cancelled, "the job ends as cancelled");
    let before = committed_lines(&out).len();
    assert!(before < reference().len(), "the job stopped before its end ({before} lines)");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&path).join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["savepoint"], true, "{manifest}");

    let env = build(3);
    env.start_from(StartFrom::Path(path));
    let result = env.execute("stopped").unwrap();
    assert!(result.restored_from.is_some());
    let got = committed_lines(&out);
    assert_eq!(got.len(), reference().len());
    assert_eq!(multiset(got), multiset(reference()));
}
