//! The runtime's behaviour around the records: failures name their operator, bad
//! graphs are rejected before anything runs, backpressure bounds memory, idle inputs do
//! not hold back the watermark, cancellation ends an unbounded job, and the file and
//! socket connectors carry every line. Every wait has a deadline.

use sluice::dataflow::Poll;
use sluice::prelude::*;
use sluice::JobError;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `condition` until it holds or `deadline` passes.
fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

#[test]
fn a_panic_in_a_user_function_fails_the_job_naming_operator_and_subtask() {
    let env = StreamEnv::new();
    env.set_parallelism(3);
    env.source(SequenceSource::new(0..100_000), Watermarks::none())
        .map(|v| if v == 77_777 { panic!("bad record {v}") } else { v })
        .name("parse")
        .discard();
    let error = env.execute("panics").unwrap_err().to_string();
    // 77_777 is read by source subtask 77_777 % 3 = 2, chained with map subtask 2.
    assert!(error.contains("operator 'parse' (subtask 2 of 3) panicked: bad record 77777"), "{error}");
    assert!(error.contains("job 'panics' failed"), "{error}");
}

#[test]
fn a_panic_after_an_exchange_is_reported_and_the_job_stops() {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.source(SequenceSource::unbounded(0), Watermarks::none())
        .key_by(|v| v % 10)
        .reduce(|a, b| if b > 50_000 { panic!("reduce overflow") } else { a + b })
        .discard();
    let error = env.execute("keyed panic").unwrap_err().to_string();
    assert!(error.contains("reduce overflow") && error.contains("of 2"), "{error}");
}

/// Builds a job into an environment.
type BuildJob = Box<dyn Fn(&StreamEnv)>;

#[test]
fn invalid_graphs_are_rejected_with_a_message_that_names_the_fix() {
    let cases: Vec<(&str, BuildJob)> = vec![
        (
            "no sink",
            Box::new(|env| {
                env.from_collection(vec![1u64]).map(|v| v);
            }),
        ),
        (
            "own uid",
            Box::new(|env| {
                let s = env.from_collection(vec![1u64]);
                s.map(|v| v).uid("x").discard();
                s.map(|v| v).uid("x").discard();
            }),
        ),
        (
            "at least 1",
            Box::new(|env| {
                env.from_collection(vec![1u64]).map(|v| v).parallelism(0).discard();
            }),
        ),
        (
            ".parallelism(1)",
            Box::new(|env| {
                env.source(SocketTextSource::new("127.0.0.1", 9), Watermarks::none()).parallelism(2).discard();
            }),
        ),
        (
            "size of at least 1 ms",
            Box::new(|env| {
                env.from_collection(vec![1u64])
                    .key_by(|v| *v)
                    .window(Tumbling::event_time(Duration::ZERO))
                    .aggregate(Count)
                    .discard();
            }),
        ),
        (
            "swap them",
            Box::new(|env| {
                let a = env.from_collection(vec![1u64]).key_by(|v| *v);
                a.interval_join(&a).between(10, -10).process(|x, y| x + y).discard();
            }),
        ),
        (
            "raise the max parallelism",
            Box::new(|env| {
                env.set_max_parallelism(4);
                env.from_collection(vec![1u64]).key_by(|v| *v).reduce(|a, _| a).parallelism(8).discard();
            }),
        ),
    ];
    for (fix, build) in cases {
        let env = StreamEnv::new();
        build(&env);
        match env.execute("invalid") {
            Err(JobError::Graph(e)) => {
                assert!(e.to_string().contains(fix), "expected '{fix}' in: {e}")
            }
            other => panic!("expected a graph error naming '{fix}', got {other:?}"),
        }
    }
}

/// A sink that takes 2 ms per batch and counts what it consumed.
struct SlowSink(Arc<AtomicU64>);

impl Sink<u64> for SlowSink {
    fn name(&self) -> String {
        "slow".into()
    }
    fn create_writer(&self, _: usize, _: usize) -> std::io::Result<Box<dyn SinkWriter<u64>>> {
        Ok(Box::new(SlowWriter(self.0.clone())))
    }
}

struct SlowWriter(Arc<AtomicU64>);

impl SinkWriter<u64> for SlowWriter {
    fn write_batch(&mut self, batch: Vec<Record<u64>>) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_millis(2));
        self.0.fetch_add(batch.len() as u64, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_slow_sink_slows_the_source_instead_of_growing_memory() {
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let env = StreamEnv::new();
    env.set_parallelism(1).set_batch_size(100).set_channel_capacity(4);
    let counter = produced.clone();
    env.source(
        GeneratorSource::unbounded_from(0, move |i: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
            i
        }),
        Watermarks::none(),
    )
    .map(|v| v + 1)
    .disable_chaining()
    .sink(SlowSink(consumed.clone()));
    let job = env.execute_async("backpressure").unwrap();
    assert!(wait_until(Duration::from_secs(20), || consumed.load(Ordering::SeqCst) >= 20_000));
    // In flight at most: two inboxes of 4 batches, a batch in each task, the batch being
    // generated. An unbounded source without backpressure would be millions ahead.
    let ahead = produced.load(Ordering::SeqCst) - consumed.load(Ordering::SeqCst);
    assert!(ahead <= 1_500, "{ahead} records in flight");
    job.cancel();
    let result = job.join().unwrap();
    assert!(result.cancelled);
}

/// Subtask 0 emits timestamps 0..3000 then waits forever; subtask 1 never emits.
struct HalfIdle;

impl Source<i64> for HalfIdle {
    fn name(&self) -> String {
        "half-idle".into()
    }
    fn create_reader(&self, index: usize, _: usize) -> std::io::Result<Box<dyn SourceReader<i64>>> {
        Ok(Box::new(HalfIdleReader { next: if index == 0 { 0 } else { 3000 } }))
    }
}

struct HalfIdleReader {
    next: i64,
}

impl SourceReader<i64> for HalfIdleReader {
    fn poll(&mut self, out: &mut Vec<Record<i64>>, max: usize) -> std::io::Result<Poll> {
        if self.next >= 3000 {
            return Ok(Poll::Pending(Duration::from_millis(10)));
        }
        let end = (self.next + max as i64).min(3000);
        out.extend((self.next..end).map(|t| Record::new(t, t)));
        self.next = end;
        Ok(Poll::Ready)
    }
}

#[test]
fn an_idle_source_subtask_does_not_hold_back_the_watermark() {
    let env = StreamEnv::new();
    env.set_parallelism(2).set_watermark_interval(Duration::from_millis(10));
    let windows = env
        .source(
            HalfIdle,
            Watermarks::monotonic().with_timestamps(|t: &i64| *t).with_idleness(Duration::from_millis(100)),
        )
        .key_by(|t| t % 2)
        .window(Tumbling::event_time(Duration::from_secs(1)))
        .aggregate_with(Count, |k, w, n| (*k, w.start, n))
        .collect();
    let job = env.execute_async("idle").unwrap();
    // Windows [0,1000) and [1000,2000) can only fire if subtask 1 stops counting.
    assert!(wait_until(Duration::from_secs(20), || windows.values().len() >= 4), "{:?}", windows.values());
    job.cancel();
    job.join().unwrap();
    let mut got = windows.values();
    got.sort();
    assert_eq!(&got[..4], &[(0, 0, 500), (0, 1000, 500), (1, 0, 500), (1, 1000, 500)]);
}

#[test]
fn cancelling_an_unbounded_job_drains_and_returns() {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let out =
        env.source(SequenceSource::unbounded(0).with_rate_limit(50_000.0), Watermarks::none()).map(|v| v).collect();
    let job = env.execute_async("forever").unwrap();
    assert!(wait_until(Duration::from_secs(20), || out.values().len() > 1000));
    job.cancel();
    let result = job.join().unwrap();
    assert!(result.cancelled);
    let values = out.values();
    // Each source subtask emits a gap-free prefix of its stride: nothing lost on the way.
    for s in 0..2u64 {
        let mine: Vec<u64> = values.iter().copied().filter(|v| v % 2 == s).collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(sorted, (0..mine.len() as u64).map(|k| k * 2 + s).collect::<Vec<_>>());
    }
}

#[test]
fn text_files_are_read_split_and_written_line_for_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut want = Vec::new();
    for file in 0..3 {
        let mut f = std::fs::File::create(input.join(format!("f{file}.txt"))).unwrap();
        for line in 0..4000 {
            let text = format!("file {file} line {line} {}", "x".repeat(line % 13));
            writeln!(f, "{text}").unwrap();
            want.push(text.to_uppercase());
        }
    }
    let output = dir.path().join("out");
    let env = StreamEnv::new();
    env.set_parallelism(3);
    env.source(TextFileSource::new(&input).with_min_split_bytes(10_000), Watermarks::none())
        .map(|line| line.to_uppercase())
        .write_as_text(&output);
    env.execute("files").unwrap();
    let mut got = Vec::new();
    for part in std::fs::read_dir(&output).unwrap() {
        got.extend(std::fs::read_to_string(part.unwrap().path()).unwrap().lines().map(str::to_string));
    }
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(std::fs::read_dir(&output).unwrap().count(), 3, "a part file per sink subtask");
}

#[test]
fn the_socket_source_reads_every_line_until_the_server_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        for i in 0..5000 {
            // Lines split across writes, to exercise partial reads.
            write!(conn, "word{} ", i % 10).unwrap();
            if i % 7 == 0 {
                conn.flush().unwrap();
            }
            writeln!(conn, "n{i}").unwrap();
        }
    });
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let words = env
        .socket_text_stream("127.0.0.1", port)
        .flat_map(|line| line.split(' ').map(str::to_string).collect::<Vec<_>>())
        .key_by(|w| w.clone())
        .aggregate(Count)
        .collect();
    env.execute("socket").unwrap();
    server.join().unwrap();
    let values = words.values();
    assert_eq!(values.len(), 10_000);
    assert_eq!(values.iter().filter(|&&n| n == 500).count(), 10, "each word0..9 reaches 500");
}

#[test]
fn a_socket_that_cannot_be_reached_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = StreamEnv::new();
    env.socket_text_stream("127.0.0.1", port).discard();
    let error = env.execute("no server").unwrap_err().to_string();
    assert!(error.contains("is the server listening?"), "{error}");
}
