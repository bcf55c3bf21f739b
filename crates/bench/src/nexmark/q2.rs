//! q2, selection: the bids on auctions whose id is a multiple of 123.
//!
//! ```sql
//! SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0
//! ```

use super::Event;
use sluice::prelude::*;

/// q2's output: (auction, price).
pub fn query(events: &DataStream<Event>) -> DataStream<(i64, i64)> {
    events.filter_map(|event| match event {
        Event::Bid(bid) if bid.auction % 123 == 0 => Some((bid.auction, bid.price)),
        _ => None,
    })
}

/// `auction,price`.
pub fn csv(row: &(i64, i64)) -> String {
    format!("{},{}", row.0, row.1)
}
