//! Turning Kafka messages into records and back: the message view deserializers read,
//! ready-made deserializers and serializers (bytes, UTF-8 text, JSON, with metadata), and
//! what happens to a message that cannot be decoded.

use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A Kafka message as a deserializer sees it.
pub struct KafkaMessage<'a> {
    inner: &'a BorrowedMessage<'a>,
}

impl<'a> KafkaMessage<'a> {
    pub(crate) fn new(inner: &'a BorrowedMessage<'a>) -> Self {
        KafkaMessage { inner }
    }
    /// The topic it was read from.
    pub fn topic(&self) -> &str {
        self.inner.topic()
    }
    /// Its partition.
    pub fn partition(&self) -> i32 {
        self.inner.partition()
    }
    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.inner.offset()
    }
    /// Its timestamp in milliseconds (create or log-append time), if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.inner.timestamp().to_millis()
    }
    /// Its key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.inner.key()
    }
    /// Its value; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.inner.payload()
    }
    /// Its headers, in order.
    pub fn headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.inner
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default()
    }
}

/// Decodes a message into a record value; an `Err` names what is wrong with it.
pub type Deserializer<T> = Arc<dyn Fn(&KafkaMessage) -> Result<T, String> + Send + Sync>;

/// The value as raw bytes (a tombstone reads as empty).
pub fn bytes() -> impl Fn(&KafkaMessage) -> Result<Vec<u8>, String> + Send + Sync + 'static {
    |m| Ok(m.payload().unwrap_or_default().to_vec())
}

/// The value as UTF-8 text.
pub fn text() -> impl Fn(&KafkaMessage) -> Result<String, String> + Send + Sync + 'static {
    |m| {
        std::str::from_utf8(m.payload().unwrap_or_default())
            .map(str::to_owned)
            .map_err(|e| format!("the value is not UTF-8: {e}"))
    }
}

/// The value as JSON, decoded with serde.
pub fn json<T: DeserializeOwned>() -> impl Fn(&KafkaMessage) -> Result<T, String> + Send + Sync + 'static {
    |m| serde_json::from_slice(m.payload().unwrap_or_default()).map_err(|e| format!("the value is not valid JSON: {e}"))
}

/// A decoded value with everything Kafka knows about its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord<V> {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
    /// The timestamp in milliseconds, if any.
    pub timestamp: Option<i64>,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The decoded value.
    pub value: V,
}

/// Wraps a value deserializer so the job also gets key, headers, partition, offset and
/// timestamp.
pub fn with_metadata<V>(
    value: impl Fn(&KafkaMessage) -> Result<V, String> + Send + Sync + 'static,
) -> impl Fn(&KafkaMessage) -> Result<KafkaRecord<V>, String> + Send + Sync + 'static {
    move |m| {
        Ok(KafkaRecord {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp(),
            key: m.key().map(<[u8]>::to_vec),
            headers: m.headers(),
            value: value(m)?,
        })
    }
}

/// What the source does with a message its deserializer rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeErrorPolicy {
    /// Fail the job, naming topic, partition, offset and the error (the default).
    Fail,
    /// Skip the message and count it (see `KafkaSource::skipped`).
    Skip,
    /// Write the message unchanged (key, value, headers) to this topic, with headers
    /// saying where it came from and why it was rejected, and go on.
    DeadLetter(String),
}

/// A record as the sink writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The key; also what key partitioning hashes.
    pub key: Option<Vec<u8>>,
    /// The value; `None` writes a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Encodes a value as the sink writes it. It takes the value by ownership, so that bytes
/// and text move into the record without a copy.
pub type Serializer<T> = Arc<dyn Fn(T) -> ProducerRecord + Send + Sync>;

/// Writes byte values as they are, without a key.
pub fn bytes_value() -> impl Fn(Vec<u8>) -> ProducerRecord + Send + Sync + 'static {
    |v| ProducerRecord { value: Some(v), ..Default::default() }
}

/// Writes text values as UTF-8, without a key.
pub fn text_value() -> impl Fn(String) -> ProducerRecord + Send + Sync + 'static {
    |v| ProducerRecord { value: Some(v.into_bytes()), ..Default::default() }
}

/// Writes values as JSON, without a key.
pub fn json_value<T: Serialize>() -> impl Fn(T) -> ProducerRecord + Send + Sync + 'static {
    |v| ProducerRecord {
        value: Some(serde_json::to_vec(&v).unwrap_or_else(|e| {
            // The same value never encodes: fail the job with the reason, do not restart it.
            sluice_dataflow::fail_unrecoverable(format!(
                "a value cannot be written as JSON: {e}; JSON object keys must be strings or numbers (convert a \
                 map's keys, or write the value with another serializer)"
            ))
        })),
        ..Default::default()
    }
}

/// Writes a value with a key taken from it.
///
/// ```
/// use sluice_kafka::codec::{json_value, keyed};
/// #[derive(serde::Serialize)]
/// struct Click { user: String, page: u32 }
/// let serialize = keyed(|c: &Click| c.user.clone().into_bytes(), json_value());
/// let record = serialize(Click { user: "ada".into(), page: 7 });
/// assert_eq!(record.key.as_deref(), Some(&b"ada"[..]));
/// assert_eq!(record.value.as_deref(), Some(&br#"{"user":"ada","page":7}"#[..]));
/// ```
pub fn keyed<T>(
    key: impl Fn(&T) -> Vec<u8> + Send + Sync + 'static,
    value: impl Fn(T) -> ProducerRecord + Send + Sync + 'static,
) -> impl Fn(T) -> ProducerRecord + Send + Sync + 'static {
    move |v| {
        let key = key(&v);
        ProducerRecord { key: Some(key), ..value(v) }
    }
}

/// Writes a [`KafkaRecord`] back with its key and headers (the inverse of
/// [`with_metadata`]), its value encoded by `value`.
pub fn record<V>(
    value: impl Fn(V) -> ProducerRecord + Send + Sync + 'static,
) -> impl Fn(KafkaRecord<V>) -> ProducerRecord + Send + Sync + 'static {
    move |r| ProducerRecord {
        key: r.key,
        headers: r.headers.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect(),
        value: value(r.value).value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_value_json_cannot_write_fails_without_a_panic_message_dump() {
        let serialize = json_value::<BTreeMap<(u8, u8), u8>>();
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serialize(BTreeMap::from([((1, 2), 3)]));
        }))
        .unwrap_err();
        let failure = payload.downcast::<sluice_dataflow::Unrecoverable>().expect("an unrecoverable failure");
        assert!(failure.0.contains("JSON object keys must be strings"), "{}", failure.0);
        // Keys that are numbers are written as JSON strings.
        let record = json_value::<BTreeMap<u8, u8>>()(BTreeMap::from([(1, 2)]));
        assert_eq!(record.value.as_deref(), Some(&b"{\"1\":2}"[..]));
    }
}
