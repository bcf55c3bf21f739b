//! R1 of `shared/bench/WORKLOADS.md`: recovery after a lost worker. A local cluster (a
//! coordinator and 3 workers of one slot each, started with `sluice cluster`) runs W3 at
//! parallelism 2, paced by the wall clock (event `i` due at `t0 + i / rate`), into the
//! exactly-once file sink. After 25 s one worker that runs a process is killed with
//! SIGKILL, and this harness measures, in milliseconds after the kill:
//!
//! - `detect_ms`: the coordinator logs the failure (whichever detector saw it first);
//! - `running_ms`: every process of the next attempt is running (started by its worker);
//! - `first_output_ms`: the first output file committed after the next attempt runs;
//! - `caught_up_ms`: the output lag (now minus the time the newest committed window's last
//!   event was due) is back to at most the largest lag of the 10 s before the kill.
//!
//! At the end the committed output is checked against W2's reference (count and checksum
//! of every record): `exactly_once`. The job itself is this binary (`r1-job`), submitted
//! to the cluster as its artifact.
//!
//! R2 is the same set-up with 3 coordinators on a three-member etcd (`sluice cluster
//! --coordinators 3 --etcd`); the SIGKILL hits the leading coordinator, and the harness
//! measures `elect_ms` (a standby logs that it leads), `adopt_ms` (it logs that it adopted
//! the running attempt), `caught_up_ms` (the first commit after the kill with the output
//! lag within its band of the 10 s before) and whether the job had to restart.

use crate::{w2_fingerprint, w2_key, w2_reference, Args, Tally};
use sluice::prelude::*;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The job a cluster runs for R1: W3 on a wall-clock schedule, into committed files.
pub fn job(args: &Args) -> Result<(), String> {
    let out = args.out.as_deref().ok_or("r1-job needs --out")?;
    let checkpoints = args.checkpoint_dir.as_deref().ok_or("r1-job needs --checkpoint-dir")?;
    let t0 = args.t0_ms.ok_or("r1-job needs --t0-ms")?;
    let env = StreamEnv::new();
    env.set_parallelism(args.parallelism)
        .set_batch_size(args.batch_size)
        .set_watermark_interval(Duration::from_millis(200))
        .enable_checkpointing(Duration::from_millis(1000), checkpoints);
    env.source(
        SequenceSource::new(0..args.n).on_schedule(t0, args.rate),
        Watermarks::monotonic().with_timestamps(|i: &u64| *i as i64),
    )
    .uid("r1-events")
    .key_by(|i| w2_key(*i))
    .window(Tumbling::event_time(Duration::from_millis(1000)))
    .aggregate_with(Count, |key, window, count| format!("{key},{},{count}", window.start))
    .uid("r1-counts")
    .sink(TransactionalFileSink::new(out))
    .uid("r1-files");
    env.execute("r1").map(|_| ()).map_err(|e| e.to_string())
}

/// What one R1 (or R2) run measured.
pub struct Measured {
    /// R2: to a new leader.
    pub elect_ms: Option<u64>,
    /// R2: to the running attempt adopted.
    pub adopt_ms: Option<u64>,
    /// R2: the job ran more than one attempt.
    pub restarted: bool,
    pub detect_ms: Option<u64>,
    pub running_ms: Option<u64>,
    pub first_output_ms: Option<u64>,
    pub caught_up_ms: Option<u64>,
    pub exactly_once: bool,
    pub detail: String,
    /// The kill's offset after `--kill-after-secs` (ms), and the seed that chose it.
    pub kill_offset: (u64, u64),
}

/// Over how many ms after `--kill-after-secs` the kill may fall: `--kill-spread-ms`, by
/// default the checkpoint interval for R2 and nothing for R1.
fn kill_spread(args: &Args, ha: bool) -> u64 {
    args.kill_spread_ms.unwrap_or(if ha { 1000 } else { 0 })
}

/// The kill's seeded offset in `0..spread` ms (see [`kill_spread`]), and the seed.
fn kill_offset(args: &Args, ha: bool) -> (u64, u64) {
    let spread = kill_spread(args, ha);
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    // SplitMix64: one well-mixed draw from the seed.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (if spread == 0 { 0 } else { z % spread }, seed)
}

/// Kills the cluster's process group when dropped.
struct ClusterGuard(Child);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.wait();
    }
}

fn now_ms() -> i64 {
    sluice::dataflow::now_millis()
}

/// Milliseconds since the epoch of a log line's RFC 3339 UTC timestamp
/// (`2026-12-02T02:20:57.061471Z ...`).
fn log_time_ms(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().find(|w| w.len() >= 20 && w.ends_with('Z') && w.as_bytes()[4] == b'-')?;
    let num = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = stamp.get(20..stamp.len() - 1).unwrap_or("0");
    let millis = format!("{frac:0<3}").get(..3)?.parse::<i64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis)
}

/// `GET /jobs` of the first of the status endpoints `https` that answers (with HA, a
/// standby serves none: the leader answers).
fn jobs_of_leader(https: &[String], secret: &str) -> Result<serde_json::Value, String> {
    let mut last = String::from("no status endpoint");
    for http in https {
        match jobs(http, secret) {
            Ok(status) => return Ok(status),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `GET /jobs` of the coordinator's status endpoint.
fn jobs(http: &str, secret: &str) -> Result<serde_json::Value, String> {
    let mut stream = std::net::TcpStream::connect(http).map_err(|e| format!("status endpoint {http}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET /jobs HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {secret}\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no HTTP body")?;
    serde_json::from_str(body).map_err(|e| format!("status JSON: {e}"))
}

/// The committed output read so far: files seen, the newest window, the tally.
#[derive(Default)]
struct Output {
    seen: HashSet<PathBuf>,
    newest_window: Option<i64>,
    tally: Tally,
    bad_lines: u64,
}

impl Output {
    /// Reads the part files committed since the last look; whether there were any.
    fn scan(&mut self, dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else { return false };
        let mut new = false;
        for path in entries.flatten().map(|e| e.path()) {
            let committed = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("part-"));
            if !committed || self.seen.contains(&path) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            self.seen.insert(path);
            new = true;
            for line in text.lines() {
                let fields: Vec<i64> = line.split(',').filter_map(|f| f.parse().ok()).collect();
                match fields[..] {
                    [key, start, count] => {
                        self.tally.add(w2_fingerprint(&(key, start, count)));
                        self.newest_window = self.newest_window.max(Some(start));
                    }
                    _ => self.bad_lines += 1,
                }
            }
        }
        new
    }
}

/// Prints a line of the live account (`--live`, the README's demo) on stdout.
fn say(live: bool, text: impl std::fmt::Display) {
    if live {
        println!("{text}");
        let _ = std::io::stdout().flush();
    }
}

/// One R1 run (R2 with `ha`: the leading coordinator is killed, not a worker); with
/// `args.live`, an account of it as it happens.
pub fn run(args: &Args, ha: bool) -> Result<Measured, String> {
    let live = args.live;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let sluice = exe.with_file_name("sluice");
    if !sluice.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p sluice-cli` (R1 runs a real cluster)",
            sluice.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("sluice-r1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let log_path = dir.join("cluster.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let cluster_dir = dir.join("c");
    let ha_args: &[&str] = match (ha, args.let_leases_lapse) {
        (false, _) => &[],
        (true, false) => &["--coordinators", "3", "--etcd"],
        (true, true) => &["--coordinators", "3", "--etcd", "--let-leases-lapse"],
    };
    let child = Command::new(&sluice)
        .args(["cluster", "--workers", "3", "--slots", "1", "--dir", cluster_dir.to_str().ok_or("path")?])
        .args(ha_args)
        .env_remove("SLUICE_SECRET")
        .env_remove("SLUICE_SECRET_FILE")
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the cluster: {e}"))?;
    let _cluster = ClusterGuard(child);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let info: serde_json::Value = loop {
        let text = std::fs::read_to_string(cluster_dir.join("cluster.json")).unwrap_or_default();
        if read_log().matches("registered with the coordinator").count() >= 3 && !text.is_empty() {
            break serde_json::from_str(&text).map_err(|e| e.to_string())?;
        }
        if Instant::now() > deadline {
            return Err(format!("the cluster did not come up within 60 s:\n{}", read_log()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let roles = if ha { "3 coordinators (one leads, on a three-member etcd)" } else { "a coordinator" };
    say(live, format!("cluster up: {roles} and 3 workers (1 slot each) on loopback"));
    let coordinator = info["coordinator"].as_str().ok_or("no coordinator address")?.to_string();
    let https: Vec<String> = match info["coordinators"].as_array() {
        Some(all) => all.iter().filter_map(|c| c["http"].as_str().map(String::from)).collect(),
        None => vec![info["http"].as_str().ok_or("no status address")?.to_string()],
    };
    // With HA the command line finds the leader in etcd.
    let reach: Vec<String> = match info["etcd"].as_str() {
        Some(url) => vec!["--ha".into(), url.into()],
        None => vec!["--coordinator".into(), coordinator.clone()],
    };
    let secret_file = cluster_dir.join("secret");
    let secret = std::fs::read_to_string(&secret_file).map_err(|e| e.to_string())?.trim().to_string();

    // The schedule starts 3 s from now: the upload and the start of the job fall before it.
    let t0 = now_ms() + 3000;
    let out = dir.join("out");
    let job_args: Vec<String> = vec![
        "r1-job".into(),
        "--n".into(),
        args.n.to_string(),
        "--rate".into(),
        args.rate.to_string(),
        "--t0-ms".into(),
        t0.to_string(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
        "--checkpoint-dir".into(),
        dir.join("checkpoints").to_string_lossy().into_owned(),
        "--batch-size".into(),
        args.batch_size.to_string(),
    ];
    let submitted = Command::new(&sluice)
        .arg("submit")
        .args(&reach)
        .args(["--secret-file", secret_file.to_str().ok_or("path")?])
        .arg(&exe)
        .args(["-p", &args.parallelism.to_string(), "--name", "r1", "--"])
        .args(&job_args)
        .output()
        .map_err(|e| e.to_string())?;
    if !submitted.status.success() {
        return Err(format!("submit failed: {}", String::from_utf8_lossy(&submitted.stderr)));
    }

    say(
        live,
        format!(
            "job submitted: {} events at {} per second by the wall clock, keyed 1 s windows at parallelism {}, \
             exactly-once file sink, checkpoints every second",
            args.n, args.rate, args.parallelism
        ),
    );
    let offset = kill_offset(args, ha);
    if kill_spread(args, ha) > 0 {
        eprintln!("the kill comes {} ms after {} s (seed {})", offset.0, args.kill_after_secs, offset.1);
    }
    let kill_at_ms = t0 + (args.kill_after_secs * 1000.0) as i64 + offset.0 as i64;
    let mut next_report = t0 + 2000;
    let mut told = (false, false, false);
    let mut output = Output::default();
    let mut lags: Vec<(i64, i64)> = Vec::new(); // (when, lag) at each new commit
    let mut killed: Option<(i64, u64)> = None; // (when, worker; the coordinator's pid with HA)
    let (mut running_at, mut first_output_at, mut caught_up_at) = (None, None, None);
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let end_deadline = Instant::now() + Duration::from_secs_f64(args.n as f64 / args.rate + 180.0);
    let lag_now = |newest: i64, at: i64| at - (t0 + ((newest + 999) as f64 * 1000.0 / args.rate) as i64);
    let finished = loop {
        let now = now_ms();
        if output.scan(&out) {
            if let Some(newest) = output.newest_window {
                lags.push((now, lag_now(newest, now)));
            }
            if now >= next_report {
                next_report = now + 2000;
                let (_, lag) = lags.last().copied().unwrap_or((now, 0));
                say(
                    live,
                    format!(
                        "  t={:>5.1}s  {:>9} results committed, output {:.2} s behind the events",
                        (now - t0) as f64 / 1000.0,
                        output.tally.count,
                        lag as f64 / 1000.0
                    ),
                );
            }
            if let (Some(ran), None) = (running_at, first_output_at) {
                if now >= ran {
                    first_output_at = Some(now);
                }
            }
        }
        if killed.is_none() && now >= kill_at_ms && ha {
            let pid = leader_pid(&read_log()).ok_or("no leading coordinator in the log")?;
            let when = now_ms();
            Command::new("kill").args(["-KILL", &pid.to_string()]).status().map_err(|e| e.to_string())?;
            killed = Some((when, pid as u64));
            say(
                live,
                format!("  t={:>5.1}s  kill -9 of the leading coordinator (pid {pid})", (when - t0) as f64 / 1000.0),
            );
        }
        if killed.is_none() && now >= kill_at_ms {
            let status = jobs_of_leader(&https, &secret)?;
            let job = &status["jobs"][0];
            let worker = job["processes"][args.kill_process]["worker_id"].as_u64().ok_or("no process to kill")?;
            let pid = worker_pid(&read_log(), worker).ok_or_else(|| format!("no pid of worker {worker}"))?;
            let when = now_ms();
            Command::new("kill").args(["-KILL", &pid.to_string()]).status().map_err(|e| e.to_string())?;
            killed = Some((when, worker));
            say(
                live,
                format!(
                    "  t={:>5.1}s  kill -9 of worker {worker} (pid {pid}), which runs process {} of the job",
                    (when - t0) as f64 / 1000.0,
                    args.kill_process
                ),
            );
        }
        if let (Some((kill, _)), None, true) = (killed, caught_up_at, ha) {
            // The job's processes are not touched by the kill: the first commit after it
            // with the lag in its band is when the output is normal again.
            if let Some(&(at, lag)) = lags.last() {
                let before = lags.iter().filter(|(t, _)| *t >= kill - 10_000 && *t < kill).map(|l| l.1).max();
                if at > kill && before.is_some_and(|b| lag <= b) {
                    caught_up_at = Some(at);
                }
            }
        }
        if let (Some((kill, _)), None, false) = (killed, caught_up_at, ha) {
            if let (Some(_), Some(&(at, lag))) = (first_output_at, lags.last()) {
                let before = lags.iter().filter(|(t, _)| *t >= kill - 10_000 && *t < kill).map(|l| l.1).max();
                if at >= first_output_at.unwrap_or(i64::MAX) && before.is_some_and(|b| lag <= b) {
                    caught_up_at = Some(at);
                }
            }
        }
        if let (Some((kill, _)), true) = (killed, ha) {
            let log = read_log();
            let after =
                |text: &str| log.lines().filter(|l| l.contains(text)).filter_map(log_time_ms).find(|t| *t >= kill - 5);
            if let (false, Some(at)) = (told.0, after("leading the cluster")) {
                told.0 = true;
                say(live, format!("  +{:>4} ms  a standby coordinator leads", at - kill));
            }
            if let (false, Some(at)) = (told.1, after("adopted by the leader of term")) {
                told.1 = true;
                running_at = Some(at);
                say(live, format!("  +{:>4} ms  it adopted the running attempt: no restart", at - kill));
            }
            if let (false, Some(at)) = (told.2, caught_up_at) {
                told.2 = true;
                say(live, format!("  +{:>4} ms  output committed after the kill, within its usual lag", at - kill));
            }
        }
        if let (Some((kill, _)), false) = (killed, ha) {
            if !told.0 {
                if let Some(line) = read_log().lines().find(|l| {
                    (l.contains("attempt 1 failed") || l.contains("worker lost"))
                        && log_time_ms(l).is_some_and(|t| t >= kill - 5)
                }) {
                    told.0 = true;
                    let at = log_time_ms(line).unwrap_or(kill);
                    let what = line.split_once("INFO ").or(line.split_once("WARN ")).map_or(line, |(_, w)| w);
                    say(live, format!("  +{:>4} ms  detected: {what}", (at - kill).max(0)));
                }
            }
            if let (false, Some(at)) = (told.1, running_at) {
                told.1 = true;
                say(live, format!("  +{:>4} ms  attempt 2 running on the workers that are left", at - kill));
            }
            if let (false, Some(at)) = (told.2, caught_up_at) {
                told.2 = true;
                say(live, format!("  +{:>4} ms  first output of attempt 2 committed: caught up", at - kill));
            }
        }
        if last_status.elapsed()
            >= Duration::from_millis(if killed.is_some() && running_at.is_none() { 5 } else { 100 })
        {
            last_status = Instant::now();
            // No leader for a moment (R2): the status waits for the next one.
            let Ok(status) = jobs_of_leader(&https, &secret) else { continue };
            let job = &status["jobs"][0];
            let state = job["state"].as_str().unwrap_or_default();
            if killed.is_some() && running_at.is_none() && job["attempt"].as_u64().unwrap_or(1) >= 2 {
                let all = job["processes"]
                    .as_array()
                    .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["state"].as_str() == Some("running")));
                if all && state == "running" {
                    running_at = Some(now_ms());
                }
            }
            if matches!(state, "finished" | "failed" | "cancelled") {
                break job.clone();
            }
        }
        if Instant::now() > end_deadline {
            return Err(format!("the job did not end in time:\n{}", read_log()));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    output.scan(&out);
    let log_text = read_log();
    let (kill, worker) = killed.ok_or("the job ended before the kill; give a larger --n")?;
    let after_kill = |texts: &[&str]| {
        log_text
            .lines()
            .filter(|l| texts.iter().any(|t| l.contains(t)))
            .filter_map(log_time_ms)
            .find(|t| *t >= kill - 5)
    };
    let detect_at = after_kill(&["attempt 1 failed", "worker lost"]);
    let since = |t: Option<i64>| t.map(|t| (t - kill).max(0) as u64);
    let reference = w2_reference(args.n);
    let exactly_once =
        finished["state"].as_str() == Some("finished") && output.tally == reference && output.bad_lines == 0;
    let events: Vec<String> = finished["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let victim = match ha {
        true => format!("killed the leading coordinator (pid {worker})"),
        false => format!("killed worker {worker} (process {})", args.kill_process),
    };
    let detail = format!(
        "{victim}; output {} records (expected {}); job {}; events:\n  {}",
        output.tally.count,
        reference.count,
        finished["state"],
        events.join("\n  ")
    );
    say(
        live,
        format!(
            "done: {} results committed, {} expected: {}",
            output.tally.count,
            reference.count,
            if exactly_once {
                "equal to the reference, record for record: nothing lost, nothing duplicated"
            } else {
                "NOT equal to the reference"
            }
        ),
    );
    // The cluster's log stays, for a look at where the time went.
    let kept = std::env::temp_dir().join("sluice-r1-last-cluster.log");
    let _ = std::fs::copy(&log_path, &kept);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measured {
        elect_ms: since(after_kill(&["leading the cluster"])),
        adopt_ms: since(after_kill(&["adopted by the leader of term"])),
        restarted: finished["attempt"].as_u64().unwrap_or(1) > 1,
        detect_ms: since(detect_at),
        running_ms: since(running_at),
        first_output_ms: since(first_output_at),
        caught_up_ms: since(caught_up_at),
        exactly_once,
        detail,
        kill_offset: offset,
    })
}

/// The pid of the coordinator that leads now, from the last leadership line.
fn leader_pid(log: &str) -> Option<u32> {
    log.lines()
        .rev()
        .filter(|l| l.contains("leading the cluster"))
        .find_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
}

/// The pid of worker `id`, from its registration line.
fn worker_pid(log: &str, id: u64) -> Option<u32> {
    let wanted = format!("registered with the coordinator worker={id} ");
    log.lines()
        .filter(|l| l.contains(&wanted))
        .find_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_read_as_epoch_milliseconds() {
        assert_eq!(log_time_ms("2026-12-02T02:20:57.061471Z  INFO x"), Some(1_796_178_057_061));
        assert_eq!(log_time_ms("1970-01-01T00:00:01.5Z WARN"), Some(1_500));
        assert_eq!(log_time_ms("no time here"), None);
    }
}
