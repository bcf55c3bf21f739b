//! The whole job process is killed with SIGKILL at seeded random moments and started again
//! with the same command; the committed output must equal the reference exactly.

use sluice_testjobs::counts_reference;
use sluice_testjobs::harness::{multiset, seeded, KillOnDrop};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start(out: &Path, checkpoints: &Path, n: u64) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_counts"))
        .args(["--out", out.to_str().unwrap(), "--checkpoint-dir", checkpoints.to_str().unwrap()])
        .args(["--checkpoint-interval-ms", "100", "--n", &n.to_string(), "--rate", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    let status = job.wait(Duration::from_secs(120)).0;
    assert!(status.success(), "seed {seed}: the last run failed: {status}");
    assert!(kills >= 2, "seed {seed}: only {kills} kills landed before the job finished");
    let got = committed(&out);
    let want = counts_reference(n);
    assert_eq!(got.len(), want.len(), "seed {seed}: {} lines committed, {} expected", got.len(), want.len());
    assert_eq!(multiset(got), multiset(want), "seed {seed}");
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
    assert!(job.wait(Duration::from_secs(120)).0.success());
    let got = committed(&out);
    assert!(got.len() > stopped_at);
    assert_eq!(multiset(got), multiset(counts_reference(n)));
}
