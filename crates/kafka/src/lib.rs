//! Kafka for Sluice: a source that keeps its offsets in Sluice's checkpoints, with a
//! watermark per partition, and a sink that writes at least once or exactly once through
//! Kafka transactions committed when a checkpoint completes.
//!
//! Both sit on librdkafka (the `rdkafka` crate, built from its bundled sources). The
//! exactly-once sink also speaks four transaction-admin requests itself
//! ([`protocol`]): after a crash between a checkpoint's completion and its commit, the
//! restarted job commits the transaction the dead process left open, as Flink's
//! `KafkaSink` does. See `docs/kafka.md` for the design and its limits.

pub mod codec;
pub mod partition;
pub mod protocol;
pub mod sink;
pub mod source;
pub mod testing;

pub use codec::{DecodeErrorPolicy, KafkaMessage, KafkaRecord, ProducerRecord};
pub use sink::{DeliveryGuarantee, KafkaSink, KafkaSinkBuilder, SinkPartitioning};
pub use source::{KafkaSource, KafkaSourceBuilder, OffsetReset, StartingOffsets};

use rdkafka::config::ClientConfig;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A setting that cannot work, with what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Connection settings shared by sources and sinks.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties, applied last.
    pub properties: Vec<(String, String)>,
    /// How long the check before the job starts waits for the brokers to answer
    /// ([`DEFAULT_CONNECT_TIMEOUT`] unless set): a wrong address or a broker that is down
    /// is reported after this long, with the address.
    pub connect_timeout: Duration,
}

/// The default of [`KafkaConfig::connect_timeout`]: 10 s covers a broker that is starting or
/// a slow network, and is short enough that a wrong address is reported while the user
/// is still looking (librdkafka's own request timeouts run to a minute).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: String::new(),
            properties: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl KafkaConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError("no Kafka brokers given; call .bootstrap_servers(\"host:port\")".into()));
        }
        Ok(())
    }

    /// A librdkafka configuration with the brokers set.
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("log_level", "4");
        config
    }

    /// The metadata of every topic of the cluster, within the connect timeout; the error names the
    /// address and what to check.
    fn reachable_metadata(&self) -> Result<rdkafka::metadata::Metadata, String> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let mut config = self.client_config();
        self.apply_properties(&mut config);
        let client: BaseConsumer = config.create().map_err(|e| format!("cannot create a Kafka client: {e}"))?;
        client.fetch_metadata(None, self.connect_timeout).map_err(|e| {
            format!(
                "cannot reach Kafka at {} within {:?}: {e}; is the broker running at that address? (the wait is \
                 .connect_timeout(..))",
                self.bootstrap_servers, self.connect_timeout
            )
        })
    }

    fn apply_properties(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }
}

/// A librdkafka error as an I/O error saying what was being done.
pub(crate) fn kafka_io(what: &str, e: rdkafka::error::KafkaError) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits for a future on this thread, for at most `timeout` (rdkafka's admin futures are
/// resolved by librdkafka's own threads, so no async runtime is needed).
pub(crate) fn block_on_timeout<F: Future>(future: F, timeout: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + timeout;
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}
