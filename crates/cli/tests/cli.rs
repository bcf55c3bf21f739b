//! The command line against a running job: a savepoint is triggered from outside the job
//! process and shows up, restorable, in the listing.

use sluice::prelude::*;
use std::process::Command;
use std::time::Duration;

fn sluice(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("the sluice binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_savepoint_is_triggered_from_the_command_line_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let root = checkpoints.to_str().unwrap();
    let env = StreamEnv::new();
    env.set_parallelism(2).enable_checkpointing(Duration::from_millis(200), root);
    env.source(SequenceSource::unbounded(0).with_rate_limit(20_000.0), Watermarks::none())
        .uid("numbers")
        .key_by(|v| v % 7)
        .reduce(|a, b| a.max(b))
        .uid("max")
        .discard();
    // The handle cancels the job if the test fails before it is joined.
    let job = env.execute_async("cli job").unwrap();

    let (ok, stdout, stderr) =
        sluice(&["savepoint", "--checkpoint-dir", root, "--job", "cli job", "--timeout-secs", "30"]);
    assert!(ok, "{stderr}");
    let path = stdout.trim();
    assert!(path.contains("savepoint-"), "{path}");
    let manifest = std::fs::read_to_string(std::path::Path::new(path).join("_manifest.json")).unwrap();
    assert!(manifest.contains("\"savepoint\": true") && manifest.contains("\"max\""), "{manifest}");

    let (ok, listing, stderr) = sluice(&["checkpoints", "--checkpoint-dir", root, "--job", "cli job"]);
    assert!(ok, "{stderr}");
    assert!(listing.lines().any(|l| l.starts_with("savepoint") && l.contains("complete")), "{listing}");

    job.cancel();
    job.join().unwrap();
    let (ok, _, stderr) = sluice(&["savepoint", "--checkpoint-dir", root, "--job", "cli job", "--timeout-secs", "1"]);
    assert!(!ok && stderr.contains("is the job running") && stderr.contains("withdrawn"), "{stderr}");
    // The unanswered request was withdrawn: the next run of the job takes no savepoint.
    let request = checkpoints.join("cli_job").join("_savepoint_request");
    assert!(!request.exists(), "the request file is gone");
}

#[test]
fn usage_errors_name_the_fix() {
    let (ok, _, stderr) = sluice(&["savepoint"]);
    assert!(!ok && stderr.contains("name the job") && stderr.contains("--checkpoint-dir DIR"), "{stderr}");
    let (ok, _, stderr) = sluice(&["savepoint", "--checkpoint-dir", "/tmp"]);
    assert!(!ok && stderr.contains("--job <NAME>") && stderr.contains("required"), "{stderr}");
    let (ok, _, stderr) = sluice(&["savepoint", "job-1", "--checkpoint-dir", "/tmp", "--job", "j"]);
    assert!(!ok && stderr.contains("cannot be used with"), "a cluster job or a local one, not both: {stderr}");
    // Unknown flags are refused; a flag is not taken as another flag's value.
    let (ok, _, stderr) = sluice(&["checkpoints", "--checkpoint-dir", "/tmp", "--job", "j", "--verbose"]);
    assert!(!ok && stderr.contains("unexpected argument '--verbose'"), "{stderr}");
    let (ok, _, stderr) = sluice(&["checkpoints", "--checkpoint-dir", "--job", "j"]);
    assert!(!ok && stderr.contains("--checkpoint-dir"), "{stderr}");
    // A bad number names its flag.
    let (ok, _, stderr) = sluice(&["savepoint", "--checkpoint-dir", "/tmp", "--job", "j", "--timeout-secs", "soon"]);
    assert!(!ok && stderr.contains("'soon'") && stderr.contains("--timeout-secs"), "{stderr}");
    // --help works for every command.
    for command in [&["--help"][..], &["savepoint", "--help"], &["checkpoints", "--help"]] {
        let (ok, stdout, _) = sluice(command);
        assert!(ok && stdout.contains("Usage"), "{command:?}: {stdout}");
    }
    // A folder that does not exist is said so, and nothing is created.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let (ok, _, stderr) = sluice(&["checkpoints", "--checkpoint-dir", missing.to_str().unwrap(), "--job", "j"]);
    assert!(!ok && stderr.contains("there is no checkpoint folder"), "{stderr}");
    assert!(!missing.exists(), "nothing is created");
}
