//! Errors of tasks (at run time) and of job graphs (at build time).

use std::io;

/// The result of a step of a task.
pub type TaskResult<T = ()> = Result<T, TaskError>;

/// Why a task stopped.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A user function panicked.
    #[error("operator '{operator}' (subtask {subtask} of {parallelism}) panicked: {message}")]
    Panicked {
        /// Name of the operator whose function panicked.
        operator: String,
        /// Zero-based subtask index.
        subtask: usize,
        /// Parallelism of the operator.
        parallelism: usize,
        /// The panic message.
        message: String,
    },
    /// A source or sink failed on I/O.
    #[error("{operator} (subtask {subtask}): {what}: {source}")]
    Io {
        /// Name of the source or sink.
        operator: String,
        /// Zero-based subtask index.
        subtask: usize,
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A failure that a restart cannot heal (restored state of another type, a source given
    /// another operator's state, a missing path): the job fails instead of restarting.
    #[error("{operator} (subtask {subtask}): {message}")]
    Unrecoverable {
        /// Name of the operator, source or sink.
        operator: String,
        /// Zero-based subtask index.
        subtask: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Checkpointing failed (storage, too many failed checkpoints, a failed commit).
    #[error("checkpointing: {0}")]
    Checkpoint(String),
    /// A connection to another process of the job failed (the process stopped, was
    /// killed or cannot be reached).
    #[error("network: {0}")]
    Network(String),
    /// A downstream task is gone: the job is being cancelled or has failed elsewhere.
    #[error("a downstream task has stopped")]
    Disconnected,
}

impl TaskError {
    /// Whether this error is only the echo of another task's failure or of a cancellation.
    pub fn is_secondary(&self) -> bool {
        matches!(self, TaskError::Disconnected)
    }

    /// Whether restarting the job could make this failure go away. Configuration and
    /// restored state do not change between attempts, nor does a path that is missing or
    /// not allowed: those fail the job at once, with their message, instead of restarting
    /// it forever.
    pub fn is_retryable(&self) -> bool {
        match self {
            TaskError::Unrecoverable { .. } => false,
            TaskError::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::IsADirectory
                    | io::ErrorKind::ReadOnlyFilesystem
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::Unsupported
            ),
            _ => true,
        }
    }
}

/// A job graph that cannot run; the message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job graph: {0}")]
pub struct GraphError(pub String);

pub use sluice_types::failure::{fail_unrecoverable, Unrecoverable};
