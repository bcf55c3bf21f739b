//! The coordinator: workers register with it and send heartbeats; the command line
//! uploads job binaries and submits jobs to it; it plans a job onto workers (one job
//! process per worker, at most the job's parallelism), asks each worker for a data
//! address, starts the processes with every peer's address, and tracks them until they
//! have all exited. A job fails when one of its processes fails; the others are stopped.
//! Job status is served as JSON over HTTP too (`GET /jobs`, with the secret as bearer
//! token), for scripts and dashboards.

use crate::artifacts::ArtifactStore;
use crate::auth::{AuthedChannel, Secret};
use crate::proto::coordinator_server::{Coordinator, CoordinatorServer};
use crate::proto::worker_client::WorkerClient;
use crate::proto::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

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
}

#[derive(Debug)]
struct WorkerEntry {
    address: String,
    slots: u32,
    last_heartbeat: Instant,
}

#[derive(Debug, Clone)]
struct ProcessEntry {
    worker: u64,
    data_address: String,
    state: &'static str,
    message: String,
}

#[derive(Debug, Clone)]
struct JobEntry {
    name: String,
    artifact: String,
    parallelism: u32,
    state: &'static str,
    message: String,
    processes: Vec<ProcessEntry>,
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
}

impl CoordinatorService {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn worker_client(&self, address: &str) -> Result<WorkerClient<AuthedChannel>, Status> {
        let channel = crate::auth::connect(address, Duration::from_secs(5)).await.map_err(Status::unavailable)?;
        Ok(WorkerClient::with_interceptor(channel, self.secret.attach()))
    }

    /// Asks process 0 of a running job, through its worker, for a savepoint (`stop`: and to
    /// stop with it); waits up to `timeout` for the path.
    async fn savepoint_of(&self, job_id: &str, stop: bool, timeout: Duration) -> Result<String, Status> {
        let address = {
            let state = self.state();
            let job = state.jobs.get(job_id).ok_or_else(|| Status::not_found(format!("no job {job_id}")))?;
            if !matches!(job.state, "running" | "cancelling") {
                return Err(Status::failed_precondition(format!(
                    "{job_id} is {}: only a running job takes a savepoint",
                    job.state
                )));
            }
            let first = job.processes.first().ok_or_else(|| Status::internal("a job without processes"))?;
            state
                .workers
                .get(&first.worker)
                .map(|w| w.address.clone())
                .ok_or_else(|| Status::unavailable(format!("the worker of {job_id}'s process 0 is gone")))?
        };
        let request =
            SavepointRequest { job_id: job_id.to_string(), index: 0, stop, timeout_ms: timeout.as_millis() as u64 };
        let mut client = self.worker_client(&address).await?;
        let path = client.savepoint(request).await?.into_inner().path;
        tracing::info!(job = job_id, stop, path = %path, "savepoint taken");
        Ok(path)
    }

    /// Stops every process of `job` that still runs (Ctrl-C, or a kill).
    async fn stop_processes(&self, job_id: &str, kill: bool) {
        let targets: Vec<(u32, String)> = {
            let state = self.state();
            let Some(job) = state.jobs.get(job_id) else { return };
            job.processes
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p.state, "starting" | "running"))
                .filter_map(|(i, p)| state.workers.get(&p.worker).map(|w| (i as u32, w.address.clone())))
                .collect()
        };
        for (index, address) in targets {
            match self.worker_client(&address).await {
                Ok(mut client) => {
                    let request = StopProcessRequest { job_id: job_id.to_string(), index, kill };
                    if let Err(e) = client.stop_process(request).await {
                        tracing::warn!(job = job_id, index, error = %e, "could not stop a job process");
                    }
                }
                Err(e) => tracing::warn!(job = job_id, index, error = %e, "could not reach a worker to stop a process"),
            }
        }
    }

    fn status(&self) -> Vec<JobStatus> {
        self.state()
            .jobs
            .iter()
            .map(|(id, j)| JobStatus {
                job_id: id.clone(),
                name: j.name.clone(),
                state: j.state.to_string(),
                parallelism: j.parallelism,
                message: j.message.clone(),
                artifact_sha256: j.artifact.clone(),
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

    async fn start_job(&self, job_id: String, request: SubmitJobRequest) -> Result<u32, Status> {
        // A worker with no slot takes no process.
        let workers: Vec<(u64, String)> =
            self.state().workers.iter().filter(|(_, w)| w.slots > 0).map(|(id, w)| (*id, w.address.clone())).collect();
        if workers.is_empty() {
            return Err(Status::failed_precondition("no worker has a free slot"));
        }
        let processes = (request.parallelism as usize).min(workers.len());
        let chosen = &workers[..processes];
        // Each worker picks a free data address for its process; then every process
        // starts knowing all of them.
        let mut peers = Vec::new();
        for (_, address) in chosen {
            let mut client = self.worker_client(address).await?;
            peers.push(client.reserve_address(ReserveAddressRequest {}).await?.into_inner().address);
        }
        {
            let mut state = self.state();
            let job = state.jobs.get_mut(&job_id).expect("registered before it starts");
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
                job_id: job_id.clone(),
                name: request.name.clone(),
                artifact_sha256: request.artifact_sha256.clone(),
                args: request.args.clone(),
                index: index as u32,
                peers: peers.clone(),
                attempt: 1,
                parallelism: request.parallelism,
            };
            async move {
                let mut client = self.worker_client(address).await?;
                client.start_process(start).await.map(|_| index)
            }
        });
        for started in futures::future::join_all(starts).await {
            let index = started?;
            if let Some(p) = self.state().jobs.get_mut(&job_id).and_then(|j| j.processes.get_mut(index)) {
                if p.state == "starting" {
                    p.state = "running";
                }
            }
        }
        Ok(processes as u32)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        let r = request.into_inner();
        let mut state = self.state();
        state.next_worker += 1;
        let id = state.next_worker;
        tracing::info!(worker = id, address = %r.address, slots = r.slots, "worker registered");
        state.workers.insert(id, WorkerEntry { address: r.address, slots: r.slots, last_heartbeat: Instant::now() });
        Ok(Response::new(RegisterWorkerReply { worker_id: id, artifact_store: self.store.location().to_string() }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        let id = request.into_inner().worker_id;
        let mut state = self.state();
        let known = match state.workers.get_mut(&id) {
            Some(w) => {
                w.last_heartbeat = Instant::now();
                true
            }
            None => false,
        };
        Ok(Response::new(HeartbeatReply { known }))
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
        if r.parallelism == 0 {
            return Err(Status::invalid_argument("the parallelism must be at least 1"));
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
                    name: r.name.clone(),
                    artifact: r.artifact_sha256.clone(),
                    parallelism: r.parallelism,
                    state: "running",
                    message: String::new(),
                    processes: Vec::new(),
                },
            );
            id
        };
        match self.start_job(job_id.clone(), r).await {
            Ok(processes) => {
                tracing::info!(job = %job_id, processes, "job started");
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
            if job.state != "running" {
                return Ok(Response::new(CancelJobReply { state: job.state.to_string(), savepoint: String::new() }));
            }
            job.state = "cancelling";
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

    async fn process_exited(
        &self,
        request: Request<ProcessExitedRequest>,
    ) -> Result<Response<ProcessExitedReply>, Status> {
        let r = request.into_inner();
        let stop_others = {
            let mut state = self.state();
            let Some(job) = state.jobs.get_mut(&r.job_id) else {
                return Ok(Response::new(ProcessExitedReply {}));
            };
            if let Some(p) = job.processes.get_mut(r.index as usize) {
                p.state = if r.success { "finished" } else { "failed" };
                p.message = r.message.clone();
            }
            let failed = !r.success && job.state != "cancelling";
            if failed && job.state == "running" {
                job.state = "failed";
                job.message = format!("process {} failed: {}", r.index, r.message);
                tracing::error!(job = %r.job_id, "job failed: process {} failed: {}", r.index, r.message);
            }
            let all_exited = job.processes.iter().all(|p| matches!(p.state, "finished" | "failed"));
            if all_exited {
                job.state = match job.state {
                    "running" => "finished",
                    "cancelling" => "cancelled",
                    other => other,
                };
                tracing::info!(job = %r.job_id, state = job.state, "job ended");
            }
            failed
        };
        if stop_others {
            self.stop_processes(&r.job_id, true).await;
        }
        Ok(Response::new(ProcessExitedReply {}))
    }
}

/// Runs the coordinator until the process ends.
pub async fn run(config: CoordinatorConfig) -> Result<(), String> {
    let store = ArtifactStore::open(&config.store)?;
    let service = CoordinatorService { state: Arc::default(), store, secret: config.secret.clone() };
    if let Some(http) = config.http {
        serve_http(http, service.clone())?;
    }
    tracing::info!(address = %config.listen, "coordinator listening");
    let server = CoordinatorServer::with_interceptor(service, config.secret.check());
    tonic::transport::Server::builder()
        .add_service(server)
        .serve(config.listen)
        .await
        .map_err(|e| format!("the coordinator's gRPC server on {}: {e}", config.listen))
}

/// Serves `GET /jobs` (the jobs as JSON) on `address`, on a thread of its own.
fn serve_http(address: SocketAddr, service: CoordinatorService) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(address).map_err(|e| format!("HTTP status on {address}: {e}"))?;
    std::thread::Builder::new()
        .name("sluice:http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer_http(stream, &service);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn answer_http(mut stream: std::net::TcpStream, service: &CoordinatorService) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
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
        tracing::warn!(peer = ?stream.peer_addr().ok(), "refused an HTTP status request without the cluster secret");
        ("401 Unauthorized", "{\"error\":\"send the cluster secret as Authorization: Bearer <secret>\"}".to_string())
    } else if request_line.starts_with("GET /jobs ") {
        let jobs: Vec<serde_json::Value> = service
            .status()
            .into_iter()
            .map(|j| {
                serde_json::json!({
                    "job_id": j.job_id, "name": j.name, "state": j.state, "parallelism": j.parallelism,
                    "message": j.message, "artifact_sha256": j.artifact_sha256,
                    "processes": j.processes.iter().map(|p| serde_json::json!({
                        "index": p.index, "worker_id": p.worker_id, "data_address": p.data_address,
                        "state": p.state, "message": p.message,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        ("200 OK", serde_json::to_string(&serde_json::json!({ "jobs": jobs })).unwrap_or_default())
    } else {
        ("404 Not Found", "{\"error\":\"GET /jobs\"}".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
