//! Walking the gradients of a module: `GradientsParams` has no iterator, so the module's
//! parameters (and their ranks) tell which ids to look up.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// Flattened gradient of one parameter, on the inner backend.
pub(crate) type FlatGrad<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 1>;

struct Reader<'a, B: AutodiffBackend, F> {
    grads: &'a GradientsParams,
    f: F,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend, F: FnMut(FlatGrad<B>)> ModuleVisitor<B> for Reader<'_, B, F> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let n = grad.shape().num_elements();
            (self.f)(grad.reshape([n]));
        }
    }
}

/// Calls `f` with every gradient of `module`'s parameters found in `grads`, flattened.
pub(crate) fn for_each_grad<B, M, F>(module: &M, grads: &GradientsParams, f: F)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    F: FnMut(FlatGrad<B>),
{
    module.visit(&mut Reader::<B, F> {
        grads,
        f,
        _backend: std::marker::PhantomData,
    });
}

struct Mapper<'a, B: AutodiffBackend, F> {
    grads: &'a mut GradientsParams,
    f: F,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend, F: FnMut(FlatGrad<B>) -> FlatGrad<B>> ModuleVisitor<B>
    for Mapper<'_, B, F>
{
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let dims = grad.dims();
            let n = dims.iter().product::<usize>();
            let mapped = (self.f)(grad.reshape([n])).reshape(dims);
            self.grads.register(param.id, mapped);
        }
    }
}

/// Replaces every gradient of `module`'s parameters in `grads` by `f(gradient)`.
pub(crate) fn map_grads<B, M, F>(module: &M, grads: &mut GradientsParams, f: F)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    F: FnMut(FlatGrad<B>) -> FlatGrad<B>,
{
    module.visit(&mut Mapper::<B, F> {
        grads,
        f,
        _backend: std::marker::PhantomData,
    });
}
