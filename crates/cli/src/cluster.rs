//! The cluster commands: the coordinator and worker roles, `sluice cluster` (a
//! coordinator and N workers on this machine, for demos and tests), and the client
//! commands `submit`, `list` and `cancel`.

use sluice_cluster::auth::{Ca, ClusterTls, Secret};
use sluice_cluster::client::Client;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Coordinator high availability on etcd.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Ha {
    /// Coordinator high availability: the etcd members' client addresses. Coordinators
    /// campaign for the leadership there (one leads, the others stand by); workers and
    /// the command line find the leader there.
    #[arg(long, env = "SLUICE_HA", value_name = "etcd://HOST:PORT,...")]
    pub ha: Option<String>,
    /// Names this cluster's keys in etcd, so that several clusters can share one etcd.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub ha_cluster: String,
    /// The leader's etcd lease in seconds: a dead leader is replaced within about this
    /// long. 2: etcd's shortest lease with its default election timeout (1 s) is about
    /// 1.5 s; a longer one only delays the takeover.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    pub lease_ttl_secs: u64,
}

impl Ha {
    /// The HA settings, checked; `None` without `--ha`.
    pub fn config(&self) -> Result<Option<sluice_cluster::ha::HaConfig>, String> {
        self.ha
            .as_deref()
            .map(|url| {
                sluice_cluster::ha::HaConfig::parse(url, &self.ha_cluster, Duration::from_secs(self.lease_ttl_secs))
            })
            .transpose()
    }
}

/// Where the coordinator is and the secret to reach it with.
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// The coordinator's gRPC address (host:port); with --ha, the leader is found in etcd
    /// instead.
    #[arg(long, env = "SLUICE_COORDINATOR", value_name = "HOST:PORT", required_unless_present = "ha")]
    pub coordinator: Option<String>,
    #[command(flatten)]
    pub ha: Ha,
    /// A file holding the cluster secret (else SLUICE_SECRET or SLUICE_SECRET_FILE).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// With TLS: the CA certificate (PEM) that the coordinator's and workers' certificates
    /// are checked against; calls then go over TLS.
    #[arg(long, env = "SLUICE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl Connection {
    /// Connects to the coordinator with the secret (and TLS, with a CA).
    async fn client(&self) -> Result<Client, String> {
        let secret = Secret::load(self.secret_file.as_deref())?;
        let ca = self.tls_ca.as_deref().map(Ca::read).transpose()?;
        let address = match self.ha.config()? {
            Some(ha) => sluice_cluster::ha::leader_address(&ha).await?,
            None => self.coordinator.clone().ok_or("give --coordinator HOST:PORT (or --ha etcd://HOST:PORT,...)")?,
        };
        Client::connect(&address, &secret, ca.as_ref()).await
    }
}

/// A server's TLS certificate and key (PEM); with them (and a CA), the role's server and
/// calls, and its job processes' data connections, use TLS 1.3.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerTls {
    /// The certificate chain (PEM) this role presents; it must name the address the role
    /// listens on (an IP address or a host name in its subject alternative names).
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl ServerTls {
    /// The TLS material with `ca`, loaded and checked; all three or none.
    fn load(&self, ca: Option<&Path>) -> Result<Option<ClusterTls>, String> {
        let files =
            sluice_net::TlsFiles::from_parts(self.tls_cert.clone(), self.tls_key.clone(), ca.map(Path::to_path_buf))?;
        files.map(ClusterTls::load).transpose()
    }
}

fn block_on<T>(future: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    sluice_cluster::runtime().map_err(|e| e.to_string())?.block_on(future)
}

/// How the coordinator detects failures and replaces failed attempts.
#[derive(clap::Args, Clone, Debug)]
pub struct Failover {
    /// How often workers send a heartbeat (ms).
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is lost and its processes move elsewhere (ms); keep
    /// it above a few intervals and above 300 ms (how long a job process outlives a silent
    /// worker).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub heartbeat_timeout_ms: u64,
    /// Where attempts are placed: least-loaded, most-free, lowest-latency, round-robin or
    /// random.
    #[arg(long, value_name = "STRATEGY", default_value = "least-loaded")]
    pub placement: String,
    /// Restarts of a job before it is failed for good.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_restarts: u32,
    /// A checkpointed job running on fewer processes than its parallelism allows (after a
    /// lost worker) moves back onto more once workers with room have been there this long
    /// (ms); 0: never.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub scale_up_after_ms: u64,
}

impl Failover {
    /// The settings, checked: the error names the flag to change.
    fn check(&self) -> Result<sluice_cluster::coordinator::Detection, String> {
        sluice_cluster::placement::strategy(&self.placement, 0)?;
        let pulse = sluice_runtime::processes::PULSE_TIMEOUT.as_millis() as u64;
        if self.heartbeat_interval_ms == 0 || self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err(format!(
                "--heartbeat-timeout-ms {} must be at least twice --heartbeat-interval-ms {} (and the interval above 0), \
                 or a worker is declared lost between two heartbeats",
                self.heartbeat_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.heartbeat_timeout_ms <= pulse {
            return Err(format!(
                "--heartbeat-timeout-ms {} must be above {pulse} ms, how long a job process outlives a silent worker: \
                 else the next attempt could start while the old one still runs",
                self.heartbeat_timeout_ms
            ));
        }
        Ok(sluice_cluster::coordinator::Detection {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
        })
    }

    fn as_args(&self) -> Vec<String> {
        vec![
            "--heartbeat-interval-ms".into(),
            self.heartbeat_interval_ms.to_string(),
            "--heartbeat-timeout-ms".into(),
            self.heartbeat_timeout_ms.to_string(),
            "--placement".into(),
            self.placement.clone(),
            "--max-restarts".into(),
            self.max_restarts.to_string(),
            "--scale-up-after-ms".into(),
            self.scale_up_after_ms.to_string(),
        ]
    }
}

/// `sluice coordinator`.
pub fn coordinator(
    listen: SocketAddr,
    http: Option<SocketAddr>,
    (store, meta_dir): (&str, Option<&Path>),
    secret_file: Option<&Path>,
    tls: (&ServerTls, Option<&Path>),
    failover: &Failover,
    (ha, adopt_within_ms): (&Ha, u64),
) -> Result<String, String> {
    let detection = failover.check()?;
    let ha = ha.config()?;
    let orphaned = sluice_cluster::worker::ORPHANED_AFTER.as_millis() as u64;
    if ha.is_some() && adopt_within_ms < 2 * orphaned {
        return Err(format!(
            "--adopt-within-ms {adopt_within_ms}: give at least {} ms; a worker that cannot join a new leader stops its \
             job processes after {orphaned} ms, and the leader must not restart their job before that",
            2 * orphaned
        ));
    }
    let tls = tls.0.load(tls.1)?;
    sluice_runtime::init_logging(tracing::Level::INFO);
    sluice_runtime::processes::exit_with_parent();
    let secret = Secret::load(secret_file)?;
    let meta_dir = match meta_dir {
        Some(dir) => Some(dir.to_path_buf()),
        None if !sluice_checkpoint::storage::is_remote(store) => {
            Some(Path::new(store.trim_start_matches("file://")).join("_coordinator"))
        }
        None => {
            tracing::warn!("the job table is kept in memory only: give --meta-dir to keep it across restarts");
            None
        }
    };
    let config = sluice_cluster::coordinator::CoordinatorConfig {
        meta_dir,
        listen,
        http,
        store: store.to_string(),
        secret,
        tls,
        detection,
        placement: failover.placement.clone(),
        max_restarts: failover.max_restarts,
        scale_up_after: (failover.scale_up_after_ms > 0).then(|| Duration::from_millis(failover.scale_up_after_ms)),
        ha,
        adopt_within: Duration::from_millis(adopt_within_ms),
    };
    block_on(sluice_cluster::coordinator::run(config)).map(|()| String::new())
}

/// `sluice worker`.
pub fn worker(
    connection: &Connection,
    tls: &ServerTls,
    listen: SocketAddr,
    slots: u32,
    cache: Option<&Path>,
) -> Result<String, String> {
    let tls = tls.load(connection.tls_ca.as_deref())?;
    sluice_runtime::init_logging(tracing::Level::INFO);
    sluice_runtime::processes::exit_with_parent();
    let secret = Secret::load(connection.secret_file.as_deref())?;
    let cache = match cache {
        Some(c) => c.to_path_buf(),
        None => std::env::temp_dir().join(format!("sluice-worker-{}", std::process::id())),
    };
    let config = sluice_cluster::worker::WorkerConfig {
        coordinator: connection.coordinator.clone().unwrap_or_default(),
        ha: connection.ha.config()?,
        listen,
        slots,
        cache,
        secret,
        tls,
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
    let name = name.map(str::to_string).unwrap_or_else(|| {
        binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "job".into())
    });
    block_on(async {
        let mut client = connection.client().await?;
        let reply = client.submit(binary, &name, args, parallelism).await?;
        Ok(format!(
            "{} submitted: '{name}' at parallelism {parallelism} over {} processes",
            reply.job_id, reply.processes
        ))
    })
}

/// `sluice list`.
pub fn list(connection: &Connection) -> Result<String, String> {
    block_on(async {
        let jobs = connection.client().await?.list().await?;
        if jobs.is_empty() {
            return Ok("no jobs".into());
        }
        let mut lines = Vec::new();
        for j in jobs {
            let processes: Vec<String> =
                j.processes.iter().map(|p| format!("{}@worker-{}:{}", p.index, p.worker_id, p.state)).collect();
            let events: Vec<String> = j.events.iter().map(|e| format!("\n    {e}")).collect();
            lines.push(format!(
                "{:<8} {:<10} {:<20} p={:<3} attempt {} processes [{}]{}{}",
                j.job_id,
                j.state,
                j.name,
                j.parallelism,
                j.attempt,
                processes.join(" "),
                if j.message.is_empty() { String::new() } else { format!("  {}", j.message) },
                events.concat()
            ));
        }
        Ok(lines.join("\n"))
    })
}

/// `sluice cancel [--savepoint]`: with a savepoint, waits up to `savepoint` for it.
pub fn cancel(connection: &Connection, job: &str, savepoint: Option<Duration>) -> Result<String, String> {
    block_on(async {
        let (state, path) = connection.client().await?.cancel(job, savepoint).await?;
        Ok(match path {
            Some(path) => format!("{job}: {state}, stopped with savepoint {path}"),
            None => format!("{job}: {state}"),
        })
    })
}

/// `sluice savepoint JOB_ID`.
pub fn savepoint(connection: &Connection, job: &str, timeout: Duration) -> Result<String, String> {
    block_on(async { connection.client().await?.savepoint(job, timeout).await })
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

/// `sluice cluster`: a coordinator (or, with `etcd`, `coordinators` of them campaigning on
/// a three-member etcd started here too) and `workers` workers on loopback, as child
/// processes of this one, with a fresh secret written to `dir/secret`; runs until Ctrl-C.
/// With HA, a coordinator that exits (a deposed leader, one killed) is started again as a
/// standby: this process is its supervisor. Unless `revoke_dead_leader` is off, it also
/// revokes the lease of a leader it saw exit, so that a standby takes over at once.
pub fn cluster(
    (workers, slots): (u32, u32),
    (coordinators, etcd, revoke_dead_leader): (u32, bool, bool),
    dir: &Path,
    tls: bool,
    store: Option<&str>,
    failover: &Failover,
) -> Result<String, String> {
    failover.check()?;
    if coordinators == 0 || (coordinators > 1 && !etcd) {
        return Err(format!(
            "--coordinators {coordinators}: several coordinators need --etcd (they elect their leader there); \
             without it give --coordinators 1"
        ));
    }
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
    let tls = match tls {
        true => Some(sluice_net::tls::generate(&["127.0.0.1", "localhost"])?.write_to(&dir.join("tls"))?),
        false => None,
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut members = Roles(Vec::new());
    let ha_url = match etcd {
        true => Some(start_etcd(&dir.join("etcd"), &mut members)?),
        false => None,
    };
    let mut roles = Roles(Vec::new());
    let spawn = |args: &[String]| {
        Command::new(&exe)
            .args(args)
            .env_remove("SLUICE_SECRET")
            .env("SLUICE_SECRET_FILE", &secret_file)
            .env(sluice_runtime::processes::ENV_EXIT_WITH_PARENT, std::process::id().to_string())
            .envs(tls.iter().flat_map(|t| t.env()))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting a cluster role: {e}"))
    };
    let store = store.map_or_else(|| dir.join("store").to_string_lossy().into_owned(), str::to_string);
    let ha_args: Vec<String> = ha_url.iter().flat_map(|url| ["--ha".to_string(), url.clone()]).collect();
    let mut coordinator_args = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..coordinators {
        let (grpc, http) = (free_address()?, free_address()?);
        let mut args: Vec<String> = vec![
            "coordinator".into(),
            "--listen".into(),
            grpc.to_string(),
            "--http".into(),
            http.to_string(),
            "--store".into(),
            store.clone(),
        ];
        if ha_url.is_none() {
            args.extend(["--meta-dir".into(), dir.join("coordinator").to_string_lossy().into_owned()]);
        }
        args.extend(ha_args.iter().cloned());
        args.extend(failover.as_args());
        roles.0.push(spawn(&args)?);
        coordinator_args.push(args);
        addresses.push((grpc, http));
    }
    let (grpc, http) = addresses[0];
    for i in 0..workers {
        let mut args: Vec<String> = vec!["worker".into()];
        match &ha_url {
            Some(_) => args.extend(ha_args.iter().cloned()),
            None => args.extend(["--coordinator".into(), grpc.to_string()]),
        }
        args.extend([
            "--slots".into(),
            slots.to_string(),
            "--cache".into(),
            dir.join(format!("worker-{i}")).to_string_lossy().into_owned(),
        ]);
        roles.0.push(spawn(&args)?);
    }
    let n = coordinators as usize;
    let pids: Vec<u32> = roles.0[n..].iter().map(|c| c.id()).collect();
    let ca = tls.as_ref().map(|t| t.ca.display().to_string());
    let info = serde_json::json!({
        "coordinator": grpc.to_string(), "http": http.to_string(), "secret_file": secret_file,
        "workers": workers, "worker_pids": pids, "tls_ca": ca, "etcd": ha_url,
        "coordinators": addresses.iter().map(|(g, h)| serde_json::json!({"grpc": g.to_string(), "http": h.to_string()}))
            .collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("cluster.json"), info.to_string()).map_err(|e| e.to_string())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let reach = match &ha_url {
        Some(url) => {
            println!("{coordinators} coordinators electing their leader on etcd ({url}), {workers} workers; in another shell:");
            format!("SLUICE_HA={url}")
        }
        None => {
            println!("coordinator at {grpc} (status: {scheme}://{http}/jobs), {workers} workers; in another shell:");
            format!("SLUICE_COORDINATOR={grpc}")
        }
    };
    match &ca {
        None => println!("  export {reach} SLUICE_SECRET_FILE={}", secret_file.display()),
        Some(ca) => println!("  export {reach} SLUICE_SECRET_FILE={} SLUICE_TLS_CA={ca}", secret_file.display()),
    }
    // Ctrl-C reaches the whole foreground process group; SIGTERM reaches only this
    // process: then the roles are stopped here (and a SIGKILL leaves them to notice that
    // this process is gone).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    let started = Instant::now();
    let mut exited: Vec<Option<std::process::ExitStatus>> = vec![None; workers as usize];
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok("the cluster stopped".into());
        }
        for (i, args) in coordinator_args.iter().enumerate() {
            if let Ok(Some(status)) = roles.0[i].try_wait() {
                if ha_url.is_none() {
                    return Err(format!(
                        "the coordinator exited ({status}) after {:?}; the cluster stops",
                        started.elapsed()
                    ));
                }
                // With HA, a coordinator that exits is what the others are there for; it
                // comes back as a standby (a deposed leader exits so that it holds no stale
                // state).
                eprintln!("sluice cluster: coordinator {i} exited ({status}); starting it again as a standby");
                if let (Some(url), true) = (&ha_url, revoke_dead_leader) {
                    end_dead_leaders_lease(url, &addresses[i].0.to_string(), &started);
                }
                roles.0[i] = spawn(args)?;
            }
        }
        // A worker that exits (or is killed) is the failure the cluster is there to survive:
        // said, not fatal.
        for (i, child) in roles.0.iter_mut().enumerate().skip(n) {
            if let Some(status) = exited[i - n].is_none().then(|| child.try_wait().ok().flatten()).flatten() {
                eprintln!("sluice cluster: worker {} exited ({status}); the cluster goes on without it", i - n);
                exited[i - n] = Some(status);
            }
        }
        // Often: a dead leader's lease is revoked this much later at most.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Revokes the lease of the coordinator at `address`, which this process saw exit, if it
/// led ([`sluice_cluster::ha::revoke_dead_leader`]); says what it did on stderr. A failure
/// only costs time: the lease then lapses by itself.
fn end_dead_leaders_lease(url: &str, address: &str, started: &Instant) {
    let revoked = sluice_cluster::ha::HaConfig::parse(url, "default", Duration::from_secs(2))
        .and_then(|config| block_on(sluice_cluster::ha::revoke_dead_leader(&config, address)));
    match revoked {
        Ok(Some(term)) => eprintln!(
            "sluice cluster: it led (term {term}); its lease is revoked, so a standby takes over now rather than \
             when the lease lapses ({:?} after start)",
            started.elapsed()
        ),
        Ok(None) => {}
        Err(e) => eprintln!("sluice cluster: could not revoke its lease ({e}); a standby takes over when it lapses"),
    }
}

/// Starts a three-member etcd on loopback in `dir` (`etcd` from the PATH), its members
/// added to `members`; returns the `--ha` URL once every member serves clients.
fn start_etcd(dir: &Path, members: &mut Roles) -> Result<String, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let address = |_| free_address().map(|a| a.to_string());
    let clients: Vec<String> = (0..3).map(address).collect::<Result<_, _>>()?;
    let peers: Vec<String> = (0..3).map(address).collect::<Result<_, _>>()?;
    for i in 0..3 {
        let log = std::fs::File::create(dir.join(format!("m{i}.log"))).map_err(|e| e.to_string())?;
        let child = sluice_cluster::ha::etcd_member(i, dir, &clients, &peers)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!("starting etcd: {e}; --etcd needs etcd on the PATH (Debian: apt-get install etcd-server)")
            })?;
        members.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        let log = dir.join(format!("m{i}.log"));
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready to serve client requests") {
            if Instant::now() > deadline {
                return Err(format!("etcd member {i} did not start within 60 s; its log: {}", log.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(format!("etcd://{}", clients.join(",")))
}
