//! One authenticated TCP connection between two processes of a job, multiplexing every
//! channel between them in both directions. The sending side is what a producer task's
//! [`Target`](sluice_dataflow::Target) writes to ([`Connection::remote_channel`]): frames
//! are written whole under a lock, so tasks sharing the connection interleave by frame.
//! The receiving side is one reader thread per connection: it decodes a batch with the
//! consumer node's decoder and puts it into the consumer task's inbox on its channel, so
//! the task cannot tell it from a local batch; a credit frame gives a credit back to the
//! local producer of that channel.
//!
//! The reader never waits on one channel at the cost of the others: a producer sends a
//! batch only with a credit, and a consumer's inbox has room for all of its channels'
//! credits, so a batch arriving always fits. When the connection fails, every producer
//! waiting for credit on it fails, and the failure is reported (the attempt then fails
//! and is restarted, as for any task failure).

use crate::frame::{ChannelId, Frame};
use crate::handshake::{self, HandshakeError, Identity};
use crate::tls::{Tls, TlsStream};
use sluice_dataflow::{Credit, CreditReturn, Envelope, Message, RemoteChannel, TaskError, TaskResult};
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Turns the bytes of a batch into the `Vec<Record<T>>` its consumer expects.
pub type Decoder = sluice_dataflow::BatchDecoder;

/// Where the reader puts what arrives on a channel of which this process is the consumer.
struct Inbound {
    inbox: SyncSender<Envelope>,
    channel: u32,
    decode: Decoder,
}

#[derive(Default)]
struct Routes {
    inbound: HashMap<ChannelId, Inbound>,
    /// Credits of channels of which this process is the producer.
    credits: HashMap<ChannelId, Arc<Credit>>,
    /// Where control messages from the peer go, with the peer's index.
    control: Option<std::sync::mpsc::Sender<(u32, Vec<u8>)>>,
}

/// A connection to one peer process.
pub struct Connection {
    peer: u32,
    writer: Mutex<BufWriter<Box<dyn Write + Send>>>,
    reader: Mutex<Option<Box<dyn Read + Send>>>,
    /// The socket under both, to close the sending direction.
    socket: TcpStream,
    routes: Mutex<Routes>,
    failed: Mutex<Option<String>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.peer).finish()
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The handshake failed.
    #[error("connecting to process {peer} at {addr}: {source}")]
    Handshake {
        /// The peer's index.
        peer: u32,
        /// Its address.
        addr: SocketAddr,
        /// What failed.
        source: HandshakeError,
    },
    /// No connection within the deadline.
    #[error("connecting to process {peer} at {addr}: no connection within {within:?}: {last}")]
    Timeout {
        /// The peer's index.
        peer: u32,
        /// Its address.
        addr: SocketAddr,
        /// The deadline.
        within: Duration,
        /// The last error.
        last: String,
    },
}

/// A socket after its handshakes, plain or TLS.
enum Opened {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Read for Opened {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Opened::Plain(s) => s.read(buf),
            Opened::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Opened {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Opened::Plain(s) => s.write(buf),
            Opened::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Opened::Plain(s) => s.flush(),
            Opened::Tls(s) => s.flush(),
        }
    }
}

impl Opened {
    /// Opens TLS on `socket` when it is configured: `server` for the accepting end.
    fn open(socket: TcpStream, tls: Option<&Tls>, server: bool) -> std::io::Result<Opened> {
        Ok(match tls {
            None => Opened::Plain(socket),
            Some(tls) => {
                let session = if server { tls.server()? } else { tls.client(socket.peer_addr()?.ip())? };
                Opened::Tls(Box::new(TlsStream::handshake(session, socket)?))
            }
        })
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Opened::Plain(s) => s,
            Opened::Tls(s) => s.socket(),
        }
    }
}

impl Connection {
    fn new(peer: u32, opened: Opened) -> std::io::Result<Arc<Self>> {
        let socket = opened.socket().try_clone()?;
        socket.set_nodelay(true)?;
        socket.set_read_timeout(None)?;
        let (reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match opened {
            Opened::Plain(stream) => (Box::new(stream.try_clone()?), Box::new(stream)),
            Opened::Tls(stream) => {
                let (reader, writer) = crate::tls::split(*stream)?;
                (Box::new(reader), Box::new(writer))
            }
        };
        Ok(Arc::new(Connection {
            peer,
            writer: Mutex::new(BufWriter::with_capacity(64 << 10, writer)),
            reader: Mutex::new(Some(reader)),
            socket,
            routes: Mutex::new(Routes::default()),
            failed: Mutex::new(None),
        }))
    }

    /// Dials `peer` at `addr` until it answers or `within` passes (the peer may still be
    /// starting), then opens TLS if it is configured and authenticates.
    pub fn dial(
        me: &Identity,
        tls: Option<&Tls>,
        peer: u32,
        addr: SocketAddr,
        within: Duration,
    ) -> Result<Arc<Self>, ConnectError> {
        let deadline = Instant::now() + within;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(stream) => {
                    let failed = |source| ConnectError::Handshake { peer, addr, source };
                    let _ = stream.set_read_timeout(Some(within));
                    let mut opened = Opened::open(stream, tls, false).map_err(|e| failed(HandshakeError::Io(e)))?;
                    handshake::dial(&mut opened, me).map_err(failed)?;
                    return Connection::new(peer, opened).map_err(|e| ConnectError::Handshake {
                        peer,
                        addr,
                        source: HandshakeError::Io(e),
                    });
                }
                Err(e) => {
                    last = e.to_string();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Err(ConnectError::Timeout { peer, addr, within, last })
    }

    /// Accepts connections on `listener` until one from each of `peers` is authenticated,
    /// or `within` passes. A connection that fails its handshake (wrong secret, another
    /// job or attempt) is refused, logged and does not count.
    pub fn accept_all(
        listener: &TcpListener,
        me: &Identity,
        tls: Option<&Tls>,
        peers: &[u32],
        within: Duration,
    ) -> Result<HashMap<u32, Arc<Self>>, String> {
        let deadline = Instant::now() + within;
        let mut connections = HashMap::new();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        while connections.len() < peers.len() {
            if Instant::now() >= deadline {
                let missing: Vec<_> = peers.iter().filter(|p| !connections.contains_key(*p)).collect();
                return Err(format!("processes {missing:?} did not connect within {within:?}"));
            }
            match listener.accept() {
                Ok((stream, from)) => {
                    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut opened = match Opened::open(stream, tls, true) {
                        Ok(opened) => opened,
                        Err(e) => {
                            tracing::warn!(%from, error = %e, "refused a data connection");
                            continue;
                        }
                    };
                    match handshake::accept(&mut opened, me) {
                        Ok(peer) if peers.contains(&peer) && !connections.contains_key(&peer) => {
                            connections.insert(peer, Connection::new(peer, opened).map_err(|e| e.to_string())?);
                        }
                        Ok(peer) => tracing::warn!(%from, peer, "refused a data connection from an unexpected process"),
                        Err(e) => tracing::warn!(%from, error = %e, "refused a data connection"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(connections)
    }

    /// The peer's process index.
    pub fn peer(&self) -> u32 {
        self.peer
    }

    /// Routes what arrives on `id` into `inbox` as channel `channel`, decoded by `decode`.
    /// Every inbound channel is registered before its producer may send.
    pub fn expect_inbound(&self, id: ChannelId, inbox: SyncSender<Envelope>, channel: u32, decode: Decoder) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).inbound.insert(id, Inbound { inbox, channel, decode });
    }

    /// Sends control messages from the peer to `to`, tagged with the peer's index.
    pub fn expect_control(&self, to: std::sync::mpsc::Sender<(u32, Vec<u8>)>) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).control = Some(to);
    }

    /// Sends a control message to the peer.
    pub fn send_control(&self, message: Vec<u8>) -> TaskResult {
        self.send(ChannelId { node: 0, subtask: 0, channel: 0 }, &Frame::Control(message))
    }

    /// The sending end of channel `id` (this process produces, the peer consumes); the
    /// peer's credits for it arrive on this connection and go to `credit`.
    pub fn remote_channel(self: &Arc<Self>, id: ChannelId, credit: Arc<Credit>) -> Arc<dyn RemoteChannel> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).credits.insert(id, credit);
        Arc::new(RemoteSender { connection: self.clone(), id })
    }

    /// How the consumer of inbound channel `id` gives credits back to its producer.
    pub fn credit_return(self: &Arc<Self>, id: ChannelId) -> Arc<dyn CreditReturn> {
        Arc::new(RemoteCredit { connection: self.clone(), id })
    }

    fn send(&self, id: ChannelId, frame: &Frame) -> TaskResult {
        if let Some(reason) = self.failed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            tracing::debug!(peer = self.peer, %reason, "not sending on a failed connection");
            return Err(TaskError::Disconnected);
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        frame.write(id, &mut *writer).and_then(|()| writer.flush()).map_err(|e| {
            drop(writer);
            self.fail(&e.to_string());
            TaskError::Disconnected
        })
    }

    /// Marks the connection failed: producers waiting for credit on it stop waiting.
    fn fail(&self, reason: &str) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_none() {
            *failed = Some(reason.to_string());
            for credit in self.routes.lock().unwrap_or_else(|e| e.into_inner()).credits.values() {
                credit.close();
            }
        }
    }

    /// Starts the reader thread. It ends at the peer's clean close (`Ok`) or at a failure,
    /// which it also passes to `on_failure` (so the attempt can fail at once).
    pub fn start_reading(
        self: &Arc<Self>,
        on_failure: impl Fn(String) + Send + 'static,
    ) -> std::io::Result<JoinHandle<Result<(), String>>> {
        let stream = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take().expect("reading starts once");
        let connection = self.clone();
        std::thread::Builder::new().name(format!("sluice:net<-{}", self.peer)).spawn(move || {
            let result = connection.read_loop(stream);
            if let Err(reason) = &result {
                connection.fail(reason);
                on_failure(format!("the connection from process {} failed: {reason}", connection.peer));
            }
            result
        })
    }

    fn read_loop(&self, stream: Box<dyn Read + Send>) -> Result<(), String> {
        let mut input = BufReader::with_capacity(64 << 10, stream);
        // Routes may be added while reading (a job process connects before it builds its
        // tasks), so each frame looks its route up; no data frame comes before the job's
        // processes have all built theirs.
        loop {
            let read = Frame::read(&mut input).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => format!("a corrupt frame: {e}"),
                _ => format!("{e} (the peer's process stopped or was killed, or the network failed)"),
            })?;
            let Some((id, frame)) = read else {
                return Err(
                    "the peer's process closed the connection without a goodbye (it stopped or was killed)".into()
                );
            };
            if frame == Frame::Goodbye {
                return Ok(());
            }
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            if let Frame::Control(message) = frame {
                match &routes.control {
                    Some(to) => {
                        let _ = to.send((self.peer, message));
                    }
                    None => return Err("a control message, and this process expects none".into()),
                }
                continue;
            }
            if let Frame::Credit(n) = frame {
                let credit = routes.credits.get(&id).ok_or_else(|| format!("a credit for unknown channel {id:?}"))?;
                (0..n).for_each(|_| credit.release());
                continue;
            }
            let route = routes.inbound.get(&id).ok_or_else(|| format!("a frame for unknown channel {id:?}"))?;
            let message = match frame {
                Frame::Data(bytes) => Message::Data((route.decode)(&bytes)?),
                Frame::Watermark(w) => Message::Watermark(w),
                Frame::Idle(idle) => Message::Idle(idle),
                Frame::Barrier(b) => Message::Barrier(b),
                Frame::End(e) => Message::End(e),
                Frame::Credit(_) | Frame::Goodbye | Frame::Control(_) => unreachable!("handled above"),
            };
            // A consumer task that has ended takes nothing more; the reader goes on (credits
            // and the goodbye may still come). The inbox has room for every credit, so this
            // does not wait while holding the routes.
            let (inbox, channel) = (route.inbox.clone(), route.channel);
            drop(routes);
            let _ = inbox.send(Envelope { channel, message });
        }
    }

    /// Closes the sending direction on purpose (the peer's reader ends without failing).
    pub fn close(&self) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Frame::Goodbye.write(ChannelId { node: 0, subtask: 0, channel: 0 }, &mut *writer);
        let _ = writer.flush();
        drop(writer);
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
    }
}

#[derive(Debug)]
struct RemoteSender {
    connection: Arc<Connection>,
    id: ChannelId,
}

impl RemoteChannel for RemoteSender {
    fn send_data(&self, batch: Vec<u8>) -> TaskResult {
        self.connection.send(self.id, &Frame::Data(batch))
    }
    fn send_control(&self, message: &Message) -> TaskResult {
        match Frame::control(message) {
            Some(frame) => self.connection.send(self.id, &frame),
            None => Ok(()),
        }
    }
}

struct RemoteCredit {
    connection: Arc<Connection>,
    id: ChannelId,
}

impl CreditReturn for RemoteCredit {
    fn release(&self) {
        // A failed connection fails the attempt through its reader; nothing to add here.
        let _ = self.connection.send(self.id, &Frame::Credit(1));
    }
    fn close(&self) {}
}
