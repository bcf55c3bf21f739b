//! The few Kafka transaction-admin requests librdkafka does not offer, spoken directly.
//!
//! A Kafka transaction can normally be finished only by the producer that opened it.
//! After a crash between a checkpoint's completion and its commit, the restarted job must
//! commit the transaction the dead process left open, exactly as Flink does by resuming it
//! with the old producer id and epoch. librdkafka has no such API, so this module sends
//! the coordinator the requests an admin tool would: `FindCoordinator`,
//! `DescribeTransactions` and `ListTransactions` (KIP-664) to learn a transaction's state,
//! producer id and epoch, and `EndTxn` to commit it with them. Only flexible (compact)
//! encodings are used, which every broker since Kafka 3.0 understands.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const FIND_COORDINATOR: i16 = 10;
const END_TXN: i16 = 26;
const DESCRIBE_TRANSACTIONS: i16 = 65;
const LIST_TRANSACTIONS: i16 = 66;

/// Errors worth a retry: the coordinator is moving, loading, or finishing the previous step.
const RETRIABLE: [i16; 4] = [14, 15, 16, 51];
/// `TRANSACTIONAL_ID_NOT_FOUND`.
const NOT_FOUND: i16 = 105;

/// A transaction as its coordinator describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnState {
    /// `Empty`, `Ongoing`, `PrepareCommit`, `PrepareAbort`, `CompleteCommit`,
    /// `CompleteAbort`, `Dead` or `PrepareEpochFence`; `NotFound` for an unknown id.
    pub state: String,
    /// The producer id the transactional id is bound to.
    pub producer_id: i64,
    /// The producer epoch of the transaction.
    pub producer_epoch: i16,
}

/// A connection to one broker for transaction-admin requests.
pub struct AdminConnection {
    stream: TcpStream,
    correlation: i32,
}

/// Bytes of a request body in Kafka's flexible encoding.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i8(&mut self, v: i8) -> &mut Self {
        self.0.push(v as u8);
        self
    }
    fn uvarint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn compact_str(&mut self, s: &str) -> &mut Self {
        self.uvarint(s.len() as u64 + 1);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn compact_len(&mut self, n: usize) -> &mut Self {
        self.uvarint(n as u64 + 1)
    }
    fn no_tags(&mut self) -> &mut Self {
        self.uvarint(0)
    }
}

/// Reads a response in Kafka's flexible encoding.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated Kafka response")
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or_else(truncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn i16(&mut self) -> io::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn i32(&mut self) -> io::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> io::Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn uvarint(&mut self) -> io::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(truncated())
    }
    /// A compact (nullable) string; null reads as empty.
    fn compact_str(&mut self) -> io::Result<String> {
        let len = self.uvarint()?;
        if len == 0 {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(self.take(len as usize - 1)?).into_owned())
    }
    fn compact_len(&mut self) -> io::Result<usize> {
        Ok(self.uvarint()?.saturating_sub(1) as usize)
    }
    fn skip_tags(&mut self) -> io::Result<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let len = self.uvarint()? as usize;
            self.take(len)?;
        }
        Ok(())
    }
}

fn protocol_error(what: &str, code: i16) -> io::Error {
    io::Error::other(format!("{what} failed with Kafka error code {code}"))
}

impl AdminConnection {
    /// Connects to `address` (`host:port`).
    pub fn connect(address: &str, timeout: Duration) -> io::Result<Self> {
        let addr = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for {address}")))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(AdminConnection { stream, correlation: 0 })
    }

    /// Sends one request (header version 2) and returns the response body after its
    /// header (version 1).
    fn call(&mut self, api_key: i16, api_version: i16, body: &Body) -> io::Result<Vec<u8>> {
        self.correlation += 1;
        let mut header = Body::default();
        header.i16(api_key).i16(api_version).i32(self.correlation);
        let client = b"sluice-txn-admin";
        header.i16(client.len() as i16);
        header.0.extend_from_slice(client);
        header.no_tags();
        let size = (header.0.len() + body.0.len()) as i32;
        let mut frame = Vec::with_capacity(size as usize + 4);
        frame.extend_from_slice(&size.to_be_bytes());
        frame.extend_from_slice(&header.0);
        frame.extend_from_slice(&body.0);
        self.stream.write_all(&frame)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut response = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        self.stream.read_exact(&mut response)?;
        let mut r = Reader { bytes: &response, at: 0 };
        if r.i32()? != self.correlation {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "Kafka response out of order"));
        }
        r.skip_tags()?;
        Ok(response[r.at..].to_vec())
    }

    /// The broker coordinating `transactional_id`, as `host:port`.
    pub fn find_transaction_coordinator(&mut self, transactional_id: &str) -> io::Result<Result<String, i16>> {
        let mut body = Body::default();
        body.compact_str(transactional_id).i8(1).no_tags();
        let response = self.call(FIND_COORDINATOR, 3, &body)?;
        let mut r = Reader { bytes: &response, at: 0 };
        r.i32()?; // throttle
        let error = r.i16()?;
        r.compact_str()?; // message
        r.i32()?; // node id
        let host = r.compact_str()?;
        let port = r.i32()?;
        Ok(if error == 0 { Ok(format!("{host}:{port}")) } else { Err(error) })
    }

    /// Describes one transactional id (the connection must be to its coordinator).
    pub fn describe_transaction(&mut self, transactional_id: &str) -> io::Result<Result<TxnState, i16>> {
        let mut body = Body::default();
        body.compact_len(1).compact_str(transactional_id).no_tags();
        let response = self.call(DESCRIBE_TRANSACTIONS, 0, &body)?;
        let mut r = Reader { bytes: &response, at: 0 };
        r.i32()?;
        if r.compact_len()? != 1 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "DescribeTransactions: expected one state"));
        }
        let error = r.i16()?;
        r.compact_str()?;
        let state = r.compact_str()?;
        r.i32()?; // timeout
        r.i64()?; // start time
        let producer_id = r.i64()?;
        let producer_epoch = r.i16()?;
        Ok(match error {
            0 => Ok(TxnState { state, producer_id, producer_epoch }),
            NOT_FOUND => Ok(TxnState { state: "NotFound".into(), producer_id: -1, producer_epoch: -1 }),
            code => Err(code),
        })
    }

    /// The transactional ids this broker coordinates whose state is one of `states`.
    pub fn list_transactions(&mut self, states: &[&str]) -> io::Result<Vec<String>> {
        let mut body = Body::default();
        body.compact_len(states.len());
        for state in states {
            body.compact_str(state);
        }
        body.compact_len(0).no_tags();
        let response = self.call(LIST_TRANSACTIONS, 0, &body)?;
        let mut r = Reader { bytes: &response, at: 0 };
        r.i32()?;
        let error = r.i16()?;
        if error != 0 {
            return Err(protocol_error("ListTransactions", error));
        }
        for _ in 0..r.compact_len()? {
            r.compact_str()?;
        }
        let mut ids = Vec::new();
        for _ in 0..r.compact_len()? {
            ids.push(r.compact_str()?);
            r.i64()?;
            r.compact_str()?;
            r.skip_tags()?;
        }
        Ok(ids)
    }

    /// Ends a transaction as its producer would (the connection must be to its coordinator).
    pub fn end_transaction(&mut self, transactional_id: &str, txn: &TxnState, commit: bool) -> io::Result<i16> {
        let mut body = Body::default();
        body.compact_str(transactional_id).i64(txn.producer_id).i16(txn.producer_epoch).i8(commit as i8).no_tags();
        let response = self.call(END_TXN, 3, &body)?;
        let mut r = Reader { bytes: &response, at: 0 };
        r.i32()?;
        r.i16()
    }
}

/// Runs `attempt` against the coordinator of `transactional_id` until it gives an answer
/// that is not a retriable error, or `timeout` passes.
fn with_coordinator<R>(
    bootstrap: &str,
    transactional_id: &str,
    timeout: Duration,
    mut attempt: impl FnMut(&mut AdminConnection) -> io::Result<Result<R, i16>>,
) -> io::Result<R> {
    let deadline = Instant::now() + timeout;
    let io_timeout = timeout.min(Duration::from_secs(10));
    let mut last = String::new();
    while Instant::now() < deadline {
        let outcome = (|| {
            let mut any = AdminConnection::connect(bootstrap.split(',').next().unwrap_or(bootstrap), io_timeout)?;
            let address = match any.find_transaction_coordinator(transactional_id)? {
                Ok(address) => address,
                Err(code) => return Ok(Err(code)),
            };
            let mut coordinator = AdminConnection::connect(&address, io_timeout)?;
            attempt(&mut coordinator)
        })();
        match outcome {
            Ok(Ok(result)) => return Ok(result),
            Ok(Err(code)) if RETRIABLE.contains(&code) => last = format!("Kafka error code {code}"),
            Ok(Err(code)) => return Err(protocol_error("a transaction request", code)),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer about transaction '{transactional_id}' within {timeout:?}: {last}"),
    ))
}

/// Describes a transaction by asking its coordinator.
pub fn describe(bootstrap: &str, transactional_id: &str, timeout: Duration) -> io::Result<TxnState> {
    with_coordinator(bootstrap, transactional_id, timeout, |c| c.describe_transaction(transactional_id))
}

/// What [`commit_resumed`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// The transaction was open with the expected producer id and epoch: it is committed now.
    Committed,
    /// It had already been committed (or its id moved on to a later producer epoch, which
    /// only happens after it was finished).
    AlreadyDone,
}

/// Commits the transaction a producer with `expected`'s id and epoch left open under
/// `transactional_id`, unless that already happened. A transaction found aborted is an
/// error: its records are lost (typically it outlived the transaction timeout).
pub fn commit_resumed(
    bootstrap: &str,
    transactional_id: &str,
    expected: &TxnState,
    timeout: Duration,
) -> io::Result<ResumeOutcome> {
    with_coordinator(bootstrap, transactional_id, timeout, |c| {
        let current = match c.describe_transaction(transactional_id)? {
            Ok(current) => current,
            Err(code) => return Ok(Err(code)),
        };
        let same = current.producer_id == expected.producer_id && current.producer_epoch == expected.producer_epoch;
        match current.state.as_str() {
            "Ongoing" if same => match c.end_transaction(transactional_id, expected, true)? {
                0 => Ok(Ok(ResumeOutcome::Committed)),
                code => Ok(Err(code)),
            },
            "PrepareCommit" | "CompleteCommit" if same => Ok(Ok(ResumeOutcome::AlreadyDone)),
            "PrepareAbort" | "CompleteAbort" | "Empty" | "NotFound" | "Dead" if same || current.producer_id < 0 => {
                Err(io::Error::other(format!(
                    "transaction '{transactional_id}' of a completed checkpoint was aborted before it could be \
                     committed (state {}): its records are lost; raise the sink's transaction timeout above the \
                     longest time a job may stay down",
                    current.state
                )))
            }
            // A later epoch: a newer producer initialised this id, which it does only after
            // the transaction was finished.
            _ if current.producer_id != expected.producer_id || current.producer_epoch > expected.producer_epoch => {
                Ok(Ok(ResumeOutcome::AlreadyDone))
            }
            // The coordinator is between states; ask again.
            _ => Ok(Err(51)),
        }
    })
}

/// The ids of open (`Ongoing`) transactions on every broker in `brokers` whose id starts
/// with `prefix`.
pub fn list_open(brokers: &[String], prefix: &str, timeout: Duration) -> io::Result<Vec<String>> {
    list_ids(brokers, prefix, &["Ongoing"], timeout)
}

/// The transactional ids in any of `states` (every state if empty) on every broker in
/// `brokers` whose id starts with `prefix`.
pub fn list_ids(brokers: &[String], prefix: &str, states: &[&str], timeout: Duration) -> io::Result<Vec<String>> {
    let mut ids = Vec::new();
    for broker in brokers {
        let mut c = AdminConnection::connect(broker, timeout)?;
        ids.extend(c.list_transactions(states)?.into_iter().filter(|id| id.starts_with(prefix)));
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_compact_strings_round_trip() {
        let mut body = Body::default();
        body.uvarint(300).compact_str("héllo").compact_len(0).i64(-2).no_tags();
        let mut r = Reader { bytes: &body.0, at: 0 };
        assert_eq!(r.uvarint().unwrap(), 300);
        assert_eq!(r.compact_str().unwrap(), "héllo");
        assert_eq!(r.compact_len().unwrap(), 0);
        assert_eq!(r.i64().unwrap(), -2);
        r.skip_tags().unwrap();
        assert_eq!(r.at, body.0.len());
        assert!(r.i16().is_err(), "reading past the end is an error, not a panic");
    }
}
