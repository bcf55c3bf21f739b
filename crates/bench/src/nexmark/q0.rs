//! q0, pass-through: every bid, unchanged. Measures what the source, the exchange-free
//! pipeline and the sink cost with no work of the query's own.
//!
//! ```sql
//! SELECT auction, bidder, price, dateTime, extra FROM bid
//! ```

use super::{Bid, Event};
use sluice::prelude::*;

/// The bids of the event stream (what most queries start from).
pub fn bids(events: &DataStream<Event>) -> DataStream<Bid> {
    events.filter_map(|event| match event {
        Event::Bid(bid) => Some(bid),
        _ => None,
    })
}

/// q0's output: the bids.
pub fn query(events: &DataStream<Event>) -> DataStream<Bid> {
    bids(events)
}

/// A row as `--dump` writes it: `auction,bidder,price,dateTime,extra`.
pub fn csv(bid: &Bid) -> String {
    format!("{},{},{},{},{}", bid.auction, bid.bidder, bid.price, bid.date_time, bid.extra)
}
