//! Where records go and who reads what: Kafka's default key partitioner (murmur2, so keys
//! land where a Java producer would put them) and the deterministic spread of partitions
//! over source subtasks that Flink's `KafkaSource` uses.

/// Kafka's murmur2 hash of a key, as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, byte) in rest.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a keyed record.
///
/// ```
/// use sluice_kafka::partition::partition_for_key;
/// // The partition a Java producer with the default partitioner picks for key "key-7".
/// assert_eq!(partition_for_key(b"key-7", 3), 1);
/// ```
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Java's `String.hashCode`, which Flink's partition assignment starts from.
fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)))
}

/// The source subtask that reads `partition` of `topic` (Flink's
/// `KafkaSourceEnumerator.getSplitOwner`): a topic's partitions go round-robin over the
/// subtasks from a start that depends on the topic, so several topics spread evenly.
pub fn owner_of(topic: &str, partition: i32, parallelism: usize) -> usize {
    let p = parallelism.max(1) as i64;
    let start = ((i64::from(java_string_hash(topic)) * 31) & 0x7fff_ffff) % p;
    ((start + i64::from(partition)) % p) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values printed by org.apache.kafka.common.utils.Utils.murmur2 (kafka-clients 4.4).
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(murmur2(b"abc"), 479470107);
        assert_eq!(murmur2(b""), 275646681);
        assert_eq!(partition_for_key(b"key-7", 3), 1);
    }

    #[test]
    fn partitions_spread_over_subtasks() {
        for p in 1..5 {
            let mut counts = vec![0; p];
            for partition in 0..(3 * p as i32) {
                counts[owner_of("orders", partition, p)] += 1;
            }
            assert!(counts.iter().all(|c| *c == 3), "{counts:?}");
        }
        assert_eq!(java_string_hash("orders"), -1008770331);
    }
}
