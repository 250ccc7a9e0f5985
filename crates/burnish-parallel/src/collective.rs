//! burn-collective behind [`GradSync`], with every wait bounded; between nodes, the
//! TCP link of [`crate::link`].

use std::marker::PhantomData;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{ElementConversion, Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use burnish_grad::{GradSync, SyncError};

use crate::launch::Abort;
use crate::link::NodeLink;
use crate::topology::Topology;

/// How often a waiting worker looks at the [`Abort`] signal.
const POLL: Duration = Duration::from_millis(20);

/// One worker's membership of a data-parallel group, as a [`GradSync`]: the threads of
/// this process sum through burn-collective; with several nodes, worker 0 of each node
/// then exchanges the node's sum with node 0 over TCP and hands the total to its node's
/// other workers (a burn-collective broadcast).
///
/// burn-collective keeps one group per backend type and process: run one data-parallel
/// group per backend at a time, and call [`reset_local_group`] before a new one in the
/// same process. Its calls block without a deadline, so each runs on a helper thread that
/// this worker waits for at most [`Topology::timeout`], looking at the process's
/// [`Abort`] signal meanwhile; after a timeout the helper may stay blocked, and the run
/// must end (the process exits). The TCP link has the same bound on every read and write,
/// and a node that dies closes its connection, which the others see at once.
#[derive(Debug)]
pub struct CollectiveSync<B: Backend> {
    rank: usize,
    local: usize,
    world: usize,
    locals: usize,
    timeout: Duration,
    abort: Abort,
    link: Option<NodeLink>,
    device: <B as BackendTypes>::Device,
    _backend: PhantomData<B>,
}

/// Forgets this process's burn-collective group of backend `B` (registrations, half-done
/// operations), as after a failed run.
pub fn reset_local_group<B: Backend>() {
    burn_collective::reset_collective::<B>();
}

impl<B: Backend> CollectiveSync<B> {
    /// Registers this node's worker `local` (on `device`) and waits until every worker of
    /// every node has joined (node 0's worker 0 listens at the coordinator's port, the
    /// other nodes connect to it); then checks that the group has the expected size.
    /// Use the inner backend of an autodiff backend.
    ///
    /// # Errors
    /// [`SyncError`] when the group does not form within the timeout, burn-collective
    /// refuses the registration, or the nodes disagree on their number or devices.
    pub fn register(
        topology: &Topology,
        local: usize,
        device: <B as BackendTypes>::Device,
        abort: Abort,
    ) -> Result<Self, SyncError> {
        let rank = topology.rank_of(local);
        topology
            .validate()
            .map_err(|e| engine(rank, e.to_string()))?;
        let mut sync = Self {
            rank,
            local,
            world: topology.world_size(),
            locals: topology.workers_per_node,
            timeout: topology.timeout,
            abort,
            link: None,
            device: device.clone(),
            _backend: PhantomData,
        };
        let config = CollectiveConfig::default().with_num_devices(topology.workers_per_node);
        let (peer, dev) = (PeerId(local as u32), device.clone());
        sync.bounded(move || burn_collective::register::<B>(peer, dev, config))?
            .map_err(|e| engine(rank, format!("registration refused: {e:?}")))?;
        if topology.nodes > 1 && local == 0 {
            sync.link = Some(NodeLink::connect(topology, rank, &sync.abort)?);
        }
        let count = sync.all_reduce_sum(Tensor::<B, 1>::ones([1], &device))?;
        let count = count.into_scalar().elem::<f64>().round() as usize;
        if count != sync.world {
            return Err(engine(
                rank,
                format!(
                    "the group has {count} workers, this node expected {} ({} per node): \
                     every node needs the same number of devices",
                    sync.world, topology.workers_per_node
                ),
            ));
        }
        Ok(sync)
    }

    /// The node's sum, from burn-collective.
    fn local_sum(&mut self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, SyncError> {
        if self.locals == 1 {
            return Ok(tensor);
        }
        let (rank, peer) = (self.rank, PeerId(self.local as u32));
        let primitive = tensor.into_primitive().tensor();
        let summed = self
            .bounded(move || {
                burn_collective::all_reduce::<B>(peer, primitive, ReduceOperation::Sum)
            })?
            .map_err(|e| engine(rank, format!("{e:?}")))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    /// Node 0's total, handed by worker 0 of this node to the others.
    fn share(&mut self, total: Option<Tensor<B, 1>>) -> Result<Tensor<B, 1>, SyncError> {
        if self.locals == 1 {
            return total.ok_or_else(|| engine(self.rank, "no total to share".into()));
        }
        let (rank, peer) = (self.rank, PeerId(self.local as u32));
        let primitive = total.map(|t| t.into_primitive().tensor());
        let shared = self
            .bounded(move || burn_collective::broadcast::<B>(peer, primitive))?
            .map_err(|e| engine(rank, format!("{e:?}")))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(shared)))
    }

    /// Runs a blocking burn-collective call on a helper thread and waits for it at most
    /// the timeout, or until another worker of this process failed.
    fn bounded<T: Send + 'static>(
        &mut self,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SyncError> {
        let rank = self.rank;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name(format!("burnish-collective-{rank}"))
            .spawn(move || {
                let _ = tx.send(call());
            })
            .map_err(|e| engine(rank, format!("no thread for the collective call: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match rx.recv_timeout(POLL) {
                Ok(value) => return Ok(value),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(engine(rank, "the collective call panicked".into()));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(failed) = self.abort.failed().filter(|&f| f != rank) {
                        return Err(SyncError::Aborted { rank, failed });
                    }
                    if Instant::now() >= deadline {
                        return Err(SyncError::Timeout {
                            rank,
                            seconds: self.timeout.as_secs(),
                        });
                    }
                }
            }
        }
    }
}

impl<B: Backend> GradSync<B> for CollectiveSync<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, SyncError> {
        let node_sum = self.local_sum(tensor)?;
        if self.world == self.locals {
            return Ok(node_sum);
        }
        let Some(link) = self.link.as_mut() else {
            return self.share(None);
        };
        let rank = self.rank;
        let values = node_sum
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| engine(rank, format!("the node's sum could not be read: {e:?}")))?;
        let len = values.len();
        let total = link.all_reduce(rank, values, self.timeout)?;
        let total = Tensor::<B, 1>::from_data(TensorData::new(total, [len]), &self.device);
        self.share(Some(total))
    }

    /// Leaves the group (closing the connections between nodes).
    fn finish(&mut self) -> Result<(), SyncError> {
        self.link = None;
        let (rank, peer) = (self.rank, PeerId(self.local as u32));
        self.bounded(move || burn_collective::finish_collective::<B>(peer))?
            .map_err(|e| engine(rank, format!("leaving the group failed: {e:?}")))
    }
}

fn engine(rank: usize, message: String) -> SyncError {
    SyncError::Engine { rank, message }
}
