//! The built-in operators: stateless transformations, keyed process functions with state
//! and timers, rolling keyed aggregations, and windows.
//!
//! They are ordinary [`crate::Operator`]s; the API crate creates them, the runtime never
//! names them.

mod keyed;
mod stateless;
mod window;

pub use keyed::{
    AggregateFunction, Count, KeyFn, KeyedContext, KeyedProcessFunction, KeyedProcessOperator, RollingAggregate,
    RollingReduce,
};
pub use stateless::{FilterOp, FlatMapOp, MapOp};
pub use window::{
    AggregateWindow, DropLate, LatePolicy, LateToSideOutput, ProcessWindow, ReduceWindow, WindowAssigner,
    WindowFunction, WindowOperator, WindowOutput, WindowTime,
};
