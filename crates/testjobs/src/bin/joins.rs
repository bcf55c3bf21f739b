//! The core engine's stateful operators in one job, for comparing a run spread over
//! processes (or a cluster) with a run in one process: a window join, an interval join
//! and a keyed process function with value, list and map state and event-time timers,
//! over two deterministic event streams, each written exactly once to its own folder
//! under `--out` (`window-join`, `interval-join`, `bursts`).

use clap::Parser;
use sluice::prelude::*;
use std::time::Duration;

/// Joins and timers over generated orders and payments.
#[derive(Parser)]
struct Cli {
    /// The folder the three outputs go under.
    #[arg(long, value_name = "DIR")]
    out: std::path::PathBuf,
    /// Orders (and as many payments).
    #[arg(long, default_value_t = 20_000)]
    n: u64,
    #[command(flatten)]
    job: sluice::JobArgs,
}

/// (customer, event time): order `i` at time `3 i` for customer `i mod 97`.
fn order(i: u64) -> (u32, i64) {
    ((i % 97) as u32, 3 * i as i64)
}

/// (customer, event time): payment `i` at a time near its order's.
fn payment(i: u64) -> (u32, i64) {
    ((i % 97) as u32, 3 * i as i64 + (i.wrapping_mul(2_654_435_761) % 400) as i64)
}

/// Counts each customer's orders per second of event time with keyed state and
/// event-time timers (a tumbling window by hand): a map of second -> count, a list of the
/// second's order times, a value with the last order time; at the end of each second a
/// timer emits "customer,second,count,first order,last order" and clears that second.
#[derive(Clone)]
struct Bursts;

impl KeyedProcessFunction<u32, (u32, i64), String> for Bursts {
    fn process_element(&mut self, e: (u32, i64), ctx: &mut KeyedContext<'_, u32, String>) {
        let second = e.1.div_euclid(1000);
        let mut counts = ctx.map_state::<i64, u64>("per-second");
        let n = counts.get(&second).copied().unwrap_or(0);
        counts.put(second, n + 1);
        ctx.list_state::<i64>(&format!("times-{second}")).add(e.1);
        ctx.value_state::<i64>("last").update(e.1);
        ctx.register_event_time_timer((second + 1) * 1000 - 1);
    }
    fn on_timer(&mut self, time: Timestamp, ctx: &mut KeyedContext<'_, u32, String>) {
        let second = time.div_euclid(1000);
        let count = ctx.map_state::<i64, u64>("per-second").remove(&second).unwrap_or(0);
        let times = ctx.list_state::<i64>(&format!("times-{second}")).clear();
        let key = *ctx.key();
        let (first, last) = (times.iter().min().copied().unwrap_or(0), times.iter().max().copied().unwrap_or(0));
        ctx.emit(format!("{key},{second},{count},{first},{last}"));
    }
}

fn main() -> std::process::ExitCode {
    sluice::exit_with("joins", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let env = StreamEnv::new();
    env.set_parallelism(3).set_watermark_interval(Duration::from_millis(10));
    cli.job.apply(&env);
    let n = cli.n;
    let orders = env
        .source(GeneratorSource::new(0..n, order), Watermarks::monotonic().with_timestamps(|o: &(u32, i64)| o.1))
        .uid("orders");
    let payments = env
        .source(
            GeneratorSource::new(0..n, payment),
            Watermarks::bounded(Duration::from_millis(400)).with_timestamps(|p: &(u32, i64)| p.1),
        )
        .uid("payments");
    orders
        .join(&payments)
        .where_key(|o| o.0)
        .equal_to(|p| p.0)
        .window(Tumbling::event_time(Duration::from_millis(500)))
        .apply(|o, p| format!("{},{},{}", o.0, o.1, p.1))
        .uid("window-join")
        .sink(TransactionalFileSink::new(cli.out.join("window-join")))
        .uid("window-join-files");
    orders
        .key_by(|o| o.0)
        .interval_join(&payments.key_by(|p| p.0))
        .between(0, 100)
        .process(|o, p| format!("{},{},{}", o.0, o.1, p.1 - o.1))
        .uid("interval-join")
        .sink(TransactionalFileSink::new(cli.out.join("interval-join")))
        .uid("interval-join-files");
    orders
        .key_by(|o| o.0)
        .process(Bursts)
        .uid("bursts")
        .sink(TransactionalFileSink::new(cli.out.join("bursts")))
        .uid("bursts-files");
    env.execute("joins")?;
    Ok(())
}
