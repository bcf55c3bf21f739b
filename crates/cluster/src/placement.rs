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

/// Orders the workers a strategy picked so that every process index that ran on one of them
/// in the previous attempt (`previous[i]` ran process `i`) stays there: a process restarted
/// on the worker it ran on reads its state from that worker's local copies (task-local
/// recovery) instead of the store. The set of workers is the strategy's; only the order
/// changes, and the indices left get the remaining workers in the strategy's order.
pub fn keep_places(placed: Vec<(u64, String)>, previous: &[u64]) -> Vec<(u64, String)> {
    let mut slots: Vec<Option<(u64, String)>> = vec![None; placed.len()];
    let mut rest = Vec::new();
    for (worker, reason) in placed {
        match previous.iter().position(|w| *w == worker).filter(|&i| i < slots.len() && slots[i].is_none()) {
            Some(i) => {
                slots[i] = Some((worker, format!("{reason}; ran process {i} before, which keeps its local state")))
            }
            None => rest.push((worker, reason)),
        }
    }
    let mut rest = rest.into_iter();
    slots.into_iter().map(|slot| slot.or_else(|| rest.next()).expect("as many workers as indices")).collect()
}

/// Sorts by `key` (ties by worker id) and takes the first `n`.
fn best_by<K: Ord>(n: usize, candidates: &[Candidate], key: impl Fn(&Candidate) -> K) -> Vec<&Candidate> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| key(a).cmp(&key(b)).then(a.worker.cmp(&b.worker)));
    sorted.truncate(n);
    sorted
}

/// Fewest busy slots first: spreads load over the cluster (the default).
pub struct LeastLoaded;

impl PlacementStrategy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }
    fn place(&self, n: usize, candidates: &[Candidate]) -> Vec<(u64, String)> {
        best_by(n, candidates, |c| c.busy_slots)
            .into_iter()
            .map(|c| (c.worker, format!("least loaded: {} busy slots", c.busy_slots)))
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
    fn processes_stay_on_the_workers_they_ran_on_when_the_strategy_picks_those_again() {
        let picked = |ws: &[u64]| ws.iter().map(|w| (*w, "picked".to_string())).collect::<Vec<_>>();
        // The same workers in another order: each index goes back to its worker.
        assert_eq!(workers(keep_places(picked(&[2, 1, 3]), &[1, 2, 3])), vec![1, 2, 3]);
        // Worker 2 was lost and 4 replaces it: 1 and 3 keep their indices, 4 takes index 1.
        let placed = keep_places(picked(&[4, 3, 1]), &[1, 2, 3]);
        assert_eq!(workers(placed.clone()), vec![1, 4, 3]);
        assert!(placed[0].1.contains("ran process 0 before"), "{placed:?}");
        assert_eq!(placed[1].1, "picked");
        // Fewer processes than before: an index past the end is not kept.
        assert_eq!(workers(keep_places(picked(&[3, 1]), &[1, 2, 3])), vec![1, 3]);
        // No previous attempt: the strategy's order.
        assert_eq!(workers(keep_places(picked(&[5, 4]), &[])), vec![5, 4]);
    }

    use super::*;

    fn candidate(worker: u64, free: u32, busy: u32, rtt_us: u64) -> Candidate {
        Candidate { worker, free_slots: free, busy_slots: busy, heartbeat_rtt: Duration::from_micros(rtt_us) }
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
