//! Sluice's typed DataStream API, modelled on Flink's: a [`StreamEnv`] creates sources,
//! [`DataStream`]s are transformed, keyed into [`KeyedStream`]s, windowed into
//! [`WindowedStream`]s and joined, and end in sinks.
//!
//! This crate only builds a [`sluice_dataflow::JobGraph`]; running it is the runtime's
//! business (the `sluice` facade crate adds `execute`). What Rust's types can rule out
//! they do (a window exists only on a keyed stream, a join needs equal key types); the
//! rest is checked when the graph is built, with an error that names the fix.

mod connect;
mod env;
mod join;
mod keyed;
mod per_window;
mod stream;
mod window;

pub use connect::{ConnectedKeyedStreams, ConnectedStreams, KeyedCoProcessFunction};
pub use env::StreamEnv;
pub use join::{IntervalJoin, JoinSide, JoinedStreams, WindowJoin};
pub use keyed::KeyedStream;
pub use stream::{DataStream, DataStreamSink, OutputTag};
pub use window::{Session, Sliding, Tumbling, WindowSpec, WindowedStream};
