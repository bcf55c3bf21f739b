//! A bounded source over the items of a collection (for tests and examples).

use sluice_dataflow::{Poll, Source, SourceReader};
use sluice_types::{Data, Record, NO_TIMESTAMP};
use std::io;
use std::sync::Arc;

/// Emits the items of a vector; subtask `s` of `p` emits items `s, s+p, ...` in order.
///
/// ```
/// use sluice_connectors::CollectionSource;
/// let source = CollectionSource::new(vec!["a", "b", "c"]);
/// # let _ = source;
/// ```
pub struct CollectionSource<T> {
    items: Arc<Vec<T>>,
}

impl<T> CollectionSource<T> {
    /// A source over `items`.
    pub fn new(items: Vec<T>) -> Self {
        CollectionSource { items: Arc::new(items) }
    }
}

impl<T: Data + Sync> Source<T> for CollectionSource<T> {
    /// Records have no event time until a timestamp assigner gives them one.
    fn has_timestamps(&self) -> bool {
        false
    }

    fn name(&self) -> String {
        "collection".into()
    }
    fn create_reader(&self, index: usize, parallelism: usize) -> io::Result<Box<dyn SourceReader<T>>> {
        Ok(Box::new(CollectionReader { items: self.items.clone(), next: index, stride: parallelism }))
    }
}

struct CollectionReader<T> {
    items: Arc<Vec<T>>,
    next: usize,
    stride: usize,
}

impl<T: Data + Sync> SourceReader<T> for CollectionReader<T> {
    fn poll(&mut self, out: &mut Vec<Record<T>>, max: usize) -> io::Result<Poll> {
        if self.next >= self.items.len() {
            return Ok(Poll::Finished);
        }
        let limit = out.len() + max;
        while out.len() < limit && self.next < self.items.len() {
            out.push(Record { time: NO_TIMESTAMP, value: self.items[self.next].clone() });
            self.next += self.stride;
        }
        Ok(Poll::Ready)
    }

    fn position(&self) -> Option<Vec<u8>> {
        Some((self.next as u64).to_le_bytes().to_vec())
    }

    fn seek(&mut self, position: &[u8]) -> io::Result<()> {
        let bytes: [u8; 8] = position
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a collection position is 8 bytes"))?;
        self.next = u64::from_le_bytes(bytes) as usize;
        Ok(())
    }
}
