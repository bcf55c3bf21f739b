//! In-flight data is bounded in bytes: 200 MB of 100 KiB records pushed through a full
//! exchange to a slow consumer never hold more than a few MiB at once, because batches of
//! large records are cut to the byte limit (16 batches of 256 KiB per inbox). A bound in
//! records alone would let each inbox hold 16 x 1024 records, 1.6 GB.

use sluice_testjobs::harness::KillOnDrop;
use std::process::{Command, Stdio};
use std::time::Duration;

fn run(args: &[&str]) -> (u64, u64, u64) {
    let mut job = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_big-records"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the big-records binary starts"),
    );
    let (status, stderr) = job.wait(Duration::from_secs(300));
    let mut stdout = String::new();
    std::io::Read::read_to_string(job.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stderr}");
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in: {stdout}"))
    };
    (field("bytes"), field("checksum"), field("peak_rss_kb"))
}

#[test]
fn large_records_are_bounded_in_bytes_not_only_in_records() {
    let n = 2_000u64;
    let (bytes, checksum, peak_kb) = run(&["--n", &n.to_string(), "--kb", "100", "--consumer-micros", "200"]);
    assert_eq!(bytes, n * 100 * 1024, "every record arrived whole");
    assert_eq!(checksum, (0..n).map(|i| i % 251).sum::<u64>(), "every record arrived once");
    // Two inboxes of 16 x 256 KiB, the writers' batches and the records being made and
    // consumed: a few MiB over the binary's own memory. 96 MiB leaves room for allocator
    // slack and a debug build, and is a tenth of what one inbox held before (1.6 GB).
    assert!(peak_kb < 96 * 1024, "peak resident memory {peak_kb} KiB for {} MB of records", bytes / 1_000_000);
}
