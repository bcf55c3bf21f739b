//! A real Apache Kafka broker for tests and benchmarks, and the small admin helpers they
//! need (create topics, write records, read what `read_committed` consumers see).
//!
//! [`KafkaBroker::start`] runs a single-node KRaft broker (Kafka 4.x from Maven Central,
//! fetched by `scripts/kafka.sh install`) on free loopback ports in a fresh folder, and kills
//! it when dropped, also when a test fails.

use crate::{block_on_timeout, protocol};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Polls `done` until it holds; panics naming `what` if it does not within `timeout` (a
/// deadline against hangs, not a timing expectation).
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where `scripts/kafka.sh install` puts the broker's jars, unless `SLUICE_KAFKA_LIBS` says.
pub fn kafka_libs() -> PathBuf {
    std::env::var_os("SLUICE_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/kafka/libs"))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A Kafka broker process owned by a test: killed and its folder removed on drop.
pub struct KafkaBroker {
    child: Child,
    /// Kills the broker if this process dies without dropping it (a test runner killed by
    /// a timeout): Drop does not run then, and the JVM would outlive the test.
    watchdog: Option<Child>,
    bootstrap: String,
    dir: PathBuf,
}

impl KafkaBroker {
    /// Starts a broker and waits (at most 90 s) until it answers metadata requests. A broker
    /// that exits while starting (a port taken between choosing it and binding it) is
    /// started again on other ports, up to three times.
    pub fn start() -> io::Result<KafkaBroker> {
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Err(e) if attempt < 3 && e.kind() != io::ErrorKind::NotFound => {
                    eprintln!("the Kafka broker did not start ({e}); trying again on other ports");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once() -> io::Result<KafkaBroker> {
        let libs = kafka_libs();
        if !libs.join(".complete").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no Kafka jars in {}; run `bash scripts/kafka.sh install` first", libs.display()),
            ));
        }
        let (port, controller) = (free_port()?, free_port()?);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("sluice-kafka-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs"))?;
        let props = dir.join("server.properties");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\ncontroller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\nlog.dirs={}\n\
                 num.partitions=1\noffsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n\
                 transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
                 transaction.state.log.num.partitions=4\ngroup.initial.rebalance.delay.ms=0\n\
                 transaction.abort.timed.out.transaction.cleanup.interval.ms=2000\n",
                dir.join("logs").display()
            ),
        )?;
        // A cluster id is 16 random bytes in URL-safe base64 without padding.
        let seed = nanos ^ (u128::from(std::process::id()) << 64) ^ u128::from(port) << 100;
        let bits = seed.wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15).rotate_left(17);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        // 128 bits are 21 whole sextets and 2 bits, which the last character carries in
        // its high bits.
        let cluster: String = (0..22)
            .map(|i| {
                let sextet = if i < 21 { (bits >> (122 - 6 * i)) & 63 } else { (bits & 3) << 4 };
                alphabet[sextet as usize] as char
            })
            .collect();
        let classpath = format!("{}/*", libs.display());
        let format = Command::new("java")
            .args(["-cp", &classpath, "kafka.tools.StorageTool", "format", &format!("--cluster-id={cluster}"), "-c"])
            .arg(&props)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !format.status.success() {
            return Err(io::Error::other(format!(
                "formatting the Kafka log folder failed: {}",
                String::from_utf8_lossy(&format.stderr)
            )));
        }
        let log = std::fs::File::create(dir.join("broker.log"))?;
        let child = Command::new("java")
            .args(["-Xmx768m", "-XX:+UseSerialGC", "-cp", &classpath, "kafka.Kafka"])
            .arg(&props)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -9 {broker} 2>/dev/null",
                parent = std::process::id(),
                broker = child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let mut broker = KafkaBroker { child, watchdog, bootstrap: format!("127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = broker.child.try_wait()? {
                let log = std::fs::read_to_string(broker.dir.join("broker.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                return Err(io::Error::other(format!(
                    "the Kafka broker exited ({status}); the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            let client: BaseConsumer = client_config(&broker.bootstrap).create().map_err(io::Error::other)?;
            if client.fetch_metadata(None, Duration::from_secs(2)).is_ok_and(|m| !m.brokers().is_empty()) {
                return Ok(broker);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the Kafka broker did not start within 90 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `host:port` to bootstrap from.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("log_level", "3");
    config
}

/// Creates a topic and waits until its partitions have leaders.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> io::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create().map_err(io::Error::other)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let result = block_on_timeout(admin.create_topics([&new], &AdminOptions::new()), Duration::from_secs(30))
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "creating a topic"))?
        .map_err(io::Error::other)?;
    for r in result {
        r.map_err(|(t, e)| io::Error::other(format!("creating topic {t}: {e}")))?;
    }
    let client: BaseConsumer = client_config(bootstrap).create().map_err(io::Error::other)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(m) = client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if m.topics().iter().any(|t| {
                t.name() == topic
                    && t.partitions().len() == partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            }) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("topic {topic} has no leaders after 30 s")))
}

/// A record to write in a test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestRecord {
    /// The partition; `None` lets the key decide.
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Option<Vec<u8>>,
    /// The timestamp in ms.
    pub timestamp: Option<i64>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Writes records (idempotent producer, acks=all) and waits until all are acknowledged.
pub fn produce(bootstrap: &str, topic: &str, records: impl IntoIterator<Item = TestRecord>) -> io::Result<u64> {
    let mut config = client_config(bootstrap);
    config.set("enable.idempotence", "true").set("linger.ms", "20").set("partitioner", "murmur2_random");
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().map_err(io::Error::other)?;
    let mut n = 0;
    for r in records {
        let mut base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(p) = r.partition {
            base = base.partition(p);
        }
        if let Some(k) = &r.key {
            base = base.key(k);
        }
        if let Some(v) = &r.value {
            base = base.payload(v);
        }
        if let Some(ts) = r.timestamp {
            base = base.timestamp(ts);
        }
        if !r.headers.is_empty() {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &r.headers {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            base = base.headers(headers);
        }
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(io::Error::other(e)),
            }
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(120)).map_err(io::Error::other)?;
    Ok(n)
}

/// A record as a consumer read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its headers (absent values read as empty).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its timestamp in ms.
    pub timestamp: Option<i64>,
}

/// Hands every record of `topic` a `read_committed` consumer sees to `each`, reading every
/// partition to its end, within `timeout`.
fn consume_to_end(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> io::Result<()> {
    let mut config = client_config(bootstrap);
    config
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("group.id", "sluice-test-reader");
    let consumer: BaseConsumer = config.create().map_err(io::Error::other)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(io::Error::other)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).map_err(io::Error::other)?;
    }
    consumer.assign(&tpl).map_err(io::Error::other)?;
    let mut at_end: HashSet<i32> = HashSet::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < partitions.len() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{topic}: only {} of {} partitions read to their end", at_end.len(), partitions.len()),
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                each(&m);
            }
        }
    }
    Ok(())
}

/// Reads every record of `topic` a `read_committed` consumer sees, to the end of each
/// partition, within `timeout`.
pub fn read_committed(bootstrap: &str, topic: &str, timeout: Duration) -> io::Result<Vec<ConsumedRecord>> {
    let mut out = Vec::new();
    consume_to_end(bootstrap, topic, timeout, |m| {
        out.push(ConsumedRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default(),
            timestamp: m.timestamp().to_millis(),
        })
    })?;
    Ok(out)
}

/// Partitions of `topic` where a `read_committed` consumer is held back by an open
/// transaction: its last stable offset is below the high watermark.
pub fn blocked_partitions(bootstrap: &str, topic: &str) -> io::Result<Vec<i32>> {
    let committed: BaseConsumer = {
        let mut c = client_config(bootstrap);
        c.set("isolation.level", "read_committed");
        c.create().map_err(io::Error::other)?
    };
    let uncommitted: BaseConsumer = {
        let mut c = client_config(bootstrap);
        c.set("isolation.level", "read_uncommitted");
        c.create().map_err(io::Error::other)?
    };
    let metadata = committed.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(io::Error::other)?;
    let mut blocked = Vec::new();
    for p in metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()) {
        let t = Duration::from_secs(10);
        let (_, stable) = committed.fetch_watermarks(topic, p.id(), t).map_err(io::Error::other)?;
        let (_, high) = uncommitted.fetch_watermarks(topic, p.id(), t).map_err(io::Error::other)?;
        if stable < high {
            blocked.push(p.id());
        }
    }
    Ok(blocked)
}

/// Open transactions whose transactional id starts with `prefix`.
pub fn open_transactions(bootstrap: &str, prefix: &str) -> io::Result<Vec<String>> {
    protocol::list_open(&[bootstrap.to_string()], prefix, Duration::from_secs(10))
}

/// Every transactional id starting with `prefix` the broker knows, in whatever state
/// (how many ids a sink has used).
pub fn transactional_ids(bootstrap: &str, prefix: &str) -> io::Result<Vec<String>> {
    protocol::list_ids(&[bootstrap.to_string()], prefix, &[], Duration::from_secs(10))
}

/// Calls `each` with the key and value of every record a `read_committed` consumer sees in
/// `topic`, to the end of every partition within `timeout` (for large topics: nothing is
/// kept).
pub fn for_each_committed(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(Option<&[u8]>, Option<&[u8]>),
) -> io::Result<()> {
    consume_to_end(bootstrap, topic, timeout, |m| each(m.key(), m.payload()))
}

/// How many records a `read_committed` consumer sees in `topic`, read to the end of every
/// partition within `timeout` (for large topics, without keeping them).
pub fn count_committed(bootstrap: &str, topic: &str, timeout: Duration) -> io::Result<u64> {
    let mut count = 0;
    consume_to_end(bootstrap, topic, timeout, |_| count += 1)?;
    Ok(count)
}
