//! Recovery decisions as pure functions: which checkpoint to restore, which to delete, and
//! what state and which committables each subtask of the (possibly rescaled) job gets.

use crate::manifest::Manifest;
use sluice_dataflow::snapshot::{OperatorState, Restored, SubtaskState};
use sluice_types::{subtask_for_key_group, KeyGroup};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// An operator of the job being started: its state id and parallelism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorShape {
    /// Its uid, or its name.
    pub state_id: String,
    /// Its parallelism in this run.
    pub parallelism: usize,
}

/// What a job starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// The checkpoint restored from.
    pub checkpoint: u64,
    /// Whether that checkpoint was taken at the end of the job's input.
    pub finished: bool,
    /// State for each (state id, subtask).
    pub states: HashMap<(String, usize), Restored>,
    /// Pre-committed transactions of each sink, to commit before anything runs.
    pub committables: HashMap<String, Vec<Vec<u8>>>,
}

/// The newest candidate whose manifest parses and whose files verify; also the reasons the
/// newer ones were passed over. Candidates may come in any order.
pub fn pick_restorable<T>(
    mut candidates: Vec<(u64, Result<Manifest, String>)>,
    mut verify: impl FnMut(&Manifest) -> Result<T, String>,
) -> (Option<(Manifest, T)>, Vec<String>) {
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut problems = Vec::new();
    for (id, manifest) in candidates {
        match manifest.and_then(|m| verify(&m).map(|t| (m, t))) {
            Ok(found) => return (Some(found), problems),
            Err(problem) => problems.push(format!("checkpoint {id}: {problem}")),
        }
    }
    (None, problems)
}

/// The completed checkpoints to delete: all but the newest `retain`, sparing `protect`
/// (the one restored from, whose commits may still be pending).
pub fn to_prune(completed: &[u64], retain: usize, protect: &[u64]) -> Vec<u64> {
    let mut sorted: Vec<u64> = completed.to_vec();
    sorted.sort_unstable();
    let keep_from = sorted.len().saturating_sub(retain.max(1));
    sorted[..keep_from].iter().copied().filter(|id| !protect.contains(id)).collect()
}

/// Redistributes the positions a source's old subtasks checkpointed (in subtask order) over
/// `parallelism` new subtasks, one position per new subtask: the source's own
/// `Source::rescale`, looked up by state id.
pub type Rescale<'a> = &'a dyn Fn(&str, Vec<Vec<u8>>, usize) -> Result<Vec<Vec<u8>>, String>;

/// Matches a checkpoint's states to the operators of the job being started, moving keyed
/// state by key group to the subtasks that own each group at the new parallelism, and
/// handing a source's positions to `rescale` when its parallelism changed.
pub fn plan_restore(
    manifest: &Manifest,
    states: Vec<SubtaskState>,
    operators: &[OperatorShape],
    max_parallelism: usize,
    allow_non_restored_state: bool,
    rescale: Rescale<'_>,
) -> Result<RestorePlan, String> {
    if manifest.max_parallelism != max_parallelism {
        return Err(format!(
            "checkpoint {} was taken with max parallelism {}, this job has {}; set the max parallelism back to {} \
             (it fixes the key groups that state is stored by)",
            manifest.checkpoint, manifest.max_parallelism, max_parallelism, manifest.max_parallelism
        ));
    }
    let shapes: HashMap<&str, usize> = operators.iter().map(|o| (o.state_id.as_str(), o.parallelism)).collect();
    let unknown: BTreeSet<&str> =
        states.iter().map(|s| s.operator.as_str()).filter(|id| !shapes.contains_key(id)).collect();
    if !unknown.is_empty() && !allow_non_restored_state {
        let names: Vec<String> = unknown.iter().map(|id| format!("'{id}'")).collect();
        return Err(format!(
            "checkpoint {} holds state of {} that no operator of this job has (operators are matched by uid); \
             give the operator its old uid, or allow dropping that state (allow_non_restored_state)",
            manifest.checkpoint,
            names.join(", ")
        ));
    }
    let mut plan = RestorePlan { checkpoint: manifest.checkpoint, finished: manifest.finished, ..Default::default() };
    // Positions of sources whose parallelism changed: state id -> (old subtask, position).
    let mut to_rescale: BTreeMap<String, Vec<(usize, Vec<u8>)>> = BTreeMap::new();
    for state in states {
        let Some(&parallelism) = shapes.get(state.operator.as_str()) else {
            tracing::warn!(operator = %state.operator, "dropping state that no operator of this job has");
            continue;
        };
        match state.state {
            OperatorState::Keyed(groups) => {
                for (group, chunk) in groups {
                    let owner = subtask_for_key_group(KeyGroup(group), max_parallelism, parallelism);
                    let slot = plan
                        .states
                        .entry((state.operator.clone(), owner))
                        .or_insert_with(|| Restored::Keyed(Vec::new()));
                    if let Restored::Keyed(chunks) = slot {
                        chunks.push((group, chunk));
                    }
                }
            }
            OperatorState::Plain(bytes) => {
                let written_at = manifest.parallelism.get(&state.operator).copied().unwrap_or(parallelism);
                if written_at != parallelism {
                    to_rescale.entry(state.operator).or_default().push((state.subtask, bytes));
                    continue;
                }
                plan.states.insert((state.operator, state.subtask), Restored::Plain(bytes));
            }
            OperatorState::Committable(bytes) => plan.committables.entry(state.operator).or_default().push(bytes),
        }
    }
    for (operator, mut positions) in to_rescale {
        let parallelism = shapes[operator.as_str()];
        let written_at = manifest.parallelism.get(&operator).copied().unwrap_or(positions.len());
        positions.sort_by_key(|(subtask, _)| *subtask);
        let old = positions.into_iter().map(|(_, bytes)| bytes).collect();
        let new = rescale(&operator, old, parallelism).map_err(|e| {
            format!(
                "'{operator}' holds source positions written at parallelism {written_at} and runs at \
                 {parallelism}: {e}"
            )
        })?;
        if new.len() != parallelism {
            return Err(format!(
                "'{operator}': rescaling its positions to parallelism {parallelism} gave {} of them (a bug in the \
                 source's rescale)",
                new.len()
            ));
        }
        tracing::info!(operator = %operator, from = written_at, to = parallelism, "source positions redistributed");
        for (subtask, bytes) in new.into_iter().enumerate() {
            plan.states.insert((operator.clone(), subtask), Restored::Plain(bytes));
        }
    }
    Ok(plan)
}

/// The rescale of a job with no source that can rescale (tests, and restores at the same
/// parallelism).
pub fn no_rescale(_: &str, _: Vec<Vec<u8>>, _: usize) -> Result<Vec<Vec<u8>>, String> {
    Err("this source cannot be rescaled; run it at its old parallelism".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: u64) -> Manifest {
        Manifest {
            format: crate::manifest::FORMAT,
            job: "j".into(),
            checkpoint: id,
            savepoint: false,
            finished: false,
            timestamp_ms: 0,
            max_parallelism: 8,
            parallelism: BTreeMap::from([("src".to_string(), 2), ("win".to_string(), 1)]),
            states: vec![],
        }
    }

    #[test]
    fn the_newest_verifiable_checkpoint_is_restored() {
        let candidates = vec![(3, Ok(manifest(3))), (5, Err("no manifest".into())), (4, Ok(manifest(4)))];
        let (found, problems) = pick_restorable(candidates, |m| {
            if m.checkpoint == 4 {
                Err("bad checksum in s1.state".to_string())
            } else {
                Ok(())
            }
        });
        assert_eq!(found.unwrap().0.checkpoint, 3);
        assert_eq!(problems, vec!["checkpoint 5: no manifest", "checkpoint 4: bad checksum in s1.state"]);
        let (none, _) = pick_restorable(vec![(1, Err("x".into()))], |_| Ok(()));
        assert!(none.is_none());
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_protected() {
        assert_eq!(to_prune(&[1, 2, 3, 4, 5], 2, &[]), vec![1, 2, 3]);
        assert_eq!(to_prune(&[5, 1, 3], 2, &[1]), Vec::<u64>::new());
        assert_eq!(to_prune(&[1, 2], 0, &[]), vec![1], "at least one is always kept");
    }

    fn keyed(operator: &str, subtask: usize, groups: &[u32]) -> SubtaskState {
        SubtaskState {
            operator: operator.into(),
            subtask,
            state: OperatorState::Keyed(groups.iter().map(|g| (*g, vec![*g as u8])).collect()),
        }
    }

    #[test]
    fn keyed_state_moves_by_key_group_when_rescaling() {
        let states = vec![keyed("win", 0, &[0, 1, 2, 3, 4, 5, 6, 7])];
        let shapes = [OperatorShape { state_id: "win".into(), parallelism: 3 }];
        let plan = plan_restore(&manifest(1), states, &shapes, 8, false, &no_rescale).unwrap();
        let groups_of = |subtask: usize| match &plan.states[&("win".to_string(), subtask)] {
            Restored::Keyed(chunks) => chunks.iter().map(|c| c.0).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        // The owners of sluice_types::subtask_for_key_group for 8 groups: at 2 subtasks
        // {0..4} and {4..8}; at 3, each of those keeps its first 3 (in the order it got
        // them) and the new subtask takes the rest, {3} and {4}.
        assert_eq!(groups_of(0), vec![0, 1, 2]);
        assert_eq!(groups_of(1), vec![5, 6, 7]);
        assert_eq!(groups_of(2), vec![3, 4]);
        // And back from 3 subtasks to 2.
        let states = vec![keyed("win", 0, &[0, 1, 2]), keyed("win", 1, &[3, 4, 5]), keyed("win", 2, &[6, 7])];
        let shapes = [OperatorShape { state_id: "win".into(), parallelism: 2 }];
        let plan = plan_restore(&manifest(1), states, &shapes, 8, false, &no_rescale).unwrap();
        let count = |s: usize| match &plan.states[&("win".to_string(), s)] {
            Restored::Keyed(c) => c.len(),
            _ => 0,
        };
        assert_eq!((count(0), count(1)), (4, 4));
    }

    #[test]
    fn unmatched_state_sources_and_max_parallelism_are_checked() {
        let lost = vec![keyed("old-uid", 0, &[1])];
        let shapes = [OperatorShape { state_id: "win".into(), parallelism: 1 }];
        let err = plan_restore(&manifest(1), lost.clone(), &shapes, 8, false, &no_rescale).unwrap_err();
        assert!(err.contains("'old-uid'") && err.contains("allow_non_restored_state"), "{err}");
        assert!(plan_restore(&manifest(1), lost, &shapes, 8, true, &no_rescale).unwrap().states.is_empty());

        let source = vec![SubtaskState { operator: "src".into(), subtask: 1, state: OperatorState::Plain(vec![9]) }];
        let shapes = [OperatorShape { state_id: "src".into(), parallelism: 3 }];
        let err = plan_restore(&manifest(1), source.clone(), &shapes, 8, false, &no_rescale).unwrap_err();
        assert!(err.contains("written at parallelism 2") && err.contains("its old parallelism"), "{err}");
        let spread = |_: &str, old: Vec<Vec<u8>>, p: usize| Ok((0..p).map(|i| vec![old[0][0], i as u8]).collect());
        let plan = plan_restore(&manifest(1), source.clone(), &shapes, 8, false, &spread).unwrap();
        assert_eq!(plan.states[&("src".to_string(), 2)], Restored::Plain(vec![9, 2]));
        let short = |_: &str, _: Vec<Vec<u8>>, _: usize| Ok(vec![vec![1]]);
        let err = plan_restore(&manifest(1), source.clone(), &shapes, 8, false, &short).unwrap_err();
        assert!(err.contains("gave 1 of them"), "{err}");
        let shapes = [OperatorShape { state_id: "src".into(), parallelism: 2 }];
        let plan = plan_restore(&manifest(1), source, &shapes, 8, false, &no_rescale).unwrap();
        assert_eq!(plan.states[&("src".to_string(), 1)], Restored::Plain(vec![9]));

        let err = plan_restore(&manifest(1), vec![], &shapes, 128, false, &no_rescale).unwrap_err();
        assert!(err.contains("set the max parallelism back to 8"), "{err}");
    }

    #[test]
    fn committables_are_gathered_per_sink() {
        let states = vec![
            SubtaskState { operator: "sink".into(), subtask: 0, state: OperatorState::Committable(vec![1]) },
            SubtaskState { operator: "sink".into(), subtask: 1, state: OperatorState::Committable(vec![2]) },
        ];
        let shapes = [OperatorShape { state_id: "sink".into(), parallelism: 2 }];
        let plan = plan_restore(&manifest(1), states, &shapes, 8, false, &no_rescale).unwrap();
        assert_eq!(plan.committables["sink"], vec![vec![1], vec![2]]);
    }
}
