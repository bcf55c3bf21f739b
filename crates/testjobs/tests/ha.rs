//! Coordinator high availability on a real three-member etcd on loopback: three
//! coordinators campaign, one leads; workers and the command line find the leader in
//! etcd. The leader killed with SIGKILL mid-job is replaced by a standby, the workers
//! rejoin it with their job processes still running, it adopts the running attempt (no
//! restart), and the committed output equals the reference exactly.

use sluice_testjobs::assert_committed_counts;
use sluice_testjobs::cluster::{sluice_beside, submit_counts_args};
use sluice_testjobs::etcd::{assert_writes_fenced, EtcdCluster};
use sluice_testjobs::harness::{free_addresses, seeded, KillOnDrop};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Each test runs three etcd members, three coordinators, two workers and a job: one at a
/// time, so that a loaded 2-core machine does not starve etcd's raft heartbeats (which
/// would test the machine, not the failover).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Coordinators and workers of one HA cluster, each killed when this is dropped.
struct HaCluster {
    sluice: PathBuf,
    dir: PathBuf,
    url: String,
    /// The cluster's name in etcd (`--ha-cluster`).
    name: String,
    secret: PathBuf,
    coordinators: Vec<Option<KillOnDrop>>,
    _workers: Vec<KillOnDrop>,
}

impl HaCluster {
    /// Starts a coordinator for each of `coordinators` (the etcd URL it is given) and
    /// `workers` workers of one slot (given every member).
    fn start(dir: &Path, etcd: &EtcdCluster, coordinators: &[String], workers: usize) -> HaCluster {
        let sluice = sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")));
        std::fs::write(dir.join("secret"), "an-ha-test-secret").unwrap();
        let mut cluster = HaCluster {
            sluice,
            dir: dir.to_path_buf(),
            url: etcd.url(),
            name: "test".into(),
            secret: dir.join("secret"),
            coordinators: Vec::new(),
            _workers: Vec::new(),
        };
        for url in coordinators {
            cluster.start_coordinator(url);
        }
        cluster.wait_for_leader(&[], Duration::from_secs(60));
        for i in 0..workers {
            let mut command = cluster.role("worker", &format!("worker-{i}.log"), &cluster.url);
            command.args(["--slots", "1", "--cache"]).arg(dir.join(format!("cache-{i}")));
            cluster._workers.push(KillOnDrop(command.spawn().unwrap()));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while (0..workers).any(|i| !cluster.log(&format!("worker-{i}.log")).contains("registered with the coordinator"))
        {
            assert!(Instant::now() < deadline, "the workers did not register:\n{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Starts one more coordinator (its log: `coordinator-<index>.log`) against `url`.
    fn start_coordinator(&mut self, url: &str) {
        let listen = free_addresses(1)[0];
        let mut command = self.role("coordinator", &format!("coordinator-{}.log", self.coordinators.len()), url);
        command.args(["--listen", &listen.to_string(), "--store"]).arg(self.dir.join("store"));
        self.coordinators.push(Some(KillOnDrop(command.spawn().unwrap())));
    }

    /// `sluice ROLE --ha URL ...` logging to `log`, in a process group of its own (its job
    /// processes too).
    fn role(&self, role: &str, log: &str, url: &str) -> Command {
        let mut command = Command::new(&self.sluice);
        command
            .arg(role)
            .args(["--ha", url, "--ha-cluster", &self.name, "--secret-file"])
            .arg(&self.secret)
            .env_remove("SLUICE_SECRET")
            .env_remove("SLUICE_SECRET_FILE")
            .env_remove("SLUICE_COORDINATOR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
            .process_group(0);
        command
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names.iter().map(|n| format!("== {n}\n{}", self.log(n))).collect()
    }

    /// The coordinator (index) that leads, other than those in `not`; waits for one.
    fn wait_for_leader(&self, not: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let leading = (0..self.coordinators.len())
                .filter(|i| !not.contains(i))
                .find(|i| self.log(&format!("coordinator-{i}.log")).contains("leading the cluster"));
            if let Some(i) = leading {
                return i;
            }
            assert!(Instant::now() < deadline, "no new leader within {within:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client command against the leader found in etcd: (success, stdout + stderr).
    fn client(&self, args: &[String]) -> (bool, String) {
        let output = Command::new(&self.sluice)
            .arg(&args[0])
            .args(["--ha", &self.url, "--ha-cluster", &self.name, "--secret-file"])
            .arg(&self.secret)
            .args(&args[1..])
            .env_remove("SLUICE_COORDINATOR")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// `sluice list`'s line for `job` with its history.
    fn job(&self, job: &str) -> String {
        let (_, listing) = self.client(&["list".to_string()]);
        let mut lines = listing.lines().skip_while(|l| !l.starts_with(&format!("{job} ")));
        let mut out: Vec<&str> = lines.next().into_iter().collect();
        out.extend(lines.take_while(|l| l.starts_with("    ")));
        out.join("\n")
    }

    fn wait_for(&self, job: &str, state: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let line = self.job(job);
            if line.split_whitespace().nth(1) == Some(state) {
                return line;
            }
            assert!(Instant::now() < deadline, "{job} not {state} within {within:?}:\n{line}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_leader_killed_with_sigkill_is_replaced_and_its_running_job_adopted_without_a_restart_exactly() {
    let _one = one_at_a_time();
    let (seed, mut random) = seeded(41);
    let dir = tempfile::tempdir().unwrap();
    let etcd_dir = dir.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let etcd = EtcdCluster::start(&etcd_dir, 3);
    let mut cluster = HaCluster::start(dir.path(), &etcd, &[etcd.url(), etcd.url(), etcd.url()], 2);
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 800_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let (ok, text) = cluster.client(&submit_counts_args(counts, 2, &out, n, 100_000, Some(&checkpoints), &[]));
    assert!(ok, "seed {seed}: {text}\n{}", cluster.logs());
    cluster.wait_for("job-1", "running", Duration::from_secs(60));
    // Twice: SIGKILL of the leader at a seeded moment; a standby leads, adopts the job.
    let mut dead = Vec::new();
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(500 + random(1000)));
        let leader = cluster.wait_for_leader(&dead, Duration::from_secs(10));
        let killed_at = Instant::now();
        cluster.coordinators[leader] = None; // SIGKILL
        dead.push(leader);
        let next = cluster.wait_for_leader(&dead, Duration::from_secs(30));
        eprintln!(
            "seed {seed}: round {round}: coordinator {leader} killed, {next} leads after {:?}",
            killed_at.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = cluster.job("job-1");
            if line.contains("adopted by the leader of term") && line.matches("adopted").count() > round {
                break;
            }
            assert!(Instant::now() < deadline, "seed {seed}: not adopted:\n{line}\n{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        if round == 0 {
            // Two stand by for the second round: the killed one is started again.
            cluster.start_coordinator(&etcd.url());
        }
    }
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert!(line.contains("attempt 1 "), "seed {seed}: the job was restarted:\n{line}\n{}", cluster.logs());
    assert_committed_counts(&out, n, &format!("seed {seed}: two leaders killed"));
    let writers = assert_writes_fenced(&etcd.history("/sluice/test/"), "/sluice/test/");
    assert!(writers.len() >= 3, "seed {seed}: three leaders wrote to etcd, not {writers:?}");
}

/// How many lines the job has committed to `out` so far.
fn committed_lines(out: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(out) else { return 0 };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().count())
        .sum()
}

/// Submits the counting job (`n` events at 100 000/s, parallelism 2, checkpoints every
/// 100 ms) and waits until it runs.
fn submit_counts(cluster: &HaCluster, out: &Path, checkpoints: &Path, n: u64) {
    let counts = env!("CARGO_BIN_EXE_counts");
    let (ok, text) = cluster.client(&submit_counts_args(counts, 2, out, n, 100_000, Some(checkpoints), &[]));
    assert!(ok, "{text}\n{}", cluster.logs());
    cluster.wait_for("job-1", "running", Duration::from_secs(60));
}

#[test]
fn losing_one_etcd_member_stops_nothing_and_losing_quorum_pauses_checkpoints_until_it_returns() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let etcd_dir = dir.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let mut etcd = EtcdCluster::start(&etcd_dir, 3);
    let cluster = HaCluster::start(dir.path(), &etcd, &[etcd.url(), etcd.url()], 2);
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 2_500_000;
    submit_counts(&cluster, &out, &checkpoints, n);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(10));
    // One member of three gone, the one that leads raft (the hardest one to lose: no
    // renewal lands until the other two elect a leader): quorum holds, the leader keeps
    // its lease.
    let raft_leader = etcd.raft_leader();
    etcd.kill(raft_leader);
    std::thread::sleep(Duration::from_millis(2500));
    let log = cluster.log(&format!("coordinator-{leader}.log"));
    assert!(
        !log.contains("stepping down"),
        "the leader stepped down with a quorum left (etcd member {raft_leader} killed, it led raft):\n{log}"
    );
    assert!(committed_lines(&out) > 0, "checkpoints complete with two members of three");
    // Two of three gone: no quorum, so no lease can be renewed and no checkpoint can be
    // recorded. The leader steps down; the job goes on processing and writing checkpoints,
    // but none completes, so nothing more is committed.
    let second = (raft_leader + 1) % 3;
    etcd.kill(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log(&format!("coordinator-{leader}.log")).contains("stepping down") {
        assert!(Instant::now() < deadline, "the leader did not step down without quorum:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A commit that was under way when the quorum went may still land.
    std::thread::sleep(Duration::from_millis(500));
    let (committed, written) = (committed_lines(&out), manifests(&checkpoints));
    // A checkpoint waits 5 s for a leader to record it, then the next one is taken.
    std::thread::sleep(Duration::from_millis(6000));
    assert_eq!(committed_lines(&out), committed, "output was committed while no checkpoint could be recorded");
    assert!(manifests(&checkpoints) > written, "the job stopped taking checkpoints without a leader");
    // Quorum back: the standby leads, adopts the running attempt, checkpoints complete again.
    etcd.restart(second);
    let next = cluster.wait_for_leader(&[leader], Duration::from_secs(30));
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert!(line.contains("attempt 1 "), "the job was restarted:\n{line}\n{}", cluster.logs());
    assert!(
        line.contains("adopted by the leader of term"),
        "coordinator {next} did not adopt the job:\n{line}\n{}",
        cluster.logs()
    );
    assert_committed_counts(&out, n, "etcd lost one member, then its quorum");
    let writers = assert_writes_fenced(&etcd.history("/sluice/test/"), "/sluice/test/");
    assert!(writers.len() >= 2, "two leaders wrote to etcd, not {writers:?}");
}

/// How many checkpoints of the job have their manifest written (complete or not).
fn manifests(checkpoints: &Path) -> usize {
    let Ok(jobs) = std::fs::read_dir(checkpoints) else { return 0 };
    jobs.flatten()
        .filter_map(|job| std::fs::read_dir(job.path()).ok())
        .flatten()
        .flatten()
        .filter(|chk| chk.path().join("_manifest.json").exists())
        .count()
}

#[test]
fn a_leader_cut_off_from_etcd_steps_down_within_its_lease_and_a_standby_adopts_its_job() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let etcd_dir = dir.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let etcd = EtcdCluster::start(&etcd_dir, 3);
    // Each coordinator talks to one member only, so that stopping a member cuts exactly
    // one coordinator off (a network partition between it and etcd).
    let urls: Vec<String> = (0..3).map(|i| etcd.member_url(i)).collect();
    let mut cluster = HaCluster::start(dir.path(), &etcd, &urls, 2);
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 800_000;
    submit_counts(&cluster, &out, &checkpoints, n);
    std::thread::sleep(Duration::from_millis(700));
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(10));
    let member = etcd.pid(leader);
    let stop = |signal: &str| {
        let status = Command::new("kill").args([signal, &member.to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {member}");
    };
    stop("-STOP");
    let cut_at = Instant::now();
    let mut deposed = cluster.coordinators[leader].take().expect("the leader runs");
    let (status, _) = deposed.wait(Duration::from_secs(10));
    let stepped_down = cut_at.elapsed();
    stop("-CONT");
    assert_eq!(status.code(), Some(75), "the deposed leader exits with 75:\n{}", cluster.logs());
    let log = cluster.log(&format!("coordinator-{leader}.log"));
    assert!(log.contains("stepping down as the leader"), "{log}");
    eprintln!("the cut-off leader stepped down after {stepped_down:?} (its lease: 2 s)");
    let next = cluster.wait_for_leader(&[leader], Duration::from_secs(30));
    // Never two leaders: the old one had stepped down before the next one led (the log
    // lines' timestamps, from one clock).
    let stamp = |log: &str, text: &str| -> String {
        let line = log.lines().find(|l| l.contains(text)).unwrap_or_else(|| panic!("no '{text}' in:\n{log}"));
        line.split_whitespace().next().unwrap_or_default().to_string()
    };
    let down = stamp(&log, "stepping down as the leader");
    let up = stamp(&cluster.log(&format!("coordinator-{next}.log")), "leading the cluster");
    assert!(down < up, "coordinator {next} led at {up}, before the old leader stepped down at {down}");
    let line = cluster.wait_for("job-1", "finished", Duration::from_secs(120));
    assert!(line.contains("attempt 1 "), "the job was restarted:\n{line}\n{}", cluster.logs());
    assert!(line.contains("adopted by the leader of term"), "coordinator {next} did not adopt the job:\n{line}");
    cluster.coordinators.clear();
    assert_committed_counts(&out, n, "the leader cut off from etcd");
    // etcd's history: the cut-off leader's writes all precede its deposition, and it never
    // wrote again once the next leader had.
    let writers = assert_writes_fenced(&etcd.history("/sluice/test/"), "/sluice/test/");
    assert!(writers.len() >= 2, "two leaders wrote to etcd, not {writers:?}");
}

/// `sluice cluster --coordinators 3 --etcd`: the supervisor sees its leading coordinator
/// die (SIGKILL), revokes that leader's lease at once, a standby takes over without
/// waiting for the lease to lapse, adopts the running job, and the output is exact.
#[test]
fn a_supervised_leader_killed_with_sigkill_has_its_lease_revoked_and_its_job_adopted_exactly() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let sluice = sluice_beside(Path::new(env!("CARGO_BIN_EXE_counts")));
    let cluster = sluice_testjobs::cluster::Cluster::start(
        &sluice,
        dir.path(),
        2,
        &["--slots", "1", "--coordinators", "3", "--etcd"],
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("c/cluster.json")).unwrap()).unwrap();
    let url = info["etcd"].as_str().expect("the cluster's etcd").to_string();
    // The command line's view of it: the leader found in etcd, the cluster's own secret.
    let ha = HaCluster {
        sluice: sluice.clone(),
        dir: dir.path().to_path_buf(),
        url: url.clone(),
        name: "default".into(),
        secret: dir.path().join("c/secret"),
        coordinators: Vec::new(),
        _workers: Vec::new(),
    };
    let (out, checkpoints) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let n = 600_000;
    let counts = env!("CARGO_BIN_EXE_counts");
    let (ok, text) = ha.client(&submit_counts_args(counts, 2, &out, n, 100_000, Some(&checkpoints), &[]));
    assert!(ok, "{text}\n{}", cluster.log());
    ha.wait_for("job-1", "running", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500));
    let log = cluster.log();
    let pid: u32 = log
        .lines()
        .filter(|l| l.contains("leading the cluster"))
        .filter_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no leader in the log:\n{log}"));
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -KILL {pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log().contains("its lease is revoked") {
        assert!(Instant::now() < deadline, "the dead leader's lease was not revoked:\n{}", cluster.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = ha.wait_for("job-1", "finished", Duration::from_secs(120));
    assert!(line.contains("attempt 1 "), "the job was restarted:\n{line}\n{}", cluster.log());
    assert!(line.contains("adopted by the leader of term"), "no standby adopted the job:\n{line}\n{}", cluster.log());
    assert_committed_counts(&out, n, "a supervised leader killed");
    let members: Vec<String> = url.trim_start_matches("etcd://").split(',').map(str::to_string).collect();
    let writers =
        assert_writes_fenced(&sluice_testjobs::etcd::history(&members, "/sluice/default/"), "/sluice/default/");
    assert!(writers.len() >= 2, "two leaders wrote to etcd, not {writers:?}");
}
