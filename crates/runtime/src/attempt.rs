//! One attempt of a job: build its tasks (restored from a checkpoint if there is one), run
//! them, and coordinate checkpoints while they run: trigger barriers at the sources,
//! collect every task's state, have it written in the background, commit the sinks'
//! transactions once a checkpoint is complete, and write a final checkpoint when the
//! tasks finish.

use crate::coordinator::{Action, CheckpointCoordinator, Schedule};
use crate::plan::{channel_count, channel_index, feeding_subtasks, is_pointwise, plan};
use crate::processes::Network;
use crate::task::run_inbox_task;
use sluice_checkpoint::{to_prune, CheckpointMeta, CheckpointStore, RestorePlan};
use sluice_dataflow::snapshot::{Barrier, OperatorState, SubtaskState};
use sluice_dataflow::{
    now_millis, AnyInput, ChannelCredits, CheckpointConfig, CheckpointMode, Credit, CreditReturn, Envelope,
    ErasedInput, JobGraph, NodeKind, OutEdge, Partitioning, Path, SourceTask, SubtaskInfo, Target, TaskControl,
    TaskError, TaskReport, TaskResult,
};
use sluice_net::ChannelId;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Flags shared by the supervisor, the attempt and its tasks.
pub(crate) struct Flags {
    /// Sources stop (cancellation, or an abort).
    pub stop_sources: AtomicBool,
    /// The user cancelled the job.
    pub cancelled: AtomicBool,
    /// The current attempt is failing: every task stops now.
    pub abort: AtomicBool,
    /// Savepoints asked for through the API, answered with the savepoint's path.
    pub savepoint_requests: Mutex<Vec<Sender<Result<String, String>>>>,
    /// Stops with a savepoint asked for through the API.
    pub stop_requests: Mutex<Vec<Sender<Result<String, String>>>>,
    /// What the job's tasks counted, over every attempt.
    pub counters: Arc<sluice_dataflow::counters::JobCounters>,
}

/// Someone waiting for a savepoint: an API caller, or a command-line request's answer file.
pub(crate) enum SavepointWaiter {
    Api(Sender<Result<String, String>>),
    File(std::path::PathBuf),
}

impl SavepointWaiter {
    pub(crate) fn answer(self, result: Result<String, String>) {
        match self {
            SavepointWaiter::Api(tx) => {
                let _ = tx.send(result);
            }
            SavepointWaiter::File(path) => {
                let text = match result {
                    Ok(p) => format!("ok {p}"),
                    Err(e) => format!("error {e}"),
                };
                // Written aside, then renamed: the asker never reads half an answer.
                let aside = path.with_extension("writing");
                if let Err(e) = std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, &path)) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot answer a savepoint request");
                }
            }
        }
    }
}

/// The savepoint requests of an attempt: through the API, a request file of the command
/// line in the checkpoint folder, or one of the worker in the process's control folder
/// (`SLUICE_CONTROL_DIR`; files are polled every 100 ms), answered when a savepoint
/// completes or cannot be taken. A request to stop with a savepoint cancels the job; its
/// final checkpoint, the state after the last record, is kept as the savepoint.
pub(crate) struct SavepointRequests {
    waiters: Vec<SavepointWaiter>,
    stop_waiters: Vec<SavepointWaiter>,
    control: Option<sluice_checkpoint::SavepointBox>,
    last_poll: Instant,
}

impl SavepointRequests {
    pub(crate) fn new() -> Self {
        let control = std::env::var_os(crate::processes::ENV_CONTROL_DIR).map(sluice_checkpoint::SavepointBox::at);
        SavepointRequests { waiters: Vec::new(), stop_waiters: Vec::new(), control, last_poll: Instant::now() }
    }

    /// Takes the requests made since the last call; whether a savepoint is to be taken now.
    /// A stop request cancels the job through `flags`.
    pub(crate) fn poll(&mut self, flags: &Flags, cp: Option<&Checkpointing>) -> bool {
        let before = self.waiters.len();
        let take = |list: &Mutex<Vec<Sender<Result<String, String>>>>| -> Vec<SavepointWaiter> {
            list.lock().unwrap_or_else(|e| e.into_inner()).drain(..).map(SavepointWaiter::Api).collect()
        };
        self.waiters.extend(take(&flags.savepoint_requests));
        self.stop_waiters.extend(take(&flags.stop_requests));
        if self.last_poll.elapsed() >= Duration::from_millis(100) {
            self.last_poll = Instant::now();
            let asks = [cp.map(|cp| cp.store.savepoint_box()), self.control.clone()];
            for ask in asks.iter().flatten().filter_map(|b| b.take()) {
                let waiter = SavepointWaiter::File(ask.answer);
                if ask.stop {
                    self.stop_waiters.push(waiter);
                } else {
                    self.waiters.push(waiter);
                }
            }
        }
        if cp.is_none() {
            let reason = "savepoints need checkpointing: start the job with a checkpoint folder (--checkpoint-dir)";
            self.answer(Err(reason.into()));
            self.stop_waiters.drain(..).for_each(|w| w.answer(Err(reason.into())));
            return false;
        }
        if !self.stop_waiters.is_empty() && !flags.cancelled.swap(true, Ordering::SeqCst) {
            tracing::info!("stopping the job with a savepoint, as asked");
            flags.stop_sources.store(true, Ordering::SeqCst);
        }
        self.waiters.len() > before
    }

    /// Checkpoint `id` completed as a savepoint: keep it and answer with its path.
    pub(crate) fn completed(&mut self, cp: &Checkpointing, id: u64) {
        let kept = cp.store.keep_as_savepoint(id).map_err(|e| e.to_string());
        if let Ok(path) = &kept {
            tracing::info!(checkpoint = id, path = %path, "savepoint taken");
        }
        self.answer(kept);
    }

    /// The job stopped after its final checkpoint: keep that one as the savepoint of those
    /// who asked to stop with one, and tell the others that no savepoint comes.
    pub(crate) fn stopped(&mut self, cp: &Checkpointing) {
        self.answer(Err("the job stopped before the savepoint completed".into()));
        if self.stop_waiters.is_empty() {
            return;
        }
        let kept = match cp.completed.last() {
            Some(&id) => cp.store.keep_as_savepoint(id).map_err(|e| e.to_string()),
            None => Err("the job stopped without a completed checkpoint".into()),
        };
        if let Ok(path) = &kept {
            tracing::info!(path = %path, "stopped with a savepoint");
        }
        self.stop_waiters.drain(..).for_each(|w| w.answer(kept.clone()));
    }

    /// Answers every waiter.
    pub(crate) fn answer(&mut self, result: Result<String, String>) {
        self.waiters.drain(..).for_each(|w| w.answer(result.clone()));
    }

    /// The job failed: no savepoint comes.
    pub(crate) fn failed(&mut self) {
        let reason = "the job failed before the savepoint completed".to_string();
        self.answer(Err(reason.clone()));
        self.stop_waiters.drain(..).for_each(|w| w.answer(Err(reason.clone())));
    }
}

/// When checkpoints are due; without checkpointing, never.
pub(crate) fn schedule_of(checkpointing: Option<&Checkpointing>) -> Schedule {
    match checkpointing {
        Some(cp) => Schedule {
            interval: cp.config.interval,
            min_pause: cp.config.min_pause,
            timeout: cp.config.timeout,
            tolerable_failures: cp.config.tolerable_failures,
        },
        None => Schedule {
            interval: Duration::MAX,
            min_pause: Duration::MAX,
            timeout: Duration::MAX,
            tolerable_failures: u32::MAX,
        },
    }
}

/// The job's max parallelism and each operator's parallelism, for checkpoint manifests.
pub(crate) fn shape_of(graph: &JobGraph) -> (usize, BTreeMap<String, usize>) {
    (
        graph.config.max_parallelism,
        graph.nodes.iter().map(|n| (n.state_id().to_string(), graph.parallelism_of(n.id))).collect(),
    )
}

/// Checkpointing state carried from attempt to attempt.
pub(crate) struct Checkpointing {
    pub config: CheckpointConfig,
    pub store: CheckpointStore,
    /// The next checkpoint id (ids grow across restarts).
    pub next_id: u64,
    /// Completed checkpoints, oldest first.
    pub completed: Vec<u64>,
    /// Durations and sizes of completed checkpoints, for reports.
    pub stats: Vec<(Duration, u64)>,
    /// The current attempt was restored from a checkpoint.
    pub restored: bool,
}

/// How long after its sources' first watermark a restored attempt takes its first
/// checkpoint (unless the interval is shorter).
const RESTORED_FIRST_CHECKPOINT: Duration = Duration::from_millis(200);

/// The instant a new attempt's coordinator counts its first interval from. A restored
/// attempt takes its first checkpoint soon rather than after a whole interval: with
/// exactly-once sinks, what it produced since the restore becomes visible only when a
/// checkpoint commits, so waiting an interval would add up to one to the recovery time.
/// "Soon" is one watermark interval and 200 ms: the backlog's windows fire on the first
/// watermark, which the sources emit one interval after they start; a checkpoint before
/// it would commit nothing of them.
pub(crate) fn first_interval_from(graph: &JobGraph, checkpointing: Option<&Checkpointing>, now: Instant) -> Instant {
    match checkpointing {
        Some(cp) if cp.restored => {
            let first = graph.config.watermark_interval + RESTORED_FIRST_CHECKPOINT;
            let early = cp.config.interval.saturating_sub(first);
            now.checked_sub(early).unwrap_or(now)
        }
        _ => now,
    }
}

pub(crate) enum Work {
    Source(Box<dyn SourceTask>, TaskControl),
    Inbox { head: Box<dyn ErasedInput>, inbox: Receiver<Envelope>, credits: ChannelCredits, control: TaskControl },
}

type Inbox = (SyncSender<Envelope>, Receiver<Envelope>);

/// Inbox room per input channel for messages that need no credit (watermarks, idleness,
/// barriers, the end).
const CONTROL_ROOM: usize = 4;

/// The tasks of an attempt, built and not yet started.
/// Which subtask a task thread runs: its chain's head operator (the user's name) and index.
pub(crate) struct TaskName {
    operator: String,
    subtask: usize,
    parallelism: usize,
    /// Every operator of the task's chain, head first, quoted and joined by arrows.
    chain: String,
}

impl std::fmt::Display for TaskName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}' (subtask {} of {})", self.operator, self.subtask, self.parallelism)
    }
}

pub(crate) struct Built {
    pub work: Vec<(TaskName, Work)>,
    pub barrier_senders: Vec<(usize, Sender<Barrier>)>,
    pub reports: Receiver<TaskReport>,
}

/// Builds the tasks of this process: all of them, or with `network` the subtasks placed
/// here, connected to the others' through the network.
pub(crate) fn build(graph: &JobGraph, restore: Option<&RestorePlan>, network: Option<&Network>) -> TaskResult<Built> {
    let plan = plan(graph);
    let config = &graph.config;
    let local = |subtask: usize| network.is_none_or(|n| n.placement.is_local(subtask));
    let connection_to = |subtask: usize| {
        let network = network.expect("only a spread job has remote subtasks");
        network.connections[&network.placement.process_of(subtask)].clone()
    };
    // Each input channel of a consumer gets an even share of the consumer's capacity as
    // credits (at least two batches, so a producer can fill one while the other is read);
    // the inbox has room for every credit plus some control messages.
    let mut credits: Vec<Vec<Vec<Arc<Credit>>>> = plan
        .chains
        .iter()
        .map(|chain| {
            let head = chain.nodes[0];
            (0..chain.parallelism)
                .map(|subtask| {
                    let channels = if graph.nodes[head.0].imp.kind() == NodeKind::Source {
                        0
                    } else {
                        channel_count(graph, head, subtask)
                    };
                    let per_channel = (config.channel_capacity / channels.max(1)).max(2) as u32;
                    (0..channels).map(|_| Credit::new(per_channel)).collect()
                })
                .collect()
        })
        .collect();
    let mut inboxes: Vec<Vec<Option<Inbox>>> = plan
        .chains
        .iter()
        .zip(&credits)
        .map(|(chain, chain_credits)| {
            let head = &graph.nodes[chain.nodes[0].0];
            chain_credits
                .iter()
                .enumerate()
                .map(|(subtask, channels)| {
                    let room = channels.iter().map(|c| c.available() as usize + CONTROL_ROOM).sum::<usize>();
                    (head.imp.kind() != NodeKind::Source && local(subtask)).then(|| sync_channel(room))
                })
                .collect()
        })
        .collect();
    let senders: Vec<Vec<Option<SyncSender<Envelope>>>> = inboxes
        .iter()
        .map(|subtasks| subtasks.iter().map(|i| i.as_ref().map(|(tx, _)| tx.clone())).collect())
        .collect();
    let consumers = graph.consumers();
    let (report_tx, reports) = channel();
    let mut barrier_senders = Vec::new();
    let mut work = Vec::new();
    for (chain_index, (chain, chain_inboxes)) in plan.chains.iter().zip(inboxes.iter_mut()).enumerate() {
        for (subtask, inbox) in chain_inboxes.iter_mut().enumerate() {
            if !local(subtask) {
                continue;
            }
            let info_of = |node: usize| SubtaskInfo {
                operator: Arc::from(graph.nodes[node].name.as_str()),
                state_id: Arc::from(graph.nodes[node].state_id()),
                index: subtask,
                parallelism: chain.parallelism,
                max_parallelism: config.max_parallelism,
                batch_size: config.batch_size,
                max_batch_bytes: config.max_batch_bytes,
                asynchronous_snapshots: config.checkpointing.as_ref().is_some_and(|c| c.asynchronous_snapshots),
            };
            let restored = |node: usize| {
                restore.and_then(|r| r.states.get(&(graph.nodes[node].state_id().to_string(), subtask)).cloned())
            };
            let tail = &graph.nodes[chain.nodes.last().expect("a chain has a node").0];
            let mut next: Option<AnyInput> = None;
            if tail.imp.kind() != NodeKind::Sink {
                let mut edges = Vec::new();
                for &(consumer, edge) in &consumers[tail.id.0] {
                    let consumer_chain = plan.chain_of[consumer.0];
                    let targets: Vec<Target> = (0..graph.parallelism_of(consumer))
                        .filter(|&to| feeding_subtasks(graph, consumer, edge, to).contains(&subtask))
                        .map(|to| {
                            let channel = channel_index(graph, consumer, edge, to, subtask);
                            let credit = credits[consumer_chain][to][channel as usize].clone();
                            match &senders[consumer_chain][to] {
                                Some(inbox) => Target::local(inbox.clone(), channel, credit),
                                None => {
                                    let id = ChannelId { node: consumer.0 as u32, subtask: to as u32, channel };
                                    let remote = connection_to(to).remote_channel(id, credit.clone());
                                    Target { path: Path::Remote(remote), channel, credit }
                                }
                            }
                        })
                        .collect();
                    edges.push(match &graph.nodes[consumer.0].inputs[edge].partitioning {
                        Partitioning::Hash(hash) => OutEdge::Hash(hash.clone(), targets),
                        Partitioning::Broadcast => OutEdge::Broadcast(targets),
                        Partitioning::Forward | Partitioning::Rebalance => {
                            debug_assert!(!is_pointwise(graph, consumer, edge) || targets.len() == 1);
                            OutEdge::RoundRobin(rotate(targets, subtask))
                        }
                    });
                }
                next = Some(tail.imp.exchange(edges, &info_of(tail.id.0)));
            }
            let task = work.len();
            let control = |barriers| TaskControl::new(task, barriers, report_tx.clone());
            let mut source = None;
            for node_id in chain.nodes.iter().rev() {
                let node = &graph.nodes[node_id.0];
                let info = info_of(node_id.0);
                let stage = next.take();
                if node.imp.kind() == NodeKind::Source {
                    let state = restored(node_id.0);
                    if restore.is_some() && state.is_none() {
                        tracing::warn!(
                            source = %node.name,
                            "this source has no checkpointed position (it cannot replay): records it delivered \
                             since the last checkpoint are lost (at-most-once)"
                        );
                    }
                    source = Some(node.imp.source(stage.expect("a source feeds a stage"), &info, config, state)?);
                } else {
                    next = Some(node.imp.link(stage, &info, restored(node_id.0))?);
                }
            }
            let head_node = chain.nodes[0];
            let names: Vec<String> = chain.nodes.iter().map(|n| format!("'{}'", graph.nodes[n.0].name)).collect();
            let name = TaskName {
                operator: graph.nodes[head_node.0].name.clone(),
                subtask,
                parallelism: chain.parallelism,
                chain: names.join(" -> "),
            };
            let job = match source {
                Some(task_impl) => {
                    let (tx, rx) = channel();
                    barrier_senders.push((task, tx));
                    Work::Source(task_impl, control(Some(rx)))
                }
                None => {
                    let (inbox_sender, inbox) = inbox.take().expect("one inbox per subtask");
                    // A channel fed from another process gives its credit back over the
                    // connection, whose reader fills this inbox.
                    let mut returns: Vec<Arc<dyn CreditReturn>> = std::mem::take(&mut credits[chain_index][subtask])
                        .into_iter()
                        .map(|c| c as Arc<dyn CreditReturn>)
                        .collect();
                    let head = &graph.nodes[head_node.0];
                    for edge in 0..head.inputs.len() {
                        for from in feeding_subtasks(graph, head_node, edge, subtask).filter(|f| !local(*f)) {
                            let channel = channel_index(graph, head_node, edge, subtask, from);
                            let id = ChannelId { node: head_node.0 as u32, subtask: subtask as u32, channel };
                            let connection = connection_to(from);
                            let decode = head.imp.batch_decoder().expect("a consumer decodes its input");
                            connection.expect_inbound(id, inbox_sender.clone(), channel, decode);
                            returns[channel as usize] = connection.credit_return(id);
                        }
                    }
                    Work::Inbox {
                        head: head.imp.head(next.take().expect("a chain has a head stage")),
                        inbox,
                        credits: ChannelCredits(returns),
                        control: control(None),
                    }
                }
            };
            work.push((name, job));
        }
    }
    Ok(Built { work, barrier_senders, reports })
}

fn rotate(mut targets: Vec<Target>, by: usize) -> Vec<Target> {
    if !targets.is_empty() {
        let n = by % targets.len();
        targets.rotate_left(n);
    }
    targets
}

/// Commits sinks' transactions: `committables` by sink state id.
pub(crate) fn commit_sinks(graph: &JobGraph, committables: &HashMap<String, Vec<Vec<u8>>>) -> TaskResult {
    for node in graph.nodes.iter().filter(|n| n.imp.kind() == NodeKind::Sink) {
        for committable in committables.get(node.state_id()).into_iter().flatten() {
            node.imp.commit(committable).map_err(|source| TaskError::Io {
                operator: node.name.clone(),
                subtask: 0,
                what: "committing".into(),
                source,
            })?;
        }
    }
    Ok(())
}

pub(crate) fn committables_of(states: &[SubtaskState]) -> HashMap<String, Vec<Vec<u8>>> {
    let mut by_sink: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for s in states {
        if let OperatorState::Committable(bytes) = &s.state {
            by_sink.entry(s.operator.clone()).or_default().push(bytes.clone());
        }
    }
    by_sink
}

/// Writes a checkpoint (runs on the uploader thread).
fn upload(
    ckpt: &CheckpointStore,
    failpoint: Option<&sluice_dataflow::Failpoint>,
    graph_shape: &(usize, BTreeMap<String, usize>),
    id: u64,
    finished: bool,
    states: Vec<SubtaskState>,
) -> Result<u64, String> {
    let meta = CheckpointMeta {
        id,
        savepoint: false,
        finished,
        timestamp_ms: now_millis(),
        max_parallelism: graph_shape.0,
        parallelism: graph_shape.1.clone(),
    };
    // The "upload" failpoint fires after the state files are written, before the manifest:
    // the partial checkpoint it leaves must never be restored.
    let manifest = ckpt
        .write_with(meta, &states, || failpoint.map_or(Ok(()), |fp| fp("upload", id)))
        .map_err(|e| e.to_string())?;
    Ok(manifest.states.iter().map(|s| s.bytes).sum())
}

/// Runs one attempt to its end.
pub(crate) fn run_attempt(
    graph: &JobGraph,
    restore: Option<&RestorePlan>,
    flags: &Arc<Flags>,
    mut checkpointing: Option<&mut Checkpointing>,
) -> TaskResult<usize> {
    let Built { work, barrier_senders, reports } = build(graph, restore, None)?;
    let tasks = work.len();
    let (threads, errors) = start_tasks(graph, work, flags)?;
    tracing::info!(job = %graph.name, tasks, "attempt started");

    let shape = shape_of(graph);
    let sources: Vec<usize> = barrier_senders.iter().map(|(t, _)| *t).collect();
    let next_id = checkpointing.as_ref().map_or(1, |cp| cp.next_id);
    let schedule = schedule_of(checkpointing.as_deref());
    if let Some(cp) = checkpointing.as_deref_mut() {
        cp.restored = restore.is_some();
    }
    let since = first_interval_from(graph, checkpointing.as_deref(), Instant::now());
    let mut coordinator = CheckpointCoordinator::new(schedule, tasks, sources, next_id, since);
    let (uploads_tx, uploads) = channel::<(u64, Result<u64, String>)>();
    // Upload threads are joined before the attempt returns: no write outlives its attempt.
    let mut uploaders: Vec<JoinHandle<()>> = Vec::new();
    let mut coordinator_error: Option<TaskError> = None;
    let mut waiters = SavepointRequests::new();
    let mut actions: Vec<Action> = Vec::new();

    while !coordinator.all_finished() && !flags.abort.load(Ordering::SeqCst) && coordinator_error.is_none() {
        if let Ok(report) = reports.recv_timeout(Duration::from_millis(5)) {
            coordinator.on_report(report, Instant::now(), &mut actions);
        }
        while let Ok((id, result)) = uploads.try_recv() {
            coordinator.on_uploaded(id, result, Instant::now(), &mut actions);
        }
        if waiters.poll(flags, checkpointing.as_deref()) {
            coordinator.request_savepoint();
        }
        if flags.stop_sources.load(Ordering::SeqCst) {
            coordinator.stop();
        }
        coordinator.tick(Instant::now(), &mut actions);
        coordinator_error = carry_out(
            graph,
            &mut coordinator,
            checkpointing.as_deref_mut(),
            &mut actions,
            Carrier { barriers: &barrier_senders, shape: &shape, uploads: &uploads_tx, uploaders: &mut uploaders },
            &mut waiters,
        )
        .err()
        .inspect(|_| {
            flags.abort.store(true, Ordering::SeqCst);
            flags.stop_sources.store(true, Ordering::SeqCst);
        });
        if let Some(cp) = checkpointing.as_deref_mut() {
            // Ids grow across attempts, also when this one fails.
            cp.next_id = coordinator.next_id();
        }
    }

    for t in threads {
        if t.join().is_err() {
            flags.abort.store(true, Ordering::SeqCst);
        }
    }
    for uploader in uploaders.drain(..) {
        let _ = uploader.join();
    }
    let mut errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(e) = coordinator_error {
        waiters.failed();
        return Err(e);
    }
    if let Some(i) = errors.iter().position(|e| !e.is_secondary()) {
        waiters.failed();
        return Err(errors.swap_remove(i));
    }
    if let Some(e) = errors.pop() {
        if !flags.cancelled.load(Ordering::SeqCst) {
            return Err(e);
        }
    }
    if flags.abort.load(Ordering::SeqCst) {
        return Err(TaskError::Checkpoint("a task stopped unexpectedly".into()));
    }
    // Every task has finished. What is in flight ends first (its upload and commit); then a
    // final checkpoint holds the tasks' last state and the sinks' last transactions, and
    // those are committed.
    coordinator.stop();
    match checkpointing {
        Some(cp) => {
            let finished_input = !flags.cancelled.load(Ordering::SeqCst);
            let deadline = Instant::now() + cp.config.timeout + Duration::from_secs(60);
            let outcome: TaskResult = 'final_checkpoint: {
                while !coordinator.done() {
                    if Instant::now() > deadline {
                        break 'final_checkpoint Err(TaskError::Checkpoint(
                            "the final checkpoint did not complete in time".into(),
                        ));
                    }
                    match uploads.recv_timeout(Duration::from_millis(5)) {
                        Ok((id, result)) => coordinator.on_uploaded(id, result, Instant::now(), &mut actions),
                        Err(_) => coordinator.tick(Instant::now(), &mut actions),
                    }
                    if coordinator.is_idle() {
                        coordinator.finish(finished_input, Instant::now(), &mut actions);
                    }
                    let carrier =
                        Carrier { barriers: &[], shape: &shape, uploads: &uploads_tx, uploaders: &mut uploaders };
                    let carried =
                        carry_out(graph, &mut coordinator, Some(&mut *cp), &mut actions, carrier, &mut waiters);
                    cp.next_id = coordinator.next_id();
                    if let Err(e) = carried {
                        break 'final_checkpoint Err(e);
                    }
                }
                Ok(())
            };
            for uploader in uploaders {
                let _ = uploader.join();
            }
            if outcome.is_err() {
                waiters.failed();
            }
            outcome?;
            waiters.stopped(cp);
        }
        None => {
            // Without checkpoints, sinks commit what they pre-committed at the end.
            let mut states = coordinator.take_finished_states();
            states.retain(|s| matches!(s.state, OperatorState::Committable(_)));
            commit_sinks(graph, &committables_of(&states))?;
        }
    }
    Ok(tasks)
}

/// Starts a thread per task; returns them and where their errors go.
pub(crate) fn start_tasks(
    graph: &JobGraph,
    work: Vec<(TaskName, Work)>,
    flags: &Arc<Flags>,
) -> TaskResult<(Vec<JoinHandle<()>>, Arc<Mutex<Vec<TaskError>>>)> {
    let errors: Arc<Mutex<Vec<TaskError>>> = Arc::new(Mutex::new(Vec::new()));
    let exactly_once =
        graph.config.checkpointing.as_ref().map(|c| c.mode == CheckpointMode::ExactlyOnce).unwrap_or(true);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut progress = Vec::new();
    for (name, job) in work {
        let (task_flags, errors) = (flags.clone(), errors.clone());
        let tick = graph.config.tick;
        let thread_name = format!("sluice:{}#{}", name.operator, name.subtask);
        let task_progress = sluice_dataflow::progress::TaskProgress::new(
            match name.chain.contains(" -> ") {
                true => format!("the task of {} (subtask {})", name.chain, name.subtask),
                false => format!("{} (subtask {})", name.chain, name.subtask),
            },
            matches!(job, Work::Source(..)),
        );
        progress.push(task_progress.clone());
        // A task error, from the task's thread or from the thread encoding its copied state,
        // fails the attempt: logged (unless it only echoes another's), every task told to
        // stop, and kept for the supervisor.
        let fail: sluice_dataflow::FailureHandler = {
            let (flags, name) = (task_flags.clone(), name.to_string());
            Arc::new(move |error: TaskError| {
                if !error.is_secondary() {
                    tracing::error!("task {name} failed: {error}");
                }
                flags.abort.store(true, Ordering::SeqCst);
                flags.stop_sources.store(true, Ordering::SeqCst);
                errors.lock().unwrap_or_else(|e| e.into_inner()).push(error);
            })
        };
        let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
            let flags = task_flags;
            sluice_dataflow::counters::enter(flags.counters.clone());
            sluice_dataflow::progress::enter(task_progress.clone());
            struct Ended(Arc<sluice_dataflow::progress::TaskProgress>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.end();
                }
            }
            let _ended = Ended(task_progress);
            // User code is guarded where it is called, naming its operator; this is the net
            // under everything else, so that no panic can end a task without failing the
            // attempt (the coordinator would otherwise wait for its report forever).
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                Work::Source(mut task, mut control) => {
                    control.on_failure(fail.clone());
                    task.run(&flags.stop_sources, &control)
                }
                Work::Inbox { mut head, inbox, credits, mut control } => {
                    control.on_failure(fail.clone());
                    run_inbox_task(&mut *head, inbox, credits, &flags.abort, tick, &control, exactly_once)
                }
            }))
            .unwrap_or_else(|payload| {
                Err(TaskError::Panicked {
                    operator: name.operator.clone(),
                    subtask: name.subtask,
                    parallelism: name.parallelism,
                    message: sluice_dataflow::panic_message(&*payload),
                })
            });
            if let Err(error) = result {
                fail(error);
            }
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                flags.abort.store(true, Ordering::SeqCst);
                flags.stop_sources.store(true, Ordering::SeqCst);
                for t in threads {
                    let _ = t.join();
                }
                return Err(TaskError::Checkpoint(format!("could not start a task thread: {e}")));
            }
        }
    }
    crate::watchdog::watch(progress, crate::watchdog::Settings::of(&graph.config));
    Ok((threads, errors))
}

/// What carrying out the coordinator's actions needs of the attempt.
struct Carrier<'a> {
    barriers: &'a [(usize, Sender<Barrier>)],
    shape: &'a (usize, BTreeMap<String, usize>),
    uploads: &'a Sender<(u64, Result<u64, String>)>,
    uploaders: &'a mut Vec<JoinHandle<()>>,
}

/// Carries out the coordinator's actions (and those that their outcomes lead to).
fn carry_out(
    graph: &JobGraph,
    coordinator: &mut CheckpointCoordinator,
    mut checkpointing: Option<&mut Checkpointing>,
    actions: &mut Vec<Action>,
    carrier: Carrier<'_>,
    waiters: &mut SavepointRequests,
) -> TaskResult {
    while !actions.is_empty() {
        for action in std::mem::take(actions) {
            let Some(cp) = checkpointing.as_deref_mut() else { continue };
            match action {
                Action::Trigger { barrier, sources } => {
                    for (_, tx) in carrier.barriers.iter().filter(|(t, _)| sources.contains(t)) {
                        let _ = tx.send(barrier);
                    }
                }
                Action::Upload { id, finished, states } => {
                    let (store, failpoint, shape) =
                        (cp.store.clone(), cp.config.failpoint.clone(), carrier.shape.clone());
                    let tx = carrier.uploads.clone();
                    carrier.uploaders.push(std::thread::spawn(move || {
                        let _ = tx.send((id, upload(&store, failpoint.as_ref(), &shape, id, finished, states)));
                    }));
                }
                Action::Completed { id, savepoint, bytes, took } => completed(cp, waiters, id, savepoint, bytes, took),
                Action::Commit { id, states } => {
                    let result = commit_and_prune(graph, cp, id, &states)?;
                    coordinator.on_committed(id, result, Instant::now(), actions);
                }
                Action::Failed { id, savepoint, reason } => {
                    tracing::warn!(checkpoint = id, error = %reason, "checkpoint failed");
                    if savepoint {
                        waiters.answer(Err(reason));
                    }
                }
                Action::SavepointRefused(reason) => waiters.answer(Err(reason)),
                Action::FailJob(reason) => return Err(TaskError::Checkpoint(reason)),
            }
        }
    }
    Ok(())
}

/// A checkpoint is durable: commit its transactions (retried by the coordinator if this
/// fails, so everything here may run more than once).
pub(crate) fn commit(graph: &JobGraph, cp: &mut Checkpointing, id: u64, states: &[SubtaskState]) -> TaskResult {
    let committables = committables_of(states);
    if !committables.is_empty() {
        // Before any reader can see this checkpoint's output: from now on no restore may
        // fall back past it without saying so.
        cp.store.record_commit(id).map_err(|e| TaskError::Checkpoint(e.to_string()))?;
    }
    commit_sinks(graph, &committables)
}

/// Checkpoint `id` is written: count it, and keep it as a savepoint if it is one.
pub(crate) fn completed(
    cp: &mut Checkpointing,
    waiters: &mut SavepointRequests,
    id: u64,
    savepoint: bool,
    bytes: u64,
    took: Duration,
) {
    cp.stats.push((took, bytes));
    cp.completed.push(id);
    tracing::info!(checkpoint = id, bytes, ms = took.as_millis() as u64, "checkpoint complete");
    if savepoint {
        waiters.completed(cp, id);
    }
}

/// Commits checkpoint `id`'s transactions and, if that worked, prunes; the commit's
/// outcome is for the coordinator. The "commit" failpoint stands for a crash between a
/// checkpoint's completion and its commit: the attempt dies (`Err`), no retry.
pub(crate) fn commit_and_prune(
    graph: &JobGraph,
    cp: &mut Checkpointing,
    id: u64,
    states: &[SubtaskState],
) -> TaskResult<Result<(), String>> {
    if let Some(fp) = &cp.config.failpoint {
        fp("commit", id).map_err(TaskError::Checkpoint)?;
    }
    // A process whose worker went silent may belong to a replaced attempt: no commit.
    crate::processes::worker_lease().map_err(TaskError::Checkpoint)?;
    let result = commit(graph, cp, id, states);
    if result.is_ok() {
        prune(cp, id);
    }
    Ok(result.map_err(|e| e.to_string()))
}

/// Checkpoint `id` is committed: drop the checkpoints older than the retained ones.
pub(crate) fn prune(cp: &mut Checkpointing, id: u64) {
    for old in to_prune(&cp.completed, cp.config.retain, &[]) {
        cp.completed.retain(|c| *c != old);
    }
    // Every folder older than the oldest retained checkpoint goes, including ones that
    // never completed (a failed upload) and ones completed by an attempt that then failed.
    let oldest_kept = cp.completed.iter().copied().min().unwrap_or(id);
    for old in cp.store.checkpoint_ids().unwrap_or_default().into_iter().filter(|c| *c < oldest_kept) {
        if let Err(e) = cp.store.delete(old) {
            tracing::warn!(checkpoint = old, error = %e, "could not delete an old checkpoint");
        }
    }
}
