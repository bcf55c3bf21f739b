//! q7, highest bid: per 10 s tumbling window, the bids whose price is the window's
//! highest (every one of them on a tie).
//!
//! ```sql
//! SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra
//! FROM (SELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))) B
//! JOIN (SELECT window_start, window_end, MAX(price) AS maxprice
//!       FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
//!       GROUP BY window_start, window_end) M
//! ON B.window_start = M.window_start AND B.window_end = M.window_end AND B.price = M.maxprice
//! ```
//!
//! In two steps, so that the work spreads over the subtasks: per auction and window, the
//! bids at that auction's highest price (an incremental aggregate, in parallel by
//! auction); then, per window, those of the highest price overall
//! ([`DataStream::max_per_window`], over a few records per auction).

use super::{Event, Text};
use serde::{Deserialize, Serialize};
use sluice::prelude::*;
use std::time::Duration;

/// The columns of a bid that q7 selects (the channel and URL are dropped where the event
/// was made, as Flink's planner projects them away).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bid {
    pub auction: i64,
    pub price: i64,
    pub bidder: i64,
    pub date_time: i64,
    pub extra: Text,
}

/// q7's output: the winning bids, with their window.
pub type Highest = (i64, i64, Bid);

/// q7's output.
pub fn query(events: &DataStream<Event>) -> DataStream<Highest> {
    events
        .filter_map(|event| match event {
            Event::Bid(b) => Some(Bid {
                auction: b.auction,
                price: b.price,
                bidder: b.bidder,
                date_time: b.date_time,
                extra: b.extra,
            }),
            _ => None,
        })
        .key_by(|bid| bid.auction)
        .window(Tumbling::event_time(Duration::from_secs(10)))
        .aggregate_with(HighestBids, |_auction, window, bids| (window.start, window.end, bids))
        .uid("q7-per-auction")
        .flat_map(|(start, end, bids)| bids.into_iter().map(move |bid| (start, end, bid)))
        .max_per_window(|row: &Highest| TimeWindow::new(row.0, row.1), |row| row.2.price)
        .uid("q7-highest")
}

/// The bids at the highest price seen, incrementally.
#[derive(Clone)]
pub struct HighestBids;

impl AggregateFunction<Bid> for HighestBids {
    type Acc = Vec<Bid>;
    type Out = Vec<Bid>;
    fn create_accumulator(&self) -> Vec<Bid> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<Bid>, bid: Bid) {
        match acc.first().map(|best| bid.price.cmp(&best.price)) {
            None | Some(std::cmp::Ordering::Greater) => *acc = vec![bid],
            Some(std::cmp::Ordering::Equal) => acc.push(bid),
            Some(std::cmp::Ordering::Less) => {}
        }
    }
    fn get_result(&self, acc: &Vec<Bid>) -> Vec<Bid> {
        acc.clone()
    }
    fn merge(&self, a: Vec<Bid>, b: Vec<Bid>) -> Vec<Bid> {
        let mut merged = a;
        for bid in b {
            self.add(&mut merged, bid);
        }
        merged
    }
}

/// `auction,price,bidder,dateTime,extra`.
pub fn csv(row: &Highest) -> String {
    let bid = &row.2;
    format!("{},{},{},{},{}", bid.auction, bid.price, bid.bidder, bid.date_time, bid.extra)
}
