//! q4, average price per category: the winning bid of each auction is its highest bid
//! placed between its start and its expiry; per category, the average of those.
//!
//! ```sql
//! SELECT Q.category, AVG(Q.final) AS avg_final
//! FROM (SELECT MAX(B.price) AS final, A.category FROM auction A, bid B
//!       WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
//!       GROUP BY A.id, A.category) Q
//! GROUP BY Q.category
//! ```
//!
//! Both steps are unwindowed, so the result changes as bids arrive. How the changes are
//! emitted (a decision; see `docs/nexmark.md`): the first step emits a *change* per
//! auction whose winning bid rises, carrying the old winning price (if any) and the new one,
//! so that the second step can retract the old one and add the new one in one update
//! rather than seeing a retraction and an insertion apart; the second step emits an
//! *upsert* per category: `(category, average, version)`, where a higher version replaces
//! a lower one. `--dump` writes the final result: each category's last upsert. Averages
//! are integer averages truncated toward zero, as Flink's `AVG` over `BIGINT`.
//!
//! The first step is built on [`DataStream::split_connect`], keyed by auction id: an auction is
//! kept in state with its best price; a bid that arrives before its auction waits in state
//! for it.

use super::Event;
use serde::{Deserialize, Serialize};
use sluice::prelude::*;

/// An auction's winning price rose from `old` (none before) to `new`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WinnerChanged {
    pub category: i64,
    pub old: Option<i64>,
    pub new: i64,
}

/// A category's average winning price; a higher `version` replaces a lower one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Average {
    pub category: i64,
    pub average: i64,
    pub version: u64,
}

/// q4's output: upserts per category.
pub fn query(events: &DataStream<Event>) -> DataStream<Average> {
    events
        // Only the fields the query reads travel on (as Flink's planner projects them): the
        // events' strings are dropped where they were made.
        .split_connect(|event| match event {
            Event::Auction(a) => Some(JoinSide::Left(AuctionTerms {
                id: a.id,
                category: a.category,
                start: a.date_time,
                expires: a.expires,
            })),
            Event::Bid(b) => Some(JoinSide::Right(BidPrice { auction: b.auction, price: b.price, at: b.date_time })),
            Event::Person(_) => None,
        })
        .key_by(|a| a.id, |b| b.auction)
        .process(WinningBids)
        .uid("q4-winning-bids")
        .key_by(|change| change.category)
        .process(Averages)
        .uid("q4-averages")
}

/// What q4 reads of an auction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuctionTerms {
    pub id: i64,
    pub category: i64,
    pub start: i64,
    pub expires: i64,
}

/// What q4 reads of a bid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BidPrice {
    pub auction: i64,
    pub price: i64,
    pub at: i64,
}

#[derive(Clone)]
struct WinningBids;

/// (category, start, expires) of the auction.
const AUCTION: &str = "auction";
/// The auction's winning price so far.
const BEST: &str = "best";
/// Bids that came before their auction: (price, dateTime).
const EARLY: &str = "early-bids";

impl WinningBids {
    /// Takes `price` as a candidate for the auction's winning price.
    fn offer(price: i64, ctx: &mut KeyedContext<'_, i64, WinnerChanged>, category: i64) {
        let old = ctx.value_state::<i64>(BEST).get().copied();
        if old.is_none_or(|old| price > old) {
            ctx.value_state::<i64>(BEST).update(price);
            ctx.emit(WinnerChanged { category, old, new: price });
        }
    }
}

impl KeyedCoProcessFunction<i64, AuctionTerms, BidPrice, WinnerChanged> for WinningBids {
    fn process_element1(&mut self, auction: AuctionTerms, ctx: &mut KeyedContext<'_, i64, WinnerChanged>) {
        let (start, expires) = (auction.start, auction.expires);
        ctx.value_state::<(i64, i64, i64)>(AUCTION).update((auction.category, start, expires));
        let early = ctx.list_state::<(i64, i64)>(EARLY).get().to_vec();
        ctx.list_state::<(i64, i64)>(EARLY).update(Vec::new());
        if let Some(best) = early.iter().filter(|(_, at)| (start..=expires).contains(at)).map(|(price, _)| *price).max()
        {
            Self::offer(best, ctx, auction.category);
        }
    }

    fn process_element2(&mut self, bid: BidPrice, ctx: &mut KeyedContext<'_, i64, WinnerChanged>) {
        match ctx.value_state::<(i64, i64, i64)>(AUCTION).get().copied() {
            Some((category, start, expires)) => {
                if (start..=expires).contains(&bid.at) {
                    Self::offer(bid.price, ctx, category);
                }
            }
            None => ctx.list_state::<(i64, i64)>(EARLY).add((bid.price, bid.at)),
        }
    }
}

#[derive(Clone)]
struct Averages;

/// (sum of winning prices, auctions, version) of the category.
const TOTALS: &str = "totals";

impl KeyedProcessFunction<i64, WinnerChanged, Average> for Averages {
    fn process_element(&mut self, change: WinnerChanged, ctx: &mut KeyedContext<'_, i64, Average>) {
        let (mut sum, mut count, version) =
            ctx.value_state::<(i64, i64, u64)>(TOTALS).get().copied().unwrap_or_default();
        match change.old {
            Some(old) => sum -= old,
            None => count += 1,
        }
        sum += change.new;
        ctx.value_state::<(i64, i64, u64)>(TOTALS).update((sum, count, version + 1));
        ctx.emit(Average { category: change.category, average: sum / count, version: version + 1 });
    }
}

/// The final result: each category's latest upsert.
pub fn finalize(rows: Vec<Average>) -> Vec<Average> {
    let mut last: std::collections::HashMap<i64, Average> = std::collections::HashMap::new();
    for row in rows {
        match last.get(&row.category) {
            Some(seen) if seen.version >= row.version => {}
            _ => {
                last.insert(row.category, row);
            }
        }
    }
    last.into_values().collect()
}

/// `category,avg_final`.
pub fn csv(row: &Average) -> String {
    format!("{},{}", row.category, row.average)
}

/// An upsert as a line: `category,avg_final,version` (the output of a run into files,
/// where each upsert is a line and the final result is each category's highest version).
pub fn upsert_csv(row: &Average) -> String {
    format!("{},{},{}", row.category, row.average, row.version)
}

/// An upsert back from its line ([`upsert_csv`]).
pub fn parse_upsert(line: &str) -> Result<Average, String> {
    let bad = || format!("q4: {line:?} is no upsert line (category,average,version)");
    let mut fields = line.split(',');
    let mut next = || fields.next().ok_or_else(bad);
    let (category, average, version) = (next()?, next()?, next()?);
    Ok(Average {
        category: category.parse().map_err(|_| bad())?,
        average: average.parse().map_err(|_| bad())?,
        version: version.parse().map_err(|_| bad())?,
    })
}
