//! Checkpoints and job binaries in S3-compatible storage (built with `--features s3`):
//! a real S3 server, `s3s-fs` (an S3 API over a folder, installed by the test command),
//! started on a free port for each test. The counting job checkpoints to
//! `s3://sluice/checkpoints`, is killed with SIGKILL at seeded moments and started again,
//! and commits exactly the reference; a cluster whose artifact store and checkpoints are on
//! S3 runs the job across a worker killed with SIGKILL, exactly. Objects are looked for in
//! the server's folder, so a run that wrote elsewhere fails.
#![cfg(feature = "s3")]

use sluice_testjobs::assert_committed_counts;
use sluice_testjobs::cluster::{sluice_beside, Cluster};
use sluice_testjobs::harness::{seeded, KillOnDrop};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "sluice";

/// An `s3s-fs` server over a folder, killed when dropped.
struct S3Server {
    _process: KillOnDrop,
    root: PathBuf,
    endpoint: String,
}

impl S3Server {
    fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let binary = which("s3s-fs").unwrap_or_else(|| {
            panic!("s3s-fs is not installed: `cargo install s3s-fs --features binary --locked` (scripts/test.sh does)")
        });
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "sluice-test"])
            .args(["--secret-key", "sluice-test-secret"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        let server = S3Server {
            _process: KillOnDrop(child),
            root: root.to_path_buf(),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port} within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The environment that points object_store's S3 client at this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "sluice-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "sluice-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The objects under `prefix` of the bucket, as the server stored them.
    fn objects(&self, prefix: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut folders = vec![self.root.join(BUCKET).join(prefix)];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    folders.push(entry.path());
                } else {
                    found.push(entry.path().strip_prefix(self.root.join(BUCKET)).unwrap().display().to_string());
                }
            }
        }
        found
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let mut places: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = std::env::var_os("HOME") {
        places.push(Path::new(&home).join(".cargo/bin"));
    }
    places.into_iter().map(|p| p.join(name)).find(|p| p.is_file())
}

#[test]
fn a_job_checkpointing_to_s3_killed_with_sigkill_and_started_again_commits_exactly_the_reference() {
    let (seed, mut random) = seeded(41);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let out = dir.path().join("out");
    let n = 300_000;
    let start = || {
        let child = Command::new(env!("CARGO_BIN_EXE_counts"))
            .args(["--out", out.to_str().unwrap(), "--checkpoint-dir", &format!("s3://{BUCKET}/checkpoints")])
            .args(["--checkpoint-interval-ms", "100", "--n", &n.to_string(), "--rate", "100000"])
            .envs(s3.env())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the counts binary starts");
        KillOnDrop(child)
    };
    let mut kills = 0;
    for _ in 0..4 {
        let mut job = start();
        std::thread::sleep(Duration::from_millis(500 + random(900)));
        if job.0.try_wait().unwrap().is_some() {
            break;
        }
        job.0.kill().unwrap();
        job.0.wait().unwrap();
        kills += 1;
    }
    let mut job = start();
    let (status, stderr) = job.wait(Duration::from_secs(120));
    assert!(status.success(), "seed {seed}: the last run failed: {status}\n{stderr}");
    assert!(kills >= 2, "seed {seed}: only {kills} kills landed before the job finished");
    assert!(stderr.contains("restored from checkpoint"), "seed {seed}: the last run restored nothing:\n{stderr}");
    assert_committed_counts(&out, n, &format!("seed {seed}"));
    let objects = s3.objects("checkpoints");
    assert!(
        objects.iter().any(|o| o.starts_with("checkpoints/counts/chk-") && o.ends_with("_manifest.json")),
        "the checkpoints are in the bucket: {objects:?}"
    );
}

#[test]
fn a_cluster_with_its_artifacts_and_checkpoints_on_s3_survives_a_worker_killed_with_sigkill_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sluice = sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")));
    let store = format!("s3://{BUCKET}/artifacts");
    let cluster = Cluster::start_with_env(&sluice, dir.path(), 3, &["--slots", "1", "--store", &store], &env);
    let out = dir.path().join("out");
    let n = 400_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let checkpoints = format!("s3://{BUCKET}/cluster-checkpoints");
    let args = ["submit", counts, "-p", "2", "--", "--out", out.to_str().unwrap(), "--n", &n.to_string()];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--rate", "100000", "--checkpoint-dir", &checkpoints, "--checkpoint-interval-ms", "100"]);
    let (ok, text) = cluster.client_with_env(&args, None, &env);
    assert!(ok, "{text}");
    let artifacts = s3.objects("artifacts");
    assert!(
        artifacts.iter().any(|o| o.starts_with("artifacts/artifacts/")),
        "the binary is in the bucket: {artifacts:?}"
    );
    cluster.wait_for("job-1", "running", Duration::from_secs(60));
    // Once a checkpoint is complete, a worker of the job is killed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s3.objects("cluster-checkpoints").iter().any(|o| o.ends_with("_manifest.json")) {
        assert!(Instant::now() < deadline, "no checkpoint on S3 within 60 s:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = cluster.job("job-1");
    let worker: u64 = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("1@worker-"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("process 1's worker in: {line}"));
    let status = Command::new("kill").args(["-KILL", &cluster.worker_pid(worker).to_string()]).status().unwrap();
    assert!(status.success());
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert!(line.contains("attempt 2"), "restarted once: {line}");
    assert!(cluster.job("job-1").contains(&format!("worker {worker} lost")), "{}", cluster.job("job-1"));
    assert_committed_counts(&out, n, "the cluster on S3");
}
