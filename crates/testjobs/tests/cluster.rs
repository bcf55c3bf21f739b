//! `sluice cluster --workers 3` as real processes on loopback: the counting job submitted
//! at parallelism 3 runs as three job processes on three workers and commits exactly the
//! reference, and a job of joins, keyed state and timers gives exactly the output of one
//! process; an unbounded job is cancelled; a client with another secret is refused.
//! The cluster runs in a process group of its own, killed (SIGKILL) when the test ends.

use sluice_testjobs::assert_committed_counts;
use sluice_testjobs::cluster::{submit_counts_args, Cluster};
use sluice_testjobs::harness::multiset;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The `sluice` binary beside the test's job binaries (`cargo test --workspace` builds
/// it; `cargo test -p sluice-testjobs` alone needs `cargo build -p sluice-cli` first).
fn sluice_binary() -> PathBuf {
    sluice_testjobs::cluster::sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")))
}

fn start_cluster(dir: &Path, workers: usize) -> Cluster {
    Cluster::start(&sluice_binary(), dir, workers, &[])
}

#[test]
fn a_job_submitted_to_a_three_worker_cluster_commits_exactly_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    let out = dir.path().join("out");
    let n = 90_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let (ok, text) = cluster.client_owned(&submit_counts_args(counts, 3, &out, n, 1_000_000, None, &[]));
    assert!(ok, "{text}");
    assert!(text.contains("job-1 submitted") && text.contains("over 3 processes"), "{text}");
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    // Three processes on three different workers.
    for worker in ["0@worker-", "1@worker-", "2@worker-"] {
        assert!(line.contains(worker), "{line}");
    }
    assert_committed_counts(&out, n, "the cluster's run");
    // The job processes' logs reached the workers' (the cluster's) stderr, named.
    let log = std::fs::read_to_string(dir.path().join("cluster.log")).unwrap();
    assert!(log.contains("[job-1 'counts' process 0] done: restored from nothing"), "{log}");

    // Joins, keyed state and timers: the cluster's output equals one process's.
    let joins = env!("CARGO_BIN_EXE_joins");
    let (local, spread) = (dir.path().join("joins-local"), dir.path().join("joins-cluster"));
    let status = Command::new(joins).args(["--out", local.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    let (ok, text) = cluster.client(&["submit", joins, "-p", "3", "--", "--out", spread.to_str().unwrap()], None);
    assert!(ok, "{text}");
    cluster.wait_for("job-2", "finished", Duration::from_secs(120));
    for output in ["window-join", "interval-join", "bursts"] {
        let want = sluice::connectors::committed_lines(&local.join(output)).unwrap();
        let got = sluice::connectors::committed_lines(&spread.join(output)).unwrap();
        assert!(!want.is_empty(), "{output}: the local run wrote nothing");
        assert_eq!(multiset(got), multiset(want), "{output}");
    }
}

#[test]
fn an_unbounded_job_is_cancelled_and_a_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 2);
    let out = dir.path().join("out");
    let counts = env!("CARGO_BIN_EXE_counts");
    let (ok, text) =
        cluster.client(&["submit", counts, "-p", "2", "--", "--out", out.to_str().unwrap(), "--n", "0"], None);
    assert!(ok, "{text}");
    cluster.wait_for("job-1", "running", Duration::from_secs(60));
    let (ok, text) = cluster.client(&["cancel", "job-1", "--savepoint"], None);
    assert!(!ok && text.contains("savepoints need checkpointing"), "refused, saying why: {text}");
    let (ok, text) = cluster.client(&["cancel", "job-1"], None);
    assert!(ok, "{text}");
    cluster.wait_for("job-1", "cancelled", Duration::from_secs(60));

    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not the secret").unwrap();
    let (ok, text) = cluster.client(&["list"], Some(&wrong));
    assert!(!ok && text.contains("wrong cluster secret"), "{text}");
    let log = std::fs::read_to_string(dir.path().join("cluster.log")).unwrap();
    assert!(log.contains("refused a call with a wrong cluster secret"), "the refusal is logged:\n{log}");
}

#[test]
fn a_cluster_with_tls_runs_a_spread_job_exactly_and_refuses_clients_without_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    // RUST_LOG=info, so that the job processes say how they connected.
    let cluster = Cluster::start_with_env(&sluice_binary(), dir.path(), 3, &["--tls"], &[("RUST_LOG", "info")]);
    let ca = cluster.tls_ca.clone().expect("sluice cluster --tls names its CA in cluster.json");
    let out = dir.path().join("out");
    let n = 30_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let (ok, text) = cluster.client_owned(&submit_counts_args(counts, 3, &out, n, 1_000_000, None, &[]));
    assert!(ok, "{text}");
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert_committed_counts(&out, n, "the run over TLS");
    let log = cluster.log();
    assert!(log.contains("coordinator listening") && log.contains("tls=true"), "{log}");
    for process in 0..3 {
        let line = format!("[job-1 'counts' process {process}]");
        assert!(
            log.lines().any(|l| l.contains(&line)
                && l.contains("connected to the job's other processes")
                && l.contains("tls=true")),
            "process {process}'s data connections use TLS:\n{log}"
        );
    }

    // The status endpoint answers over TLS, with the secret.
    let secret = std::fs::read_to_string(dir.path().join("c/secret")).unwrap();
    let pem = sluice_net::tls::TlsPem {
        cert: std::fs::read(dir.path().join("c/tls/cert.pem")).unwrap(),
        key: std::fs::read(dir.path().join("c/tls/key.pem")).unwrap(),
        ca: std::fs::read(&ca).unwrap(),
    };
    let tls = sluice_net::Tls::new(&pem).unwrap();
    let socket = std::net::TcpStream::connect(&cluster.http).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let session = tls.client(socket.peer_addr().unwrap().ip()).unwrap();
    let mut stream = sluice_net::tls::TlsStream::handshake(session, socket).unwrap();
    use std::io::{Read, Write};
    write!(stream, "GET /jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n", secret.trim()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"state\":\"finished\""), "{answer}");

    // A client that does not use TLS, or trusts another CA, gets nowhere.
    let output = Command::new(sluice_binary())
        .args(["list", "--coordinator", &cluster.coordinator, "--secret-file"])
        .arg(dir.path().join("c/secret"))
        .env_remove("SLUICE_TLS_CA")
        .output()
        .unwrap();
    assert!(!output.status.success(), "a plain client is refused");
    let other = dir.path().join("other-ca");
    sluice_net::tls::generate(&["127.0.0.1"]).unwrap().write_to(&other).unwrap();
    let output = Command::new(sluice_binary())
        .args(["list", "--coordinator", &cluster.coordinator, "--tls-ca"])
        .arg(other.join("ca.pem"))
        .arg("--secret-file")
        .arg(dir.path().join("c/secret"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains("cannot reach"), "{text}");
}

#[test]
fn a_job_whose_graph_differs_from_the_planned_one_fails_without_restarts_and_bad_arguments_fail_the_submission() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 2);
    let out = dir.path().join("out");
    let counts = env!("CARGO_BIN_EXE_counts");
    let args = ["submit", counts, "-p", "2", "--", "--out", out.to_str().unwrap(), "--n", "1000"];
    // The submitting machine's environment changes the graph (a uid); the workers' does not.
    let (ok, text) = cluster.client_with_env(&args, None, &[("COUNTS_PASS_UID", "pass-here")]);
    assert!(ok, "the submission itself is fine: {text}");
    let line = cluster.wait_for("job-1", "failed", Duration::from_secs(60));
    assert!(line.contains("attempt 1 "), "failed in its first attempt, not restarted: {line}");
    assert!(line.contains("not the one planned at submission"), "says why: {line}");
    let log = cluster.log();
    assert!(log.contains("not restarted"), "the refusal is logged:\n{log}");
    assert!(!out.exists() || sluice::connectors::committed_lines(&out).unwrap().is_empty(), "nothing committed");

    // An invalid job configuration fails the submission, with the job's own message.
    let (ok, text) = cluster.client(&["submit", counts, "-p", "0", "--", "--out", out.to_str().unwrap()], None);
    assert!(!ok, "{text}");
    let (ok, text) = cluster.client(&["submit", counts, "--", "--out", out.to_str().unwrap(), "--no-such-flag"], None);
    assert!(!ok && text.contains("refused these arguments") && text.contains("--no-such-flag"), "{text}");
    // A binary that is not a Sluice job.
    let (ok, text) = cluster.client(&["submit", "/bin/true"], None);
    assert!(!ok && text.contains("without describing its graph"), "{text}");
    // The same job with the workers' environment runs.
    let (ok, text) = cluster.client(&args, None);
    assert!(ok, "{text}");
    cluster.wait_for("job-2", "finished", Duration::from_secs(120));
    sluice_testjobs::assert_committed_counts(&out, 1000, "the second submission");
}

#[test]
fn a_cluster_job_takes_a_savepoint_stops_with_one_and_resumes_from_it_at_another_parallelism_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 400_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let job_args = |rate: &str| {
        let mut args = vec!["--out", out.to_str().unwrap(), "--n", "400000", "--rate", rate];
        args.extend(["--checkpoint-dir", checkpoints.to_str().unwrap(), "--checkpoint-interval-ms", "200"]);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut submit: Vec<String> = ["submit", counts, "-p", "2", "--"].map(String::from).to_vec();
    submit.extend(job_args("50000"));
    let (ok, text) = cluster.client(&submit.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(ok, "{text}");
    cluster.wait_for("job-1", "running", Duration::from_secs(60));
    // A savepoint while it runs; it goes on running.
    let (ok, first) = cluster.client(&["savepoint", "job-1"], None);
    assert!(ok, "{first}\n{}", cluster.log());
    let first = first.trim();
    assert!(first.contains("savepoint-") && Path::new(first).join("_manifest.json").exists(), "{first}");
    cluster.wait_for("job-1", "running", Duration::from_secs(5));
    // Stopped with a savepoint: every process drains, the final checkpoint is kept.
    let (ok, text) = cluster.client(&["cancel", "job-1", "--savepoint"], None);
    assert!(ok, "{text}\n{}", cluster.log());
    let stopped = text.trim().rsplit(' ').next().unwrap().to_string();
    assert!(text.contains("stopped with savepoint") && stopped != first, "{text}");
    cluster.wait_for("job-1", "cancelled", Duration::from_secs(60));
    let committed = sluice::connectors::committed_lines(&out).unwrap().len();
    assert!(committed < sluice_testjobs::counts_reference(n).len(), "the job stopped before its end");
    // Resumed from it at parallelism 3 over 3 workers, to the end: exactly the reference.
    let mut submit: Vec<String> = ["submit", counts, "-p", "3", "--"].map(String::from).to_vec();
    submit.extend(job_args("1000000"));
    submit.extend(["--from".to_string(), stopped]);
    let (ok, text) = cluster.client(&submit.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(ok, "{text}");
    cluster.wait_for("job-2", "finished", Duration::from_secs(120));
    assert_committed_counts(&out, n, "stopped with a savepoint, resumed at parallelism 3");
}

#[test]
fn a_cluster_killed_with_sigkill_and_started_again_resumes_a_resubmitted_job_exactly() {
    let (seed, mut random) = sluice_testjobs::harness::seeded(5);
    let dir = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 300_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let args = submit_counts_args(counts, 3, &out, n, 100_000, Some(&checkpoints), &[]);
    {
        let first = dir.path().join("first");
        std::fs::create_dir_all(&first).unwrap();
        let cluster = start_cluster(&first, 3);
        let (ok, text) = cluster.client_owned(&args);
        assert!(ok, "{text}");
        cluster.wait_for("job-1", "running", Duration::from_secs(60));
        // Pacing, not a condition: the kill lands at a seeded moment of the 3 s run.
        std::thread::sleep(Duration::from_millis(800 + random(1200)));
        let (_, listing) = cluster.client(&["list"], None);
        assert!(listing.contains("job-1    running"), "seed {seed}: the job ended before the kill:\n{listing}");
        // Dropping the cluster kills its whole process group with SIGKILL: coordinator,
        // workers and job processes.
    }
    let second = dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let cluster = start_cluster(&second, 3);
    let (ok, text) = cluster.client_owned(&args);
    assert!(ok, "{text}");
    cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    let log = std::fs::read_to_string(second.join("cluster.log")).unwrap();
    assert!(
        log.contains("done: restored from checkpoint"),
        "seed {seed}: the resubmitted job restored nothing:\n{log}"
    );
    assert_committed_counts(&out, n, &format!("seed {seed}"));
}

#[test]
fn the_kafka_copy_job_on_a_three_worker_cluster_commits_exactly_the_reference_and_frees_its_producers() {
    use sluice_kafka::testing::{transactional_ids, KafkaBroker};
    let (seed, mut random) = sluice_testjobs::harness::seeded(17);
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let input = sluice_testjobs::kafka_copy::setup(&broker, 20_000, &mut random);
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    let checkpoints = dir.path().join("checkpoints");
    let copy = env!("CARGO_BIN_EXE_kafka-copy");
    let submit = sluice_testjobs::kafka_copy::submit_args(copy, 3, broker.bootstrap(), &checkpoints);
    let (ok, text) = cluster.client(&submit.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(ok, "seed {seed}: {text}");
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(180));
    for worker in ["0@worker-", "1@worker-", "2@worker-"] {
        assert!(line.contains(worker), "{line}");
    }
    sluice_testjobs::kafka_copy::assert_exact_output(&broker, &input, seed);
    // Process 0 commits every subtask's transactions; the other processes free theirs on
    // its notice, so each subtask reuses a few transactional ids instead of one more per
    // checkpoint.
    let log = cluster.log();
    let checkpoints_taken: usize = log
        .lines()
        .find_map(|l| l.split("process 0] done: restored from nothing, ").nth(1))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary of process 0:\n{log}"));
    let ids = transactional_ids(broker.bootstrap(), "copy-").unwrap();
    // One new id per subtask and checkpoint (the fault this checks) would take 3 x 5 = 15
    // ids in 5 checkpoints, more than the 12 allowed: 5 suffice however slow the machine.
    assert!(checkpoints_taken >= 5, "seed {seed}: only {checkpoints_taken} checkpoints; the check needs more");
    assert!(
        ids.len() <= 3 * 4,
        "seed {seed}: {} transactional ids over {checkpoints_taken} checkpoints: {ids:?}",
        ids.len()
    );
}

#[test]
fn a_coordinator_killed_with_sigkill_and_started_again_resumes_its_jobs_from_their_table_exactly() {
    use sluice_testjobs::harness::KillOnDrop;
    let dir = tempfile::tempdir().unwrap();
    let sluice = sluice_binary();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-test-secret").unwrap();
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let store = dir.path().join("store");
    let coordinator = || {
        let child = Command::new(&sluice)
            .args(["coordinator", "--listen", &address, "--store", store.to_str().unwrap(), "--secret-file"])
            .arg(&secret)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("coordinator-{}.log", rand_suffix()))).unwrap())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let client = |args: &[&str]| {
        let output = Command::new(&sluice)
            .arg(args[0])
            .args(["--coordinator", &address, "--secret-file", secret.to_str().unwrap()])
            .args(&args[1..])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let mut first = coordinator();
    let _workers: Vec<KillOnDrop> = (0..2)
        .map(|i| {
            let child = Command::new(&sluice)
                .args(["worker", "--coordinator", &address, "--slots", "2", "--secret-file", secret.to_str().unwrap()])
                .arg("--cache")
                .arg(dir.path().join(format!("worker-{i}")))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            KillOnDrop(child)
        })
        .collect();
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 600_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let submit = submit_counts_args(counts, 2, &out, n, 100_000, Some(&checkpoints), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // The workers may not have registered yet.
        let (ok, text) = client(&submit.iter().map(String::as_str).collect::<Vec<_>>());
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once a checkpoint is complete, the coordinator is killed and started again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(checkpoints.join("counts"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("_manifest.json").exists())
    {
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let _second = coordinator();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let listing = loop {
        let (_, listing) = client(&["list"]);
        if listing.starts_with("job-1    finished") {
            break listing;
        }
        assert!(!listing.starts_with("job-1    failed"), "{listing}");
        assert!(std::time::Instant::now() < deadline, "job-1 did not finish after the restart:\n{listing}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listing.contains("the coordinator restarted: attempt 2 resumes"), "{listing}");
    assert!(listing.contains("attempt 1: 2 processes"), "the history from before the restart is kept:\n{listing}");
    assert_committed_counts(&out, n, "a coordinator killed and started again");
    // The next job gets the next id, not one given before the restart.
    let (ok, text) = client(&["submit", counts, "--", "--out", dir.path().join("more").to_str().unwrap(), "--n", "10"]);
    assert!(ok && text.contains("job-2 submitted"), "{text}");
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}
