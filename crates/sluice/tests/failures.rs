//! Failures that must be loud and final: a panicking source fails its job (chained or
//! not) instead of hanging it; what can be checked before a job starts is checked then;
//! failures a restart cannot heal (restored state of another type, a source given a keyed
//! operator's state) fail the job instead of restarting it forever; event time without
//! timestamps is refused when the graph is built. Every job runs under a deadline.

use sluice::dataflow::Poll;
use sluice::prelude::*;
use sluice::JobError;
use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on a thread and returns its result, failing the test if it takes longer than
/// `deadline` (the job hung).
fn within<T: Send + 'static>(deadline: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(deadline).unwrap_or_else(|_| panic!("{what} did not end within {deadline:?}"))
}

const DEADLINE: Duration = Duration::from_secs(60);

/// A source whose reader panics after `after` records.
struct PanickingSource {
    after: u64,
}

struct PanickingReader {
    next: u64,
    after: u64,
}

impl Source<u64> for PanickingSource {
    fn name(&self) -> String {
        "panicking".into()
    }
    fn create_reader(&self, _: usize, _: usize) -> std::io::Result<Box<dyn SourceReader<u64>>> {
        Ok(Box::new(PanickingReader { next: 0, after: self.after }))
    }
}

impl SourceReader<u64> for PanickingReader {
    fn poll(&mut self, out: &mut Vec<Record<u64>>, _max: usize) -> std::io::Result<Poll> {
        if self.next == self.after {
            panic!("the reader broke at {}", self.next);
        }
        out.push(Record::new(self.next, self.next as i64));
        self.next += 1;
        Ok(Poll::Ready)
    }
}

#[test]
fn a_panicking_source_fails_the_job_chained_or_not_and_names_itself() {
    for chained in [true, false] {
        let error = within(DEADLINE, "the job with a panicking source", move || {
            let env = StreamEnv::new();
            env.set_parallelism(2);
            if !chained {
                env.disable_operator_chaining();
            }
            env.source(PanickingSource { after: 500 }, Watermarks::none())
                .name("flaky reader")
                .map(|v| v + 1)
                .discard();
            env.execute("panicking source").unwrap_err().to_string()
        });
        assert!(
            error.contains("operator 'flaky reader' (subtask") && error.contains("panicked: the reader broke at 500"),
            "chained {chained}: {error}"
        );
    }
    // Dropping the handle of a job whose source panicked returns too.
    within(DEADLINE, "dropping the handle", || {
        let env = StreamEnv::new();
        env.source(PanickingSource { after: 10 }, Watermarks::none()).discard();
        let handle = env.execute_async("dropped").unwrap();
        // The job fails by itself (the caller's `within` is the deadline), and then
        // dropping its handle returns at once.
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(handle);
    });
}

/// Builds a job into an environment.
type BuildJob = Box<dyn Fn(&StreamEnv, &std::path::Path) + Send>;

#[test]
fn what_can_be_checked_before_the_start_fails_at_once_with_the_fix() {
    let cases: Vec<(&str, BuildJob)> = vec![
        (
            "rate limit is 0 records/s",
            Box::new(|env, dir| {
                env.enable_checkpointing(Duration::from_millis(50), dir.join("ck").to_str().unwrap());
                env.source(SequenceSource::new(0..10).with_rate_limit(0.0), Watermarks::none()).discard();
            }),
        ),
        (
            "cannot create the output folder",
            Box::new(|env, dir| {
                std::fs::write(dir.join("file"), b"x").unwrap();
                env.from_collection(vec![1u64]).sink(TextFileSink::new(dir.join("file/out")));
            }),
        ),
        (
            "cannot create the output folder",
            Box::new(|env, dir| {
                std::fs::write(dir.join("file"), b"x").unwrap();
                env.enable_checkpointing(Duration::from_millis(50), dir.join("ck").to_str().unwrap());
                env.from_collection(vec![1u64]).sink(TransactionalFileSink::new(dir.join("file/out")));
            }),
        ),
        (
            "check the input path",
            Box::new(|env, dir| {
                env.read_text_file(dir.join("no-such-folder")).discard();
            }),
        ),
        (
            "cannot create the folder",
            Box::new(|env, dir| {
                std::fs::write(dir.join("file"), b"x").unwrap();
                env.enable_checkpointing(Duration::from_millis(50), dir.join("file/ck").to_str().unwrap());
                env.from_collection(vec![1u64]).discard();
            }),
        ),
        (
            "works in event time but its input has no timestamps",
            Box::new(|env, _| {
                env.source(SequenceSource::new(0..10), Watermarks::monotonic())
                    .key_by(|v| v % 2)
                    .window(Tumbling::event_time(Duration::from_secs(1)))
                    .reduce(|a, b| a + b)
                    .discard();
            }),
        ),
        (
            "works in event time but its input has no timestamps",
            Box::new(|env, _| {
                let a = env.from_collection(vec![(1u8, 1u64)]).key_by(|e| e.0);
                let b = env.from_collection(vec![(1u8, 2u64)]).key_by(|e| e.0);
                a.interval_join(&b).between(-5, 5).process(|x, y| x.1 + y.1).discard();
            }),
        ),
    ];
    for (want, build) in cases {
        let error = within(DEADLINE, want, move || {
            let dir = tempfile::tempdir().unwrap();
            let env = StreamEnv::new();
            env.set_restart_strategy(RestartStrategy::FixedDelay { attempts: 1000, delay: Duration::from_millis(1) });
            build(&env, dir.path());
            env.execute("checked").map(|_| ()).unwrap_err()
        });
        let text = error.to_string();
        assert!(text.contains(want), "expected '{want}' in: {text}");
        assert!(
            matches!(error, JobError::Graph(_) | JobError::Restore { .. }),
            "'{want}' is found before the job starts: {error:?}"
        );
    }
}

/// Rolling u64 sums under uid "sums", checkpointed every 20 ms.
fn counting_job(env: &StreamEnv, checkpoints: &std::path::Path) {
    env.set_parallelism(1)
        .enable_checkpointing(Duration::from_millis(20), checkpoints.to_str().unwrap())
        .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 1000, delay: Duration::from_millis(1) });
    env.source(SequenceSource::new(0..2_000).with_rate_limit(4_000.0), Watermarks::none())
        .uid("numbers")
        .key_by(|v| v % 3)
        .reduce(|a, b| a + b)
        .uid("sums")
        .discard();
}

/// Runs [`counting_job`] until a checkpoint holds keyed state of "sums", then cancels it.
fn run_until_sums_are_checkpointed(checkpoints: &std::path::Path, job: &str) {
    let env = StreamEnv::new();
    counting_job(&env, checkpoints);
    let handle = env.execute_async(job).unwrap();
    let folder = checkpoints.join(job);
    let has_sums = || {
        std::fs::read_dir(&folder).into_iter().flatten().flatten().any(|entry| {
            std::fs::read_to_string(entry.path().join("_manifest.json"))
                .is_ok_and(|m| m.contains("\"sums\"") && m.contains("\"keyed\""))
        })
    };
    // The caller's `within` is the deadline of this wait.
    while !has_sums() {
        assert!(!handle.is_finished(), "the job ended before a checkpoint held its sums");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.cancel();
    handle.join().unwrap();
}

#[test]
fn restored_state_of_another_type_fails_the_job_instead_of_restarting_it() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().to_path_buf();
    let ck = checkpoints.clone();
    // A run that is cancelled with its rolling sums in a checkpoint.
    within(DEADLINE, "the first run", move || run_until_sums_are_checkpointed(&ck, "typed"));
    // The same uid now reduces lists of strings: its state type changed from u64.
    let error = within(DEADLINE, "the run with the changed type", move || {
        let env = StreamEnv::new();
        env.set_parallelism(1)
            .enable_checkpointing(Duration::from_millis(20), checkpoints.to_str().unwrap())
            .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 1000, delay: Duration::from_millis(1) });
        env.source(SequenceSource::new(0..2_000).with_rate_limit(4_000.0), Watermarks::none())
            .uid("numbers")
            .map(|v| vec![v.to_string(); 3])
            .key_by(|v| v.len() as u64)
            .reduce(|a, _| a)
            .uid("sums")
            .discard();
        env.execute("typed").map(|r| r.restarts).unwrap_err()
    });
    let text = error.to_string();
    assert!(text.contains("cannot read the restored state") && text.contains("new uid"), "{text}");
    assert!(matches!(error, JobError::Task { .. }), "{error:?}");
}

#[test]
fn a_source_given_a_keyed_operators_state_is_an_error_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().to_path_buf();
    within(DEADLINE, "the first run", move || run_until_sums_are_checkpointed(&ck, "uids"));
    let ck = dir.path().to_path_buf();
    let error = within(DEADLINE, "the run with the swapped uid", move || {
        let env = StreamEnv::new();
        env.set_parallelism(1)
            .enable_checkpointing(Duration::from_millis(20), ck.to_str().unwrap())
            .allow_non_restored_state()
            .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 1000, delay: Duration::from_millis(1) });
        // The source now has the uid that the keyed reduce had.
        env.source(SequenceSource::new(0..10), Watermarks::none()).uid("sums").discard();
        env.execute("uids").unwrap_err().to_string()
    });
    assert!(error.contains("keyed state under this source's id 'sums'") && error.contains("uid"), "{error}");
}

#[test]
fn late_records_dropped_are_counted_in_the_result_and_names_are_the_users() {
    let env = StreamEnv::new();
    env.set_parallelism(1).set_batch_size(1).set_watermark_interval(Duration::ZERO);
    // 5_000 and 6_000 arrive after the watermark passed 9_999 + 0 lateness: dropped.
    env.source(
        CollectionSource::new(vec![(0u8, 1u64, 12_000i64), (0, 1, 5_000), (0, 1, 6_000), (0, 1, 13_000)]),
        Watermarks::bounded(Duration::from_secs(2)).with_timestamps(|e: &(u8, u64, i64)| e.2),
    )
    .key_by(|e| e.0)
    .window(Tumbling::event_time(Duration::from_secs(10)))
    .reduce(|a, b| (a.0, a.1 + b.1, a.2))
    .discard();
    let result = env.execute("late").unwrap();
    assert_eq!(result.late_records_dropped, 2);

    assert_eq!(result.records_skipped, 0);
    assert_eq!(result.restarts, 0);

    let env = StreamEnv::new();
    env.set_parallelism(1);
    env.source(SequenceSource::new(0..10), Watermarks::none())
        .map(|v| if v == 3 { panic!("three") } else { v })
        .discard();
    let error = env.execute("names").unwrap_err().to_string();
    assert!(error.contains("operator 'map' (subtask 0 of 1) panicked: three"), "{error}");
}

/// A window's accumulator whose hand-written `Serialize` fails past a bound: only a
/// checkpoint encodes it, and it does so on the thread that encodes the copy taken at the
/// barrier, off the task's thread.
#[derive(Clone, serde::Deserialize)]
struct Unencodable(u64);

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            0..1_000 => serializer.serialize_u64(self.0),
            _ => Err(serde::ser::Error::custom("sums past 1000 are not for disk")),
        }
    }
}

#[test]
fn a_window_state_that_cannot_be_encoded_fails_the_job_at_once_naming_operator_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().to_str().unwrap().to_string();
    let error = within(DEADLINE, "the job with an unencodable state", move || {
        let env = StreamEnv::new();
        env.set_parallelism(1)
            .enable_checkpointing(Duration::from_millis(20), &checkpoints)
            .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 1000, delay: Duration::from_millis(1) });
        // Unbounded and one window for all time: only the failed encoding can end the job.
        env.source(SequenceSource::unbounded(0).with_rate_limit(20_000.0), Watermarks::none())
            .map(Unencodable)
            .key_by(|_| 0u8)
            .window(Tumbling::processing_time(Duration::from_secs(86_400)))
            .reduce(|a, b| Unencodable(a.0 + b.0))
            .name("sums")
            .discard();
        env.execute("unencodable").unwrap_err()
    });
    let text = error.to_string();
    assert!(matches!(error, JobError::Task { .. }), "{error:?}");
    assert!(text.contains("sums (subtask 0)"), "the error names the window operator: {text}");
    assert!(text.contains("Unencodable") && text.contains("cannot be encoded"), "and the type: {text}");
    // postcard keeps no custom message, only that the Serialize implementation failed.
    assert!(text.contains("its Serialize implementation fails"), "and what to fix: {text}");
}
