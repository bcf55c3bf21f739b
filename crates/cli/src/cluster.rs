//! The cluster commands: the coordinator and worker roles, `sluice cluster` (a
//! coordinator and N workers on this machine, for demos and tests), and the client
//! commands `submit`, `list` and `cancel`.

use sluice_cluster::auth::Secret;
use sluice_cluster::client::Client;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the coordinator is and the secret to reach it with.
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// The coordinator's gRPC address (host:port).
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "HOST:PORT")]
    pub coordinator: String,
    /// A file holding the cluster secret (else SLUICE_SECRET or SLUICE_SECRET_FILE).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

fn block_on<T>(future: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    sluice_cluster::runtime().map_err(|e| e.to_string())?.block_on(future)
}

/// `sluice coordinator`.
pub fn coordinator(
    listen: SocketAddr,
    http: Option<SocketAddr>,
    store: &Path,
    secret_file: Option<&Path>,
) -> Result<String, String> {
    sluice_runtime::init_logging(tracing::Level::INFO);
    sluice_runtime::processes::exit_with_parent();
    let secret = Secret::load(secret_file)?;
    let config = sluice_cluster::coordinator::CoordinatorConfig {
        listen,
        http,
        store: store.to_string_lossy().into_owned(),
        secret,
    };
    block_on(sluice_cluster::coordinator::run(config)).map(|()| String::new())
}

/// `sluice worker`.
pub fn worker(connection: &Connection, listen: SocketAddr, slots: u32, cache: Option<&Path>) -> Result<String, String> {
    sluice_runtime::init_logging(tracing::Level::INFO);
    sluice_runtime::processes::exit_with_parent();
    let secret = Secret::load(connection.secret_file.as_deref())?;
    let cache = match cache {
        Some(c) => c.to_path_buf(),
        None => std::env::temp_dir().join(format!("sluice-worker-{}", std::process::id())),
    };
    let config = sluice_cluster::worker::WorkerConfig {
        coordinator: connection.coordinator.clone(),
        listen,
        slots,
        cache,
        secret,
    };
    block_on(sluice_cluster::worker::run(config)).map(|()| String::new())
}

/// `sluice submit`.
pub fn submit(
    connection: &Connection,
    binary: &Path,
    name: Option<&str>,
    parallelism: u32,
    args: Vec<String>,
) -> Result<String, String> {
    let secret = Secret::load(connection.secret_file.as_deref())?;
    let name = name.map(str::to_string).unwrap_or_else(|| {
        binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "job".into())
    });
    block_on(async {
        let mut client = Client::connect(&connection.coordinator, &secret).await?;
        let reply = client.submit(binary, &name, args, parallelism).await?;
        Ok(format!(
            "{} submitted: '{name}' at parallelism {parallelism} over {} processes",
            reply.job_id, reply.processes
        ))
    })
}

/// `sluice list`.
pub fn list(connection: &Connection) -> Result<String, String> {
    let secret = Secret::load(connection.secret_file.as_deref())?;
    block_on(async {
        let jobs = Client::connect(&connection.coordinator, &secret).await?.list().await?;
        if jobs.is_empty() {
            return Ok("no jobs".into());
        }
        let mut lines = Vec::new();
        for j in jobs {
            let processes: Vec<String> =
                j.processes.iter().map(|p| format!("{}@worker-{}:{}", p.index, p.worker_id, p.state)).collect();
            lines.push(format!(
                "{:<8} {:<10} {:<20} p={:<3} processes [{}]{}",
                j.job_id,
                j.state,
                j.name,
                j.parallelism,
                processes.join(" "),
                if j.message.is_empty() { String::new() } else { format!("  {}", j.message) }
            ));
        }
        Ok(lines.join("\n"))
    })
}

/// `sluice cancel [--savepoint]`: with a savepoint, waits up to `savepoint` for it.
pub fn cancel(connection: &Connection, job: &str, savepoint: Option<Duration>) -> Result<String, String> {
    let secret = Secret::load(connection.secret_file.as_deref())?;
    block_on(async {
        let (state, path) = Client::connect(&connection.coordinator, &secret).await?.cancel(job, savepoint).await?;
        Ok(match path {
            Some(path) => format!("{job}: {state}, stopped with savepoint {path}"),
            None => format!("{job}: {state}"),
        })
    })
}

/// `sluice savepoint JOB_ID`.
pub fn savepoint(connection: &Connection, job: &str, timeout: Duration) -> Result<String, String> {
    let secret = Secret::load(connection.secret_file.as_deref())?;
    block_on(async { Client::connect(&connection.coordinator, &secret).await?.savepoint(job, timeout).await })
}

/// Kills the cluster's processes when `sluice cluster` ends, however it ends.
struct Roles(Vec<Child>);

impl Drop for Roles {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_address() -> Result<SocketAddr, String> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    probe.local_addr().map_err(|e| e.to_string())
}

/// `sluice cluster`: a coordinator and `workers` workers on loopback, as child processes
/// of this one, with a fresh secret written to `dir/secret`; runs until Ctrl-C or until
/// a role exits.
pub fn cluster(workers: u32, slots: u32, dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut random = [0u8; 24];
    getrandom::fill(&mut random).map_err(|e| format!("no random secret: {e}"))?;
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, &secret).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (grpc, http) = (free_address()?, free_address()?);
    let mut roles = Roles(Vec::new());
    let spawn = |args: Vec<String>| {
        Command::new(&exe)
            .args(args)
            .env_remove("SLUICE_SECRET")
            .env("SLUICE_SECRET_FILE", &secret_file)
            .env(sluice_runtime::processes::ENV_EXIT_WITH_PARENT, std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting a cluster role: {e}"))
    };
    let store = dir.join("store");
    roles.0.push(spawn(vec![
        "coordinator".into(),
        "--listen".into(),
        grpc.to_string(),
        "--http".into(),
        http.to_string(),
        "--store".into(),
        store.to_string_lossy().into_owned(),
    ])?);
    for i in 0..workers {
        roles.0.push(spawn(vec![
            "worker".into(),
            "--coordinator".into(),
            grpc.to_string(),
            "--slots".into(),
            slots.to_string(),
            "--cache".into(),
            dir.join(format!("worker-{i}")).to_string_lossy().into_owned(),
        ])?);
    }
    let info = format!(
        "{{\"coordinator\":\"{grpc}\",\"http\":\"{http}\",\"secret_file\":\"{}\",\"workers\":{workers}}}",
        secret_file.display()
    );
    std::fs::write(dir.join("cluster.json"), &info).map_err(|e| e.to_string())?;
    println!("coordinator at {grpc} (status: http://{http}/jobs), {workers} workers; in another shell:");
    println!("  export SLUICE_COORDINATOR={grpc} SLUICE_SECRET_FILE={}", secret_file.display());
    // Ctrl-C reaches the whole foreground process group; SIGTERM reaches only this
    // process: then the roles are stopped here (and a SIGKILL leaves them to notice that
    // this process is gone).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    let started = Instant::now();
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok("the cluster stopped".into());
        }
        for (i, child) in roles.0.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                let role = if i == 0 { "the coordinator".to_string() } else { format!("worker {}", i - 1) };
                return Err(format!("{role} exited ({status}) after {:?}; the cluster stops", started.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
