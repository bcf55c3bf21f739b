//! The coordinator's job table on disk, so that a coordinator that is killed and started
//! again knows its jobs: what was submitted (binary hash, arguments, parallelism, graph
//! fingerprint), each job's state, attempt, restarts and history, and the id counters (so
//! that no job or worker id is given twice). It is one small JSON file in a local folder,
//! written whole to a temporary file and renamed over the old one, so a reader finds the
//! old table or the new one, never half of one. Checkpoints stay in checkpoint storage: a
//! job resumes from its own latest checkpoint. (Standby coordinators that share this table
//! through etcd are issue 11.)

use std::path::{Path, PathBuf};

/// The table's file.
#[derive(Clone, Debug)]
pub struct JobTable {
    path: PathBuf,
}

impl JobTable {
    /// The table in folder `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<JobTable, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating the job table's folder {}: {e}", dir.display()))?;
        Ok(JobTable { path: dir.join("jobs.json") })
    }

    /// Replaces the table with `table`.
    pub fn save(&self, table: &serde_json::Value) -> Result<(), String> {
        let aside = self.path.with_extension("json.partial");
        std::fs::write(&aside, table.to_string())
            .and_then(|()| std::fs::rename(&aside, &self.path))
            .map_err(|e| format!("writing the job table {}: {e}", self.path.display()))
    }

    /// The table last saved, if any. A table that cannot be read is an error that names
    /// the file: the coordinator does not start and forget its jobs.
    pub fn load(&self) -> Result<Option<serde_json::Value>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                format!(
                    "the job table {} is not readable ({e}): restore it, or move it away to start with no jobs",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading the job table {}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_table_is_read_back_and_a_damaged_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let table = JobTable::open(&dir.path().join("meta")).unwrap();
        assert_eq!(table.load().unwrap(), None);
        let value = serde_json::json!({"next_job": 3, "jobs": {"job-1": {"state": "running"}}});
        table.save(&value).unwrap();
        assert_eq!(table.load().unwrap(), Some(value));
        std::fs::write(dir.path().join("meta/jobs.json"), "{\"next_job\": ").unwrap();
        let error = table.load().unwrap_err();
        assert!(error.contains("jobs.json") && error.contains("move it away"), "{error}");
    }
}
