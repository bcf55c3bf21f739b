//! Failure detection and migration on `sluice cluster`, with real processes and signals: a
//! worker killed with SIGKILL mid-job has its processes placed on the workers that remain
//! (a spare one first, then fewer processes at the same parallelism), the job resumes from
//! its latest checkpoint, and the committed output equals the reference exactly; a worker
//! stopped with SIGSTOP is detected by the heartbeat timeout, and once it is resumed it
//! writes nothing for its old attempt. The job's history names each detection and
//! placement.

use sluice_testjobs::assert_committed_counts;
use sluice_testjobs::cluster::{sluice_beside, submit_counts_args, Cluster};
use sluice_testjobs::harness::seeded;
use std::path::Path;
use std::time::{Duration, Instant};

fn start_cluster(dir: &Path, workers: usize) -> Cluster {
    let sluice = sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")));
    // One slot each: a job at parallelism 2 runs on two workers, the third is spare.
    Cluster::start(&sluice, dir, workers, &["--slots", "1"])
}

/// Submits the counting job (`n` events at `rate`/s, checkpoints every 100 ms) at
/// parallelism 2.
fn submit_counts(cluster: &Cluster, out: &Path, checkpoints: &Path, n: u64, rate: u64) {
    submit_counts_with(cluster, out, checkpoints, n, rate, &[]);
}

/// [`submit_counts`] with `extra` job flags.
fn submit_counts_with(cluster: &Cluster, out: &Path, checkpoints: &Path, n: u64, rate: u64, extra: &[&str]) {
    let counts = env!("CARGO_BIN_EXE_counts");
    let (ok, text) = cluster.client_owned(&submit_counts_args(counts, 2, out, n, rate, Some(checkpoints), extra));
    assert!(ok, "{text}");
}

/// The worker ids running `job`'s processes now, by process index (from `sluice list`).
fn workers_of(cluster: &Cluster, job: &str) -> Vec<u64> {
    let line = cluster.job(job);
    let first = line.lines().next().unwrap_or_default();
    first
        .split_whitespace()
        .filter_map(|p| p.split_once("@worker-"))
        .filter_map(|(_, rest)| rest.split(':').next()?.parse().ok())
        .collect()
}

/// Waits until `job` runs attempt `attempt` with every process running; returns its line.
fn wait_for_attempt(cluster: &Cluster, job: &str, attempt: u64, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let line = cluster.job(job);
        let first = line.lines().next().unwrap_or_default().to_string();
        let running = first.contains(&format!(" attempt {attempt} "))
            && first.contains(":running")
            && !first.contains(":starting")
            && (first.split_whitespace().nth(1) == Some("running"));
        if running {
            return line;
        }
        assert!(first.split_whitespace().nth(1) != Some("failed"), "{line}\n{}", cluster.log());
        assert!(
            Instant::now() < deadline,
            "{job} not at attempt {attempt} within {within:?}:\n{line}\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[test]
fn workers_killed_with_sigkill_mid_job_move_their_processes_and_the_output_stays_exact() {
    let (seed, mut random) = seeded(23);
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 600_000;
    submit_counts(&cluster, &out, &checkpoints, n, 100_000);
    wait_for_attempt(&cluster, "job-1", 1, Duration::from_secs(60));
    // Twice: SIGKILL of a worker that runs a process, at a seeded moment. The first time
    // the spare worker takes its place; the second time one worker is left, and it runs
    // both subtasks in one process.
    for attempt in 1..=2u64 {
        std::thread::sleep(Duration::from_millis(300 + random(900)));
        let workers = workers_of(&cluster, "job-1");
        assert!(!workers.is_empty(), "seed {seed}: no process to kill:\n{}", cluster.job("job-1"));
        let victim = workers[random(workers.len() as u64) as usize];
        let killed_at = Instant::now();
        kill(cluster.worker_pid(victim), "-KILL");
        let line = wait_for_attempt(&cluster, "job-1", attempt + 1, Duration::from_secs(30));
        eprintln!(
            "seed {seed}: worker {victim} killed; attempt {} running after {:?}",
            attempt + 1,
            killed_at.elapsed()
        );
        assert!(line.contains(&format!("worker {victim} lost")) || line.contains("failed (detector"), "{line}");
        assert!(!workers_of(&cluster, "job-1").contains(&victim), "seed {seed}: placed on the dead worker:\n{line}");
    }
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert!(line.contains("attempt 3"), "seed {seed}: {line}");
    let history = cluster.job("job-1");
    assert!(history.contains("placed by least-loaded"), "the placements are in the history:\n{history}");
    assert_committed_counts(&out, n, &format!("seed {seed}"));
}

/// A cluster of 3 one-slot workers in `dir` running the counting job (500 000 events at
/// 100 000/s, checkpoints every 100 ms) for 0.8 s past its start; returns the cluster,
/// the job's output folder and its event count.
fn counting_for_a_while(dir: &Path) -> (Cluster, std::path::PathBuf, u64) {
    let cluster = start_cluster(dir, 3);
    let (out, checkpoints) = (dir.join("out"), dir.join("checkpoints"));
    let n = 500_000;
    submit_counts(&cluster, &out, &checkpoints, n, 100_000);
    wait_for_attempt(&cluster, "job-1", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(800));
    (cluster, out, n)
}

#[test]
fn a_worker_stopped_with_sigstop_is_detected_by_its_heartbeat_and_writes_nothing_once_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, out, n) = counting_for_a_while(dir.path());
    // Process 0 coordinates the job's checkpoints and commits: the worker that hangs is
    // the one that would do harm if it went on.
    let victim = workers_of(&cluster, "job-1")[0];
    let pid = cluster.worker_pid(victim);
    kill(pid, "-STOP");
    let line = wait_for_attempt(&cluster, "job-1", 2, Duration::from_secs(30));
    assert!(line.contains(&format!("worker {victim} lost: no heartbeat for")), "{line}");
    assert!(line.contains("detector: heartbeat"), "{line}");
    // Resumed: its job process has stopped itself (no pulse from its worker) and the
    // worker, now unknown to the coordinator, joins again as a new worker.
    kill(pid, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.log().contains("the coordinator declared this worker lost") {
        assert!(Instant::now() < deadline, "the resumed worker did not learn it was lost:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    let log = cluster.log();
    assert!(log.contains("has been silent for"), "the hung worker's process stopped itself:\n{log}");
    // Exactly the reference: nothing of the old attempt was committed after the new one
    // started.
    assert_committed_counts(&out, n, "SIGSTOP then SIGCONT of process 0's worker");
}

#[test]
fn workers_cut_off_from_their_coordinator_let_their_processes_stop_and_the_job_resumes_exactly() {
    // SIGSTOP of the coordinator (no HA) cuts every worker off from it, as a partition
    // would: the workers stop pulsing their job processes, which stop themselves, so no
    // attempt goes on committing on its own; resumed, the coordinator does not declare its
    // workers lost for its own silence, and restarts the job from its latest checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let (cluster, out, n) = counting_for_a_while(dir.path());
    let coordinator = cluster.coordinator_pid();
    kill(coordinator, "-STOP");
    let stopped_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = cluster.log();
        // One process stops for want of a pulse; its peer may stop first for the closed
        // connection.
        let exited = log.matches("job process exited job=job-1 attempt=1 ").count();
        let held = log.contains("no answer from the coordinator: not pulsing the job processes");
        if held && log.contains("has been silent for") && exited == 2 {
            break;
        }
        if Instant::now() > deadline {
            kill(coordinator, "-CONT");
            panic!("the job processes did not stop while their coordinator was silent:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cut off for longer than the heartbeat timeout, as a partition that lasts would be.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(stopped_at.elapsed()));
    kill(coordinator, "-CONT");
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    let attempt: u64 = line
        .split("attempt ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no attempt in {line}"));
    assert!(attempt >= 2, "the job restarted after its processes stopped: {line}");
    let log = cluster.log();
    assert!(log.contains("this coordinator was stopped or starved"), "{log}");
    assert!(!log.contains("worker lost: no heartbeat"), "no worker was blamed for the coordinator's silence:\n{log}");
    assert_committed_counts(&out, n, "the coordinator stopped with SIGSTOP, then resumed");
}

#[test]
fn a_job_process_killed_alone_restarts_the_attempt_and_the_output_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    // Job processes log at info too: how they read their state back is an info line.
    let sluice = sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")));
    let cluster = Cluster::start_with_env(&sluice, dir.path(), 3, &["--slots", "1"], &[("RUST_LOG", "info")]);
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 400_000;
    submit_counts(&cluster, &out, &checkpoints, n, 100_000);
    wait_for_attempt(&cluster, "job-1", 1, Duration::from_secs(60));
    // GET /workers shows each worker's busy slots and the CPU its job processes use (what
    // the least-loaded placement ranks by): the two running the job use some, the spare none.
    let running = workers_of(&cluster, "job-1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = cluster.http_get("/workers");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let workers = status["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 3, "{body}");
        let busy = |w: &serde_json::Value| running.contains(&w["worker_id"].as_u64().unwrap());
        for w in workers {
            assert_eq!(w["busy_slots"].as_u64(), Some(busy(w) as u64), "{body}");
            if !busy(w) {
                assert_eq!(w["cpu_percent"].as_u64(), Some(0), "the spare runs no job process: {body}");
            }
        }
        if workers.iter().filter(|w| busy(w)).all(|w| w["cpu_percent"].as_u64() > Some(0)) {
            break;
        }
        assert!(Instant::now() < deadline, "no CPU measured for the job's processes: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A checkpoint has completed, so that the next attempt has state to restore.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !completed_checkpoint(&checkpoints) {
        assert!(Instant::now() < deadline, "no checkpoint completed:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The job process, not its worker: the worker reports the exit and stays.
    let log = cluster.log();
    let pid: u32 = log
        .lines()
        .rev()
        .filter(|l| l.contains("job process started job=job-1 process=1 "))
        .find_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no start of process 1 in the log:\n{log}"));
    let before = workers_of(&cluster, "job-1");
    kill(pid, "-KILL");
    let line = wait_for_attempt(&cluster, "job-1", 2, Duration::from_secs(30));
    assert!(line.contains("failed (detector: process exit)"), "{line}");
    let after = workers_of(&cluster, "job-1");
    assert_eq!(after, before, "no worker was lost, so each process runs where it ran before:\n{line}");
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert_committed_counts(&out, n, "a job process killed alone");
    // Task-local recovery: the restarted processes read their own state from their
    // worker's local copies, and process 1 skipped the files of process 0's key groups.
    let log = cluster.log();
    let reads: Vec<(u64, u64, u64)> = log
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(": read ")?.1;
            let number = |s: &str| s.split_whitespace().next()?.parse::<u64>().ok();
            let local = number(rest)?;
            let remote = number(rest.split_once("(task-local recovery), ")?.1)?;
            let skipped = number(rest.split_once("skipped ")?.1)?;
            Some((local, remote, skipped))
        })
        .collect();
    eprintln!("state files read at restores (local copies, store, skipped): {reads:?}");
    assert!(reads.iter().any(|(local, _, _)| *local > 0), "no state was read from a local copy: {reads:?}\n{log}");
    assert!(reads.iter().any(|(_, _, skipped)| *skipped > 0), "every process read every file: {reads:?}\n{log}");
}

/// Whether a checkpoint of the job under `checkpoints` has its manifest written.
fn completed_checkpoint(checkpoints: &Path) -> bool {
    let Ok(jobs) = std::fs::read_dir(checkpoints) else { return false };
    jobs.flatten()
        .filter_map(|job| std::fs::read_dir(job.path()).ok())
        .flatten()
        .flatten()
        .any(|chk| chk.file_name().to_string_lossy().starts_with("chk-") && chk.path().join("_manifest.json").exists())
}

#[test]
fn the_kafka_copy_job_survives_a_worker_killed_with_sigkill_exactly_once() {
    use sluice_kafka::testing::KafkaBroker;
    let (seed, mut random) = seeded(29);
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let input = sluice_testjobs::kafka_copy::setup(&broker, 20_000, &mut random);
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    let checkpoints = dir.path().join("checkpoints");
    let copy = env!("CARGO_BIN_EXE_kafka-copy");
    let submit = sluice_testjobs::kafka_copy::submit_args(copy, 2, broker.bootstrap(), &checkpoints);
    let (ok, text) = cluster.client(&submit.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(ok, "seed {seed}: {text}");
    wait_for_attempt(&cluster, "job-1", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(800 + random(800)));
    let workers = workers_of(&cluster, "job-1");
    let victim = workers[random(workers.len() as u64) as usize];
    kill(cluster.worker_pid(victim), "-KILL");
    let line = wait_for_attempt(&cluster, "job-1", 2, Duration::from_secs(30));
    assert!(line.contains(&format!("worker {victim} lost")), "seed {seed}: {line}");
    cluster.wait_for("job-1", "finished", Duration::from_secs(180));
    // Read committed: every record once, and no transaction of the killed attempt left
    // open to hold readers back.
    sluice_testjobs::kafka_copy::assert_exact_output(&broker, &input, seed);
}

#[test]
fn a_job_left_on_fewer_processes_moves_back_onto_more_when_a_worker_joins_and_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")));
    let cluster = Cluster::start(&sluice, dir.path(), 2, &["--slots", "1", "--scale-up-after-ms", "1000"]);
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 800_000;
    submit_counts(&cluster, &out, &checkpoints, n, 100_000);
    wait_for_attempt(&cluster, "job-1", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(700));
    // One of the two workers is killed: the job goes on at parallelism 2 in one process.
    let victim = workers_of(&cluster, "job-1")[1];
    kill(cluster.worker_pid(victim), "-KILL");
    let line = wait_for_attempt(&cluster, "job-1", 2, Duration::from_secs(30));
    assert_eq!(workers_of(&cluster, "job-1").len(), 1, "on the one worker left:\n{line}");
    // A worker joins: after the stabilization time (1 s here) the job moves back onto two
    // processes, resuming from its latest checkpoint.
    let worker = std::process::Command::new(&sluice)
        .args(["worker", "--coordinator", &cluster.coordinator, "--slots", "1", "--secret-file"])
        .arg(dir.path().join("c/secret"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _worker = sluice_testjobs::harness::KillOnDrop(worker);
    let line = wait_for_attempt(&cluster, "job-1", 3, Duration::from_secs(30));
    assert_eq!(workers_of(&cluster, "job-1").len(), 2, "on two workers again:\n{line}");
    // The decision names the stabilization time it waited for (no timing is asserted).
    assert!(line.contains("ends to rescale: workers with room for 2 processes have been there for 1000 ms"), "{line}");
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert!(line.contains("attempt 3"), "no further attempt: {line}");
    assert_committed_counts(&out, n, "lost a worker, then scaled back up");
}

#[test]
fn a_job_process_with_a_stalled_task_exits_and_the_job_restarts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    let (out, checkpoints, marker) = (dir.path().join("out"), dir.path().join("checkpoints"), dir.path().join("hung"));
    let n = 400_000u64;
    let hang = ["--stall-timeout-ms", "1000", "--hang-once-at", "50000", "--hang-marker", marker.to_str().unwrap()];
    submit_counts_with(&cluster, &out, &checkpoints, n, 100_000, &hang);
    let line = wait_for_attempt(&cluster, "job-1", 2, Duration::from_secs(60));
    assert!(line.contains("(detector: stalled subtask)") && line.contains("'sequence' -> 'map' (subtask"), "{line}");
    assert!(line.contains("exit status: 70"), "{line}");
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert_committed_counts(&out, n, "a stalled task on a cluster");
}

/// Starts a cluster of 3 one-slot workers whose job processes stop dead at `point` of the
/// checkpoint protocol (`SLUICE_PAUSE_AT`, once: the marker file records it), runs `submit`,
/// waits for the pause, and SIGKILLs the worker of process 0 (the process that writes the
/// manifests and commits the sinks) while it is paused. Returns the cluster and the id of
/// the checkpoint it was paused in.
fn kill_worker_paused_at(dir: &Path, point: &str, submit: impl FnOnce(&Cluster)) -> (Cluster, u64) {
    kill_worker_paused_at_after(dir, point, submit, |_| {})
}

/// [`kill_worker_paused_at`], calling `before_kill` with the paused checkpoint's id first.
fn kill_worker_paused_at_after(
    dir: &Path,
    point: &str,
    submit: impl FnOnce(&Cluster),
    before_kill: impl FnOnce(u64),
) -> (Cluster, u64) {
    let marker = dir.join("paused");
    let pause = format!("{point}@{}", marker.display());
    let sluice = sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")));
    let cluster = Cluster::start_with_env(&sluice, dir, 3, &["--slots", "1"], &[("SLUICE_PAUSE_AT", &pause)]);
    submit(&cluster);
    wait_for_attempt(&cluster, "job-1", 1, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    let checkpoint = loop {
        // The id is written after the file is created: wait for the whole line.
        let text = std::fs::read_to_string(&marker).unwrap_or_default();
        if let Some(Ok(id)) = text.strip_suffix('\n').map(str::parse::<u64>) {
            break id;
        }
        assert!(Instant::now() < deadline, "no process paused at {point}:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(10));
    };
    before_kill(checkpoint);
    let victim = workers_of(&cluster, "job-1")[0];
    kill(cluster.worker_pid(victim), "-KILL");
    let line = wait_for_attempt(&cluster, "job-1", 2, Duration::from_secs(30));
    assert!(line.contains(&format!("worker {victim} lost")), "{line}");
    (cluster, checkpoint)
}

/// Flips a byte in every state file of checkpoint `id` under `root`: in checkpoint
/// storage and in the workers' local copies alike. Returns how many it damaged.
fn damage_checkpoint(root: &Path, id: u64) -> usize {
    let folder = format!("chk-{id:012}");
    let mut damaged = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "state") && dir.file_name().is_some_and(|n| *n == *folder) {
                let mut bytes = std::fs::read(&path).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                std::fs::write(&path, bytes).unwrap();
                damaged += 1;
            }
        }
    }
    damaged
}

#[test]
fn a_corrupted_checkpoint_found_at_a_restore_is_passed_over_and_named_in_the_job_history() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 400_000;
    let root = dir.path().to_path_buf();
    // Complete, not committed yet: damaged, it can be passed over without duplicates.
    let (cluster, id) = kill_worker_paused_at_after(
        dir.path(),
        "before-commit",
        |cluster| submit_counts(cluster, &out, &checkpoints, n, 100_000),
        |id| assert!(damage_checkpoint(&root, id) >= 2, "checkpoint {id}'s state files were not found"),
    );
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    let history = cluster.job("job-1");
    let named = history
        .lines()
        .find(|l| l.contains("(detector: corrupted state)") && l.contains(&format!("checkpoint {id}")))
        .unwrap_or_else(|| panic!("checkpoint {id}'s corruption is not in the history:\n{history}"));
    assert!(named.contains("attempt 2, process 0:"), "{named}");
    assert_committed_counts(&out, n, &format!("checkpoint {id} corrupted, then passed over at the restore"));
}

/// Whether checkpoint `id` of the job under `checkpoints` has its manifest written.
fn has_manifest(checkpoints: &Path, id: u64) -> bool {
    let Ok(jobs) = std::fs::read_dir(checkpoints) else { return false };
    jobs.flatten()
        .filter_map(|job| std::fs::read_dir(job.path()).ok())
        .flatten()
        .flatten()
        .filter(|chk| chk.file_name().to_str().and_then(|n| n.strip_prefix("chk-")?.parse::<u64>().ok()) == Some(id))
        .any(|chk| chk.path().join("_manifest.json").exists())
}

#[test]
fn a_worker_killed_while_a_checkpoint_is_being_written_leaves_it_incomplete_and_the_output_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 400_000;
    let (cluster, id) = kill_worker_paused_at(dir.path(), "before-upload", |cluster| {
        submit_counts(cluster, &out, &checkpoints, n, 100_000)
    });
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    // The checkpoint the kill interrupted never completed; the next attempt resumed from
    // the one before it (or from the start) and numbered its own past it.
    assert!(!has_manifest(&checkpoints, id), "checkpoint {id} was completed although its writer was killed");
    assert_committed_counts(&out, n, &format!("killed while writing checkpoint {id}"));
}

#[test]
fn a_worker_killed_after_a_checkpoint_completed_and_before_its_sinks_committed_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 400_000;
    let (cluster, id) = kill_worker_paused_at(dir.path(), "before-commit", |cluster| {
        submit_counts(cluster, &out, &checkpoints, n, 100_000)
    });
    // Complete but not committed when the kill came: the next attempt restores it and
    // commits its sinks' transactions, so its output is neither lost nor written twice.
    assert!(has_manifest(&checkpoints, id), "checkpoint {id} has no manifest although it was complete");
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert_committed_counts(&out, n, &format!("killed between the completion and the commit of checkpoint {id}"));
}

#[test]
fn the_kafka_copy_job_loses_nothing_when_killed_between_a_checkpoint_and_its_commit() {
    use sluice_kafka::testing::KafkaBroker;
    let (seed, mut random) = seeded(31);
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let input = sluice_testjobs::kafka_copy::setup(&broker, 20_000, &mut random);
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let copy = env!("CARGO_BIN_EXE_kafka-copy");
    let submit = sluice_testjobs::kafka_copy::submit_args(copy, 2, broker.bootstrap(), &checkpoints);
    let (cluster, id) = kill_worker_paused_at(dir.path(), "before-commit", |cluster| {
        let (ok, text) = cluster.client(&submit.iter().map(String::as_str).collect::<Vec<_>>(), None);
        assert!(ok, "seed {seed}: {text}");
    });
    assert!(has_manifest(&checkpoints, id), "checkpoint {id} has no manifest although it was complete");
    cluster.wait_for("job-1", "finished", Duration::from_secs(180));
    // The transactions prepared for checkpoint `id` were committed by the next attempt:
    // read committed, every record once and none left open.
    sluice_testjobs::kafka_copy::assert_exact_output(&broker, &input, seed);
}
