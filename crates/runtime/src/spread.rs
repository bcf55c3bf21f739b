//! One attempt of a job spread over processes, checkpoints included. Process 0 is the
//! job's checkpoint coordinator (as Flink's JobMaster is per job): it runs the same
//! [`CheckpointCoordinator`] state machine as local mode, over every process's tasks.
//! State does not travel through it: a task's states stay in its own process, which tells
//! process 0 only a key for each (and a sink's small pre-committed transaction inline);
//! when a checkpoint is complete, process 0 asks each process to write its parts into the
//! checkpoint's folder, and writes the manifest once all have. It then commits the sinks'
//! transactions itself (a sink's commit works from any process: the file sink renames
//! files in the shared folder, Kafka resumes a transaction by its id).
//!
//! The protocol on the processes' connections, as control frames:
//!
//! ```text
//! 0 -> all : Start { restore }          where every process starts from
//! p -> 0   : Ready { tasks, sources }    p has built its tasks (its channels are routed)
//! 0 -> all : Go                          everyone has: start the tasks
//! 0 -> p   : Trigger(barrier)            inject it into your running sources
//! p -> 0   : Report { task, checkpoint, parts }
//! 0 -> p   : Upload { id, keys }         write these parts into checkpoint id
//! p -> 0   : Uploaded { id, entries | error }
//! 0 -> all : Done                        the final checkpoint is committed: end
//! ```

use crate::attempt::{
    build, commit_and_prune, commit_sinks, committables_of, completed, schedule_of, shape_of, start_tasks, Built,
    Checkpointing, Flags, SavepointRequests,
};
use crate::coordinator::{Action, CheckpointCoordinator, Part};
use crate::processes::{Network, Placement};
use serde::{Deserialize, Serialize};
use sluice_checkpoint::{CheckpointMeta, RestorePlan, StateEntry};
use sluice_dataflow::snapshot::{Barrier, OperatorState, SubtaskState};
use sluice_dataflow::{now_millis, JobGraph, TaskError, TaskReport, TaskResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A control message between the processes of a spread job.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    Start {
        restore: Option<u64>,
    },
    Ready {
        tasks: u32,
        sources: Vec<u32>,
    },
    Go,
    Trigger(Barrier),
    Report {
        task: u32,
        checkpoint: Option<u64>,
        parts: Vec<(u64, Option<SubtaskState>)>,
    },
    Upload {
        id: u64,
        keys: Vec<u64>,
    },
    Uploaded {
        id: u64,
        result: Result<Vec<StateEntry>, String>,
    },
    Done,
    /// Process 0 was cancelled: every process stops its sources (the job drains and takes
    /// its final checkpoint).
    Stop,
    /// Process 0 committed these transactions of the receiver's sink subtasks: the
    /// receiver frees what it kept for them (`Sink::release`).
    Released(Vec<SubtaskState>),
}

/// A part of a checkpoint that a process holds: its key there, and a sink's transaction.
#[derive(Clone, Debug, PartialEq)]
struct HeldPart {
    process: u32,
    key: u64,
    committable: Option<SubtaskState>,
}

impl Part for HeldPart {
    fn is_committable(&self) -> bool {
        self.committable.is_some()
    }
}

/// The states a process holds for checkpoints, by key: those of its finished tasks for
/// every later checkpoint, the others until the next trigger.
#[derive(Default)]
struct Held {
    next: u64,
    parts: HashMap<u64, (SubtaskState, bool)>,
}

impl Held {
    fn keep(&mut self, states: Vec<SubtaskState>, last: bool) -> Vec<(u64, Option<SubtaskState>)> {
        states
            .into_iter()
            .map(|state| {
                self.next += 1;
                let committable = matches!(state.state, OperatorState::Committable(_)).then(|| state.clone());
                self.parts.insert(self.next, (state, last));
                (self.next, committable)
            })
            .collect()
    }

    /// A new checkpoint starts: parts of earlier ones are written or abandoned.
    fn forget_unfinished(&mut self) {
        self.parts.retain(|_, (_, last)| *last);
    }

    fn upload(
        &self,
        cp: &Checkpointing,
        placement: &Placement,
        id: u64,
        keys: &[u64],
    ) -> Result<Vec<StateEntry>, String> {
        let (attempt, process) = (placement.identity.attempt, placement.process);
        if let Some(fp) = &cp.config.failpoint {
            fp("upload", id)?;
        }
        keys.iter()
            .map(|key| {
                let (state, _) = self.parts.get(key).ok_or_else(|| format!("process {process} holds no part {key}"))?;
                cp.store.put_state(id, false, &part_name(attempt, process, *key), state).map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// The name of a state file that process `process` of attempt `attempt` writes for its
/// part `key`. The attempt is in it so that an attempt replaced while it wrote (a frozen
/// worker that resumed) cannot overwrite the files of the one that replaced it, even with
/// the same checkpoint id; its manifest cannot replace the other's either
/// (`CheckpointStore::write_manifest` writes only where none is).
fn part_name(attempt: u64, process: u32, key: u64) -> String {
    format!("a{attempt}-p{process}-{key}")
}

fn send(network: &Network, to: u32, message: &Control) -> TaskResult {
    let connection = network.connections.get(&to).ok_or(TaskError::Disconnected)?;
    connection.send_control(sluice_state::codec::encode(message))
}

fn broadcast(network: &Network, message: &Control) -> TaskResult {
    let bytes = sluice_state::codec::encode(message);
    network.connections.values().try_for_each(|c| c.send_control(bytes.clone()))
}

/// Waits for the next control message, giving up when the attempt aborts.
fn next_control(
    control: &Receiver<(u32, Vec<u8>)>,
    flags: &Flags,
    wait: Duration,
) -> TaskResult<Option<(u32, Control)>> {
    match control.recv_timeout(wait) {
        Ok((from, bytes)) => {
            let message = sluice_state::codec::decode(&bytes, "a control message")
                .map_err(|e| TaskError::Network(e.to_string()))?;
            Ok(Some((from, message)))
        }
        Err(RecvTimeoutError::Timeout) if !flags.abort.load(Ordering::SeqCst) => Ok(None),
        _ => Err(TaskError::Network("the job's other processes stopped".into())),
    }
}

/// Runs this process's share of a spread job: agrees with the others on where to start,
/// builds and starts its tasks, and takes part in checkpoints (coordinating them in
/// process 0). Returns the number of local tasks.
pub(crate) fn run(
    graph: &JobGraph,
    flags: &Arc<Flags>,
    mut checkpointing: Option<&mut Checkpointing>,
    network: &mut Network,
    choose_start: impl FnOnce(Option<&Checkpointing>) -> Result<Option<RestorePlan>, TaskError>,
    load: impl FnOnce(Option<&Checkpointing>, u64) -> Result<RestorePlan, TaskError>,
) -> TaskResult<usize> {
    let me = network.placement.process;
    let processes = network.placement.processes() as u32;
    let (control_tx, control) = channel();
    for connection in network.connections.values() {
        connection.expect_control(control_tx.clone());
    }
    let failure_flags = flags.clone();
    let failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let failed = failure.clone();
    network
        .start_reading(move |reason| {
            tracing::error!("{reason}");
            failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
            failure_flags.abort.store(true, Ordering::SeqCst);
            failure_flags.stop_sources.store(true, Ordering::SeqCst);
        })
        .map_err(TaskError::Network)?;
    let wait = Duration::from_millis(5);
    // Where to start: process 0 decides (and settles the sinks) before anyone writes.
    let restore = if me == 0 {
        let plan = choose_start(checkpointing.as_deref())?;
        broadcast(network, &Control::Start { restore: plan.as_ref().map(|p| p.checkpoint) })?;
        plan
    } else {
        loop {
            match next_control(&control, flags, wait)? {
                Some((_, Control::Start { restore: Some(id) })) => break Some(load(checkpointing.as_deref(), id)?),
                Some((_, Control::Start { restore: None })) => break None,
                Some((from, other)) => return Err(TaskError::Network(format!("process {from} sent {other:?} first"))),
                None => {}
            }
        }
    };
    if let Some(plan) = &restore {
        tracing::info!(job = %graph.name, checkpoint = plan.checkpoint, process = me, "restoring");
        // Ids grow past the restored one (its commit is recorded under it).
        if let Some(cp) = checkpointing.as_deref_mut() {
            cp.next_id = cp.next_id.max(plan.checkpoint + 1);
            cp.restored = true;
        }
    }
    let Built { work, barrier_senders, reports } = build(graph, restore.as_ref(), Some(network))?;
    let tasks = work.len();
    let sources: Vec<u32> = barrier_senders.iter().map(|(t, _)| *t as u32).collect();
    // Every process's channels are routed before anyone sends.
    let mut offsets: BTreeMap<u32, (usize, Vec<u32>)> = BTreeMap::new();
    if me == 0 {
        offsets.insert(0, (tasks, sources.clone()));
        while offsets.len() < processes as usize {
            match next_control(&control, flags, wait)? {
                Some((from, Control::Ready { tasks, sources })) => {
                    offsets.insert(from, (tasks as usize, sources));
                }
                Some((from, other)) => return Err(TaskError::Network(format!("process {from} sent {other:?} early"))),
                None => {}
            }
        }
        broadcast(network, &Control::Go)?;
    } else {
        send(network, 0, &Control::Ready { tasks: tasks as u32, sources: sources.clone() })?;
        loop {
            match next_control(&control, flags, wait)? {
                Some((_, Control::Go)) => break,
                Some((from, other)) => return Err(TaskError::Network(format!("process {from} sent {other:?} early"))),
                None => {}
            }
        }
    }
    let (threads, errors) = start_tasks(graph, work, flags)?;
    tracing::info!(job = %graph.name, tasks, process = me, "attempt started");
    let outcome = if me == 0 {
        coordinate(graph, flags, checkpointing.as_deref_mut(), network, &control, &reports, &barrier_senders, &offsets)
    } else {
        take_part(graph, flags, checkpointing.as_deref(), network, &control, &reports, &barrier_senders)
    };
    if outcome.is_err() {
        flags.abort.store(true, Ordering::SeqCst);
        flags.stop_sources.store(true, Ordering::SeqCst);
    }
    for t in threads {
        let _ = t.join();
    }
    let mut errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(i) = errors.iter().position(|e| !e.is_secondary()) {
        return Err(errors.swap_remove(i));
    }
    if let Some(reason) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // What the tasks and the control loop saw only echoes it.
        return Err(TaskError::Network(reason));
    }
    outcome?;
    if let Some(e) = errors.pop().filter(|_| !flags.cancelled.load(Ordering::SeqCst)) {
        return Err(e);
    }
    Ok(tasks)
}

/// Process 0: the job's checkpoint coordinator.
#[allow(clippy::too_many_arguments)]
fn coordinate(
    graph: &JobGraph,
    flags: &Arc<Flags>,
    mut checkpointing: Option<&mut Checkpointing>,
    network: &Network,
    control: &Receiver<(u32, Vec<u8>)>,
    reports: &Receiver<TaskReport>,
    barriers: &[(usize, std::sync::mpsc::Sender<Barrier>)],
    offsets: &BTreeMap<u32, (usize, Vec<u32>)>,
) -> TaskResult {
    // Global task numbers: process by process, each process's tasks in its own order.
    let mut first = BTreeMap::new();
    let mut total = 0;
    let mut global_sources = Vec::new();
    for (process, (tasks, sources)) in offsets {
        first.insert(*process, total);
        global_sources.extend(sources.iter().map(|s| total + *s as usize));
        total += tasks;
    }
    let schedule = schedule_of(checkpointing.as_deref());
    let next_id = checkpointing.as_ref().map_or(1, |cp| cp.next_id);
    let since = crate::attempt::first_interval_from(graph, checkpointing.as_deref(), Instant::now());
    let mut coordinator: CheckpointCoordinator<HeldPart> =
        CheckpointCoordinator::new(schedule, total, global_sources, next_id, since);
    let mut held = Held::default();
    let mut actions: Vec<Action<HeldPart>> = Vec::new();
    // Uploads in flight: checkpoint id -> (meta, processes still writing, entries so far).
    let mut uploading: Option<(CheckpointMeta, usize, Vec<StateEntry>, Option<String>)> = None;
    // Savepoints asked for through the API or the command line (`sluice savepoint`).
    let mut waiters = SavepointRequests::new();
    let mut stop_sent = false;
    let shape = shape_of(graph);
    loop {
        if flags.abort.load(Ordering::SeqCst) {
            return Err(TaskError::Network("the attempt was aborted".into()));
        }
        let now = Instant::now();
        while let Ok(TaskReport { task, checkpoint, states }) = reports.try_recv() {
            let parts = held.keep(states, checkpoint.is_none());
            let parts = parts.into_iter().map(|(key, committable)| HeldPart { process: 0, key, committable }).collect();
            coordinator.on_parts(task, checkpoint, parts, now, &mut actions);
        }
        if let Some((from, message)) = next_control(control, flags, Duration::from_millis(2))? {
            match message {
                Control::Report { task, checkpoint, parts } => {
                    let parts =
                        parts.into_iter().map(|(key, committable)| HeldPart { process: from, key, committable });
                    coordinator.on_parts(first[&from] + task as usize, checkpoint, parts.collect(), now, &mut actions);
                }
                Control::Uploaded { id, result } => {
                    let done = match uploading.as_mut().filter(|u| u.0.id == id) {
                        Some(u) => {
                            u.1 -= 1;
                            match result {
                                Ok(more) => u.2.extend(more),
                                Err(e) => u.3 = Some(e),
                            }
                            u.1 == 0
                        }
                        None => false,
                    };
                    if done {
                        let (meta, _, entries, error) = uploading.take().expect("checked above");
                        let result = write_manifest(checkpointing.as_deref(), meta, entries, error);
                        uploaded(&mut coordinator, id, result, &mut actions);
                    }
                }
                other => return Err(TaskError::Network(format!("process {from} sent {other:?} to the coordinator"))),
            }
        }
        if waiters.poll(flags, checkpointing.as_deref()) {
            coordinator.request_savepoint();
        }
        if flags.stop_sources.load(Ordering::SeqCst) {
            // A cancel of process 0 alone (Ctrl-C, a stop with a savepoint) stops them all.
            if flags.cancelled.load(Ordering::SeqCst) && !stop_sent {
                stop_sent = true;
                broadcast(network, &Control::Stop)?;
            }
            coordinator.stop();
        }
        coordinator.tick(Instant::now(), &mut actions);
        if coordinator.all_finished() && coordinator.is_idle() {
            match checkpointing.as_deref() {
                Some(_) => coordinator.finish(!flags.cancelled.load(Ordering::SeqCst), Instant::now(), &mut actions),
                None => {
                    // Without checkpoints, the sinks' last transactions are committed now.
                    let states: Vec<SubtaskState> =
                        coordinator.take_finished_states().into_iter().filter_map(|p| p.committable).collect();
                    commit_sinks(graph, &committables_of(&states))?;
                    broadcast(network, &Control::Done)?;
                    return Ok(());
                }
            }
        }
        while !actions.is_empty() {
            for action in std::mem::take(&mut actions) {
                let Some(cp) = checkpointing.as_deref_mut() else { continue };
                match action {
                    Action::Trigger { barrier, .. } => {
                        held.forget_unfinished();
                        for (_, tx) in barriers {
                            let _ = tx.send(barrier);
                        }
                        broadcast(network, &Control::Trigger(barrier))?;
                    }
                    Action::Upload { id, finished, states } => {
                        // A sink's transaction travels inline, so process 0 writes it itself: it
                        // may be carried over from an earlier checkpoint that did not complete,
                        // whose parts their holders have dropped since.
                        let mut by_process: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
                        let mut inline = Vec::new();
                        for part in &states {
                            match &part.committable {
                                Some(state) => inline.push((part.process, part.key, state)),
                                None => by_process.entry(part.process).or_default().push(part.key),
                            }
                        }
                        let mine = by_process.remove(&0).unwrap_or_default();
                        let meta = CheckpointMeta {
                            id,
                            savepoint: false,
                            finished,
                            timestamp_ms: now_millis(),
                            max_parallelism: shape.0,
                            parallelism: shape.1.clone(),
                        };
                        crate::pause_points::pause_at(crate::pause_points::BEFORE_UPLOAD, id);
                        let attempt = network.placement.identity.attempt;
                        let written = held.upload(cp, &network.placement, id, &mine).and_then(|mut entries| {
                            for (process, key, state) in &inline {
                                let name = part_name(attempt, *process, *key);
                                entries.push(cp.store.put_state(id, false, &name, state).map_err(|e| e.to_string())?);
                            }
                            Ok(entries)
                        });
                        let (entries, error) = match written {
                            Ok(entries) => (entries, None),
                            Err(e) => (Vec::new(), Some(e)),
                        };
                        for (process, keys) in &by_process {
                            send(network, *process, &Control::Upload { id, keys: keys.clone() })?;
                        }
                        if by_process.is_empty() {
                            let result = write_manifest(Some(&*cp), meta, entries, error);
                            uploaded(&mut coordinator, id, result, &mut actions);
                        } else {
                            uploading = Some((meta, by_process.len(), entries, error));
                        }
                    }
                    Action::Completed { id, bytes, took, savepoint } => {
                        completed(cp, &mut waiters, id, savepoint, bytes, took)
                    }
                    Action::Commit { id, states } => {
                        let (owners, states): (Vec<u32>, Vec<SubtaskState>) =
                            states.into_iter().filter_map(|p| Some((p.process, p.committable?))).unzip();
                        crate::pause_points::pause_at(crate::pause_points::BEFORE_COMMIT, id);
                        let result = commit_and_prune(graph, cp, id, &states)?;
                        if result.is_ok() {
                            release_elsewhere(network, owners, &states)?;
                        }
                        coordinator.on_committed(id, result, Instant::now(), &mut actions);
                    }
                    Action::Failed { id, reason, savepoint } => {
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
        if let Some(cp) = checkpointing.as_deref_mut() {
            cp.next_id = coordinator.next_id();
        }
        if coordinator.done() {
            match checkpointing.as_deref() {
                Some(cp) => waiters.stopped(cp),
                None => waiters.answer(Err("the job stopped before the savepoint completed".into())),
            }
            broadcast(network, &Control::Done)?;
            return Ok(());
        }
    }
}

/// Tells each process which of its sinks' transactions process 0 has committed.
/// `owners[i]` is the process of `committed[i]`.
fn release_elsewhere(network: &Network, owners: Vec<u32>, committed: &[SubtaskState]) -> TaskResult {
    let mut by_process: BTreeMap<u32, Vec<SubtaskState>> = BTreeMap::new();
    for (process, state) in owners.into_iter().zip(committed) {
        if process != 0 {
            by_process.entry(process).or_default().push(state.clone());
        }
    }
    for (process, states) in by_process {
        send(network, process, &Control::Released(states))?;
    }
    Ok(())
}

/// Why a checkpoint's manifest did not make it complete.
enum NotComplete {
    /// Its state or manifest could not be written (counts against the tolerated failures).
    Failed(String),
    /// Written, but the leading coordinator did not record it (coordinator HA).
    Unrecorded(String),
}

/// Tells the checkpoint coordinator how the manifest of checkpoint `id` went.
fn uploaded(
    coordinator: &mut CheckpointCoordinator<HeldPart>,
    id: u64,
    result: Result<u64, NotComplete>,
    actions: &mut Vec<Action<HeldPart>>,
) {
    match result {
        Ok(bytes) => coordinator.on_uploaded(id, Ok(bytes), Instant::now(), actions),
        Err(NotComplete::Failed(e)) => coordinator.on_uploaded(id, Err(e), Instant::now(), actions),
        Err(NotComplete::Unrecorded(e)) => coordinator.on_unrecorded(id, e, Instant::now(), actions),
    }
}

/// How long a checkpoint waits for the leading coordinator to record it: long enough for
/// a standby to take over from a leader that died (one 2 s lease), so that the checkpoint
/// in flight then is recorded by the next leader instead of being abandoned. The final
/// one (the job cannot end without it) waits for a leader much longer.
const RECORD_WITHIN: Duration = Duration::from_secs(5);
const RECORD_FINAL_WITHIN: Duration = Duration::from_secs(600);

/// Writes the manifest once every process has written its parts, then (with coordinator
/// HA) has the leader record the checkpoint; returns the bytes.
fn write_manifest(
    checkpointing: Option<&Checkpointing>,
    meta: CheckpointMeta,
    entries: Vec<StateEntry>,
    error: Option<String>,
) -> Result<u64, NotComplete> {
    if let Some(e) = error {
        return Err(NotComplete::Failed(e));
    }
    let cp = checkpointing.ok_or(NotComplete::Failed("no checkpoint store".into()))?;
    // A process whose worker went silent may belong to a replaced attempt: no completion.
    crate::processes::worker_lease().map_err(NotComplete::Failed)?;
    let bytes = entries.iter().map(|e| e.bytes).sum();
    let (id, finished) = (meta.id, meta.finished);
    cp.store.write_manifest(meta, entries).map_err(|e| NotComplete::Failed(e.to_string()))?;
    let within = if finished { RECORD_FINAL_WITHIN } else { RECORD_WITHIN };
    crate::processes::record_checkpoint(id, within).map_err(NotComplete::Unrecorded)?;
    Ok(bytes)
}

/// Every process but 0: reports to process 0, injects its barriers, writes its parts.
fn take_part(
    graph: &JobGraph,
    flags: &Arc<Flags>,
    checkpointing: Option<&Checkpointing>,
    network: &Network,
    control: &Receiver<(u32, Vec<u8>)>,
    reports: &Receiver<TaskReport>,
    barriers: &[(usize, std::sync::mpsc::Sender<Barrier>)],
) -> TaskResult {
    let mut held = Held::default();
    loop {
        while let Ok(TaskReport { task, checkpoint, states }) = reports.try_recv() {
            let parts = held.keep(states, checkpoint.is_none());
            send(network, 0, &Control::Report { task: task as u32, checkpoint, parts })?;
        }
        match next_control(control, flags, Duration::from_millis(2))? {
            Some((_, Control::Trigger(barrier))) => {
                held.forget_unfinished();
                for (_, tx) in barriers {
                    let _ = tx.send(barrier);
                }
            }
            Some((_, Control::Upload { id, keys })) => {
                let result = match checkpointing {
                    Some(cp) => held.upload(cp, &network.placement, id, &keys),
                    None => Err("this process has no checkpoint store".into()),
                };
                send(network, 0, &Control::Uploaded { id, result })?;
            }
            Some((_, Control::Done)) => return Ok(()),
            Some((_, Control::Released(states))) => {
                for state in &states {
                    let OperatorState::Committable(bytes) = &state.state else { continue };
                    if let Some(node) = graph.nodes.iter().find(|n| n.state_id() == state.operator) {
                        node.imp.release(bytes);
                    }
                }
            }
            Some((_, Control::Stop)) => {
                flags.cancelled.store(true, Ordering::SeqCst);
                flags.stop_sources.store(true, Ordering::SeqCst);
            }
            Some((from, other)) => return Err(TaskError::Network(format!("process {from} sent {other:?}"))),
            None => {}
        }
    }
}
