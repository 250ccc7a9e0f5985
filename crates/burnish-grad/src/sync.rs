//! Gradients summed over the workers of a data-parallel run, behind a small trait so that
//! the engine (burn-collective today, NCCL later) can change without touching the math.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend, BackendTypes};
use burn::tensor::{FloatDType, Tensor, TensorData};

use crate::GradError;
use crate::accumulate::GradAccumulator;
use crate::visit::{Elementwise, map_grads};

/// An element-wise sum over all workers of a data-parallel run.
///
/// Every worker calls [`all_reduce_sum`](Self::all_reduce_sum) the same number of times,
/// in the same order, with tensors of the same length; each call returns the sum of the
/// workers' tensors, the same on every worker. An implementation must not wait forever: a
/// worker that stopped or hangs is a [`SyncError`] within a bounded time.
///
/// burnish-parallel implements it over burn-collective (threads in one process, and
/// processes over the network); a test double can sum in-process.
pub trait GradSync<B: Backend>: Send {
    /// This worker's rank over all workers of all nodes, from 0.
    fn rank(&self) -> usize;

    /// The number of workers.
    fn world_size(&self) -> usize;

    /// Sums `tensor` element-wise over all workers.
    ///
    /// # Errors
    /// [`SyncError`] when a worker failed, did not answer in time, or the engine failed;
    /// the run cannot continue then.
    fn all_reduce_sum(&mut self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, SyncError>;

    /// Leaves the group at the end of the run; later calls are errors. Nothing to do by
    /// default.
    ///
    /// # Errors
    /// [`SyncError`] when the engine fails to close.
    fn finish(&mut self) -> Result<(), SyncError> {
        Ok(())
    }
}

/// Why workers could not agree on a sum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The other workers did not answer in time: one stopped, was killed or hangs.
    #[error(
        "worker {rank}: the other workers did not answer within {seconds} s (one of them \
         stopped, was killed or hangs); resume the run from its last checkpoint"
    )]
    Timeout {
        /// The waiting worker.
        rank: usize,
        /// The bound that passed.
        seconds: u64,
    },
    /// Another worker of this process failed, so this one stopped.
    #[error("worker {rank}: stopped because worker {failed} failed")]
    Aborted {
        /// The stopped worker.
        rank: usize,
        /// The worker that failed first.
        failed: usize,
    },
    /// The engine reported an error.
    #[error("worker {rank}: gradient all-reduce failed: {message}")]
    Engine {
        /// The worker that saw the error.
        rank: usize,
        /// The engine's message.
        message: String,
    },
}

/// Items counts travel as two floats below 2^20 each, so sums over up to 16 workers stay
/// exact in f32 (a single f32 is exact only up to 2^24 items).
const ITEM_SPLIT: u64 = 1 << 20;

/// One parameter's gradient in the flat buffer.
struct Slot {
    id: ParamId,
    dims: Vec<usize>,
    numel: usize,
}

impl GradAccumulator {
    /// Ends the cycle of one data-parallel worker: sums the gradients, the item counts and
    /// `extras` (loss sums, say) over all workers with one `sync.all_reduce_sum`, then
    /// divides the gradients by the total item count. Every worker gets the gradients that
    /// one worker would have computed over the union of all their micro-batches (the mean
    /// over all items, not a mean of per-worker means), and the total item count.
    ///
    /// A worker whose part of the step was empty (the last batch of an epoch has fewer rows
    /// than there are workers) calls it with nothing added: it contributes zeros. A
    /// parameter that no worker has a gradient for stays without one, as in one process.
    /// Gradients travel in f32 and come back in their parameter's dtype.
    ///
    /// # Errors
    /// [`GradError::Sync`] when the workers could not agree; [`GradError::NoItems`] when
    /// no worker counted an item (all workers get it). The accumulator is reset either way.
    pub fn finish_synced<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        sync: &mut dyn GradSync<B::InnerBackend>,
        extras: &mut [f64],
    ) -> Result<(GradientsParams, u64), GradError> {
        let (mut sum, items, micro_batches) = self.take();
        let mut collect = Collect::<B> {
            sum: &mut sum,
            slots: Vec::new(),
            parts: Vec::new(),
            present: Vec::new(),
            device: None,
        };
        module.visit(&mut collect);
        let Collect {
            slots,
            mut parts,
            present,
            device,
            ..
        } = collect;
        let device = device.unwrap_or_default();
        let mut header = present;
        let params = header.len();
        header.push((items / ITEM_SPLIT) as f32);
        header.push((items % ITEM_SPLIT) as f32);
        header.extend(extras.iter().map(|&v| v as f32));
        let header_len = header.len();
        let header =
            Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(header, [header_len]), &device);
        parts.insert(0, header);
        let all = sync.all_reduce_sum(Tensor::cat(parts, 0))?;
        let total_len = all.dims()[0];
        let head = all
            .clone()
            .slice(0..header_len)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| SyncError::Engine {
                rank: sync.rank(),
                message: format!("the summed header could not be read: {e:?}"),
            })?;
        let total = head[params] as u64 * ITEM_SPLIT + head[params + 1] as u64;
        for (extra, value) in extras.iter_mut().zip(&head[params + 2..]) {
            *extra = f64::from(*value);
        }
        if total == 0 {
            return Err(GradError::NoItems { micro_batches });
        }
        let mut out = GradientsParams::new();
        module.visit(&mut Place::<B> {
            out: &mut out,
            flat: all.slice(header_len..total_len),
            slots: &slots,
            present: &head[..params],
            next: 0,
            offset: 0,
        });
        map_grads::<B, M>(module, &mut out, Elementwise::Div(total as f64));
        Ok((out, total))
    }
}

struct Collect<'a, B: AutodiffBackend> {
    sum: &'a mut GradientsParams,
    slots: Vec<Slot>,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    present: Vec<f32>,
    device: Option<<B::InnerBackend as BackendTypes>::Device>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let dims = value.dims().to_vec();
        let numel = dims.iter().product();
        let device = value.device();
        let (present, flat) = match self.sum.remove::<B::InnerBackend, D>(param.id) {
            Some(grad) => (1.0, grad.reshape([numel])),
            None => (0.0, Tensor::zeros([numel], &device)),
        };
        self.present.push(present);
        self.parts.push(flat.cast(FloatDType::F32));
        self.device.get_or_insert(device);
        self.slots.push(Slot {
            id: param.id,
            dims,
            numel,
        });
    }
}

/// Puts the summed flat gradients back, in the same visiting order as [`Collect`].
struct Place<'a, B: AutodiffBackend> {
    out: &'a mut GradientsParams,
    flat: Tensor<B::InnerBackend, 1>,
    slots: &'a [Slot],
    present: &'a [f32],
    next: usize,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Place<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let index = self.next;
        self.next += 1;
        let (Some(slot), Some(&present)) = (self.slots.get(index), self.present.get(index)) else {
            return;
        };
        let start = self.offset;
        self.offset += slot.numel;
        if slot.id != param.id || present == 0.0 {
            return;
        }
        let dims: [usize; D] = std::array::from_fn(|i| slot.dims[i]);
        let grad = self
            .flat
            .clone()
            .slice(start..start + slot.numel)
            .reshape(dims)
            .cast(param.val().dtype());
        self.out.register(param.id, grad);
    }
}
