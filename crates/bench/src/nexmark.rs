//! The Nexmark event generator of `shared/bench/NEXMARK.md`: every field of event `n` is a
//! pure function of `n` (SplitMix64 seeded with `n`, drawn in the order the specification
//! lists), so source subtasks can each generate their share of the one global sequence in
//! any order. The unit test diffs the first 1,000 events against the file an independent
//! implementation wrote (`tests/data/nexmark-events-1000.csv`, copied from
//! `shared/bench/nexmark/events-1000.csv`).
//!
//! The queries of `shared/bench/nexmark/queries.sql` are modules of their own, each a
//! short DataStream program ([`q0`] to [`q8`]; [`run`] runs one and measures it).

pub mod q0;
pub mod q1;
pub mod q2;
pub mod q3;
pub mod q4;
pub mod q5;
pub mod q7;
pub mod q8;
pub mod run;

use std::borrow::Cow;
use std::sync::LazyLock;

/// Event time of event 0 (2015-07-15T00:00:00.000Z), in epoch milliseconds.
pub const BASE_TIME: i64 = 1_436_918_400_000;

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_CHANNEL_RATIO: u64 = 2;
const AUCTION_HORIZON_EVENTS: i64 = 100 * 50 / 3;

const FIRST_NAMES: [&str; 11] =
    ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const CITIES: [&str; 10] =
    ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// The URL of each hot channel (its name in lower case).
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/hot/google/item.htm?query=1",
    "https://www.nexmark.com/hot/facebook/item.htm?query=1",
    "https://www.nexmark.com/hot/baidu/item.htm?query=1",
    "https://www.nexmark.com/hot/apple/item.htm?query=1",
];

/// Appends `n` in decimal (what `format!` does, without its machinery).
fn push_number(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let (mut i, mut rest) = (digits.len(), n);
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for digit in &digits[i..] {
        out.push(*digit as char);
    }
}

/// Text of an event. Where the specification draws a field from a finite set (names,
/// cities, states, channels and their URLs) or cuts it from the cycling alphabet (`extra`),
/// the generator borrows it from a static table, as the constants of a Java generator are
/// shared strings; only text drawn letter by letter (e-mail addresses, credit cards, item
/// names, descriptions) is allocated. The values are the same either way: serialized, a
/// borrowed text is the same string, and it comes back owned.
pub type Text = Cow<'static, str>;

/// A person registering.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Person {
    pub id: i64,
    pub name: Text,
    pub email_address: String,
    pub credit_card: String,
    pub city: Text,
    pub state: Text,
    pub date_time: i64,
    pub extra: Text,
}

/// An item put up for auction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: Text,
}

/// A bid on an auction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: Text,
    pub url: Text,
    pub date_time: i64,
    pub extra: Text,
}

/// One Nexmark event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    // Boxed: a bid is 23 of every 25 events, and an event is moved a few times on its way
    // (into the source's batch, out of it at the first filter); a person is half as big again.
    Person(Box<Person>),
    Auction(Box<Auction>),
    Bid(Bid),
}

impl Event {
    /// The event's time (`dateTime`), in epoch milliseconds.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}

/// SplitMix64, one stream per event.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The stream of event `n` starts from the first output of SplitMix64(n).
    fn seeded(n: u64) -> Draws {
        let mut first = Draws(n);
        Draws(first.next())
    }

    fn r(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn ri(&mut self, bound: i64) -> i64 {
        self.r(bound as u64) as i64
    }

    fn price(&mut self) -> i64 {
        let digits = self.r(6) as usize;
        let mantissa = 100 + self.ri(900);
        mantissa * POWERS_OF_TEN[digits]
    }

    fn text(&mut self, max_len: i64) -> String {
        let mut text = String::with_capacity(max_len as usize);
        self.push_text(&mut text, max_len);
        text
    }

    /// Appends 3 to `max_len - 1` random lowercase letters.
    fn push_text(&mut self, out: &mut String, max_len: i64) {
        let len = 3 + self.ri(max_len - 3);
        // The longest text (a description) is 99 letters: built on the stack, copied once.
        let mut letters = [0u8; 128];
        let letters = &mut letters[..len as usize];
        for letter in letters.iter_mut() {
            *letter = b'a' + self.r(26) as u8;
        }
        out.push_str(std::str::from_utf8(letters).expect("lowercase letters are text"));
    }

    fn extra_len(&mut self, current: i64, average: i64) -> i64 {
        if current > average {
            return 0;
        }
        let d = average - current;
        let delta = (2 * d + 5) / 10;
        d - delta + if delta == 0 { 0 } else { self.ri(2 * delta) }
    }
}

/// The alphabet over and over, long enough for any `extra` (at most 1.2 times the
/// average size, 500, plus the 25 letters an offset can skip).
const LETTERS: [u8; 26 * 26] = {
    let mut letters = [0u8; 26 * 26];
    let mut i = 0;
    while i < letters.len() {
        letters[i] = b'a' + (i % 26) as u8;
        i += 1;
    }
    letters
};

/// [`LETTERS`] as text (checked when compiling: every byte is a letter).
const LETTERS_TEXT: &str = match std::str::from_utf8(&LETTERS) {
    Ok(text) => text,
    Err(_) => panic!("letters are ASCII"),
};

/// `extra`: letters from the `n % 26`-th on, cycling: a slice of [`LETTERS`] (the text is
/// the same as building it a letter at a time, and borrowing it costs nothing).
fn extra(n: i64, len: i64) -> Text {
    let start = n.rem_euclid(26) as usize;
    let (len, room) = (len.max(0) as usize, LETTERS.len() - start);
    if len <= room {
        return Cow::Borrowed(&LETTERS_TEXT[start..start + len]);
    }
    Cow::Owned((0..len as i64).map(|k| (b'a' + ((n % 26 + k) % 26) as u8) as char).collect())
}

/// Every person's name there can be, `"{first} {last}"`, at `first * 9 + last`.
static NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
    FIRST_NAMES.iter().flat_map(|first| LAST_NAMES.iter().map(move |last| format!("{first} {last}"))).collect()
});

/// The 10,000 channels that are not hot: `(channel-k, its URL)` at `k`.
static CHANNELS: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
    (0..10_000u64)
        .map(|k| {
            let mut url = String::with_capacity(64);
            url.push_str("https://www.nexmark.com/ch/");
            push_number(&mut url, k);
            url.push_str("/item.htm?query=1");
            if !k.is_multiple_of(10) {
                url.push_str("&channel_id=");
                push_number(&mut url, k);
            }
            let mut channel = String::with_capacity(12);
            channel.push_str("channel-");
            push_number(&mut channel, k);
            (channel, url)
        })
        .collect()
});

/// `10^digits` for the digits a price can have.
const POWERS_OF_TEN: [i64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// Event time of event `n`.
pub fn date_time(n: i64) -> i64 {
    BASE_TIME + n * 1000 / 1000
}

fn last_person0(n: i64) -> i64 {
    n / 50
}

fn last_auction0(n: i64) -> i64 {
    let (epoch, off) = (n / 50, n % 50);
    match off {
        0 => 3 * epoch - 1,
        1..=3 => 3 * epoch + (off - 1),
        _ => 3 * epoch + 2,
    }
}

fn random_person0(n: i64, draws: &mut Draws) -> i64 {
    let num = last_person0(n) + 1;
    // Past the first 50,000 events the bound is always the same: spelled as a constant,
    // the remainder is a multiplication instead of a 64-bit division (the same value).
    if num >= NUM_ACTIVE_PEOPLE {
        return num - NUM_ACTIVE_PEOPLE + draws.ri(NUM_ACTIVE_PEOPLE + PERSON_ID_LEAD);
    }
    draws.ri(num + PERSON_ID_LEAD)
}

fn random_auction0(n: i64, draws: &mut Draws) -> i64 {
    let hi = last_auction0(n);
    // As in `random_person0`: once 100 auctions are in flight, the bound is a constant.
    if hi >= NUM_IN_FLIGHT_AUCTIONS {
        return hi - NUM_IN_FLIGHT_AUCTIONS + draws.ri(NUM_IN_FLIGHT_AUCTIONS + 1 + AUCTION_ID_LEAD);
    }
    draws.ri(hi + 1 + AUCTION_ID_LEAD)
}

/// Event `n` of the global sequence.
pub fn event(n: u64) -> Event {
    let mut draws = Draws::seeded(n);
    let n = n as i64;
    let time = date_time(n);
    match n % 50 {
        0 => {
            let (first, last) = (draws.r(11) as usize, draws.r(9) as usize);
            let name = Cow::Borrowed(NAMES[first * LAST_NAMES.len() + last].as_str());
            let mut email_address = String::with_capacity(16);
            draws.push_text(&mut email_address, 7);
            email_address.push('@');
            draws.push_text(&mut email_address, 5);
            email_address.push_str(".com");
            // Four groups of four digits (zeros in front), a space between.
            let mut credit_card = String::with_capacity(19);
            for group in 0..4 {
                if group > 0 {
                    credit_card.push(' ');
                }
                let digits = draws.r(10_000);
                for power in [1000, 100, 10, 1] {
                    credit_card.push((b'0' + (digits / power % 10) as u8) as char);
                }
            }
            let city = Cow::Borrowed(CITIES[draws.r(10) as usize]);
            let state = Cow::Borrowed(STATES[draws.r(6) as usize]);
            let size =
                8 + [&*name, &email_address, &credit_card, &city, &state].iter().map(|s| s.len() as i64).sum::<i64>();
            let extra = extra(n, draws.extra_len(size, 200));
            Event::Person(Box::new(Person {
                id: FIRST_PERSON_ID + last_person0(n),
                name,
                email_address,
                credit_card,
                city,
                state,
                date_time: time,
                extra,
            }))
        }
        1..=3 => {
            let seller0 = match draws.r(HOT_SELLER_RATIO) {
                0 => random_person0(n, &mut draws),
                _ => (last_person0(n) / 100) * 100,
            };
            let category = FIRST_CATEGORY_ID + draws.ri(5);
            let initial_bid = draws.price();
            let horizon = date_time(n + AUCTION_HORIZON_EVENTS) - time;
            let expires = time + 1 + draws.ri((2 * horizon).max(1));
            let item_name = draws.text(20);
            let description = draws.text(100);
            let reserve = initial_bid + draws.price();
            let size = 8 + item_name.len() as i64 + description.len() as i64 + 40;
            let extra = extra(n, draws.extra_len(size, 500));
            Event::Auction(Box::new(Auction {
                id: FIRST_AUCTION_ID + last_auction0(n),
                item_name,
                description,
                initial_bid,
                reserve,
                date_time: time,
                expires,
                seller: FIRST_PERSON_ID + seller0,
                category,
                extra,
            }))
        }
        _ => {
            let auction0 = match draws.r(HOT_AUCTION_RATIO) {
                0 => random_auction0(n, &mut draws),
                _ => (last_auction0(n) / 100) * 100,
            };
            let bidder0 = match draws.r(HOT_BIDDER_RATIO) {
                0 => random_person0(n, &mut draws),
                _ => (last_person0(n) / 100) * 100 + 1,
            };
            let price = draws.price();
            let (channel, url) = match draws.r(HOT_CHANNEL_RATIO) {
                0 => {
                    let (channel, url) = &CHANNELS[draws.r(10_000) as usize];
                    (Cow::Borrowed(channel.as_str()), Cow::Borrowed(url.as_str()))
                }
                _ => {
                    let hot = draws.r(4) as usize;
                    (Cow::Borrowed(HOT_CHANNELS[hot]), Cow::Borrowed(HOT_URLS[hot]))
                }
            };
            let extra = extra(n, draws.extra_len(32, 100));
            Event::Bid(Bid {
                auction: FIRST_AUCTION_ID + auction0,
                bidder: FIRST_PERSON_ID + bidder0,
                price,
                channel,
                url,
                date_time: time,
                extra,
            })
        }
    }
}

/// Event `n` as a line of NEXMARK.md section 6.
pub fn csv_line(n: u64, event: &Event) -> String {
    match event {
        Event::Person(p) => format!(
            "{n},P,{},{},{},{},{},{},{},{}",
            p.id, p.name, p.email_address, p.credit_card, p.city, p.state, p.date_time, p.extra
        ),
        Event::Auction(a) => format!(
            "{n},A,{},{},{},{},{},{},{},{},{},{}",
            a.id,
            a.item_name,
            a.description,
            a.initial_bid,
            a.reserve,
            a.date_time,
            a.expires,
            a.seller,
            a.category,
            a.extra
        ),
        Event::Bid(b) => {
            format!("{n},B,{},{},{},{},{},{},{}", b.auction, b.bidder, b.price, b.channel, b.url, b.date_time, b.extra)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_thousand_events_equal_those_of_the_independent_implementation() {
        let reference = include_str!("../tests/data/nexmark-events-1000.csv");
        let mut lines = 0;
        for (n, want) in reference.lines().enumerate() {
            let got = csv_line(n as u64, &event(n as u64));
            assert_eq!(got, want, "event {n}");
            lines += 1;
        }
        assert_eq!(lines, 1000);
    }

    #[test]
    fn extra_is_the_cycling_alphabet_of_the_specification() {
        for n in [0i64, 1, 25, 26, 27, 1_000_003] {
            for len in [0i64, 1, 30, 499, 651, 652, 700] {
                let spelled: String = (0..len).map(|k| (b'a' + ((n % 26 + k) % 26) as u8) as char).collect();
                assert_eq!(extra(n, len), spelled, "n={n} len={len}");
            }
        }
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for n in [0u64, 7, 10, 9_999, u64::MAX] {
            let mut out = String::new();
            push_number(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn events_are_a_pure_function_of_their_number() {
        // Generated out of order, event 777 is the same event.
        let _ = event(5);
        assert_eq!(event(777), event(777));
        assert!(matches!(event(50), Event::Person(p) if p.id == 1001));
    }
}
