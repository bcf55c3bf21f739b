//! A TCP socket text source: connects to `host:port` and emits the lines it reads.
//!
//! A socket cannot be replayed, so this source runs at parallelism 1 and gives no
//! delivery guarantee across failures. It ends when the peer closes the connection.

use sluice_dataflow::{Poll, Source, SourceReader};
use sluice_types::{Record, NO_TIMESTAMP};
use std::io::{self, BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

/// The lines sent by a TCP server.
///
/// ```no_run
/// use sluice_connectors::SocketTextSource;
/// let lines = SocketTextSource::new("127.0.0.1", 9999);
/// # let _ = lines;
/// ```
pub struct SocketTextSource {
    host: String,
    port: u16,
}

impl SocketTextSource {
    /// Connects to `host:port` when the job starts.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        SocketTextSource { host: host.into(), port }
    }
}

impl Source<String> for SocketTextSource {
    /// Records have no event time until a timestamp assigner gives them one.
    fn has_timestamps(&self) -> bool {
        false
    }

    fn name(&self) -> String {
        format!("socket {}:{}", self.host, self.port)
    }
    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }
    fn create_reader(&self, _index: usize, _parallelism: usize) -> io::Result<Box<dyn SourceReader<String>>> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to {}:{}: {e}; is the server listening?", self.host, self.port),
            )
        })?;
        // A short read timeout lets the source loop emit watermarks and notice cancellation.
        stream.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(Box::new(SocketReader { reader: BufReader::new(stream), pending: Vec::new() }))
    }
}

struct SocketReader {
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
}

impl SourceReader<String> for SocketReader {
    fn poll(&mut self, out: &mut Vec<Record<String>>, max: usize) -> io::Result<Poll> {
        let limit = out.len() + max;
        while out.len() < limit {
            match self.reader.read_until(b'\n', &mut self.pending) {
                Ok(0) => {
                    if !self.pending.is_empty() {
                        let last = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
                        out.push(Record { time: NO_TIMESTAMP, value: last });
                    }
                    return Ok(if out.len() + max == limit { Poll::Finished } else { Poll::Ready });
                }
                Ok(_) if self.pending.last() == Some(&b'\n') => {
                    while matches!(self.pending.last(), Some(b'\n' | b'\r')) {
                        self.pending.pop();
                    }
                    let line = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
                    out.push(Record { time: NO_TIMESTAMP, value: line });
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Ok(if out.len() + max == limit { Poll::Pending(Duration::ZERO) } else { Poll::Ready });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Poll::Ready)
    }
}
