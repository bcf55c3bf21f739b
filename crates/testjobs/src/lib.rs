//! Jobs that Sluice's process-level tests run as child processes, and the reference each
//! one must produce. A test kills a job with SIGKILL at random moments, starts the same
//! command again, and compares the committed output with [`counts_reference`].

use std::collections::HashMap;

/// Keys of the counting job.
pub const KEYS: u64 = 40;
/// Window length of the counting job, in milliseconds of event time.
pub const WINDOW_MS: i64 = 100;

/// The key of event `i` (W2's multiplicative hash).
pub fn key_of(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % KEYS
}

/// The output the counting job must commit for events `0..n`: "key,window start,count".
pub fn counts_reference(n: u64) -> Vec<String> {
    let mut counts: HashMap<(u64, i64), u64> = HashMap::new();
    for i in 0..n {
        let t = i as i64;
        *counts.entry((key_of(i), t - t.rem_euclid(WINDOW_MS))).or_default() += 1;
    }
    counts.into_iter().map(|((k, w), n)| format!("{k},{w},{n}")).collect()
}

/// Asserts that the files committed in `dir` are exactly the counting job's output for
/// events `0..n`: nothing lost, nothing duplicated. `context` (the seed) leads each failure.
pub fn assert_committed_counts(dir: &std::path::Path, n: u64, context: &str) {
    let got = sluice::connectors::committed_lines(dir).expect("the output folder is readable");
    let want = counts_reference(n);
    assert_eq!(got.len(), want.len(), "{context}: {} lines committed, {} expected", got.len(), want.len());
    assert_eq!(harness::multiset(got), harness::multiset(want), "{context}");
}

/// What the Kafka copy job (`kafka-copy`) writes for an input value.
pub fn kafka_copy_transform(value: &str) -> String {
    format!("{}|{}", value.to_uppercase(), value.len())
}

/// The Kafka copy job's tests: the input they write and the check of its output.
pub mod kafka_copy {
    /// `sluice submit` of the Kafka copy job (the binary `copy`) at `parallelism`: topic
    /// `in` to `out` on `bootstrap`, paced, checkpointing every 100 ms into `checkpoints`.
    pub fn submit_args(copy: &str, parallelism: u32, bootstrap: &str, checkpoints: &std::path::Path) -> Vec<String> {
        let checkpoints = checkpoints.to_str().expect("a UTF-8 path");
        [
            "submit",
            copy,
            "-p",
            &parallelism.to_string(),
            "--",
            "--bootstrap",
            bootstrap,
            "--input",
            "in",
            "--output",
            "out",
            "--prefix",
            "copy",
            "--pace-every",
            "2",
            "--checkpoint-dir",
            checkpoints,
            "--checkpoint-interval-ms",
            "100",
        ]
        .map(String::from)
        .to_vec()
    }

    use crate::harness::multiset;
    use crate::kafka_copy_transform;
    use sluice_kafka::testing::{
        blocked_partitions, create_topic, open_transactions, produce, read_committed, KafkaBroker, TestRecord,
    };
    use std::time::Duration;

    /// A broker with topic `in` (4 partitions) holding `n` seeded keyed records and an empty
    /// topic `out` (3 partitions); returns the records written.
    pub fn setup(broker: &KafkaBroker, n: u64, random: &mut impl FnMut(u64) -> u64) -> Vec<(Vec<u8>, String)> {
        let b = broker.bootstrap();
        create_topic(b, "in", 4).unwrap();
        create_topic(b, "out", 3).unwrap();
        let input: Vec<(Vec<u8>, String)> =
            (0..n).map(|i| (format!("k{}", random(50)).into_bytes(), format!("v{i}-{}", random(1000)))).collect();
        let records = input.iter().map(|(k, v)| TestRecord {
            key: Some(k.clone()),
            value: Some(v.as_bytes().to_vec()),
            ..Default::default()
        });
        produce(b, "in", records).unwrap();
        input
    }

    /// The output equals the reference record for record and nothing holds readers back.
    pub fn assert_exact_output(broker: &KafkaBroker, input: &[(Vec<u8>, String)], seed: u64) {
        let b = broker.bootstrap();
        let got: Vec<(Vec<u8>, String)> = read_committed(b, "out", Duration::from_secs(60))
            .unwrap()
            .into_iter()
            .map(|r| (r.key.unwrap_or_default(), String::from_utf8(r.value.unwrap_or_default()).unwrap()))
            .collect();
        let want: Vec<(Vec<u8>, String)> = input.iter().map(|(k, v)| (k.clone(), kafka_copy_transform(v))).collect();
        assert_eq!(got.len(), want.len(), "seed {seed}: {} records committed, {} expected", got.len(), want.len());
        assert_eq!(multiset(got), multiset(want), "seed {seed}");
        assert_eq!(
            blocked_partitions(b, "out").unwrap(),
            Vec::<i32>::new(),
            "seed {seed}: a transaction holds readers back"
        );
        assert_eq!(open_transactions(b, "copy-").unwrap(), Vec::<String>::new(), "seed {seed}");
    }
}

/// `sluice cluster` for the process-level tests: started in a process group of its own,
/// killed (SIGKILL, the whole group) when dropped; its clients; its log.
pub mod cluster {
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// The `sluice` binary in the folder of a test's job binary.
    pub fn sluice_beside(job_binary: &Path) -> PathBuf {
        let binary = job_binary.parent().expect("a binary has a folder").join("sluice");
        assert!(
            binary.exists(),
            "{} is missing: run `cargo build -p sluice-cli` (or test the workspace)",
            binary.display()
        );
        binary
    }

    /// A local cluster, its process group killed on drop.
    pub struct Cluster {
        child: Child,
        dir: PathBuf,
        /// The coordinator's gRPC address.
        pub coordinator: String,
        /// The coordinator's HTTP status address.
        pub http: String,
        /// With `--tls`: the CA certificate the clients check the cluster against.
        pub tls_ca: Option<String>,
        sluice: PathBuf,
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = self.child.wait();
        }
    }

    /// `sluice submit` of the counting job (the binary `counts`) at `parallelism`: `n`
    /// events at `rate` per second into `out`, checkpointing every 100 ms into
    /// `checkpoints` if given, then `extra` job flags.
    pub fn submit_counts_args(
        counts: &str,
        parallelism: u32,
        out: &Path,
        n: u64,
        rate: u64,
        checkpoints: Option<&Path>,
        extra: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> =
            vec!["submit".into(), counts.into(), "-p".into(), parallelism.to_string(), "--".into()];
        args.extend(["--out".into(), out.display().to_string(), "--n".into(), n.to_string()]);
        args.extend(["--rate".into(), rate.to_string()]);
        if let Some(checkpoints) = checkpoints {
            args.extend(["--checkpoint-dir".into(), checkpoints.display().to_string()]);
            args.extend(["--checkpoint-interval-ms".into(), "100".into()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    impl Cluster {
        /// [`Cluster::client`] with owned arguments.
        pub fn client_owned(&self, args: &[String]) -> (bool, String) {
            self.client(&args.iter().map(String::as_str).collect::<Vec<_>>(), None)
        }

        /// Starts `sluice cluster --workers N` (the `sluice` binary at `sluice`, with `extra`
        /// flags) in `dir`, and waits until every worker has registered.
        pub fn start(sluice: &Path, dir: &Path, workers: usize, extra: &[&str]) -> Cluster {
            Self::start_with_env(sluice, dir, workers, extra, &[])
        }

        /// [`Cluster::start`] with extra environment variables for every role (and so for
        /// the job processes), such as `RUST_LOG`.
        pub fn start_with_env(
            sluice: &Path,
            dir: &Path,
            workers: usize,
            extra: &[&str],
            env: &[(&str, &str)],
        ) -> Cluster {
            let log = std::fs::File::create(dir.join("cluster.log")).unwrap();
            let child = Command::new(sluice)
                .args(["cluster", "--workers", &workers.to_string(), "--dir", dir.join("c").to_str().unwrap()])
                .args(extra)
                .env_remove("SLUICE_SECRET")
                .env_remove("SLUICE_SECRET_FILE")
                .env_remove("SLUICE_TLS_CERT")
                .env_remove("SLUICE_TLS_KEY")
                .env_remove("SLUICE_TLS_CA")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap();
            let mut cluster = Cluster {
                child,
                dir: dir.to_path_buf(),
                coordinator: String::new(),
                http: String::new(),
                tls_ca: None,
                sluice: sluice.to_path_buf(),
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let log = std::fs::read_to_string(dir.join("cluster.log")).unwrap_or_default();
                let info = std::fs::read_to_string(dir.join("c/cluster.json")).unwrap_or_default();
                if log.matches("registered with the coordinator").count() == workers && !info.is_empty() {
                    let value: serde_json::Value = serde_json::from_str(&info).unwrap();
                    cluster.coordinator = value["coordinator"].as_str().unwrap().to_string();
                    cluster.http = value["http"].as_str().unwrap().to_string();
                    cluster.tls_ca = value["tls_ca"].as_str().map(str::to_string);
                    return cluster;
                }
                assert!(cluster.child.try_wait().unwrap().is_none(), "the cluster exited:\n{log}");
                assert!(Instant::now() < deadline, "the cluster did not come up within 60 s:\n{log}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Runs a client command; returns (success, stdout + stderr).
        pub fn client(&self, args: &[&str], secret_file: Option<&Path>) -> (bool, String) {
            self.client_with_env(args, secret_file, &[])
        }

        /// [`Cluster::client`] with extra environment variables for the command (and so for
        /// the job binary that `sluice submit` runs to plan the job).
        pub fn client_with_env(
            &self,
            args: &[&str],
            secret_file: Option<&Path>,
            env: &[(&str, &str)],
        ) -> (bool, String) {
            let default = self.dir.join("c/secret");
            // The subcommand, then where the coordinator is, then the rest (which may end in
            // `-- job args`).
            let output = Command::new(&self.sluice)
                .arg(args[0])
                .args([
                    "--coordinator",
                    &self.coordinator,
                    "--secret-file",
                    secret_file.unwrap_or(&default).to_str().unwrap(),
                ])
                .args(self.tls_ca.iter().flat_map(|ca| ["--tls-ca", ca.as_str()]))
                .args(&args[1..])
                .env_remove("SLUICE_SECRET")
                .env_remove("SLUICE_TLS_CA")
                .envs(env.iter().copied())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
            (output.status.success(), text)
        }

        /// The pid of worker `id` (the coordinator's id, as `sluice list` shows it), from its
        /// registration line in the log.
        pub fn worker_pid(&self, id: u64) -> u32 {
            let log = self.log();
            let wanted = format!("registered with the coordinator worker={id} ");
            log.lines()
                .filter(|l| l.contains(&wanted))
                .find_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no registration of worker {id} in the log:\n{log}"))
        }

        /// The pid of the coordinator that started listening last, from the log.
        pub fn coordinator_pid(&self) -> u32 {
            let log = self.log();
            log.lines()
                .rev()
                .filter(|l| l.contains("coordinator listening"))
                .find_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no coordinator in the log:\n{log}"))
        }

        /// The line of `sluice list` for `job`, with its events below it.
        pub fn job(&self, job: &str) -> String {
            let (_, listing) = self.client(&["list"], None);
            let mut lines = listing.lines().skip_while(|l| !l.starts_with(&format!("{job} ")));
            let mut out: Vec<&str> = lines.next().into_iter().collect();
            out.extend(lines.take_while(|l| l.starts_with("    ")));
            out.join("\n")
        }

        /// The body of `GET path` on the coordinator's status endpoint (plain HTTP: a
        /// cluster started without TLS), with the cluster secret.
        pub fn http_get(&self, path: &str) -> String {
            use std::io::{Read, Write};
            let secret = std::fs::read_to_string(self.dir.join("c/secret")).unwrap();
            let mut stream = std::net::TcpStream::connect(&self.http).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n", secret.trim())
                .unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 200"), "GET {path}: {answer}");
            answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
        }

        /// What the cluster's processes wrote to stderr so far.
        pub fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("cluster.log")).unwrap_or_default()
        }

        /// Waits until `sluice list` shows `job` in `state`; returns its line.
        pub fn wait_for(&self, job: &str, state: &str, within: Duration) -> String {
            let deadline = Instant::now() + within;
            loop {
                let (_, listing) = self.client(&["list"], None);
                if let Some(line) = listing.lines().find(|l| l.starts_with(&format!("{job} "))) {
                    if line.split_whitespace().nth(1) == Some(state) {
                        return line.to_string();
                    }
                    assert!(line.split_whitespace().nth(1) != Some("failed"), "{line}\n{}", self.log());
                }
                let log = std::fs::read_to_string(self.dir.join("cluster.log")).unwrap_or_default();
                assert!(Instant::now() < deadline, "{job} not {state} within {within:?}:\n{listing}\n{log}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What the process-level tests share: a child process that is killed when dropped,
/// waiting for its exit with a deadline, a seeded random source and multisets.
pub mod harness {
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::process::{Child, ExitStatus};
    use std::time::{Duration, Instant};

    /// Asks the job `job` checkpointing into `checkpoints` for a savepoint, again every 2 s
    /// until it answers (it may not be listening yet), for at most `within`; returns the
    /// savepoint's path, or panics with the job's answer if the savepoint failed, or with
    /// its stderr if `process` (the job's, or its process 0) exits meanwhile.
    pub fn take_savepoint(
        process: &mut KillOnDrop,
        checkpoints: &std::path::Path,
        job: &str,
        within: Duration,
    ) -> String {
        let path = checkpoints.to_str().expect("a UTF-8 path");
        let store = sluice_checkpoint::CheckpointStore::open(path, job).expect("the checkpoint folder opens");
        let deadline = Instant::now() + within;
        let answer = loop {
            let answer = store.request_savepoint().expect("a savepoint request can be written");
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(2) && !answer.exists() {
                if process.0.try_wait().expect("the child can be waited for").is_some() {
                    let (status, stderr) = process.wait(Duration::from_secs(5));
                    panic!("the job ended ({status}) before it took the savepoint:\n{stderr}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if answer.exists() {
                break std::fs::read_to_string(&answer).expect("the answer is readable");
            }
            assert!(Instant::now() < deadline, "no savepoint within {within:?}");
        };
        match answer.strip_prefix("ok ") {
            Some(path) => path.trim().to_string(),
            None => panic!("the savepoint failed: {answer}"),
        }
    }

    /// Kills the child when dropped, so a failing test leaves no process behind.
    pub struct KillOnDrop(pub Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl KillOnDrop {
        /// Waits for the exit; panics if it does not come within `within` (a deadline
        /// against hangs). Returns the status and, if stderr was piped, what it printed.
        pub fn wait(&mut self, within: Duration) -> (ExitStatus, String) {
            // Read stderr while waiting: a child that writes more than a pipe holds would
            // otherwise block on it until the deadline.
            let reader = self.0.stderr.take().map(|mut pipe| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
                    text
                })
            });
            let deadline = Instant::now() + within;
            let status = loop {
                if let Some(status) = self.0.try_wait().expect("the child can be waited for") {
                    break status;
                }
                assert!(Instant::now() < deadline, "the job did not exit within {within:?}");
                std::thread::sleep(Duration::from_millis(20));
            };
            let stderr = reader.map(|r| r.join().unwrap_or_default()).unwrap_or_default();
            (status, stderr)
        }
    }

    /// The test seed (`SLUICE_TEST_SEED`, else `default`) and a xorshift generator of
    /// numbers below a bound, seeded with it.
    pub fn seeded(default: u64) -> (u64, impl FnMut(u64) -> u64) {
        let seed: u64 = std::env::var("SLUICE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let random = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        (seed, random)
    }

    /// `n` loopback addresses with ports free now (chosen by the kernel, then released
    /// for the processes that will listen on them).
    pub fn free_addresses(n: usize) -> Vec<std::net::SocketAddr> {
        let listeners: Vec<_> =
            (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port")).collect();
        listeners.iter().map(|l| l.local_addr().expect("a bound address")).collect()
    }

    /// Puts `command` in the environment of process `process` of a job spread over the
    /// processes at `peers` (see `sluice_runtime::processes`).
    pub fn spread<'a>(
        command: &'a mut std::process::Command,
        process: usize,
        peers: &[std::net::SocketAddr],
        secret: &str,
    ) -> &'a mut std::process::Command {
        let peers: Vec<String> = peers.iter().map(|a| a.to_string()).collect();
        command
            .env("SLUICE_PROCESS", process.to_string())
            .env("SLUICE_PEERS", peers.join(","))
            .env("SLUICE_SECRET", secret)
    }

    /// Counts of each distinct item.
    pub fn multiset<T: Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
        let mut m = HashMap::new();
        for i in items {
            *m.entry(i).or_insert(0) += 1;
        }
        m
    }
}

/// A real etcd cluster on loopback for the HA tests: `etcd` from Debian's `etcd-server`
/// (scripts/test.sh installs it), each member a process killed when the cluster is dropped,
/// on ports chosen free at start.
pub mod etcd {
    use crate::harness::{free_addresses, KillOnDrop};
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    /// The members of a running etcd cluster.
    pub struct EtcdCluster {
        members: Vec<Option<KillOnDrop>>,
        clients: Vec<String>,
        peers: Vec<String>,
        dir: PathBuf,
    }

    impl EtcdCluster {
        /// Starts `n` members in `dir` and waits until each serves clients.
        pub fn start(dir: &Path, n: usize) -> EtcdCluster {
            let addresses = free_addresses(2 * n);
            let (clients, peers) = addresses.split_at(n);
            let mut cluster = EtcdCluster {
                members: (0..n).map(|_| None).collect(),
                clients: clients.iter().map(|c| c.to_string()).collect(),
                peers: peers.iter().map(|p| p.to_string()).collect(),
                dir: dir.to_path_buf(),
            };
            for i in 0..n {
                cluster.spawn(i);
            }
            for i in 0..n {
                cluster.wait_ready(i, 1);
            }
            cluster
        }

        /// Starts member `i` (again: with its data folder, it rejoins as itself).
        fn spawn(&mut self, i: usize) {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("m{i}.log")))
                .expect("an etcd log file");
            let child = sluice_cluster::ha::etcd_member(i, &self.dir, &self.clients, &self.peers)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (Debian's etcd-server; scripts/test.sh installs it)");
            self.members[i] = Some(KillOnDrop(child));
        }

        /// Waits until member `i`'s log says `times` times that it serves clients.
        fn wait_ready(&self, i: usize, times: usize) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.log(i).matches("ready to serve client requests").count() < times {
                assert!(Instant::now() < deadline, "etcd member {i} did not start within 60 s:\n{}", self.log(i));
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Starts member `i` again after [`EtcdCluster::kill`]; returns once it serves
        /// clients (which takes a quorum).
        pub fn restart(&mut self, i: usize) {
            let before = self.log(i).matches("ready to serve client requests").count();
            self.spawn(i);
            self.wait_ready(i, before + 1);
        }

        /// The pid of member `i`.
        pub fn pid(&self, i: usize) -> u32 {
            self.members[i].as_ref().expect("member running").0.id()
        }

        /// The client address of member `i` alone, as `--ha` takes it.
        pub fn member_url(&self, i: usize) -> String {
            format!("etcd://{}", self.clients[i])
        }

        /// `etcd://` and every member's client address, as `--ha` takes it.
        pub fn url(&self) -> String {
            format!("etcd://{}", self.clients.join(","))
        }

        /// What member `i` wrote to stderr.
        pub fn log(&self, i: usize) -> String {
            std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default()
        }

        /// Kills member `i` with SIGKILL.
        pub fn kill(&mut self, i: usize) {
            self.members[i] = None;
        }

        /// The member that leads raft now, asked of each running member in turn (etcd's
        /// JSON gateway, `POST /v3/maintenance/status`): the one whose own id is the leader
        /// id it reports. Waits up to 10 s for an answer.
        pub fn raft_leader(&self) -> usize {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                for (i, client) in self.clients.iter().enumerate() {
                    if self.members[i].is_none() {
                        continue;
                    }
                    let Some(status) = member_status(client) else { continue };
                    let own = status["header"]["member_id"].as_str().map(str::to_string);
                    if own.is_some() && own.as_deref() == status["leader"].as_str() {
                        return i;
                    }
                }
                assert!(Instant::now() < deadline, "no etcd member says it leads raft");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// One change in etcd's history: a put (with the key's create revision and the value)
    /// or a delete.
    #[derive(Debug, Clone)]
    pub struct Change {
        /// The revision of the change.
        pub revision: i64,
        /// The key changed.
        pub key: String,
        /// `None` for a delete.
        pub value: Option<String>,
        /// The revision at which the key was created (for a leader key: its term).
        pub create_revision: i64,
    }

    impl EtcdCluster {
        /// [`history`] of this cluster, asked of its running members.
        pub fn history(&self, prefix: &str) -> Vec<Change> {
            let endpoints: Vec<String> = (0..self.clients.len())
                .filter(|i| self.members[*i].is_some())
                .map(|i| self.clients[i].clone())
                .collect();
            history(&endpoints, prefix)
        }
    }

    /// Every change under `prefix` since the first revision, oldest first, from the etcd
    /// members at `endpoints` (`host:port`). etcd keeps its whole history unless told to
    /// compact, and the etcd clusters of the tests are not.
    pub fn history(endpoints: &[String], prefix: &str) -> Vec<Change> {
        let runtime = sluice_cluster::runtime().expect("a runtime");
        runtime.block_on(async {
            let mut client = etcd_client::Client::connect(endpoints, None).await.expect("connecting to etcd");
            let options = etcd_client::WatchOptions::new().with_prefix().with_start_revision(1);
            let mut stream = client.watch(prefix, Some(options)).await.expect("watching etcd");
            let mut changes = Vec::new();
            // A watch from revision 1 replays the history at once, then waits for news:
            // the history has been read when a second passes without a message.
            while let Ok(reply) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                let reply = reply.expect("the watch").expect("the watch went on");
                for event in reply.events() {
                    let Some(kv) = event.kv() else { continue };
                    changes.push(Change {
                        revision: kv.mod_revision(),
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: (event.event_type() == etcd_client::EventType::Put)
                            .then(|| String::from_utf8_lossy(kv.value()).into_owned()),
                        create_revision: kv.create_revision(),
                    });
                }
            }
            changes
        })
    }

    /// Checks that every write under `prefix` (the keys of one HA cluster) that a leader
    /// made, the job table and the checkpoint records, carries the term of the leader key
    /// in effect at its revision: no deposed leader's write landed. Returns the terms that
    /// wrote, in order.
    pub fn assert_writes_fenced(changes: &[Change], prefix: &str) -> Vec<u64> {
        let leader_key = format!("{prefix}leader");
        let mut leader: Option<i64> = None;
        let mut writers: Vec<u64> = Vec::new();
        for change in changes {
            if change.key == leader_key {
                leader = change.value.as_ref().map(|_| change.create_revision);
                continue;
            }
            let Some(value) = &change.value else { continue };
            let term = if change.key == format!("{prefix}jobs") {
                let table: serde_json::Value = serde_json::from_str(value).expect("the job table is JSON");
                table["term"].as_u64()
            } else {
                // A checkpoint record: `<id> (term <term>)`.
                value.split("(term ").nth(1).and_then(|t| t.trim_end_matches(')').parse().ok())
            };
            let term = term.unwrap_or_else(|| panic!("no writer's term in {}: {value}", change.key));
            assert_eq!(
                Some(term as i64),
                leader,
                "revision {}: {} was written by the leader of term {term}, but the leader key then was {leader:?}",
                change.revision,
                change.key
            );
            if writers.last() != Some(&term) {
                assert!(
                    writers.last().is_none_or(|last| *last < term),
                    "revision {}: the leader of term {term} wrote after a later one ({writers:?})",
                    change.revision
                );
                writers.push(term);
            }
        }
        writers
    }

    /// One member's `maintenance/status` answer, or `None` if it gives none within 1 s.
    fn member_status(client: &str) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(client).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let request = format!(
            "POST /v3/maintenance/status HTTP/1.1\r\nHost: {client}\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let body = answer.split_once("\r\n\r\n")?.1;
        // The gateway may answer in chunks: the JSON object is the part between braces.
        let json = &body[body.find('{')?..=body.rfind('}')?];
        serde_json::from_str(json).ok()
    }
}
