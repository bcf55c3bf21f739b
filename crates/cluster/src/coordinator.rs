//! The coordinator: workers register with it and send heartbeats; the command line
//! uploads job binaries and submits jobs to it; it plans a job onto workers (one job
//! process per worker, at most the job's parallelism), asks each worker for a data
//! address, starts the processes with every peer's address, and tracks them until they
//! have all exited.
//!
//! Failures: a job process that fails (its worker reports it at once; a process whose
//! peer vanished fails within milliseconds) or a worker whose heartbeats stop for the
//! heartbeat timeout fails the job's attempt. The coordinator then kills what is left of
//! the attempt, places the next attempt on the workers with a free slot (a
//! [`crate::placement`] strategy decides, and the job's event log says which worker got
//! which process and why) and starts it; the job processes resume from the latest
//! completed checkpoint. Attempts are numbered, and the number travels with every start,
//! stop and data connection, so an old attempt's process cannot join a new one.
//!
//! Job status, with each job's history, is served as JSON over HTTP too (`GET /jobs`, with
//! the secret as bearer token), for scripts and dashboards.

use crate::artifacts::ArtifactStore;
use crate::auth::{AuthedChannel, ClusterTls, Secret};
use crate::placement::{Candidate, PlacementStrategy};
use crate::proto::coordinator_server::{Coordinator, CoordinatorServer};
use crate::proto::worker_client::WorkerClient;
use crate::proto::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

/// How long a stop of a job process may take (a worker that does not answer by then is
/// left to the failure detectors).
const STOP_WITHIN: Duration = Duration::from_secs(1);

/// A request's timeout in milliseconds; 0 (not given) means 2 minutes.
fn timeout_of(ms: u64) -> Duration {
    if ms == 0 {
        Duration::from_secs(120)
    } else {
        Duration::from_millis(ms)
    }
}

/// How the coordinator is started.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// The gRPC address to listen on.
    pub listen: SocketAddr,
    /// The HTTP address for job status as JSON, if any.
    pub http: Option<SocketAddr>,
    /// The folder artifacts are stored in.
    pub store: String,
    /// The cluster secret.
    pub secret: Secret,
    /// TLS for its servers and for its calls to the workers, if configured.
    pub tls: Option<ClusterTls>,
    /// How failures are detected.
    pub detection: Detection,
    /// Where attempts are placed: a name from [`crate::placement::STRATEGIES`].
    pub placement: String,
    /// Restarts of a job before it is failed for good.
    pub max_restarts: u32,
    /// Where the job table is kept across restarts of the coordinator (a local folder);
    /// `None`: in memory only.
    pub meta_dir: Option<std::path::PathBuf>,
    /// How long more workers must have had room for a job running on fewer processes than
    /// its parallelism allows before it is moved back onto more (reactive scale-up); `None`
    /// never.
    pub scale_up_after: Option<Duration>,
    /// High availability: the coordinators campaign on etcd, the leader keeps the job
    /// table there ([`crate::ha`]); `None`: a single coordinator.
    pub ha: Option<crate::ha::HaConfig>,
    /// How long a new leader waits for the workers to report the running jobs' processes
    /// before it restarts a job with one missing.
    pub adopt_within: Duration,
}

/// The time detector's settings.
#[derive(Clone, Copy, Debug)]
pub struct Detection {
    /// How often workers send a heartbeat. Default 100 ms: cheap (one small call), and
    /// frequent enough that a timeout of a few intervals stays well under a second.
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is lost. Default 500 ms: five missed heartbeats, so
    /// a scheduling hiccup on a loaded machine does not count, and still sub-second. A
    /// worker killed outright is usually detected sooner: its job processes exit within
    /// 20 ms, and their peers fail at once on the broken data connection.
    pub heartbeat_timeout: Duration,
}

impl Default for Detection {
    fn default() -> Self {
        Detection { heartbeat_interval: Duration::from_millis(100), heartbeat_timeout: Duration::from_millis(500) }
    }
}

#[derive(Debug)]
struct WorkerEntry {
    address: String,
    slots: u32,
    last_heartbeat: Instant,
    rtt: Duration,
    /// CPU its job processes used over the last second, in percent of one core.
    cpu_percent: u32,
}

#[derive(Debug, Clone)]
struct ProcessEntry {
    worker: u64,
    data_address: String,
    /// starting, running, adopting (a new leader waits for its worker to report it),
    /// finished, failed, lost.
    state: &'static str,
    message: String,
}

impl ProcessEntry {
    /// Whether it runs, or may run, on its worker (and so holds a slot there).
    fn is_live(&self) -> bool {
        matches!(self.state, "starting" | "running" | "adopting")
    }
}

/// Where the job table is kept: a local folder, or etcd under the leader's term.
#[derive(Clone)]
enum Meta {
    Local(crate::jobtable::JobTable),
    Etcd(Box<crate::ha::Leadership>),
}

impl Meta {
    async fn save(&self, table: &serde_json::Value) -> Result<(), String> {
        match self {
            Meta::Local(local) => local.save(table),
            Meta::Etcd(leader) => leader.save_table(table).await,
        }
    }

    async fn load(&self) -> Result<Option<serde_json::Value>, String> {
        match self {
            Meta::Local(local) => local.load(),
            Meta::Etcd(leader) => leader.load_table().await,
        }
    }
}

#[derive(Debug, Clone)]
struct JobEntry {
    state: &'static str,
    message: String,
    processes: Vec<ProcessEntry>,
    /// What was submitted, to start every attempt from.
    request: SubmitJobRequest,
    attempt: u64,
    /// An attempt is being started (its processes are not all known to their workers yet).
    starting: bool,
    restarts: u32,
    /// When restarts happened, for the back-off between them.
    restarted_at: Vec<Instant>,
    submitted: Instant,
    /// The job's history, oldest first.
    events: Vec<String>,
    /// Since when more processes than it runs could be placed (for the scale-up).
    room_since: Option<Instant>,
    /// Attempts started to run on more processes (not failures).
    rescales: u32,
    /// With HA: the newest checkpoint recorded as complete (also under its own etcd key).
    recorded_checkpoint: u64,
}

impl JobEntry {
    /// Adds to the job's history (and the coordinator's log).
    fn event(&mut self, job_id: &str, text: String) {
        let at = self.submitted.elapsed().as_secs_f64();
        tracing::info!(job = job_id, "{text}");
        self.events.push(format!("+{at:.3}s {text}"));
    }
}

#[derive(Default)]
struct State {
    workers: BTreeMap<u64, WorkerEntry>,
    jobs: BTreeMap<String, JobEntry>,
    next_worker: u64,
    next_job: u64,
}

/// The coordinator service.
#[derive(Clone)]
pub struct CoordinatorService {
    state: Arc<Mutex<State>>,
    store: ArtifactStore,
    secret: Secret,
    /// With TLS, what the workers' certificates are checked against.
    ca: Option<crate::auth::Ca>,
    detection: Detection,
    placement: Arc<dyn PlacementStrategy>,
    max_restarts: u32,
    table: Option<Meta>,
    /// The leader's term with HA (every command to a worker carries it); 0 without.
    term: u64,
}

/// The one `&'static str` of the job and process states a loaded table names.
fn known_state(text: &str) -> &'static str {
    const STATES: [&str; 9] =
        ["starting", "running", "restarting", "cancelling", "finished", "failed", "cancelled", "lost", "adopting"];
    STATES.into_iter().find(|s| *s == text).unwrap_or("failed")
}

impl State {
    /// What the job table keeps of this state.
    fn to_table(&self) -> serde_json::Value {
        let jobs: serde_json::Map<String, serde_json::Value> = self
            .jobs
            .iter()
            .map(|(id, j)| {
                let r = &j.request;
                let job = serde_json::json!({
                    "state": j.state, "message": j.message, "attempt": j.attempt, "restarts": j.restarts,
                    "rescales": j.rescales, "recorded_checkpoint": j.recorded_checkpoint, "events": j.events, "age_ms": j.submitted.elapsed().as_millis() as u64,
                    "processes": j.processes.iter().map(|p| serde_json::json!({
                        "worker": p.worker, "data_address": p.data_address, "state": p.state,
                    })).collect::<Vec<_>>(),
                    "request": {
                        "name": r.name, "artifact_sha256": r.artifact_sha256, "args": r.args,
                        "parallelism": r.parallelism, "graph_fingerprint": r.graph_fingerprint,
                        "checkpointed": r.checkpointed,
                    },
                });
                (id.clone(), job)
            })
            .collect();
        serde_json::json!({ "format": 1, "next_job": self.next_job, "next_worker": self.next_worker, "jobs": jobs })
    }

    /// The state a table describes, with no workers (they register again). Without
    /// `adopt`, with no processes (those of the old coordinator's attempts are stopped by
    /// their workers); with it (a new leader taking over), the live processes of running
    /// jobs are `adopting`: their workers are expected to report them.
    fn from_table(table: &serde_json::Value, adopt: bool) -> Result<State, String> {
        let number = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let mut state = State {
            next_job: number(&table["next_job"]),
            next_worker: number(&table["next_worker"]),
            ..State::default()
        };
        let jobs = table["jobs"].as_object().ok_or("the job table has no jobs object")?;
        for (id, j) in jobs {
            let r = &j["request"];
            let request = SubmitJobRequest {
                name: text(&r["name"]),
                artifact_sha256: text(&r["artifact_sha256"]),
                args: r["args"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default(),
                parallelism: number(&r["parallelism"]) as u32,
                graph_fingerprint: text(&r["graph_fingerprint"]),
                checkpointed: r["checkpointed"].as_bool().unwrap_or(false),
            };
            let age = Duration::from_millis(number(&j["age_ms"]));
            let job_state = known_state(j["state"].as_str().unwrap_or_default());
            let processes = match j["processes"].as_array() {
                Some(saved) if adopt && job_state == "running" => saved
                    .iter()
                    .map(|p| ProcessEntry {
                        worker: number(&p["worker"]),
                        data_address: text(&p["data_address"]),
                        state: match known_state(p["state"].as_str().unwrap_or_default()) {
                            "starting" | "running" | "adopting" => "adopting",
                            other => other,
                        },
                        message: String::new(),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let entry = JobEntry {
                state: job_state,
                message: text(&j["message"]),
                processes,
                request,
                attempt: number(&j["attempt"]).max(1),
                starting: false,
                restarts: number(&j["restarts"]) as u32,
                restarted_at: Vec::new(),
                submitted: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                events: j["events"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default(),
                room_since: None,
                rescales: number(&j["rescales"]) as u32,
                recorded_checkpoint: number(&j["recorded_checkpoint"]),
            };
            state.jobs.insert(id.clone(), entry);
        }
        Ok(state)
    }
}

impl CoordinatorService {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the job table now (after a submission or a registration, before answering).
    async fn persist(&self) {
        if let Some(table) = &self.table {
            let snapshot = self.state().to_table();
            if let Err(e) = table.save(&snapshot).await {
                tracing::warn!("{e}");
            }
        }
    }

    /// Writes the job table whenever it changed, every 100 ms.
    async fn keep_table(self) {
        let Some(table) = self.table.clone() else { return };
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut snapshot = self.state().to_table();
            // The age changes all the time; it alone is no reason to write.
            if let Some(jobs) = snapshot["jobs"].as_object_mut() {
                jobs.values_mut().for_each(|j| j["age_ms"] = serde_json::Value::Null);
            }
            let text = snapshot.to_string();
            if text != last {
                last = text;
                let snapshot = self.state().to_table();
                if let Err(e) = table.save(&snapshot).await {
                    tracing::warn!("{e}");
                }
            }
        }
    }

    /// After a restart of the coordinator: the jobs its table had running resume from
    /// their latest checkpoints as a new attempt, once workers have registered again.
    async fn resume_jobs(self, jobs: Vec<String>) {
        while self.state().workers.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The other workers register within a heartbeat or two of the first.
        tokio::time::sleep(self.detection.heartbeat_interval * 3).await;
        for job_id in jobs {
            {
                let mut state = self.state();
                let Some(job) = state.jobs.get_mut(&job_id) else { continue };
                if job.state != "restarting" {
                    continue; // cancelled meanwhile
                }
                job.attempt += 1;
                job.state = "running";
                job.message = "resumed after a restart of the coordinator".into();
                let text =
                    format!("the coordinator restarted: attempt {} resumes from the latest checkpoint", job.attempt);
                job.event(&job_id, text);
            }
            match self.start_placed(&job_id).await {
                Ok(processes) => tracing::info!(job = %job_id, processes, "attempt started"),
                Err(status) => {
                    let cause = format!("could not start after the coordinator's restart: {}", status.message());
                    tokio::spawn(self.clone().replace_attempt(job_id, cause, false));
                }
            }
        }
    }

    async fn worker_client(&self, address: &str) -> Result<WorkerClient<AuthedChannel>, Status> {
        let channel = crate::auth::connect(address, self.ca.as_ref(), Duration::from_secs(5))
            .await
            .map_err(Status::unavailable)?;
        Ok(WorkerClient::with_interceptor(channel, self.secret.attach()))
    }

    /// Asks process 0 of a running job, through its worker, for a savepoint (`stop`: and to
    /// stop with it); waits up to `timeout` for the path.
    async fn savepoint_of(&self, job_id: &str, stop: bool, timeout: Duration) -> Result<String, Status> {
        // A job between attempts (a failure, a lost worker) takes its savepoint in the next
        // attempt: the request waits for it, within its timeout, instead of failing.
        let deadline = Instant::now() + timeout;
        loop {
            let target = {
                let state = self.state();
                let job = state.jobs.get(job_id).ok_or_else(|| Status::not_found(format!("no job {job_id}")))?;
                if !matches!(job.state, "running" | "cancelling" | "restarting") {
                    return Err(Status::failed_precondition(format!(
                        "{job_id} is {}: only a running job takes a savepoint",
                        job.state
                    )));
                }
                let worker = job.processes.first().and_then(|first| state.workers.get(&first.worker));
                match worker {
                    Some(worker) if job.state != "restarting" && !job.starting => {
                        Some((worker.address.clone(), job.attempt))
                    }
                    _ => None,
                }
            };
            if let Some((address, attempt)) = target {
                let request = SavepointRequest {
                    job_id: job_id.to_string(),
                    index: 0,
                    stop,
                    timeout_ms: deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
                    attempt,
                    term: self.term,
                };
                let answer = async { self.worker_client(&address).await?.savepoint(request).await };
                match answer.await {
                    Ok(reply) => {
                        let path = reply.into_inner().path;
                        tracing::info!(job = job_id, stop, attempt, path = %path, "savepoint taken");
                        return Ok(path);
                    }
                    Err(status) => {
                        let replaced = self.state().jobs.get(job_id).is_none_or(|j| j.attempt != attempt);
                        if !replaced && status.code() != tonic::Code::NotFound {
                            return Err(status);
                        }
                        tracing::info!(
                            job = job_id,
                            attempt,
                            "savepoint: the attempt ended meanwhile; asking the next one"
                        );
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "{job_id} was between attempts for all of {timeout:?}: no savepoint was taken"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every process of `job` that still runs (Ctrl-C, or a kill).
    async fn stop_processes(&self, job_id: &str, kill: bool) {
        let (targets, attempt): (Vec<(u32, String)>, u64) = {
            let state = self.state();
            let Some(job) = state.jobs.get(job_id) else { return };
            let targets = job
                .processes
                .iter()
                .enumerate()
                .filter(|(_, p)| p.is_live())
                .filter_map(|(i, p)| state.workers.get(&p.worker).map(|w| (i as u32, w.address.clone())))
                .collect();
            (targets, job.attempt)
        };
        // In parallel, each bounded: a hung worker (SIGSTOP) must not hold up the others,
        // nor the restart that is waiting for this.
        let stops = targets.into_iter().map(|(index, address)| async move {
            let stop = async {
                let mut client = self.worker_client(&address).await?;
                let request = StopProcessRequest { job_id: job_id.to_string(), index, kill, attempt, term: self.term };
                client.stop_process(request).await.map(|_| ())
            };
            match tokio::time::timeout(STOP_WITHIN, stop).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(job = job_id, index, error = %e.message(), "could not stop a job process"),
                Err(_) => {
                    tracing::warn!(job = job_id, index, "its worker did not answer a stop within {STOP_WITHIN:?}")
                }
            }
        });
        futures::future::join_all(stops).await;
    }

    /// A worker (`worker`) that rejoined reports the job processes it still runs: those
    /// of a running job's current attempt that the table placed there are adopted (they
    /// go on, no restart); returns the others, which the worker is told to stop. A job
    /// whose every process is accounted for is adopted whole.
    fn adopt(&self, state: &mut State, worker: u64, running: &[RunningProcess]) -> Vec<RunningProcess> {
        let mut stale = Vec::new();
        for process in running {
            let Some(job) = state.jobs.get_mut(&process.job_id) else {
                stale.push(process.clone());
                continue;
            };
            let entry = job.processes.get_mut(process.index as usize).filter(|p| {
                job.state == "running" && p.worker == worker && p.state == "adopting" && job.attempt == process.attempt
            });
            let Some(entry) = entry else {
                stale.push(process.clone());
                continue;
            };
            entry.state = "running";
            if job.processes.iter().all(|p| p.state != "adopting") {
                let text = format!(
                    "attempt {} adopted by the leader of term {}: every process kept running, no restart",
                    job.attempt, self.term
                );
                job.event(&process.job_id, text);
            }
        }
        stale
    }

    /// A new leader waits `within` for the workers to report the processes of the running
    /// jobs; a job with a process still unaccounted for then restarts from its latest
    /// checkpoint (its other processes are stopped first).
    async fn adopt_or_restart(self, within: Duration) {
        tokio::time::sleep(within).await;
        let missing: Vec<(String, String)> = {
            let mut state = self.state();
            let mut missing = Vec::new();
            for (job_id, job) in state.jobs.iter_mut() {
                let mut absent = Vec::new();
                for (index, p) in job.processes.iter_mut().enumerate() {
                    if p.state == "adopting" {
                        p.state = "lost";
                        absent.push(format!("process {index} on worker {}", p.worker));
                    }
                }
                if job.state == "running" && !absent.is_empty() {
                    let cause = format!(
                        "the leader of term {} had no report of {} within {} ms of taking over",
                        self.term,
                        absent.join(", "),
                        within.as_millis()
                    );
                    missing.push((job_id.clone(), cause));
                }
            }
            missing
        };
        for (job_id, cause) in missing {
            tokio::spawn(self.clone().replace_attempt(job_id, cause, false));
        }
    }

    fn status(&self) -> Vec<JobStatus> {
        self.state()
            .jobs
            .iter()
            .map(|(id, j)| JobStatus {
                job_id: id.clone(),
                name: j.request.name.clone(),
                state: j.state.to_string(),
                parallelism: j.request.parallelism,
                message: j.message.clone(),
                artifact_sha256: j.request.artifact_sha256.clone(),
                attempt: j.attempt,
                restarts: j.restarts,
                rescales: j.rescales,
                events: j.events.clone(),
                processes: j
                    .processes
                    .iter()
                    .enumerate()
                    .map(|(i, p)| JobProcess {
                        index: i as u32,
                        worker_id: p.worker,
                        data_address: p.data_address.clone(),
                        state: p.state.to_string(),
                        message: p.message.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every registered worker, with what placement strategies look at.
    fn workers(state: &State) -> Vec<Candidate> {
        state
            .workers
            .iter()
            .map(|(id, w)| {
                let busy =
                    state.jobs.values().flat_map(|j| &j.processes).filter(|p| p.worker == *id && p.is_live()).count()
                        as u32;
                Candidate {
                    worker: *id,
                    free_slots: w.slots.saturating_sub(busy),
                    busy_slots: busy,
                    heartbeat_rtt: w.rtt,
                    cpu_percent: w.cpu_percent,
                }
            })
            .collect()
    }

    /// The workers with a free slot.
    fn candidates(state: &State) -> Vec<Candidate> {
        Self::workers(state).into_iter().filter(|c| c.free_slots > 0).collect()
    }

    /// Starts the job's current attempt: places its processes, has each worker pick a data
    /// address, then starts every process knowing all of them. Returns how many.
    async fn start_attempt(&self, job_id: &str) -> Result<u32, Status> {
        let (request, attempt, chosen, recorded_checkpoint) = {
            let mut state = self.state();
            let candidates = Self::candidates(&state);
            let job = state.jobs.get(job_id).ok_or_else(|| Status::not_found(format!("no job {job_id}")))?;
            let (request, attempt, recorded) = (job.request.clone(), job.attempt, job.recorded_checkpoint);
            if candidates.is_empty() {
                return Err(Status::failed_precondition("no worker has a free slot"));
            }
            let n = (request.parallelism as usize).min(candidates.len());
            let previous: Vec<u64> = job.processes.iter().map(|p| p.worker).collect();
            let placed = crate::placement::place_sticky(&*self.placement, n, &candidates, &previous);
            let chosen: Vec<(u64, String)> = placed
                .iter()
                .filter_map(|(w, _)| state.workers.get(w).map(|entry| (*w, entry.address.clone())))
                .collect();
            let why: Vec<String> = placed
                .iter()
                .enumerate()
                .map(|(i, (w, reason))| format!("process {i} -> worker {w} ({reason})"))
                .collect();
            let job = state.jobs.get_mut(job_id).expect("looked up above");
            job.event(
                job_id,
                format!(
                    "attempt {attempt}: {} processes for parallelism {} placed by {}: {}",
                    chosen.len(),
                    request.parallelism,
                    self.placement.name(),
                    why.join(", ")
                ),
            );
            (request, attempt, chosen, recorded)
        };
        let mut peers = Vec::new();
        for (worker, address) in &chosen {
            let reserved = async {
                let mut client = self.worker_client(address).await?;
                client.reserve_address(ReserveAddressRequest {}).await.map(|r| r.into_inner().address)
            };
            match reserved.await {
                Ok(address) => peers.push(address),
                Err(status) => {
                    // A worker that cannot be reached is lost (the detectors may not have said
                    // so yet): forget it, and let the caller place the attempt again.
                    self.worker_lost(*worker, &format!("unreachable when placing a process: {}", status.message()));
                    return Err(Status::unavailable(format!("worker {worker} is unreachable")));
                }
            }
        }
        {
            let mut state = self.state();
            let job = state.jobs.get_mut(job_id).expect("registered before it starts");
            job.processes = chosen
                .iter()
                .zip(&peers)
                .map(|((worker, _), data)| ProcessEntry {
                    worker: *worker,
                    data_address: data.clone(),
                    state: "starting",
                    message: String::new(),
                })
                .collect();
        }
        // The workers fetch and check the binary in parallel.
        let starts = chosen.iter().enumerate().map(|(index, (_, address))| {
            let start = StartProcessRequest {
                job_id: job_id.to_string(),
                name: request.name.clone(),
                artifact_sha256: request.artifact_sha256.clone(),
                args: request.args.clone(),
                index: index as u32,
                peers: peers.clone(),
                attempt,
                parallelism: request.parallelism,
                graph_fingerprint: request.graph_fingerprint.clone(),
                term: self.term,
                record_checkpoints: self.term != 0,
                recorded_checkpoint,
            };
            async move {
                let mut client = self.worker_client(address).await?;
                client.start_process(start).await.map(|_| index)
            }
        });
        for started in futures::future::join_all(starts).await {
            let index = started?;
            if let Some(p) = self.state().jobs.get_mut(job_id).and_then(|j| j.processes.get_mut(index)) {
                if p.state == "starting" {
                    p.state = "running";
                }
            }
        }
        Ok(chosen.len() as u32)
    }

    /// Has `workers` fetch `artifacts` in the background (spare workers then start a
    /// migrated process without fetching and hashing its binary first).
    async fn prefetch(self, workers: Vec<String>, artifacts: Vec<String>) {
        if artifacts.is_empty() {
            return;
        }
        for address in workers {
            let Ok(Ok(mut client)) = tokio::time::timeout(STOP_WITHIN, self.worker_client(&address)).await else {
                continue;
            };
            for sha in &artifacts {
                let _ = client.prefetch(PrefetchRequest { artifact_sha256: sha.clone() }).await;
            }
        }
    }

    /// Starts the current attempt, placing it again (up to 3 times) when a chosen worker
    /// turns out to be unreachable.
    async fn start_placed(&self, job_id: &str) -> Result<u32, Status> {
        let set_starting = |on: bool| {
            if let Some(job) = self.state().jobs.get_mut(job_id) {
                job.starting = on;
            }
        };
        set_starting(true);
        let mut tries = 0;
        let outcome = loop {
            match self.start_attempt(job_id).await {
                Err(status) if status.code() == tonic::Code::Unavailable && tries < 3 => tries += 1,
                other => break other,
            }
        };
        set_starting(false);
        outcome
    }

    /// The job's attempt failed (`cause`): kill what is left of it, then start the next
    /// attempt on the workers there are, unless the job has restarted too often. Runs as a
    /// task of its own; a job already restarting, cancelled or ended is left alone.
    async fn restart(self, job_id: String, cause: String) {
        self.replace_attempt(job_id, cause, false).await
    }

    /// Ends the job's attempt and starts the next one from the latest checkpoint: after a
    /// failure (`cause`), or with `rescale` to run on more processes (not a failure: it is
    /// not counted against the restarts and waits for no back-off).
    async fn replace_attempt(self, job_id: String, cause: String, rescale: bool) {
        let restart = {
            let mut state = self.state();
            let Some(job) = state.jobs.get_mut(&job_id) else { return };
            if job.state != "running" || (rescale && job.starting) {
                return;
            }
            if rescale {
                job.event(&job_id, format!("attempt {} ends to rescale: {cause}", job.attempt));
            } else {
                job.event(&job_id, format!("attempt {} failed: {cause}", job.attempt));
                tracing::warn!(job = %job_id, attempt = job.attempt, "attempt failed: {cause}");
            }
            job.room_since = None;
            if rescale {
                job.state = "restarting";
                Some((job.attempt, Duration::ZERO))
            } else if job.restarts >= self.max_restarts {
                job.state = "failed";
                job.message = format!("failed after {} restarts: {cause}", job.restarts);
                job.event(&job_id, format!("no restart left (max {}): the job failed", self.max_restarts));
                None
            } else {
                job.state = "restarting";
                // Immediately the first time; then 200 ms, doubling up to 5 s, for restarts in
                // the last minute (a job that fails at once again should not spin).
                job.restarted_at.retain(|t| t.elapsed() < Duration::from_secs(60));
                let recent = job.restarted_at.len() as u32;
                let delay = match recent {
                    0 => Duration::ZERO,
                    n => Duration::from_millis(200 * 2u64.pow((n - 1).min(5))).min(Duration::from_secs(5)),
                };
                Some((job.attempt, delay))
            }
        };
        let Some((attempt, delay)) = restart else {
            self.stop_processes(&job_id, true).await;
            return;
        };
        // An attempt still being started is let finish starting first, so that the stop
        // below reaches all of its processes.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state().jobs.get(&job_id).is_some_and(|j| j.starting) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Fencing: no process of the failed attempt may go on; a process on a lost worker
        // stops by itself (it loses its worker's pulse, or its parent).
        self.stop_processes(&job_id, true).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let settled = {
                let state = self.state();
                state.jobs.get(&job_id).is_none_or(|j| j.attempt != attempt || j.processes.iter().all(|p| !p.is_live()))
            };
            if settled || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(delay).await;
        {
            let mut state = self.state();
            let Some(job) = state.jobs.get_mut(&job_id) else { return };
            if job.state != "restarting" {
                return; // cancelled meanwhile
            }
            job.attempt += 1;
            job.state = "running";
            if rescale {
                job.rescales += 1;
                job.message = format!("rescaled: {cause}");
            } else {
                job.restarts += 1;
                job.restarted_at.push(Instant::now());
                job.message = format!("restarted after: {cause}");
            }
        }
        match self.start_placed(&job_id).await {
            Ok(processes) => tracing::info!(job = %job_id, processes, "attempt started"),
            Err(status) => {
                // The workers changed under the start (one lost, one still holding a slot):
                // the attempt failed like any other, and the next one is placed on what is
                // there then, with the back-off and within the restarts allowed.
                let attempt = self.state().jobs.get(&job_id).map_or(0, |j| j.attempt);
                let cause = format!("could not start attempt {attempt}: {}", status.message());
                Box::pin(self.clone().replace_attempt(job_id, cause, false)).await;
            }
        }
    }

    /// Reactive scale-up: a checkpointed job that runs on fewer processes than its
    /// parallelism allows (it lost a worker and went on with fewer) moves back onto more
    /// once workers with room have been there for `after` (so that a worker that comes and
    /// goes does not make the job restart each time). The next attempt resumes from the
    /// latest checkpoint, as after a failure, exactly once.
    async fn watch_scale_up(self, after: Duration) {
        let mut tick = tokio::time::interval(Duration::from_millis(200).min(after.max(Duration::from_millis(10))));
        loop {
            tick.tick().await;
            let mut due = Vec::new();
            {
                let mut state = self.state();
                let free: Vec<u64> = Self::candidates(&state).iter().map(|c| c.worker).collect();
                for (job_id, job) in state.jobs.iter_mut() {
                    let running = job.processes.iter().filter(|p| p.state == "running").count();
                    let settled = job.state == "running" && !job.starting && running == job.processes.len();
                    let own: std::collections::BTreeSet<u64> = job.processes.iter().map(|p| p.worker).collect();
                    let could = own.len() + free.iter().filter(|w| !own.contains(w)).count();
                    let wanted = (job.request.parallelism as usize).min(could);
                    if !(settled && job.request.checkpointed && wanted > job.processes.len()) {
                        job.room_since = None;
                        continue;
                    }
                    let since = *job.room_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= after {
                        due.push((job_id.clone(), job.processes.len(), wanted));
                    }
                }
            }
            for (job_id, from, to) in due {
                let cause = format!(
                    "workers with room for {to} processes have been there for {} ms; it ran on {from}",
                    after.as_millis()
                );
                tokio::spawn(self.clone().replace_attempt(job_id, cause, true));
            }
        }
    }

    /// The heartbeat detector: every half interval, workers silent for longer than the
    /// timeout are lost.
    async fn watch_heartbeats(self) {
        let mut tick = tokio::time::interval(self.detection.heartbeat_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous_check = Instant::now();
        loop {
            tick.tick().await;
            let timeout = self.detection.heartbeat_timeout;
            let held_up = previous_check.elapsed();
            previous_check = Instant::now();
            if crate::detectors::detector_held_up(held_up, self.detection.heartbeat_interval) {
                let mut state = self.state();
                tracing::warn!(
                    held_up_ms = held_up.as_millis() as u64,
                    workers = state.workers.len(),
                    "this coordinator was stopped or starved for longer than a heartbeat interval: its workers' \
                     silence is its own, so each gets one more timeout before it is declared lost"
                );
                for worker in state.workers.values_mut() {
                    worker.last_heartbeat = worker.last_heartbeat.max(previous_check);
                }
                continue;
            }
            let lost = crate::detectors::silent_workers(
                self.state().workers.iter().map(|(id, w)| (*id, w.last_heartbeat)),
                Instant::now(),
                timeout,
            );
            for (worker, silent) in lost {
                self.worker_lost(
                    worker,
                    &format!(
                        "no heartbeat for {} ms (detector: heartbeat, timeout {} ms)",
                        silent.as_millis(),
                        timeout.as_millis()
                    ),
                );
            }
        }
    }

    /// Worker `worker` is lost (`why`): it is forgotten (a heartbeat it sends later is
    /// answered "unknown", and it stops what it still runs), and every job with a process on
    /// it restarts elsewhere.
    fn worker_lost(&self, worker: u64, why: &str) {
        let mut failed = Vec::new();
        {
            let mut state = self.state();
            if state.workers.remove(&worker).is_none() {
                return;
            }
            tracing::warn!(worker, "worker lost: {why}");
            for (job_id, job) in state.jobs.iter_mut() {
                let mut hit = false;
                for p in job.processes.iter_mut().filter(|p| p.worker == worker) {
                    if p.is_live() {
                        p.state = "lost";
                        p.message = format!("worker {worker} lost");
                        hit = true;
                    }
                }
                if hit {
                    let cause = format!("worker {worker} lost: {why}");
                    job.event(job_id, cause.clone());
                    failed.push((job_id.clone(), cause));
                }
            }
        }
        for (job_id, cause) in failed {
            tokio::spawn(self.clone().restart(job_id, cause));
        }
    }
}

/// Held by a worker's `Connect` stream: dropped when the stream ends, which is when the
/// worker's connection closes.
struct ConnectionGuard {
    service: CoordinatorService,
    worker: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.service.worker_lost(self.worker, "its control connection closed (detector: connection)");
        }
    }
}

type AttachStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<AttachEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        let r = request.into_inner();
        let (id, stale, address) = {
            let mut state = self.state();
            // A worker that ran under an earlier leader keeps its id: the job table names it.
            let rejoins = r.previous_id != 0 && r.previous_id <= state.next_worker;
            let id = if rejoins && !state.workers.contains_key(&r.previous_id) {
                r.previous_id
            } else {
                state.next_worker += 1;
                state.next_worker
            };
            tracing::info!(worker = id, address = %r.address, slots = r.slots, running = r.running.len(), "worker registered");
            let stale = self.adopt(&mut state, id, &r.running);
            // A worker that joins gets the binaries of the running jobs ahead of any failure.
            let running: Vec<String> = state
                .jobs
                .values()
                .filter(|j| matches!(j.state, "running" | "restarting"))
                .map(|j| j.request.artifact_sha256.clone())
                .collect();
            tokio::spawn(self.clone().prefetch(vec![r.address.clone()], running));
            state.workers.insert(
                id,
                WorkerEntry {
                    address: r.address,
                    slots: r.slots,
                    last_heartbeat: Instant::now(),
                    rtt: Duration::ZERO,
                    cpu_percent: 0,
                },
            );
            let address = state.workers[&id].address.clone();
            (id, stale, address)
        };
        for process in stale {
            // Of an attempt this leader does not run: it must not go on.
            let request = StopProcessRequest {
                job_id: process.job_id.clone(),
                index: process.index,
                kill: true,
                attempt: process.attempt,
                term: self.term,
            };
            let coordinator = self.clone();
            let address = address.clone();
            tokio::spawn(async move {
                if let Ok(mut client) = coordinator.worker_client(&address).await {
                    let _ = client.stop_process(request).await;
                }
            });
        }
        // Before the answer: a coordinator restarted later must not give this id again.
        self.persist().await;
        Ok(Response::new(RegisterWorkerReply {
            worker_id: id,
            artifact_store: self.store.location().to_string(),
            heartbeat_interval_ms: self.detection.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: self.detection.heartbeat_timeout.as_millis() as u64,
            term: self.term,
        }))
    }

    type AttachStream = AttachStream;

    async fn attach(&self, request: Request<AttachRequest>) -> Result<Response<AttachStream>, Status> {
        let worker = request.into_inner().worker_id;
        if !self.state().workers.contains_key(&worker) {
            return Err(Status::not_found(format!("worker {worker} is not registered: register first")));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<AttachEvent>(1);
        let guard = ConnectionGuard { service: self.clone(), worker };
        // Never yields: the stream only ends when the connection does, and drops the guard.
        let stream = futures::stream::unfold((rx, tx, guard), |(mut rx, tx, guard)| async move {
            rx.recv().await.map(|event| (Ok(event), (rx, tx, guard)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        let r = request.into_inner();
        let mut state = self.state();
        let known = match state.workers.get_mut(&r.worker_id) {
            Some(w) => {
                w.last_heartbeat = Instant::now();
                w.rtt = Duration::from_micros(r.rtt_us);
                w.cpu_percent = r.cpu_percent;
                true
            }
            None => false,
        };
        Ok(Response::new(HeartbeatReply { known, term: self.term }))
    }

    async fn upload_artifact(
        &self,
        request: Request<Streaming<ArtifactChunk>>,
    ) -> Result<Response<UploadArtifactReply>, Status> {
        let mut stream = request.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        let len = bytes.len() as u64;
        let sha = self.store.put(bytes).await.map_err(Status::internal)?;
        tracing::info!(sha256 = %sha, bytes = len, "artifact stored");
        Ok(Response::new(UploadArtifactReply { sha256: sha, bytes: len }))
    }

    async fn submit_job(&self, request: Request<SubmitJobRequest>) -> Result<Response<SubmitJobReply>, Status> {
        let r = request.into_inner();
        let r_artifact = r.artifact_sha256.clone();
        if r.parallelism == 0 {
            return Err(Status::invalid_argument("the parallelism must be at least 1"));
        }
        if r.graph_fingerprint.len() != 16 || !r.graph_fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "the graph fingerprint {:?} is not 16 hex digits: submit with `sluice submit`, which builds the \
                 job's graph to plan it",
                r.graph_fingerprint
            )));
        }
        if !self.store.contains(&r.artifact_sha256).await {
            return Err(Status::failed_precondition(format!(
                "no artifact {} in the store: upload the binary first (sluice submit does)",
                r.artifact_sha256
            )));
        }
        let job_id = {
            let mut state = self.state();
            if state.workers.is_empty() {
                return Err(Status::failed_precondition("no worker has registered: start one with `sluice worker`"));
            }
            state.next_job += 1;
            let id = format!("job-{}", state.next_job);
            state.jobs.insert(
                id.clone(),
                JobEntry {
                    state: "running",
                    message: String::new(),
                    processes: Vec::new(),
                    request: r.clone(),
                    attempt: 1,
                    starting: false,
                    restarts: 0,
                    restarted_at: Vec::new(),
                    submitted: Instant::now(),
                    events: Vec::new(),
                    room_since: None,
                    rescales: 0,
                    recorded_checkpoint: 0,
                },
            );
            id
        };
        self.persist().await;
        match self.start_placed(&job_id).await {
            Ok(processes) => {
                tracing::info!(job = %job_id, processes, "job started");
                let workers: Vec<String> = self.state().workers.values().map(|w| w.address.clone()).collect();
                tokio::spawn(self.clone().prefetch(workers, vec![r_artifact]));
                Ok(Response::new(SubmitJobReply { job_id, processes }))
            }
            Err(status) => {
                if let Some(job) = self.state().jobs.get_mut(&job_id) {
                    job.state = "failed";
                    job.message = format!("could not start: {}", status.message());
                }
                self.stop_processes(&job_id, true).await;
                Err(status)
            }
        }
    }

    async fn list_jobs(&self, _request: Request<ListJobsRequest>) -> Result<Response<ListJobsReply>, Status> {
        Ok(Response::new(ListJobsReply { jobs: self.status() }))
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<Response<CancelJobReply>, Status> {
        let r = request.into_inner();
        if r.savepoint {
            // Process 0 stops the job (every process drains) and keeps its final checkpoint.
            let was_running = {
                let mut state = self.state();
                let job =
                    state.jobs.get_mut(&r.job_id).ok_or_else(|| Status::not_found(format!("no job {}", r.job_id)))?;
                let running = job.state == "running";
                if running {
                    job.state = "cancelling";
                }
                running
            };
            let outcome = self.savepoint_of(&r.job_id, true, timeout_of(r.timeout_ms)).await;
            let mut state = self.state();
            let job = state.jobs.get_mut(&r.job_id).ok_or_else(|| Status::not_found(format!("no job {}", r.job_id)))?;
            let path = match outcome {
                Ok(path) => path,
                Err(status) => {
                    // Refused (no checkpointing, say): the job was not stopped.
                    if was_running && job.state == "cancelling" && job.processes.iter().any(|p| p.state == "running") {
                        job.state = "running";
                    }
                    return Err(status);
                }
            };
            return Ok(Response::new(CancelJobReply { state: job.state.to_string(), savepoint: path }));
        }
        {
            let mut state = self.state();
            let job = state.jobs.get_mut(&r.job_id).ok_or_else(|| Status::not_found(format!("no job {}", r.job_id)))?;
            if job.state == "restarting" {
                // Between attempts: nothing runs, and no next attempt starts.
                job.state = "cancelled";
                job.event(&r.job_id, "cancelled between attempts".into());
                return Ok(Response::new(CancelJobReply { state: job.state.to_string(), savepoint: String::new() }));
            }
            if job.state != "running" {
                return Ok(Response::new(CancelJobReply { state: job.state.to_string(), savepoint: String::new() }));
            }
            job.state = "cancelling";
            job.event(&r.job_id, "cancel asked".into());
        }
        self.stop_processes(&r.job_id, false).await;
        Ok(Response::new(CancelJobReply { state: "cancelling".into(), savepoint: String::new() }))
    }

    async fn take_savepoint(
        &self,
        request: Request<TakeSavepointRequest>,
    ) -> Result<Response<TakeSavepointReply>, Status> {
        let r = request.into_inner();
        let path = self.savepoint_of(&r.job_id, false, timeout_of(r.timeout_ms)).await?;
        Ok(Response::new(TakeSavepointReply { path }))
    }

    async fn record_checkpoint(
        &self,
        request: Request<RecordCheckpointRequest>,
    ) -> Result<Response<RecordCheckpointReply>, Status> {
        let r = request.into_inner();
        if r.term != self.term {
            return Err(Status::failed_precondition(format!(
                "this coordinator leads in term {}, the request is for term {}",
                self.term, r.term
            )));
        }
        {
            let state = self.state();
            let job = state.jobs.get(&r.job_id).ok_or_else(|| Status::not_found(format!("no job {}", r.job_id)))?;
            if job.attempt != r.attempt || !matches!(job.state, "running" | "cancelling") {
                return Err(Status::failed_precondition(format!(
                    "attempt {} of {} is not its running attempt ({}, {})",
                    r.attempt, r.job_id, job.attempt, job.state
                )));
            }
            if r.checkpoint <= job.recorded_checkpoint {
                return Ok(Response::new(RecordCheckpointReply {}));
            }
        }
        // In etcd first: a checkpoint is complete once recorded under this term.
        if let Some(Meta::Etcd(leader)) = &self.table {
            leader.record_checkpoint(&r.job_id, r.checkpoint).await.map_err(Status::unavailable)?;
        }
        if let Some(job) = self.state().jobs.get_mut(&r.job_id) {
            job.recorded_checkpoint = job.recorded_checkpoint.max(r.checkpoint);
        }
        Ok(Response::new(RecordCheckpointReply {}))
    }

    async fn report_detection(&self, request: Request<DetectionRequest>) -> Result<Response<DetectionReply>, Status> {
        let r = request.into_inner();
        let mut state = self.state();
        if let Some(job) = state.jobs.get_mut(&r.job_id) {
            // A line from an attempt that has been replaced since is history too, but
            // not of the attempt running now: it says which one it came from.
            job.event(&r.job_id, format!("attempt {}, process {}: {}", r.attempt, r.index, r.text));
        }
        Ok(Response::new(DetectionReply {}))
    }

    async fn process_exited(
        &self,
        request: Request<ProcessExitedRequest>,
    ) -> Result<Response<ProcessExitedReply>, Status> {
        let r = request.into_inner();
        let restart = {
            let mut state = self.state();
            let Some(job) = state.jobs.get_mut(&r.job_id) else {
                return Ok(Response::new(ProcessExitedReply {}));
            };
            if r.attempt != job.attempt {
                // A process of an attempt already replaced: nothing to decide.
                return Ok(Response::new(ProcessExitedReply {}));
            }
            let mut worker = 0;
            if let Some(p) = job.processes.get_mut(r.index as usize) {
                if p.state != "lost" {
                    p.state = if r.success { "finished" } else { "failed" };
                }
                p.message = r.message.clone();
                worker = p.worker;
            }
            if r.permanent && job.state == "running" {
                // Restarting cannot help: the job fails now, and what is left of it stops.
                job.state = "failed";
                job.message = format!("process {} on worker {worker} cannot run: {}", r.index, r.message);
                job.event(&r.job_id, format!("attempt {} failed and is not restarted: {}", job.attempt, job.message));
                tracing::error!(job = %r.job_id, "{}; not restarted", job.message);
                drop(state);
                let coordinator = self.clone();
                let job_id = r.job_id.clone();
                tokio::spawn(async move { coordinator.stop_processes(&job_id, true).await });
                return Ok(Response::new(ProcessExitedReply {}));
            }
            // A process of the failed attempt that failed by itself (an exit status, not the
            // kill that ends the attempt) may hold the first cause: the history keeps it.
            if !r.success && job.state == "restarting" && r.message.starts_with("exit status") {
                job.event(
                    &r.job_id,
                    format!(
                        "process {} of attempt {} on worker {worker} also failed: {}",
                        r.index, r.attempt, r.message
                    ),
                );
            }
            let restart = (!r.success && job.state == "running").then(|| {
                format!(
                    "process {} on worker {worker} failed (detector: process exit): {}",
                    r.index,
                    if r.message.is_empty() { "no message" } else { &r.message }
                )
            });
            let all_exited = job.processes.iter().all(|p| !p.is_live());
            if all_exited && restart.is_none() {
                let ended = match job.state {
                    "running" => Some("finished"),
                    "cancelling" => Some("cancelled"),
                    _ => None,
                };
                if let Some(ended) = ended {
                    job.state = ended;
                    job.event(&r.job_id, format!("attempt {} ended: the job is {ended}", job.attempt));
                }
            }
            restart
        };
        if let Some(cause) = restart {
            tokio::spawn(self.clone().restart(r.job_id.clone(), cause));
        }
        Ok(Response::new(ProcessExitedReply {}))
    }
}

/// Runs the coordinator until the process ends. With HA it first stands by until it
/// leads.
pub async fn run(config: CoordinatorConfig) -> Result<(), String> {
    let store = ArtifactStore::open(&config.store)?;
    let placement: Arc<dyn PlacementStrategy> =
        Arc::from(crate::placement::strategy(&config.placement, placement_seed())?);
    let bind = || async {
        tokio::net::TcpListener::bind(config.listen).await.map_err(|e| format!("listening on {}: {e}", config.listen))
    };
    // The leader key holds the address workers are to use: with port 0 it is known only
    // once bound. A fixed port is bound only once leading, so that a standby started on a
    // dead leader's address does not accept (and hold) the workers' calls meanwhile.
    let mut listener = match config.listen.port() {
        0 => Some(bind().await?),
        _ => None,
    };
    let address = match &listener {
        Some(l) => l.local_addr().map_err(|e| e.to_string())?,
        None => config.listen,
    };
    let (table, term) = match &config.ha {
        Some(ha) => {
            let leadership = crate::ha::lead(ha, &address.to_string()).await?;
            let term = leadership.term;
            (Some(Meta::Etcd(Box::new(leadership))), term)
        }
        None => (config.meta_dir.as_deref().map(crate::jobtable::JobTable::open).transpose()?.map(Meta::Local), 0),
    };
    let listener = match listener.take() {
        Some(l) => l,
        None => bind().await?,
    };
    let adopt = config.ha.is_some();
    let mut state = State::default();
    let mut resume = Vec::new();
    let mut adopting = false;
    if let Some(saved) = match &table {
        Some(meta) => meta.load().await?,
        None => None,
    } {
        state = State::from_table(&saved, adopt)?;
        for (id, job) in state.jobs.iter_mut() {
            match job.state {
                "running" if adopt && !job.processes.is_empty() => {
                    adopting = true;
                    job.event(id, format!("the leader of term {term} took over: adopting attempt {}", job.attempt));
                }
                "running" | "restarting" | "starting" => {
                    job.state = "restarting";
                    resume.push(id.clone());
                }
                "cancelling" => {
                    job.state = "cancelled";
                    job.event(id, "the coordinator restarted while the job was being cancelled: cancelled".into());
                }
                _ => {}
            }
        }
        tracing::info!(jobs = state.jobs.len(), resuming = resume.len(), adopting, "job table loaded");
    }
    if let Some(Meta::Etcd(leader)) = &table {
        for (job, id) in leader.recorded_checkpoints().await? {
            if let Some(entry) = state.jobs.get_mut(&job) {
                entry.recorded_checkpoint = entry.recorded_checkpoint.max(id);
            }
        }
    }
    let service = CoordinatorService {
        state: Arc::new(Mutex::new(state)),
        table,
        term,
        store,
        secret: config.secret.clone(),
        ca: config.tls.as_ref().map(ClusterTls::ca),
        detection: config.detection,
        placement,
        max_restarts: config.max_restarts,
    };
    tokio::spawn(service.clone().watch_heartbeats());
    tokio::spawn(service.clone().keep_table());
    if !resume.is_empty() {
        tokio::spawn(service.clone().resume_jobs(resume));
    }
    // Serving from here on: with HA, the workers may join now.
    if let Some(Meta::Etcd(leader)) = &service.table {
        leader.serving(&address.to_string()).await?;
    }
    if adopting {
        tokio::spawn(service.clone().adopt_or_restart(config.adopt_within));
    }
    if let Some(after) = config.scale_up_after {
        tokio::spawn(service.clone().watch_scale_up(after));
    }
    if let Some(http) = config.http {
        serve_http(http, service.clone(), config.tls.as_ref().map(|t| t.blocking().clone()))?;
    }
    tracing::info!(address = %address, tls = config.tls.is_some(), term, pid = std::process::id(), "coordinator listening");
    let server = CoordinatorServer::with_interceptor(service, config.secret.check());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server()).map_err(|e| format!("the coordinator's TLS settings: {e}"))?;
    }
    builder
        .add_service(server)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| format!("the coordinator's gRPC server on {address}: {e}"))
}

/// The random placement's seed: the time, printed so that a run can be repeated.
fn placement_seed() -> u64 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    tracing::debug!(seed, "placement seed");
    seed
}

/// Serves `GET /jobs` (the jobs as JSON) on `address`, on a thread of its own; HTTPS with
/// `tls`.
fn serve_http(address: SocketAddr, service: CoordinatorService, tls: Option<sluice_net::Tls>) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(address).map_err(|e| format!("HTTP status on {address}: {e}"))?;
    std::thread::Builder::new()
        .name("sluice:http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let peer = stream.peer_addr().ok();
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = match &tls {
                    None => answer_http(stream, peer, &service),
                    Some(tls) => tls
                        .server()
                        .and_then(|session| sluice_net::tls::TlsStream::handshake(session, stream))
                        .and_then(|stream| answer_http(stream, peer, &service)),
                };
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn answer_http(
    stream: impl std::io::Read + std::io::Write,
    peer: Option<SocketAddr>,
    service: &CoordinatorService,
) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorized = service.secret.accepts_header(value.trim());
            }
        }
    }
    let (status, body) = if !authorized {
        tracing::warn!(?peer, "refused an HTTP status request without the cluster secret");
        ("401 Unauthorized", "{\"error\":\"send the cluster secret as Authorization: Bearer <secret>\"}".to_string())
    } else if request_line.starts_with("GET /jobs ") {
        let jobs: Vec<serde_json::Value> = service
            .status()
            .into_iter()
            .map(|j| {
                serde_json::json!({
                    "job_id": j.job_id, "name": j.name, "state": j.state, "parallelism": j.parallelism,
                    "message": j.message, "artifact_sha256": j.artifact_sha256,
                    "attempt": j.attempt, "restarts": j.restarts, "rescales": j.rescales, "events": j.events,
                    "processes": j.processes.iter().map(|p| serde_json::json!({
                        "index": p.index, "worker_id": p.worker_id, "data_address": p.data_address,
                        "state": p.state, "message": p.message,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        ("200 OK", serde_json::to_string(&serde_json::json!({ "jobs": jobs })).unwrap_or_default())
    } else if request_line.starts_with("GET /workers ") {
        let state = service.state();
        let workers: Vec<serde_json::Value> = CoordinatorService::workers(&state)
            .into_iter()
            .map(|c| {
                let w = &state.workers[&c.worker];
                serde_json::json!({
                    "worker_id": c.worker, "address": w.address, "slots": w.slots, "busy_slots": c.busy_slots,
                    "heartbeat_age_ms": w.last_heartbeat.elapsed().as_millis() as u64,
                    "heartbeat_rtt_us": c.heartbeat_rtt.as_micros() as u64, "cpu_percent": c.cpu_percent,
                })
            })
            .collect();
        drop(state);
        ("200 OK", serde_json::to_string(&serde_json::json!({ "workers": workers })).unwrap_or_default())
    } else {
        ("404 Not Found", "{\"error\":\"GET /jobs or GET /workers\"}".to_string())
    };
    let stream = reader.get_mut();
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
