//! A job spread over several processes of the same binary, each running a share of the
//! subtasks (Timely's and Arroyo's model: every process builds the whole graph and runs
//! only what it was given). A process learns its share from its environment, as a worker
//! starts a job process:
//!
//! - `SLUICE_PROCESS`: this process's index, `0..N`;
//! - `SLUICE_PEERS`: the data addresses of all N processes, comma-separated, by index;
//! - `SLUICE_SECRET` or `SLUICE_SECRET_FILE`: the cluster secret (required);
//! - `SLUICE_ATTEMPT` (optional, default 1): the attempt, for fencing;
//! - `SLUICE_TLS_CERT`, `SLUICE_TLS_KEY`, `SLUICE_TLS_CA` (optional, all or none): TLS on
//!   the data connections;
//! - `SLUICE_LOCAL_STATE_DIR` (optional): a folder of this machine where the process keeps a
//!   copy of the state it checkpoints, read back instead of the store when it restarts here.
//!
//! Subtask `s` of every operator runs on process `s mod N`, so the subtasks of a keyed
//! exchange sit on different processes and its records cross process boundaries. Each
//! pair of processes shares one [`Connection`]: the higher index dials the lower.
//!
//! Checkpoints across the processes are in `spread.rs`. A failure ends every process of
//! the job; on a cluster the coordinator then starts the next attempt
//! (`SLUICE_ATTEMPT` + 1), which resumes from the latest checkpoint. A job process also
//! ends when its worker is gone or silent ([`exit_with_parent`], [`worker_lease`]), so an
//! attempt the coordinator has replaced does not go on.

use sluice_net::{Connection, Identity};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The environment variable with this process's index.
pub const ENV_PROCESS: &str = "SLUICE_PROCESS";
/// The environment variable with every process's data address.
pub const ENV_PEERS: &str = "SLUICE_PEERS";
/// The environment variable with the cluster secret.
pub const ENV_SECRET: &str = "SLUICE_SECRET";
/// The environment variable with the path of a file holding the cluster secret.
pub const ENV_SECRET_FILE: &str = "SLUICE_SECRET_FILE";
/// The environment variable with the attempt number.
pub const ENV_ATTEMPT: &str = "SLUICE_ATTEMPT";

/// The environment variable naming a process id this process must not outlive (set by a
/// worker for its job processes and by `sluice cluster` for its roles).
pub const ENV_EXIT_WITH_PARENT: &str = "SLUICE_EXIT_WITH_PARENT";
/// A folder through which the process's worker asks for savepoints (a
/// [`sluice_checkpoint::SavepointBox`]); process 0 of a checkpointed job answers there.
pub const ENV_CONTROL_DIR: &str = "SLUICE_CONTROL_DIR";
/// Set (to `1`) with coordinator HA: a checkpoint is complete only once the leading
/// coordinator has recorded it under its term ([`record_checkpoint`]), and sinks commit
/// only recorded checkpoints.
pub const ENV_RECORD_CHECKPOINTS: &str = "SLUICE_RECORD_CHECKPOINTS";
/// With coordinator HA: the newest checkpoint the leader has recorded as complete; no
/// newer one is restored ([`sluice_checkpoint::CheckpointStore::restoring_at_most`]).
pub const ENV_RECORDED_CHECKPOINT: &str = "SLUICE_RECORDED_CHECKPOINT";
/// A folder of this machine for local copies of the state this process checkpoints
/// (task-local recovery, [`sluice_checkpoint::CheckpointStore::with_local_copies`]); a
/// worker gives every process of a job the same folder, across attempts.
pub const ENV_LOCAL_STATE_DIR: &str = "SLUICE_LOCAL_STATE_DIR";

/// Set by `sluice submit` to a file path: the job binary builds its graph, writes what it
/// built there (its name, parallelism and [`fingerprint`]) and exits without running it,
/// as Flink's client runs a job's `main` to compile its job graph.
pub const ENV_DESCRIBE: &str = "SLUICE_DESCRIBE";
/// The fingerprint (16 hex digits) of the graph planned at submission: a job process whose
/// graph differs exits with [`EXIT_PERMANENT`] and is not restarted.
pub const ENV_GRAPH_FINGERPRINT: &str = "SLUICE_GRAPH_FINGERPRINT";
/// The exit code of a job process that cannot run however often it is restarted (its graph
/// is not the one planned): `EX_CONFIG` of sysexits.h. A worker reports it as permanent
/// and the coordinator fails the job instead of restarting it.
pub const EXIT_PERMANENT: i32 = 78;

/// With [`ENV_DESCRIBE`] set, writes the graph's description to the file it names and
/// ends the process (status 0); otherwise does nothing.
pub fn describe_if_asked(graph: &sluice_dataflow::JobGraph) {
    let Ok(path) = std::env::var(ENV_DESCRIBE) else { return };
    let description = format!(
        "{{\"job\":{:?},\"fingerprint\":\"{:016x}\",\"nodes\":{},\"max_parallelism\":{},\"checkpointing\":{}}}\n",
        graph.name,
        fingerprint(graph),
        graph.nodes.len(),
        graph.config.max_parallelism,
        graph.config.checkpointing.is_some()
    );
    match std::fs::write(&path, description) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{ENV_DESCRIBE}={path}: writing the graph's description: {e}");
            std::process::exit(1);
        }
    }
}

/// With [`ENV_GRAPH_FINGERPRINT`] set, checks that `graph` is the graph planned at
/// submission; a mismatch is explained and ends the process with [`EXIT_PERMANENT`].
pub fn check_planned_graph(graph: &sluice_dataflow::JobGraph) {
    let Ok(planned) = std::env::var(ENV_GRAPH_FINGERPRINT) else { return };
    if planned.trim().is_empty() {
        return;
    }
    let built = format!("{:016x}", fingerprint(graph));
    if planned.trim() != built {
        eprintln!(
            "job '{}': this process built a graph (fingerprint {built}) that is not the one planned at submission \
             ({}): the binary or its arguments behave differently here (an environment variable, a file or the \
             host it reads while building the graph?). Make the graph depend only on the binary and its \
             arguments, then submit again; restarting cannot help, so the job is not restarted",
            graph.name,
            planned.trim()
        );
        std::process::exit(EXIT_PERMANENT);
    }
}

/// Set to `stdin` by a worker that writes a byte to the job process's stdin every 50 ms
/// (its pulse): the process stops itself when the pulse stops for [`PULSE_TIMEOUT`].
pub const ENV_PULSE: &str = "SLUICE_PULSE";

/// How long a job process goes on without its worker's pulse before it stops itself. It is
/// shorter than the coordinator's heartbeat timeout (500 ms by default), so that by the time
/// the coordinator declares a hung worker lost and starts the next attempt elsewhere, the
/// old attempt's processes on that worker have stopped: they commit nothing more.
pub const PULSE_TIMEOUT: Duration = Duration::from_millis(300);

/// Milliseconds (on [`std::time::Instant`]'s clock, from the process start) of the last
/// pulse; 0 while no worker pulses.
static LAST_PULSE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn since_start() -> u64 {
    STARTED.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// With [`ENV_RECORD_CHECKPOINTS`] (coordinator HA): asks the leading coordinator, through
/// this process's worker (files in the control folder), to record checkpoint `id` as
/// complete under its term; waits up to `within`. `Err` says why it is not recorded (no
/// leader, a replaced attempt): the checkpoint is then not complete. Without it, `Ok`.
pub fn record_checkpoint(id: u64, within: Duration) -> Result<(), String> {
    if std::env::var_os(ENV_RECORD_CHECKPOINTS).is_none() {
        return Ok(());
    }
    let dir = std::path::PathBuf::from(std::env::var_os(ENV_CONTROL_DIR).ok_or("no control folder to ask in")?);
    let request = dir.join(format!("record-{id}.request"));
    let aside = dir.join(format!("record-{id}.partial"));
    std::fs::write(&aside, id.to_string())
        .and_then(|()| std::fs::rename(&aside, &request))
        .map_err(|e| format!("asking the worker to record checkpoint {id}: {e}"))?;
    let (ok, refused) = (dir.join(format!("record-{id}.ok")), dir.join(format!("record-{id}.refused")));
    let deadline = std::time::Instant::now() + within;
    loop {
        if std::fs::remove_file(&ok).is_ok() {
            return Ok(());
        }
        if let Ok(reason) = std::fs::read_to_string(&refused) {
            let _ = std::fs::remove_file(&refused);
            return Err(reason);
        }
        if std::time::Instant::now() > deadline {
            let _ = std::fs::remove_file(&request);
            return Err(format!("no leading coordinator recorded it within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether this process may still act for its attempt: `Err` once its worker's pulse has
/// been silent for longer than [`PULSE_TIMEOUT`] (the worker hangs, or is gone). Checked
/// before a checkpoint is declared complete and before sinks commit, so that a process
/// that resumes after a freeze does not commit for an attempt that was replaced meanwhile.
pub fn worker_lease() -> Result<(), String> {
    let last = LAST_PULSE.load(std::sync::atomic::Ordering::SeqCst);
    let silent = since_start().saturating_sub(last);
    if last != 0 && silent > PULSE_TIMEOUT.as_millis() as u64 {
        return Err(format!("this process's worker has been silent for {silent} ms: its attempt is stale"));
    }
    Ok(())
}

/// If `SLUICE_EXIT_WITH_PARENT` names a process, ends this process as soon as that one is
/// gone (a worker killed with SIGKILL leaves no job process behind): the parent is watched
/// every 20 ms, and a change of parent (the orphan is re-parented at once, before the dead
/// parent is reaped) ends it. With `SLUICE_PULSE=stdin`, the worker's pulse on stdin is
/// watched too (see [`PULSE_TIMEOUT`]).
pub fn exit_with_parent() {
    let Some(pid) = std::env::var(ENV_EXIT_WITH_PARENT).ok().and_then(|p| p.trim().parse::<u32>().ok()) else {
        return;
    };
    let pulsed = std::env::var(ENV_PULSE).is_ok_and(|v| v == "stdin");
    if pulsed {
        LAST_PULSE.store(since_start(), std::sync::atomic::Ordering::SeqCst);
        let _ = std::thread::Builder::new().name("sluice:pulse".into()).spawn(|| {
            let mut byte = [0u8; 64];
            // EOF or an error: the worker closed the pipe (it is gone); the watch below ends
            // the process once the pulse is overdue.
            while matches!(std::io::Read::read(&mut std::io::stdin(), &mut byte), Ok(n) if n > 0) {
                LAST_PULSE.store(since_start(), std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let _ = std::thread::Builder::new().name("sluice:parent-watch".into()).spawn(move || loop {
        if std::os::unix::process::parent_id() != pid {
            eprintln!("process {pid}, which started this one, is gone: exiting");
            std::process::exit(1);
        }
        if let Err(why) = worker_lease() {
            eprintln!("{why}: exiting");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    });
}

/// How long processes wait for each other to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);

/// This process's share of a job spread over several processes.
#[derive(Clone, Debug)]
pub struct Placement {
    /// This process's index.
    pub process: u32,
    /// Every process's data address, by index.
    pub peers: Vec<SocketAddr>,
    /// Who this process is to its peers, with the secret.
    pub identity: Identity,
    /// TLS for the data connections, when `SLUICE_TLS_CERT`, `SLUICE_TLS_KEY` and
    /// `SLUICE_TLS_CA` are set ([`sluice_net::tls`]).
    pub tls: Option<sluice_net::Tls>,
}

impl Placement {
    /// Reads the placement from the environment: `Ok(None)` when `SLUICE_PROCESS` is not
    /// set (the job runs in this process alone). Errors name the variable to fix.
    pub fn from_env(graph: &sluice_dataflow::JobGraph) -> Result<Option<Placement>, String> {
        let job = graph.name.as_str();
        let Ok(process) = std::env::var(ENV_PROCESS) else { return Ok(None) };
        let process: u32 =
            process.trim().parse().map_err(|_| format!("{ENV_PROCESS}={process:?} is not a process index"))?;
        let peers = std::env::var(ENV_PEERS)
            .map_err(|_| format!("{ENV_PROCESS} is set but {ENV_PEERS} is not: give every process's address"))?;
        let peers: Vec<SocketAddr> = peers
            .split(',')
            .map(|a| a.trim().parse().map_err(|_| format!("{ENV_PEERS}: {a:?} is not an address (host:port)")))
            .collect::<Result<_, _>>()?;
        if process as usize >= peers.len() {
            return Err(format!("{ENV_PROCESS}={process} but {ENV_PEERS} lists {} processes", peers.len()));
        }
        let secret = match (std::env::var(ENV_SECRET), std::env::var(ENV_SECRET_FILE)) {
            (Ok(secret), _) => secret.into_bytes(),
            (_, Ok(path)) => std::fs::read(&path).map_err(|e| format!("{ENV_SECRET_FILE}={path}: {e}"))?,
            _ => {
                return Err(format!(
                    "a job process needs the cluster secret: set {ENV_SECRET} or {ENV_SECRET_FILE} (nothing runs open)"
                ))
            }
        };
        let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
        if secret.is_empty() {
            return Err(format!("the cluster secret ({ENV_SECRET} or {ENV_SECRET_FILE}) is empty"));
        }
        let attempt = match std::env::var(ENV_ATTEMPT) {
            Ok(a) => a.trim().parse().map_err(|_| format!("{ENV_ATTEMPT}={a:?} is not a number"))?,
            Err(_) => 1,
        };
        let identity =
            Identity { secret: Arc::from(secret), job: job.to_string(), attempt, process, graph: fingerprint(graph) };
        let tls = sluice_net::Tls::from_env()?;
        Ok(Some(Placement { process, peers, identity, tls }))
    }

    /// The number of processes.
    pub fn processes(&self) -> usize {
        self.peers.len()
    }

    /// The process that runs subtask `subtask` of any operator.
    pub fn process_of(&self, subtask: usize) -> u32 {
        (subtask % self.peers.len()) as u32
    }

    /// Whether this process runs subtask `subtask`.
    pub fn is_local(&self, subtask: usize) -> bool {
        self.process_of(subtask) == self.process
    }
}

/// The fingerprint of a job graph: what every process of a spread job must agree on for
/// their subtasks and channels to line up. It covers each node's state id, kind,
/// parallelism, inputs and their partitioning, and the max parallelism (FNV-1a over a
/// canonical text, so it is the same in every build).
pub fn fingerprint(graph: &sluice_dataflow::JobGraph) -> u64 {
    use sluice_dataflow::{NodeKind, Partitioning};
    let mut text = format!("max_parallelism={};", graph.config.max_parallelism);
    for node in &graph.nodes {
        let kind = match node.imp.kind() {
            NodeKind::Source => "source",
            NodeKind::Operator => "operator",
            NodeKind::Sink => "sink",
        };
        text.push_str(&format!("{}:{kind}:{}:", node.state_id(), graph.parallelism_of(node.id)));
        for input in &node.inputs {
            let partitioning = match input.partitioning {
                Partitioning::Forward => "forward",
                Partitioning::Rebalance => "rebalance",
                Partitioning::Broadcast => "broadcast",
                Partitioning::Hash(_) => "hash",
            };
            text.push_str(&format!("<{}/{partitioning}", input.from.0));
        }
        text.push(';');
    }
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// This process's connections to the other processes of the job.
pub(crate) struct Network {
    pub placement: Placement,
    pub connections: HashMap<u32, Arc<Connection>>,
    readers: Vec<JoinHandle<Result<(), String>>>,
}

impl Network {
    /// Listens on this process's address, dials every lower index and accepts every
    /// higher one.
    pub(crate) fn connect(placement: Placement) -> Result<Network, String> {
        let me = placement.process;
        let address = placement.peers[me as usize];
        let listener = TcpListener::bind(address).map_err(|e| format!("listening on {address}: {e}"))?;
        let higher: Vec<u32> = (me + 1..placement.processes() as u32).collect();
        let (identity, tls) = (placement.identity.clone(), placement.tls.clone());
        let accepting = std::thread::Builder::new()
            .name("sluice:net-accept".into())
            .spawn(move || Connection::accept_all(&listener, &identity, tls.as_ref(), &higher, CONNECT_WITHIN))
            .map_err(|e| e.to_string())?;
        let mut connections = HashMap::new();
        for peer in 0..me {
            let connection = Connection::dial(
                &placement.identity,
                placement.tls.as_ref(),
                peer,
                placement.peers[peer as usize],
                CONNECT_WITHIN,
            )
            .map_err(|e| e.to_string())?;
            connections.insert(peer, connection);
        }
        let accepted = accepting.join().map_err(|_| "the accepting thread panicked".to_string())??;
        connections.extend(accepted);
        let tls = placement.tls.is_some();
        tracing::info!(process = me, peers = connections.len(), tls, "connected to the job's other processes");
        Ok(Network { placement, connections, readers: Vec::new() })
    }

    /// Starts every connection's reader; a failure calls `on_failure`.
    pub(crate) fn start_reading(&mut self, on_failure: impl Fn(String) + Clone + Send + 'static) -> Result<(), String> {
        for connection in self.connections.values() {
            self.readers.push(connection.start_reading(on_failure.clone()).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    /// Says goodbye on every connection: this process sends nothing more.
    pub(crate) fn close(&mut self) {
        self.connections.values().for_each(|c| c.close());
        // The readers end at the peers' goodbyes; they hold nothing this process needs.
        self.readers.clear();
    }
}
