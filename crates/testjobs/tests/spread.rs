//! The counting job spread over three real processes of its binary, connected by
//! `sluice-net`: every process runs a third of the subtasks (sources, windows and sinks),
//! so the keyed exchange crosses process boundaries, and the committed output equals the
//! reference and the output of one process. Processes without the secret, or with
//! another, are refused; so is checkpointing, which needs the coordinator.

use sluice_testjobs::harness::{free_addresses, multiset, spread, take_savepoint, KillOnDrop};
use sluice_testjobs::{assert_committed_counts, counts_reference};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn counts(out: &Path, n: u64, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_counts"));
    command
        .args(["--out", out.to_str().unwrap(), "--n", &n.to_string(), "--rate", "1000000", "--parallelism", "3"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn committed(dir: &Path) -> Vec<String> {
    sluice::connectors::committed_lines(dir).unwrap()
}

#[test]
fn a_job_spread_over_three_processes_commits_exactly_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 90_000;
    let peers = free_addresses(3);
    let mut processes: Vec<KillOnDrop> = (0..3)
        .map(|i| KillOnDrop(spread(&mut counts(&out, n, &[]), i, &peers, "test-secret").spawn().unwrap()))
        .collect();
    for (i, p) in processes.iter_mut().enumerate() {
        let (status, stderr) = p.wait(Duration::from_secs(120));
        assert!(status.success(), "process {i} failed: {status}\n{stderr}");
    }
    assert_committed_counts(&out, n, "three processes");
    // Every process's sink subtask committed its own files.
    let files = std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok()).count();
    assert!(files >= 3, "{files} committed files for three sink subtasks");
}

#[test]
fn a_process_with_a_wrong_secret_is_refused_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let peers = free_addresses(2);
    let _right = KillOnDrop(spread(&mut counts(&out, 1000, &[]), 0, &peers, "right").spawn().unwrap());
    let mut wrong = KillOnDrop(spread(&mut counts(&out, 1000, &[]), 1, &peers, "wrong").spawn().unwrap());
    let (status, stderr) = wrong.wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(stderr.contains("cluster secret"), "{stderr}");
    assert!(committed(&out).is_empty(), "nothing ran");
}

#[test]
fn a_process_without_a_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let peers = free_addresses(2);
    let mut command = counts(&out, 1000, &[]);
    spread(&mut command, 0, &peers, "x").env_remove("SLUICE_SECRET");
    let (status, stderr) = KillOnDrop(command.spawn().unwrap()).wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(stderr.contains("needs the cluster secret: set SLUICE_SECRET or SLUICE_SECRET_FILE"), "{stderr}");
}

#[test]
fn every_process_killed_with_sigkill_and_started_again_resumes_from_the_latest_checkpoint_exactly() {
    let (seed, mut random) = sluice_testjobs::harness::seeded(11);
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 200_000;
    let start = |peers: &[std::net::SocketAddr]| -> Vec<KillOnDrop> {
        (0..3)
            .map(|i| {
                let mut command = Command::new(env!("CARGO_BIN_EXE_counts"));
                command
                    .args(["--out", out.to_str().unwrap(), "--n", &n.to_string(), "--rate", "100000"])
                    .args(["--parallelism", "3", "--checkpoint-dir", checkpoints.to_str().unwrap()])
                    .args(["--checkpoint-interval-ms", "100"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                KillOnDrop(spread(&mut command, i, peers, "ckpt").spawn().unwrap())
            })
            .collect()
    };
    let mut kills = 0;
    for _ in 0..3 {
        let mut processes = start(&free_addresses(3));
        // Pacing, not waiting for a condition: the kill lands at a seeded random moment.
        std::thread::sleep(Duration::from_millis(500 + random(700)));
        if processes.iter_mut().any(|p| p.0.try_wait().unwrap().is_some()) {
            break;
        }
        for p in &mut processes {
            p.0.kill().unwrap(); // SIGKILL, every process of the job
            p.0.wait().unwrap();
        }
        kills += 1;
    }
    let mut processes = start(&free_addresses(3));
    let mut first_stderr = String::new();
    for (i, p) in processes.iter_mut().enumerate() {
        let (status, stderr) = p.wait(Duration::from_secs(120));
        assert!(status.success(), "seed {seed}: process {i} failed: {status}\n{stderr}");
        if i == 0 {
            first_stderr = stderr;
        }
    }
    assert!(kills >= 1, "seed {seed}: no kill landed before the job finished");
    assert!(first_stderr.contains("restored from checkpoint"), "seed {seed}: nothing was restored:\n{first_stderr}");
    assert_committed_counts(&out, n, &format!("seed {seed}"));
}

#[test]
fn a_process_killed_with_sigkill_fails_the_others_with_the_reason_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let peers = free_addresses(2);
    // Unbounded: only the kill ends it.
    let mut survivor = KillOnDrop(spread(&mut counts(&out, 0, &[]), 0, &peers, "k").spawn().unwrap());
    let mut victim = KillOnDrop(spread(&mut counts(&out, 0, &[]), 1, &peers, "k").spawn().unwrap());
    // Pacing, not a condition: let records flow both ways first.
    std::thread::sleep(Duration::from_millis(700));
    assert!(victim.0.try_wait().unwrap().is_none(), "the job runs until the kill");
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    let (status, stderr) = survivor.wait(Duration::from_secs(60));
    assert!(!status.success(), "the survivor cannot finish the job alone");
    assert!(
        stderr.contains("the connection from process 1 failed") && stderr.contains("stopped or was killed"),
        "{stderr}"
    );
}

#[test]
fn processes_that_build_different_graphs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let peers = free_addresses(2);
    let mut first = counts(&out, 1000, &[]);
    let _first = KillOnDrop(spread(&mut first, 0, &peers, "s").spawn().unwrap());
    // The same binary with another parallelism: its subtasks would not line up.
    let mut second = Command::new(env!("CARGO_BIN_EXE_counts"));
    second
        .args(["--out", out.to_str().unwrap(), "--n", "1000", "--parallelism", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut second = KillOnDrop(spread(&mut second, 1, &peers, "s").spawn().unwrap());
    let (status, stderr) = second.wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(stderr.contains("built another job graph") && stderr.contains("same arguments"), "{stderr}");
}

fn counts_of(report: &Path, process: usize) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(report.join(format!("process-{process}.txt"))).ok()?;
    let (produced, consumed) = text.trim().split_once(' ')?;
    Some((produced.parse().ok()?, consumed.parse().ok()?))
}

#[test]
fn a_slow_sink_in_one_process_holds_back_the_source_in_another_within_its_credits() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let peers = free_addresses(2);
    let job = |process: usize| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_backpressure"));
        command.args(["--report", report.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
        KillOnDrop(spread(&mut command, process, &peers, "bp").spawn().unwrap())
    };
    let (_source_side, _slow_side) = (job(0), job(1));
    // Wait until the slow subtask has consumed a few hundred records (a deadline, not a
    // timing expectation), then compare what the source produced with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if counts_of(&report, 1).is_some_and(|(_, consumed)| consumed >= 300) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slow sink consumed too little within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (produced, _) = counts_of(&report, 0).expect("process 0 reports");
    let (_, slow_consumed) = counts_of(&report, 1).expect("process 1 reports");
    // Batches of 10 go round-robin to the two sink subtasks, so the source can be ahead of
    // the slow one by what its channel holds: 4 credits of 10 records (the batch the sink
    // is sleeping on among them), the batch waiting for a credit, and the reports' age
    // (each file is rewritten every 20 ms: one slow batch); the fast subtask takes as many
    // again. Without credits the source would be millions of records ahead.
    let bound_per_sink = (4 + 1 + 2) * 10;
    assert!(
        produced <= 2 * (slow_consumed + bound_per_sink) + 10,
        "the source produced {produced} records while the slow sink consumed {slow_consumed}: more than its credits \
         allow ({bound_per_sink} records ahead per sink subtask)"
    );
}

#[test]
fn a_savepoint_of_a_spread_job_resumed_at_another_parallelism_gives_exactly_the_reference() {
    // Taken at parallelism 2 over 2 processes, resumed at parallelism 3 over 3: keyed
    // window state moves by key group, the source's lanes are redistributed.
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let processes = |n: u64, from: Option<&str>, parallelism: usize| -> Vec<KillOnDrop> {
        let peers = free_addresses(parallelism);
        (0..parallelism)
            .map(|i| {
                let mut command = Command::new(env!("CARGO_BIN_EXE_counts"));
                command
                    .args(["--out", out.to_str().unwrap(), "--n", &n.to_string(), "--rate", "100000"])
                    .args([
                        "--parallelism",
                        &parallelism.to_string(),
                        "--checkpoint-dir",
                        checkpoints.to_str().unwrap(),
                    ])
                    .args(["--checkpoint-interval-ms", "3600000"])
                    .args(from.map(|f| vec!["--from", f]).unwrap_or_default())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                KillOnDrop(spread(&mut command, i, &peers, "sp").spawn().unwrap())
            })
            .collect()
    };
    // An unbounded run: a savepoint while it runs (no periodic checkpoint: the interval is
    // an hour), then SIGKILL of both processes.
    let mut running = processes(0, None, 2);
    let path = take_savepoint(&mut running[0], &checkpoints, "counts", Duration::from_secs(30));
    for p in &mut running {
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }
    // Resumed from the savepoint, bounded: the output is the reference, exactly.
    let n = 200_000;
    let mut resumed = processes(n, Some(&path), 3);
    for (i, p) in resumed.iter_mut().enumerate() {
        let (status, stderr) = p.wait(Duration::from_secs(120));
        assert!(status.success(), "process {i}: {status}\n{stderr}");
        if i == 0 {
            assert!(stderr.contains("restored from checkpoint"), "{stderr}");
        }
    }
    assert_eq!(multiset(committed(&out)), multiset(counts_reference(n)));
}
