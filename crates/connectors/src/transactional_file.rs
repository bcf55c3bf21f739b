//! An exactly-once text file sink, by two-phase commit over atomic renames.
//!
//! Each writer appends lines to a file in `<dir>/.inprogress/`. At a checkpoint barrier
//! (phase one) the file is flushed, synced and moved to `<dir>/.pending/`; its name is the
//! committable. When the checkpoint is complete (phase two) the pending file is renamed to
//! `<dir>/<name>`: a file appears under its final name only whole, and only once the
//! checkpoint that covers its records is durable. After a restart, the committables of the
//! checkpoint restored from are committed again (a rename that already happened is a
//! no-op) and every other in-progress or pending file is deleted.

use sluice_dataflow::{Sink, SinkWriter};
use sluice_types::Record;
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const IN_PROGRESS: &str = ".inprogress";
const PENDING: &str = ".pending";

/// Writes each record's `Display` form as a line; lines become visible, exactly once, in
/// files `part-<subtask>-<writer>-<n>` of `dir` when the checkpoint covering them completes
/// (or when a bounded job ends).
///
/// ```no_run
/// use sluice_connectors::TransactionalFileSink;
/// let sink: TransactionalFileSink<String> = TransactionalFileSink::new("out/");
/// # let _ = sink;
/// ```
pub struct TransactionalFileSink<T> {
    dir: PathBuf,
    _t: PhantomData<fn(T)>,
}

impl<T> TransactionalFileSink<T> {
    /// A sink committing into folder `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        TransactionalFileSink { dir: dir.as_ref().to_path_buf(), _t: PhantomData }
    }
}

fn encode_names(names: &[String]) -> Vec<u8> {
    names.join("\n").into_bytes()
}

fn decode_names(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).lines().map(str::to_string).collect()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A name no other writer of any attempt uses: process id, start time, and a counter.
fn writer_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}x{:x}x{}", std::process::id(), nanos, NEXT.fetch_add(1, Ordering::Relaxed))
}

impl<T: Display + Send + 'static> Sink<T> for TransactionalFileSink<T> {
    fn name(&self) -> String {
        format!("exactly-once file sink '{}'", self.dir.display())
    }

    fn validate(&self, _config: &sluice_dataflow::JobConfig) -> Result<(), String> {
        crate::file::ensure_output_folder(&self.dir)
    }

    fn create_writer(&self, index: usize, _parallelism: usize) -> io::Result<Box<dyn SinkWriter<T>>> {
        for sub in [IN_PROGRESS, PENDING] {
            fs::create_dir_all(self.dir.join(sub))
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create '{}': {e}", self.dir.display())))?;
        }
        Ok(Box::new(TransactionalFileWriter {
            dir: self.dir.clone(),
            prefix: format!("part-{index}-{}", writer_id()),
            sequence: 0,
            current: None,
            _t: PhantomData,
        }))
    }

    fn commit(&self, committable: &[u8]) -> io::Result<()> {
        for name in decode_names(committable) {
            let pending = self.dir.join(PENDING).join(&name);
            let visible = self.dir.join(&name);
            match fs::rename(&pending, &visible) {
                Ok(()) => {}
                // Committed before (a commit repeated after a restart).
                Err(e) if e.kind() == io::ErrorKind::NotFound && visible.exists() => {}
                Err(e) => {
                    return Err(io::Error::new(e.kind(), format!("cannot commit '{}': {e}", pending.display())));
                }
            }
        }
        sync_dir(&self.dir)
    }

    fn recover(&self, keep: &[Vec<u8>]) -> io::Result<()> {
        let keep: Vec<String> = keep.iter().flat_map(|c| decode_names(c)).collect();
        for sub in [IN_PROGRESS, PENDING] {
            let folder = self.dir.join(sub);
            let Ok(entries) = fs::read_dir(&folder) else { continue };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !(sub == PENDING && keep.contains(&name)) {
                    tracing::info!(file = %entry.path().display(), "aborting a file of an earlier attempt");
                    fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }
}

struct TransactionalFileWriter<T> {
    dir: PathBuf,
    prefix: String,
    sequence: u64,
    current: Option<(String, BufWriter<File>)>,
    _t: PhantomData<fn(T)>,
}

impl<T: Display + Send> SinkWriter<T> for TransactionalFileWriter<T> {
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> io::Result<()> {
        if self.current.is_none() {
            let name = format!("{}-{}", self.prefix, self.sequence);
            self.sequence += 1;
            let file = File::create(self.dir.join(IN_PROGRESS).join(&name))?;
            self.current = Some((name, BufWriter::new(file)));
        }
        let (_, out) = self.current.as_mut().expect("opened above");
        for record in batch {
            writeln!(out, "{}", record.value)?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, _checkpoint: Option<u64>) -> io::Result<Option<Vec<u8>>> {
        let Some((name, mut out)) = self.current.take() else { return Ok(None) };
        out.flush()?;
        out.get_ref().sync_all()?;
        drop(out);
        fs::rename(self.dir.join(IN_PROGRESS).join(&name), self.dir.join(PENDING).join(&name))?;
        sync_dir(&self.dir.join(PENDING))?;
        Ok(Some(encode_names(&[name])))
    }
}

/// The committed output of a [`TransactionalFileSink`] folder: every line of its visible
/// part files (what any reader of the folder sees), in no particular order.
pub fn committed_lines(dir: &Path) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(lines),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_file() && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("part-")) {
            lines.extend(fs::read_to_string(&path)?.lines().map(str::to_string));
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(dir: &Path) -> Vec<String> {
        let mut lines = committed_lines(dir).unwrap();
        lines.sort();
        lines
    }

    #[test]
    fn files_become_visible_on_commit_only_and_commits_repeat_safely() {
        let dir = tempfile::tempdir().unwrap();
        let sink = TransactionalFileSink::<u32>::new(dir.path());
        let mut writer = sink.create_writer(0, 1).unwrap();
        writer.write_batch(vec![Record::new(1, 0), Record::new(2, 0)]).unwrap();
        let first = writer.pre_commit(Some(1)).unwrap().unwrap();
        writer.write_batch(vec![Record::new(3, 0)]).unwrap();
        assert!(visible(dir.path()).is_empty(), "nothing is visible before a commit");
        sink.commit(&first).unwrap();
        sink.commit(&first).unwrap();
        assert_eq!(visible(dir.path()), vec!["1", "2"]);
        // A restart from checkpoint 1: the in-progress file with 3 is aborted.
        let second = writer.pre_commit(Some(2)).unwrap().unwrap();
        sink.recover(std::slice::from_ref(&first)).unwrap();
        assert!(sink.commit(&second).is_err(), "an aborted transaction cannot be committed");
        sink.commit(&first).unwrap();
        assert_eq!(visible(dir.path()), vec!["1", "2"]);
        assert_eq!(fs::read_dir(dir.path().join(PENDING)).unwrap().count(), 0);
    }
}
