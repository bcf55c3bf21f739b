//! The Kafka sink: at-least-once (flushed at every checkpoint barrier) or exactly-once
//! through Kafka transactions.
//!
//! Exactly-once follows Flink's `KafkaSink`: each sink subtask writes the records between
//! two barriers in one transaction, flushes it at the barrier and records its transactional
//! id, producer id and epoch in the checkpoint; the transaction is committed once the
//! checkpoint is complete. A new producer (with a new epoch) opens the next transaction,
//! under the lowest free id of a small pool `{prefix}-{subtask}-{slot}`. After a restart,
//! the transactions of the checkpoint restored from are committed (by the same process
//! through its producer, or after a crash through [`crate::protocol`]) and every other
//! open transaction under the prefix is aborted by initialising its id again, which also
//! fences any producer of an older incarnation.

use crate::codec::{ProducerRecord, Serializer};
use crate::partition::partition_for_key;
use crate::protocol::{self, TxnState};
use crate::{block_on_timeout, kafka_io, ConfigError, KafkaConfig};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};
use sluice_dataflow::{CheckpointMode, JobConfig, Sink, SinkWriter};
use sluice_types::{Record, NO_TIMESTAMP};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the sink promises about each record across failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// Records are sent and not waited for: lost if the job fails before librdkafka
    /// delivered them.
    None,
    /// Every checkpoint barrier waits until all records before it are acknowledged; after
    /// a failure, records since the last checkpoint are written again (the default).
    AtLeastOnce,
    /// Records become visible to `read_committed` consumers exactly once, when the
    /// checkpoint after them completes. Needs exactly-once checkpoints.
    ExactlyOnce,
}

/// Which partition of the topic a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkPartitioning {
    /// By Kafka's default partitioner: murmur2 of the key, as a Java producer would;
    /// records without a key go round-robin (the default).
    ByKey,
    /// Round-robin over the partitions, per sink subtask.
    RoundRobin,
    /// Always this partition.
    Fixed(i32),
}

struct SinkSettings {
    client: KafkaConfig,
    topic: String,
    guarantee: DeliveryGuarantee,
    prefix: String,
    transaction_timeout: Duration,
    partitioning: SinkPartitioning,
    request_timeout: Duration,
}

/// Counts failed deliveries of one producer (librdkafka reports them on its own thread).
#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                *self.first_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
            }
        }
    }
}

type KafkaProducer = ThreadedProducer<DeliveryTracker>;

/// What a checkpoint holds to commit one subtask's transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Committable {
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
}

/// Writes a stream to a Kafka topic.
///
/// ```no_run
/// use sluice::prelude::*;
/// use sluice_kafka::{codec, DeliveryGuarantee, KafkaSink};
///
/// let env = StreamEnv::new();
/// env.enable_checkpointing(std::time::Duration::from_secs(1), "/tmp/checkpoints");
/// let sink = KafkaSink::builder()
///     .bootstrap_servers("127.0.0.1:9092")
///     .topic("lengths")
///     .serializer(codec::keyed(|n: &u64| n.to_string().into_bytes(), codec::json_value()))
///     .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
///     .transactional_id_prefix("lengths-job")
///     .build()
///     .expect("valid settings");
/// env.from_collection(vec![1u64, 2, 3]).sink(sink);
/// ```
pub struct KafkaSink<T> {
    settings: Arc<SinkSettings>,
    serializer: Serializer<T>,
    /// Producers whose transaction was pre-committed in this process and awaits its commit.
    pending: Arc<Mutex<HashMap<String, KafkaProducer>>>,
}

/// Builds a [`KafkaSink`].
pub struct KafkaSinkBuilder<T> {
    client: KafkaConfig,
    topic: Option<String>,
    serializer: Option<Serializer<T>>,
    guarantee: DeliveryGuarantee,
    prefix: Option<String>,
    transaction_timeout: Duration,
    partitioning: SinkPartitioning,
}

impl KafkaSink<()> {
    /// Starts a builder.
    pub fn builder<T>() -> KafkaSinkBuilder<T> {
        KafkaSinkBuilder {
            client: KafkaConfig::default(),
            topic: None,
            serializer: None,
            guarantee: DeliveryGuarantee::AtLeastOnce,
            prefix: None,
            transaction_timeout: Duration::from_secs(15 * 60),
            partitioning: SinkPartitioning::ByKey,
        }
    }
}

impl<T> KafkaSinkBuilder<T> {
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
    /// The topic written to (it must exist).
    pub fn topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_string());
        self
    }
    /// How a value becomes key, value and headers (see [`crate::codec`]).
    pub fn serializer(mut self, f: impl Fn(T) -> ProducerRecord + Send + Sync + 'static) -> Self {
        self.serializer = Some(Arc::new(f));
        self
    }
    /// None, at-least-once (the default) or exactly-once.
    pub fn delivery_guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.guarantee = guarantee;
        self
    }
    /// Transactional ids are `{prefix}-{subtask}-{slot}`: unique per job and stable across
    /// its restarts, so a restart finds what the previous run left open.
    pub fn transactional_id_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_string());
        self
    }
    /// How long the broker keeps a transaction open before aborting it (default 15 min,
    /// the broker's default `transaction.max.timeout.ms`). It must cover a checkpoint
    /// interval, the checkpoint and any outage before the restarted job commits.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }
    /// Which partition each record goes to.
    pub fn partitioning(mut self, partitioning: SinkPartitioning) -> Self {
        self.partitioning = partitioning;
        self
    }
    /// Sets a librdkafka producer property (`linger.ms`, `compression.type`, security ...).
    pub fn property(mut self, key: &str, value: &str) -> Self {
        self.client.properties.push((key.to_string(), value.to_string()));
        self
    }

    /// Checks the settings and builds the sink.
    pub fn build(self) -> Result<KafkaSink<T>, ConfigError> {
        self.client.check()?;
        let topic = self.topic.ok_or_else(|| ConfigError("the Kafka sink has no topic; call .topic(..)".into()))?;
        let serializer = self.serializer.ok_or_else(|| {
            ConfigError("the Kafka sink has no serializer; call .serializer(codec::text_value()) or similar".into())
        })?;
        let prefix = match (self.guarantee, self.prefix) {
            (DeliveryGuarantee::ExactlyOnce, None) => {
                return Err(ConfigError(
                    "an exactly-once Kafka sink needs a transactional id prefix unique to the job; call \
                     .transactional_id_prefix(..)"
                        .into(),
                ))
            }
            (_, prefix) => prefix.unwrap_or_default(),
        };
        if prefix.contains(char::is_whitespace) {
            return Err(ConfigError(format!("the transactional id prefix '{prefix}' contains white space")));
        }
        if let SinkPartitioning::Fixed(p) = self.partitioning {
            if p < 0 {
                return Err(ConfigError(format!("fixed partition {p} is negative")));
            }
        }
        Ok(KafkaSink {
            settings: Arc::new(SinkSettings {
                client: self.client,
                topic,
                guarantee: self.guarantee,
                prefix,
                transaction_timeout: self.transaction_timeout,
                partitioning: self.partitioning,
                request_timeout: Duration::from_secs(60),
            }),
            serializer,
            pending: Arc::new(Mutex::new(HashMap::new())),
        })
    }
}

impl SinkSettings {
    fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut config = self.client.client_config();
        config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
        self.client.apply_properties(&mut config);
        config
    }

    /// A producer for `transactional_id` with its transactions initialised: any transaction
    /// left open under that id is aborted and older producers of it are fenced.
    fn transactional_producer(&self, transactional_id: &str) -> io::Result<KafkaProducer> {
        let mut config = self.producer_config();
        config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", self.transaction_timeout.as_millis().to_string());
        let producer: KafkaProducer =
            config.create_with_context(DeliveryTracker::default()).map_err(|e| kafka_io("creating a producer", e))?;
        producer
            .init_transactions(self.request_timeout)
            .map_err(|e| kafka_io(&format!("initialising transactions of '{transactional_id}'"), e))?;
        Ok(producer)
    }

    fn metadata_client(&self) -> io::Result<BaseConsumer> {
        let mut config = self.client.client_config();
        self.client.apply_properties(&mut config);
        config.create().map_err(|e| kafka_io("creating a Kafka client", e))
    }

    /// The brokers as `host:port`, and the topic's partition count.
    fn cluster(&self, timeout: Duration) -> io::Result<(Vec<(i32, String)>, Option<i32>)> {
        let client = self.metadata_client()?;
        let metadata = client
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| kafka_io(&format!("reading metadata from {}", self.client.bootstrap_servers), e))?;
        let brokers = metadata.brokers().iter().map(|b| (b.id(), format!("{}:{}", b.host(), b.port()))).collect();
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32);
        Ok((brokers, partitions))
    }

    fn owns(&self, transactional_id: &str) -> bool {
        transactional_id
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(subtask, slot)| subtask.parse::<u32>().is_ok() && slot.parse::<u32>().is_ok())
    }
}

fn decode_committable(bytes: &[u8]) -> io::Result<Committable> {
    sluice_dataflow::snapshot::decode(bytes, "a Kafka sink committable")
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl<T: Send + 'static> Sink<T> for KafkaSink<T> {
    fn name(&self) -> String {
        format!("kafka sink {}", self.settings.topic)
    }

    fn validate(&self, config: &JobConfig) -> Result<(), String> {
        let s = &self.settings;
        let (brokers, partitions) = s.cluster(s.client.connect_timeout).map_err(|e| {
            format!(
                "cannot reach Kafka at {} within {:?}: {e}; is the broker running at that address? (the wait is \
                 .connect_timeout(..))",
                s.client.bootstrap_servers, s.client.connect_timeout
            )
        })?;
        if partitions.is_none() {
            return Err(format!(
                "Kafka topic '{}' does not exist; create it first (Sluice does not create topics)",
                s.topic
            ));
        }
        if let SinkPartitioning::Fixed(p) = s.partitioning {
            if Some(p) >= partitions {
                return Err(format!("fixed partition {p} does not exist: '{}' has {partitions:?} partitions", s.topic));
            }
        }
        if s.guarantee != DeliveryGuarantee::ExactlyOnce {
            return Ok(());
        }
        let Some(cp) = config.checkpointing.as_ref().filter(|c| c.mode == CheckpointMode::ExactlyOnce) else {
            return Err("an exactly-once Kafka sink commits at checkpoints: enable exactly-once checkpointing \
                        (env.enable_checkpointing(..)) or choose DeliveryGuarantee::AtLeastOnce"
                .into());
        };
        let least = cp.interval * 2;
        if s.transaction_timeout < least {
            return Err(format!(
                "the transaction timeout {:?} is too short for checkpoints every {:?}: a transaction stays open for an \
                 interval, the checkpoint and any restart before its commit; set .transaction_timeout(..) to at least \
                 {least:?} (15 min, the broker's default maximum, is a good value)",
                s.transaction_timeout, cp.interval
            ));
        }
        let admin: AdminClient<DefaultClientContext> = {
            let mut config = s.client.client_config();
            s.client.apply_properties(&mut config);
            config.create().map_err(|e| format!("creating a Kafka admin client: {e}"))?
        };
        let broker = brokers.first().map(|b| b.0).unwrap_or(0);
        let specifier = ResourceSpecifier::Broker(broker);
        let configs = block_on_timeout(
            admin.describe_configs([&specifier], &AdminOptions::new().request_timeout(Some(s.request_timeout))),
            s.request_timeout,
        )
        .ok_or("no answer from Kafka about the broker's transaction.max.timeout.ms")?
        .map_err(|e| format!("reading the broker's configuration: {e}"))?;
        let max = configs
            .iter()
            .flatten()
            .find_map(|r| r.get("transaction.max.timeout.ms").and_then(|e| e.value.as_ref()?.parse::<u64>().ok()));
        if let Some(max) = max {
            if s.transaction_timeout.as_millis() as u64 > max {
                return Err(format!(
                    "the transaction timeout {:?} is above the broker's transaction.max.timeout.ms ({max} ms); lower it \
                     with .transaction_timeout(..) or raise the broker's setting",
                    s.transaction_timeout
                ));
            }
        }
        Ok(())
    }

    fn create_writer(&self, index: usize, _parallelism: usize) -> io::Result<Box<dyn SinkWriter<T>>> {
        let s = &self.settings;
        let (_, partitions) = s.cluster(s.request_timeout)?;
        let partitions = partitions.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("Kafka topic '{}' does not exist", s.topic))
        })?;
        let mut writer = KafkaWriter {
            spare: None,
            settings: s.clone(),
            serializer: self.serializer.clone(),
            pending: self.pending.clone(),
            subtask: index,
            producer: None,
            transactional_id: String::new(),
            partitions,
            next_partition: index as i32 % partitions,
            in_transaction: 0,
        };
        writer.open()?;
        Ok(Box::new(writer))
    }

    fn commit(&self, committable: &[u8]) -> io::Result<()> {
        let c = decode_committable(committable)?;
        let s = &self.settings;
        let producer = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&c.transactional_id);
        match producer {
            Some(producer) => producer
                .commit_transaction(s.request_timeout)
                .map_err(|e| kafka_io(&format!("committing transaction '{}'", c.transactional_id), e)),
            None => {
                let expected =
                    TxnState { state: String::new(), producer_id: c.producer_id, producer_epoch: c.producer_epoch };
                let outcome = protocol::commit_resumed(
                    &s.client.bootstrap_servers,
                    &c.transactional_id,
                    &expected,
                    s.request_timeout,
                )?;
                tracing::info!(transaction = %c.transactional_id, outcome = ?outcome, "resumed a Kafka transaction");
                Ok(())
            }
        }
    }

    /// Drops the producer of a transaction that process 0 committed by resuming it: without
    /// this, a process would keep one idle producer (and transactional id) per checkpoint.
    fn release(&self, committable: &[u8]) {
        let Ok(c) = decode_committable(committable) else { return };
        let producer = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&c.transactional_id);
        if let Some(producer) = producer {
            // Closing a producer waits for its threads: not on the caller's control loop.
            std::thread::spawn(move || drop(producer));
        }
    }

    fn recover(&self, keep: &[Vec<u8>]) -> io::Result<()> {
        let s = &self.settings;
        if s.guarantee != DeliveryGuarantee::ExactlyOnce {
            return Ok(());
        }
        let keep: Vec<Committable> = keep.iter().map(|k| decode_committable(k)).collect::<io::Result<_>>()?;
        let keep_ids: HashSet<&str> = keep.iter().map(|c| c.transactional_id.as_str()).collect();
        let stale: Vec<(String, KafkaProducer)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<String> = pending.keys().filter(|id| !keep_ids.contains(id.as_str())).cloned().collect();
            ids.into_iter().filter_map(|id| pending.remove(&id).map(|p| (id, p))).collect()
        };
        for (id, producer) in stale {
            if let Err(e) = producer.abort_transaction(s.request_timeout) {
                tracing::warn!(transaction = %id, error = %e, "could not abort a transaction; fencing it instead");
            }
        }
        let (brokers, _) = s.cluster(s.request_timeout)?;
        let brokers: Vec<String> = brokers.into_iter().map(|b| b.1).collect();
        let open = protocol::list_open(&brokers, &format!("{}-", s.prefix), s.request_timeout)?;
        for id in open.into_iter().filter(|id| s.owns(id)) {
            // A kept id may since carry a later transaction (its slot was reused after the
            // kept one was committed): only the transaction with the kept epoch stays open.
            if let Some(kept) = keep.iter().find(|c| c.transactional_id == id) {
                let now = protocol::describe(&s.client.bootstrap_servers, &id, s.request_timeout)?;
                if now.producer_id == kept.producer_id && now.producer_epoch == kept.producer_epoch {
                    continue;
                }
            }
            tracing::info!(transaction = %id, "aborting a transaction an earlier run left open");
            drop(s.transactional_producer(&id)?);
        }
        Ok(())
    }
}

/// A producer being initialised in the background for the next transaction.
struct Spare {
    id: String,
    handle: std::thread::JoinHandle<io::Result<KafkaProducer>>,
}

struct KafkaWriter<T> {
    spare: Option<Spare>,
    settings: Arc<SinkSettings>,
    serializer: Serializer<T>,
    pending: Arc<Mutex<HashMap<String, KafkaProducer>>>,
    subtask: usize,
    producer: Option<KafkaProducer>,
    transactional_id: String,
    partitions: i32,
    next_partition: i32,
    in_transaction: u64,
}

impl<T> Drop for KafkaWriter<T> {
    fn drop(&mut self) {
        // A producer still being set up must not initialise its id after a restarted job has
        // recovered: wait for it.
        if let Some(spare) = self.spare.take() {
            let _ = spare.handle.join();
        }
    }
}

impl<T> KafkaWriter<T> {
    fn exactly_once(&self) -> bool {
        self.settings.guarantee == DeliveryGuarantee::ExactlyOnce
    }

    /// Opens the producer (and, for exactly-once, its transaction) records go to next.
    /// The lowest transactional id of this subtask that is neither awaiting its commit nor
    /// `taken`.
    fn free_id(&self, taken: Option<&str>) -> String {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        (0u32..)
            .map(|slot| format!("{}-{}-{slot}", self.settings.prefix, self.subtask))
            .find(|id| !pending.contains_key(id) && Some(id.as_str()) != taken)
            .expect("a free slot")
    }

    fn open(&mut self) -> io::Result<()> {
        let s = self.settings.clone();
        let producer = if self.exactly_once() {
            // Initialising a producer takes tens of milliseconds (more when its id's previous
            // transaction is still completing): the next one is prepared in the background so
            // that a barrier only swaps producers.
            let (id, producer) = match self.spare.take() {
                Some(spare) => {
                    (spare.id, spare.handle.join().map_err(|_| io::Error::other("producer set-up panicked"))??)
                }
                None => {
                    let id = self.free_id(None);
                    let producer = s.transactional_producer(&id)?;
                    (id, producer)
                }
            };
            producer.begin_transaction().map_err(|e| kafka_io("beginning a transaction", e))?;
            let next = self.free_id(Some(&id));
            let settings = s.clone();
            let handle = std::thread::Builder::new().name("sluice:kafka-producer-setup".into()).spawn({
                let next = next.clone();
                move || settings.transactional_producer(&next)
            })?;
            self.spare = Some(Spare { id: next, handle });
            self.transactional_id = id;
            producer
        } else {
            s.producer_config()
                .create_with_context(DeliveryTracker::default())
                .map_err(|e| kafka_io("creating a producer", e))?
        };
        self.producer = Some(producer);
        self.in_transaction = 0;
        Ok(())
    }

    fn check_deliveries(&self) -> io::Result<()> {
        let tracker = self.producer.as_ref().expect("open").context();
        let failed = tracker.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = tracker.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
            return Err(io::Error::other(format!(
                "{failed} record(s) could not be written to Kafka topic '{}': {first}",
                self.settings.topic
            )));
        }
        Ok(())
    }

    fn partition_of(&mut self, record: &ProducerRecord) -> i32 {
        match (self.settings.partitioning, &record.key) {
            (SinkPartitioning::Fixed(p), _) => p,
            (SinkPartitioning::ByKey, Some(key)) => partition_for_key(key, self.partitions),
            _ => {
                self.next_partition = (self.next_partition + 1) % self.partitions;
                self.next_partition
            }
        }
    }

    fn flush(&self) -> io::Result<()> {
        let producer = self.producer.as_ref().expect("open");
        producer.flush(self.settings.request_timeout).map_err(|e| kafka_io("flushing records to Kafka", e))?;
        self.check_deliveries()
    }
}

impl<T: Send + 'static> SinkWriter<T> for KafkaWriter<T> {
    fn write_batch(&mut self, batch: Vec<Record<T>>) -> io::Result<()> {
        let topic = self.settings.topic.clone();
        let n = batch.len() as u64;
        for record in batch {
            let time = record.time;
            let out = (self.serializer)(record.value);
            let partition = self.partition_of(&out);
            let mut base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).partition(partition);
            if let Some(key) = &out.key {
                base = base.key(key);
            }
            if let Some(value) = &out.value {
                base = base.payload(value);
            }
            if time != NO_TIMESTAMP {
                base = base.timestamp(time);
            }
            if !out.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
                for (key, value) in &out.headers {
                    headers = headers.insert(Header { key, value: Some(value) });
                }
                base = base.headers(headers);
            }
            let producer = self.producer.as_ref().expect("open");
            loop {
                match producer.send(base) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        base = back;
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    Err((e, _)) => return Err(kafka_io(&format!("writing to Kafka topic '{topic}'"), e)),
                }
            }
        }
        self.in_transaction += n;
        self.check_deliveries()
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn pre_commit(&mut self, _checkpoint: Option<u64>) -> io::Result<Option<Vec<u8>>> {
        match self.settings.guarantee {
            DeliveryGuarantee::None => Ok(None),
            DeliveryGuarantee::AtLeastOnce => {
                KafkaWriter::flush(self)?;
                Ok(None)
            }
            DeliveryGuarantee::ExactlyOnce => {
                if self.in_transaction == 0 {
                    return Ok(None);
                }
                KafkaWriter::flush(self)?;
                let s = &self.settings;
                let txn = protocol::describe(&s.client.bootstrap_servers, &self.transactional_id, s.request_timeout)?;
                if txn.state != "Ongoing" {
                    return Err(io::Error::other(format!(
                        "transaction '{}' is {} at pre-commit, not open; was it fenced by another run with the same \
                         transactional id prefix?",
                        self.transactional_id, txn.state
                    )));
                }
                let committable = Committable {
                    transactional_id: self.transactional_id.clone(),
                    producer_id: txn.producer_id,
                    producer_epoch: txn.producer_epoch,
                };
                let producer = self.producer.take().expect("open");
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(self.transactional_id.clone(), producer);
                self.open()?;
                Ok(Some(sluice_dataflow::snapshot::encode(&committable)))
            }
        }
    }
}
