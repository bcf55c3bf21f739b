//! Jobs that Sluice's process-level tests run as child processes, and the reference each
//! one must produce. A test kills a job with SIGKILL at random moments, starts the same
//! command again, and compares the committed output with [`counts_reference`].

use std::collections::HashMap;

/// Keys of the counting job.
pub const KEYS: u64 = 40;
/// Window length of the counting job, in milliseconds of event time.
pub const WINDOW_MS: i64 = 100;

/// The key of event `i` (W2's multiplicative hash).
pub fn key_of(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % KEYS
}

/// The output the counting job must commit for events `0..n`: "key,window start,count".
pub fn counts_reference(n: u64) -> Vec<String> {
    let mut counts: HashMap<(u64, i64), u64> = HashMap::new();
    for i in 0..n {
        let t = i as i64;
        *counts.entry((key_of(i), t - t.rem_euclid(WINDOW_MS))).or_default() += 1;
    }
    counts.into_iter().map(|((k, w), n)| format!("{k},{w},{n}")).collect()
}

/// What the Kafka copy job (`kafka-copy`) writes for an input value.
pub fn kafka_copy_transform(value: &str) -> String {
    format!("{}|{}", value.to_uppercase(), value.len())
}
