//! Who the workers are: workers per node, nodes, ranks, addresses, and how a batch is split.

use std::ops::Range;
use std::time::Duration;

use crate::ParallelError;

/// How long a worker waits for the others at one all-reduce before it gives up: long
/// enough for an evaluation pass that only some workers run, short enough that a dead
/// worker ends the run in minutes, not never.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The workers of a data-parallel run: `workers_per_node` threads (one per device) in each
/// of `nodes` processes. Global rank = `node_rank × workers_per_node + local index`; every
/// node has the same number of workers.
///
/// ```
/// use burnish_parallel::Topology;
///
/// let one_process = Topology::local(3);
/// assert_eq!((one_process.world_size(), one_process.rank_of(2)), (3, 2));
///
/// let second_node = Topology::local(2).with_nodes(2, 1, "127.0.0.1:29500");
/// assert_eq!((second_node.world_size(), second_node.rank_of(0)), (4, 2));
/// assert!(second_node.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Worker threads in this process (one per device).
    pub workers_per_node: usize,
    /// Processes taking part (1: no network).
    pub nodes: usize,
    /// This process's index among the nodes, from 0. Node 0 is the hub the others
    /// connect to.
    pub node_rank: usize,
    /// `host:port` where node 0 listens for the other nodes, when `nodes > 1` (node 0
    /// listens on that port on every interface).
    pub coordinator: Option<String>,
    /// The bound on every wait for the other workers.
    pub timeout: Duration,
}

impl Topology {
    /// `workers` threads in this one process.
    pub fn local(workers: usize) -> Self {
        Self {
            workers_per_node: workers,
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same workers per process over `nodes` processes; this one is `node_rank`, and
    /// node 0 listens at `coordinator` (`host:port`).
    pub fn with_nodes(mut self, nodes: usize, node_rank: usize, coordinator: &str) -> Self {
        self.nodes = nodes;
        self.node_rank = node_rank;
        self.coordinator = Some(coordinator.to_string());
        self
    }

    /// The bound on every wait.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// All workers of all nodes.
    pub fn world_size(&self) -> usize {
        self.workers_per_node * self.nodes
    }

    /// The global rank of this node's worker `local`.
    pub fn rank_of(&self, local: usize) -> usize {
        self.node_rank * self.workers_per_node + local
    }

    /// Whether the global rank-0 worker (the one that logs and saves) runs here.
    pub fn is_main_node(&self) -> bool {
        self.node_rank == 0
    }

    /// The port node 0 listens on, when there is a coordinator.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn coordinator_port(&self) -> Result<Option<u16>, ParallelError> {
        let Some(coordinator) = &self.coordinator else {
            return Ok(None);
        };
        let port = coordinator
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|&port| port != 0);
        port.map(Some)
            .ok_or_else(|| invalid("coordinator", format!("`{coordinator}` is not host:port")))
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ParallelError::Invalid`] naming the setting: no worker, a node rank outside the
    /// nodes, several nodes without a coordinator `host:port`, or a zero timeout.
    pub fn validate(&self) -> Result<(), ParallelError> {
        if self.workers_per_node == 0 {
            return Err(invalid("devices", "no device: give at least one".into()));
        }
        if self.nodes == 0 {
            return Err(invalid("nodes", "must be at least 1".into()));
        }
        if self.node_rank >= self.nodes {
            return Err(invalid(
                "node_rank",
                format!("{} is not below the {} node(s)", self.node_rank, self.nodes),
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout_secs", "must be more than 0".into()));
        }
        if self.nodes > 1 && self.coordinator_port()?.is_none() {
            return Err(invalid(
                "coordinator",
                format!("{} nodes need node 0's host:port", self.nodes),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &str, message: String) -> ParallelError {
    ParallelError::Invalid {
        field: format!("distributed.{field}"),
        message,
    }
}

/// The rows of a `len`-row global batch that worker `rank` of `world` takes: contiguous,
/// in rank order, sizes differing by at most one (the first `len % world` workers take one
/// more). Empty when the batch has fewer rows than there are workers and this one is past
/// them.
///
/// ```
/// use burnish_parallel::shard_range;
///
/// let parts: Vec<_> = (0..3).map(|r| shard_range(8, r, 3)).collect();
/// assert_eq!(parts, [0..3, 3..6, 6..8]);
/// assert!(shard_range(1, 1, 2).is_empty());
/// ```
pub fn shard_range(len: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (len / world, len % world);
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    start.min(len)..(start + size).min(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_in_order() {
        for len in 0..40 {
            for world in 1..9 {
                let mut next = 0;
                for rank in 0..world {
                    let r = shard_range(len, rank, world);
                    assert_eq!(r.start, next, "len {len} world {world} rank {rank}");
                    assert!(r.len() <= len / world + 1);
                    assert!(r.len() + 1 >= len / world + usize::from(len % world > 0));
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn settings_are_checked_by_name() {
        let bad = [
            (Topology::local(0), "distributed.devices"),
            (
                Topology::local(1).with_nodes(2, 2, "h:1"),
                "distributed.node_rank",
            ),
            (
                Topology::local(1).with_nodes(2, 0, "nohost"),
                "distributed.coordinator",
            ),
            (
                Topology::local(1).with_nodes(2, 1, "h:0"),
                "distributed.coordinator",
            ),
            (
                Topology::local(1).with_timeout(Duration::ZERO),
                "distributed.timeout_secs",
            ),
        ];
        for (topology, field) in bad {
            match topology.validate() {
                Err(ParallelError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{topology:?}: {other:?}"),
            }
        }
    }
}
