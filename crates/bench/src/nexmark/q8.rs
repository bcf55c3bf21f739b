//! q8, monitor new users: the persons who registered and opened an auction in the same
//! 10 s tumbling window.
//!
//! ```sql
//! SELECT P.id, P.name, P.window_start AS starttime
//! FROM (SELECT window_start, window_end, id, name FROM TABLE(TUMBLE(TABLE person, ...))
//!       GROUP BY window_start, window_end, id, name) P
//! JOIN (SELECT window_start, window_end, seller FROM TABLE(TUMBLE(TABLE auction, ...))
//!       GROUP BY window_start, window_end, seller) A
//! ON P.window_start = A.window_start AND P.window_end = A.window_end AND P.id = A.seller
//! ```
//!
//! The sellers of each window are made distinct first (the `GROUP BY` of the auction
//! side: a seller with three auctions in a window counts once), then a window join pairs
//! them with the persons of the same window.

use super::{Event, Text};
use sluice::prelude::*;
use std::time::Duration;

/// q8's output: (person id, name, window start).
pub type NewSeller = (i64, Text, i64);

/// q8's output.
pub fn query(events: &DataStream<Event>) -> DataStream<NewSeller> {
    let window = Tumbling::event_time(Duration::from_secs(10));
    // One pass keeps what either side reads, (id, name) of a person and the seller of an
    // auction, and drops the bids: the two branches below then copy only these small rows.
    let sides = events.filter_map(|event| match event {
        Event::Person(p) => Some(JoinSide::Left((p.id, p.name))),
        Event::Auction(a) => Some(JoinSide::Right(a.seller)),
        Event::Bid(_) => None,
    });
    let persons = sides.filter_map(|side| match side {
        JoinSide::Left(person) => Some(person),
        JoinSide::Right(_) => None,
    });
    let sellers = sides
        .filter_map(|side| match side {
            JoinSide::Right(seller) => Some(seller),
            JoinSide::Left(_) => None,
        })
        .key_by(|seller| *seller)
        .window(window)
        .aggregate_with(Count, |seller, window, _auctions| (*seller, window.start))
        .uid("q8-sellers");
    persons
        .join(&sellers)
        .where_key(|person| person.0)
        .equal_to(|seller| seller.0)
        .window(window)
        .apply(|person, seller| (person.0, person.1.clone(), seller.1))
        .uid("q8-join")
}

/// `id,name,starttime`.
pub fn csv(row: &NewSeller) -> String {
    format!("{},{},{}", row.0, row.1, row.2)
}
