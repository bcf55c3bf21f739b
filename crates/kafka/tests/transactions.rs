//! The exactly-once sink's transactions against a real broker, driven directly through the
//! `Sink` interface: a transaction pre-committed by a process that then died is committed
//! by a new one (through the resumed-transaction requests), or aborted when it belongs to
//! no completed checkpoint; either way nothing is left to block `read_committed` readers,
//! and the old incarnation, if it still runs, is fenced.

use sluice::prelude::*;
use sluice::Execute;
use sluice_dataflow::Sink;
use sluice_kafka::testing::{
    blocked_partitions, create_topic, open_transactions, read_committed, wait_until, KafkaBroker,
};
use sluice_kafka::{codec, DeliveryGuarantee, KafkaSink, KafkaSource};
use sluice_types::Record;
use std::time::Duration;

fn sink(bootstrap: &str, topic: &str, prefix: &str) -> KafkaSink<String> {
    KafkaSink::builder()
        .bootstrap_servers(bootstrap)
        .topic(topic)
        .serializer(codec::keyed(|s: &String| s.as_bytes().to_vec(), codec::text_value()))
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(prefix)
        .transaction_timeout(Duration::from_secs(60))
        .build()
        .expect("valid settings")
}

fn batch(from: u32, n: u32) -> Vec<Record<String>> {
    (from..from + n).map(|i| Record { time: 1_000 + i64::from(i), value: format!("v{i}") }).collect()
}

fn values(bootstrap: &str, topic: &str) -> Vec<String> {
    let mut v: Vec<String> = read_committed(bootstrap, topic, Duration::from_secs(60))
        .expect("read")
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap_or_default()).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_dead_processs_transactions_are_committed_or_aborted_by_the_next() {
    let broker = KafkaBroker::start().expect("broker");
    let b = broker.bootstrap();
    create_topic(b, "out", 3).unwrap();

    // "Process" 1 writes two checkpoints' worth and is lost after pre-committing both: the
    // first belongs to a completed checkpoint, the second to one that never completed.
    let first = sink(b, "out", "job");
    let mut writer = first.create_writer(0, 1).unwrap();
    writer.write_batch(batch(0, 50)).unwrap();
    let completed = writer.pre_commit(Some(1)).unwrap().expect("a transaction with records");
    writer.write_batch(batch(50, 30)).unwrap();
    let never_completed = writer.pre_commit(Some(2)).unwrap().expect("a second transaction");
    writer.write_batch(batch(80, 5)).unwrap();
    assert_ne!(completed, never_completed);
    assert!(!blocked_partitions(b, "out").unwrap().is_empty(), "open transactions hold readers back");
    assert_eq!(open_transactions(b, "job-").unwrap().len(), 3);
    // Nothing of it is visible yet.
    assert!(values(b, "out").is_empty());
    // The process is taken for dead but lives on as a zombie, its producers untouched.
    let mut zombie = writer;

    // "Process" 2 restores checkpoint 1: recover aborts everything but its transaction,
    // then the runtime commits it (twice, as after a second restart: idempotent).
    let second = sink(b, "out", "job");
    second.recover(std::slice::from_ref(&completed)).unwrap();
    second.commit(&completed).unwrap();
    second.commit(&completed).unwrap();
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..50).map(|i| format!("v{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(values(b, "out"), expected);
    assert!(open_transactions(b, "job-").unwrap().is_empty());
    assert!(blocked_partitions(b, "out").unwrap().is_empty());

    // The zombie was fenced: what it writes now cannot be pre-committed, let alone seen.
    let _ = zombie.write_batch(batch(900, 10));
    assert!(zombie.pre_commit(Some(3)).is_err(), "a fenced writer cannot pre-commit");
    assert!(first.commit(&never_completed).is_err(), "a fenced producer cannot commit");
    assert_eq!(values(b, "out"), expected);
    drop(zombie);
    drop(first);

    // A stale committable (its transaction aborted, its id initialised again) commits nothing.
    second.commit(&never_completed).unwrap();
    assert_eq!(values(b, "out"), expected);

    // The same process goes on: write, pre-commit, commit in process.
    let mut writer = second.create_writer(0, 1).unwrap();
    writer.write_batch(batch(100, 10)).unwrap();
    let c = writer.pre_commit(Some(3)).unwrap().unwrap();
    second.commit(&c).unwrap();
    assert_eq!(values(b, "out").len(), 60);
    drop(writer);

    // A bounded Sluice source reads this transactional topic to its end: past the aborted
    // records and the commit markers, which no consumer ever receives.
    let env = StreamEnv::new();
    let source = KafkaSource::builder()
        .bootstrap_servers(b)
        .topics(["out"])
        .bounded()
        .deserializer(codec::text())
        .build()
        .unwrap();
    let read_back = env.source(source, Watermarks::none()).collect();
    let job = env.execute_async("read back").unwrap();
    wait_until(Duration::from_secs(60), "the bounded read ends", || job.is_finished());
    job.join().unwrap();
    let mut got = read_back.values();
    got.sort();
    assert_eq!(got, values(b, "out"));
}
