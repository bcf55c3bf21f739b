//! q5, hot items: per 10 s window sliding every 2 s, the auction(s) with the most bids
//! (every one of them on a tie).
//!
//! ```sql
//! SELECT window_start, window_end, auction, num FROM (
//!   SELECT window_start, window_end, auction, COUNT(*) AS num
//!   FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
//!   GROUP BY window_start, window_end, auction) C
//! JOIN (... the MAX(num) of each window ...) M ON ... AND C.num = M.maxn
//! ```
//!
//! A keyed sliding-window count (its windows share 2 s panes: each bid is counted once,
//! not once per window), then [`DataStream::max_per_window`] over its results.

use super::Event;
use sluice::prelude::*;
use std::time::Duration;

/// (window start, window end, auction, bids).
pub type Hot = (i64, i64, i64, u64);

/// q5's output.
pub fn query(events: &DataStream<Event>) -> DataStream<Hot> {
    // Only the auction id is needed: dropping the rest first keeps the window's input small.
    events
        .filter_map(|event| match event {
            Event::Bid(bid) => Some(bid.auction),
            _ => None,
        })
        .key_by(|auction| *auction)
        .window(Sliding::event_time(Duration::from_secs(10), Duration::from_secs(2)))
        .aggregate_with(Count, |auction, window, bids| (window.start, window.end, *auction, bids))
        .uid("q5-counts")
        .max_per_window(|hot: &Hot| TimeWindow::new(hot.0, hot.1), |hot| hot.3)
        .uid("q5-hottest")
}

/// `window_start,window_end,auction,num`.
pub fn csv(row: &Hot) -> String {
    format!("{},{},{},{}", row.0, row.1, row.2, row.3)
}
