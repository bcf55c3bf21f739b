//! The command-line flags every job binary understands, as a `clap` argument group a job
//! flattens into its own parser: unknown flags are refused, a flag is never taken as
//! another flag's value, a bad number names its flag, and `--help` lists them all. A job
//! binary depends on `clap` (with its `derive` feature) for its own parser.
//!
//! ```
//! use clap::Parser;
//! use sluice::prelude::*;
//!
//! /// My job.
//! #[derive(Parser)]
//! struct Cli {
//!     /// Where the results go.
//!     #[arg(long)]
//!     out: String,
//!     #[command(flatten)]
//!     job: sluice::JobArgs,
//! }
//!
//! let cli = Cli::try_parse_from(["my-job", "--out", "/tmp/x", "--parallelism", "3"]).unwrap();
//! let env = StreamEnv::new();
//! cli.job.apply(&env);
//! assert_eq!(env.config().parallelism, 3);
//! assert!(Cli::try_parse_from(["my-job", "--out", "/tmp/x", "--paralelism", "3"]).is_err());
//! ```

use sluice_api::StreamEnv;
use sluice_dataflow::StartFrom;
use std::time::Duration;

/// Flags of a job binary: parallelism, checkpointing and where to start from.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct JobArgs {
    /// Default parallelism of the job's operators (the job's own default if not given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=32768))]
    pub parallelism: Option<u64>,
    /// Turns on exactly-once checkpoints, written to this folder; a job started again
    /// with the same name and folder resumes from its latest checkpoint.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<String>,
    /// Time between checkpoints, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "checkpoint_dir")]
    pub checkpoint_interval_ms: u64,
    /// Ignores existing checkpoints and starts from the beginning of the input.
    #[arg(long, requires = "checkpoint_dir", conflicts_with = "from")]
    pub fresh: bool,
    /// Starts from this checkpoint or savepoint folder (the one holding _manifest.json).
    #[arg(long, value_name = "PATH", requires = "checkpoint_dir")]
    pub from: Option<String>,
    /// Drops restored state that no operator of this job claims by uid, instead of
    /// refusing to start.
    #[arg(long, requires = "checkpoint_dir")]
    pub allow_non_restored_state: bool,
    /// Resumes even when the newest checkpoint whose output was committed cannot be read,
    /// from an older one or from nothing: the output committed since is written again
    /// (readers see it twice). Without it such a job refuses to start.
    #[arg(long, requires = "checkpoint_dir")]
    pub allow_duplicates: bool,
    /// A task inside one piece of work this long is stalled and the process exits to be
    /// restarted from the latest checkpoint (ms; 0: never; default 60 000).
    #[arg(long, value_name = "MS")]
    pub stall_timeout_ms: Option<u64>,
    /// A source reading records while its watermark stands still this long is reported
    /// (ms; 0: never; default 60 000).
    #[arg(long, value_name = "MS")]
    pub watermark_stall_timeout_ms: Option<u64>,
}

impl JobArgs {
    /// Applies the flags to `env` (checkpointing first, then what depends on it).
    pub fn apply<'a>(&self, env: &'a StreamEnv) -> &'a StreamEnv {
        if let Some(p) = self.parallelism {
            env.set_parallelism(p as usize);
        }
        let timeout = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        if let Some(ms) = self.stall_timeout_ms {
            env.set_stall_timeout(timeout(ms));
        }
        if let Some(ms) = self.watermark_stall_timeout_ms {
            env.set_watermark_stall_timeout(timeout(ms));
        }
        if let Some(dir) = &self.checkpoint_dir {
            env.enable_checkpointing(Duration::from_millis(self.checkpoint_interval_ms), dir);
            if self.fresh {
                env.start_from(StartFrom::Fresh);
            }
            if let Some(path) = &self.from {
                env.start_from(StartFrom::Path(path.clone()));
            }
            if self.allow_non_restored_state {
                env.allow_non_restored_state();
            }
            if self.allow_duplicates {
                env.allow_duplicate_output();
            }
        }
        env
    }
}
