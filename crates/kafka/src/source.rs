//! The Kafka source: partitions spread over the subtasks by the job (no consumer-group
//! rebalancing), offsets kept in Sluice's checkpoints, a watermark per partition, an
//! optional bounded read up to the offsets that were latest at the start, and a policy for
//! messages that cannot be decoded.

use crate::codec::{DecodeErrorPolicy, Deserializer, KafkaMessage};
use crate::partition::owner_of;
use crate::{kafka_io, ConfigError, KafkaConfig};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_dataflow::counters::{count, Counter};
use sluice_dataflow::{Poll, Source, SourceReader, SplitEvent, SplitRun};
use sluice_types::{Record, NO_TIMESTAMP};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a partition is first read from (after a restore, the checkpoint decides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The oldest record still in the partition (the default).
    Earliest,
    /// The end of the partition when it is assigned: only new records.
    Latest,
    /// The first record with a timestamp at or after this many ms since the epoch.
    Timestamp(i64),
    /// The consumer group's committed offsets; partitions without one start at `reset`.
    Committed {
        /// Earliest or latest, for partitions the group never committed.
        reset: OffsetReset,
    },
    /// Explicit offsets per (topic, partition); other partitions start at the earliest.
    Specific(HashMap<(String, i32), i64>),
}

/// Where a partition without a committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    /// The oldest record.
    Earliest,
    /// The end.
    Latest,
}

struct SourceSettings {
    client: KafkaConfig,
    topics: Vec<String>,
    pattern: Option<regex_lite::Regex>,
    group_id: Option<String>,
    starting: StartingOffsets,
    bounded: bool,
    policy: DecodeErrorPolicy,
    discovery: Duration,
    commit_offsets: bool,
    request_timeout: Duration,
}

/// Reads Kafka topics into a stream, exactly once with checkpoints.
///
/// ```no_run
/// use sluice::prelude::*;
/// use sluice_kafka::{codec, KafkaSource, StartingOffsets};
///
/// let env = StreamEnv::new();
/// let source = KafkaSource::builder()
///     .bootstrap_servers("127.0.0.1:9092")
///     .topics(["orders"])
///     .starting_offsets(StartingOffsets::Earliest)
///     .deserializer(codec::text())
///     .build()
///     .expect("valid settings");
/// env.source(source, Watermarks::monotonic()).map(|line: String| line.len() as u64).print();
/// ```
pub struct KafkaSource<T> {
    settings: Arc<SourceSettings>,
    deserializer: Deserializer<T>,
    skipped: Arc<AtomicU64>,
}

/// Builds a [`KafkaSource`].
pub struct KafkaSourceBuilder<T> {
    client: KafkaConfig,
    topics: Vec<String>,
    pattern: Option<String>,
    group_id: Option<String>,
    starting: StartingOffsets,
    bounded: bool,
    deserializer: Option<Deserializer<T>>,
    policy: DecodeErrorPolicy,
    discovery: Duration,
    commit_offsets: bool,
}

impl KafkaSource<()> {
    /// Starts a builder.
    pub fn builder<T>() -> KafkaSourceBuilder<T> {
        KafkaSourceBuilder {
            client: KafkaConfig::default(),
            topics: Vec::new(),
            pattern: None,
            group_id: None,
            starting: StartingOffsets::Earliest,
            bounded: false,
            deserializer: None,
            policy: DecodeErrorPolicy::Fail,
            discovery: Duration::from_secs(30),
            commit_offsets: false,
        }
    }
}

impl<T> KafkaSourceBuilder<T> {
    /// The brokers to bootstrap from, `host:port[,host:port...]`.
    pub fn bootstrap_servers(mut self, servers: &str) -> Self {
        self.client.bootstrap_servers = servers.to_string();
        self
    }
    /// How long the check before the job starts waits for the brokers (default
    /// [`crate::DEFAULT_CONNECT_TIMEOUT`], 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.client.connect_timeout = timeout;
        self
    }
    /// Reads these topics.
    pub fn topics<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }
    /// Reads every topic whose whole name matches this regular expression, including topics
    /// created while the job runs (found at each discovery).
    pub fn topic_pattern(mut self, pattern: &str) -> Self {
        self.pattern = Some(pattern.to_string());
        self
    }
    /// The consumer group: needed to start from committed offsets or to commit offsets for
    /// monitoring tools. Partitions are never assigned by the group.
    pub fn group_id(mut self, group: &str) -> Self {
        self.group_id = Some(group.to_string());
        self
    }
    /// Where partitions are read from at the first start.
    pub fn starting_offsets(mut self, starting: StartingOffsets) -> Self {
        self.starting = starting;
        self
    }
    /// Stops at the offsets that were the latest when the job first started, then ends the
    /// stream (backfills, tests). A restored job keeps the same stop offsets.
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
        self
    }
    /// How a message becomes a record value (see [`crate::codec`]).
    pub fn deserializer(mut self, f: impl Fn(&KafkaMessage) -> Result<T, String> + Send + Sync + 'static) -> Self {
        self.deserializer = Some(Arc::new(f));
        self
    }
    /// What happens to a message the deserializer rejects (default: fail the job).
    pub fn on_decode_error(mut self, policy: DecodeErrorPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// How often new partitions (and topics matching the pattern) are looked for while an
    /// unbounded job runs (default 30 s). New partitions are read from the earliest offset.
    pub fn partition_discovery_interval(mut self, interval: Duration) -> Self {
        self.discovery = interval;
        self
    }
    /// Also commits the offsets of each checkpoint barrier to the consumer group, so that
    /// lag monitors see progress. Recovery never reads them: offsets live in checkpoints.
    pub fn commit_offsets_on_checkpoint(mut self, commit: bool) -> Self {
        self.commit_offsets = commit;
        self
    }
    /// Sets a librdkafka consumer property (`fetch.max.bytes`, security settings, ...).
    pub fn property(mut self, key: &str, value: &str) -> Self {
        self.client.properties.push((key.to_string(), value.to_string()));
        self
    }

    /// Checks the settings and builds the source.
    pub fn build(self) -> Result<KafkaSource<T>, ConfigError> {
        self.client.check()?;
        if self.topics.is_empty() && self.pattern.is_none() {
            return Err(ConfigError(
                "the Kafka source reads no topic; call .topics([..]) or .topic_pattern(..)".into(),
            ));
        }
        let pattern =
            match &self.pattern {
                Some(p) => Some(regex_lite::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    ConfigError(format!("the topic pattern '{p}' is not a valid regular expression: {e}"))
                })?),
                None => None,
            };
        let deserializer = self.deserializer.ok_or_else(|| {
            ConfigError("the Kafka source has no deserializer; call .deserializer(codec::text()) or similar".into())
        })?;
        if matches!(self.starting, StartingOffsets::Committed { .. }) && self.group_id.is_none() {
            return Err(ConfigError(
                "starting from committed offsets needs a consumer group; call .group_id(..)".into(),
            ));
        }
        if self.commit_offsets && self.group_id.is_none() {
            return Err(ConfigError("committing offsets needs a consumer group; call .group_id(..)".into()));
        }
        if let DecodeErrorPolicy::DeadLetter(topic) = &self.policy {
            if topic.trim().is_empty() {
                return Err(ConfigError("the dead-letter policy needs a topic name".into()));
            }
        }
        if self.discovery.is_zero() {
            return Err(ConfigError("the partition discovery interval must be longer than 0".into()));
        }
        Ok(KafkaSource {
            settings: Arc::new(SourceSettings {
                client: self.client,
                topics: self.topics,
                pattern,
                group_id: self.group_id,
                starting: self.starting,
                bounded: self.bounded,
                policy: self.policy,
                discovery: self.discovery,
                commit_offsets: self.commit_offsets,
                request_timeout: Duration::from_secs(30),
            }),
            deserializer,
            skipped: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl<T> KafkaSource<T> {
    /// How many messages were skipped (or dead-lettered) because they could not be decoded,
    /// over all subtasks of this process.
    pub fn skipped(&self) -> Arc<AtomicU64> {
        self.skipped.clone()
    }
}

impl<T: Send + 'static> Source<T> for KafkaSource<T> {
    fn name(&self) -> String {
        let s = &self.settings;
        match &s.pattern {
            Some(p) => format!("kafka source /{}/", p.as_str()),
            None => format!("kafka source {}", s.topics.join(",")),
        }
    }

    /// The brokers answer within the connect timeout and every named topic exists.
    fn validate(&self) -> Result<(), String> {
        let s = &self.settings;
        let metadata = s.client.reachable_metadata()?;
        for t in &s.topics {
            if !metadata.topics().iter().any(|m| m.name() == t && m.error().is_none()) {
                return Err(format!(
                    "Kafka topic '{t}' does not exist at {}; create it or fix the topic name",
                    s.client.bootstrap_servers
                ));
            }
        }
        Ok(())
    }

    /// Kafka records carry their own timestamps (producer or broker time).
    fn has_timestamps(&self) -> bool {
        true
    }

    /// Partitions are the splits: every partition any old subtask read goes, with its offset
    /// (and bounded stop), to the new subtask that owns it by the assignment formula
    /// ([`owner_of`]) at the new parallelism, as a fresh start at that parallelism assigns.
    fn rescale(&self, old: Vec<Vec<u8>>, parallelism: usize) -> Result<Vec<Vec<u8>>, String> {
        rescale_positions(old, parallelism)
    }

    fn create_reader(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SourceReader<T>>> {
        let s = &self.settings;
        let mut config = s.client.client_config();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // librdkafka pauses a partition's fetching for this long once its local queue is
            // full (default 1 s); a stream reader drains the queue in milliseconds.
            .set("fetch.queue.backoff.ms", "5");
        // librdkafka's consumer API wants a group even when partitions are assigned by hand;
        // nothing is committed to it unless the user asks.
        config.set("group.id", s.group_id.as_deref().unwrap_or("sluice"));
        s.client.apply_properties(&mut config);
        let consumer: BaseConsumer = config.create().map_err(io::Error::other)?;
        let dead_letters = match &s.policy {
            DecodeErrorPolicy::DeadLetter(_) => {
                let mut config = s.client.client_config();
                config.set("enable.idempotence", "true");
                Some(config.create::<ThreadedProducer<DefaultProducerContext>>().map_err(io::Error::other)?)
            }
            _ => None,
        };
        Ok(Box::new(KafkaReader {
            settings: s.clone(),
            deserializer: self.deserializer.clone(),
            skipped: self.skipped.clone(),
            index,
            parallelism,
            consumer,
            dead_letters,
            partitions: Vec::new(),
            by_topic: HashMap::new(),
            restored: None,
            started: false,
            last_discovery: Instant::now(),
            runs: Vec::new(),
            events: Vec::new(),
            eof: false,
        }))
    }
}

/// One partition a reader owns.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PartitionPosition {
    topic: String,
    partition: i32,
    /// The next offset to read.
    next: i64,
    /// Bounded reads end before this offset.
    stop: Option<i64>,
}

/// What a reader checkpoints.
#[derive(Debug, Serialize, Deserialize)]
struct ReaderPosition {
    /// `false` if the barrier came before the reader assigned anything.
    started: bool,
    partitions: Vec<PartitionPosition>,
}

/// Redistributes Kafka reader positions over `parallelism` subtasks by partition owner.
fn rescale_positions(old: Vec<Vec<u8>>, parallelism: usize) -> Result<Vec<Vec<u8>>, String> {
    let old: Vec<ReaderPosition> = old
        .iter()
        .map(|bytes| sluice_dataflow::snapshot::decode(bytes, "a Kafka source position").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let started = old.iter().filter(|p| p.started).count();
    if started == 0 {
        // Nothing was assigned yet: every new subtask starts as a fresh one would.
        let fresh = ReaderPosition { started: false, partitions: Vec::new() };
        return Ok((0..parallelism).map(|_| sluice_dataflow::snapshot::encode(&fresh)).collect());
    }
    if started < old.len() {
        // The partitions of a subtask that had not started are not in the checkpoint; a
        // restore at the old parallelism assigns them, a redistribution would lose them.
        return Err(format!(
            "{} of its {} subtasks had not started reading when the checkpoint was taken; restore it at its \
             old parallelism, or rescale from a later checkpoint",
            old.len() - started,
            old.len()
        ));
    }
    let mut new: Vec<ReaderPosition> =
        (0..parallelism).map(|_| ReaderPosition { started: true, partitions: Vec::new() }).collect();
    for pos in old.into_iter().flat_map(|p| p.partitions) {
        new[owner_of(&pos.topic, pos.partition, parallelism)].partitions.push(pos);
    }
    Ok(new
        .into_iter()
        .map(|mut p| {
            p.partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            sluice_dataflow::snapshot::encode(&p)
        })
        .collect())
}

struct Partition {
    pos: PartitionPosition,
    split: u32,
    done: bool,
}

struct KafkaReader<T> {
    settings: Arc<SourceSettings>,
    deserializer: Deserializer<T>,
    skipped: Arc<AtomicU64>,
    index: usize,
    parallelism: usize,
    consumer: BaseConsumer,
    dead_letters: Option<ThreadedProducer<DefaultProducerContext>>,
    partitions: Vec<Partition>,
    /// topic -> partition number -> index in `partitions`.
    by_topic: HashMap<String, HashMap<i32, usize>>,
    restored: Option<ReaderPosition>,
    started: bool,
    last_discovery: Instant,
    runs: Vec<SplitRun>,
    events: Vec<SplitEvent>,
    eof: bool,
}

impl<T> KafkaReader<T> {
    /// The (topic, partition) pairs this subtask owns now.
    fn owned_partitions(&self) -> io::Result<Vec<(String, i32)>> {
        let s = &self.settings;
        let metadata = self
            .consumer
            .fetch_metadata(None, s.request_timeout)
            .map_err(|e| kafka_io("reading the Kafka topic metadata", e))?;
        let mut owned = Vec::new();
        for topic in metadata.topics() {
            let name = topic.name();
            let wanted = s.topics.iter().any(|t| t == name) || s.pattern.as_ref().is_some_and(|p| p.is_match(name));
            // A pattern never picks Kafka's internal topics (`__consumer_offsets`, ...).
            if !wanted || (name.starts_with("__") && s.pattern.is_some()) {
                continue;
            }
            for p in topic.partitions() {
                if owner_of(name, p.id(), self.parallelism) == self.index {
                    owned.push((name.to_string(), p.id()));
                }
            }
        }
        for t in &s.topics {
            if !metadata.topics().iter().any(|m| m.name() == t && m.error().is_none()) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("Kafka topic '{t}' does not exist; create it or fix the topic name"),
                ));
            }
        }
        owned.sort();
        Ok(owned)
    }

    fn watermarks(&self, topic: &str, partition: i32) -> io::Result<(i64, i64)> {
        self.consumer.fetch_watermarks(topic, partition, self.settings.request_timeout).map_err(|e| {
            let error = kafka_io(&format!("reading the offsets of {topic}/{partition}"), e.clone());
            if leader_not_ready(&e) {
                io::Error::new(io::ErrorKind::WouldBlock, error)
            } else {
                error
            }
        })
    }

    /// The first offset of a newly assigned partition.
    fn starting_offset(&self, topic: &str, partition: i32, first: bool) -> io::Result<i64> {
        let (low, high) = self.watermarks(topic, partition)?;
        let timeout = self.settings.request_timeout;
        Ok(match &self.settings.starting {
            _ if !first => low,
            StartingOffsets::Earliest => low,
            StartingOffsets::Latest => high,
            StartingOffsets::Specific(offsets) => offsets.get(&(topic.to_string(), partition)).copied().unwrap_or(low),
            StartingOffsets::Timestamp(ts) => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, partition, Offset::Offset(*ts)).map_err(io::Error::other)?;
                let found =
                    self.consumer.offsets_for_times(tpl, timeout).map_err(|e| kafka_io("offsets_for_times", e))?;
                match found.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => high,
                }
            }
            StartingOffsets::Committed { reset } => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = self
                    .consumer
                    .committed_offsets(tpl, timeout)
                    .map_err(|e| kafka_io("reading committed offsets", e))?;
                match committed.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ if *reset == OffsetReset::Latest => high,
                    _ => low,
                }
            }
        })
    }

    fn add_partition(&mut self, pos: PartitionPosition) {
        let split = self.partitions.len() as u32;
        let done = pos.stop.is_some_and(|stop| pos.next >= stop);
        self.by_topic.entry(pos.topic.clone()).or_default().insert(pos.partition, self.partitions.len());
        if !done {
            self.events.push(SplitEvent::Added(split));
        }
        self.partitions.push(Partition { pos, split, done });
    }

    /// Assigns the consumer every partition that is not done, at its next offset.
    fn assign(&mut self) -> io::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions.iter().filter(|p| !p.done) {
            tpl.add_partition_offset(&p.pos.topic, p.pos.partition, Offset::Offset(p.pos.next))
                .map_err(io::Error::other)?;
        }
        self.consumer.assign(&tpl).map_err(|e| kafka_io("assigning Kafka partitions", e))
    }

    /// First assignment: the restored partitions, or the owned ones at their start.
    fn start(&mut self) -> io::Result<()> {
        self.started = true;
        match self.restored.take().filter(|r| r.started) {
            Some(restored) => {
                for pos in restored.partitions {
                    self.add_partition(pos);
                }
                if !self.settings.bounded {
                    self.discover()?;
                }
            }
            None => {
                for (topic, partition) in self.owned_partitions()? {
                    let next = self.starting_offset(&topic, partition, true)?;
                    let stop = if self.settings.bounded { Some(self.watermarks(&topic, partition)?.1) } else { None };
                    self.add_partition(PartitionPosition { topic, partition, next, stop });
                }
            }
        }
        self.last_discovery = Instant::now();
        self.assign()
    }

    /// Adds partitions (and pattern topics) created since the last look.
    fn discover(&mut self) -> io::Result<()> {
        self.last_discovery = Instant::now();
        let mut added = false;
        for (topic, partition) in self.owned_partitions()? {
            if self.by_topic.get(&topic).is_some_and(|m| m.contains_key(&partition)) {
                continue;
            }
            let next = match self.starting_offset(&topic, partition, false) {
                Ok(next) => next,
                // A partition created a moment ago may have no leader yet: the next
                // discovery tries it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tracing::debug!(topic = %topic, partition, error = %e, "a new Kafka partition is not ready yet");
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::info!(topic = %topic, partition, offset = next, "discovered a Kafka partition");
            self.add_partition(PartitionPosition { topic, partition, next, stop: None });
            added = true;
        }
        if added {
            self.assign()?;
        }
        Ok(())
    }

    fn finish_partition(&mut self, index: usize) {
        let p = &mut self.partitions[index];
        if !p.done {
            p.done = true;
            self.events.push(SplitEvent::Ended(p.split));
        }
    }

    /// After the consumer reported the end of a partition, bounded partitions whose
    /// position passed their stop offset (the rest were transaction markers) are done.
    fn check_positions(&mut self) -> io::Result<bool> {
        let positions = self.consumer.position().map_err(|e| kafka_io("reading consumer positions", e))?;
        let mut finished = Vec::new();
        for (i, p) in self.partitions.iter().enumerate().filter(|(_, p)| !p.done) {
            if let (Some(stop), Some(Offset::Offset(at))) =
                (p.pos.stop, positions.find_partition(&p.pos.topic, p.pos.partition).map(|e| e.offset()))
            {
                if at >= stop {
                    finished.push(i);
                }
            }
        }
        let any = !finished.is_empty();
        for i in finished {
            self.finish_partition(i);
        }
        Ok(any)
    }

    fn reject(&self, m: &KafkaMessage, error: String) -> io::Result<()> {
        match &self.settings.policy {
            DecodeErrorPolicy::Fail => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the message at {}/{} offset {} could not be decoded: {error}; to go on past such messages, set \
                     the source's decode error policy to Skip or DeadLetter",
                    m.topic(),
                    m.partition(),
                    m.offset()
                ),
            )),
            DecodeErrorPolicy::Skip => {
                let n = self.skipped.fetch_add(1, Ordering::Relaxed);
                count(Counter::RecordSkipped, 1);
                if n < 10 || n.is_power_of_two() {
                    tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %error, skipped = n + 1, "skipping a message that cannot be decoded");
                }
                Ok(())
            }
            DecodeErrorPolicy::DeadLetter(topic) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                count(Counter::RecordSkipped, 1);
                let producer = self.dead_letters.as_ref().expect("created for the dead-letter policy");
                let mut headers = OwnedHeaders::new();
                for (key, value) in m.headers() {
                    headers = headers.insert(Header { key: &key, value: value.as_deref() });
                }
                let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
                for (key, value) in [
                    ("sluice.error", error.as_str()),
                    ("sluice.topic", m.topic()),
                    ("sluice.partition", partition.as_str()),
                    ("sluice.offset", offset.as_str()),
                ] {
                    headers = headers.insert(Header { key, value: Some(value) });
                }
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                if let Some(v) = m.payload() {
                    record = record.payload(v);
                }
                if let Some(ts) = m.timestamp() {
                    record = record.timestamp(ts);
                }
                let mut record = record;
                loop {
                    match producer.send(record) {
                        Ok(()) => return Ok(()),
                        Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(kafka_io("writing to the dead-letter topic", e)),
                    }
                }
            }
        }
    }
}

impl<T: Send + 'static> SourceReader<T> for KafkaReader<T> {
    fn poll(&mut self, out: &mut Vec<Record<T>>, max: usize) -> io::Result<Poll> {
        if !self.started {
            self.start()?;
        } else if !self.settings.bounded && self.last_discovery.elapsed() >= self.settings.discovery {
            self.discover()?;
        }
        let mut reassign = false;
        // Consecutive messages mostly come from the same partition: remember the last one
        // rather than hashing the topic name for each message.
        let mut last: Option<(i32, usize)> = None;
        while out.len() < max {
            // Wait briefly for the first message (librdkafka wakes the call as soon as one
            // arrives); take the rest of the batch from what is already fetched.
            let wait = if out.is_empty() { Duration::from_millis(5) } else { Duration::ZERO };
            let message = match self.consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.eof = true;
                    continue;
                }
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(kafka_io("reading from Kafka", e));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error (retried by librdkafka)");
                    break;
                }
            };
            let index = match last {
                Some((partition, index))
                    if partition == message.partition() && self.partitions[index].pos.topic == message.topic() =>
                {
                    index
                }
                _ => match self.by_topic.get(message.topic()).and_then(|m| m.get(&message.partition())) {
                    Some(&index) => index,
                    None => continue,
                },
            };
            last = Some((message.partition(), index));
            let offset = message.offset();
            let p = &self.partitions[index];
            if p.done || offset < p.pos.next {
                continue;
            }
            if p.pos.stop.is_some_and(|stop| offset >= stop) {
                self.finish_partition(index);
                reassign = true;
                continue;
            }
            let split = p.split;
            let view = KafkaMessage::new(&message);
            match (self.deserializer)(&view) {
                Ok(value) => {
                    out.push(Record { time: view.timestamp().unwrap_or(NO_TIMESTAMP), value });
                    match self.runs.last_mut() {
                        Some(run) if run.split == split => run.len += 1,
                        _ => self.runs.push(SplitRun { split, len: 1 }),
                    }
                }
                Err(error) => self.reject(&view, error)?,
            }
            let p = &mut self.partitions[index];
            p.pos.next = offset + 1;
            if p.pos.stop.is_some_and(|stop| p.pos.next >= stop) {
                self.finish_partition(index);
                reassign = true;
            }
        }
        if self.eof && self.settings.bounded && out.is_empty() {
            self.eof = false;
            reassign |= self.check_positions()?;
        }
        if self.settings.bounded && self.partitions.iter().all(|p| p.done) {
            if let Some(dlq) = &self.dead_letters {
                dlq.flush(self.settings.request_timeout).map_err(|e| kafka_io("flushing dead letters", e))?;
            }
            return Ok(Poll::Finished);
        }
        if reassign {
            self.assign()?;
        }
        Ok(if out.is_empty() { Poll::Pending(Duration::ZERO) } else { Poll::Ready })
    }

    fn position(&self) -> Option<Vec<u8>> {
        // Dead letters up to this barrier are written before the checkpoint can complete.
        if let Some(dlq) = &self.dead_letters {
            if let Err(e) = dlq.flush(self.settings.request_timeout) {
                tracing::error!(error = %e, "dead letters not flushed at a checkpoint");
            }
        }
        let position = match (&self.restored, self.started) {
            (Some(restored), false) => {
                ReaderPosition { started: restored.started, partitions: restored.partitions.clone() }
            }
            _ => ReaderPosition {
                started: self.started,
                partitions: self.partitions.iter().map(|p| p.pos.clone()).collect(),
            },
        };
        if self.settings.commit_offsets && self.started {
            let mut tpl = TopicPartitionList::new();
            for p in &position.partitions {
                let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next));
            }
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "could not commit offsets to the consumer group (monitoring only)");
            }
        }
        Some(sluice_dataflow::snapshot::encode(&position))
    }

    fn seek(&mut self, position: &[u8]) -> io::Result<()> {
        let restored: ReaderPosition = sluice_dataflow::snapshot::decode(position, "a Kafka source position")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.restored = Some(restored);
        Ok(())
    }

    fn split_info(&mut self, runs: &mut Vec<SplitRun>, events: &mut Vec<SplitEvent>) -> bool {
        runs.append(&mut self.runs);
        events.append(&mut self.events);
        true
    }
}

/// Whether a broker error means a partition's leader is not known yet (a topic or
/// partition created a moment ago): worth trying again, not a failure.
fn leader_not_ready(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::UnknownTopicOrPartition
                | Code::UnknownPartition
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataflow::snapshot::{decode, encode};

    fn position(partitions: &[(&str, i32, i64)]) -> Vec<u8> {
        let partitions = partitions
            .iter()
            .map(|(t, p, next)| PartitionPosition { topic: t.to_string(), partition: *p, next: *next, stop: Some(100) })
            .collect();
        encode(&ReaderPosition { started: true, partitions })
    }

    fn offsets(bytes: &[u8]) -> Vec<(String, i32, i64)> {
        let p: ReaderPosition = decode(bytes, "test").unwrap();
        p.partitions.into_iter().map(|p| (p.topic, p.partition, p.next)).collect()
    }

    #[test]
    fn rescaling_moves_every_partition_with_its_offset_to_its_owner_at_the_new_parallelism() {
        let old = vec![position(&[("in", 0, 5), ("in", 2, 7)]), position(&[("in", 1, 6), ("in", 3, 8)])];
        for parallelism in [1, 3, 5] {
            let new = rescale_positions(old.clone(), parallelism).unwrap();
            assert_eq!(new.len(), parallelism);
            let mut all = Vec::new();
            for (index, bytes) in new.iter().enumerate() {
                for (topic, partition, next) in offsets(bytes) {
                    assert_eq!(owner_of(&topic, partition, parallelism), index, "p={parallelism}");
                    all.push((partition, next));
                }
            }
            all.sort();
            assert_eq!(all, vec![(0, 5), (1, 6), (2, 7), (3, 8)], "p={parallelism}");
        }
    }

    #[test]
    fn a_checkpoint_before_some_subtasks_started_is_refused_and_one_before_all_is_a_fresh_start() {
        let not_started = encode(&ReaderPosition { started: false, partitions: Vec::new() });
        let err = rescale_positions(vec![position(&[("in", 0, 5)]), not_started.clone()], 3).unwrap_err();
        assert!(err.contains("1 of its 2 subtasks had not started"), "{err}");
        let fresh = rescale_positions(vec![not_started.clone(), not_started], 3).unwrap();
        assert!(fresh.iter().all(|b| !decode::<ReaderPosition>(b, "test").unwrap().started));
    }
}
