//! What the runtime tells the user without any set-up of theirs: unless the program has
//! installed its own `tracing` subscriber, warnings and errors (a task's failure, each
//! restart with its cause, a checkpoint that failed) go to stderr. `RUST_LOG` still
//! filters, in the `target=level,level` form (`RUST_LOG=info` shows checkpoints too,
//! `RUST_LOG=off` silences everything).

use std::sync::Once;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the stderr reporter once, if no subscriber is set yet.
pub(crate) fn init() {
    init_logging(tracing::Level::WARN);
}

/// Installs a stderr `tracing` subscriber showing `default` and above unless `RUST_LOG`
/// says otherwise, if no subscriber is set yet (for the cluster's roles, which want
/// `info`; a job gets warnings by default).
pub fn init_logging(default: tracing::Level) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if tracing::dispatcher::has_been_set() {
            return;
        }
        let filter = match std::env::var("RUST_LOG") {
            Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
                eprintln!("RUST_LOG='{spec}' is not understood ({e}); showing warnings and errors");
                Targets::new().with_default(default)
            }),
            Err(_) => Targets::new().with_default(default),
        };
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
        // Another library may race us to it; then its subscriber reports.
        let _ = tracing_subscriber::registry().with(layer).with(filter).try_init();
    });
}
