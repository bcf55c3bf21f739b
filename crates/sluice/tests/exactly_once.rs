//! Exactly-once under injected failures: a W2-like job (keyed tumbling event-time windows)
//! writes through the two-phase-commit file sink while failures are injected at seeded
//! moments: panics in an operator, a failed checkpoint upload, a failure between a
//! checkpoint's completion and its commit. The committed output must equal the
//! failure-free reference, record for record. Rerun a failure with SLUICE_TEST_SEED.

mod common;

use common::{committed_lines, multiset, seed, Rng};
use sluice::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const N: u64 = 120_000;
const KEYS: u64 = 40;
const WINDOW_MS: i64 = 100;

fn key_of(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % KEYS
}

/// The failure-free reference: "key,window start,count" lines.
fn reference() -> Vec<String> {
    let mut counts: HashMap<(u64, i64), u64> = HashMap::new();
    for i in 0..N {
        let t = i as i64;
        *counts.entry((key_of(i), t - t.rem_euclid(WINDOW_MS))).or_default() += 1;
    }
    counts.into_iter().map(|((k, w), n)| format!("{k},{w},{n}")).collect()
}

/// The counting job: events `0..N` at 150k/s through a map that panics once at each of
/// `panics` (counting records over every attempt), counted per key in tumbling windows,
/// exactly once into files in `out`.
fn count_into_files(env: &StreamEnv, out: &Path, panics: Vec<Arc<Trigger>>) {
    let seen = AtomicU64::new(0);
    env.source(
        SequenceSource::new(0..N).with_rate_limit(150_000.0),
        Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64),
    )
    .uid("events")
    .map(move |i| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        if panics.iter().any(|t| t.hit(n)) {
            panic!("injected panic after {n} records");
        }
        i
    })
    .uid("keys")
    .key_by(|i| key_of(*i))
    .window(Tumbling::event_time(Duration::from_millis(WINDOW_MS as u64)))
    .aggregate_with(Count, |k, w, n| format!("{k},{},{n}", w.start))
    .uid("counts")
    .sink(TransactionalFileSink::new(out))
    .uid("files");
}

/// Fires once, when `counter` reaches `at`.
struct Trigger {
    at: u64,
    fired: AtomicBool,
}

impl Trigger {
    fn new(at: u64) -> Arc<Self> {
        Arc::new(Trigger { at, fired: AtomicBool::new(false) })
    }
    fn hit(&self, value: u64) -> bool {
        value >= self.at && !self.fired.swap(true, Ordering::SeqCst)
    }
}

fn run(seed: u64, out: &Path, checkpoints: &Path) -> (sluice::JobResult, Vec<Arc<Trigger>>) {
    let mut rng = Rng::new(seed);
    let panics: Vec<Arc<Trigger>> = (0..2).map(|_| Trigger::new(5_000 + rng.below(N - 20_000))).collect();
    let upload_failure = Trigger::new(2 + rng.below(6));
    let commit_failure = Trigger::new(3 + rng.below(6));

    let env = StreamEnv::new();
    env.set_parallelism(2)
        .set_watermark_interval(Duration::from_millis(20))
        .enable_checkpointing(Duration::from_millis(40), checkpoints.to_str().unwrap())
        .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 10, delay: Duration::from_millis(20) });
    let (upload, commit) = (upload_failure.clone(), commit_failure.clone());
    env.set_failpoint(Arc::new(move |point: &str, id: u64| match point {
        "upload" if upload.hit(id) => Err(format!("injected upload failure at checkpoint {id}")),
        "commit" if commit.hit(id) => Err(format!("injected failure before committing checkpoint {id}")),
        _ => Ok(()),
    }));
    count_into_files(&env, out, panics.clone());
    let result = env.execute("exactly-once").unwrap();
    let mut triggers = panics;
    triggers.push(upload_failure);
    triggers.push(commit_failure);
    (result, triggers)
}

#[test]
fn output_is_exactly_once_across_panics_upload_and_commit_failures() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let (result, triggers) = run(seed, &out, &checkpoints);
    let fired = triggers.iter().filter(|t| t.fired.load(Ordering::SeqCst)).count();
    assert!(fired >= 3, "seed {seed}: only {fired} of the injected failures happened");
    assert!(result.restarts as usize >= fired - 1, "seed {seed}: {} restarts for {fired} failures", result.restarts);
    let got = committed_lines(&out);
    let want = reference();
    assert_eq!(got.len(), want.len(), "seed {seed}: {} lines committed, {} expected", got.len(), want.len());
    assert_eq!(multiset(got), multiset(want), "seed {seed}");
    // Nothing is left pending or in progress once the job has finished.
    for sub in [".pending", ".inprogress"] {
        assert_eq!(std::fs::read_dir(out.join(sub)).unwrap().count(), 0, "seed {seed}: {sub} not empty");
    }
}

#[test]
fn a_finished_job_started_again_only_settles_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let run = || {
        let env = StreamEnv::new();
        env.set_parallelism(2).enable_checkpointing(Duration::from_millis(50), checkpoints.to_str().unwrap());
        env.source(SequenceSource::new(0..1000), Watermarks::none())
            .uid("n")
            .sink(TransactionalFileSink::new(&out))
            .uid("f");
        env.execute("twice").unwrap()
    };
    run();
    assert_eq!(committed_lines(&out).len(), 1000);
    let again = run();
    assert!(again.restored_from.is_some());
    assert_eq!(committed_lines(&out).len(), 1000, "nothing is written twice");
}

#[test]
fn a_corrupted_latest_checkpoint_falls_back_to_the_previous_and_output_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let corrupt = Trigger::new(4);
    let corrupted_file = Arc::new(std::sync::Mutex::new(None));
    let env = StreamEnv::new();
    env.set_parallelism(2)
        .set_watermark_interval(Duration::from_millis(20))
        .enable_checkpointing(Duration::from_millis(40), checkpoints.to_str().unwrap())
        .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 3, delay: Duration::from_millis(20) });
    let (trigger, root, seen) = (corrupt.clone(), checkpoints.clone(), corrupted_file.clone());
    // Checkpoint 4 completes, then its window state is damaged on disk and the job dies
    // before committing: the restart must skip 4, restore 3, and abort 4's transactions.
    env.set_failpoint(Arc::new(move |point: &str, id: u64| {
        if point == "commit" && trigger.hit(id) {
            *seen.lock().unwrap() = Some(flip_keyed_state(&root, "exactly-once-corrupt", id));
            return Err(format!("injected crash after completing checkpoint {id}"));
        }
        Ok(())
    }));
    count_into_files(&env, &out, Vec::new());
    let result = env.execute("exactly-once-corrupt").unwrap();
    assert!(corrupted_file.lock().unwrap().is_some(), "checkpoint 4 was corrupted");
    assert_eq!(result.restarts, 1);
    let got = committed_lines(&out);
    assert_eq!(got.len(), reference().len());
    assert_eq!(multiset(got), multiset(reference()));
}

#[test]
fn at_least_once_mode_loses_nothing_across_failures_and_retention_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let crash = Trigger::new(40_000);
    let seen = Arc::new(AtomicU64::new(0));
    let env = StreamEnv::new();
    env.set_parallelism(2)
        .enable_checkpointing(Duration::from_millis(30), checkpoints.to_str().unwrap())
        .set_checkpoint_mode(CheckpointMode::AtLeastOnce)
        .set_retained_checkpoints(2)
        .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 2, delay: Duration::from_millis(10) });
    let (trigger, counter) = (crash.clone(), seen.clone());
    let a = env.source(SequenceSource::new(0..60_000).with_rate_limit(100_000.0), Watermarks::none()).uid("a");
    let b = env.source(SequenceSource::new(60_000..70_000).with_rate_limit(20_000.0), Watermarks::none()).uid("b");
    a.union(&b)
        .rebalance()
        .map(move |v| {
            if trigger.hit(counter.fetch_add(1, Ordering::SeqCst)) {
                panic!("injected");
            }
            v
        })
        .uid("pass")
        .sink(TransactionalFileSink::new(&out))
        .uid("files");
    let result = env.execute("at-least-once").unwrap();
    assert_eq!(result.restarts, 1);
    let got: Vec<u64> = committed_lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    let counts = multiset(got);
    assert!((0..70_000u64).all(|v| counts.contains_key(&v)), "every record arrives at least once");
    let folders = std::fs::read_dir(checkpoints.join("at-least-once"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("chk-"))
        .count();
    assert!(folders <= 2, "{folders} checkpoints kept, 2 retained");
}

/// Flips the last byte of the keyed state file of checkpoint `id` of `job`; returns it.
fn flip_keyed_state(checkpoints: &Path, job: &str, id: u64) -> std::path::PathBuf {
    let folder = checkpoints.join(job).join(format!("chk-{id:012}"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("_manifest.json")).unwrap()).unwrap();
    let file = manifest["states"].as_array().unwrap().iter().find(|s| s["kind"] == "keyed").unwrap()["file"]
        .as_str()
        .unwrap()
        .to_string();
    let path = folder.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn falling_back_past_a_committed_checkpoint_is_refused_unless_duplicates_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let job = "committed-corrupt";
    let build = |failpoint: Option<sluice::dataflow::Failpoint>, allow: bool| {
        let env = StreamEnv::new();
        env.set_parallelism(2)
            .set_watermark_interval(Duration::from_millis(20))
            .enable_checkpointing(Duration::from_millis(40), checkpoints.to_str().unwrap())
            .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 3, delay: Duration::from_millis(20) });
        if let Some(fp) = failpoint {
            env.set_failpoint(fp);
        }
        if allow {
            env.allow_duplicate_output();
        }
        count_into_files(&env, &out, Vec::new());
        env
    };
    // Checkpoint 5 completes; before it commits, checkpoint 4 (committed) and 5 are both
    // damaged on disk and the job dies. Only checkpoint 3 can be read, but the output of
    // 4 is already in the committed files.
    let corrupt = Trigger::new(5);
    let root = checkpoints.clone();
    let failpoint: sluice::dataflow::Failpoint = Arc::new(move |point: &str, id: u64| {
        if point == "commit" && corrupt.hit(id) {
            flip_keyed_state(&root, job, id - 1);
            flip_keyed_state(&root, job, id);
            return Err(format!("injected crash after completing checkpoint {id}"));
        }
        Ok(())
    });
    let error = build(Some(failpoint), false).execute(job).unwrap_err().to_string();
    assert!(
        error.contains("output of checkpoint 4 was already committed")
            && error.contains("restoring checkpoint 3 would write again")
            && error.contains("allow_duplicate_output"),
        "{error}"
    );
    let before = committed_lines(&out);
    assert!(!before.is_empty(), "checkpoint 4's output was committed");
    // Started again, it still refuses: nothing is written.
    let again = build(None, false).execute(job).unwrap_err().to_string();
    assert!(again.contains("checkpoint 4"), "{again}");
    assert_eq!(committed_lines(&out).len(), before.len());
    // Accepting the duplicates: the job resumes from 3 and writes what 4 had committed again.
    let result = build(None, true).execute(job).unwrap();
    assert_eq!(result.restored_from, Some(3));
    let got = multiset(committed_lines(&out));
    let want = multiset(reference());
    let mut duplicates = 0;
    for (line, n) in &want {
        let seen = got.get(line).copied().unwrap_or(0);
        assert!(seen >= *n, "{line} lost");
        duplicates += seen - n;
    }
    assert!(got.keys().all(|l| want.contains_key(l)), "only reference lines");
    assert!(duplicates > 0, "the override costs duplicates, as its message says");
}

#[test]
fn the_output_of_tolerated_failed_and_timed_out_checkpoints_is_committed_with_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let failed_uploads = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let env = StreamEnv::new();
    env.set_parallelism(2)
        .set_watermark_interval(Duration::from_millis(20))
        .enable_checkpointing(Duration::from_millis(40), checkpoints.to_str().unwrap())
        .set_checkpoint_timeout(Duration::from_millis(150))
        .set_tolerable_checkpoint_failures(8)
        .set_restart_strategy(RestartStrategy::None);
    // The first two uploads fail (their files were pre-committed by the sink); later, one
    // subtask stalls for 400 ms once, so the checkpoints in flight meanwhile time out.
    let uploads = failed_uploads.clone();
    env.set_failpoint(Arc::new(move |point: &str, id: u64| {
        if point == "upload" && uploads.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(format!("injected upload failure at checkpoint {id}"));
        }
        Ok(())
    }));
    let counter = seen.clone();
    env.source(
        SequenceSource::new(0..N).with_rate_limit(150_000.0),
        Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64),
    )
    .uid("events")
    .map(move |i| {
        if counter.fetch_add(1, Ordering::SeqCst) == 80_000 {
            std::thread::sleep(Duration::from_millis(400));
        }
        i
    })
    .uid("stall")
    .key_by(|i| key_of(*i))
    .window(Tumbling::event_time(Duration::from_millis(WINDOW_MS as u64)))
    .aggregate_with(Count, |k, w, n| format!("{k},{},{n}", w.start))
    .uid("counts")
    .sink(TransactionalFileSink::new(&out))
    .uid("files");
    let result = env.execute("carried").unwrap();
    assert!(failed_uploads.load(Ordering::SeqCst) > 2, "two uploads failed, later ones succeeded");
    assert_eq!(result.restarts, 0, "the failures were tolerated");
    // Nothing pre-committed by the failed or abandoned checkpoints is lost or doubled.
    assert_eq!(multiset(committed_lines(&out)), multiset(reference()));
    assert_eq!(std::fs::read_dir(out.join(".pending")).unwrap().count(), 0, "nothing left pending");
}

#[test]
fn a_job_started_fresh_restarts_fresh_until_it_has_a_checkpoint_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let job = |out: &Path, fresh: bool, fail_at: Option<u64>| {
        let env = StreamEnv::new();
        env.set_parallelism(2)
            .set_watermark_interval(Duration::from_millis(20))
            // No periodic checkpoint during the run: only the final one.
            .enable_checkpointing(Duration::from_secs(3600), checkpoints.to_str().unwrap())
            .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 3, delay: Duration::from_millis(20) });
        if fresh {
            env.start_from(StartFrom::Fresh);
        }
        count_into_files(&env, out, fail_at.map(Trigger::new).into_iter().collect());
        env.execute("fresh-restart").unwrap()
    };
    // A first run ends with its final checkpoint in the folder.
    let first = dir.path().join("first");
    job(&first, false, None);
    assert_eq!(multiset(committed_lines(&first)), multiset(reference()));
    // A fresh run fails before any checkpoint of its own: its restart must start fresh
    // again, not from the first run's (finished) checkpoint.
    let second = dir.path().join("second");
    let result = job(&second, true, Some(30_000));
    assert_eq!(result.restarts, 1);
    assert_eq!(result.restored_from, None, "nothing of the first run is restored");
    assert_eq!(multiset(committed_lines(&second)), multiset(reference()));
}

#[test]
fn a_stopped_job_fires_no_window_early_and_the_next_run_completes_the_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    // Events per key in one processing-time window of a day; on a run that spans midnight
    // (UTC) the counts of one key add up over two windows, which the sums allow for.
    let job = |source: SequenceSource| {
        let env = StreamEnv::new();
        env.set_parallelism(2).enable_checkpointing(Duration::from_millis(50), checkpoints.to_str().unwrap());
        env.source(source, Watermarks::none())
            .uid("events")
            .key_by(|i| i % 5)
            .window(Tumbling::processing_time(Duration::from_secs(86_400)))
            .aggregate_with(Count, |k, _, n| format!("{k},{n}"))
            .uid("counts")
            .sink(TransactionalFileSink::new(&out))
            .uid("files");
        env
    };
    let first = job(SequenceSource::unbounded(0).with_rate_limit(20_000.0)).execute_async("stopped").unwrap();
    // Records are in (and in a checkpoint) once one checkpoint has completed.
    let job_folder = checkpoints.join("stopped");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&job_folder)
        .map(|entries| entries.flatten().any(|e| e.path().join("_manifest.json").exists()))
        .unwrap_or(false)
    {
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.cancel();
    let first = first.join().unwrap();
    assert!(first.cancelled);
    // Stopping is not the end of the input: the open window holds part of its records.
    assert_eq!(committed_lines(&out), Vec::<String>::new(), "no window fired when the job stopped");
    let n = 1_000_000; // far beyond what 20 000 events/s reach before the stop
    let second = job(SequenceSource::new(0..n)).execute("stopped").unwrap();
    assert!(second.restored_from.is_some(), "the second run resumes the stopped one");
    let mut sums: HashMap<u64, u64> = HashMap::new();
    for line in committed_lines(&out) {
        let (key, count) = line.split_once(',').unwrap();
        *sums.entry(key.parse().unwrap()).or_default() += count.parse::<u64>().unwrap();
    }
    assert_eq!(sums, (0..5).map(|k| (k, n / 5)).collect());
}

/// The file sink, with commits that fail with an I/O error the first `failures` times.
struct FlakyCommits {
    inner: TransactionalFileSink<String>,
    failures: u64,
    calls: Arc<AtomicU64>,
}

impl Sink<String> for FlakyCommits {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn create_writer(&self, index: usize, parallelism: usize) -> std::io::Result<Box<dyn SinkWriter<String>>> {
        self.inner.create_writer(index, parallelism)
    }
    fn commit(&self, committable: &[u8]) -> std::io::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(std::io::Error::other("injected commit failure"));
        }
        self.inner.commit(committable)
    }
    fn recover(&self, keep: &[Vec<u8>]) -> std::io::Result<()> {
        self.inner.recover(keep)
    }
}

#[test]
fn a_failed_commit_is_retried_in_place_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let calls = Arc::new(AtomicU64::new(0));
    let env = StreamEnv::new();
    env.set_parallelism(2)
        .set_watermark_interval(Duration::from_millis(20))
        .enable_checkpointing(Duration::from_millis(40), checkpoints.to_str().unwrap())
        .set_restart_strategy(RestartStrategy::None);
    env.source(SequenceSource::new(0..N), Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64))
        .uid("events")
        .key_by(|i| key_of(*i))
        .window(Tumbling::event_time(Duration::from_millis(WINDOW_MS as u64)))
        .aggregate_with(Count, |k, w, n| format!("{k},{},{n}", w.start))
        .uid("counts")
        .sink(FlakyCommits { inner: TransactionalFileSink::new(&out), failures: 2, calls: calls.clone() })
        .uid("files");
    // Two failures of the first commit are within its three attempts: no restart (the
    // strategy allows none, so a restart would fail the job).
    let result = env.execute("flaky-commits").unwrap();
    assert_eq!(result.restarts, 0);
    assert!(calls.load(Ordering::SeqCst) > 2, "the failed commit was tried again");
    assert_eq!(multiset(committed_lines(&out)), multiset(reference()));
}
