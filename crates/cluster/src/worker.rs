//! A worker: registers with the coordinator, sends a heartbeat every 200 ms, and starts
//! the job processes it is given. To start one it fetches the job's binary from the
//! artifact store, checks its SHA-256 (a mismatch is refused), and runs it with the job's
//! arguments and its share of the job in the environment (`sluice_runtime::processes`):
//! index, every peer's data address, the secret, the attempt. Each line the job process
//! writes to stderr reaches the worker's stderr prefixed with the job and process; when
//! the process exits, the worker tells the coordinator how.

use crate::artifacts::ArtifactStore;
use crate::auth::{AuthedChannel, ClusterTls, Secret};
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::worker_server::{Worker, WorkerServer};
use crate::proto::*;
use sluice_runtime::processes::PULSE_TIMEOUT;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How a worker is started.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The coordinator's gRPC address.
    pub coordinator: String,
    /// The gRPC address this worker listens on.
    pub listen: SocketAddr,
    /// Job processes this worker runs at most.
    pub slots: u32,
    /// Where fetched binaries are cached.
    pub cache: PathBuf,
    /// The cluster secret.
    pub secret: Secret,
    /// TLS for its server, its calls to the coordinator and its job processes' data
    /// connections, if configured.
    pub tls: Option<ClusterTls>,
    /// Coordinator HA: the leader is found in etcd (and found again when it stops
    /// answering); `coordinator` is then not used.
    pub ha: Option<crate::ha::HaConfig>,
}

/// The coordinator this worker reports to now: replaced when a new leader takes over.
type Leader = Arc<Mutex<CoordinatorClient<AuthedChannel>>>;

/// The job processes this worker runs, by (job, attempt, process index).
type Processes = Arc<Mutex<HashMap<(String, u64, u32), Child>>>;

/// How often a worker tells its job processes it is alive (a byte on their stdin): a job
/// process that hears nothing for [`PULSE_TIMEOUT`] stops
/// itself, so that a worker that hangs (SIGSTOP, a frozen machine) has no process left
/// writing for an attempt the coordinator has replaced.
const PULSE_EVERY: Duration = Duration::from_millis(50);

/// The text of a job process's log line that names the detector that fired, without the
/// log's time stamp and level: what goes into the job's history. Lines without a detector
/// give `None`.
fn detection_of(line: &str) -> Option<String> {
    if !line.contains("(detector: ") {
        return None;
    }
    let mut text = line.trim();
    // `2026-12-03T06:48:32.764578Z  WARN ...`: the stamp, then the level.
    if let Some((stamp, rest)) = text.split_once("Z ") {
        if stamp.len() >= 19 && stamp.starts_with(|c: char| c.is_ascii_digit()) && !stamp.contains(' ') {
            text = rest.trim_start();
            for level in ["ERROR ", "WARN ", "INFO ", "DEBUG ", "TRACE "] {
                if let Some(rest) = text.strip_prefix(level) {
                    text = rest.trim_start();
                    break;
                }
            }
        }
    }
    Some(text.to_string())
}

/// What the pulse thread does on one turn.
#[derive(Debug, PartialEq, Eq)]
enum PulseTurn {
    /// Tells every job process that its worker is alive.
    Pulse,
    /// Skips this turn: the coordinator has not answered for a while (without HA).
    Hold,
    /// Closes every job process's pulse for good: this worker was stopped or starved.
    Release,
}

/// Decides a pulse turn from the time since the previous turn, the time since the
/// coordinator last answered a heartbeat, and (without HA) after how long without an
/// answer the processes must be left to stop.
///
/// - The previous turn longer ago than the processes' [`PULSE_TIMEOUT`]: this worker was
///   frozen (SIGSTOP, a paused machine) or starved. Its processes, by their own rule, are
///   stale by now; but a process frozen with it would take a pulse sent now as fresh, and
///   go on for an attempt the coordinator may have replaced meanwhile. So their pulses end.
/// - Without HA, no answer from the coordinator for its heartbeat timeout less the pulse
///   timeout: the coordinator (if it runs) is about to declare this worker lost and place
///   its processes elsewhere; a worker cut off from it (a partition) must not keep a whole
///   attempt going on its own, committing beside the next one. Holding the pulse makes the
///   processes stop by the time the coordinator gives up on the worker, as Flink's task
///   managers fail their tasks when the job manager's heartbeats time out. With HA,
///   workers keep their processes while no leader answers: a checkpoint is complete only
///   once the leader records it in etcd, so nothing of theirs is committed meanwhile.
fn pulse_turn(since_last_turn: Duration, since_contact: Duration, cut_off_after: Option<Duration>) -> PulseTurn {
    if since_last_turn > PULSE_TIMEOUT {
        PulseTurn::Release
    } else if cut_off_after.is_some_and(|after| since_contact > after) {
        PulseTurn::Hold
    } else {
        PulseTurn::Pulse
    }
}

/// With HA: a worker that sees a new leader in etcd but cannot join it for this long stops
/// its job processes. The new leader restarts a job whose processes it cannot account for
/// after its adoption window (`--adopt-within-ms`, at least 2 s, 3 s by default), so by
/// then no process of the old attempt runs beside the new one.
pub const ORPHANED_AFTER: Duration = Duration::from_secs(1);

/// The folder of the worker's cache with local copies of checkpointed state.
const LOCAL_STATE: &str = "local-state";

/// The worker service.
#[derive(Clone)]
struct WorkerService {
    config: WorkerConfig,
    store: ArtifactStore,
    processes: Processes,
    coordinator: Leader,
    /// The highest leader term this worker has seen; commands of a lower one are refused.
    term: Arc<std::sync::atomic::AtomicU64>,
    runtime: tokio::runtime::Handle,
}

impl WorkerService {
    /// Refuses a command of a deposed leader (a term below the highest seen).
    fn check_term(&self, term: u64) -> Result<(), Status> {
        let highest = self.term.fetch_max(term, std::sync::atomic::Ordering::SeqCst).max(term);
        if term < highest {
            tracing::warn!(term, highest, "refused a command of a deposed coordinator");
            return Err(Status::failed_precondition(format!(
                "a command of leader term {term}, but the leader's term is {highest}: refused (fencing)"
            )));
        }
        Ok(())
    }

    fn control_dir(&self, job_id: &str, index: u32) -> PathBuf {
        self.config.cache.join("control").join(format!("{job_id}-{index}"))
    }

    /// Where the job's processes on this worker keep local copies of their checkpointed
    /// state (task-local recovery): one folder per job, shared by its attempts, so that a
    /// process restarted here reads its state from this disk instead of the store.
    fn local_state_dir(&self, job_id: &str) -> PathBuf {
        self.config.cache.join(LOCAL_STATE).join(job_id)
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn prefetch(&self, request: Request<PrefetchRequest>) -> Result<Response<PrefetchReply>, Status> {
        let sha = request.into_inner().artifact_sha256;
        let (store, cache) = (self.store.clone(), self.config.cache.clone());
        tokio::spawn(async move {
            match store.fetch(&sha, &cache).await {
                Ok(_) => tracing::debug!(sha256 = %sha, "artifact prefetched"),
                Err(e) => tracing::warn!(sha256 = %sha, error = %e, "could not prefetch an artifact"),
            }
        });
        Ok(Response::new(PrefetchReply {}))
    }

    async fn savepoint(&self, request: Request<SavepointRequest>) -> Result<Response<SavepointReply>, Status> {
        let r = request.into_inner();
        self.check_term(r.term)?;
        let key = (r.job_id.clone(), r.attempt, r.index);
        if !self.processes.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key) {
            return Err(Status::not_found(format!(
                "this worker runs no process {} of {} attempt {}",
                r.index, r.job_id, r.attempt
            )));
        }
        let answers = sluice_checkpoint::SavepointBox::at(self.control_dir(&r.job_id, r.index));
        let timeout = Duration::from_millis(r.timeout_ms.max(1));
        let processes = self.processes.clone();
        let path = tokio::task::spawn_blocking(move || {
            let alive = || processes.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key);
            let answer = answers.request(r.stop)?;
            answers.wait(&answer, timeout, &alive)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::failed_precondition)?;
        Ok(Response::new(SavepointReply { path }))
    }

    async fn reserve_address(
        &self,
        _request: Request<ReserveAddressRequest>,
    ) -> Result<Response<ReserveAddressReply>, Status> {
        // The kernel picks a free port on the worker's host; the job process listens there.
        let probe =
            std::net::TcpListener::bind((self.config.listen.ip(), 0)).map_err(|e| Status::internal(e.to_string()))?;
        let address = probe.local_addr().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ReserveAddressReply { address: address.to_string() }))
    }

    async fn start_process(
        &self,
        request: Request<StartProcessRequest>,
    ) -> Result<Response<StartProcessReply>, Status> {
        let r = request.into_inner();
        self.check_term(r.term)?;
        {
            // Fencing here too: a process of an older attempt of this job (one whose stop
            // never reached this worker, as when it was declared lost and joined again)
            // gives its slot to the newer attempt.
            let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
            let stale: Vec<_> = processes
                .keys()
                .filter(|(job, attempt, _)| *job == r.job_id && *attempt < r.attempt)
                .cloned()
                .collect();
            for key in stale {
                if let Some(mut child) = processes.remove(&key) {
                    tracing::warn!(job = %key.0, attempt = key.1, process = key.2, "stopping a process of a replaced attempt");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if self.processes.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.config.slots as usize {
            return Err(Status::resource_exhausted(format!(
                "all {} slots of this worker are taken",
                self.config.slots
            )));
        }
        let binary = self.store.fetch(&r.artifact_sha256, &self.config.cache).await.map_err(|e| {
            tracing::error!(job = %r.job_id, error = %e, "refused to start a job process");
            Status::failed_precondition(e)
        })?;
        // The folder through which this worker asks the process for savepoints (left
        // behind at the exit, so that an answer written last is still read).
        let control = self.control_dir(&r.job_id, r.index);
        let _ = std::fs::remove_dir_all(&control);
        std::fs::create_dir_all(&control)
            .map_err(|e| Status::internal(format!("creating the control folder {}: {e}", control.display())))?;
        let mut command = Command::new(&binary);
        command
            .args(&r.args)
            .args(["--parallelism", &r.parallelism.to_string()])
            .env(sluice_runtime::processes::ENV_PROCESS, r.index.to_string())
            .env(sluice_runtime::processes::ENV_PEERS, r.peers.join(","))
            .env(sluice_runtime::processes::ENV_SECRET, self.config.secret.expose())
            .env(sluice_runtime::processes::ENV_ATTEMPT, r.attempt.to_string())
            .env(sluice_runtime::processes::ENV_EXIT_WITH_PARENT, std::process::id().to_string())
            .env(sluice_runtime::processes::ENV_CONTROL_DIR, &control)
            .env(sluice_runtime::processes::ENV_LOCAL_STATE_DIR, self.local_state_dir(&r.job_id))
            .env(sluice_runtime::processes::ENV_PULSE, "stdin")
            .env(sluice_runtime::processes::ENV_GRAPH_FINGERPRINT, &r.graph_fingerprint)
            .envs(self.config.tls.iter().flat_map(|t| t.files().env()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if r.record_checkpoints {
            command
                .env(sluice_runtime::processes::ENV_RECORD_CHECKPOINTS, "1")
                .env(sluice_runtime::processes::ENV_RECORDED_CHECKPOINT, r.recorded_checkpoint.to_string());
        }
        let mut child = command.spawn().map_err(|e| Status::internal(format!("starting {}: {e}", binary.display())))?;
        tracing::info!(job = %r.job_id, process = r.index, pid = child.id(), "job process started");
        let stderr = child.stderr.take();
        let key = (r.job_id.clone(), r.attempt, r.index);
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), child);
        let (processes, coordinator, runtime) =
            (self.processes.clone(), self.coordinator.clone(), self.runtime.clone());
        let label = format!("[{} '{}' process {}]", r.job_id, r.name, r.index);
        let attempt = r.attempt;
        std::thread::Builder::new()
            .name(format!("sluice:job-{}", r.index))
            .spawn(move || {
                // Forward the job process's log, keeping its last line for a failure report
                // and sending the detections that do not end it to the job's history.
                let mut last: Option<String> = None;
                if let Some(stderr) = stderr {
                    for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                        eprintln!("{label} {line}");
                        if let Some(text) = detection_of(&line) {
                            let mut client = coordinator.lock().unwrap_or_else(|e| e.into_inner()).clone();
                            let report = DetectionRequest { job_id: key.0.clone(), attempt, index: key.2, text };
                            runtime.spawn(async move {
                                if let Err(e) = client.report_detection(report).await {
                                    tracing::warn!(error = %e.message(), "could not report a detection to the coordinator");
                                }
                            });
                        }
                        last = Some(line);
                    }
                }
                let status = loop {
                    let mut map = processes.lock().unwrap_or_else(|e| e.into_inner());
                    match map.get_mut(&key).map(|c| c.try_wait()) {
                        Some(Ok(Some(status))) => {
                            map.remove(&key);
                            break Some(status);
                        }
                        Some(Ok(None)) => {}
                        _ => break None,
                    }
                    drop(map);
                    std::thread::sleep(Duration::from_millis(20));
                };
                let success = status.is_some_and(|s| s.success());
                let permanent = status.and_then(|s| s.code()) == Some(sluice_runtime::processes::EXIT_PERMANENT);
                let message = match status {
                    Some(s) if s.success() => String::new(),
                    // The last line is the job's own account of its failure (with its
                    // causes); the lines before it mostly repeat it from lower layers.
                    Some(s) => match &last {
                        Some(line) => format!("{s}: {line}"),
                        None => format!("{s} (it wrote nothing to stderr)"),
                    },
                    None => "lost track of the process".into(),
                };
                tracing::info!(job = %key.0, attempt, process = key.2, success, "job process exited");
                let report =
                    ProcessExitedRequest { job_id: key.0.clone(), index: key.2, success, message, attempt, permanent };
                // Until a coordinator hears it (with HA, the next leader, once it leads):
                // an exit that no leader heard would leave the job waiting for ever.
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                loop {
                    let mut client = coordinator.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    match runtime.block_on(client.process_exited(report.clone())) {
                        Ok(_) => break,
                        Err(e) if std::time::Instant::now() < deadline => {
                            tracing::debug!(job = %key.0, error = %e, "the exit report did not get through; retrying");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => {
                            tracing::warn!(job = %key.0, error = %e, "could not tell the coordinator that a process exited");
                            break;
                        }
                    }
                }
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(StartProcessReply {}))
    }

    async fn stop_process(&self, request: Request<StopProcessRequest>) -> Result<Response<StopProcessReply>, Status> {
        let r = request.into_inner();
        self.check_term(r.term)?;
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = processes.get_mut(&(r.job_id.clone(), r.attempt, r.index)) {
            if r.kill {
                let _ = child.kill();
            } else {
                // Ctrl-C: the job's sources stop and it drains.
                let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            }
        }
        Ok(Response::new(StopProcessReply {}))
    }
}

/// Registers with the coordinator.
async fn register(
    coordinator: &mut CoordinatorClient<AuthedChannel>,
    registration: &RegisterWorkerRequest,
    address: &str,
) -> Result<RegisterWorkerReply, String> {
    let reply = coordinator
        .register_worker(registration.clone())
        .await
        .map_err(|e| format!("registering with the coordinator at {address}: {}", e.message()))?
        .into_inner();
    tracing::info!(
        worker = reply.worker_id,
        address = %registration.address,
        pid = std::process::id(),
        "registered with the coordinator"
    );
    // Held open while this worker lives: its closing tells the coordinator at once.
    let mut connection = coordinator
        .attach(AttachRequest { worker_id: reply.worker_id })
        .await
        .map_err(|e| format!("connecting to the coordinator at {address}: {}", e.message()))?
        .into_inner();
    let worker = reply.worker_id;
    tokio::spawn(async move {
        while let Ok(Some(_)) = connection.message().await {}
        tracing::debug!(worker, "the connection to the coordinator ended");
    });
    Ok(reply)
}

/// The coordinator to report to: the one configured, or with HA the leader named in etcd
/// (waiting up to 60 s for one to lead). Returns its client and address.
async fn find_coordinator(
    config: &WorkerConfig,
    etcd: Option<&mut etcd_client::Client>,
) -> Result<(CoordinatorClient<AuthedChannel>, String), String> {
    let ca = config.tls.as_ref().map(ClusterTls::ca);
    let address = match (&config.ha, etcd) {
        (Some(ha), Some(etcd)) => {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                match crate::ha::current_leader(etcd, ha).await {
                    Ok(Some((address, _term))) => break address,
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "looking for the leader"),
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!("no coordinator leads in etcd ({}) after 60 s", ha.endpoints.join(",")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        _ => config.coordinator.clone(),
    };
    let channel = crate::auth::connect(&address, ca.as_ref(), Duration::from_secs(30)).await?;
    Ok((CoordinatorClient::with_interceptor(channel, config.secret.attach()), address))
}

/// With HA: carries process 0's requests to record a checkpoint (files in its control
/// folder, [`sluice_runtime::processes::record_checkpoint`]) to the leader, and its answer
/// back. Polls every 2 ms: a checkpoint waits for this.
fn carry_checkpoint_records(
    control: PathBuf,
    processes: Processes,
    leader: Leader,
    term: Arc<std::sync::atomic::AtomicU64>,
    runtime: tokio::runtime::Handle,
) {
    let answer = |folder: &std::path::Path, name: &str, text: &str| {
        let aside = folder.join(format!("{name}.partial"));
        let _ = std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, folder.join(name)));
    };
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let Ok(folders) = std::fs::read_dir(&control) else { continue };
        for folder in folders.flatten().map(|f| f.path()) {
            let Ok(files) = std::fs::read_dir(&folder) else { continue };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_prefix("record-").and_then(|n| n.strip_suffix(".request")) else { continue };
                let Ok(checkpoint) = id.parse::<u64>() else { continue };
                let taken = folder.join(format!("record-{id}.taken"));
                if std::fs::rename(file.path(), &taken).is_err() {
                    continue;
                }
                // The control folder is `<job>-<index>`; the process is the newest attempt's.
                let dir = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let Some((job_id, index)) = dir.rsplit_once('-') else { continue };
                let index: u32 = index.parse().unwrap_or(u32::MAX);
                let attempt = processes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .filter(|(job, _, i)| job == job_id && *i == index)
                    .map(|(_, attempt, _)| *attempt)
                    .max();
                let Some(attempt) = attempt else { continue };
                let (leader, term) = (leader.clone(), term.clone());
                let (folder, answer) = (folder.clone(), answer);
                let job_id = job_id.to_string();
                runtime.spawn(async move {
                    // Again while no coordinator answers (the leader died, the next one is
                    // not elected yet): the checkpoint is recorded as soon as one leads,
                    // within the process's wait. A leader's refusal is final.
                    let deadline = tokio::time::Instant::now() + RECORD_TRIES_FOR;
                    let outcome = loop {
                        let request = RecordCheckpointRequest {
                            job_id: job_id.clone(),
                            attempt,
                            checkpoint,
                            term: term.load(std::sync::atomic::Ordering::SeqCst),
                        };
                        let mut client = leader.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let call = tokio::time::timeout(RECORD_CALL_WITHIN, client.record_checkpoint(request));
                        let reason = match call.await {
                            Ok(Ok(_)) => break Ok(()),
                            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                                break Err(status.message().to_string())
                            }
                            Ok(Err(status)) => status.message().to_string(),
                            Err(_) => "the coordinator did not answer".to_string(),
                        };
                        if tokio::time::Instant::now() >= deadline {
                            break Err(reason);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    match outcome {
                        Ok(()) => answer(&folder, &format!("record-{checkpoint}.ok"), ""),
                        Err(reason) => answer(&folder, &format!("record-{checkpoint}.refused"), &reason),
                    }
                    let _ = std::fs::remove_file(folder.join(format!("record-{checkpoint}.taken")));
                });
            }
        }
    }
}

/// How long one call to record a checkpoint may take before it is made again, to the
/// leader known then. Not shorter: the leader answers only once etcd has the record, and
/// etcd syncs its log to disk first, which on a loaded machine takes tens of milliseconds
/// and sometimes hundreds. A call given up on is cancelled in the leader too, so a timeout
/// below etcd's write latency would make every try fail and no checkpoint complete.
const RECORD_CALL_WITHIN: Duration = Duration::from_millis(500);

/// How long a worker keeps trying to have a checkpoint recorded while no coordinator
/// answers; below the job process's wait (`sluice_runtime`'s 5 s), so that the process
/// gets an answer.
const RECORD_TRIES_FOR: Duration = Duration::from_millis(4500);

/// What this worker runs now, for a new leader to adopt.
fn running_processes(processes: &Processes) -> Vec<RunningProcess> {
    let processes = processes.lock().unwrap_or_else(|e| e.into_inner());
    processes
        .keys()
        .map(|(job_id, attempt, index)| RunningProcess {
            job_id: job_id.clone(),
            attempt: *attempt,
            index: *index,
            data_address: String::new(),
        })
        .collect()
}

/// Runs the worker until the process ends.
pub async fn run(config: WorkerConfig) -> Result<(), String> {
    // Control folders and local state copies of processes an earlier run of this worker
    // started (copies of jobs that ended would otherwise stay on the disk for ever).
    let _ = std::fs::remove_dir_all(config.cache.join("control"));
    let _ = std::fs::remove_dir_all(config.cache.join(LOCAL_STATE));
    let mut etcd = match &config.ha {
        Some(ha) => Some(ha.connect().await?),
        None => None,
    };
    let (mut coordinator, mut coordinator_address) = find_coordinator(&config, etcd.as_mut()).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let mut registration = RegisterWorkerRequest {
        address: address.to_string(),
        slots: config.slots,
        host: address.ip().to_string(),
        previous_id: 0,
        running: Vec::new(),
    };
    let reply = register(&mut coordinator, &registration, &coordinator_address).await?;
    let store = ArtifactStore::open(&reply.artifact_store)?;
    let processes: Processes = Arc::default();
    let leader: Leader = Arc::new(Mutex::new(coordinator.clone()));
    let term = Arc::new(std::sync::atomic::AtomicU64::new(reply.term));
    let service = WorkerService {
        config: WorkerConfig { listen: address, ..config.clone() },
        store,
        processes: processes.clone(),
        coordinator: leader.clone(),
        term: term.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    if config.ha.is_some() {
        let (control, processes, leader, term) =
            (config.cache.join("control"), processes.clone(), leader.clone(), term.clone());
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("sluice:checkpoint-records".into())
            .spawn(move || carry_checkpoint_records(control, processes, leader, term, runtime))
            .map_err(|e| e.to_string())?;
    }
    // When the coordinator last answered a heartbeat: without HA, the pulse is only as
    // fresh as that (see `pulse_turn`).
    let contact = Arc::new(Mutex::new(std::time::Instant::now()));
    let cut_off_after = match (&config.ha, reply.heartbeat_timeout_ms) {
        (None, timeout) if timeout > 0 => Some(Duration::from_millis(timeout).saturating_sub(PULSE_TIMEOUT)),
        _ => None,
    };
    let (pulses, last_contact) = (processes.clone(), contact.clone());
    std::thread::Builder::new()
        .name("sluice:pulse".into())
        .spawn(move || {
            let mut last_turn = std::time::Instant::now();
            let mut holding = false;
            loop {
                let since_contact = last_contact.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                let turn = pulse_turn(last_turn.elapsed(), since_contact, cut_off_after);
                last_turn = std::time::Instant::now();
                let mut children = pulses.lock().unwrap_or_else(|e| e.into_inner());
                match turn {
                    PulseTurn::Pulse => {
                        if std::mem::take(&mut holding) {
                            tracing::info!("the coordinator answers again: pulsing the job processes");
                        }
                        for child in children.values_mut() {
                            if let Some(stdin) = child.stdin.as_mut() {
                                // A process that has exited closed its end: nothing to tell it.
                                let _ = stdin.write_all(b".");
                            }
                        }
                    }
                    PulseTurn::Hold => {
                        let pulsed = children.values().filter(|c| c.stdin.is_some()).count();
                        if pulsed > 0 && !std::mem::replace(&mut holding, true) {
                            tracing::warn!(
                                silent_ms = since_contact.as_millis() as u64,
                                processes = pulsed,
                                "no answer from the coordinator: not pulsing the job processes, which stop \
                                 themselves unless it answers again (it may be placing their attempt elsewhere)"
                            );
                        }
                    }
                    PulseTurn::Release => {
                        let released = children.values_mut().filter_map(|c| c.stdin.take()).count();
                        if released > 0 {
                            tracing::warn!(
                                processes = released,
                                "this worker was stopped or starved for longer than its job processes' pulse \
                                 timeout: their attempt may have been replaced meanwhile, so they get no pulse \
                                 again and stop themselves"
                            );
                        }
                    }
                }
                drop(children);
                std::thread::sleep(PULSE_EVERY);
            }
        })
        .map_err(|e| e.to_string())?;
    let mut heartbeats = coordinator.clone();
    let heartbeat_every = Duration::from_millis(reply.heartbeat_interval_ms.max(10));
    let mut worker_id = reply.worker_id;
    let mut our_term = reply.term;
    let ha_config = config.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rtt = Duration::ZERO;
        let mut cpu = crate::load::CpuMeter::default();
        // With HA: since when a leader other than ours is named in etcd and this worker
        // has not joined it.
        let mut other_leader_since: Option<std::time::Instant> = None;
        // A call to a coordinator that accepts the connection but never answers must not
        // hold the heartbeats (and the search for a new leader) up.
        let call_within = (heartbeat_every * 5).max(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let pids: Vec<u32> = processes.lock().unwrap_or_else(|e| e.into_inner()).values().map(Child::id).collect();
            let cpu_percent = cpu.sample(pids);
            let sent = std::time::Instant::now();
            let request = HeartbeatRequest { worker_id, rtt_us: rtt.as_micros() as u64, cpu_percent };
            let answer = match tokio::time::timeout(call_within, heartbeats.heartbeat(request)).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::deadline_exceeded(format!("no answer within {call_within:?}"))),
            };
            let look_for_leader = match answer {
                Ok(reply) if reply.get_ref().known => {
                    rtt = sent.elapsed();
                    *contact.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
                    other_leader_since = None;
                    false
                }
                // A new leader (on the old one's address, say) that has not heard of this
                // worker yet: rejoin it with the processes, do not drop them.
                Ok(reply) if etcd.is_some() && reply.get_ref().term > our_term => true,
                Ok(_) => {
                    // The coordinator declared this worker lost (it was silent too long) and
                    // has moved its processes: the ones still here belong to replaced
                    // attempts. Stop them, and join again as a new worker.
                    let stale: Vec<Child> =
                        processes.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, c)| c).collect();
                    tracing::warn!(
                        worker = worker_id,
                        processes = stale.len(),
                        "the coordinator declared this worker lost; stopping its job processes and registering again"
                    );
                    for mut child in stale {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    registration.previous_id = 0;
                    registration.running.clear();
                    match register(&mut heartbeats, &registration, &coordinator_address).await {
                        Ok(reply) => worker_id = reply.worker_id,
                        Err(e) => tracing::warn!(error = %e, "registering again failed; retrying"),
                    }
                    false
                }
                Err(e) if etcd.is_some() => {
                    tracing::debug!(error = %e.message(), "heartbeat to the coordinator failed");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), "heartbeat to the coordinator failed");
                    false
                }
            };
            if look_for_leader {
                {
                    // With HA: is another coordinator leading now? Its job processes go on
                    // meanwhile; the new leader adopts them when this worker rejoins.
                    let Ok(Some((leader_address, leader_term))) = crate::ha::current_leader(
                        etcd.as_mut().expect("checked"),
                        ha_config.ha.as_ref().expect("with etcd"),
                    )
                    .await
                    else {
                        continue;
                    };
                    if leader_term == our_term {
                        continue; // the old leader's lease has not lapsed yet
                    }
                    let since = *other_leader_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > ORPHANED_AFTER
                        && !processes.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
                    {
                        // The new leader restarts what it cannot adopt in time; processes it
                        // never heard of must not go on beside the restarted attempt.
                        let orphans: Vec<Child> =
                            processes.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, c)| c).collect();
                        tracing::warn!(
                            processes = orphans.len(),
                            leader = %leader_address,
                            "could not join the new leader within {ORPHANED_AFTER:?}; stopping this worker's job processes, which it will restart"
                        );
                        for mut child in orphans {
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                    }
                    let joined = async {
                        let (mut client, _) = find_coordinator(&ha_config, etcd.as_mut()).await?;
                        registration.previous_id = worker_id;
                        registration.running = running_processes(&processes);
                        let reply = register(&mut client, &registration, &leader_address).await?;
                        Ok::<_, String>((client, reply))
                    };
                    match tokio::time::timeout(call_within, joined).await.unwrap_or_else(|_| Err("no answer".into())) {
                        Ok((client, reply)) => {
                            other_leader_since = None;
                            tracing::info!(
                                worker = reply.worker_id,
                                term = leader_term,
                                processes = registration.running.len(),
                                "rejoined the new leader with the job processes still running here"
                            );
                            worker_id = reply.worker_id;
                            our_term = reply.term;
                            term.fetch_max(reply.term, std::sync::atomic::Ordering::SeqCst);
                            coordinator_address = leader_address;
                            heartbeats = client.clone();
                            *leader.lock().unwrap_or_else(|e| e.into_inner()) = client;
                        }
                        Err(e) => tracing::warn!(error = %e, "joining the new leader failed; retrying"),
                    }
                }
            }
        }
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server()).map_err(|e| format!("the worker's TLS settings: {e}"))?;
    }
    builder
        .add_service(WorkerServer::with_interceptor(service, config.secret.check()))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| format!("the worker's gRPC server on {address}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_detection_in_a_job_process_log_is_told_apart_and_stripped_of_stamp_and_level() {
        let line = "2026-12-03T06:48:32.764578Z  WARN skipping checkpoint 4: state file x is corrupted \
                    (detector: corrupted state) location=/tmp/c";
        assert_eq!(
            detection_of(line).unwrap(),
            "skipping checkpoint 4: state file x is corrupted (detector: corrupted state) location=/tmp/c"
        );
        assert_eq!(
            detection_of("subtask 1 stalled (detector: stalled subtask)").unwrap(),
            "subtask 1 stalled (detector: stalled subtask)"
        );
        assert_eq!(detection_of("2026-12-03T06:48:32.764578Z  INFO attempt started"), None);
    }

    #[test]
    fn a_worker_pulses_while_its_coordinator_answers_holds_when_cut_off_and_releases_after_a_freeze() {
        let cut_off_after = Some(200 * MS);
        assert_eq!(pulse_turn(50 * MS, 90 * MS, cut_off_after), PulseTurn::Pulse);
        // No answer for longer than the heartbeat timeout less the pulse timeout.
        assert_eq!(pulse_turn(50 * MS, 201 * MS, cut_off_after), PulseTurn::Hold);
        // With HA (no cut-off) the processes go on while no leader answers.
        assert_eq!(pulse_turn(50 * MS, 10_000 * MS, None), PulseTurn::Pulse);
        // The previous turn longer ago than the processes wait: frozen, whatever else.
        assert_eq!(pulse_turn(PULSE_TIMEOUT + MS, Duration::ZERO, cut_off_after), PulseTurn::Release);
        assert_eq!(pulse_turn(PULSE_TIMEOUT + MS, Duration::ZERO, None), PulseTurn::Release);
        assert_eq!(pulse_turn(PULSE_TIMEOUT, Duration::ZERO, None), PulseTurn::Pulse);
    }
}
