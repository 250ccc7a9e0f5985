//! Walking the gradients of a module: `GradientsParams` has no iterator, so the module's
//! parameters (and their ranks) tell which ids to look up.
//!
//! Operations stay on the gradient's own rank: on burn-ndarray a `reshape` copies the
//! whole tensor, which made a clip over BERT-base 10x slower when gradients were
//! flattened first.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

/// A per-gradient reduction to one value, computed on the device.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reduction {
    /// Σ g².
    SumSquares,
    /// max |g|.
    MaxAbs,
    /// 1 when any element is NaN or ±inf, else 0.
    NonFinite,
}

impl Reduction {
    fn apply<B: Backend, const D: usize>(self, g: Tensor<B, D>) -> Tensor<B, 1> {
        #[cfg(feature = "flex")]
        if let Some(value) = crate::fused::reduce(self, &g) {
            return value;
        }
        match self {
            Reduction::SumSquares => g.square().sum(),
            Reduction::MaxAbs => g.abs().max(),
            Reduction::NonFinite => g.is_finite().bool_not().any().float(),
        }
    }
}

/// An elementwise update of every gradient.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Elementwise {
    /// g · c.
    Mul(f64),
    /// g / c.
    Div(f64),
    /// clamp(g, −c, c).
    Clamp(f64),
}

impl Elementwise {
    fn apply<B: Backend, const D: usize>(self, g: Tensor<B, D>) -> Tensor<B, D> {
        #[cfg(feature = "flex")]
        let g = match crate::fused::map(self, g) {
            Ok(g) => return g,
            Err(g) => g,
        };
        match self {
            Elementwise::Mul(c) => g.mul_scalar(c),
            Elementwise::Div(c) => g.div_scalar(c),
            Elementwise::Clamp(c) => g.clamp(-c, c),
        }
    }
}

struct Reader<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    reduction: Reduction,
    out: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Reader<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.out.push(self.reduction.apply(grad));
        }
    }
}

/// One reduced value per gradient of `module` found in `grads`, in visiting order.
pub(crate) fn reduce_grads<B, M>(
    module: &M,
    grads: &GradientsParams,
    reduction: Reduction,
) -> Vec<Tensor<B::InnerBackend, 1>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let mut reader = Reader::<B> {
        grads,
        reduction,
        out: Vec::new(),
    };
    module.visit(&mut reader);
    reader.out
}

struct Mapper<'a> {
    grads: &'a mut GradientsParams,
    op: Elementwise,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Mapper<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // `remove` leaves the gradient uniquely owned, so the op can work in place.
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, self.op.apply(grad));
        }
    }
}

/// Applies `op` to every gradient of `module`'s parameters in `grads`.
pub(crate) fn map_grads<B, M>(module: &M, grads: &mut GradientsParams, op: Elementwise)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    module.visit(&mut Mapper { grads, op });
}
