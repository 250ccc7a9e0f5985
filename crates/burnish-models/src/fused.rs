//! Fused kernels for the memory-bound steps of a transformer layer: layer norm and the
//! softmax of attention scores, forward and backward.
//!
//! Under `Autodiff<B>`, burn 0.21 composes both from element-wise tensor ops, even where the
//! inner backend has a fused forward: a layer norm is about six passes over the activations
//! forward and fifteen backward, each with its own temporary, and a softmax five and eight.
//! With the `flex` feature, burnish runs its own kernels instead (one sweep per row forward,
//! one backward, rows in parallel), registered with burn's autodiff as operations with their
//! own backward, when the backend is burn-flex (`Flex`, `Autodiff<Flex>`, with or without
//! activation checkpointing) and the tensors are float32. Every other backend and dtype gets
//! burn's own operation (`B::layer_norm`, `B::softmax`): CubeCL backends keep their fusion.
//!
//! The kernel is chosen by the backend's type at run time rather than through a trait bound:
//! a bound would reach every generic model, head and trainer of the workspace and exclude
//! backends that do not implement it. Results are deterministic: each row is computed by one
//! thread in a fixed order, and the sums over rows (the gradients of the norm's weight and
//! bias) are added in a fixed order of fixed-size blocks, whatever the number of threads.
//!
//! ```
//! use burn::tensor::Tensor;
//! use burn_ndarray::NdArray;
//! use burnish_models::fused;
//!
//! let device = Default::default();
//! let x = Tensor::<NdArray, 2>::from_floats([[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]], &device);
//! let p = fused::softmax_last(x.clone());
//! assert!((p.sum().into_scalar() - 2.0).abs() < 1e-6);
//! let y = fused::layer_norm(x, Tensor::ones([3], &device), None, 1e-5);
//! assert!(y.sum().abs().into_scalar() < 1e-5);
//! assert!(!fused::is_fused::<NdArray>());
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorPrimitive};

use crate::ops::MASKED;
use crate::random::Dropout;

/// Layer normalization over the last dimension, `(x − mean) / √(var + ε) · γ + β` with the
/// biased variance (PyTorch's `F.layer_norm`): burnish's fused kernel on burn-flex in
/// float32 (see the [module](self) docs), burn's `B::layer_norm` otherwise.
///
/// `gamma` and `beta` have the length of the last dimension.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (x, gamma, beta) = match flex::layer_norm(x, gamma, beta, epsilon) {
        Ok(y) => return y,
        Err(args) => args,
    };
    layer_norm_unfused(x, gamma, beta, epsilon)
}

/// [`layer_norm`] as burn computes it on every backend (`B::layer_norm`, composed of
/// element-wise operations under autodiff): the reference the fused kernel is tested against.
pub fn layer_norm_unfused<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|b| b.into_primitive().tensor()),
        epsilon,
    )))
}

/// Softmax over the last dimension: burnish's fused backward on `Autodiff<Flex>` in float32
/// (see the [module](self) docs), burn's `softmax` otherwise.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::softmax_last(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    softmax_last_unfused(x)
}

/// [`softmax_last`] as burn computes it (`burn::tensor::activation::softmax`): the reference
/// the fused backward is tested against.
pub fn softmax_last_unfused<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::softmax(x, D - 1)
}

/// How raw attention scores are scaled before masking. BERT-family encoders divide by √d
/// (transformers' `/ math.sqrt(head_dim)`), decoders multiply by a factor; the two round
/// differently, so both are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoreScale {
    /// `scores / d`.
    Divide(f64),
    /// `scores · f`.
    Multiply(f64),
}

/// Attention probabilities from raw scores `[batch, heads, q_len, k_len]`:
/// `dropout(softmax(scale(scores) with masked keys set to MASKED))` over the keys, in
/// float32. `mask` is `true` where a key must be ignored, broadcast from
/// `[batch or 1, heads or 1, q_len or 1, k_len]`; [`MASKED`] is finite,
/// so a row whose keys are all masked is uniform. `dropout` draws its mask from this
/// thread's generator as [`Dropout::forward`] does.
///
/// On burn-flex with float32 scores it is one kernel forward (one sweep per row, no
/// expanded mask, no temporaries) and one backward; otherwise the composition of burn's
/// operations ([`attention_probs_unfused`], with [`softmax_last`]).
pub fn attention_probs<B: Backend>(
    scores: Tensor<B, 4>,
    scale: ScoreScale,
    mask: Option<Tensor<B, 4, Bool>>,
    dropout: &Dropout,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let (scores, mask) = match flex::attention_probs(scores, scale, mask, dropout) {
        Ok(probs) => return probs,
        Err(args) => args,
    };
    composed_probs(scores, scale, mask, dropout, softmax_last)
}

/// [`attention_probs`] composed of burn's operations (scale, cast, `mask_fill` of the
/// expanded mask, burn's softmax, [`Dropout::forward`]): the reference the fused kernel is
/// tested against.
pub fn attention_probs_unfused<B: Backend>(
    scores: Tensor<B, 4>,
    scale: ScoreScale,
    mask: Option<Tensor<B, 4, Bool>>,
    dropout: &Dropout,
) -> Tensor<B, 4> {
    composed_probs(scores, scale, mask, dropout, softmax_last_unfused)
}

fn composed_probs<B: Backend>(
    scores: Tensor<B, 4>,
    scale: ScoreScale,
    mask: Option<Tensor<B, 4, Bool>>,
    dropout: &Dropout,
    softmax: fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    // The scale is applied in the scores' dtype (the matmul's, under autocast), the mask and
    // softmax in float32 (a half-precision MASKED would be −inf, and a row of −inf is NaN).
    let scores = match scale {
        ScoreScale::Divide(d) => scores.div_scalar(d),
        ScoreScale::Multiply(f) => scores.mul_scalar(f),
    }
    .cast(FloatDType::F32);
    let scores = match mask {
        Some(mask) => {
            let [b, h, q_len, k_len] = scores.dims();
            scores.mask_fill(mask.expand([b, h, q_len, k_len]), MASKED)
        }
        None => scores,
    };
    dropout.forward(softmax(scores))
}

/// `x` unchanged, with its values (forward) and its gradient (backward) laid out
/// contiguously: what a reshape of a transposed tensor needs, such as the attention heads'
/// split and merge. On burn-flex in float32 a parallel copy of the contiguous runs of the
/// last dimension (burn-flex's own copy walks a strided tensor element by element on one
/// thread); elsewhere `x` itself (the reshape that follows copies as it needs).
pub fn contiguous<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::contiguous(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    x
}

/// `buffer` `[batch, heads, capacity, dim]` with `values` `[batch, heads, n, dim]` written at
/// positions `start..start + n` of its third dimension (`slice_assign`), as a KV cache grows.
/// On burn-flex without autodiff, in float32, the values are written into the buffer itself
/// when nothing else holds it (burn-flex's `slice_assign` copies the whole buffer first);
/// elsewhere, or when the buffer is shared, `slice_assign`.
pub fn write_positions<B: Backend>(
    buffer: Tensor<B, 4>,
    values: Tensor<B, 4>,
    start: usize,
) -> Tensor<B, 4> {
    let [b, h, n, d] = values.dims();
    #[cfg(feature = "flex")]
    let (buffer, values) = match flex::write_positions(buffer, values, start) {
        Ok(y) => return y,
        Err(args) => args,
    };
    buffer.slice_assign([0..b, 0..h, start..start + n, 0..d], values)
}

/// The rows of `weight` `[vocab, d]` at `ids` `[batch, seq]`, as `[batch, seq, d]` (burn's
/// `embedding`, torch's dense `nn.Embedding`). On `Autodiff<Flex>` in float32 the backward
/// adds the output gradient's rows into one zeroed `[vocab, d]` buffer in token order
/// (burn-flex's own zero-fills it, copies it for alignment and copies it again before
/// adding); ids outside the table, other backends and dtypes take burn's operation.
pub fn embedding<B: Backend>(weight: Tensor<B, 2>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let (weight, ids) = match flex::embedding(weight, ids) {
        Ok(y) => return y,
        Err(args) => args,
    };
    burn::tensor::module::embedding(weight, ids)
}

/// `x·W (+ b)` for `x` `[rows, in]` and `W` `[in, out]` (burn's `linear`). On burn-flex
/// without autodiff, in float32 and for up to four rows (decoding), burnish's matrix–vector
/// kernel on a team of spinning threads (`W` stored `[in, out]`, or `[out, in]` as the
/// transposed view of an embedding table): burn-flex runs a matmul of fewer than 192³
/// multiply-adds on one thread, which at one row is every projection of a small decoder,
/// and a parallel one paid a thread wake-up per product. Elsewhere burn's `linear`.
pub fn linear_rows<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let mut y = linear_rows_each(x, vec![(weight, bias)]);
    y.pop()
        .unwrap_or_else(|| unreachable!("one result per layer"))
}

/// [`linear_rows`] of the same `x` through each of `layers` (weight, bias): on burn-flex's
/// decoding path the products share one dispatch to the threads (a decoder's q/k/v or
/// gate/up projections), elsewhere one `linear` each.
pub fn linear_rows_each<B: Backend>(
    x: Tensor<B, 2>,
    layers: Vec<(Tensor<B, 2>, Option<Tensor<B, 1>>)>,
) -> Vec<Tensor<B, 2>> {
    #[cfg(feature = "flex")]
    let (x, layers) = match flex::linear_rows_each(x, layers) {
        Ok(y) => return y,
        Err(args) => args,
    };
    layers
        .into_iter()
        .map(|(weight, bias)| burn::tensor::module::linear(x.clone(), weight, bias))
        .collect()
}

/// Exact GELU, `x · Φ(x)`, and its derivative `Φ(x) + x·φ(x)`: burnish's fused kernel on
/// burn-flex in float32 (Φ from an erfc approximation with a relative error below 1.2e-7,
/// computed in vector registers), the composition of `erf` ([`gelu_unfused`]) otherwise.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    gelu_unfused(x)
}

/// [`gelu`] composed of differentiable ops, `x · ½ · (1 + erf(x/√2))`: exact forward and
/// gradient on every backend.
pub fn gelu_unfused<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0);
    x.mul(cdf).div_scalar(2.0)
}

/// Whether [`layer_norm`], [`softmax_last`], [`attention_probs`] and [`gelu`] run burnish's fused kernels on `B` (for
/// float32 tensors): burn-flex with or without autodiff, when this crate is built with its
/// `flex` feature.
pub fn is_fused<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return true;
    }
    false
}

#[cfg(feature = "flex")]
mod flex {
    use std::any::{Any, TypeId};
    use std::sync::Arc;

    use burn::backend::Autodiff;
    use burn::backend::autodiff::NodeId;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::{
        BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
    };
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::{ActivationOps, FloatTensor};
    use burn::tensor::{Bool, DType, Int, Tensor, TensorData, TensorPrimitive};
    use burn_flex::{Flex, FlexTensor};
    use rayon::prelude::*;

    use super::{Dropout, MASKED, ScoreScale};
    use crate::gemv::{Order, Weight};

    /// Rows handed to one task: enough to amortize scheduling, few enough to balance two or
    /// more threads on a small batch. Also the block of the fixed-order sums over rows.
    const ROWS_PER_TASK: usize = 32;

    /// `Σ f(i)` for `i < n` in float64, in eight interleaved partial sums added in a fixed
    /// order: eight independent chains (one float64 chain waits on each addition's latency,
    /// which made the row sums the slowest part of these kernels), the same result on every
    /// run and thread count.
    #[inline(always)]
    fn lane_sum(n: usize, f: impl Fn(usize) -> f64) -> f64 {
        let mut lanes = [0.0f64; 8];
        let full = n - n % 8;
        for base in (0..full).step_by(8) {
            for (j, lane) in lanes.iter_mut().enumerate() {
                *lane += f(base + j);
            }
        }
        let tail: f64 = (full..n).map(&f).sum();
        lanes.iter().sum::<f64>() + tail
    }

    /// Whether the fused kernels can take this tensor: float32, rows of at least one value.
    fn fusable<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
        x.dtype() == DType::F32 && x.shape().num_elements() > 0 && x.dims()[D - 1] > 0
    }

    type NormArgs<B, const D: usize> = (Tensor<B, D>, Tensor<B, 1>, Option<Tensor<B, 1>>);

    pub(super) fn is_flex<B: Backend>() -> bool {
        let id = TypeId::of::<B>();
        id == TypeId::of::<Flex>()
            || id == TypeId::of::<Autodiff<Flex, NoCheckpointing>>()
            || id == TypeId::of::<Autodiff<Flex, BalancedCheckpointing>>()
    }

    /// `value` as a `U` when `T` is `U`, else `value` back.
    fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
        let mut slot = Some(value);
        match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
            Some(target) => Ok(target.take().expect("the slot holds the value")),
            None => Err(slot.expect("the slot holds the value")),
        }
    }

    /// The result computed on the concrete backend `F`, handed back as `B` (which is `F`).
    fn back<F: Backend, B: Backend, const D: usize>(y: FloatTensor<F>) -> Tensor<B, D> {
        match cast(Tensor::<F, D>::from_primitive(TensorPrimitive::Float(y))) {
            Ok(y) => y,
            Err(_) => unreachable!("called with F = B only"),
        }
    }

    fn primitive<F: Backend, const D: usize>(x: Tensor<F, D>) -> FloatTensor<F> {
        x.into_primitive().tensor()
    }

    pub(super) fn layer_norm<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        gamma: Tensor<B, 1>,
        beta: Option<Tensor<B, 1>>,
        epsilon: f64,
    ) -> Result<Tensor<B, D>, NormArgs<B, D>> {
        let width = x.dims()[D - 1];
        let fits = |t: &Tensor<B, 1>| t.dtype() == DType::F32 && t.dims()[0] == width;
        if !is_flex::<B>() || !fusable(&x) || !fits(&gamma) || !beta.as_ref().is_none_or(fits) {
            return Err((x, gamma, beta));
        }
        let args = match cast::<_, NormArgs<Flex, D>>((x, gamma, beta)) {
            Ok((x, gamma, beta)) => {
                let beta = beta.map(primitive);
                let (y, _) = norm_forward(&primitive(x), &primitive(gamma), beta.as_ref(), epsilon);
                return Ok(back::<Flex, B, D>(y));
            }
            Err(args) => args,
        };
        norm_on::<B, NoCheckpointing, D>(args, epsilon)
            .or_else(|args| norm_on::<B, BalancedCheckpointing, D>(args, epsilon))
    }

    fn norm_on<B: Backend, C: CheckpointStrategy, const D: usize>(
        args: NormArgs<B, D>,
        epsilon: f64,
    ) -> Result<Tensor<B, D>, NormArgs<B, D>> {
        let (x, gamma, beta) = cast::<_, NormArgs<Autodiff<Flex, C>, D>>(args)?;
        let (x, gamma) = (primitive(x), primitive(gamma));
        let beta = beta.map(primitive);
        let (y, stats) = norm_forward(
            &x.primitive,
            &gamma.primitive,
            beta.as_ref().map(|b| &b.primitive),
            epsilon,
        );
        let state = |x: NodeId, gamma: NodeId| NormState {
            x,
            gamma,
            stats: Arc::new(stats),
        };
        // Two node kinds: one with a bias, one without (ModernBERT's norms have none).
        let y = match beta {
            Some(beta) => {
                let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
                match NormBackward.prepare::<C>(nodes).compute_bound().stateful() {
                    OpsKind::Tracked(mut prep) => {
                        let ids = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                        prep.finish(state(ids.0, ids.1), y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(y),
                }
            }
            None => {
                let nodes = [x.node.clone(), gamma.node.clone()];
                match NormBackward.prepare::<C>(nodes).compute_bound().stateful() {
                    OpsKind::Tracked(mut prep) => {
                        let ids = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                        prep.finish(state(ids.0, ids.1), y)
                    }
                    OpsKind::UnTracked(prep) => prep.finish(y),
                }
            }
        };
        Ok(back::<Autodiff<Flex, C>, B, D>(y))
    }

    #[derive(Debug)]
    struct NormBackward;

    /// What the backward pass needs: the input and weight (checkpointed, so activation
    /// checkpointing may recompute the input) and each row's mean and 1/σ.
    #[derive(Debug, Clone)]
    struct NormState {
        x: NodeId,
        gamma: NodeId,
        stats: Arc<Vec<f32>>,
    }

    impl<const N: usize> Backward<Flex, N> for NormBackward {
        type State = NormState;

        fn backward(
            self,
            ops: Ops<Self::State, N>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let x: FlexTensor = checkpointer.retrieve_node_output(ops.state.x);
            let gamma: FlexTensor = checkpointer.retrieve_node_output(ops.state.gamma);
            let grad = grads.consume::<Flex>(&ops.node);
            let parent = |i: usize| ops.parents.get(i).and_then(Option::as_ref);
            let (dx, dgamma, dbeta) = norm_backward(
                &x,
                &gamma,
                &ops.state.stats,
                &grad,
                parent(1).is_some() || parent(2).is_some(),
            );
            if let Some(node) = parent(0) {
                grads.register::<Flex>(node.id, dx);
            }
            if let (Some(node), Some(dgamma)) = (parent(1), dgamma) {
                grads.register::<Flex>(node.id, dgamma);
            }
            if let (Some(node), Some(dbeta)) = (parent(2), dbeta) {
                grads.register::<Flex>(node.id, dbeta);
            }
        }
    }

    fn tensor(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, like.layout().shape().clone()))
    }

    /// `y = (x − mean)·rstd·γ + β` per row, with each row's `[mean, rstd]`. Sums in f64 and
    /// the variance from the centred values (two passes): no cancellation when the mean
    /// dwarfs the spread.
    fn norm_forward(
        x: &FlexTensor,
        gamma: &FlexTensor,
        beta: Option<&FlexTensor>,
        epsilon: f64,
    ) -> (FlexTensor, Vec<f32>) {
        let (x, gamma, beta) = (dense_copy(x), dense_copy(gamma), beta.map(dense_copy));
        let (xs, gs) = (x.storage::<f32>(), gamma.storage::<f32>());
        let bs = beta.as_ref().map(|b| b.storage::<f32>());
        let d = gs.len();
        let mut y = vec![0.0f32; xs.len()];
        let mut stats = vec![0.0f32; 2 * (xs.len() / d)];
        y.par_chunks_mut(ROWS_PER_TASK * d)
            .zip(stats.par_chunks_mut(ROWS_PER_TASK * 2))
            .zip(xs.par_chunks(ROWS_PER_TASK * d))
            .for_each(|((y, stats), x)| {
                for ((y, stats), x) in y.chunks_mut(d).zip(stats.chunks_mut(2)).zip(x.chunks(d)) {
                    let n = d as f64;
                    let mean = lane_sum(d, |j| f64::from(x[j])) / n;
                    let var = lane_sum(d, |j| (f64::from(x[j]) - mean).powi(2)) / n;
                    let (mean, rstd) = (mean as f32, (1.0 / (var + epsilon).sqrt()) as f32);
                    for ((y, &x), &g) in y.iter_mut().zip(x).zip(gs) {
                        *y = (x - mean) * rstd * g;
                    }
                    if let Some(bs) = bs {
                        y.iter_mut().zip(bs).for_each(|(y, &b)| *y += b);
                    }
                    stats.copy_from_slice(&[mean, rstd]);
                }
            });
        (tensor(y, &x), stats)
    }

    /// The layer norm's gradients: `dx = rstd·(g·γ − mean(g·γ) − x̂·mean(g·γ·x̂))` per row,
    /// and (when `weights`) `dγ = Σ g·x̂`, `dβ = Σ g` over rows, summed per block of
    /// [`ROWS_PER_TASK`] rows and then over blocks in order.
    fn norm_backward(
        x: &FlexTensor,
        gamma: &FlexTensor,
        stats: &[f32],
        grad: &FlexTensor,
        weights: bool,
    ) -> (FlexTensor, Option<FlexTensor>, Option<FlexTensor>) {
        let (x, gamma, grad) = (dense_copy(x), dense_copy(gamma), dense_copy(grad));
        let (xs, gs, dys) = (
            x.storage::<f32>(),
            gamma.storage::<f32>(),
            grad.storage::<f32>(),
        );
        let d = gs.len();
        let mut dx = vec![0.0f32; xs.len()];
        let blocks: Vec<Vec<f64>> = dx
            .par_chunks_mut(ROWS_PER_TASK * d)
            .zip(xs.par_chunks(ROWS_PER_TASK * d))
            .zip(dys.par_chunks(ROWS_PER_TASK * d))
            .zip(stats.par_chunks(ROWS_PER_TASK * 2))
            .map(|(((dx, x), dy), stats)| {
                let mut sums = if weights {
                    vec![0.0f64; 2 * d]
                } else {
                    Vec::new()
                };
                let mut xhat = vec![0.0f32; d];
                let rows = dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d));
                for (((dx, x), dy), stat) in rows.zip(stats.chunks(2)) {
                    let (mean, rstd) = (stat[0], stat[1]);
                    for (xh, &x) in xhat.iter_mut().zip(x) {
                        *xh = (x - mean) * rstd;
                    }
                    let a = lane_sum(d, |j| f64::from(dy[j] * gs[j]));
                    let b = lane_sum(d, |j| f64::from(dy[j] * gs[j]) * f64::from(xhat[j]));
                    let (a, b) = ((a / d as f64) as f32, (b / d as f64) as f32);
                    for (((dx, &xh), &dy), &g) in dx.iter_mut().zip(&xhat).zip(dy).zip(gs) {
                        *dx = rstd * (dy * g - a - xh * b);
                    }
                    if weights {
                        let (dgamma, dbeta) = sums.split_at_mut(d);
                        for (j, (&xh, &dy)) in xhat.iter().zip(dy).enumerate() {
                            dgamma[j] += f64::from(dy * xh);
                            dbeta[j] += f64::from(dy);
                        }
                    }
                }
                sums
            })
            .collect();
        let dx = tensor(dx, &x);
        if !weights {
            return (dx, None, None);
        }
        let mut sums = vec![0.0f64; 2 * d];
        for block in &blocks {
            sums.iter_mut().zip(block).for_each(|(s, &v)| *s += v);
        }
        let sums: Vec<f32> = sums.into_iter().map(|v| v as f32).collect();
        let dgamma = tensor(sums[..d].to_vec(), &gamma);
        let dbeta = tensor(sums[d..].to_vec(), &gamma);
        (dx, Some(dgamma), Some(dbeta))
    }

    pub(super) fn softmax_last<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !is_flex::<B>() || !fusable(&x) {
            return Err(x);
        }
        // burn-flex's own softmax is already one fused kernel without autodiff.
        softmax_on::<B, NoCheckpointing, D>(x).or_else(softmax_on::<B, BalancedCheckpointing, D>)
    }

    fn softmax_on<B: Backend, C: CheckpointStrategy, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let x = primitive(cast::<_, Tensor<Autodiff<Flex, C>, D>>(x)?);
        let y = <Flex as ActivationOps<Flex>>::softmax(x.primitive.clone(), D - 1);
        let y = match SoftmaxBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            // The output is all the backward pass needs: no input is kept.
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(back::<Autodiff<Flex, C>, B, D>(y))
    }

    /// The backward step of a one-input operation: consumes the output's gradient and, when
    /// the input is tracked, registers `input_grad(state, output_grad)` for it.
    fn pass_back<S>(
        ops: Ops<S, 1>,
        grads: &mut Gradients,
        input_grad: impl FnOnce(&S, &FlexTensor) -> FlexTensor,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        if let [Some(parent)] = &ops.parents {
            grads.register::<Flex>(parent.id, input_grad(&ops.state, &grad));
        }
    }

    #[derive(Debug)]
    struct SoftmaxBackward;

    impl Backward<Flex, 1> for SoftmaxBackward {
        type State = FlexTensor;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            pass_back(ops, grads, softmax_backward);
        }
    }

    /// `dx = y·(g − Σ g·y)` per row.
    fn softmax_backward(y: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
        let (y, grad) = (dense_copy(y), dense_copy(grad));
        let (ys, gs) = (y.storage::<f32>(), grad.storage::<f32>());
        let d = y.layout().shape().last().copied().unwrap_or(1);
        let mut dx = vec![0.0f32; ys.len()];
        dx.par_chunks_mut(ROWS_PER_TASK * d)
            .zip(ys.par_chunks(ROWS_PER_TASK * d))
            .zip(gs.par_chunks(ROWS_PER_TASK * d))
            .for_each(|((dx, y), g)| {
                for ((dx, y), g) in dx.chunks_mut(d).zip(y.chunks(d)).zip(g.chunks(d)) {
                    let dot = lane_sum(d, |j| f64::from(y[j] * g[j])) as f32;
                    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                        *dx = y * (g - dot);
                    }
                }
            });
        tensor(dx, &y)
    }

    type ProbsArgs<B> = (Tensor<B, 4>, Option<Tensor<B, 4, Bool>>);

    pub(super) fn attention_probs<B: Backend>(
        scores: Tensor<B, 4>,
        scale: ScoreScale,
        mask: Option<Tensor<B, 4, Bool>>,
        dropout: &Dropout,
    ) -> Result<Tensor<B, 4>, ProbsArgs<B>> {
        let dims = scores.dims();
        let broadcasts = |m: &Tensor<B, 4, Bool>| {
            let md = m.dims();
            md[3] == dims[3] && (0..3).all(|i| md[i] == 1 || md[i] == dims[i])
        };
        if !is_flex::<B>() || !fusable(&scores) || !mask.as_ref().is_none_or(broadcasts) {
            return Err((scores, mask));
        }
        let args = match cast::<_, ProbsArgs<Flex>>((scores, mask)) {
            // Without autodiff (evaluation) dropout is the identity.
            Ok((scores, mask)) => {
                let mask = mask.map(|m| KeyMask::new(m.into_primitive(), dims));
                let (probs, _) = probs_forward(&primitive(scores), scale, mask.as_ref(), None);
                return Ok(back::<Flex, B, 4>(probs));
            }
            Err(args) => args,
        };
        probs_on::<B, NoCheckpointing>(args, scale, dropout)
            .or_else(|args| probs_on::<B, BalancedCheckpointing>(args, scale, dropout))
    }

    fn probs_on<B: Backend, C: CheckpointStrategy>(
        args: ProbsArgs<B>,
        scale: ScoreScale,
        dropout: &Dropout,
    ) -> Result<Tensor<B, 4>, ProbsArgs<B>> {
        let (scores, mask) = cast::<_, ProbsArgs<Autodiff<Flex, C>>>(args)?;
        let dims = scores.dims();
        let kept = dropout.draw::<Autodiff<Flex, C>>(dims.iter().product(), &scores.device());
        let mask = mask.map(|m| Arc::new(KeyMask::new(m.into_primitive(), dims)));
        let x = primitive(scores);
        let (out, probs) = probs_forward(&x.primitive, scale, mask.as_deref(), kept.as_deref());
        let out = match ProbsBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            // The probabilities (before dropout) and the mask are all the backward pass
            // needs: the scores are not kept.
            OpsKind::Tracked(prep) => {
                let state = ProbsState {
                    probs: probs.unwrap_or_else(|| out.clone()),
                    kept: kept.map(Arc::new),
                    mask,
                    scale,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Ok(back::<Autodiff<Flex, C>, B, 4>(out))
    }

    /// A boolean key mask read in place under broadcasting: the mask of score row `r` (rows
    /// in `[batch, heads, q_len]` order) without expanding it to the scores' shape.
    #[derive(Debug, Clone)]
    struct KeyMask {
        mask: FlexTensor,
        /// Elements between consecutive batch, head and query rows of the mask; 0 where it
        /// broadcasts.
        strides: [usize; 3],
        heads: usize,
        q_len: usize,
        k_len: usize,
    }

    impl KeyMask {
        fn new(mask: FlexTensor, [_, heads, q_len, k_len]: [usize; 4]) -> Self {
            let mask = mask.to_contiguous();
            let md = mask.layout().shape().clone();
            let stride = |i: usize, step: usize| if md[i] == 1 { 0 } else { step };
            let strides = [
                stride(0, md[1] * md[2] * k_len),
                stride(1, md[2] * k_len),
                stride(2, k_len),
            ];
            KeyMask {
                mask,
                strides,
                heads,
                q_len,
                k_len,
            }
        }

        fn row(&self, r: usize) -> &[u8] {
            let (b, h, q) = (
                r / (self.heads * self.q_len),
                (r / self.q_len) % self.heads,
                r % self.q_len,
            );
            let start = b * self.strides[0] + h * self.strides[1] + q * self.strides[2];
            &self.mask.storage::<u8>()[start..start + self.k_len]
        }
    }

    #[derive(Debug)]
    struct ProbsBackward;

    #[derive(Debug, Clone)]
    struct ProbsState {
        probs: FlexTensor,
        kept: Option<Arc<Vec<f32>>>,
        mask: Option<Arc<KeyMask>>,
        scale: ScoreScale,
    }

    impl Backward<Flex, 1> for ProbsBackward {
        type State = ProbsState;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            pass_back(ops, grads, probs_backward);
        }
    }

    /// Each row: scaled, masked keys set to [`MASKED`], softmax (max subtracted, sum in
    /// float64); then the dropout multipliers. Returns the output and, with dropout, the
    /// probabilities before it.
    fn probs_forward(
        x: &FlexTensor,
        scale: ScoreScale,
        mask: Option<&KeyMask>,
        kept: Option<&[f32]>,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let x = dense_copy(x);
        let xs = x.storage::<f32>();
        let d = x.layout().shape().last().copied().unwrap_or(1);
        let block = ROWS_PER_TASK * d;
        let row = |r: usize, x: &[f32], p: &mut [f32]| {
            match scale {
                ScoreScale::Divide(s) => {
                    let s = s as f32;
                    p.iter_mut().zip(x).for_each(|(p, &x)| *p = x / s);
                }
                ScoreScale::Multiply(f) => {
                    let f = f as f32;
                    p.iter_mut().zip(x).for_each(|(p, &x)| *p = x * f);
                }
            }
            if let Some(mask) = mask {
                for (p, &m) in p.iter_mut().zip(mask.row(r)) {
                    if m != 0 {
                        *p = MASKED;
                    }
                }
            }
            let max = p
                .iter()
                .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
            // Below e^−87 a weight is 0 (f32's smallest normal is e^−87.3).
            p.iter_mut().for_each(|p| {
                let shifted = *p - max;
                *p = if shifted < -87.0 { 0.0 } else { exp(shifted) };
            });
            let sum = lane_sum(p.len(), |j| f64::from(p[j])) as f32;
            p.iter_mut().for_each(|p| *p /= sum);
        };
        let mut probs = vec![0.0f32; xs.len()];
        let rows = probs
            .par_chunks_mut(block)
            .zip(xs.par_chunks(block))
            .enumerate();
        let Some(kept) = kept else {
            rows.for_each(|(task, (p, x))| {
                for (i, (p, x)) in p.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                    row(task * ROWS_PER_TASK + i, x, p);
                }
            });
            return (tensor(probs, &x), None);
        };
        let mut out = vec![0.0f32; xs.len()];
        rows.zip(out.par_chunks_mut(block))
            .zip(kept.par_chunks(block))
            .for_each(|(((task, (p, x)), out), kept)| {
                for (i, (p, x)) in p.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                    row(task * ROWS_PER_TASK + i, x, p);
                }
                for ((out, &p), &k) in out.iter_mut().zip(p.iter()).zip(kept) {
                    *out = p * k;
                }
            });
        (tensor(out, &x), Some(tensor(probs, &x)))
    }

    /// Per row: `g·kept` (through dropout), `y·(g − Σ g·y)` (softmax), 0 at masked keys
    /// (`mask_fill`), then the scale's derivative.
    fn probs_backward(state: &ProbsState, grad: &FlexTensor) -> FlexTensor {
        let (y, grad) = (dense_copy(&state.probs), dense_copy(grad));
        let (ys, gs) = (y.storage::<f32>(), grad.storage::<f32>());
        let d = y.layout().shape().last().copied().unwrap_or(1);
        let block = ROWS_PER_TASK * d;
        let kept = state.kept.as_deref().map(Vec::as_slice);
        let mut dx = vec![0.0f32; ys.len()];
        dx.par_chunks_mut(block)
            .zip(ys.par_chunks(block))
            .zip(gs.par_chunks(block))
            .enumerate()
            .for_each(|(task, ((dx, y), g))| {
                let rows = dx.chunks_mut(d).zip(y.chunks(d)).zip(g.chunks(d));
                for (i, ((dx, y), g)) in rows.enumerate() {
                    let r = task * ROWS_PER_TASK + i;
                    dx.copy_from_slice(g);
                    if let Some(kept) = kept {
                        let kept = &kept[r * d..(r + 1) * d];
                        dx.iter_mut().zip(kept).for_each(|(dx, &k)| *dx *= k);
                    }
                    let dot = lane_sum(d, |j| f64::from(y[j] * dx[j])) as f32;
                    dx.iter_mut()
                        .zip(y)
                        .for_each(|(dx, &y)| *dx = y * (*dx - dot));
                    if let Some(mask) = &state.mask {
                        for (dx, &m) in dx.iter_mut().zip(mask.row(r)) {
                            if m != 0 {
                                *dx = 0.0;
                            }
                        }
                    }
                    match state.scale {
                        ScoreScale::Divide(s) => {
                            let s = s as f32;
                            dx.iter_mut().for_each(|dx| *dx /= s);
                        }
                        ScoreScale::Multiply(f) => {
                            let f = f as f32;
                            dx.iter_mut().for_each(|dx| *dx *= f);
                        }
                    }
                }
            });
        tensor(dx, &y)
    }

    pub(super) fn contiguous<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !is_flex::<B>() || !fusable(&x) {
            return Err(x);
        }
        let x = match cast::<_, Tensor<Flex, D>>(x) {
            Ok(x) => return Ok(back::<Flex, B, D>(dense_copy(&primitive(x)))),
            Err(x) => x,
        };
        contiguous_on::<B, NoCheckpointing, D>(x)
            .or_else(contiguous_on::<B, BalancedCheckpointing, D>)
    }

    fn contiguous_on<B: Backend, C: CheckpointStrategy, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let x = primitive(cast::<_, Tensor<Autodiff<Flex, C>, D>>(x)?);
        let y = dense_copy(&x.primitive);
        let y = CopyBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateless(y);
        Ok(back::<Autodiff<Flex, C>, B, D>(y))
    }

    #[derive(Debug)]
    struct CopyBackward;

    impl Backward<Flex, 1> for CopyBackward {
        type State = ();

        fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            pass_back(ops, grads, |(), grad| dense_copy(grad));
        }
    }

    /// `t` itself when its buffer is exactly its elements in order; otherwise a copy made
    /// of runs of the last dimension in parallel (burn-flex's own copy when that dimension
    /// is not contiguous).
    fn dense_copy(t: &FlexTensor) -> FlexTensor {
        let layout = t.layout();
        let n = layout.num_elements();
        if t.dtype() != DType::F32 || n == 0 {
            return t.to_contiguous();
        }
        if t.is_contiguous() && layout.start_offset() == 0 && t.storage::<f32>().len() == n {
            return t.clone();
        }
        let (shape, strides) = (layout.shape().clone(), layout.strides().to_vec());
        let rank = strides.len();
        let d = shape[rank - 1];
        if strides[rank - 1] != 1 {
            return t.to_contiguous();
        }
        let src = t.storage::<f32>();
        let start = layout.start_offset() as isize;
        let mut out = vec![0.0f32; n];
        out.par_chunks_mut(ROWS_PER_TASK * d)
            .enumerate()
            .for_each(|(task, rows)| {
                for (i, row) in rows.chunks_mut(d).enumerate() {
                    // The row's first element: its index over the leading dimensions.
                    let (mut rest, mut offset) = (task * ROWS_PER_TASK + i, start);
                    for k in (0..rank - 1).rev() {
                        offset += (rest % shape[k]) as isize * strides[k];
                        rest /= shape[k];
                    }
                    let offset = offset as usize;
                    row.copy_from_slice(&src[offset..offset + d]);
                }
            });
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    type WriteArgs<B> = (Tensor<B, 4>, Tensor<B, 4>);

    pub(super) fn write_positions<B: Backend>(
        buffer: Tensor<B, 4>,
        values: Tensor<B, 4>,
        start: usize,
    ) -> Result<Tensor<B, 4>, WriteArgs<B>> {
        let ([b, h, capacity, d], [vb, vh, n, vd]) = (buffer.dims(), values.dims());
        let fits = [vb, vh, vd] == [b, h, d] && start + n <= capacity;
        if !fits || buffer.dtype() != DType::F32 || values.dtype() != DType::F32 {
            return Err((buffer, values));
        }
        let (buffer, values) = cast::<_, WriteArgs<Flex>>((buffer, values))?;
        let mut target = primitive(buffer);
        let whole = target.is_contiguous()
            && target.layout().start_offset() == 0
            && target.storage::<f32>().len() == b * h * capacity * d;
        let source = dense_copy(&primitive(values));
        let written = match target.try_storage_mut::<f32>() {
            Some(dst) if whole => {
                let block = n * d;
                for (i, src) in source.storage::<f32>().chunks_exact(block).enumerate() {
                    dst[(i * capacity + start) * d..][..block].copy_from_slice(src);
                }
                true
            }
            _ => false,
        };
        let buffer: Tensor<Flex, 4> = Tensor::from_primitive(TensorPrimitive::Float(target));
        let out = match written {
            true => buffer,
            false => {
                let values = Tensor::from_primitive(TensorPrimitive::Float(source));
                buffer.slice_assign([0..b, 0..h, start..start + n, 0..d], values)
            }
        };
        Ok(cast(out).unwrap_or_else(|_| unreachable!("B is Flex")))
    }

    type EmbeddingArgs<B> = (Tensor<B, 2>, Tensor<B, 2, Int>);

    pub(super) fn embedding<B: Backend>(
        weight: Tensor<B, 2>,
        ids: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, EmbeddingArgs<B>> {
        // Without autodiff burn-flex's select is one pass already.
        if !is_flex::<B>()
            || weight.dtype() != DType::F32
            || TypeId::of::<B>() == TypeId::of::<Flex>()
        {
            return Err((weight, ids));
        }
        embedding_on::<B, NoCheckpointing>((weight, ids))
            .or_else(embedding_on::<B, BalancedCheckpointing>)
    }

    fn embedding_on<B: Backend, C: CheckpointStrategy>(
        args: EmbeddingArgs<B>,
    ) -> Result<Tensor<B, 3>, EmbeddingArgs<B>> {
        let (weight, ids) = cast::<_, EmbeddingArgs<Autodiff<Flex, C>>>(args)?;
        let [vocab, d] = weight.dims();
        let Some(rows) = host_ids(ids.clone().into_primitive(), vocab) else {
            // Out-of-range ids: burn's operation, and its behaviour, as without the kernel.
            return Err(
                cast((weight, ids)).unwrap_or_else(|_| unreachable!("B is Autodiff<Flex, C>"))
            );
        };
        let [batch, seq] = ids.dims();
        let w = primitive(weight);
        let table = dense_copy(&w.primitive);
        let ts = table.storage::<f32>();
        let mut out = vec![0.0f32; rows.len() * d];
        out.par_chunks_mut(ROWS_PER_TASK * d)
            .zip(rows.par_chunks(ROWS_PER_TASK))
            .for_each(|(out, rows)| {
                for (out, &row) in out.chunks_mut(d).zip(rows) {
                    out.copy_from_slice(&ts[row * d..(row + 1) * d]);
                }
            });
        let out = FlexTensor::from_data(TensorData::new(out, [batch, seq, d]));
        let out = match EmbeddingBackward
            .prepare::<C>([w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((Arc::new(rows), vocab), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Ok(back::<Autodiff<Flex, C>, B, 3>(out))
    }

    /// The ids as row numbers, `None` when one is outside `0..vocab` or of another dtype.
    fn host_ids(ids: FlexTensor, vocab: usize) -> Option<Vec<usize>> {
        let ids = ids.to_contiguous();
        let row = |v: i64| usize::try_from(v).ok().filter(|&v| v < vocab);
        match ids.dtype() {
            DType::I64 => ids.storage::<i64>().iter().map(|&v| row(v)).collect(),
            DType::I32 => ids
                .storage::<i32>()
                .iter()
                .map(|&v| row(i64::from(v)))
                .collect(),
            _ => None,
        }
    }

    #[derive(Debug)]
    struct EmbeddingBackward;

    impl Backward<Flex, 1> for EmbeddingBackward {
        /// The row of every token and the table's height.
        type State = (Arc<Vec<usize>>, usize);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            pass_back(ops, grads, |(rows, vocab), grad| {
                let grad = dense_copy(grad);
                let gs = grad.storage::<f32>();
                let d = grad.layout().shape().last().copied().unwrap_or(1);
                let mut dw = vec![0.0f32; vocab * d];
                // Token order: the sums of a repeated id are always added the same way.
                for (g, &row) in gs.chunks(d).zip(rows.iter()) {
                    let target = &mut dw[row * d..(row + 1) * d];
                    target.iter_mut().zip(g).for_each(|(t, &g)| *t += g);
                }
                FlexTensor::from_data(TensorData::new(dw, [*vocab, d]))
            });
        }
    }

    type LinearArgs<B> = (Tensor<B, 2>, Vec<(Tensor<B, 2>, Option<Tensor<B, 1>>)>);

    /// Rows up to which [`linear_rows`](super::linear_rows) runs [`crate::gemv`].
    const FEW_ROWS: usize = 4;

    /// The [`Weight`] of a `[d_in, d_out]` float32 tensor stored `[in, out]` or `[out, in]`.
    fn gemv_weight(weight: &Tensor<Flex, 2>) -> Option<Weight> {
        let [d_in, d_out] = weight.dims();
        let storage = weight.clone().into_primitive().tensor();
        let layout = storage.layout();
        let order = match layout.strides() {
            _ if storage.dtype() != DType::F32 || d_in * d_out == 0 => return None,
            [s, 1] if *s == d_out as isize => Order::InOut,
            [1, s] if *s == d_in as isize => Order::OutIn,
            _ => return None,
        };
        let offset = layout.start_offset();
        Some(Weight {
            storage,
            offset,
            dims: [d_in, d_out],
            order,
        })
    }

    pub(super) fn linear_rows_each<B: Backend>(
        x: Tensor<B, 2>,
        layers: Vec<(Tensor<B, 2>, Option<Tensor<B, 1>>)>,
    ) -> Result<Vec<Tensor<B, 2>>, LinearArgs<B>> {
        let rows = x.dims()[0];
        let biases_f32 = layers
            .iter()
            .all(|(_, b)| b.as_ref().is_none_or(|b| b.dtype() == DType::F32));
        if !(1..=FEW_ROWS).contains(&rows) || x.dtype() != DType::F32 || !biases_f32 {
            return Err((x, layers));
        }
        let (x, layers) = cast::<_, LinearArgs<Flex>>((x, layers))?;
        let weights: Option<Vec<Weight>> = layers.iter().map(|(w, _)| gemv_weight(w)).collect();
        let Some(weights) = weights else {
            // A weight in another layout (a strided slice): burn's `linear` for all.
            let args = cast::<_, LinearArgs<B>>((x, layers));
            return Err(args.unwrap_or_else(|_| unreachable!("B is Flex")));
        };
        let xs = dense_copy(&primitive(x)).storage::<f32>().to_vec();
        let ys = crate::gemv::matmul_rows(xs, rows, weights);
        let out: Vec<Tensor<Flex, 2>> = ys
            .into_iter()
            .zip(layers)
            .map(|(mut y, (weight, bias))| {
                let d_out = weight.dims()[1];
                if let Some(bias) = bias {
                    let bias = dense_copy(&primitive(bias));
                    for row in y.chunks_exact_mut(d_out) {
                        row.iter_mut()
                            .zip(bias.storage::<f32>())
                            .for_each(|(y, b)| *y += b);
                    }
                }
                let y = FlexTensor::from_data(TensorData::new(y, [rows, d_out]));
                Tensor::from_primitive(TensorPrimitive::Float(y))
            })
            .collect();
        Ok(cast(out).unwrap_or_else(|_| unreachable!("B is Flex")))
    }

    pub(super) fn gelu<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !is_flex::<B>() || !fusable(&x) {
            return Err(x);
        }
        let x = match cast::<_, Tensor<Flex, D>>(x) {
            Ok(x) => return Ok(back::<Flex, B, D>(gelu_forward(&primitive(x)))),
            Err(x) => x,
        };
        gelu_on::<B, NoCheckpointing, D>(x).or_else(gelu_on::<B, BalancedCheckpointing, D>)
    }

    fn gelu_on<B: Backend, C: CheckpointStrategy, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let x = primitive(cast::<_, Tensor<Autodiff<Flex, C>, D>>(x)?);
        let y = gelu_forward(&x.primitive);
        let y = match GeluBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(back::<Autodiff<Flex, C>, B, D>(y))
    }

    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        type State = NodeId;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let x: FlexTensor = checkpointer.retrieve_node_output(ops.state);
            pass_back(ops, grads, |_, grad| gelu_backward(&x, grad));
        }
    }

    /// Elements handed to one task of the element-wise kernels.
    const ELEMENTS_PER_TASK: usize = 1 << 14;

    fn gelu_forward(x: &FlexTensor) -> FlexTensor {
        let x = dense_copy(x);
        let xs = x.storage::<f32>();
        let mut y = vec![0.0f32; xs.len()];
        y.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(xs.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * normal_cdf(x);
                }
            });
        tensor(y, &x)
    }

    /// `g · (Φ(x) + x·φ(x))`.
    fn gelu_backward(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
        let (x, grad) = (dense_copy(x), dense_copy(grad));
        let (xs, gs) = (x.storage::<f32>(), grad.storage::<f32>());
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(xs.par_chunks(ELEMENTS_PER_TASK))
            .zip(gs.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|((dx, x), g)| {
                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    // 1/√(2π)
                    let pdf = 0.398_942_3 * exp(-0.5 * x * x);
                    *dx = g * (normal_cdf(x) + x * pdf);
                }
            });
        tensor(dx, &x)
    }

    /// Φ(x) = ½·erfc(−x/√2), with erfc from its Chebyshev fit (Numerical Recipes' `erfcc`,
    /// relative error below 1.2e-7 for every argument). Branch-free, so loops over it run in
    /// vector registers.
    #[inline(always)]
    fn normal_cdf(x: f32) -> f32 {
        let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = -1.265_512_2
            + t * (1.000_023_7
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_204
                                    + t * (1.488_515_9
                                        + t * (-0.822_152_23 + t * 0.170_872_77))))))));
        let tail = 0.5 * t * exp(-z * z + poly);
        if x >= 0.0 { 1.0 - tail } else { tail }
    }

    /// `eˣ` within two units in the last place for the arguments GELU needs (x ≤ 1.3;
    /// below −87 it returns about 1e-38 instead of less): 2ᵏ·p(r) with `k` rounded by the
    /// 1.5·2²³ trick and a degree-6 Taylor polynomial on |r| ≤ ln2/2, all vectorizable.
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        const ROUND: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let shifted = x * std::f32::consts::LOG2_E + ROUND;
        let k = shifted - ROUND;
        let r = (x - k * 0.693_145_75) - k * 1.428_606_8e-6;
        let p = 1.0
            + r * (1.0
                + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
        let bits = shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23;
        p * f32::from_bits(bits)
    }
}
