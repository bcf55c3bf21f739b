//! Checkpoint storage through `object_store`: a folder per checkpoint
//! (`<job>/chk-<id>/`), one state file per operator subtask with its CRC-32 in the
//! manifest, and `_manifest.json` written last. `object_store` writes each object through a
//! temporary file and a rename, so a manifest is either whole or absent.
//!
//! A location is a local folder (a path or `file://`), or with the `s3` feature an
//! S3-compatible bucket (`s3://bucket/prefix`, configured by the usual `AWS_*` environment
//! variables: `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP`). An S3 PUT is atomic, so a manifest is whole or absent there too.
//! Calls to a remote store run inside a tokio runtime of this crate ([`block_on`]), from
//! any thread.

use crate::manifest::{Manifest, StateEntry, StateKind, FORMAT};
use crate::recovery::pick_restorable;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutPayload};
use sluice_dataflow::snapshot::{read_state, write_state, OperatorState, SubtaskState};
use std::collections::BTreeMap;
use std::sync::Arc;

const MANIFEST: &str = "_manifest.json";
/// The commit record: the newest checkpoint whose sink transactions may have been
/// committed (readers may have seen its output). Written before those commits.
const COMMITTED: &str = "_committed.json";

/// A storage failure, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location cannot be used.
    #[error("checkpoint location '{location}': {message}")]
    Location {
        /// The location given.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// An object could not be read or written.
    #[error("checkpoint storage, '{path}': {source}")]
    Io {
        /// The object.
        path: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A checkpoint is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Restoring would repeat output that readers have already seen.
    #[error("{0}")]
    WouldDuplicate(String),
}

/// What the commit record holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct CommitRecord {
    /// The newest checkpoint whose output may be committed.
    checkpoint: u64,
}

/// What a manifest says about a checkpoint besides its files.
#[derive(Clone, Debug)]
pub struct CheckpointMeta {
    /// The checkpoint id.
    pub id: u64,
    /// Whether it is a savepoint.
    pub savepoint: bool,
    /// Whether the job's bounded input had ended.
    pub finished: bool,
    /// When it was triggered (milliseconds since the epoch).
    pub timestamp_ms: i64,
    /// Number of key groups.
    pub max_parallelism: usize,
    /// Parallelism of each operator, by state id.
    pub parallelism: BTreeMap<String, usize>,
}

/// A checkpoint read back, verified.
#[derive(Clone, Debug)]
pub struct LoadedCheckpoint {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its states.
    pub states: Vec<SubtaskState>,
}

/// The checkpoints of one job at one location.
#[derive(Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    location: String,
    job: String,
    /// Where this process keeps a copy of each state file it writes (task-local recovery):
    /// a restart on the same machine reads its state from there, not from the store.
    local: Option<std::path::PathBuf>,
    /// With coordinator HA: the newest checkpoint the leader recorded as complete; newer
    /// ones (their manifest written, but never recorded, so never committed) are not
    /// restored.
    at_most: Option<u64>,
}

/// How many checkpoints' local copies a process keeps: the newest completed checkpoint
/// can be older than the newest one written (an upload or a peer may have failed it).
const LOCAL_COPIES_KEPT: usize = 3;

fn sanitize(job: &str) -> String {
    job.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Runs a store call to its end on this thread. Remote stores' HTTP clients need a tokio
/// runtime: one of two threads, made at the first remote call, is entered around the call
/// (entering nests, so this works on a runtime's own threads too); a local folder needs
/// none.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    #[cfg(feature = "s3")]
    let _runtime = remote_runtime().enter();
    futures::executor::block_on(future)
}

#[cfg(feature = "s3")]
fn remote_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice:store")
            .enable_all()
            .build()
            .expect("a tokio runtime for the object store")
    })
}

/// Whether `location` is a remote object store rather than a local folder.
pub fn is_remote(location: &str) -> bool {
    location.contains("://") && !location.starts_with("file://")
}

/// Opens the object store at `location`: a local folder (created if missing), or with the
/// `s3` feature `s3://bucket/prefix`.
pub fn open_store(location: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let failed = |message: String| StoreError::Location { location: location.into(), message };
    if let Some(rest) = location.strip_prefix("s3://") {
        return open_s3(rest).map_err(failed);
    }
    if is_remote(location) {
        return Err(failed(
            "not a location Sluice can use: give a folder (a path or file://) or, in a build with the `s3` feature, \
             s3://bucket/prefix"
                .into(),
        ));
    }
    let path = location.trim_start_matches("file://");
    std::fs::create_dir_all(path).map_err(|e| failed(format!("cannot create the folder: {e}")))?;
    let fs = LocalFileSystem::new_with_prefix(path).map_err(|e| failed(e.to_string()))?;
    Ok(Arc::new(fs))
}

#[cfg(feature = "s3")]
fn open_s3(bucket_and_prefix: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let (bucket, prefix) = bucket_and_prefix.split_once('/').unwrap_or((bucket_and_prefix, ""));
    if bucket.is_empty() {
        return Err("no bucket: give s3://bucket/prefix".into());
    }
    // A few quick retries: a checkpoint has a timeout of its own, and a store that stays
    // unreachable should fail it (and be reported) within seconds, not after object_store's
    // default of three minutes.
    let retry = object_store::RetryConfig {
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    };
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .build()
        .map_err(|e| format!("{e} (set AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION)"))?;
    let prefix = prefix.trim_matches('/');
    Ok(match prefix {
        "" => Arc::new(s3),
        prefix => Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)),
    })
}

#[cfg(not(feature = "s3"))]
fn open_s3(_: &str) -> Result<Arc<dyn ObjectStore>, String> {
    Err("this build has no S3 support: build with the `s3` feature (a job: --features sluice/s3; the sluice \
         binary: --features sluice-cli/s3)"
        .into())
}

impl CheckpointStore {
    /// The checkpoints of `job` under `location` (a folder, created if missing).
    pub fn open(location: &str, job: &str) -> Result<Self, StoreError> {
        Ok(CheckpointStore {
            store: open_store(location)?,
            location: location.into(),
            job: sanitize(job),
            local: None,
            at_most: None,
        })
    }

    /// Keeps a copy of every state file this store writes under `dir`, and reads a state
    /// file from there when its copy has the length and checksum the manifest records
    /// (Flink's task-local recovery). The store stays the truth: a missing or different
    /// copy is read from the store; a copy that cannot be written is only logged.
    pub fn with_local_copies(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.local = Some(dir.into());
        self
    }

    /// Restores only checkpoints up to `id`, the newest one recorded as complete outside
    /// the store (with coordinator HA, under the leader's term); newer ones are passed over
    /// with a note.
    pub fn restoring_at_most(mut self, id: u64) -> Self {
        self.at_most = Some(id);
        self
    }

    fn local_path(&self, path: &str) -> Option<std::path::PathBuf> {
        self.local.as_ref().map(|dir| dir.join(path))
    }

    /// Writes the local copy of the state file at `path` (inside checkpoint `id`'s folder)
    /// and drops the copies of all but the newest few checkpoints.
    fn keep_local_copy(&self, id: u64, path: &str, bytes: &[u8]) {
        let (Some(dir), Some(target)) = (&self.local, self.local_path(path)) else { return };
        let written = (|| -> std::io::Result<()> {
            let parent = target.parent().expect("a state file's path has a folder");
            std::fs::create_dir_all(parent)?;
            let partial = target.with_extension("partial");
            std::fs::write(&partial, bytes)?;
            std::fs::rename(&partial, &target)
        })();
        if let Err(e) = written {
            tracing::warn!("could not keep a local copy of state file {path} in {}: {e}", dir.display());
            return;
        }
        let Ok(folders) = std::fs::read_dir(dir.join(&self.job)) else { return };
        let mut ids: Vec<(u64, std::path::PathBuf)> = folders
            .flatten()
            .filter_map(|f| {
                let name = f.file_name().to_string_lossy().to_string();
                name.strip_prefix("chk-").and_then(|n| n.parse().ok()).map(|n| (n, f.path()))
            })
            .collect();
        ids.sort();
        let newest = ids.last().map_or(id, |(n, _)| (*n).max(id));
        for (n, folder) in ids {
            if n + (LOCAL_COPIES_KEPT as u64) <= newest {
                let _ = std::fs::remove_dir_all(folder);
            }
        }
    }

    /// A state file's local copy, if it has the recorded length and checksum.
    fn read_local_copy(&self, path: &str, entry: &StateEntry) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.local_path(path)?).ok()?;
        (bytes.len() as u64 == entry.bytes && crc32fast::hash(&bytes) == entry.crc32).then_some(bytes)
    }

    /// Opens the store for a job that will write checkpoints: also proves that the location
    /// can be written (a read-only folder is refused now, not at the first checkpoint).
    pub fn open_for_writing(location: &str, job: &str) -> Result<Self, StoreError> {
        let store = Self::open(location, job)?;
        let probe = format!("{}/_write_probe", store.job);
        store.put(&probe, b"sluice".to_vec()).map_err(|e| StoreError::Location {
            location: location.into(),
            message: format!("cannot write checkpoints there ({e}); give a folder this process can write"),
        })?;
        let _ = block_on(store.store.delete(&Path::from(probe.as_str())));
        Ok(store)
    }

    fn folder(&self, id: u64, savepoint: bool) -> String {
        let kind = if savepoint { "savepoint" } else { "chk" };
        format!("{}/{kind}-{id:012}", self.job)
    }

    /// Where a checkpoint's folder is, for logs and for restoring from it by path.
    pub fn path_of(&self, id: u64, savepoint: bool) -> String {
        format!("{}/{}", self.location.trim_end_matches('/'), self.folder(id, savepoint))
    }

    fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        block_on(self.store.put(&Path::from(path), PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|source| StoreError::Io { path: path.into(), source })
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        block_on(async {
            let object = self.store.get(&Path::from(path)).await?;
            object.bytes().await
        })
        .map(|b| b.to_vec())
        .map_err(|source| StoreError::Io { path: path.into(), source })
    }

    /// Writes the states, then the manifest; returns the manifest.
    pub fn write(&self, meta: CheckpointMeta, states: &[SubtaskState]) -> Result<Manifest, StoreError> {
        self.write_with(meta, states, || Ok(()))
    }

    /// [`CheckpointStore::write`], calling `before_manifest` between the state files and the
    /// manifest: an error there leaves a partial checkpoint (files, no manifest), which is
    /// what a crash during an upload leaves. Used to inject that failure in tests.
    pub fn write_with(
        &self,
        meta: CheckpointMeta,
        states: &[SubtaskState],
        before_manifest: impl FnOnce() -> Result<(), String>,
    ) -> Result<Manifest, StoreError> {
        let mut entries = Vec::with_capacity(states.len());
        for (index, state) in states.iter().enumerate() {
            entries.push(self.put_state(meta.id, meta.savepoint, &format!("s{index}"), state)?);
        }
        before_manifest().map_err(StoreError::Invalid)?;
        self.write_manifest(meta, entries)
    }

    /// Writes one subtask's state into checkpoint `id`'s folder as `<name>.state` and
    /// returns its manifest entry (a job spread over processes has each process write its
    /// own subtasks' states; `name` must be unique within the checkpoint).
    pub fn put_state(
        &self,
        id: u64,
        savepoint: bool,
        name: &str,
        state: &SubtaskState,
    ) -> Result<StateEntry, StoreError> {
        let bytes = write_state(&state.state);
        let file = format!("{name}.state");
        let entry = StateEntry {
            operator: state.operator.clone(),
            subtask: state.subtask,
            kind: match state.state {
                OperatorState::Keyed(_) => StateKind::Keyed,
                OperatorState::Plain(_) => StateKind::Plain,
                OperatorState::Committable(_) => StateKind::Committable,
            },
            file: file.clone(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
            key_groups: match &state.state {
                OperatorState::Keyed(groups) => Some(groups.keys().copied().collect()),
                _ => None,
            },
        };
        let path = format!("{}/{file}", self.folder(id, savepoint));
        if !savepoint {
            self.keep_local_copy(id, &path, &bytes);
        }
        self.put(&path, bytes)?;
        Ok(entry)
    }

    /// Writes the manifest of a checkpoint whose state files are written: from now on it
    /// is complete.
    pub fn write_manifest(&self, meta: CheckpointMeta, entries: Vec<StateEntry>) -> Result<Manifest, StoreError> {
        let CheckpointMeta { id, savepoint, finished, timestamp_ms, max_parallelism, parallelism } = meta;
        let manifest = Manifest {
            format: FORMAT,
            job: self.job.clone(),
            checkpoint: id,
            savepoint,
            finished,
            timestamp_ms,
            max_parallelism,
            parallelism,
            states: entries,
        };
        // Written only if no manifest is there yet: an attempt that was replaced while it
        // wrote (a worker frozen, then resumed; one cut off from its coordinator) may still
        // reach here with an id the attempt that replaced it has used, and must not put its
        // manifest over the other's (whose state files it would then name in its place).
        let path = format!("{}/{MANIFEST}", self.folder(id, savepoint));
        let written = block_on(self.store.put_opts(
            &Path::from(path.as_str()),
            PutPayload::from(manifest.to_json()),
            PutMode::Create.into(),
        ));
        match written {
            Ok(_) => Ok(manifest),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StoreError::Invalid(format!(
                "checkpoint {id} of job '{}' already has a manifest ({path}), written by another attempt of the \
                 job: this one's checkpoint {id} is not complete (was this attempt replaced while it wrote?)",
                self.job
            ))),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Reads checkpoint `id`, verifying every file.
    pub fn load(&self, id: u64) -> Result<LoadedCheckpoint, StoreError> {
        self.load_only(id, &|_| true)
    }

    /// Reads the state files of checkpoint `id` that `wanted` picks, verifying each; the
    /// others are not read (a process of a spread job reads only what its subtasks
    /// restore). The states of files not read are absent from the result.
    pub fn load_only(&self, id: u64, wanted: &dyn Fn(&StateEntry) -> bool) -> Result<LoadedCheckpoint, StoreError> {
        let folder = self.folder(id, false);
        let bytes = self.get(&format!("{folder}/{MANIFEST}"))?;
        let manifest = Manifest::parse(&bytes).map_err(StoreError::Invalid)?;
        let states = self.read_states(&folder, &manifest, wanted).map_err(StoreError::Invalid)?;
        Ok(LoadedCheckpoint { manifest, states })
    }

    /// Reads and verifies the state files of a manifest that `wanted` picks, from their
    /// local copies where those verify, else from the store.
    fn read_states(
        &self,
        folder: &str,
        manifest: &Manifest,
        wanted: &dyn Fn(&StateEntry) -> bool,
    ) -> Result<Vec<SubtaskState>, String> {
        let mut states = Vec::with_capacity(manifest.states.len());
        let (mut local, mut remote, mut skipped) = (0usize, 0usize, 0usize);
        for entry in &manifest.states {
            if !wanted(entry) {
                skipped += 1;
                continue;
            }
            let path = if folder.is_empty() { entry.file.clone() } else { format!("{folder}/{}", entry.file) };
            let bytes = match self.read_local_copy(&path, entry) {
                Some(bytes) => {
                    local += 1;
                    bytes
                }
                None => {
                    remote += 1;
                    self.get(&path).map_err(|e| format!("missing state file {path}: {e}"))?
                }
            };
            if bytes.len() as u64 != entry.bytes || crc32fast::hash(&bytes) != entry.crc32 {
                return Err(format!("state file {path} is corrupted (length or checksum differs)"));
            }
            let state = read_state(&bytes).map_err(|e| format!("state file {path}: {e}"))?;
            states.push(SubtaskState { operator: entry.operator.clone(), subtask: entry.subtask, state });
        }
        if self.local.is_some() || skipped > 0 {
            tracing::info!(
                "checkpoint {}: read {local} state file(s) from this machine's local copies (task-local recovery), \
                 {remote} from the store, skipped {skipped} holding no state of this process",
                manifest.checkpoint
            );
        }
        Ok(states)
    }

    /// Ids of the checkpoints (not savepoints) that have a folder, complete or not.
    pub fn checkpoint_ids(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.all_ids()?.into_iter().filter(|(_, savepoint)| !savepoint).map(|(id, _)| id).collect())
    }

    /// (id, is a savepoint) of every checkpoint and savepoint folder, oldest first.
    pub fn all_ids(&self) -> Result<Vec<(u64, bool)>, StoreError> {
        let prefix = Path::from(self.job.as_str());
        let listing = block_on(self.store.list_with_delimiter(Some(&prefix)))
            .map_err(|source| StoreError::Io { path: self.job.clone(), source })?;
        let mut ids: Vec<(u64, bool)> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| {
                let name = p.filename()?;
                match name.strip_prefix("chk-") {
                    Some(id) => Some((id.parse().ok()?, false)),
                    None => Some((name.strip_prefix("savepoint-")?.parse().ok()?, true)),
                }
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The manifest of a checkpoint or savepoint, verified with its files.
    pub fn manifest(&self, id: u64, savepoint: bool) -> Result<Manifest, String> {
        let folder = self.folder(id, savepoint);
        let bytes = self
            .get(&format!("{folder}/{MANIFEST}"))
            .map_err(|_| "no manifest (incomplete, or its manifest was deleted)".to_string())?;
        let manifest = Manifest::parse(&bytes)?;
        self.read_states(&folder, &manifest, &|_| true)?;
        Ok(manifest)
    }

    /// Records, durably and before its transactions are committed, that the output of
    /// checkpoint `id` may be visible to readers. A later restore refuses to fall back
    /// past it (see [`CheckpointStore::latest_restorable`]).
    pub fn record_commit(&self, id: u64) -> Result<(), StoreError> {
        if self.committed().ok().flatten().is_some_and(|c| c >= id) {
            return Ok(());
        }
        let record = serde_json::to_vec(&CommitRecord { checkpoint: id }).expect("a commit record serializes");
        self.put(&format!("{}/{COMMITTED}", self.job), record)
    }

    /// The newest checkpoint whose output may have been committed, if any was.
    pub fn committed(&self) -> Result<Option<u64>, StoreError> {
        let path = format!("{}/{COMMITTED}", self.job);
        match block_on(self.store.get(&Path::from(path.as_str()))) {
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
            Ok(object) => {
                let bytes = block_on(object.bytes()).map_err(|source| StoreError::Io { path: path.clone(), source })?;
                let record: CommitRecord = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Invalid(format!(
                        "the commit record '{}/{path}' is unreadable ({e}), so it is unknown which checkpoints' \
                         output readers have seen",
                        self.location.trim_end_matches('/')
                    ))
                })?;
                Ok(Some(record.checkpoint))
            }
        }
    }

    /// The checkpoint a job resumes from: the newest one that verifies, unless a newer one's
    /// output was already committed. Falling back past a committed checkpoint (or starting
    /// from nothing after one) would write that output again, so it is refused with an
    /// error naming the damaged checkpoint, unless `allow_duplicates` says the user accepts
    /// those duplicates; then it is done with a warning.
    pub fn latest_restorable(&self, allow_duplicates: bool) -> Result<Option<LoadedCheckpoint>, StoreError> {
        let (found, problems) = self.newest_verified()?;
        let committed = match self.committed() {
            Ok(c) => c,
            Err(e) if allow_duplicates => {
                tracing::warn!("{e}; going on as asked (duplicates accepted)");
                None
            }
            Err(e) => {
                return Err(StoreError::WouldDuplicate(format!(
                    "{e}. Refusing to start: if an older checkpoint is restored, output may be written twice. \
                     To start anyway and accept duplicates, allow restoring before committed output \
                     (StreamEnv::allow_duplicate_output, or --allow-duplicates)"
                )))
            }
        };
        let found_id = found.as_ref().map(|f| f.manifest.checkpoint);
        if let Some(committed) = committed.filter(|c| found_id.is_none_or(|f| f < *c)) {
            let damaged: Vec<&String> =
                problems.iter().filter(|p| p.starts_with(&format!("checkpoint {committed}:"))).collect();
            let what = match damaged.first() {
                Some(problem) => problem.to_string(),
                None => format!("checkpoint {committed} is missing"),
            };
            let fallback = match found_id {
                Some(f) => format!("checkpoint {f}"),
                None => "nothing (no checkpoint of this job can be read)".to_string(),
            };
            let cost = format!(
                "restoring {fallback} would write again every record committed after it up to checkpoint \
                 {committed}: readers that already saw that output would see it twice"
            );
            if !allow_duplicates {
                return Err(StoreError::WouldDuplicate(format!(
                    "cannot resume job '{}' from '{}' exactly once: the output of checkpoint {committed} was already \
                     committed, but {what}. {cost}. Repair or restore checkpoint {committed}, or accept the duplicates \
                     explicitly (StreamEnv::allow_duplicate_output, or --allow-duplicates)",
                    self.job, self.location
                )));
            }
            tracing::warn!("job '{}': {what}; resuming from {fallback} as asked: {cost}", self.job);
        } else if found.is_none() && !problems.is_empty() {
            tracing::warn!(
                "job '{}': none of its {} checkpoint(s) in '{}' can be read; it starts from nothing (no output of \
                 theirs was committed)",
                self.job,
                problems.len(),
                self.location
            );
        }
        Ok(found)
    }

    /// The newest checkpoint whose manifest and files verify; a corrupted or partial newer
    /// one is logged (naming the file) and passed over.
    pub fn latest(&self) -> Result<Option<LoadedCheckpoint>, StoreError> {
        Ok(self.newest_verified()?.0)
    }

    fn newest_verified(&self) -> Result<(Option<LoadedCheckpoint>, Vec<String>), StoreError> {
        let (ids, unrecorded): (Vec<u64>, Vec<u64>) =
            self.checkpoint_ids()?.into_iter().partition(|id| self.at_most.is_none_or(|most| *id <= most));
        if !unrecorded.is_empty() {
            tracing::info!(
                location = %self.location,
                "passing over checkpoint(s) {unrecorded:?}: written, but never recorded as complete by a leading \
                 coordinator (their output was not committed)"
            );
        }
        let candidates = ids
            .into_iter()
            .map(|id| {
                let folder = self.folder(id, false);
                let manifest = self
                    .get(&format!("{folder}/{MANIFEST}"))
                    .map_err(|_| {
                        format!("{folder} has no manifest (the checkpoint is incomplete, or its manifest was deleted)")
                    })
                    .and_then(|bytes| Manifest::parse(&bytes));
                (id, manifest)
            })
            .collect();
        let (found, problems) =
            pick_restorable(candidates, |m| self.read_states(&self.folder(m.checkpoint, false), m, &|_| true));
        for problem in &problems {
            tracing::warn!(location = %self.location, "skipping {problem} (detector: corrupted state)");
        }
        Ok((found.map(|(manifest, states)| LoadedCheckpoint { manifest, states }), problems))
    }

    /// Reads the checkpoint or savepoint in folder `path` (as given by a user).
    pub fn load_path(path: &str) -> Result<LoadedCheckpoint, StoreError> {
        if !is_remote(path) {
            let meta = std::fs::metadata(path.trim_start_matches("file://"));
            if meta.map(|m| !m.is_dir()).unwrap_or(true) {
                return Err(StoreError::Invalid(format!(
                    "'{path}' is not a checkpoint: no such folder; give the folder of a checkpoint or savepoint (it holds {MANIFEST})"
                )));
            }
        }
        let store = CheckpointStore {
            store: open_store(path)?,
            location: path.into(),
            job: String::new(),
            local: None,
            at_most: None,
        };
        let bytes = store.get(MANIFEST).map_err(|_| {
            StoreError::Invalid(format!(
                "'{path}' is not a checkpoint: it has no {MANIFEST} (incomplete or not a checkpoint)"
            ))
        })?;
        let manifest = Manifest::parse(&bytes).map_err(|e| StoreError::Invalid(format!("'{path}': {e}")))?;
        let states =
            store.read_states("", &manifest, &|_| true).map_err(|e| StoreError::Invalid(format!("'{path}': {e}")))?;
        Ok(LoadedCheckpoint { manifest, states })
    }

    /// Keeps checkpoint `id` as a savepoint: its files are copied to a `savepoint-<id>`
    /// folder (never deleted by retention), the manifest last. Returns the folder's path.
    pub fn keep_as_savepoint(&self, id: u64) -> Result<String, StoreError> {
        let (from, to) = (self.folder(id, false), self.folder(id, true));
        let bytes = self.get(&format!("{from}/{MANIFEST}"))?;
        let mut manifest = Manifest::parse(&bytes).map_err(StoreError::Invalid)?;
        for entry in &manifest.states {
            let (src, dst) = (format!("{from}/{}", entry.file), format!("{to}/{}", entry.file));
            block_on(self.store.copy(&Path::from(src.as_str()), &Path::from(dst.as_str())))
                .map_err(|source| StoreError::Io { path: src, source })?;
        }
        manifest.savepoint = true;
        self.put(&format!("{to}/{MANIFEST}"), manifest.to_json())?;
        Ok(self.path_of(id, true))
    }

    /// Where the command line leaves savepoint requests for the running job: beside its
    /// checkpoints in a local folder; for a remote store, in a folder of this machine's
    /// temporary directory named after the location (so `sluice savepoint
    /// --checkpoint-dir s3://...` reaches a local job on the same machine; a cluster job is
    /// asked through its worker instead).
    pub fn savepoint_box(&self) -> SavepointBox {
        if is_remote(&self.location) {
            let name = sanitize(&self.location);
            return SavepointBox::at(std::env::temp_dir().join("sluice-savepoints").join(name).join(&self.job));
        }
        SavepointBox::at(format!("{}/{}", self.location.trim_start_matches("file://"), self.job))
    }

    /// Asks the running job to take a savepoint (what the command line does); returns the
    /// file its answer will be written to.
    pub fn request_savepoint(&self) -> Result<std::path::PathBuf, StoreError> {
        self.savepoint_box().request(false).map_err(StoreError::Invalid)
    }

    /// Withdraws a savepoint request nobody waits for any more (its `answer` file is the
    /// one [`CheckpointStore::request_savepoint`] returned), so that a job started later
    /// does not take a savepoint nobody asked for. Returns whether it was still pending.
    pub fn withdraw_savepoint_request(&self, answer: &std::path::Path) -> bool {
        self.savepoint_box().withdraw(answer)
    }

    /// Takes a pending command-line savepoint request, if any (the running job polls this).
    pub fn take_savepoint_request(&self) -> Option<SavepointAsk> {
        self.savepoint_box().take()
    }

    /// Deletes a checkpoint's folder.
    pub fn delete(&self, id: u64) -> Result<(), StoreError> {
        let prefix = Path::from(self.folder(id, false));
        block_on(async {
            let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
            for object in objects {
                self.store.delete(&object.location).await?;
            }
            Ok::<_, object_store::Error>(())
        })
        .map_err(|source| StoreError::Io { path: prefix.to_string(), source })?;
        // object_store removes files, not folders: remove the empty folder of a local store.
        if !is_remote(&self.location) {
            let local = format!("{}/{}", self.location.trim_start_matches("file://"), self.folder(id, false));
            let _ = std::fs::remove_dir_all(local);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(tag: u8) -> Vec<SubtaskState> {
        vec![
            SubtaskState { operator: "src".into(), subtask: 0, state: OperatorState::Plain(vec![tag]) },
            SubtaskState {
                operator: "win".into(),
                subtask: 0,
                state: OperatorState::Keyed(BTreeMap::from([(3, vec![tag, 1]), (5, vec![tag, 2])])),
            },
        ]
    }

    /// The description of checkpoint `id` of the two-operator job of [`states`].
    fn meta(id: u64) -> CheckpointMeta {
        let parallelism = BTreeMap::from([("src".to_string(), 1), ("win".to_string(), 1)]);
        CheckpointMeta { id, savepoint: false, finished: false, timestamp_ms: 0, max_parallelism: 8, parallelism }
    }

    fn write(store: &CheckpointStore, id: u64) {
        store.write(meta(id), &states(id as u8)).unwrap();
    }

    #[test]
    fn a_second_manifest_for_the_same_checkpoint_is_refused_and_the_first_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        write(&store, 1);
        let first = store.load(1).unwrap().manifest;
        // Another attempt (one replaced while it wrote) with the same id and other states.
        let entry = store.put_state(1, false, "a2-p0-1", &states(9)[0]).unwrap();
        let err = store.write_manifest(meta(1), vec![entry]).unwrap_err().to_string();
        assert!(err.contains("already has a manifest") && err.contains("another attempt"), "{err}");
        assert_eq!(store.load(1).unwrap().manifest, first, "the first manifest is the one that stays");
    }

    #[test]
    fn a_corrupted_or_partial_latest_checkpoint_falls_back_to_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let store = CheckpointStore::open(root, "my job").unwrap();
        assert!(store.latest().unwrap().is_none());
        for id in 1..=3 {
            write(&store, id);
        }
        assert_eq!(store.latest().unwrap().unwrap().manifest.checkpoint, 3);
        // Flip a byte of a state file of checkpoint 3.
        let file = dir.path().join("my_job/chk-000000000003/s1.state");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.manifest.checkpoint, 2);
        assert_eq!(latest.states, states(2));
        // A checkpoint that never wrote its manifest does not exist.
        std::fs::remove_file(dir.path().join("my_job/chk-000000000002/_manifest.json")).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().manifest.checkpoint, 1);
        // A missing state file.
        std::fs::remove_file(dir.path().join("my_job/chk-000000000001/s0.state")).unwrap();
        assert!(store.latest().unwrap().is_none());
        store.delete(3).unwrap();
        assert_eq!(store.checkpoint_ids().unwrap(), vec![1, 2]);
    }

    #[test]
    fn checkpoints_newer_than_the_recorded_one_are_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        for id in 1..=4 {
            write(&store, id);
        }
        let at = |most: u64| {
            let capped = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap().restoring_at_most(most);
            capped.latest_restorable(false).unwrap().map(|c| c.manifest.checkpoint)
        };
        assert_eq!(at(2), Some(2), "3 and 4 were written but never recorded");
        assert_eq!(at(9), Some(4));
        assert_eq!(at(0), None, "nothing recorded yet: start from nothing");
    }

    #[test]
    fn state_is_read_from_a_verified_local_copy_and_from_the_store_otherwise() {
        let (dir, local) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap().with_local_copies(local.path());
        for id in 1..=5 {
            write(&store, id);
        }
        // Only the newest few checkpoints keep local copies.
        let mut kept: Vec<String> = std::fs::read_dir(local.path().join("job"))
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        kept.sort();
        assert_eq!(kept, ["chk-000000000003", "chk-000000000004", "chk-000000000005"]);
        // The store's file is gone: the local copy serves (what a restart on this machine reads).
        std::fs::remove_file(dir.path().join("job/chk-000000000005/s1.state")).unwrap();
        assert_eq!(store.load(5).unwrap().states, states(5));
        // A local copy that differs from the manifest is not used: the store's file is read.
        let copy = local.path().join("job/chk-000000000004/s1.state");
        std::fs::write(&copy, b"SLST not this").unwrap();
        assert_eq!(store.load(4).unwrap().states, states(4));
        // Without the copy nor the store's file, the checkpoint cannot be read.
        std::fs::remove_file(&copy).unwrap();
        std::fs::remove_file(dir.path().join("job/chk-000000000004/s1.state")).unwrap();
        assert!(store.load(4).is_err());
        // A store without local copies reads only the store.
        let plain = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        assert!(plain.load(5).is_err(), "the store's own file of checkpoint 5 was removed");
    }

    #[test]
    fn a_process_reads_only_the_state_files_it_picks_and_the_manifest_names_their_key_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        write(&store, 1);
        let manifest = store.load(1).unwrap().manifest;
        let groups: Vec<Option<Vec<u32>>> = manifest.states.iter().map(|e| e.key_groups.clone()).collect();
        assert_eq!(groups, [None, Some(vec![3, 5])]);
        // The keyed file is not wanted: it is not read (removing it changes nothing).
        std::fs::remove_file(dir.path().join("job/chk-000000000001/s1.state")).unwrap();
        let loaded = store.load_only(1, &|e| e.kind != StateKind::Keyed).unwrap();
        assert_eq!(loaded.states, states(1)[..1]);
        assert!(store.load(1).is_err());
        // A manifest written before key groups were recorded still parses.
        let old = std::str::from_utf8(&manifest.to_json()).unwrap().replace("\"key_groups\"", "\"ignored\"");
        assert_eq!(Manifest::parse(old.as_bytes()).unwrap().states[1].key_groups, None);
    }

    #[test]
    fn a_checkpoint_kept_as_a_savepoint_survives_its_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        write(&store, 4);
        let path = store.keep_as_savepoint(4).unwrap();
        store.delete(4).unwrap();
        let loaded = CheckpointStore::load_path(&path).unwrap();
        assert!(loaded.manifest.savepoint);
        assert_eq!(loaded.states, states(4));
        assert!(store.take_savepoint_request().is_none());
        let answer = store.request_savepoint().unwrap();
        assert_eq!(store.take_savepoint_request(), Some(SavepointAsk { answer, stop: false }));
        assert!(store.take_savepoint_request().is_none(), "a request is taken once");
        let unanswered = store.request_savepoint().unwrap();
        assert!(store.withdraw_savepoint_request(&unanswered));
        assert!(store.take_savepoint_request().is_none(), "a withdrawn request is not taken");
        // A worker's box in a folder of its own, asking the job to stop with the savepoint.
        let control = SavepointBox::at(dir.path().join("control"));
        let answer = control.request(true).unwrap();
        assert_eq!(control.take(), Some(SavepointAsk { answer: answer.clone(), stop: true }));
        let again = control.request(true).unwrap();
        assert!(control.withdraw(&again), "a stop request is withdrawn by its token too");
    }

    #[test]
    fn a_path_given_by_the_user_must_be_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "j").unwrap();
        write(&store, 7);
        let loaded = CheckpointStore::load_path(&store.path_of(7, false)).unwrap();
        assert_eq!(loaded.states, states(7));
        let err = CheckpointStore::load_path("/no/such/folder").unwrap_err().to_string();
        assert!(err.contains("no such folder"), "{err}");
        let err = CheckpointStore::load_path(dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("has no _manifest.json"), "{err}");
        let err = CheckpointStore::open("gs://bucket/x", "j").err().unwrap().to_string();
        assert!(err.contains("not a location Sluice can use") && err.contains("s3://bucket/prefix"), "{err}");
        #[cfg(not(feature = "s3"))]
        {
            let err = CheckpointStore::open("s3://bucket/x", "j").err().unwrap().to_string();
            assert!(err.contains("build with the `s3` feature"), "{err}");
        }
        #[cfg(feature = "s3")]
        {
            let err = CheckpointStore::open("s3://", "j").err().unwrap().to_string();
            assert!(err.contains("no bucket"), "{err}");
        }
    }

    /// The ways a disk or an operator damages a checkpoint folder.
    fn damage(folder: &std::path::Path, how: &str) {
        let state = folder.join("s1.state");
        match how {
            "flipped byte" => {
                let mut bytes = std::fs::read(&state).unwrap();
                bytes[7] ^= 0x01;
                std::fs::write(&state, bytes).unwrap();
            }
            "truncated state file" => {
                let bytes = std::fs::read(&state).unwrap();
                std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
            }
            "deleted state file" => std::fs::remove_file(&state).unwrap(),
            "deleted manifest" => std::fs::remove_file(folder.join(MANIFEST)).unwrap(),
            "garbled manifest" => std::fs::write(folder.join(MANIFEST), b"{\"format\": 1, \"job\": ").unwrap(),
            other => unreachable!("{other}"),
        }
    }

    /// A store of job "job" holding checkpoints 1 to 3.
    fn three_checkpoints() -> (tempfile::TempDir, CheckpointStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        for id in 1..=3 {
            write(&store, id);
        }
        (dir, store)
    }

    const DAMAGES: [&str; 5] =
        ["flipped byte", "truncated state file", "deleted state file", "deleted manifest", "garbled manifest"];

    #[test]
    fn a_damaged_committed_checkpoint_is_never_passed_over_silently() {
        for how in DAMAGES {
            let (dir, store) = three_checkpoints();
            store.record_commit(2).unwrap();
            store.record_commit(3).unwrap();
            store.record_commit(1).unwrap(); // never goes back
            assert_eq!(store.committed().unwrap(), Some(3));
            damage(&dir.path().join("job/chk-000000000003"), how);
            let err = store.latest_restorable(false).err().unwrap().to_string();
            assert!(
                err.contains("output of checkpoint 3 was already committed")
                    && err.contains("restoring checkpoint 2 would write again")
                    && err.contains("--allow-duplicates"),
                "{how}: {err}"
            );
            assert!(err.contains("checkpoint 3:"), "{how}: the damage is named: {err}");
            let allowed = store.latest_restorable(true).unwrap().unwrap();
            assert_eq!(allowed.manifest.checkpoint, 2, "{how}");
            // Every checkpoint damaged: starting from nothing is refused the same way.
            damage(&dir.path().join("job/chk-000000000002"), how);
            damage(&dir.path().join("job/chk-000000000001"), how);
            let err = store.latest_restorable(false).err().unwrap().to_string();
            assert!(err.contains("restoring nothing (no checkpoint of this job can be read)"), "{how}: {err}");
            assert!(store.latest_restorable(true).unwrap().is_none());
        }
    }

    #[test]
    fn a_damaged_checkpoint_newer_than_the_committed_one_falls_back_quietly() {
        for how in DAMAGES {
            let (dir, store) = three_checkpoints();
            store.record_commit(2).unwrap();
            damage(&dir.path().join("job/chk-000000000003"), how);
            assert_eq!(store.latest_restorable(false).unwrap().unwrap().manifest.checkpoint, 2, "{how}");
        }
        // A commit record that cannot be read is refused too: it is unknown what was seen.
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "job").unwrap();
        write(&store, 1);
        std::fs::write(dir.path().join("job").join(COMMITTED), b"garbage").unwrap();
        let err = store.latest_restorable(false).err().unwrap().to_string();
        assert!(err.contains("commit record") && err.contains("--allow-duplicates"), "{err}");
        assert_eq!(store.latest_restorable(true).unwrap().unwrap().manifest.checkpoint, 1);
    }
}

/// A folder through which another process asks a running job for a savepoint: the asker
/// writes `_savepoint_request` (a token, and `stop` to stop the job with the savepoint);
/// the job takes it and writes its answer to `_savepoint_<token>` (`ok <path>` or
/// `error <reason>`). The command line uses the job's checkpoint folder; a worker uses a
/// folder of its own per job process (`SLUICE_CONTROL_DIR`).
#[derive(Clone, Debug)]
pub struct SavepointBox {
    request: std::path::PathBuf,
}

/// A savepoint request taken from a [`SavepointBox`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavepointAsk {
    /// Where the answer goes.
    pub answer: std::path::PathBuf,
    /// Whether the job is to stop with this savepoint (its final checkpoint becomes it).
    pub stop: bool,
}

impl SavepointBox {
    /// The box in `folder`.
    pub fn at(folder: impl AsRef<std::path::Path>) -> Self {
        SavepointBox { request: folder.as_ref().join("_savepoint_request") }
    }

    /// Leaves a request; returns the file the answer will be written to.
    pub fn request(&self, stop: bool) -> Result<std::path::PathBuf, String> {
        let token = format!("{}-{}", std::process::id(), sluice_dataflow::now_millis());
        let io = |e: std::io::Error| format!("cannot write '{}': {e}", self.request.display());
        std::fs::create_dir_all(self.request.parent().expect("a request has a folder")).map_err(io)?;
        let text = if stop { format!("{token} stop") } else { token.clone() };
        std::fs::write(&self.request, text).map_err(io)?;
        Ok(self.request.with_file_name(format!("_savepoint_{token}")))
    }

    /// Withdraws a request nobody waits for any more (see
    /// [`CheckpointStore::withdraw_savepoint_request`]); whether it was still pending.
    pub fn withdraw(&self, answer: &std::path::Path) -> bool {
        let token = answer.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("_savepoint_"));
        let pending = std::fs::read_to_string(&self.request).ok();
        let pending_token = pending.as_deref().and_then(|p| p.split_whitespace().next());
        let ours = matches!((token, pending_token), (Some(t), Some(p)) if p == t);
        if ours {
            let _ = std::fs::remove_file(&self.request);
        }
        // An answer that arrives after all is not left behind either.
        let _ = std::fs::remove_file(answer);
        ours
    }

    /// Waits up to `timeout` for the answer to a request of this box (`answer` as
    /// [`SavepointBox::request`] returned it): the savepoint's path, or why there is none.
    /// Without an answer in time the request is withdrawn, and the error says so. The wait
    /// ends early once `alive` says the job is gone (a last look for its answer first).
    pub fn wait(
        &self,
        answer: &std::path::Path,
        timeout: std::time::Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<String, String> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let gone = !alive();
            // (An empty file is an answer being written by an older job: read it again.)
            if let Some(text) = std::fs::read_to_string(answer).ok().filter(|t| !t.is_empty()) {
                let _ = std::fs::remove_file(answer);
                return match text.split_once(' ') {
                    Some(("ok", path)) => Ok(path.trim().to_string()),
                    Some((_, error)) => Err(format!("the job could not take the savepoint: {error}")),
                    None => Err(format!("unreadable answer: {text}")),
                };
            }
            if gone {
                let _ = self.withdraw(answer);
                return Err("the job ended before it answered".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(format!(
            "no answer within {timeout:?}; {}",
            if self.withdraw(answer) {
                "the request is withdrawn"
            } else {
                "the job took the request just now; its answer is dropped"
            }
        ))
    }

    /// Takes the pending request, if any.
    pub fn take(&self) -> Option<SavepointAsk> {
        let text = std::fs::read_to_string(&self.request).ok()?;
        std::fs::remove_file(&self.request).ok()?;
        let mut words = text.split_whitespace();
        let token = words.next()?;
        Some(SavepointAsk {
            answer: self.request.with_file_name(format!("_savepoint_{token}")),
            stop: words.next() == Some("stop"),
        })
    }
}
