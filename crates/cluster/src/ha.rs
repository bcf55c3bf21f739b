//! Coordinator high availability on etcd (`sluice coordinator --ha etcd://H1,H2,H3`).
//!
//! Several coordinators campaign for one key, `/sluice/<cluster>/leader`, each with an
//! etcd lease: the one whose transaction creates the key leads, and the key's create
//! revision is its **term** (etcd revisions only grow, so a later leader has a higher
//! term). The others stand by, watching the key; when the leader's lease lapses (it died,
//! or lost etcd) etcd deletes the key and a standby's transaction creates it anew.
//!
//! Fencing: every write the leader makes (the job table, `/sluice/<cluster>/jobs`) is a
//! transaction that compares the leader key's create revision with its term, so a deposed
//! leader's write fails instead of landing. A leader whose lease has not been renewed for
//! seven eighths of its TTL steps down before etcd can elect another (it exits with
//! [`EXIT_DEPOSED`]: everything it held in memory goes with it, and a supervisor starts it
//! again as a standby). Workers learn the term at registration and refuse commands of a
//! lower one.
//!
//! Workers find the leader by reading the leader key (its value is the leader's gRPC
//! address) whenever their coordinator stops answering.

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::time::{Duration, Instant};

/// The exit status of a coordinator that lost its leadership.
pub const EXIT_DEPOSED: i32 = 75;

/// Where the coordinators meet, and how long a leader's lease lasts.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// The etcd members' client addresses (`host:port`).
    pub endpoints: Vec<String>,
    /// Names the keys, so that several Sluice clusters can share one etcd.
    pub cluster: String,
    /// The leader's lease. Default 2 s: etcd's smallest lease with its default election
    /// timeout (1 s) is about 1.5 s, and a new leader is elected within one TTL of the
    /// old one's death; shorter leases would be extended by etcd anyway.
    pub lease_ttl: Duration,
}

impl HaConfig {
    /// Parses `etcd://host:port[,host:port...]`.
    pub fn parse(url: &str, cluster: &str, lease_ttl: Duration) -> Result<HaConfig, String> {
        let hosts = url.strip_prefix("etcd://").ok_or_else(|| {
            format!("--ha {url}: expected etcd://HOST:PORT[,HOST:PORT...] (the etcd members' client addresses)")
        })?;
        let endpoints: Vec<String> =
            hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(String::from).collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| !e.contains(':')) {
            return Err(format!("--ha {url}: every etcd member needs HOST:PORT"));
        }
        if lease_ttl < Duration::from_secs(1) {
            return Err(format!("--lease-ttl-secs {}: etcd leases last at least 1 s", lease_ttl.as_secs()));
        }
        Ok(HaConfig { endpoints, cluster: cluster.to_string(), lease_ttl })
    }

    fn leader_key(&self) -> String {
        format!("/sluice/{}/leader", self.cluster)
    }

    fn table_key(&self) -> String {
        format!("/sluice/{}/jobs", self.cluster)
    }

    /// A client of the etcd cluster (any member that answers), its calls bounded to half
    /// the lease.
    pub async fn connect(&self) -> Result<Client, String> {
        self.connect_with(Some(self.lease_ttl / 2)).await
    }

    /// A client whose calls have no deadline, for watches (a deadline would end them).
    async fn connect_for_watches(&self) -> Result<Client, String> {
        self.connect_with(None).await
    }

    async fn connect_with(&self, timeout: Option<Duration>) -> Result<Client, String> {
        self.connect_to(&self.endpoints, timeout, Duration::from_secs(2)).await
    }

    async fn connect_to(
        &self,
        endpoints: &[String],
        timeout: Option<Duration>,
        connect_within: Duration,
    ) -> Result<Client, String> {
        // HTTP/2 pings no more often than etcd allows (its --grpc-keepalive-min-time, 5 s
        // by default; a client that pings more often is disconnected), and only while a
        // call is open (etcd does not permit pings without one).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(connect_within)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(2))
            .with_keep_alive_while_idle(false);
        if let Some(timeout) = timeout {
            options = options.with_timeout(timeout);
        }
        Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| format!("connecting to etcd at {}: {e}", endpoints.join(",")))
    }
}

/// Runs an etcd call again while it fails, for up to `within`: the client balances over
/// the members, and a call can land on one that just went away before the client notices.
async fn retrying<T, F, Fut>(what: &str, within: Duration, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + within;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "{what} failed; trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// The command that starts member `i` of a local etcd cluster (`etcd` from the PATH) on
/// loopback: clients at `clients[i]`, peers at `peers[i]`, data in `data_dir/m<i>`; stdio
/// is left to the caller. For `sluice cluster --etcd` and the tests.
pub fn etcd_member(
    i: usize,
    data_dir: &std::path::Path,
    clients: &[String],
    peers: &[String],
) -> std::process::Command {
    let initial: Vec<String> = peers.iter().enumerate().map(|(i, p)| format!("m{i}=http://{p}")).collect();
    let mut command = std::process::Command::new("etcd");
    command
        .args(["--name", &format!("m{i}")])
        .arg("--data-dir")
        .arg(data_dir.join(format!("m{i}")))
        .args(["--listen-client-urls", &format!("http://{}", clients[i])])
        .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
        .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
        .args(["--initial-advertise-peer-urls", &format!("http://{}", peers[i])])
        .args(["--initial-cluster", &initial.join(",")])
        // Raft heartbeats every 50 ms and elections after 500 ms (etcd's defaults: 100 ms,
        // 1 s): a dead raft leader is replaced well within a coordinator's 2 s lease, so
        // losing a member never costs the coordinators their leader.
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        // A member that comes back (restarted, or resumed after SIGSTOP) with a higher raft
        // term would otherwise depose the raft leader at once and stall every renewal for
        // an election; with a pre-vote it first learns that a leader exists.
        .arg("--pre-vote=true")
        .args(["--initial-cluster-state", "new", "--initial-cluster-token", "sluice-local"]);
    command
}

/// This coordinator's leadership: its term and the client its fenced writes go through.
#[derive(Clone)]
pub struct Leadership {
    client: Client,
    config: HaConfig,
    /// The lease the leader key is held with.
    lease: i64,
    /// The leader key's create revision.
    pub term: u64,
}

/// The leader key's value while the new leader loads its table and before it serves:
/// workers wait for the address alone.
const STARTING: &str = "starting ";

/// The leader now: its address and term, if one leads.
pub async fn current_leader(client: &mut Client, config: &HaConfig) -> Result<Option<(String, u64)>, String> {
    let key = config.leader_key();
    let reply = retrying("reading the leader key", config.lease_ttl, || {
        let (mut client, key) = (client.clone(), key.clone());
        async move { client.get(key, None).await }
    })
    .await?;
    // A leader still starting is not one to join yet.
    Ok(reply
        .kvs()
        .first()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.create_revision() as u64))
        .filter(|(address, _)| !address.starts_with(STARTING)))
}

/// The leader's address, for the command line (one lookup).
pub async fn leader_address(config: &HaConfig) -> Result<String, String> {
    let mut client = config.connect().await?;
    match current_leader(&mut client, config).await? {
        Some((address, _)) => Ok(address),
        None => Err(format!(
            "no coordinator leads cluster '{}' in etcd ({}): start one with --ha",
            config.cluster,
            config.endpoints.join(",")
        )),
    }
}

/// Ends the lease of a leader known to be dead, so that a standby takes over at once
/// instead of one lease later. `address` is the gRPC address of a coordinator process that
/// has exited (its supervisor reaped it): if the leader key names it (serving or still
/// starting), its lease is revoked and etcd deletes the key. Returns the term ended, if any.
///
/// Only a caller that knows the process is gone may call this: revoking a live leader's
/// lease is safe for etcd (its fenced writes fail from then on) but leaves it commanding
/// workers until its next renewal tells it. A lost machine still costs one lease: nobody
/// can know that its coordinator is dead rather than cut off.
pub async fn revoke_dead_leader(config: &HaConfig, address: &str) -> Result<Option<u64>, String> {
    let client = config.connect().await?;
    let key = config.leader_key();
    let reply = retrying("reading the leader key", config.lease_ttl, || {
        let (mut client, key) = (client.clone(), key.clone());
        async move { client.get(key, None).await }
    })
    .await?;
    let Some(kv) = reply.kvs().first() else { return Ok(None) };
    let value = String::from_utf8_lossy(kv.value());
    let names_it = value == address || value.starts_with(&format!("{STARTING}{address} "));
    if !names_it {
        return Ok(None);
    }
    // The lease, not the key: should another coordinator lead by now, its key has a lease
    // of its own, which this leaves alone.
    let lease = kv.lease();
    retrying("revoking the dead leader's lease", config.lease_ttl, || {
        let mut client = client.clone();
        async move {
            match client.lease_revoke(lease).await {
                // Already gone (it lapsed meanwhile): the same outcome.
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => Ok(()),
                other => other.map(|_| ()),
            }
        }
    })
    .await?;
    Ok(Some(kv.create_revision() as u64))
}

/// Campaigns until this coordinator (reachable at `address`) leads; a standby waits in
/// here, watching the leader key. Then keeps the lease alive in the background, and
/// steps down (exits) when it cannot.
pub async fn lead(config: &HaConfig, address: &str) -> Result<Leadership, String> {
    let mut client = config.connect().await?;
    let mut watcher = config.connect_for_watches().await?;
    let key = config.leader_key();
    let ttl = config.lease_ttl.as_secs() as i64;
    let mut announced = None;
    // What this process's campaigns write: unique to it, so that it recognizes its own key.
    let token = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let campaign_value = format!("{STARTING}{address} (pid {}, {token})", std::process::id());
    loop {
        let attempt: Result<Option<Leadership>, etcd_client::Error> = async {
            let lease = client.lease_grant(ttl, None).await?.id();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), campaign_value.clone(), Some(PutOptions::new().with_lease(lease)))])
                .or_else([TxnOp::get(key.clone(), None)]);
            let reply = client.txn(txn).await?;
            if reply.succeeded() {
                let term = reply.header().map_or(0, |h| h.revision()) as u64;
                keep_lease(client.clone(), config.clone(), lease, term).await?;
                return Ok(Some(Leadership { client: client.clone(), config: config.clone(), lease, term }));
            }
            // Standing by: the lease is not needed until the next campaign.
            let _ = client.lease_revoke(lease).await;
            let leader = reply.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                    (String::from_utf8_lossy(kv.value()).into_owned(), kv.create_revision(), kv.mod_revision())
                }),
                _ => None,
            });
            let Some((leader, term, revision)) = leader else { return Ok(None) };
            if leader == campaign_value {
                // Ours, from a campaign whose answer was lost (etcd applied the transaction
                // but the reply timed out): delete it and campaign again at once. Told by
                // this process's own token, not by the address: a coordinator started again
                // on a dead (or cut-off) leader's address must not take that leader's key.
                let delete = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, term)])
                    .and_then([TxnOp::delete(key.clone(), None)]);
                client.txn(delete).await?;
                tracing::info!(term, "removed this coordinator's own leader key of a campaign whose answer was lost");
                return Ok(None);
            }
            if announced != Some(term) {
                tracing::info!(leader = %leader, term, "standing by: another coordinator leads");
                announced = Some(term);
            }
            // Wait for the key to go (the leader's lease lapsed), from just after the
            // revision read, so that a deletion in between is not missed.
            let options = etcd_client::WatchOptions::new().with_start_revision(revision + 1);
            // The key is also read again every half lease, so that a watch on a member that
            // stopped answering (it may say nothing rather than fail) cannot keep a standby
            // waiting once the leader is gone.
            let mut watch = watcher.watch(key.clone(), Some(options)).await?;
            let mut check = tokio::time::interval(config.lease_ttl / 2);
            check.tick().await;
            loop {
                tokio::select! {
                    event = watch.message() => match event? {
                        Some(event) if event.events().iter().any(|e| e.event_type() == EventType::Delete) => {
                            tracing::info!(term, "the leader's key is gone: campaigning");
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = check.tick() => {
                        let now = tokio::time::timeout(config.lease_ttl / 2, current_leader(&mut client, config)).await;
                        if !matches!(now, Ok(Ok(Some((_, t)))) if t == term as u64) {
                            break;
                        }
                    }
                }
            }
            Ok(None)
        }
        .await;
        match attempt {
            Ok(Some(leadership)) => {
                tracing::info!(term = leadership.term, address, pid = std::process::id(), "leading the cluster");
                return Ok(leadership);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "campaigning for the leadership failed; trying again in 500 ms");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Renews the lease every eighth of its TTL, on a task of its own; a second task exits
/// the process once [`step_down_after`] has passed since the last renewal that etcd
/// acknowledged (counted from when it was sent), before etcd could have let the lease
/// lapse. The second task only reads a clock, so no call that hangs (a member that stopped
/// answering) can hold the step-down back.
///
/// Renewing often matters when etcd loses its raft leader: no renewal lands until the
/// members elect another (0.5-1 s with `sluice cluster --etcd`'s timing), and the time
/// since the last renewal before that counts against the same budget.
async fn keep_lease(mut client: Client, config: HaConfig, lease: i64, term: u64) -> Result<(), etcd_client::Error> {
    let (mut keeper, mut replies) = client.lease_keep_alive(lease).await?;
    let mut member = 0;
    let ttl = config.lease_ttl;
    let started = Instant::now();
    // Milliseconds after `started` at which the last acknowledged renewal was sent.
    let renewed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let last = renewed.clone();
    tokio::spawn(async move {
        loop {
            let sent = Instant::now();
            let renewal = tokio::time::timeout(ttl / 8, async {
                keeper.keep_alive().await?;
                replies.message().await
            })
            .await;
            match renewal {
                Ok(Ok(Some(reply))) if reply.ttl() > 0 => {
                    let at = sent.duration_since(started).as_millis() as u64;
                    last.fetch_max(at, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep((sent + ttl / 8).saturating_duration_since(Instant::now())).await;
                }
                Ok(Ok(Some(_))) => step_down(term, "etcd says its lease has expired"),
                failed => {
                    let why = match failed {
                        Ok(Ok(_)) => "the stream ended".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer".to_string(),
                    };
                    // The stream broke or stalled (its member went away): renew again at
                    // once through the next member alone. The balanced client may route a
                    // new stream to the dead member again, so the renewal goes round the
                    // members itself; a failure costs a few milliseconds, not an eighth of
                    // the lease.
                    member = (member + 1) % config.endpoints.len();
                    tracing::debug!(term, member = %config.endpoints[member], "renewing the lease failed: {why}; trying again");
                    let endpoint = [config.endpoints[member].clone()];
                    let reopened = async {
                        let mut one = config.connect_to(&endpoint, None, ttl / 8).await.ok()?;
                        one.lease_keep_alive(lease).await.ok()
                    };
                    if let Ok(Some(pair)) = tokio::time::timeout(ttl / 8, reopened).await {
                        (keeper, replies) = pair;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    tokio::spawn(async move {
        let limit = step_down_after(ttl);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let at = started + Duration::from_millis(renewed.load(std::sync::atomic::Ordering::SeqCst));
            if at.elapsed() >= limit {
                let why = format!(
                    "etcd has not renewed its lease for {} ms (the lease lapses after {} ms)",
                    at.elapsed().as_millis(),
                    ttl.as_millis()
                );
                step_down(term, &why);
            }
        }
    });
    Ok(())
}

/// How long a leader goes on without an acknowledged renewal before it steps down: seven
/// eighths of the lease. etcd lets the lease lapse no sooner than one TTL after it received
/// the last renewal (after this process sent it; a new raft leader even extends every
/// lease), and a standby campaigns only once the key is gone, so the last eighth (250 ms
/// of a 2 s lease) is the margin for this process to be scheduled and exit.
pub fn step_down_after(ttl: Duration) -> Duration {
    ttl * 7 / 8
}

/// Ends a leader that can no longer be sure it leads.
fn step_down(term: u64, why: &str) -> ! {
    tracing::error!(term, "stepping down as the leader: {why}; exiting so that only the next leader acts");
    eprintln!("sluice coordinator: lost the leadership (term {term}): {why}");
    std::process::exit(EXIT_DEPOSED)
}

impl Leadership {
    /// Puts `value` at `key` only while this coordinator's term is the leader key's (every
    /// write a leader makes): a deposed leader's write fails, and it steps down. Tried
    /// again for up to `within` after a failure: the same value under the same comparison,
    /// so a retry of a write that landed changes nothing.
    async fn fenced_put(
        &self,
        what: &str,
        (key, value, lease): (String, String, Option<i64>),
        within: Duration,
    ) -> Result<(), String> {
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when([Compare::create_revision(self.config.leader_key(), CompareOp::Equal, self.term as i64)])
            .and_then([TxnOp::put(key, value, options)]);
        let reply = retrying(what, within, || {
            let (mut client, txn) = (self.client.clone(), txn.clone());
            async move { client.txn(txn).await }
        })
        .await?;
        if !reply.succeeded() {
            step_down(self.term, "the leader key is no longer this coordinator's (another leads)");
        }
        Ok(())
    }

    /// Puts this leader's address in the leader key, once it serves: workers join it from
    /// then on (its adoption window starts then too).
    pub async fn serving(&self, address: &str) -> Result<(), String> {
        let put = (self.config.leader_key(), address.to_string(), Some(self.lease));
        self.fenced_put("publishing the leader's address in etcd", put, self.config.lease_ttl).await
    }

    /// The job table kept in etcd, if any.
    pub async fn load_table(&self) -> Result<Option<serde_json::Value>, String> {
        let reply = retrying("reading the job table from etcd", self.config.lease_ttl, || {
            let (mut client, key) = (self.client.clone(), self.config.table_key());
            async move { client.get(key, None).await }
        })
        .await?;
        match reply.kvs().first() {
            Some(kv) => serde_json::from_slice(kv.value())
                .map(Some)
                .map_err(|e| format!("the job table in etcd ({}) is not readable: {e}", self.config.table_key())),
            None => Ok(None),
        }
    }

    /// Replaces the job table (fenced on this leader's term).
    pub async fn save_table(&self, table: &serde_json::Value) -> Result<(), String> {
        // The writer's term goes with the table, so that etcd's history shows who wrote
        // each version (the HA tests check that no deposed leader's write landed).
        let mut table = table.clone();
        if let Some(fields) = table.as_object_mut() {
            fields.insert("term".into(), self.term.into());
        }
        let put = (self.config.table_key(), table.to_string(), None);
        self.fenced_put("writing the job table to etcd", put, self.config.lease_ttl).await
    }

    /// Records checkpoint `id` of `job` as complete, under this leader's term.
    pub async fn record_checkpoint(&self, job: &str, id: u64) -> Result<(), String> {
        let put = (format!("{}{job}", self.checkpoints_prefix()), format!("{id} (term {})", self.term), None);
        self.fenced_put("recording a checkpoint in etcd", put, self.config.lease_ttl / 2).await
    }

    /// The newest checkpoint recorded for each job.
    pub async fn recorded_checkpoints(&self) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let prefix = self.checkpoints_prefix();
        let reply = retrying("reading the recorded checkpoints from etcd", self.config.lease_ttl, || {
            let (mut client, prefix) = (self.client.clone(), prefix.clone());
            async move { client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await }
        })
        .await?;
        Ok(reply
            .kvs()
            .iter()
            .filter_map(|kv| {
                let job = String::from_utf8_lossy(kv.key()).strip_prefix(&prefix)?.to_string();
                // `<id> (term <term>)`: the id, and the term of the leader that recorded it.
                let value = String::from_utf8_lossy(kv.value()).into_owned();
                Some((job, value.split_whitespace().next()?.parse().ok()?))
            })
            .collect())
    }

    fn checkpoints_prefix(&self) -> String {
        format!("/sluice/{}/checkpoints/", self.config.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ha_address_is_parsed_and_bad_ones_are_refused_with_the_form() {
        let config = HaConfig::parse("etcd://127.0.0.1:2379, 127.0.0.2:2379", "c1", Duration::from_secs(2)).unwrap();
        assert_eq!(config.endpoints, ["127.0.0.1:2379", "127.0.0.2:2379"]);
        assert_eq!(config.leader_key(), "/sluice/c1/leader");
        let err = HaConfig::parse("http://x:1", "c", Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("etcd://HOST:PORT"), "{err}");
        assert!(HaConfig::parse("etcd://nohost", "c", Duration::from_secs(2)).unwrap_err().contains("HOST:PORT"));
        assert!(HaConfig::parse("etcd://h:1", "c", Duration::from_millis(500)).unwrap_err().contains("at least 1 s"));
    }
}
