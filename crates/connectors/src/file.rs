//! Text files: a source over the lines of a file or of the files of a folder, split by
//! byte ranges over the subtasks, and a sink writing one part file per subtask.
//!
//! A split `[start, end)` owns every line whose first byte lies in it: a reader that
//! starts inside a line skips to the next one, and reads past `end` to finish its last
//! line. So each line is read exactly once, however the splits fall.

use sluice_dataflow::{Poll, Sink, SinkWriter, Source, SourceReader};
use sluice_types::{Record, NO_TIMESTAMP};
use std::fmt::Display;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Split {
    path: PathBuf,
    start: u64,
    end: u64,
}

/// The lines of a text file, or of every file in a folder (sorted by name, hidden files
/// skipped), without line terminators.
///
/// ```no_run
/// use sluice_connectors::TextFileSource;
/// let lines = TextFileSource::new("input/");
/// # let _ = lines;
/// ```
pub struct TextFileSource {
    path: PathBuf,
    min_split_bytes: u64,
}

impl TextFileSource {
    /// Reads `path`, a file or a folder.
    pub fn new(path: impl AsRef<Path>) -> Self {
        TextFileSource { path: path.as_ref().to_path_buf(), min_split_bytes: 1 << 20 }
    }

    /// Files are cut into byte-range splits no smaller than this (default 1 MiB).
    pub fn with_min_split_bytes(mut self, bytes: u64) -> Self {
        self.min_split_bytes = bytes.max(1);
        self
    }

    fn files(&self) -> io::Result<Vec<(PathBuf, u64)>> {
        let meta = std::fs::metadata(&self.path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot read '{}': {e}; check the input path", self.path.display()))
        })?;
        if meta.is_file() {
            return Ok(vec![(self.path.clone(), meta.len())]);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let meta = entry.metadata()?;
            if meta.is_file() && !hidden {
                files.push((entry.path(), meta.len()));
            }
        }
        files.sort();
        Ok(files)
    }

    fn splits(&self, parallelism: usize) -> io::Result<Vec<Split>> {
        let mut splits = Vec::new();
        for (path, len) in self.files()? {
            let count = (len / self.min_split_bytes).clamp(1, parallelism as u64);
            let size = len.div_ceil(count).max(1);
            let mut start = 0;
            while start < len {
                splits.push(Split { path: path.clone(), start, end: (start + size).min(len) });
                start += size;
            }
        }
        Ok(splits)
    }
}

impl Source<String> for TextFileSource {
    /// Records have no event time until a timestamp assigner gives them one.
    fn has_timestamps(&self) -> bool {
        false
    }

    fn name(&self) -> String {
        format!("text file source '{}'", self.path.display())
    }
    fn validate(&self) -> Result<(), String> {
        self.files().map(|_| ()).map_err(|e| e.to_string())
    }
    fn create_reader(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SourceReader<String>>> {
        let mine = self.splits(parallelism)?.into_iter().skip(index).step_by(parallelism).collect::<Vec<_>>();
        Ok(Box::new(TextFileReader { splits: mine, index: 0, current: None, resume_at: None, line: Vec::new() }))
    }
}

struct OpenSplit {
    reader: BufReader<File>,
    position: u64,
    end: u64,
}

struct TextFileReader {
    splits: Vec<Split>,
    /// Index of the split being read (or next to open).
    index: usize,
    current: Option<OpenSplit>,
    /// Where to resume inside split `index` when it is opened (after a restore).
    resume_at: Option<u64>,
    line: Vec<u8>,
}

impl TextFileReader {
    fn open(split: &Split, resume_at: Option<u64>) -> io::Result<OpenSplit> {
        let mut file = File::open(&split.path)?;
        if let Some(offset) = resume_at {
            // A checkpointed offset is always at a line start of this split.
            file.seek(SeekFrom::Start(offset))?;
            return Ok(OpenSplit { reader: BufReader::new(file), position: offset, end: split.end });
        }
        if split.start > 0 {
            // The line that straddles the split's start belongs to the previous split.
            file.seek(SeekFrom::Start(split.start - 1))?;
            let mut reader = BufReader::new(file);
            let mut skipped = Vec::new();
            let position = split.start - 1 + reader.read_until(b'\n', &mut skipped)? as u64;
            return Ok(OpenSplit { reader, position, end: split.end });
        }
        Ok(OpenSplit { reader: BufReader::new(file), position: 0, end: split.end })
    }
}

impl SourceReader<String> for TextFileReader {
    fn poll(&mut self, out: &mut Vec<Record<String>>, max: usize) -> io::Result<Poll> {
        let limit = out.len() + max;
        while out.len() < limit {
            let split = match &mut self.current {
                Some(split) => split,
                None => match self.splits.get(self.index) {
                    Some(next) => self.current.insert(Self::open(next, self.resume_at.take())?),
                    None => return Ok(if out.len() + max == limit { Poll::Finished } else { Poll::Ready }),
                },
            };
            if split.position >= split.end {
                self.current = None;
                self.index += 1;
                continue;
            }
            self.line.clear();
            let read = split.reader.read_until(b'\n', &mut self.line)?;
            if read == 0 {
                self.current = None;
                self.index += 1;
                continue;
            }
            split.position += read as u64;
            while matches!(self.line.last(), Some(b'\n' | b'\r')) {
                self.line.pop();
            }
            let text = String::from_utf8(std::mem::take(&mut self.line))
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            out.push(Record { time: NO_TIMESTAMP, value: text });
        }
        Ok(Poll::Ready)
    }

    fn position(&self) -> Option<Vec<u8>> {
        // (split index, byte offset to resume at, or u64::MAX: from the split's start)
        let offset = self.current.as_ref().map(|c| c.position).or(self.resume_at).unwrap_or(u64::MAX);
        let mut bytes = (self.index as u64).to_le_bytes().to_vec();
        bytes.extend(offset.to_le_bytes());
        Some(bytes)
    }

    fn seek(&mut self, position: &[u8]) -> io::Result<()> {
        if position.len() != 16 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a file source position is 16 bytes"));
        }
        let word = |i: usize| u64::from_le_bytes(position[i..i + 8].try_into().expect("8 bytes"));
        self.index = word(0) as usize;
        self.current = None;
        self.resume_at = Some(word(8)).filter(|o| *o != u64::MAX);
        Ok(())
    }
}

/// Writes each record's `Display` form as a line, into `part-<subtask>` files of a folder
/// (created if missing; existing part files are replaced).
///
/// ```no_run
/// use sluice_connectors::TextFileSink;
/// let sink: TextFileSink<String> = TextFileSink::new("out/");
/// # let _ = sink;
/// ```
pub struct TextFileSink<T> {
    dir: PathBuf,
    _t: PhantomData<fn(T)>,
}

impl<T> TextFileSink<T> {
    /// A sink writing into folder `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        TextFileSink { dir: dir.as_ref().to_path_buf(), _t: PhantomData }
    }
}

/// Creates an output folder before the job starts, so that a path that cannot be one (a
/// regular file on the way, no permission) fails the job at once with the fix.
pub(crate) fn ensure_output_folder(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the output folder '{}': {e}; choose a folder that can be created and written",
            dir.display()
        )
    })
}

impl<T: Display + Send + 'static> Sink<T> for TextFileSink<T> {
    fn name(&self) -> String {
        format!("text file sink '{}'", self.dir.display())
    }
    fn validate(&self, _config: &sluice_dataflow::JobConfig) -> Result<(), String> {
        ensure_output_folder(&self.dir)
    }
    fn create_writer(&self, index: usize, _parallelism: usize) -> io::Result<Box<dyn SinkWriter<T>>> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create '{}': {e}", self.dir.display())))?;
        let file = File::create(self.dir.join(format!("part-{index}")))?;
        Ok(Box::new(TextFileWriter { out: BufWriter::new(file), _t: PhantomData }))
    }
}

struct TextFileWriter<T> {
    out: BufWriter<File>,
    _t: PhantomData<fn(T)>,
}

impl<T: Display + Send> SinkWriter<T> for TextFileWriter<T> {
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> io::Result<()> {
        for record in batch {
            writeln!(self.out, "{}", record.value)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_read_every_line_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        let mut text = String::new();
        for i in 0..500 {
            let line = "x".repeat(i % 37) + &i.to_string();
            text += &line;
            text += if i % 3 == 0 { "\r\n" } else { "\n" };
            expected.push(line);
        }
        std::fs::write(dir.path().join("a.txt"), &text).unwrap();
        std::fs::write(dir.path().join("b.txt"), "tail1\ntail2").unwrap();
        std::fs::write(dir.path().join(".hidden"), "no\n").unwrap();
        expected.push("tail1".into());
        expected.push("tail2".into());
        for parallelism in [1, 2, 3, 7] {
            let source = TextFileSource::new(dir.path()).with_min_split_bytes(100);
            let mut lines = Vec::new();
            for s in 0..parallelism {
                let mut reader = source.create_reader(s, parallelism).unwrap();
                let mut out = Vec::new();
                while reader.poll(&mut out, 10).unwrap() != Poll::Finished {}
                lines.extend(out.into_iter().map(|r| r.value));
            }
            lines.sort();
            let mut want = expected.clone();
            want.sort();
            assert_eq!(lines, want, "parallelism {parallelism}");
        }
    }

    #[test]
    fn a_reader_resumes_mid_split_from_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..300).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("a.txt"), &text).unwrap();
        let source = TextFileSource::new(dir.path()).with_min_split_bytes(500);
        for stop_after in [1, 7, 60, 150] {
            let mut reader = source.create_reader(0, 2).unwrap();
            let mut first = Vec::new();
            reader.poll(&mut first, stop_after).unwrap();
            let position = reader.position().unwrap();
            let mut resumed = source.create_reader(0, 2).unwrap();
            resumed.seek(&position).unwrap();
            let mut rest = Vec::new();
            while resumed.poll(&mut rest, 9).unwrap() != Poll::Finished {}
            let mut whole = Vec::new();
            let mut fresh = source.create_reader(0, 2).unwrap();
            while fresh.poll(&mut whole, 9).unwrap() != Poll::Finished {}
            first.extend(rest);
            assert_eq!(first, whole, "stopped after {stop_after}");
        }
    }

    #[test]
    fn a_missing_path_is_a_clear_error() {
        let err = TextFileSource::new("/no/such/path").create_reader(0, 1).err().unwrap();
        assert!(err.to_string().contains("check the input path"), "{err}");
    }
}
