//! The `sluice` command line. Cluster mode: the roles (`coordinator`, `worker`, and
//! `cluster`, which starts a coordinator and workers on this machine) and the job
//! commands (`submit`, `list`, `cancel`). Local mode: trigger a savepoint of a running job
//! and list a job's checkpoints and savepoints. `sluice --help` and `sluice <command>
//! --help` explain each flag.
//!
//! A running job polls its checkpoint folder for a savepoint request about every 100 ms,
//! takes the savepoint, and writes the answer beside the request; `savepoint` waits for it,
//! and withdraws the request if no answer comes in time.

mod cluster;

use clap::{Parser, Subcommand};
use sluice_checkpoint::CheckpointStore;
use std::process::ExitCode;
use std::time::Duration;

/// Sluice's command line: a cluster's roles and jobs, and the savepoints and checkpoints
/// of jobs running in local mode.
#[derive(Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which job: its checkpoint folder and name.
#[derive(clap::Args)]
struct JobLocation {
    /// The folder the job writes its checkpoints to (its --checkpoint-dir).
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: String,
    /// The job's name (what it passes to execute).
    #[arg(long, value_name = "NAME")]
    job: String,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the coordinator: workers register with it, jobs are submitted to it.
    Coordinator {
        /// The gRPC address to listen on (only there).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7701")]
        listen: std::net::SocketAddr,
        /// Also serve job status as JSON at http://ADDR/jobs (bearer: the secret).
        #[arg(long, value_name = "HOST:PORT")]
        http: Option<std::net::SocketAddr>,
        /// Where job binaries (artifacts) are stored: a folder or, in a build with the `s3`
        /// feature, s3://bucket/prefix (configured by AWS_ENDPOINT, AWS_ACCESS_KEY_ID, ...).
        #[arg(long, value_name = "LOCATION")]
        store: String,
        /// The folder the job table is kept in, so that a coordinator started again knows
        /// its jobs and resumes them (default: STORE/_coordinator for a folder store; a
        /// remote store keeps the table in memory unless this is given).
        #[arg(long, value_name = "DIR")]
        meta_dir: Option<std::path::PathBuf>,
        /// A file holding the cluster secret (else SLUICE_SECRET or SLUICE_SECRET_FILE).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        tls: cluster::ServerTls,
        /// With TLS: the CA certificate (PEM) the workers' certificates are checked against.
        #[arg(long, env = "SLUICE_TLS_CA", value_name = "FILE")]
        tls_ca: Option<std::path::PathBuf>,
        #[command(flatten)]
        failover: cluster::Failover,
        #[command(flatten)]
        ha: cluster::Ha,
        /// With --ha: how long a new leader waits for the workers to report the running
        /// jobs' processes before restarting a job with one missing. 3000: workers look
        /// for the new leader as soon as a heartbeat fails (every 100 ms), so they rejoin
        /// well within it; a missing process costs a restart this much later.
        #[arg(long, value_name = "MS", default_value_t = 3000)]
        adopt_within_ms: u64,
    },
    /// Runs a worker: it registers with the coordinator and runs the job processes it is
    /// given.
    Worker {
        #[command(flatten)]
        connection: cluster::Connection,
        #[command(flatten)]
        tls: cluster::ServerTls,
        /// The gRPC address to listen on; port 0 picks a free one.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Job processes this worker runs at most.
        #[arg(long, value_name = "N", default_value_t = 4)]
        slots: u32,
        /// Where fetched job binaries are kept (a fresh temporary folder if not given).
        #[arg(long, value_name = "DIR")]
        cache: Option<std::path::PathBuf>,
    },
    /// Starts a coordinator and workers on this machine (loopback) and runs until Ctrl-C;
    /// prints the address and secret file the other commands need.
    Cluster {
        /// Workers to start.
        #[arg(long, value_name = "N", default_value_t = 3)]
        workers: u32,
        /// Slots per worker.
        #[arg(long, value_name = "S", default_value_t = 4)]
        slots: u32,
        /// Coordinators to start (more than one needs --etcd): one leads, the others stand
        /// by and take over when it dies.
        #[arg(long, value_name = "K", default_value_t = 1)]
        coordinators: u32,
        /// Start a three-member etcd on loopback (etcd from the PATH; Debian: etcd-server)
        /// and run the coordinators with high availability on it.
        #[arg(long)]
        etcd: bool,
        /// Leave the lease of a coordinator seen to exit to lapse by itself. By default this
        /// process, which sees its coordinators die for certain, revokes a dead leader's
        /// lease so that a standby takes over at once; with this flag it takes over one
        /// lease later, as after the loss of a whole machine (to measure that case).
        #[arg(long, requires = "etcd")]
        let_leases_lapse: bool,
        /// Make a CA and a certificate for 127.0.0.1 (in DIR/tls) and run every call and
        /// data connection over TLS 1.3.
        #[arg(long)]
        tls: bool,
        /// Where job binaries are stored: a folder or, in a build with the `s3` feature,
        /// s3://bucket/prefix (DIR/store if not given).
        #[arg(long, value_name = "LOCATION")]
        store: Option<String>,
        /// The folder for the secret, the artifact store and the workers' caches.
        #[arg(long, value_name = "DIR", default_value = ".sluice-cluster")]
        dir: std::path::PathBuf,
        #[command(flatten)]
        failover: cluster::Failover,
    },
    /// Uploads a job binary and runs it on the cluster; arguments after `--` go to the job.
    Submit {
        #[command(flatten)]
        connection: cluster::Connection,
        /// The job binary (built with the same Sluice; it takes sluice::JobArgs).
        binary: std::path::PathBuf,
        /// The job's parallelism (its subtasks spread over min(P, workers) processes).
        #[arg(long, short = 'p', value_name = "P", default_value_t = 1)]
        parallelism: u32,
        /// A name for the job (the binary's file name if not given).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The job's own arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Lists the cluster's jobs and their processes.
    List {
        #[command(flatten)]
        connection: cluster::Connection,
    },
    /// Cancels a cluster job: its sources stop and it drains.
    Cancel {
        #[command(flatten)]
        connection: cluster::Connection,
        /// The job id (as `sluice list` shows it).
        job: String,
        /// Stop with a savepoint (the job's final checkpoint, kept) and print its path;
        /// the job must checkpoint (--checkpoint-dir).
        #[arg(long)]
        savepoint: bool,
        /// How long to wait for the savepoint.
        #[arg(long, value_name = "SECS", default_value_t = 120, requires = "savepoint")]
        timeout_secs: u64,
    },
    /// Asks a running job to take a savepoint and prints its path: a cluster job by its id,
    /// or a local job by its checkpoint folder and name.
    Savepoint {
        /// The cluster job's id (as `sluice list` shows it).
        #[arg(value_name = "JOB_ID", conflicts_with_all = ["checkpoint_dir", "job"])]
        job_id: Option<String>,
        /// The coordinator's gRPC address, for a cluster job.
        #[arg(long, env = "SLUICE_COORDINATOR", value_name = "HOST:PORT")]
        coordinator: Option<String>,
        /// A file holding the cluster secret (else SLUICE_SECRET or SLUICE_SECRET_FILE).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<std::path::PathBuf>,
        /// With TLS: the CA certificate (PEM) the coordinator's certificate is checked
        /// against.
        #[arg(long, env = "SLUICE_TLS_CA", value_name = "FILE")]
        tls_ca: Option<std::path::PathBuf>,
        /// A local job: the folder it writes its checkpoints to (its --checkpoint-dir).
        #[arg(long, value_name = "DIR", requires = "job")]
        checkpoint_dir: Option<String>,
        /// A local job: its name (what it passes to execute).
        #[arg(long, value_name = "NAME", requires = "checkpoint_dir")]
        job: Option<String>,
        /// How long to wait for the job's answer; the request is withdrawn after it.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Lists a job's checkpoints and savepoints, each checked against its checksums.
    Checkpoints {
        #[command(flatten)]
        location: JobLocation,
    },
}

/// Opens an existing checkpoint folder; a folder that does not exist is an error, and
/// nothing is created.
fn open(location: &JobLocation) -> Result<CheckpointStore, String> {
    let dir = location.checkpoint_dir.trim_start_matches("file://");
    if !std::path::Path::new(dir).is_dir() {
        return Err(format!(
            "there is no checkpoint folder '{}'; give the --checkpoint-dir the job was started with",
            location.checkpoint_dir
        ));
    }
    CheckpointStore::open(&location.checkpoint_dir, &location.job).map_err(|e| e.to_string())
}

fn savepoint(store: &CheckpointStore, timeout: Duration) -> Result<String, String> {
    let answers = store.savepoint_box();
    let answer = answers.request(false)?;
    answers.wait(&answer, timeout, &|| true).map_err(|e| {
        if e.starts_with("no answer") {
            format!("{e}: is the job running with checkpoints in this folder, under this name?")
        } else {
            e
        }
    })
}

fn list(store: &CheckpointStore) -> Result<String, String> {
    let mut lines = Vec::new();
    for (id, savepoint) in store.all_ids().map_err(|e| e.to_string())? {
        let kind = if savepoint { "savepoint " } else { "checkpoint" };
        let line = match store.manifest(id, savepoint) {
            Ok(m) => format!(
                "{kind} {id:>6}  complete  {:>10} bytes  {:>3} files{}  {}",
                m.states.iter().map(|s| s.bytes).sum::<u64>(),
                m.states.len(),
                if m.finished { "  finished" } else { "" },
                store.path_of(id, savepoint)
            ),
            Err(e) => format!("{kind} {id:>6}  unusable: {e}"),
        };
        lines.push(line);
    }
    if let Ok(Some(committed)) = store.committed() {
        lines.push(format!("output committed up to checkpoint {committed}"));
    }
    if lines.is_empty() {
        lines.push("no checkpoints".into());
    }
    Ok(lines.join("\n"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Savepoint { job_id, coordinator, secret_file, tls_ca, checkpoint_dir, job, timeout_secs } => {
            let timeout = Duration::from_secs(*timeout_secs);
            match (job_id, coordinator, checkpoint_dir, job) {
                (Some(job_id), Some(coordinator), _, _) => {
                    let connection = cluster::Connection {
                        coordinator: Some(coordinator.clone()),
                        ha: cluster::Ha::default(),
                        secret_file: secret_file.clone(),
                        tls_ca: tls_ca.clone(),
                    };
                    cluster::savepoint(&connection, job_id, timeout)
                }
                (Some(_), None, _, _) => Err("a cluster job's savepoint needs the coordinator: give --coordinator \
                                              HOST:PORT or set SLUICE_COORDINATOR"
                    .into()),
                (None, _, Some(dir), Some(job)) => {
                    let location = JobLocation { checkpoint_dir: dir.clone(), job: job.clone() };
                    open(&location).and_then(|store| savepoint(&store, timeout))
                }
                _ => Err("name the job: a cluster job's id (sluice savepoint JOB_ID), or a local job's \
                          --checkpoint-dir DIR --job NAME"
                    .into()),
            }
        }
        Command::Checkpoints { location } => open(location).and_then(|store| list(&store)),
        Command::Coordinator {
            listen,
            http,
            store,
            meta_dir,
            secret_file,
            tls,
            tls_ca,
            failover,
            ha,
            adopt_within_ms,
        } => {
            let stores = (store.as_str(), meta_dir.as_deref());
            let tls = (tls, tls_ca.as_deref());
            cluster::coordinator(*listen, *http, stores, secret_file.as_deref(), tls, failover, (ha, *adopt_within_ms))
        }
        Command::Worker { connection, tls, listen, slots, cache } => {
            cluster::worker(connection, tls, *listen, *slots, cache.as_deref())
        }
        Command::Cluster { workers, slots, coordinators, etcd, let_leases_lapse, dir, tls, store, failover } => {
            let ha = (*coordinators, *etcd, !*let_leases_lapse);
            cluster::cluster((*workers, *slots), ha, dir, *tls, store.as_deref(), failover)
        }
        Command::Submit { connection, binary, parallelism, name, args } => {
            cluster::submit(connection, binary, name.as_deref(), *parallelism, args.clone())
        }
        Command::List { connection } => cluster::list(connection),
        Command::Cancel { connection, job, savepoint, timeout_secs } => {
            cluster::cancel(connection, job, savepoint.then(|| Duration::from_secs(*timeout_secs)))
        }
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}
