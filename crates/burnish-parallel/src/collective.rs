//! burn-collective behind [`GradSync`], with every wait bounded.

use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use burnish_grad::{GradSync, SyncError};

use crate::ParallelError;
use crate::launch::Abort;
use crate::topology::Topology;

/// How often a waiting worker looks at the [`Abort`] signal.
const POLL: Duration = Duration::from_millis(20);

/// One worker's membership of a burn-collective group: a [`GradSync`] over threads of this
/// process and, with several nodes, over the network.
///
/// burn-collective keeps one group per backend type and process: run one data-parallel
/// group per backend at a time, and call [`reset_local_group`] before a new one in the
/// same process. Its calls block without a deadline, so each runs on a helper thread that
/// this worker waits for at most [`Topology::timeout`], looking at the process's
/// [`Abort`] signal meanwhile; after a timeout the helper may stay blocked, and the run
/// must end (the process exits).
#[derive(Debug)]
pub struct CollectiveSync<B: Backend> {
    rank: usize,
    world: usize,
    timeout: Duration,
    abort: Abort,
    _backend: PhantomData<B>,
}

/// Forgets this process's burn-collective group of backend `B` (registrations, half-done
/// operations), as after a failed run.
pub fn reset_local_group<B: Backend>() {
    burn_collective::reset_collective::<B>();
}

impl<B: Backend> CollectiveSync<B> {
    /// Registers this node's worker `local` (on `device`) and waits until every worker of
    /// every node has registered; then checks that the group has the expected size.
    /// Use the inner backend of an autodiff backend.
    ///
    /// # Errors
    /// [`SyncError`] when the group does not form within the timeout, burn-collective
    /// refuses the registration, or the nodes disagree on the number of workers.
    pub fn register(
        topology: &Topology,
        local: usize,
        device: <B as BackendTypes>::Device,
        abort: Abort,
    ) -> Result<Self, SyncError> {
        let rank = topology.rank_of(local);
        let mut sync = Self {
            rank,
            world: topology.world_size(),
            timeout: topology.timeout,
            abort,
            _backend: PhantomData,
        };
        let config = collective_config(topology).map_err(|e| SyncError::Engine {
            rank,
            message: e.to_string(),
        })?;
        let peer = PeerId(rank as u32);
        let dev = device.clone();
        sync.bounded(move || burn_collective::register::<B>(peer, dev, config))?
            .map_err(|e| engine(rank, format!("registration refused: {e:?}")))?;
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
        let (rank, peer) = (self.rank, PeerId(self.rank as u32));
        let primitive = tensor.into_primitive().tensor();
        let summed = self
            .bounded(move || {
                burn_collective::all_reduce::<B>(peer, primitive, ReduceOperation::Sum)
            })?
            .map_err(|e| engine(rank, format!("{e:?}")))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    /// Leaves the group (once every worker of a node has, its network connections close).
    fn finish(&mut self) -> Result<(), SyncError> {
        let (rank, peer) = (self.rank, PeerId(self.rank as u32));
        self.bounded(move || burn_collective::finish_collective::<B>(peer))?
            .map_err(|e| engine(rank, format!("leaving the group failed: {e:?}")))
    }
}

fn engine(rank: usize, message: String) -> SyncError {
    SyncError::Engine { rank, message }
}

fn collective_config(topology: &Topology) -> Result<CollectiveConfig, ParallelError> {
    topology.validate()?;
    let config = CollectiveConfig::default().with_num_devices(topology.workers_per_node);
    let Some(coordinator) = topology
        .coordinator
        .as_deref()
        .filter(|_| topology.nodes > 1)
    else {
        return Ok(config);
    };
    let address = |text: String| {
        burn_communication::Address::from_str(&text).map_err(|message| ParallelError::Invalid {
            field: "distributed.coordinator".into(),
            message,
        })
    };
    Ok(config
        .with_num_nodes(topology.nodes as u32)
        .with_global_address(address(format!("ws://{coordinator}"))?)
        .with_node_address(address(format!(
            "ws://{}:{}",
            topology.node_host, topology.data_port
        ))?)
        .with_data_service_port(topology.data_port))
}

/// Starts burn-collective's orchestrator (what node 0 runs for a multi-node group) on a
/// thread of its own, listening on `port` on every interface; it lives as long as the
/// process.
///
/// # Errors
/// [`ParallelError::Orchestrator`] when the port cannot be bound.
pub fn start_orchestrator(port: u16) -> Result<(), ParallelError> {
    let refused = |message: String| ParallelError::Orchestrator { port, message };
    // burn-collective only logs a failed bind: try it first to give a clear error.
    drop(std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| refused(e.to_string()))?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| refused(e.to_string()))?;
    std::thread::Builder::new()
        .name("burnish-orchestrator".into())
        .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)))
        .map_err(|e| refused(e.to_string()))?;
    Ok(())
}
