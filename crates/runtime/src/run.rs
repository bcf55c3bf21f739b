//! Builds the tasks of a planned job, runs them on threads and collects the outcome.

use crate::plan::{channel_count, channel_index, feeding_subtasks, is_pointwise, plan};
use crate::task::run_inbox_task;
use sluice_dataflow::{
    AnyInput, Envelope, ErasedInput, GraphError, JobGraph, NodeKind, OutEdge, Partitioning, SourceTask, SubtaskInfo,
    Target, TaskError,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A task's inbox: the sender its producers clone, the receiver it reads.
type Inbox = (SyncSender<Envelope>, Receiver<Envelope>);

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The graph cannot run.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A task failed; the job was stopped.
    #[error("job '{job}' failed: {source}")]
    Task {
        /// The job's name.
        job: String,
        /// The first failure.
        #[source]
        source: TaskError,
    },
    /// A thread could not be started.
    #[error("could not start a task thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// What a completed job reports.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// The job's name.
    pub name: String,
    /// Wall time from start to end.
    pub duration: Duration,
    /// Number of tasks (threads) the job ran as.
    pub tasks: usize,
    /// Whether it ended because it was cancelled.
    pub cancelled: bool,
}

/// A running job.
pub struct JobHandle {
    name: String,
    started: Instant,
    stop_sources: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<TaskError>>>,
    threads: Vec<JoinHandle<()>>,
}

impl JobHandle {
    /// Stops the sources; the rest of the job drains what they emitted, sinks finish,
    /// and [`JobHandle::join`] returns. Event-time windows that did not close are not fired.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.stop_sources.store(true, Ordering::SeqCst);
    }

    /// A function that cancels the job (for a Ctrl-C handler on another thread).
    pub fn canceller(&self) -> impl Fn() + Send + Sync + 'static {
        let (cancelled, stop) = (self.cancelled.clone(), self.stop_sources.clone());
        move || {
            cancelled.store(true, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
        }
    }

    /// Whether every task has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for the job to end.
    pub fn join(self) -> Result<JobResult, JobError> {
        let tasks = self.threads.len();
        for thread in self.threads {
            if thread.join().is_err() {
                // A panic outside user code (user code panics are caught and reported).
                self.abort.store(true, Ordering::SeqCst);
                self.stop_sources.store(true, Ordering::SeqCst);
            }
        }
        let mut errors = std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()));
        // The first failure is the cause; disconnections are its echoes in other tasks.
        let primary = errors.iter().position(|e| !e.is_secondary());
        if let Some(i) = primary {
            return Err(JobError::Task { job: self.name, source: errors.swap_remove(i) });
        }
        if let Some(e) = errors.pop() {
            if !self.cancelled.load(Ordering::SeqCst) {
                return Err(JobError::Task { job: self.name, source: e });
            }
        }
        tracing::info!(job = %self.name, elapsed_ms = self.started.elapsed().as_millis() as u64, "job finished");
        Ok(JobResult {
            name: self.name,
            duration: self.started.elapsed(),
            tasks,
            cancelled: self.cancelled.load(Ordering::SeqCst),
        })
    }
}

/// Runs the job and waits for it.
pub fn run(graph: JobGraph) -> Result<JobResult, JobError> {
    spawn(graph)?.join()
}

enum Work {
    Source(Box<dyn SourceTask>),
    Inbox { head: Box<dyn ErasedInput>, inbox: Receiver<Envelope>, channels: usize },
}

/// Starts the job and returns at once.
pub fn spawn(graph: JobGraph) -> Result<JobHandle, JobError> {
    graph.validate()?;
    let plan = plan(&graph);
    let config = graph.config.clone();

    // One bounded inbox per subtask of every chain that is not headed by a source.
    let mut inboxes: Vec<Vec<Option<Inbox>>> = plan
        .chains
        .iter()
        .map(|chain| {
            let head = &graph.nodes[chain.nodes[0].0];
            (0..chain.parallelism)
                .map(|_| (head.imp.kind() != NodeKind::Source).then(|| sync_channel(config.channel_capacity)))
                .collect()
        })
        .collect();
    let senders: Vec<Vec<Option<SyncSender<Envelope>>>> = inboxes
        .iter()
        .map(|subtasks| subtasks.iter().map(|i| i.as_ref().map(|(tx, _)| tx.clone())).collect())
        .collect();
    let consumers = graph.consumers();

    let mut work = Vec::new();
    for (chain, chain_inboxes) in plan.chains.iter().zip(inboxes.iter_mut()) {
        for (subtask, inbox) in chain_inboxes.iter_mut().enumerate() {
            let info_of = |node: usize| SubtaskInfo {
                operator: Arc::from(graph.nodes[node].name.as_str()),
                index: subtask,
                parallelism: chain.parallelism,
                max_parallelism: config.max_parallelism,
                batch_size: config.batch_size,
            };
            let tail = &graph.nodes[chain.nodes.last().expect("a chain has a node").0];
            let mut next: Option<AnyInput> = None;
            if tail.imp.kind() != NodeKind::Sink {
                let mut edges = Vec::new();
                for &(consumer, edge) in &consumers[tail.id.0] {
                    let consumer_chain = plan.chain_of[consumer.0];
                    let targets: Vec<Target> = (0..graph.parallelism_of(consumer))
                        .filter(|&to| feeding_subtasks(&graph, consumer, edge, to).contains(&subtask))
                        .map(|to| Target {
                            inbox: senders[consumer_chain][to].clone().expect("a consumer has an inbox"),
                            channel: channel_index(&graph, consumer, edge, to, subtask),
                        })
                        .collect();
                    let partitioning = &graph.nodes[consumer.0].inputs[edge].partitioning;
                    edges.push(match partitioning {
                        Partitioning::Hash(hash) => OutEdge::Hash(hash.clone(), targets),
                        Partitioning::Broadcast => OutEdge::Broadcast(targets),
                        Partitioning::Forward | Partitioning::Rebalance => {
                            debug_assert!(!is_pointwise(&graph, consumer, edge) || targets.len() == 1);
                            OutEdge::RoundRobin(rotate(targets, subtask))
                        }
                    });
                }
                next = Some(tail.imp.exchange(edges, &info_of(tail.id.0)));
            }
            let mut source = None;
            for node_id in chain.nodes.iter().rev() {
                let node = &graph.nodes[node_id.0];
                let info = info_of(node_id.0);
                let stage = next.take();
                match node.imp.kind() {
                    NodeKind::Source => {
                        let task = node
                            .imp
                            .source(stage.expect("a source feeds a stage"), &info, &config)
                            .map_err(|source| JobError::Task { job: graph.name.clone(), source })?;
                        source = Some(task);
                    }
                    _ => {
                        next = Some(
                            node.imp
                                .link(stage, &info)
                                .map_err(|source| JobError::Task { job: graph.name.clone(), source })?,
                        )
                    }
                }
            }
            let head_node = chain.nodes[0];
            let name = format!("{}#{}", graph.nodes[head_node.0].name, subtask);
            let job = match source {
                Some(task) => Work::Source(task),
                None => {
                    let (_, inbox) = inbox.take().expect("one inbox per subtask");
                    Work::Inbox {
                        head: graph.nodes[head_node.0].imp.head(next.take().expect("a chain has a head stage")),
                        inbox,
                        channels: channel_count(&graph, head_node, subtask),
                    }
                }
            };
            work.push((name, job));
        }
    }
    // The planner's own senders must go, or inboxes would never see their producers leave.
    drop(senders);
    drop(inboxes);

    let stop_sources = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    let started = Instant::now();
    for (name, job) in work {
        let (stop_sources, abort, errors) = (stop_sources.clone(), abort.clone(), errors.clone());
        let abort_on_spawn_failure = abort.clone();
        let tick = config.tick;
        let thread_name = format!("sluice:{name}");
        let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
            let result = match job {
                Work::Source(mut task) => task.run(&stop_sources),
                Work::Inbox { mut head, inbox, channels } => run_inbox_task(&mut *head, inbox, channels, &abort, tick),
            };
            if let Err(error) = result {
                if !error.is_secondary() {
                    tracing::error!(task = %name, error = %error, "task failed");
                }
                abort.store(true, Ordering::SeqCst);
                stop_sources.store(true, Ordering::SeqCst);
                errors.lock().unwrap_or_else(|e| e.into_inner()).push(error);
            }
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                abort_on_spawn_failure.store(true, Ordering::SeqCst);
                return Err(JobError::Spawn(e));
            }
        }
    }
    tracing::info!(job = %graph.name, tasks = threads.len(), "job started");
    Ok(JobHandle { name: graph.name, started, stop_sources, cancelled, abort, errors, threads })
}

fn rotate(mut targets: Vec<Target>, by: usize) -> Vec<Target> {
    if !targets.is_empty() {
        let n = by % targets.len();
        targets.rotate_left(n);
    }
    targets
}
