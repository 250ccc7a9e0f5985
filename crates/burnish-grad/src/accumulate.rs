//! Gradient accumulation normalized by the item count of the whole cycle.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use crate::GradError;
use crate::visit::{Elementwise, map_grads};

/// Sums micro-batch gradients over an accumulation cycle and normalizes them by the total
/// number of items (examples, or label tokens `≠ −100`) of the *whole* cycle.
///
/// # Why not divide by the number of micro-batches
/// Until October 2024, transformers' Trainer averaged each micro-batch's *mean* loss over
/// the micro-batches. When micro-batches hold different numbers of label tokens (always,
/// with padding and causal LM), that weighs a token of a short micro-batch more than one
/// of a long micro-batch, so `k` accumulated micro-batches did not give the gradient of
/// one batch holding all of them, and the loss curves with accumulation differed from
/// those without. The fix (transformers 4.46) divides the *summed* loss by the total count
/// of items over the cycle, which is what this type does: the result equals the gradient
/// of the mean loss over the union of the micro-batches, also for the shorter last cycle
/// of an epoch, which is divided by its own total.
///
/// Feed each micro-batch with [`add_mean`](Self::add_mean) (gradients of a mean-reduced
/// loss, the usual case) or [`add_sum`](Self::add_sum) (gradients of a sum-reduced loss),
/// then call [`finish`](Self::finish) once per optimizer step.
///
/// ```
/// use burn::backend::Autodiff;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::GradientsParams;
/// use burn::tensor::Tensor;
/// use burn_ndarray::NdArray;
/// use burnish_grad::GradAccumulator;
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model: Linear<B> = LinearConfig::new(4, 1).init(&device);
/// let mut acc = GradAccumulator::new();
/// for rows in [3, 5] {
///     let loss = model.forward(Tensor::<B, 2>::ones([rows, 4], &device)).mean();
///     acc.add_mean(&model, GradientsParams::from_grads(loss.backward(), &model), rows as u64);
/// }
/// assert_eq!((acc.micro_batches(), acc.items()), (2, 8));
/// let grads = acc.finish(&model)?; // the gradient of the mean over all 8 rows
/// # let _ = grads;
/// # Ok::<(), burnish_grad::GradError>(())
/// ```
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sum: GradientsParams,
    items: u64,
    micro_batches: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total items added in this cycle.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Micro-batches added in this cycle.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Adds the gradients of a micro-batch loss that was the *mean* over its `items`
    /// items; they are weighted by `items` so that the cycle's result is exact.
    pub fn add_mean<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        mut grads: GradientsParams,
        items: u64,
    ) {
        map_grads::<B, M>(module, &mut grads, Elementwise::Mul(items as f64));
        self.add_sum(module, grads, items);
    }

    /// Adds the gradients of a micro-batch loss that was the *sum* over its `items` items.
    pub fn add_sum<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        items: u64,
    ) {
        module.visit(&mut Summer::<B> {
            sum: &mut self.sum,
            incoming: grads,
            _backend: std::marker::PhantomData,
        });
        self.items += items;
        self.micro_batches += 1;
    }

    /// Ends the cycle: returns the summed gradients divided by the cycle's total item count
    /// and resets the accumulator for the next cycle.
    ///
    /// # Errors
    /// [`GradError::NoItems`] when the cycle counted no item (every label was −100, say):
    /// there is no gradient to average, and dividing by zero would write NaN into the
    /// model. The accumulator is reset either way.
    pub fn finish<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        module: &M,
    ) -> Result<GradientsParams, GradError> {
        let (mut sum, items, micro_batches) = self.take();
        if items == 0 {
            return Err(GradError::NoItems { micro_batches });
        }
        map_grads::<B, M>(module, &mut sum, Elementwise::Div(items as f64));
        Ok(sum)
    }

    /// Empties the accumulator: (summed gradients, items, micro-batches).
    pub(crate) fn take(&mut self) -> (GradientsParams, u64, usize) {
        let Self {
            sum,
            items,
            micro_batches,
        } = std::mem::take(self);
        (sum, items, micro_batches)
    }
}

struct Summer<'a, B: AutodiffBackend> {
    sum: &'a mut GradientsParams,
    incoming: GradientsParams,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Summer<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grad) = self.incoming.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let total = match self.sum.remove::<B::InnerBackend, D>(param.id) {
            Some(previous) => previous.add(grad),
            None => grad,
        };
        self.sum.register(param.id, total);
    }
}
