//! What the command line asks the coordinator: submit a job binary (uploaded first, in
//! chunks), list jobs, cancel one. Each call carries the cluster secret.

use crate::auth::{AuthedChannel, Secret};
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::*;
use std::time::Duration;

/// A connected, authenticated client of the coordinator.
pub struct Client {
    inner: CoordinatorClient<AuthedChannel>,
}

/// The chunk size of an upload (well under gRPC's 4 MiB message limit).
const CHUNK: usize = 1 << 20;

impl Client {
    /// Connects to the coordinator at `address`.
    pub async fn connect(address: &str, secret: &Secret) -> Result<Client, String> {
        let channel = crate::auth::connect(address, Duration::from_secs(10)).await?;
        Ok(Client { inner: CoordinatorClient::with_interceptor(channel, secret.attach()) })
    }

    /// Uploads the binary at `path`; returns its SHA-256.
    pub async fn upload(&mut self, path: &std::path::Path) -> Result<String, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading the job binary {}: {e}", path.display()))?;
        let chunks: Vec<ArtifactChunk> = bytes.chunks(CHUNK).map(|c| ArtifactChunk { data: c.to_vec() }).collect();
        let reply = self.inner.upload_artifact(tokio_stream::iter(chunks)).await.map_err(status)?.into_inner();
        let local = crate::artifacts::sha256_hex(&bytes);
        if reply.sha256 != local {
            return Err(format!("the coordinator stored {} for a binary that hashes to {local}", reply.sha256));
        }
        Ok(reply.sha256)
    }

    /// Uploads the binary and submits the job; returns its id and process count.
    pub async fn submit(
        &mut self,
        binary: &std::path::Path,
        name: &str,
        args: Vec<String>,
        parallelism: u32,
    ) -> Result<SubmitJobReply, String> {
        let sha = self.upload(binary).await?;
        let request = SubmitJobRequest { name: name.to_string(), artifact_sha256: sha, args, parallelism };
        Ok(self.inner.submit_job(request).await.map_err(status)?.into_inner())
    }

    /// Every job the coordinator knows.
    pub async fn list(&mut self) -> Result<Vec<JobStatus>, String> {
        Ok(self.inner.list_jobs(ListJobsRequest {}).await.map_err(status)?.into_inner().jobs)
    }

    /// Cancels a job; returns its state. With `savepoint` (how long to wait for it), the
    /// job stops with a savepoint, whose path is returned too.
    pub async fn cancel(
        &mut self,
        job_id: &str,
        savepoint: Option<std::time::Duration>,
    ) -> Result<(String, Option<String>), String> {
        let request = CancelJobRequest {
            job_id: job_id.to_string(),
            savepoint: savepoint.is_some(),
            timeout_ms: savepoint.map_or(0, |t| t.as_millis() as u64),
        };
        let reply = self.inner.cancel_job(request).await.map_err(status)?.into_inner();
        Ok((reply.state, Some(reply.savepoint).filter(|p| !p.is_empty())))
    }

    /// Takes a savepoint of a running job; returns its path.
    pub async fn savepoint(&mut self, job_id: &str, timeout: std::time::Duration) -> Result<String, String> {
        let request = TakeSavepointRequest { job_id: job_id.to_string(), timeout_ms: timeout.as_millis() as u64 };
        Ok(self.inner.take_savepoint(request).await.map_err(status)?.into_inner().path)
    }
}

fn status(s: tonic::Status) -> String {
    format!("the coordinator refused: {} ({:?})", s.message(), s.code())
}
