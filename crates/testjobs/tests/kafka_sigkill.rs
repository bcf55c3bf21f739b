//! Kafka -> map -> Kafka, exactly once, against a real broker. The job process is killed
//! with SIGKILL at seeded random moments, or dies at chosen steps of a checkpoint, and is
//! started again until it finishes; a `read_committed` consumer of the output topic must
//! see exactly the reference, and no transaction may be left open to hold such a consumer
//! back.

use sluice_kafka::testing::{blocked_partitions, open_transactions, KafkaBroker};
use sluice_testjobs::harness::{seeded, take_savepoint, KillOnDrop};
use sluice_testjobs::kafka_copy::{assert_exact_output, setup};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn start(bootstrap: &str, checkpoints: &Path, extra: &[&str]) -> KillOnDrop {
    start_at(bootstrap, checkpoints, 2, 100, &[&["--pace-every", "10"], extra].concat())
}

fn start_at(bootstrap: &str, checkpoints: &Path, parallelism: usize, interval_ms: u64, extra: &[&str]) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_kafka-copy"))
        .args(["--bootstrap", bootstrap, "--input", "in", "--output", "out", "--prefix", "copy"])
        .args(["--checkpoint-dir", checkpoints.to_str().unwrap()])
        .args(["--checkpoint-interval-ms", &interval_ms.to_string()])
        .args(["--parallelism", &parallelism.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the kafka-copy binary starts");
    KillOnDrop(child)
}

#[test]
fn kafka_to_kafka_killed_with_sigkill_commits_exactly_the_reference() {
    let (seed, mut random) = seeded(11);
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let input = setup(&broker, 40_000, &mut random);
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let mut kills = 0;
    for _ in 0..5 {
        let mut job = start(broker.bootstrap(), &checkpoints, &[]);
        // Pacing, not waiting for a condition: the kill lands at a seeded random moment.
        std::thread::sleep(Duration::from_millis(500 + random(1500)));
        if job.0.try_wait().unwrap().is_some() {
            break;
        }
        job.0.kill().unwrap(); // SIGKILL
        job.0.wait().unwrap();
        kills += 1;
    }
    let (status, stderr) = start(broker.bootstrap(), &checkpoints, &[]).wait(Duration::from_secs(180));
    assert!(status.success(), "seed {seed}: the last run failed: {status}\n{stderr}");
    assert!(kills >= 2, "seed {seed}: only {kills} kills landed before the job finished");
    assert!(stderr.contains("restored from checkpoint"), "seed {seed}: the last run restored nothing:\n{stderr}");
    assert_exact_output(&broker, &input, seed);
}

/// Dies at `step` of checkpoint 3, checks that it left open transactions behind, then runs
/// again to the end.
fn crash_then_finish(step: &str) {
    let (seed, mut random) = seeded(11);
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let input = setup(&broker, 20_000, &mut random);
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let (status, stderr) =
        start(broker.bootstrap(), &checkpoints, &["--crash-at", &format!("{step}:3")]).wait(Duration::from_secs(120));
    assert!(!status.success(), "the job was to die at {step} of checkpoint 3: {status}\n{stderr}");
    assert!(
        !open_transactions(broker.bootstrap(), "copy-").unwrap().is_empty(),
        "the crash left pre-committed transactions open ({status}):\n{stderr}"
    );
    assert!(!blocked_partitions(broker.bootstrap(), "out").unwrap().is_empty());
    let (status, stderr) = start(broker.bootstrap(), &checkpoints, &[]).wait(Duration::from_secs(120));
    assert!(status.success(), "the restarted job failed: {status}\n{stderr}");
    assert!(stderr.contains("restored from checkpoint"), "the restart resumed from a checkpoint:\n{stderr}");
    assert_exact_output(&broker, &input, seed);
}

#[test]
fn dying_between_checkpoint_completion_and_commit_commits_the_transactions_after_restart() {
    crash_then_finish("commit");
}

#[test]
fn dying_before_a_checkpoint_completes_aborts_its_transactions_after_restart() {
    crash_then_finish("upload");
}

#[test]
fn savepoints_resumed_at_other_parallelisms_split_the_partitions_anew_and_commit_exactly_the_reference() {
    // Parallelism 2 -> savepoint -> SIGKILL -> 3 -> savepoint -> SIGKILL -> 1 to the end:
    // the 4 partitions' offsets move to their owners at each parallelism.
    let (seed, mut random) = seeded(13);
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let input = setup(&broker, 20_000, &mut random);
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    // Slow (1 ms per record per subtask) and no periodic checkpoint within the test's
    // time: only the savepoints are restored from.
    let (slow, rare) = (["--pace-every", "1"], 20_000);
    let mut job = start_at(broker.bootstrap(), &checkpoints, 2, rare, &slow);
    let mut from = take_savepoint(&mut job, &checkpoints, "kafka-copy", Duration::from_secs(60));
    job.0.kill().unwrap();
    job.0.wait().unwrap();
    let mut job = start_at(broker.bootstrap(), &checkpoints, 3, rare, &[&slow[..], &["--from", &from]].concat());
    // A savepoint of the run at 3 (its first checkpoint is the restore's: ask until one of
    // its own is taken).
    let second = take_savepoint(&mut job, &checkpoints, "kafka-copy", Duration::from_secs(60));
    assert_ne!(second, from, "seed {seed}");
    from = second;
    assert!(job.0.try_wait().unwrap().is_none(), "seed {seed}: the run at parallelism 3 ended before its savepoint");
    job.0.kill().unwrap();
    job.0.wait().unwrap();
    let (status, stderr) =
        start_at(broker.bootstrap(), &checkpoints, 1, rare, &["--from", &from]).wait(Duration::from_secs(180));
    assert!(status.success(), "seed {seed}: the run at parallelism 1 failed: {status}\n{stderr}");
    assert!(stderr.contains("restored from checkpoint"), "seed {seed}: the last run restored nothing:\n{stderr}");
    assert_exact_output(&broker, &input, seed);
}
