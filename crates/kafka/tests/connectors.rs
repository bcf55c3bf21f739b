//! The Kafka source's starting positions, topic patterns and partition discovery, and the
//! sink's partitioning and settings checks, against a real broker.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice::prelude::*;
use sluice::Execute;
use sluice_kafka::partition::partition_for_key;
use sluice_kafka::testing::{create_topic, produce, read_committed, wait_until, KafkaBroker, TestRecord};
use sluice_kafka::{codec, DeliveryGuarantee, KafkaSink, KafkaSource, OffsetReset, SinkPartitioning, StartingOffsets};
use std::collections::HashMap;
use std::time::Duration;

/// `n` records per partition, values "topic/partition/i", timestamps 1000 + i.
fn fill(b: &str, topic: &str, partitions: i32, n: i64) {
    create_topic(b, topic, partitions).unwrap();
    let records = (0..partitions).flat_map(|p| {
        (0..n).map(move |i| TestRecord {
            partition: Some(p),
            value: Some(format!("{topic}/{p}/{i}").into_bytes()),
            timestamp: Some(1000 + i),
            ..Default::default()
        })
    });
    produce(b, topic, records).unwrap();
}

/// Reads with a bounded source built by `configure` and returns the sorted values.
fn read_bounded(
    b: &str,
    configure: impl FnOnce(sluice_kafka::KafkaSourceBuilder<String>) -> sluice_kafka::KafkaSourceBuilder<String>,
) -> Vec<String> {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let builder = KafkaSource::builder().bootstrap_servers(b).bounded().deserializer(codec::text());
    let out = env.source(configure(builder).build().unwrap(), Watermarks::none()).collect();
    env.execute("read").unwrap();
    let mut v = out.values();
    v.sort();
    v
}

fn expected(topic: &str, partition: i32, from: i64, to: i64) -> Vec<String> {
    (from..to).map(|i| format!("{topic}/{partition}/{i}")).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn starting_offsets_patterns_and_partition_discovery() {
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let b = broker.bootstrap();
    fill(b, "t1", 2, 100);

    let all = sorted([expected("t1", 0, 0, 100), expected("t1", 1, 0, 100)].concat());
    assert_eq!(read_bounded(b, |s| s.topics(["t1"])), all);
    assert_eq!(read_bounded(b, |s| s.topics(["t1"]).starting_offsets(StartingOffsets::Latest)), Vec::<String>::new());
    let from_95 = sorted([expected("t1", 0, 95, 100), expected("t1", 1, 95, 100)].concat());
    assert_eq!(read_bounded(b, |s| s.topics(["t1"]).starting_offsets(StartingOffsets::Timestamp(1095))), from_95);
    let specific = HashMap::from([(("t1".to_string(), 0), 90)]);
    let want = sorted([expected("t1", 0, 90, 100), expected("t1", 1, 0, 100)].concat());
    assert_eq!(read_bounded(b, |s| s.topics(["t1"]).starting_offsets(StartingOffsets::Specific(specific))), want);

    // Committed offsets of a group: partition 0 at 50, partition 1 never committed.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", b).set("group.id", "g1").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("t1", 0, Offset::Offset(50)).unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    let want = sorted([expected("t1", 0, 50, 100), expected("t1", 1, 0, 100)].concat());
    let committed = StartingOffsets::Committed { reset: OffsetReset::Earliest };
    assert_eq!(read_bounded(b, |s| s.topics(["t1"]).group_id("g1").starting_offsets(committed)), want);

    // Offsets committed to the group at checkpoints, for lag monitors, reach the end.
    let env = StreamEnv::new();
    let dir = tempfile::tempdir().unwrap();
    env.enable_checkpointing(Duration::from_millis(100), dir.path().to_str().unwrap());
    let source = KafkaSource::builder()
        .bootstrap_servers(b)
        .topics(["t1"])
        .group_id("monitor")
        .commit_offsets_on_checkpoint(true)
        .deserializer(codec::text())
        .build()
        .unwrap();
    env.source(source, Watermarks::none()).discard();
    let job = env.execute_async("monitored").unwrap();
    let monitor: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", b).set("group.id", "monitor").create().unwrap();
    wait_until(Duration::from_secs(60), "the committed offsets reach the end", || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t1", 0);
        tpl.add_partition("t1", 1);
        let committed = monitor.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
        offsets == [Offset::Offset(100), Offset::Offset(100)]
    });
    job.cancel();
    job.join().unwrap();

    // A pattern reads the topics whose whole name matches.
    fill(b, "p-a", 1, 20);
    fill(b, "p-b", 3, 20);
    fill(b, "xp-c", 1, 20);
    let want = sorted(
        [expected("p-a", 0, 0, 20), expected("p-b", 0, 0, 20), expected("p-b", 1, 0, 20), expected("p-b", 2, 0, 20)]
            .concat(),
    );
    assert_eq!(read_bounded(b, |s| s.topic_pattern("p-.*")), want);

    // An unbounded job picks up a topic created while it runs.
    fill(b, "d-1", 2, 10);
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let source = KafkaSource::builder()
        .bootstrap_servers(b)
        .topic_pattern("d-[0-9]+")
        .partition_discovery_interval(Duration::from_millis(200))
        .deserializer(codec::text())
        .build()
        .unwrap();
    let out = env.source(source, Watermarks::none()).collect();
    let job = env.execute_async("discovery").unwrap();
    let wait_for =
        |n: usize| wait_until(Duration::from_secs(60), &format!("{n} records read"), || out.values().len() >= n);
    wait_for(20);
    fill(b, "d-2", 3, 10);
    wait_for(50);
    job.cancel();
    job.join().unwrap();
    let want = sorted(
        [expected("d-1", 0, 0, 10), expected("d-1", 1, 0, 10)]
            .into_iter()
            .chain((0..3).map(|p| expected("d-2", p, 0, 10)))
            .flatten()
            .collect(),
    );
    assert_eq!(sorted(out.values()), want);
}

fn keyed_sink(b: &str, topic: &str, partitioning: SinkPartitioning) -> KafkaSink<String> {
    KafkaSink::builder()
        .bootstrap_servers(b)
        .topic(topic)
        .serializer(codec::keyed(|s: &String| s.as_bytes().to_vec(), codec::text_value()))
        .partitioning(partitioning)
        .build()
        .unwrap()
}

#[test]
fn the_sink_partitions_like_kafka_and_rejects_settings_that_cannot_work() {
    let broker = KafkaBroker::start().expect("a Kafka broker");
    let b = broker.bootstrap();
    let keys: Vec<String> = (0..500).map(|i| format!("key-{i}")).collect();
    for topic in ["by-key", "java-like", "fixed", "round-robin"] {
        create_topic(b, topic, 5).unwrap();
    }
    for (topic, partitioning) in [
        ("by-key", SinkPartitioning::ByKey),
        ("fixed", SinkPartitioning::Fixed(2)),
        ("round-robin", SinkPartitioning::RoundRobin),
    ] {
        let env = StreamEnv::new();
        env.set_parallelism(2);
        env.from_collection(keys.clone()).sink(keyed_sink(b, topic, partitioning));
        env.execute(topic).unwrap();
    }
    // librdkafka's Java-compatible partitioner places the same keys.
    produce(
        b,
        "java-like",
        keys.iter().map(|k| TestRecord {
            key: Some(k.clone().into_bytes()),
            value: Some(vec![1]),
            ..Default::default()
        }),
    )
    .unwrap();
    let placement = |topic: &str| -> HashMap<Vec<u8>, i32> {
        read_committed(b, topic, Duration::from_secs(60))
            .unwrap()
            .into_iter()
            .map(|r| (r.key.unwrap(), r.partition))
            .collect()
    };
    let by_key = placement("by-key");
    assert_eq!(by_key.len(), keys.len());
    assert_eq!(by_key, placement("java-like"));
    for (key, partition) in &by_key {
        assert_eq!(*partition, partition_for_key(key, 5));
    }
    assert!(placement("fixed").values().all(|p| *p == 2));
    let mut spread = [0; 5];
    for p in placement("round-robin").values() {
        spread[*p as usize] += 1;
    }
    assert_eq!(spread, [100; 5], "round-robin spreads evenly");

    // Settings that cannot work are refused before the job runs, naming the fix.
    let refused = |sink: KafkaSink<String>, checkpoints: bool| -> String {
        let env = StreamEnv::new();
        let dir = tempfile::tempdir().unwrap();
        if checkpoints {
            env.enable_checkpointing(Duration::from_secs(1), dir.path().to_str().unwrap());
        }
        env.from_collection(vec!["x".to_string()]).sink(sink);
        env.execute("refused").unwrap_err().to_string()
    };
    let exactly_once = |timeout: Duration| {
        KafkaSink::builder()
            .bootstrap_servers(b)
            .topic("by-key")
            .serializer(codec::text_value())
            .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
            .transactional_id_prefix("refused")
            .transaction_timeout(timeout)
            .build()
            .unwrap()
    };
    let e = refused(exactly_once(Duration::from_secs(60)), false);
    assert!(e.contains("enable exactly-once checkpointing"), "{e}");
    let e = refused(exactly_once(Duration::from_millis(1500)), true);
    assert!(e.contains("too short") && e.contains("at least 2s"), "{e}");
    let e = refused(exactly_once(Duration::from_secs(7200)), true);
    assert!(e.contains("transaction.max.timeout.ms (900000 ms)"), "{e}");
    let e = refused(keyed_sink(b, "no-such-topic", SinkPartitioning::ByKey), false);
    assert!(e.contains("'no-such-topic' does not exist"), "{e}");
    let e = refused(keyed_sink(b, "by-key", SinkPartitioning::Fixed(7)), false);
    assert!(e.contains("fixed partition 7 does not exist"), "{e}");

    // A source on a topic that does not exist, and clients of an address where no broker
    // listens, fail before the job starts: the latter within the connect timeout.
    let source_error = |servers: &str, topic: &str| -> String {
        let source = sluice_kafka::KafkaSource::builder()
            .bootstrap_servers(servers)
            .topics([topic])
            .bounded()
            .connect_timeout(Duration::from_secs(2))
            .deserializer(codec::text())
            .build()
            .unwrap();
        let env = StreamEnv::new();
        env.set_restart_strategy(RestartStrategy::FixedDelay { attempts: 1000, delay: Duration::from_millis(1) });
        env.source(source, Watermarks::none()).discard();
        env.execute("refused source").unwrap_err().to_string()
    };
    let e = source_error(b, "no-such-input");
    assert!(e.contains("Kafka topic 'no-such-input' does not exist"), "{e}");
    let nobody = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let e = source_error(&nobody, "by-key");
    assert!(e.contains(&format!("cannot reach Kafka at {nobody} within 2s")), "{e}");
    let sink = KafkaSink::builder()
        .bootstrap_servers(&nobody)
        .topic("by-key")
        .serializer(codec::text_value())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let e = refused(sink, false);
    assert!(e.contains(&format!("cannot reach Kafka at {nobody}")), "{e}");
    let e = KafkaSink::builder::<String>()
        .bootstrap_servers(b)
        .topic("by-key")
        .serializer(codec::text_value())
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("transactional_id_prefix"), "{e}");
}
