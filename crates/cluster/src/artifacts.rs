//! Job binaries as artifacts: stored under `artifacts/<sha256>` in the cluster's store
//! through `object_store` (a local folder, or with the `s3` feature `s3://bucket/prefix`,
//! opened as checkpoint locations are),
//! fetched by a worker into its cache, checked against the hash it was asked to run, and
//! made executable. A binary whose bytes do not hash to what was submitted never runs.

use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The artifact store.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    root: String,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore").field("root", &self.root).finish()
    }
}

impl ArtifactStore {
    /// Opens the store at `root`: a folder (created if missing) or a remote location.
    pub fn open(root: &str) -> Result<ArtifactStore, String> {
        let store =
            sluice_checkpoint::storage::open_store(root).map_err(|e| format!("opening the artifact store: {e}"))?;
        Ok(ArtifactStore { store, root: root.to_string() })
    }

    /// Where the store is (what a worker opens).
    pub fn location(&self) -> &str {
        &self.root
    }

    fn path(sha: &str) -> Path {
        Path::from(format!("artifacts/{sha}"))
    }

    /// Stores `bytes`; returns their hash.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<String, String> {
        let sha = sha256_hex(&bytes);
        self.store.put(&Self::path(&sha), PutPayload::from(bytes)).await.map_err(|e| e.to_string())?;
        Ok(sha)
    }

    /// Whether an artifact with this hash is stored.
    pub async fn contains(&self, sha: &str) -> bool {
        valid_sha(sha) && self.store.head(&Self::path(sha)).await.is_ok()
    }

    /// Fetches artifact `sha` into `cache` as an executable file, unless a checked copy is
    /// there; fails if the stored bytes do not hash to `sha`.
    pub async fn fetch(&self, sha: &str, cache: &std::path::Path) -> Result<std::path::PathBuf, String> {
        if !valid_sha(sha) {
            return Err(format!("'{sha}' is not a SHA-256 in hex"));
        }
        let target = cache.join(sha);
        // Hashing a large binary takes a while: off the async threads, which also carry the
        // worker's heartbeats. A cached binary verified before, whose size and modification
        // time have not changed since, is not hashed again (a restart should not wait for it).
        let check = target.clone();
        let expected = sha.to_string();
        let cached = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let Ok(meta) = std::fs::metadata(&check) else { return Ok(false) };
            let stamp = (meta.len(), meta.modified().ok());
            let mut verified = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
            if verified.get(&check) == Some(&stamp) {
                return Ok(true);
            }
            let ok = sha256_hex(&std::fs::read(&check).map_err(|e| e.to_string())?) == expected;
            if ok {
                verified.insert(check, stamp);
            }
            Ok(ok)
        })
        .await
        .map_err(|e| e.to_string())??;
        if cached {
            return Ok(target);
        }
        let bytes = self
            .store
            .get(&Self::path(sha))
            .await
            .map_err(|e| format!("fetching artifact {sha}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("fetching artifact {sha}: {e}"))?;
        let (got, bytes) =
            tokio::task::spawn_blocking(move || (sha256_hex(&bytes), bytes)).await.map_err(|e| e.to_string())?;
        if got != sha {
            return Err(format!(
                "artifact {sha} in the store hashes to {got}: it was changed after it was submitted; it is not run"
            ));
        }
        std::fs::create_dir_all(cache).map_err(|e| e.to_string())?;
        // A name of its own: a prefetch and a start may fetch the same artifact at once.
        static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let partial = cache.join(format!("{sha}.{n}.partial"));
        std::fs::write(&partial, &bytes).map_err(|e| e.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        }
        std::fs::rename(&partial, &target).map_err(|e| e.to_string())?;
        Ok(target)
    }
}

/// Cached binaries this process has hashed, with the size and modification time they had.
type Stamp = (u64, Option<std::time::SystemTime>);
static VERIFIED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, Stamp>>> =
    std::sync::LazyLock::new(Default::default);

fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_binary_is_fetched_executable_and_a_changed_one_is_refused() {
        let runtime = crate::runtime().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let bytes = b"#!/bin/sh\necho hello\n".to_vec();
        let sha = runtime.block_on(store.put(bytes.clone())).unwrap();
        assert_eq!(sha, sha256_hex(&bytes));
        assert!(runtime.block_on(store.contains(&sha)));
        assert!(!runtime.block_on(store.contains(&"0".repeat(64))));
        let cache = dir.path().join("cache");
        let fetched = runtime.block_on(store.fetch(&sha, &cache)).unwrap();
        assert_eq!(std::fs::read(&fetched).unwrap(), bytes);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&fetched).unwrap().permissions().mode() & 0o111, 0o111, "executable");
        // The stored bytes change after the submission: the hash no longer matches.
        std::fs::write(dir.path().join("store/artifacts").join(&sha), b"#!/bin/sh\nrm -rf /\n").unwrap();
        std::fs::remove_file(&fetched).unwrap();
        let error = runtime.block_on(store.fetch(&sha, &cache)).unwrap_err();
        assert!(error.contains("it was changed after it was submitted"), "{error}");
        assert!(!fetched.exists(), "nothing is left to run");
        assert!(runtime.block_on(store.fetch("../../etc/passwd", &cache)).is_err(), "only hashes name artifacts");
    }
}
