//! The one encoding of state in snapshots: `postcard` (maintained, compact, serde-based)
//! for every value an operator, source or sink puts into a checkpoint.
//!
//! The encoding carries no type tags, so a changed type is found only when the bytes do
//! not fit it (they usually do not; a change of `u32` to `u64` can go unnoticed, as
//! with Flink's POJO-less serializers). A state that no longer decodes is a state written
//! by another type (the job's code
//! changed since the checkpoint). Restarting cannot heal that, so [`decode_or_fail`] ends
//! the operator as a failure that fails the job instead of restarting it.

use serde::{de::DeserializeOwned, Serialize};

/// Restored state that cannot be read as the type the operator asks for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot read the restored state of {what}: {reason}; it was written by another type (was the state's type \
     changed since the checkpoint?). Start from a checkpoint written by this version of the job, or give the \
     operator a new uid and allow non-restored state (its old state is then dropped)"
)]
pub struct StateError {
    /// What the state belongs to.
    pub what: String,
    /// Why it did not decode.
    pub reason: String,
}

/// Serializes state for a snapshot.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_else(|e| unencodable::<T>(e))
}

/// [`encode`], appended to `out`: for state written in pieces into one buffer (the pieces,
/// one after another, decode as the sequence or struct they make up).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Straight into `out`: no buffer moved in and out per call (state is written in many
    // small pieces, one per entry), and whole slices copied at once.
    struct Append<'a>(&'a mut Vec<u8>);
    impl postcard::ser_flavors::Flavor for Append<'_> {
        type Output = ();
        #[inline]
        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            self.0.extend_from_slice(data);
            Ok(())
        }
        #[inline]
        fn try_push(&mut self, data: u8) -> postcard::Result<()> {
            self.0.push(data);
            Ok(())
        }
        fn finalize(self) -> postcard::Result<()> {
            Ok(())
        }
    }
    postcard::serialize_with_flavor(value, Append(out)).unwrap_or_else(|e| unencodable::<T>(e))
}

/// A state whose `Serialize` fails (a hand-written one: serde's derive always encodes).
/// The same state fails again after a restart, so the job fails at once, saying which type.
#[cold]
fn unencodable<T: ?Sized>(error: postcard::Error) -> ! {
    sluice_types::failure::fail_unrecoverable(format!(
        "a state of type {} cannot be encoded into a checkpoint: {error}; its Serialize implementation fails \
         for this value. Fix that implementation (or derive it), then start again from the last checkpoint",
        std::any::type_name::<T>()
    ))
}

/// How many bytes `value` takes encoded (what it would weigh on a network or in a
/// checkpoint), computed without writing it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(0)
}

/// Deserializes state from a snapshot; the whole input must be used.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StateError> {
    let error = |reason: String| StateError { what: what.to_string(), reason };
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(error(format!("{} bytes left over", rest.len()))),
        Err(e) => Err(error(e.to_string())),
    }
}

/// [`decode`], ending the calling operator with the [`StateError`]'s message when it fails,
/// as a failure no restart heals ([`sluice_types::failure`]).
pub fn decode_or_fail<T: DeserializeOwned>(bytes: &[u8], what: &str) -> T {
    decode(bytes, what).unwrap_or_else(|e| sluice_types::failure::fail_unrecoverable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_another_type_is_an_error_naming_the_fix() {
        let bytes = encode(&vec![(1u64, "a".to_string())]);
        assert_eq!(decode::<Vec<(u64, String)>>(&bytes, "x").unwrap(), vec![(1, "a".to_string())]);
        // A String where a u64 was written: the length it reads runs past the end.
        let err = decode::<String>(&encode(&u64::MAX), "window 'w'").unwrap_err().to_string();
        assert!(err.contains("window 'w'") && err.contains("new uid"), "{err}");
        assert!(decode::<u8>(&encode(&(1u8, 2u8)), "x").unwrap_err().reason.contains("left over"));
    }
}
