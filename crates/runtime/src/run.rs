//! The job supervisor: restores from the latest checkpoint, runs attempts, and restarts
//! failed ones as the restart strategy says, from the latest completed checkpoint.

use crate::attempt::{commit_sinks, run_attempt, Checkpointing, Flags};
use crate::processes::{Network, Placement};
use crate::restart::RestartTracker;
use sluice_checkpoint::{
    plan_restore, CheckpointStore, LoadedCheckpoint, OperatorShape, RestorePlan, StateEntry, StateKind,
};
use sluice_dataflow::counters::Counter;
use sluice_dataflow::{GraphError, JobGraph, NodeKind, StartFrom, TaskError};
use sluice_types::{subtask_for_key_group, KeyGroup};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The graph cannot run.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A task failed and the restart strategy gave up (or there is none).
    #[error("job '{job}' failed: {source}")]
    Task {
        /// The job's name.
        job: String,
        /// The last failure.
        #[source]
        source: TaskError,
    },
    /// The checkpoint to start from cannot be used.
    #[error("job '{job}' cannot start: {message}")]
    Restore {
        /// The job's name.
        job: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A thread could not be started.
    #[error("could not start the job: {0}")]
    Spawn(#[from] std::io::Error),
    /// The job was to be spread over processes (`SLUICE_PROCESS` is set) and cannot be.
    #[error("job '{job}' cannot run spread over processes: {message}")]
    Spread {
        /// The job's name.
        job: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// What a completed job reports.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// The job's name.
    pub name: String,
    /// Wall time from start to end.
    pub duration: Duration,
    /// Number of tasks (threads) the last attempt ran as.
    pub tasks: usize,
    /// Whether it ended because it was cancelled.
    pub cancelled: bool,
    /// Restarts after failures.
    pub restarts: u32,
    /// Records dropped as late by windows without a side output (over every attempt).
    pub late_records_dropped: u64,
    /// Records a decode policy skipped or dead-lettered (over every attempt).
    pub records_skipped: u64,
    /// The checkpoint the job started from, if any.
    pub restored_from: Option<u64>,
    /// Duration and size in bytes of each completed checkpoint.
    pub checkpoints: Vec<(Duration, u64)>,
}

/// A running job.
///
/// The handle owns the job: dropping it without [`JobHandle::join`] cancels the job and
/// waits for it to stop, so no task outlives its handle.
pub struct JobHandle {
    flags: Arc<Flags>,
    supervisor: Option<JoinHandle<Result<JobResult, JobError>>>,
}

impl JobHandle {
    /// Stops the sources; the rest of the job drains what they emitted, sinks finish,
    /// and [`JobHandle::join`] returns. Event-time windows that did not close are not fired
    /// (with checkpointing on, their state goes into a final checkpoint to resume from).
    pub fn cancel(&self) {
        self.flags.cancelled.store(true, Ordering::SeqCst);
        self.flags.stop_sources.store(true, Ordering::SeqCst);
    }

    /// A function that cancels the job (for a Ctrl-C handler on another thread).
    pub fn canceller(&self) -> impl Fn() + Send + Sync + 'static {
        let flags = self.flags.clone();
        move || {
            flags.cancelled.store(true, Ordering::SeqCst);
            flags.stop_sources.store(true, Ordering::SeqCst);
        }
    }

    /// Takes a savepoint: a checkpoint kept in a `savepoint-<id>` folder beside the job's
    /// checkpoints, never deleted by retention. Returns its path (start a job from it with
    /// `StartFrom::Path`). Needs checkpointing.
    pub fn trigger_savepoint(&self, timeout: Duration) -> Result<String, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.flags.savepoint_requests.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx.recv_timeout(timeout).map_err(|_| format!("no savepoint within {timeout:?}; is checkpointing on?"))?
    }

    /// Stops the job with a savepoint (Flink's stop-with-savepoint): the sources stop, the
    /// job drains, and its final checkpoint, the state after the last record read, is kept
    /// as a savepoint whose path is returned. Resuming from it continues exactly where the
    /// job stopped, nothing twice. Needs checkpointing.
    pub fn stop_with_savepoint(&self, timeout: Duration) -> Result<String, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.flags.stop_requests.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx.recv_timeout(timeout).map_err(|_| format!("the job did not stop with a savepoint within {timeout:?}"))?
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        self.supervisor.as_ref().is_none_or(|s| s.is_finished())
    }

    /// Waits for the job to end.
    pub fn join(mut self) -> Result<JobResult, JobError> {
        let supervisor = self.supervisor.take().expect("a handle is joined once");
        supervisor.join().unwrap_or_else(|_| {
            Err(JobError::Task { job: "?".into(), source: TaskError::Checkpoint("the job supervisor panicked".into()) })
        })
    }
}

/// How long dropping a [`JobHandle`] waits for its cancelled job to stop before leaving
/// it behind (a user function that never returns cannot be interrupted).
const DROP_WAIT: Duration = Duration::from_secs(30);

impl Drop for JobHandle {
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            self.cancel();
            let deadline = Instant::now() + DROP_WAIT;
            while !supervisor.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if supervisor.is_finished() {
                let _ = supervisor.join();
            } else {
                tracing::error!(
                    "the job did not stop within {DROP_WAIT:?} of being cancelled (a user function that does not \
                     return?); its threads are left running"
                );
            }
        }
    }
}

/// Runs the job and waits for it.
pub fn run(graph: JobGraph) -> Result<JobResult, JobError> {
    spawn(graph)?.join()
}

/// Checks the graph and the checkpoint to start from, then starts the job and returns.
pub fn spawn(graph: JobGraph) -> Result<JobHandle, JobError> {
    crate::report::init();
    graph.validate()?;
    graph.validate_connectors()?;
    crate::processes::describe_if_asked(&graph);
    let job = graph.name.clone();
    let restore_error = |message: String| JobError::Restore { job: job.clone(), message };
    let placement = Placement::from_env(&graph).map_err(|message| JobError::Spread { job: job.clone(), message })?;
    if let Some(placement) = placement {
        crate::processes::check_planned_graph(&graph);
        crate::processes::exit_with_parent();
        let mut checkpointing = None;
        if let Some(config) = graph.config.checkpointing.clone() {
            let mut store = CheckpointStore::open_for_writing(&config.location, &graph.name)
                .map_err(|e| restore_error(e.to_string()))?;
            if let Some(dir) = std::env::var_os(crate::processes::ENV_LOCAL_STATE_DIR) {
                store = store.with_local_copies(dir);
            }
            let recorded = std::env::var(crate::processes::ENV_RECORDED_CHECKPOINT).ok();
            if let Some(most) = recorded.and_then(|v| v.parse().ok()) {
                store = store.restoring_at_most(most);
            }
            let existing = store.checkpoint_ids().map_err(|e| restore_error(e.to_string()))?;
            let next_id = existing.iter().copied().max().unwrap_or(0) + 1;
            checkpointing = Some(Checkpointing {
                config,
                store,
                next_id,
                completed: Vec::new(),
                stats: Vec::new(),
                restored: false,
            });
        }
        let flags = new_flags();
        let supervisor_flags = flags.clone();
        let supervisor = std::thread::Builder::new()
            .name(format!("sluice:{}", graph.name))
            .spawn(move || run_spread(graph, placement, checkpointing, supervisor_flags))?;
        return Ok(JobHandle { flags, supervisor: Some(supervisor) });
    }
    let mut checkpointing = None;
    let mut start = None;
    if let Some(config) = graph.config.checkpointing.clone() {
        let store = CheckpointStore::open_for_writing(&config.location, &graph.name)
            .map_err(|e| restore_error(e.to_string()))?;
        let existing = store.checkpoint_ids().map_err(|e| restore_error(e.to_string()))?;
        start = match &config.start {
            StartFrom::Fresh => None,
            StartFrom::Latest => {
                store.latest_restorable(config.allow_duplicate_output).map_err(|e| restore_error(e.to_string()))?
            }
            StartFrom::Path(path) => Some(CheckpointStore::load_path(path).map_err(|e| restore_error(e.to_string()))?),
        };
        let next_id =
            existing.iter().copied().chain(start.iter().map(|s| s.manifest.checkpoint)).max().unwrap_or(0) + 1;
        let completed = start.iter().filter(|s| !s.manifest.savepoint).map(|s| s.manifest.checkpoint).collect();
        checkpointing = Some(Checkpointing { config, store, next_id, completed, stats: Vec::new(), restored: false });
    }
    // A bad checkpoint to start from is an error now, not after the job has started.
    if let Some(loaded) = &start {
        restore_plan(&graph, loaded).map_err(&restore_error)?;
    }
    let flags = new_flags();
    let supervisor_flags = flags.clone();
    let supervisor = std::thread::Builder::new()
        .name(format!("sluice:{}", graph.name))
        .spawn(move || supervise(graph, start, checkpointing, supervisor_flags))?;
    Ok(JobHandle { flags, supervisor: Some(supervisor) })
}

fn new_flags() -> Arc<Flags> {
    Arc::new(Flags {
        stop_sources: Default::default(),
        cancelled: Default::default(),
        abort: Default::default(),
        savepoint_requests: Default::default(),
        stop_requests: Default::default(),
        counters: Default::default(),
    })
}

/// Runs this process's share of a job spread over processes: connect to the others, run
/// one attempt (no restart: a failure anywhere ends the job in every process), commit
/// this process's sinks at the end.
fn run_spread(
    graph: JobGraph,
    placement: Placement,
    mut checkpointing: Option<Checkpointing>,
    flags: Arc<Flags>,
) -> Result<JobResult, JobError> {
    let started = Instant::now();
    let job = graph.name.clone();
    let process = placement.process;
    let network_shape = (placement.processes(), placement.process as usize);
    let mut network = Network::connect(placement).map_err(|message| JobError::Spread { job: job.clone(), message })?;
    let mut restored_from = None;
    let outcome = {
        let (graph_ref, restored) = (&graph, &mut restored_from);
        // Process 0 picks the checkpoint to resume (as local mode does) and settles the
        // sinks before any process writes; the others load the one it names.
        let choose = |cp: Option<&Checkpointing>| -> Result<Option<RestorePlan>, TaskError> {
            let Some(cp) = cp else { return Ok(None) };
            let loaded = match &cp.config.start {
                StartFrom::Fresh => None,
                StartFrom::Path(path) => {
                    Some(CheckpointStore::load_path(path).map_err(|e| TaskError::Checkpoint(e.to_string()))?)
                }
                StartFrom::Latest => cp
                    .store
                    .latest_restorable(cp.config.allow_duplicate_output)
                    .map_err(|e| TaskError::Checkpoint(e.to_string()))?,
            };
            let plan = loaded.map(|l| restore_plan(graph_ref, &l)).transpose().map_err(TaskError::Checkpoint)?;
            settle_sinks(graph_ref, plan.as_ref(), Some(cp))?;
            *restored = plan.as_ref().map(|p| p.checkpoint);
            Ok(plan)
        };
        let load = |cp: Option<&Checkpointing>, id: u64| -> Result<RestorePlan, TaskError> {
            let cp = cp.ok_or_else(|| {
                TaskError::Checkpoint("process 0 restores a checkpoint, this process has no checkpointing".into())
            })?;
            // Started from a given checkpoint or savepoint, every process was given the
            // same path; else process 0 names one of the job's checkpoints.
            // Only the state files holding key groups of this process's subtasks (and every
            // source position and sink transaction, which are small and redistributed).
            let processes = network_shape.0;
            let runs_here = |entry: &StateEntry| match (&entry.kind, &entry.key_groups) {
                (StateKind::Keyed, Some(groups)) => {
                    // State of no operator of this job is read, so that it is refused as at process 0.
                    let Some(node) = graph_ref.nodes.iter().find(|n| n.state_id() == entry.operator) else {
                        return true;
                    };
                    let parallelism = graph_ref.parallelism_of(node.id);
                    groups.iter().any(|g| {
                        let owner = subtask_for_key_group(KeyGroup(*g), graph_ref.config.max_parallelism, parallelism);
                        owner % processes == network_shape.1
                    })
                }
                _ => true,
            };
            let loaded = match &cp.config.start {
                StartFrom::Path(path) => CheckpointStore::load_path(path),
                _ => cp.store.load_only(id, &runs_here),
            }
            .map_err(|e| TaskError::Checkpoint(e.to_string()))?;
            if loaded.manifest.checkpoint != id {
                return Err(TaskError::Checkpoint(format!(
                    "process 0 restores checkpoint {id}, this process was given checkpoint {}",
                    loaded.manifest.checkpoint
                )));
            }
            restore_plan(graph_ref, &loaded).map_err(TaskError::Checkpoint)
        };
        crate::spread::run(&graph, &flags, checkpointing.as_mut(), &mut network, choose, load)
    };
    network.close();
    match outcome {
        Ok(tasks) => Ok(JobResult {
            name: job,
            duration: started.elapsed(),
            tasks,
            cancelled: flags.cancelled.load(Ordering::SeqCst),
            restarts: 0,
            late_records_dropped: flags.counters.get(Counter::LateRecordDropped),
            records_skipped: flags.counters.get(Counter::RecordSkipped),
            restored_from,
            checkpoints: checkpointing.map(|c| c.stats).unwrap_or_default(),
        }),
        Err(error) => {
            tracing::error!("job '{job}' failed in process {process} (every process of its attempt stops; on a cluster the coordinator starts the next attempt): {error}");
            Err(JobError::Task { job, source: error })
        }
    }
}

fn shapes(graph: &JobGraph) -> Vec<OperatorShape> {
    graph
        .nodes
        .iter()
        .map(|n| OperatorShape { state_id: n.state_id().to_string(), parallelism: graph.parallelism_of(n.id) })
        .collect()
}

fn restore_plan(graph: &JobGraph, loaded: &LoadedCheckpoint) -> Result<RestorePlan, String> {
    let allow = graph.config.checkpointing.as_ref().map(|c| c.allow_non_restored_state).unwrap_or(false);
    let rescale = |state_id: &str, old: Vec<Vec<u8>>, parallelism: usize| match graph
        .nodes
        .iter()
        .find(|n| n.state_id() == state_id)
    {
        Some(node) => node.imp.rescale_positions(old, parallelism),
        None => Err(format!("no operator of this job has the state id '{state_id}'")),
    };
    plan_restore(&loaded.manifest, loaded.states.clone(), &shapes(graph), graph.config.max_parallelism, allow, &rescale)
}

/// Before an attempt: abort what failed attempts left in the sinks, and commit the
/// transactions of the checkpoint restored from (again: commits are idempotent).
fn settle_sinks(
    graph: &JobGraph,
    plan: Option<&RestorePlan>,
    checkpointing: Option<&Checkpointing>,
) -> Result<(), TaskError> {
    let empty = Default::default();
    let committables = plan.map(|p| &p.committables).unwrap_or(&empty);
    if let (Some(plan), Some(cp)) = (plan, checkpointing) {
        if !committables.is_empty() {
            cp.store.record_commit(plan.checkpoint).map_err(|e| TaskError::Checkpoint(e.to_string()))?;
        }
    }
    for node in graph.nodes.iter().filter(|n| n.imp.kind() == NodeKind::Sink) {
        let keep = committables.get(node.state_id()).cloned().unwrap_or_default();
        node.imp.recover(&keep).map_err(|source| TaskError::Io {
            operator: node.name.clone(),
            subtask: 0,
            what: "recovering".into(),
            source,
        })?;
    }
    commit_sinks(graph, committables)
}

fn supervise(
    graph: JobGraph,
    mut start: Option<LoadedCheckpoint>,
    mut checkpointing: Option<Checkpointing>,
    flags: Arc<Flags>,
) -> Result<JobResult, JobError> {
    let started = Instant::now();
    let job = graph.name.clone();
    let strategy = graph.config.restart.clone();
    let mut restarts = RestartTracker::new(strategy);
    let mut restored_from = None;
    // Checkpoints below this id belong to earlier runs: a job started fresh (or from a
    // given path) restarts from where it started until it has completed one of its own.
    let first_id = checkpointing.as_ref().map_or(0, |cp| cp.next_id);
    loop {
        let plan = match &start {
            Some(loaded) => {
                Some(restore_plan(&graph, loaded).map_err(|message| JobError::Restore { job: job.clone(), message })?)
            }
            None => None,
        };
        if let Some(p) = &plan {
            tracing::info!(job = %job, checkpoint = p.checkpoint, "restoring");
            restored_from.get_or_insert(p.checkpoint);
        }
        let outcome = settle_sinks(&graph, plan.as_ref(), checkpointing.as_ref()).and_then(|()| {
            if plan.as_ref().is_some_and(|p| p.finished) {
                tracing::info!(job = %job, "the job had already finished: its last output is committed");
                return Ok(0);
            }
            run_attempt(&graph, plan.as_ref(), &flags, checkpointing.as_mut())
        });
        match outcome {
            Ok(tasks) => {
                return Ok(JobResult {
                    name: job,
                    duration: started.elapsed(),
                    tasks,
                    cancelled: flags.cancelled.load(Ordering::SeqCst),
                    restarts: restarts.restarts(),
                    late_records_dropped: flags.counters.get(Counter::LateRecordDropped),
                    records_skipped: flags.counters.get(Counter::RecordSkipped),
                    restored_from,
                    checkpoints: checkpointing.map(|c| c.stats).unwrap_or_default(),
                })
            }
            Err(error) => {
                if flags.cancelled.load(Ordering::SeqCst) {
                    return Err(JobError::Task { job, source: error });
                }
                if !error.is_retryable() {
                    tracing::error!("job '{job}' failed and is not restarted (a restart cannot heal this): {error}");
                    return Err(JobError::Task { job, source: error });
                }
                let Some(delay) = restarts.on_failure(Instant::now()) else {
                    match restarts.restarts() {
                        0 => tracing::error!("job '{job}' failed and its restart strategy allows no restart: {error}"),
                        n => tracing::error!(
                            "job '{job}' failed and the restart strategy gives up after {n} restart(s): {error}"
                        ),
                    }
                    return Err(JobError::Task { job, source: error });
                };
                tracing::warn!(
                    "job '{job}' failed: {error}; restart {} in {} ms",
                    restarts.restarts(),
                    delay.as_millis()
                );
                let wake = Instant::now() + delay;
                while Instant::now() < wake && !flags.cancelled.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5).min(wake.saturating_duration_since(Instant::now())));
                }
                flags.abort.store(false, Ordering::SeqCst);
                flags.stop_sources.store(flags.cancelled.load(Ordering::SeqCst), Ordering::SeqCst);
                if let Some(cp) = checkpointing.as_ref().filter(|cp| cp.completed.iter().any(|id| *id >= first_id)) {
                    if let Some(latest) = cp
                        .store
                        .latest_restorable(cp.config.allow_duplicate_output)
                        .map_err(|e| JobError::Restore { job: job.clone(), message: e.to_string() })?
                    {
                        start = Some(latest);
                    }
                }
            }
        }
    }
}
