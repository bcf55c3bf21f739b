//! The one way for library code running inside a user function's call to fail the job
//! without a restart, where there is no error channel (a serializer given a value it can
//! never encode, restored state that does not decode): it unwinds with an
//! [`Unrecoverable`] payload, which the task's panic guard turns into an error that fails
//! the job at once instead of restarting it.

/// A panic payload that fails the job without a restart; see [`fail_unrecoverable`].
#[derive(Debug)]
pub struct Unrecoverable(pub String);

/// Ends the current operator call with an error that fails the job at once (no restart
/// would do differently). Does not run the panic hook: the job's error reports the message
/// once.
pub fn fail_unrecoverable(message: String) -> ! {
    std::panic::resume_unwind(Box::new(Unrecoverable(message)))
}
