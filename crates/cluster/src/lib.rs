//! Sluice's cluster mode: a coordinator ([`coordinator`]) that plans jobs onto workers
//! and tracks them, workers ([`worker`]) that start job processes from an uploaded binary,
//! and the control plane between them and the command line: tonic gRPC, defined in
//! `proto/cluster.proto` ([`proto`]), every call authenticated with the cluster secret
//! ([`auth`]). Job binaries are artifacts, stored by their SHA-256 through `object_store`
//! ([`artifacts`]); a worker checks the hash before it runs one.
//!
//! A job submitted with parallelism P runs as min(P, workers) job processes, one per
//! worker, spread as `sluice_runtime::processes` describes: records travel between them
//! over `sluice-net`, checkpoints coordinated by its process 0. A failed attempt (a
//! process that fails, a worker that stops sending heartbeats) is replaced by the next on
//! the workers there are ([`placement`]), resuming from the latest checkpoint. With
//! `--ha`, several coordinators elect a leader on etcd and the leader keeps the job table
//! there ([`ha`]); a new leader adopts the running attempts. What the cluster does not do
//! yet is said in `docs/cluster.md`, `docs/failover.md` and `docs/ha.md`.

pub mod artifacts;
pub mod auth;
pub mod client;
pub mod coordinator;
pub mod detectors;
pub mod ha;
pub mod jobtable;
pub mod load;
pub mod placement;
pub mod worker;

/// The generated gRPC messages, clients and servers.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("sluice.cluster");
}

/// A tokio runtime for the cluster's roles: two threads are plenty for a control plane.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}
