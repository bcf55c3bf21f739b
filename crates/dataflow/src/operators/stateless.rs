//! Stateless operators over whole batches: the loops are monomorphic, so a chain of them
//! costs one virtual call per batch and nothing per record beyond the user's function.

use crate::operator::{Operator, Output};
use sluice_types::Record;
use std::marker::PhantomData;

/// Applies a function to each value.
pub struct MapOp<F, In, Out> {
    f: F,
    _types: PhantomData<fn(In) -> Out>,
}

impl<F, In, Out> MapOp<F, In, Out> {
    /// A map with `f`.
    pub fn new(f: F) -> Self {
        MapOp { f, _types: PhantomData }
    }
}

impl<F: Fn(In) -> Out + Send, In, Out: Send + 'static> Operator<In, Out> for MapOp<F, In, Out> {
    fn process_batch(&mut self, batch: Vec<Record<In>>, out: &mut Output<Out>) {
        let f = &self.f;
        // Collecting from the input's own iterator reuses its allocation when the record
        // types have the same layout.
        let mapped: Vec<Record<Out>> = batch.into_iter().map(|r| Record { time: r.time, value: f(r.value) }).collect();
        out.emit_batch(mapped);
    }
}

/// Keeps the values a predicate accepts.
pub struct FilterOp<F> {
    f: F,
}

impl<F> FilterOp<F> {
    /// A filter with predicate `f`.
    pub fn new(f: F) -> Self {
        FilterOp { f }
    }
}

impl<F: Fn(&T) -> bool + Send, T: Send + 'static> Operator<T, T> for FilterOp<F> {
    fn process_batch(&mut self, batch: Vec<Record<T>>, out: &mut Output<T>) {
        let f = &self.f;
        // Collecting a filtered iterator of the batch reuses the batch's allocation.
        let kept: Vec<Record<T>> = batch.into_iter().filter(|r| f(&r.value)).collect();
        out.emit_batch(kept);
    }
}

/// Maps each value to any number of values.
pub struct FlatMapOp<F, In> {
    f: F,
    _types: PhantomData<fn(In)>,
}

impl<F, In> FlatMapOp<F, In> {
    /// A flat map with `f`.
    pub fn new(f: F) -> Self {
        FlatMapOp { f, _types: PhantomData }
    }
}

impl<F, In, I> Operator<In, I::Item> for FlatMapOp<F, In>
where
    F: Fn(In) -> I + Send,
    I: IntoIterator,
    I::Item: Send + 'static,
{
    fn process_batch(&mut self, batch: Vec<Record<In>>, out: &mut Output<I::Item>) {
        for record in batch {
            for value in (self.f)(record.value) {
                out.emit(value, record.time);
            }
        }
    }
}
