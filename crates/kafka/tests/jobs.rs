//! Jobs over a real Kafka broker: per-partition watermarks with out-of-order timestamps
//! across partitions, and each policy for messages that cannot be decoded.

use serde::{Deserialize, Serialize};
use sluice::prelude::*;
use sluice_kafka::testing::{create_topic, produce, read_committed, KafkaBroker, TestRecord};
use sluice_kafka::{codec, DecodeErrorPolicy, KafkaSource};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn seed() -> u64 {
    std::env::var("SLUICE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

/// xorshift, seeded.
fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move |below| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    }
}

#[test]
fn per_partition_watermarks_give_the_reference_windows() {
    let seed = seed();
    let mut random = rng(seed);
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let b = broker.bootstrap();
    create_topic(b, "clicks", 3).unwrap();
    // Each partition is in timestamp order, but the partitions cover the same hour at very
    // different offsets: one subtask reads several partitions, each in one fetch, so a
    // single watermark per subtask would run ahead and drop the slower partitions' records.
    let mut records = Vec::new();
    let mut want: HashMap<(String, i64), u64> = HashMap::new();
    for partition in 0..3 {
        let mut t = 1_700_000_000_000i64 + random(1000) as i64;
        for _ in 0..4000 {
            t += random(900) as i64;
            let user = format!("u{}", random(7));
            *want.entry((user.clone(), t - t.rem_euclid(10_000))).or_default() += 1;
            records.push(TestRecord {
                partition: Some(partition),
                key: Some(user.clone().into_bytes()),
                value: Some(user.into_bytes()),
                timestamp: Some(t),
                ..Default::default()
            });
        }
    }
    produce(b, "clicks", records).unwrap();

    let env = StreamEnv::new();
    env.set_parallelism(2);
    let source = KafkaSource::builder()
        .bootstrap_servers(b)
        .topics(["clicks"])
        .bounded()
        .deserializer(codec::text())
        .build()
        .unwrap();
    let late = OutputTag::<String>::new("late");
    let counts = env
        .source(source, Watermarks::monotonic())
        .key_by(|user: &String| user.clone())
        .window(Tumbling::event_time(Duration::from_secs(10)))
        .side_output_late_data(&late)
        .aggregate_with(Count, |user, w, n| (user.clone(), w.start, n));
    let late = counts.side_output(&late).collect();
    let counts = counts.collect();
    env.execute("per-partition watermarks").unwrap();
    assert_eq!(late.values().len(), 0, "seed {seed}: records were late");
    let got: HashMap<(String, i64), u64> = counts.values().into_iter().map(|(u, w, n)| ((u, w), n)).collect();
    assert_eq!(got, want, "seed {seed}");
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Event {
    id: u64,
    user: String,
}

/// A topic of valid JSON events with malformed messages among them; returns both.
fn mixed_topic(b: &str, topic: &str, seed: u64) -> (Vec<Event>, Vec<TestRecord>) {
    let mut random = rng(seed);
    create_topic(b, topic, 2).unwrap();
    let (mut good, mut bad, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for id in 0..3000u64 {
        let record = if random(10) == 0 {
            let value: Vec<u8> = match random(3) {
                0 => b"{\"id\": 12, \"user\": ".to_vec(),
                1 => (0..random(20) + 1).map(|_| random(256) as u8).collect(),
                _ => format!("{{\"id\": \"not a number {id}\"}}").into_bytes(),
            };
            let r = TestRecord {
                partition: Some(random(2) as i32),
                key: Some(format!("key{id}").into_bytes()),
                value: Some(value),
                headers: vec![("origin".into(), vec![0, 159, 146, 150])],
                ..Default::default()
            };
            bad.push(r.clone());
            r
        } else {
            let event = Event { id, user: format!("u{}", random(9)) };
            good.push(event.clone());
            TestRecord {
                partition: Some(random(2) as i32),
                value: Some(serde_json::to_vec(&event).unwrap()),
                ..Default::default()
            }
        };
        all.push(record);
    }
    produce(b, topic, all).unwrap();
    (good, bad)
}

fn json_source(b: &str, topic: &str, policy: DecodeErrorPolicy) -> KafkaSource<Event> {
    KafkaSource::builder()
        .bootstrap_servers(b)
        .topics([topic])
        .bounded()
        .deserializer(codec::json::<Event>())
        .on_decode_error(policy)
        .build()
        .unwrap()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn each_decode_error_policy_does_what_it_says() {
    let seed = seed();
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let b = broker.bootstrap();
    let (good, bad) = mixed_topic(b, "mixed", seed);
    assert!(bad.len() > 100, "the input has malformed messages");

    // Fail: the job fails and says where and what.
    let env = StreamEnv::new();
    env.set_restart_strategy(RestartStrategy::None);
    env.source(json_source(b, "mixed", DecodeErrorPolicy::Fail), Watermarks::none()).discard();
    let error = env.execute("fail").unwrap_err().to_string();
    assert!(error.contains("mixed/") && error.contains("offset") && error.contains("could not be decoded"), "{error}");

    // Skip: the good records go through, the bad ones are counted.
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let source = json_source(b, "mixed", DecodeErrorPolicy::Skip);
    let skipped = source.skipped();
    let out = env.source(source, Watermarks::none()).collect();
    env.execute("skip").unwrap();
    let by_id = |v: Vec<Event>| sorted(v.into_iter().map(|e| (e.id, e.user)).collect::<Vec<_>>());
    assert_eq!(by_id(out.values()), by_id(good.clone()), "seed {seed}");
    assert_eq!(skipped.load(Ordering::Relaxed), bad.len() as u64);

    // Dead letters: the bad messages land in the dead-letter topic byte for byte.
    create_topic(b, "mixed-dlq", 1).unwrap();
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let out = env
        .source(json_source(b, "mixed", DecodeErrorPolicy::DeadLetter("mixed-dlq".into())), Watermarks::none())
        .collect();
    env.execute("dead letters").unwrap();
    assert_eq!(by_id(out.values()), by_id(good), "seed {seed}");
    let letters = read_committed(b, "mixed-dlq", Duration::from_secs(60)).unwrap();
    let as_sent = |key: &Option<Vec<u8>>, value: &Option<Vec<u8>>, headers: &[(String, Vec<u8>)]| {
        let original: Vec<(String, Vec<u8>)> =
            headers.iter().filter(|(k, _)| !k.starts_with("sluice.")).cloned().collect();
        (key.clone(), value.clone(), original)
    };
    let got = sorted(letters.iter().map(|l| as_sent(&l.key, &l.value, &l.headers)).collect::<Vec<_>>());
    let want = sorted(bad.iter().map(|r| as_sent(&r.key, &r.value, &r.headers)).collect::<Vec<_>>());
    assert_eq!(got, want, "seed {seed}");
    for letter in &letters {
        let header = |name: &str| {
            letter.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("sluice.topic").as_deref(), Some("mixed"));
        assert!(header("sluice.offset").is_some_and(|o| o.parse::<i64>().is_ok()));
        assert!(header("sluice.error").is_some_and(|e| !e.is_empty()));
    }
}

/// A job from `source` through a map that panics once after `fail_at` records (when set)
/// to a Kafka sink with `guarantee`, checkpointed every 50 ms; returns its result.
fn checkpointed_copy(
    b: &str,
    source: KafkaSource<Event>,
    output: &str,
    guarantee: sluice_kafka::DeliveryGuarantee,
    fail_at: Option<u64>,
    checkpoints: &std::path::Path,
    configure: impl FnOnce(&StreamEnv),
) -> sluice::JobResult {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    let env = StreamEnv::new();
    env.set_parallelism(2)
        .enable_checkpointing(Duration::from_millis(50), checkpoints.to_str().unwrap())
        .set_restart_strategy(RestartStrategy::FixedDelay { attempts: 3, delay: Duration::from_millis(50) });
    configure(&env);
    let seen = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = sluice_kafka::KafkaSink::builder()
        .bootstrap_servers(b)
        .topic(output)
        .serializer(codec::json_value())
        .delivery_guarantee(guarantee)
        .transactional_id_prefix(&format!("{output}-tx"))
        .transaction_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    env.source(source, Watermarks::none())
        .uid("events")
        .map(move |e: Event| {
            // Slow enough (about 1.5 s in all) that several checkpoints complete before
            // the failure and before the end.
            if seen.fetch_add(1, Ordering::SeqCst).is_multiple_of(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if fail_at.is_some_and(|at| seen.load(Ordering::SeqCst) == at) && !failed.swap(true, Ordering::SeqCst) {
                panic!("injected failure after {at} records", at = fail_at.unwrap());
            }
            e
        })
        .uid("pass")
        .sink(sink)
        .uid("out");
    env.execute(output).unwrap()
}

fn events_in(b: &str, topic: &str) -> Vec<(u64, String)> {
    let records = read_committed(b, topic, Duration::from_secs(60)).unwrap();
    sorted(
        records
            .iter()
            .map(|r| serde_json::from_slice::<Event>(r.value.as_deref().unwrap()).unwrap())
            .map(|e| (e.id, e.user))
            .collect(),
    )
}

#[test]
fn decode_policies_and_sinks_keep_their_guarantees_across_failures_and_checkpoints() {
    use sluice_kafka::DeliveryGuarantee::{AtLeastOnce, ExactlyOnce};
    let seed = seed();
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let b = broker.bootstrap();
    let (good, bad) = mixed_topic(b, "mixed", seed);
    let want = sorted(good.iter().map(|e| (e.id, e.user.clone())).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();

    // Skip, then a restart: exactly the good records, once, in the exactly-once output;
    // the skipped ones are counted in the result (over both attempts).
    create_topic(b, "skipped-out", 2).unwrap();
    let result = checkpointed_copy(
        b,
        json_source(b, "mixed", DecodeErrorPolicy::Skip),
        "skipped-out",
        ExactlyOnce,
        Some(1500),
        &dir.path().join("skip"),
        |_| {},
    );
    assert_eq!(result.restarts, 1, "seed {seed}");
    assert!(result.restored_from.is_some(), "seed {seed}: the restart restored a checkpoint");
    assert!(result.records_skipped >= bad.len() as u64, "seed {seed}: {} skipped", result.records_skipped);
    assert_eq!(events_in(b, "skipped-out"), want, "seed {seed}");

    // Dead letters with checkpoints and a restart: every bad message reaches the
    // dead-letter topic (at least once: they are written outside the sink's transactions).
    create_topic(b, "dlq", 1).unwrap();
    create_topic(b, "dlq-out", 2).unwrap();
    checkpointed_copy(
        b,
        json_source(b, "mixed", DecodeErrorPolicy::DeadLetter("dlq".into())),
        "dlq-out",
        ExactlyOnce,
        Some(2000),
        &dir.path().join("dlq"),
        |_| {},
    );
    assert_eq!(events_in(b, "dlq-out"), want, "seed {seed}");
    let letters = read_committed(b, "dlq", Duration::from_secs(60)).unwrap();
    let letter_values: std::collections::HashSet<Option<Vec<u8>>> = letters.iter().map(|l| l.value.clone()).collect();
    assert!(bad.iter().all(|r| letter_values.contains(&r.value)), "seed {seed}: a dead letter is missing");
    assert!(letters.len() >= bad.len());

    // The at-least-once sink under a failure: nothing lost, duplicates allowed.
    create_topic(b, "alo-out", 2).unwrap();
    checkpointed_copy(
        b,
        json_source(b, "mixed", DecodeErrorPolicy::Skip),
        "alo-out",
        AtLeastOnce,
        Some(1000),
        &dir.path().join("alo"),
        |_| {},
    );
    let got = events_in(b, "alo-out");
    let distinct: std::collections::BTreeSet<(u64, String)> = got.iter().cloned().collect();
    assert_eq!(distinct.into_iter().collect::<Vec<_>>(), want, "seed {seed}: every record at least once");

    // Tolerated checkpoint failures: the transactions they pre-committed are committed
    // with the next checkpoint, so the exactly-once output is still exact.
    create_topic(b, "carried-out", 2).unwrap();
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = failed.clone();
    let result = checkpointed_copy(
        b,
        json_source(b, "mixed", DecodeErrorPolicy::Skip),
        "carried-out",
        ExactlyOnce,
        None,
        &dir.path().join("carried"),
        move |env| {
            env.set_tolerable_checkpoint_failures(2).set_failpoint(std::sync::Arc::new(move |point: &str, id: u64| {
                if point == "upload" && (id == 2 || id == 3) {
                    count.fetch_add(1, Ordering::SeqCst);
                    return Err(format!("injected upload failure at checkpoint {id}"));
                }
                Ok(())
            }));
        },
    );
    assert_eq!(failed.load(Ordering::SeqCst), 2, "seed {seed}: two checkpoints failed");
    assert_eq!(result.restarts, 0, "seed {seed}: tolerated");
    assert_eq!(events_in(b, "carried-out"), want, "seed {seed}");
}
