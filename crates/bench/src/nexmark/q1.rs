//! q1, currency conversion: each bid's price in euros, `0.908 * price`, exact to three
//! decimals (kept as thousandths in an integer, as SQL's DECIMAL keeps it).
//!
//! ```sql
//! SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid
//! ```

use super::{Event, Text};
use serde::{Deserialize, Serialize};
use sluice::prelude::*;

/// A bid with its price converted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Converted {
    pub auction: i64,
    pub bidder: i64,
    /// The price in thousandths of a euro.
    pub price_milli: i64,
    pub date_time: i64,
    pub extra: Text,
}

/// q1's output.
pub fn query(events: &DataStream<Event>) -> DataStream<Converted> {
    super::q0::bids(events).map(|bid| Converted {
        auction: bid.auction,
        bidder: bid.bidder,
        price_milli: bid.price * 908,
        date_time: bid.date_time,
        extra: bid.extra,
    })
}

/// `auction,bidder,price,dateTime,extra` with the price in plain notation (`562.960`).
pub fn csv(row: &Converted) -> String {
    let (whole, milli) = (row.price_milli / 1000, row.price_milli % 1000);
    format!("{},{},{whole}.{milli:03},{},{}", row.auction, row.bidder, row.date_time, row.extra)
}
