//! Where a job's processes go: a strategy picks, among the workers with a free slot, the
//! workers that run an attempt's processes (one process per worker, so that losing a
//! worker loses one process). The coordinator asks it at every start and restart, and
//! writes its choice and the reason into the job's event log.
//!
//! Strategies are pure functions of the candidates, so each is unit-tested here; the
//! user picks one with `sluice coordinator --placement NAME`.

use std::time::Duration;

/// A worker that could take a process.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The worker's id.
    pub worker: u64,
    /// Slots not taken by a running process.
    pub free_slots: u32,
    /// Slots taken by running processes.
    pub busy_slots: u32,
    /// The round trip of its last heartbeat.
    pub heartbeat_rtt: Duration,
    /// CPU its job processes used over the last second, in percent of one core
    /// ([`crate::load`]).
    pub cpu_percent: u32,
}

/// Picks workers for an attempt's processes.
pub trait PlacementStrategy: Send + Sync {
    /// The strategy's name, as `--placement` takes it.
    fn name(&self) -> &'static str;
    /// Picks `n` distinct workers among `candidates` (all have a free slot), in the order
    /// of the process indices they get, each with why it was picked.
    fn place(&self, n: usize, candidates: &[Candidate]) -> Vec<(u64, String)>;
}

/// The strategies `--placement` accepts.
pub const STRATEGIES: [&str; 5] = ["least-loaded", "most-free", "lowest-latency", "round-robin", "random"];

/// The strategy called `name`; the error lists the names there are.
pub fn strategy(name: &str, seed: u64) -> Result<Box<dyn PlacementStrategy>, String> {
    Ok(match name {
        "least-loaded" => Box::new(LeastLoaded),
        "most-free" => Box::new(MostFree),
        "lowest-latency" => Box::new(LowestLatency),
        "round-robin" => Box::new(RoundRobin::default()),
        "random" => Box::new(Random { state: std::sync::Mutex::new(seed | 1) }),
        other => return Err(format!("unknown placement strategy '{other}'; choose one of {}", STRATEGIES.join(", "))),
    })
}

/// Places `n` processes of a restarted attempt: every process index whose worker in the
/// previous attempt (`previous[i]` ran process `i`) is still a candidate stays there, since
/// a process restarted on the worker it ran on reads its state from that worker's local
/// copies (task-local recovery, as Flink's sticky scheduling) instead of the store; the
/// strategy places the indices left among the other candidates, in its order. Without a
/// previous attempt this is the strategy's placement.
pub fn place_sticky(
    strategy: &dyn PlacementStrategy,
    n: usize,
    candidates: &[Candidate],
    previous: &[u64],
) -> Vec<(u64, String)> {
    let mut slots: Vec<Option<(u64, String)>> = vec![None; n];
    for (i, slot) in slots.iter_mut().enumerate() {
        let Some(worker) = previous.get(i) else { break };
        if candidates.iter().any(|c| c.worker == *worker) {
            *slot = Some((*worker, format!("ran process {i} before, which keeps its local state")));
        }
    }
    let kept: Vec<u64> = slots.iter().flatten().map(|(w, _)| *w).collect();
    let others: Vec<Candidate> = candidates.iter().filter(|c| !kept.contains(&c.worker)).cloned().collect();
    let left = slots.iter().filter(|s| s.is_none()).count();
    let mut placed = strategy.place(left, &others).into_iter();
    slots.into_iter().filter_map(|slot| slot.or_else(|| placed.next())).collect()
}

/// Sorts by `key` (ties by worker id) and takes the first `n`.
fn best_by<K: Ord>(n: usize, candidates: &[Candidate], key: impl Fn(&Candidate) -> K) -> Vec<&Candidate> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| key(a).cmp(&key(b)).then(a.worker.cmp(&b.worker)));
    sorted.truncate(n);
    sorted
}

/// Fewest busy slots first, then the least CPU used by the job processes already there:
/// spreads load over the cluster (the default).
pub struct LeastLoaded;

impl PlacementStrategy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }
    fn place(&self, n: usize, candidates: &[Candidate]) -> Vec<(u64, String)> {
        best_by(n, candidates, |c| (c.busy_slots, c.cpu_percent))
            .into_iter()
            .map(|c| {
                let load = format!("{} busy slots, job processes using {}% of a core", c.busy_slots, c.cpu_percent);
                (c.worker, format!("least loaded: {load}"))
            })
            .collect()
    }
}

/// Most free slots first: leaves small workers for small jobs.
pub struct MostFree;

impl PlacementStrategy for MostFree {
    fn name(&self) -> &'static str {
        "most-free"
    }
    fn place(&self, n: usize, candidates: &[Candidate]) -> Vec<(u64, String)> {
        best_by(n, candidates, |c| std::cmp::Reverse(c.free_slots))
            .into_iter()
            .map(|c| (c.worker, format!("most free capacity: {} free slots", c.free_slots)))
            .collect()
    }
}

/// Lowest heartbeat round trip first: the workers nearest the coordinator.
pub struct LowestLatency;

impl PlacementStrategy for LowestLatency {
    fn name(&self) -> &'static str {
        "lowest-latency"
    }
    fn place(&self, n: usize, candidates: &[Candidate]) -> Vec<(u64, String)> {
        best_by(n, candidates, |c| c.heartbeat_rtt)
            .into_iter()
            .map(|c| (c.worker, format!("lowest heartbeat latency: {} µs", c.heartbeat_rtt.as_micros())))
            .collect()
    }
}

/// Workers in turn, each placement starting after the last one's first worker.
#[derive(Default)]
pub struct RoundRobin {
    next: std::sync::atomic::AtomicUsize,
}

impl PlacementStrategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }
    fn place(&self, n: usize, candidates: &[Candidate]) -> Vec<(u64, String)> {
        let mut sorted: Vec<&Candidate> = candidates.iter().collect();
        sorted.sort_by_key(|c| c.worker);
        if sorted.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % sorted.len();
        (0..n.min(sorted.len()))
            .map(|i| (sorted[(start + i) % sorted.len()].worker, "round-robin: next in turn".to_string()))
            .collect()
    }
}

/// A seeded random choice (xorshift), for tests of placement-independence.
pub struct Random {
    state: std::sync::Mutex<u64>,
}

impl PlacementStrategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn place(&self, n: usize, candidates: &[Candidate]) -> Vec<(u64, String)> {
        let mut pool: Vec<&Candidate> = candidates.iter().collect();
        pool.sort_by_key(|c| c.worker);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut picked = Vec::new();
        while picked.len() < n && !pool.is_empty() {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            let c = pool.swap_remove((*state % pool.len() as u64) as usize);
            picked.push((c.worker, "random".to_string()));
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_restarted_process_stays_on_the_worker_it_ran_on_while_that_worker_is_a_candidate() {
        // The previous attempt ran processes 0, 1 on workers 4, 1; least-loaded alone would
        // pick 2 and 4 (no busy slots).
        let placed = place_sticky(&LeastLoaded, 2, &pool(), &[4, 1]);
        assert_eq!(workers(placed.clone()), vec![4, 1]);
        assert!(placed[1].1.contains("ran process 1 before"), "{placed:?}");
        // Worker 4 is gone: process 1 stays on 1, process 0 goes where the strategy says.
        let pool_without_4: Vec<Candidate> = pool().into_iter().filter(|c| c.worker != 4).collect();
        let placed = place_sticky(&LeastLoaded, 2, &pool_without_4, &[4, 1]);
        assert_eq!(workers(placed.clone()), vec![2, 1]);
        assert!(placed[0].1.starts_with("least loaded"), "{placed:?}");
        // More processes than before (a scale-up): the new index is the strategy's.
        assert_eq!(workers(place_sticky(&LeastLoaded, 3, &pool(), &[3])), vec![3, 2, 4]);
        // Fewer than before: indices past the end are not kept.
        assert_eq!(workers(place_sticky(&LeastLoaded, 1, &pool(), &[1, 2])), vec![1]);
        // No previous attempt: the strategy's placement.
        assert_eq!(workers(place_sticky(&LeastLoaded, 2, &pool(), &[])), vec![2, 4]);
        // Fewer candidates than processes asked for: only as many as there are.
        assert_eq!(place_sticky(&LeastLoaded, 3, &pool()[..2], &[]).len(), 2);
    }

    use super::*;

    fn candidate(worker: u64, free: u32, busy: u32, rtt_us: u64) -> Candidate {
        Candidate {
            worker,
            free_slots: free,
            busy_slots: busy,
            heartbeat_rtt: Duration::from_micros(rtt_us),
            cpu_percent: 0,
        }
    }

    fn workers(placed: Vec<(u64, String)>) -> Vec<u64> {
        placed.into_iter().map(|(w, _)| w).collect()
    }

    fn pool() -> Vec<Candidate> {
        vec![candidate(1, 1, 3, 900), candidate(2, 4, 0, 300), candidate(3, 2, 1, 100), candidate(4, 4, 0, 500)]
    }

    #[test]
    fn least_loaded_most_free_and_lowest_latency_order_by_their_measure_then_by_id() {
        assert_eq!(workers(LeastLoaded.place(3, &pool())), vec![2, 4, 3]);
        assert_eq!(workers(MostFree.place(2, &pool())), vec![2, 4]);
        assert_eq!(workers(LowestLatency.place(2, &pool())), vec![3, 2]);
        let (_, why) = &LeastLoaded.place(1, &pool())[0];
        assert!(why.contains("0 busy slots"), "{why}");
    }

    #[test]
    fn least_loaded_breaks_a_tie_of_busy_slots_by_the_measured_cpu() {
        let mut pool = pool();
        pool[1].cpu_percent = 150; // worker 2: no busy slot, but busy processes
        pool[3].cpu_percent = 20;
        assert_eq!(workers(LeastLoaded.place(2, &pool)), vec![4, 2], "equal slots: the lighter CPU first");
        pool[3].busy_slots = 1;
        assert_eq!(workers(LeastLoaded.place(1, &pool)), vec![2], "busy slots come first");
        let (_, why) = &LeastLoaded.place(1, &pool)[0];
        assert!(why.contains("job processes using 150% of a core"), "{why}");
    }

    #[test]
    fn round_robin_rotates_and_random_is_seeded_and_distinct() {
        let rr = RoundRobin::default();
        assert_eq!(workers(rr.place(2, &pool())), vec![1, 2]);
        assert_eq!(workers(rr.place(2, &pool())), vec![2, 3]);
        let a = workers(strategy("random", 7).unwrap().place(3, &pool()));
        let b = workers(strategy("random", 7).unwrap().place(3, &pool()));
        assert_eq!(a, b, "the same seed places the same way");
        let mut distinct = a.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{a:?}");
    }

    #[test]
    fn every_strategy_places_at_most_one_process_per_worker_and_names_are_checked() {
        for name in STRATEGIES {
            let s = strategy(name, 3).unwrap();
            assert_eq!(s.name(), name);
            let placed = workers(s.place(9, &pool()));
            assert_eq!(placed.len(), 4, "{name}: as many as there are workers");
            let mut distinct = placed.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 4, "{name}: {placed:?}");
            assert!(s.place(2, &[]).is_empty());
        }
        let err = strategy("nearest", 0).err().unwrap();
        assert!(err.contains("least-loaded, most-free"), "{err}");
    }
}
