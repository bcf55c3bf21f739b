//! q3, local item suggestion: an unwindowed inner join of the auctions of category 10 with
//! their sellers, when those live in Oregon, Idaho or California.
//!
//! ```sql
//! SELECT P.name, P.city, P.state, A.id
//! FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
//! WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')
//! ```
//!
//! Both inputs only ever grow (a person or an auction is never updated), so the join's
//! output is insert-only: a row, once emitted, stays true. It is built on
//! [`DataStream::split_connect`]: keyed by the person id, a seller is kept in state once seen,
//! and an auction that arrives before its seller waits in state for it. As in Flink, the
//! state grows with the input (nothing says when a seller can no longer sell).

use super::{Event, Text};
use sluice::prelude::*;

/// q3's output: (name, city, state, auction id).
pub type Suggestion = (Text, Text, Text, i64);

/// q3's output.
pub fn query(events: &DataStream<Event>) -> DataStream<Suggestion> {
    // One pass over the events splits them into the join's two inputs (two filters
    // would each get a copy of every event first).
    events
        .split_connect(|event| match event {
            // Only what the query reads travels on: (id, name, city, state) and (id, seller).
            Event::Person(p) if matches!(&*p.state, "OR" | "ID" | "CA") => {
                Some(JoinSide::Left((p.id, p.name, p.city, p.state)))
            }
            Event::Auction(a) if a.category == 10 => Some(JoinSide::Right((a.id, a.seller))),
            _ => None,
        })
        .key_by(|p| p.0, |a| a.1)
        .process(SellerJoin)
        .uid("q3-join")
}

/// The join: a seller's person record, and the auctions waiting for it.
#[derive(Clone)]
struct SellerJoin;

const SELLER: &str = "seller";
const WAITING: &str = "waiting-auctions";

/// A seller: (id, name, city, state).
type Seller = (i64, Text, Text, Text);

impl KeyedCoProcessFunction<i64, Seller, (i64, i64), Suggestion> for SellerJoin {
    fn process_element1(&mut self, (_, name, city, state): Seller, ctx: &mut KeyedContext<'_, i64, Suggestion>) {
        let waiting = ctx.list_state::<i64>(WAITING).get().to_vec();
        ctx.list_state::<i64>(WAITING).update(Vec::new());
        for auction in waiting {
            ctx.emit((name.clone(), city.clone(), state.clone(), auction));
        }
        ctx.value_state::<(Text, Text, Text)>(SELLER).update((name, city, state));
    }

    fn process_element2(&mut self, (auction, _seller): (i64, i64), ctx: &mut KeyedContext<'_, i64, Suggestion>) {
        match ctx.value_state::<(Text, Text, Text)>(SELLER).get().cloned() {
            Some((name, city, state)) => ctx.emit((name, city, state, auction)),
            None => ctx.list_state::<i64>(WAITING).add(auction),
        }
    }
}

/// `name,city,state,id`.
pub fn csv(row: &Suggestion) -> String {
    format!("{},{},{},{}", row.0, row.1, row.2, row.3)
}
