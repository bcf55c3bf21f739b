//! Sluice's data plane between processes. A job spread over several processes keeps one
//! TCP connection per pair of them ([`Connection`]), opened with a handshake in which both
//! ends prove they hold the cluster secret and the dialer names its job and attempt
//! ([`handshake`]). Every channel between a producer subtask in one process and a
//! consumer subtask in the other travels on it, named by [`ChannelId`], as
//! [`frame::Frame`]s: encoded batches and, in order with them, watermarks, idleness,
//! barriers and the end; credits flow back the other way. A producer sends a batch only
//! with a credit of its channel, given back when the consumer task has processed a batch,
//! so a slow consumer holds back exactly its own producers and no buffer grows anywhere,
//! also not while a channel is held during barrier alignment.
//!
//! With certificates configured ([`tls`]), every connection is TLS 1.3, opened before the
//! handshake above, which then runs inside it.
//!
//! A task cannot tell a remote channel from a local one: the producer's
//! [`Target`](sluice_dataflow::Target) has a [`Path::Remote`](sluice_dataflow::Path)
//! instead of an inbox, and the consumer's inbox is fed by the connection's reader.

pub mod connection;
pub mod frame;
pub mod handshake;
pub mod tls;

pub use connection::{ConnectError, Connection, Decoder};
pub use frame::ChannelId;
pub use handshake::{HandshakeError, Identity};
pub use tls::{Tls, TlsFiles};
