//! What the command line asks the coordinator: submit a job binary (uploaded first, in
//! chunks), list jobs, cancel one. Each call carries the cluster secret.

use crate::auth::{AuthedChannel, Ca, Secret};
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
    /// Connects to the coordinator at `address`; over TLS with `ca`, against which the
    /// coordinator's certificate is checked.
    pub async fn connect(address: &str, secret: &Secret, ca: Option<&Ca>) -> Result<Client, String> {
        let channel = crate::auth::connect(address, ca, Duration::from_secs(10)).await?;
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
        let graph = describe(binary, &args, parallelism).await?;
        let sha = self.upload(binary).await?;
        let request = SubmitJobRequest {
            name: name.to_string(),
            artifact_sha256: sha,
            args,
            parallelism,
            graph_fingerprint: graph.fingerprint,
            checkpointed: graph.checkpointing,
        };
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

/// How long the job binary may take to build its graph at submission.
const DESCRIBE_WITHIN: Duration = Duration::from_secs(60);

/// Runs the job binary with its arguments and parallelism so that it builds its graph and
/// describes it ([`sluice_runtime::processes::ENV_DESCRIBE`]) instead of running; returns
/// the graph's fingerprint, which the coordinator plans with and every job process checks,
/// and whether it checkpoints. A graph the binary refuses (invalid configuration) fails the
/// submission here, with the binary's own message.
pub async fn describe(binary: &std::path::Path, args: &[String], parallelism: u32) -> Result<Described, String> {
    use sluice_runtime::processes as p;
    let out = std::env::temp_dir().join(format!("sluice-describe-{}-{}.json", std::process::id(), unique()));
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .args(["--parallelism", &parallelism.to_string()])
        .env(p::ENV_DESCRIBE, &out)
        .env_remove(p::ENV_PROCESS)
        .env_remove(p::ENV_GRAPH_FINGERPRINT)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| format!("running the job binary {} to plan it: {e}", binary.display()))?;
    let finished = tokio::time::timeout(DESCRIBE_WITHIN, child.wait_with_output()).await;
    let description = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    let output = match finished {
        Ok(output) => output.map_err(|e| format!("running the job binary {}: {e}", binary.display()))?,
        Err(_) => {
            return Err(format!(
                "the job binary {} did not build its graph within {DESCRIBE_WITHIN:?} (it runs with \
                 {}=FILE at submission and must reach `execute` without waiting on anything)",
                binary.display(),
                p::ENV_DESCRIBE
            ))
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The first line says what is wrong (clap's "error: ..."); the last one may add a hint.
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let last = match lines.as_slice() {
        [] => "it wrote nothing to stderr".to_string(),
        [only] => only.to_string(),
        [first, .., last] => format!("{first} ... {last}"),
    };
    if !output.status.success() {
        return Err(format!("the job binary {} refused these arguments ({}): {last}", binary.display(), output.status));
    }
    let description = description.map_err(|_| {
        format!(
            "the job binary {} exited without describing its graph: is it a Sluice job that calls `execute` \
             (built with this version of Sluice)? {last}",
            binary.display()
        )
    })?;
    let parsed: serde_json::Value = serde_json::from_str(&description)
        .map_err(|e| format!("the job binary's description of its graph is not JSON ({e}): {description}"))?;
    let fingerprint = parsed["fingerprint"]
        .as_str()
        .ok_or_else(|| format!("the job binary described its graph without a fingerprint: {description}"))?;
    Ok(Described {
        fingerprint: fingerprint.to_string(),
        checkpointing: parsed["checkpointing"].as_bool() == Some(true),
    })
}

/// What a job binary said of its graph at submission.
#[derive(Clone, Debug)]
pub struct Described {
    /// The graph's fingerprint (16 hex digits).
    pub fingerprint: String,
    /// Whether the job checkpoints.
    pub checkpointing: bool,
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn status(s: tonic::Status) -> String {
    if matches!(s.code(), tonic::Code::Unknown | tonic::Code::Unavailable) && s.message().contains("transport error") {
        // The call never reached the service: most often a plain client and a TLS server.
        return format!(
            "no answer from the coordinator ({}): if the cluster runs with TLS, give --tls-ca FILE or set \
             SLUICE_TLS_CA; otherwise check --coordinator",
            s.message()
        );
    }
    format!("the coordinator refused: {} ({:?})", s.message(), s.code())
}
