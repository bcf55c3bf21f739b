//! Planning: chaining and channel assignment, as pure functions of the job graph.

use sluice_dataflow::{JobGraph, NodeId, NodeKind, Partitioning};

/// A chain of nodes that runs as one task per subtask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChain {
    /// The nodes, head first.
    pub nodes: Vec<NodeId>,
    /// The parallelism shared by the chain's nodes.
    pub parallelism: usize,
}

/// The tasks of a job and how their channels connect.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The chains, in an order where producers precede consumers.
    pub chains: Vec<PlannedChain>,
    /// The chain of each node.
    pub chain_of: Vec<usize>,
}

/// Whether the edge into `node` from its producer is pointwise (subtask i feeds subtask i).
pub fn is_pointwise(graph: &JobGraph, node: NodeId, edge: usize) -> bool {
    let e = &graph.nodes[node.0].inputs[edge];
    matches!(e.partitioning, Partitioning::Forward) && graph.parallelism_of(e.from) == graph.parallelism_of(node)
}

/// The producer subtasks that feed subtask `subtask` of `node` through input `edge`.
pub fn feeding_subtasks(graph: &JobGraph, node: NodeId, edge: usize, subtask: usize) -> std::ops::Range<usize> {
    if is_pointwise(graph, node, edge) {
        subtask..subtask + 1
    } else {
        0..graph.parallelism_of(graph.nodes[node.0].inputs[edge].from)
    }
}

/// The channel index at subtask `subtask` of `node` of producer subtask `from_subtask`
/// on input `edge`: channels are numbered edge by edge, producer subtask by subtask.
pub fn channel_index(graph: &JobGraph, node: NodeId, edge: usize, subtask: usize, from_subtask: usize) -> u32 {
    let before: usize = (0..edge).map(|e| feeding_subtasks(graph, node, e, subtask).len()).sum();
    let range = feeding_subtasks(graph, node, edge, subtask);
    (before + from_subtask - range.start) as u32
}

/// The number of input channels of subtask `subtask` of `node`.
pub fn channel_count(graph: &JobGraph, node: NodeId, subtask: usize) -> usize {
    (0..graph.nodes[node.0].inputs.len()).map(|e| feeding_subtasks(graph, node, e, subtask).len()).sum()
}

/// Chains operators into tasks: a node joins its producer's chain when it has that one
/// input, the edge is forward with equal parallelism, the producer feeds nothing else,
/// and chaining is on for the job and the node.
pub fn plan(graph: &JobGraph) -> Plan {
    let consumers = graph.consumers();
    let mut chains: Vec<PlannedChain> = Vec::new();
    let mut chain_of: Vec<usize> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let joins = graph.config.chaining
            && node.chainable
            && node.imp.kind() != NodeKind::Source
            && node.inputs.len() == 1
            && is_pointwise(graph, node.id, 0)
            && consumers[node.inputs[0].from.0].len() == 1;
        if joins {
            let chain = chain_of[node.inputs[0].from.0];
            chains[chain].nodes.push(node.id);
            chain_of.push(chain);
        } else {
            chain_of.push(chains.len());
            chains.push(PlannedChain { nodes: vec![node.id], parallelism: graph.parallelism_of(node.id) });
        }
    }
    Plan { chains, chain_of }
}
