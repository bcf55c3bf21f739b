//! The whole job process is killed with SIGKILL at seeded random moments and started again
//! with the same command; the committed output must equal the reference exactly.

use sluice_testjobs::harness::{multiset, seeded, KillOnDrop};
use sluice_testjobs::{assert_committed_counts, counts_reference};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start(out: &Path, checkpoints: &Path, n: u64) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_counts"))
        .args(["--out", out.to_str().unwrap(), "--checkpoint-dir", checkpoints.to_str().unwrap()])
        .args(["--checkpoint-interval-ms", "100", "--n", &n.to_string(), "--rate", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the counts binary starts");
    KillOnDrop(child)
}

fn committed(dir: &Path) -> Vec<String> {
    sluice::connectors::committed_lines(dir).unwrap()
}

#[test]
fn a_job_killed_with_sigkill_and_started_again_commits_exactly_the_reference() {
    let (seed, mut random) = seeded(7);
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 300_000;
    let mut kills = 0;
    for _ in 0..5 {
        let mut job = start(&out, &checkpoints, n);
        // Pacing, not waiting for a condition: the kill lands at a seeded random moment.
        std::thread::sleep(Duration::from_millis(300 + random(900)));
        if job.0.try_wait().unwrap().is_some() {
            break;
        }
        job.0.kill().unwrap(); // SIGKILL
        job.0.wait().unwrap();
        kills += 1;
    }
    let mut job = start(&out, &checkpoints, n);
    let (status, stderr) = job.wait(Duration::from_secs(120));
    assert!(status.success(), "seed {seed}: the last run failed: {status}\n{stderr}");
    assert!(kills >= 2, "seed {seed}: only {kills} kills landed before the job finished");
    // Kills that all landed before the first checkpoint would test no recovery at all.
    assert!(stderr.contains("restored from checkpoint"), "seed {seed}: the last run restored nothing:\n{stderr}");
    assert_committed_counts(&out, n, &format!("seed {seed}"));
}

#[test]
fn ctrl_c_stops_an_unbounded_job_with_a_final_checkpoint_that_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let mut job = start(&out, &checkpoints, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&out).len() < 200 {
        if Instant::now() >= deadline {
            panic!("no output committed within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupted = Command::new("kill").args(["-INT", &job.0.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let status = job.wait(Duration::from_secs(30)).0;
    assert!(status.success(), "Ctrl-C ends the job cleanly: {status}");
    let stopped_at = committed(&out).len();
    // The next run, bounded this time, resumes where Ctrl-C stopped it.
    let n = 300_000;
    let mut job = start(&out, &checkpoints, n);
    let (status, stderr) = job.wait(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("restored from checkpoint"), "it resumed from the final checkpoint:\n{stderr}");
    let got = committed(&out);
    assert!(got.len() > stopped_at);
    assert_eq!(multiset(got), multiset(counts_reference(n)));
}

#[test]
fn a_restart_is_reported_on_stderr_with_its_cause_attempt_and_delay() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let mut job = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_counts"))
            .args(["--out", out.to_str().unwrap(), "--checkpoint-dir", checkpoints.to_str().unwrap()])
            .args(["--checkpoint-interval-ms", "50", "--n", "20000", "--fail-once-at", "5000"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the counts binary starts"),
    );
    let (status, stderr) = job.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("job 'counts' failed: operator 'map' (subtask")
            && stderr.contains("failing once, as asked")
            && stderr.contains("restart 1 in"),
        "the restart is on stderr without any set-up:\n{stderr}"
    );
    assert!(stderr.contains("1 restarts"), "{stderr}");
    assert_eq!(multiset(committed(&out)), multiset(counts_reference(20_000)));
}

#[test]
fn job_flags_are_parsed_strictly_with_messages_that_name_the_flag() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_counts")).args(args).output().expect("the counts binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, stderr) = run(&["--out", "/tmp/x", "--n", "many"]);
    assert!(!ok && stderr.contains("'many'") && stderr.contains("--n"), "{stderr}");
    let (ok, _, stderr) = run(&["--out", "/tmp/x", "--checkpoint-intervall-ms", "5"]);
    assert!(!ok && stderr.contains("unexpected argument"), "{stderr}");
    let (ok, _, stderr) = run(&["--out", "--n", "5"]);
    assert!(!ok && stderr.contains("--out"), "a flag is not another flag's value: {stderr}");
    let (ok, _, stderr) = run(&["--out", "/tmp/x", "--fresh"]);
    assert!(!ok && stderr.contains("--checkpoint-dir"), "--fresh needs checkpoints: {stderr}");
    let (ok, stdout, _) = run(&["--help"]);
    assert!(ok && stdout.contains("--allow-duplicates") && stdout.contains("--checkpoint-dir"), "{stdout}");
    // A job that cannot start says why as a message, not as a Debug dump.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("checkpoints");
    let out = dir.path().join("out");
    let (ok, _, stderr) =
        run(&["--out", out.to_str().unwrap(), "--checkpoint-dir", under_file.to_str().unwrap(), "--n", "10"]);
    assert!(!ok && stderr.starts_with("counts: job 'counts' cannot start: checkpoint location"), "{stderr}");
    assert!(!stderr.contains("Restore {") && !stderr.contains("message:"), "no Debug dump: {stderr}");
}

#[test]
fn a_task_that_hangs_is_detected_as_stalled_the_process_exits_and_the_next_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints, marker) = (dir.path().join("out"), dir.path().join("checkpoints"), dir.path().join("hung"));
    let n = 300_000;
    let run = |hang: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_counts"));
        command
            .args(["--out", out.to_str().unwrap(), "--checkpoint-dir", checkpoints.to_str().unwrap()])
            .args(["--checkpoint-interval-ms", "100", "--n", &n.to_string(), "--rate", "100000"])
            .args(["--stall-timeout-ms", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if hang {
            command.args(["--hang-once-at", "100000", "--hang-marker", marker.to_str().unwrap()]);
        }
        KillOnDrop(command.spawn().expect("the counts binary starts"))
    };
    let (status, stderr) = run(true).wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(sluice::runtime::watchdog::EXIT_STALLED), "{stderr}");
    assert!(stderr.contains("hanging, as asked"), "{stderr}");
    assert!(
        stderr.contains("'sequence' -> 'map' (subtask")
            && stderr.contains("stalled")
            && stderr.contains("(detector: stalled subtask)"),
        "the detection names the task and the detector:\n{stderr}"
    );
    let (status, stderr) = run(true).wait(Duration::from_secs(120));
    assert!(status.success(), "the next run does not hang (the marker exists): {stderr}");
    assert!(stderr.contains("restored from checkpoint"), "it resumed:\n{stderr}");
    assert_committed_counts(&out, n, "a stalled task, then a restart");
}
