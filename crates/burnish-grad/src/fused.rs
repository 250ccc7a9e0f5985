//! Gradient passes fused on burn-flex (feature `flex`): the sum of squares of a gradient
//! (the clipping norm) without a squared temporary, and scaling in place, both in blocks on
//! rayon's threads. burn-flex runs its scalar operations on one thread and `square` writes a
//! full temporary; on MiniLM these two passes over 22.7M gradient values took about 5 % of a
//! training step while the other cores waited. Other backends and dtypes take the composed
//! operations of [`visit`](crate::visit).

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::Flex;
use rayon::prelude::*;

use crate::visit::{Elementwise, Reduction};

/// Values per task: large enough to amortize scheduling, small enough to balance threads.
/// Also the block of the fixed-order sum, so the result does not depend on the threads.
const BLOCK: usize = 1 << 14;

/// `reduction` of `g` on burn-flex in float32: Σ g² summed in float64 per block and the
/// blocks in order; 1 when any value is NaN or ±inf. `None` elsewhere (and for `MaxAbs`).
pub(crate) fn reduce<B: Backend, const D: usize>(
    reduction: Reduction,
    g: &Tensor<B, D>,
) -> Option<Tensor<B, 1>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() || g.dtype() != DType::F32 {
        return None;
    }
    let g: Tensor<Flex, D> = cast(g.clone())?;
    let g = g.into_primitive().tensor().to_contiguous();
    let values = g.storage::<f32>();
    let value = match reduction {
        Reduction::SumSquares => values
            .par_chunks(BLOCK)
            .map(sum_squares)
            .collect::<Vec<f64>>()
            .into_iter()
            .sum::<f64>() as f32,
        Reduction::NonFinite => {
            let any = values
                .par_chunks(BLOCK)
                .any(|b| b.iter().any(|v| !v.is_finite()));
            if any { 1.0 } else { 0.0 }
        }
        Reduction::MaxAbs => return None,
    };
    let value =
        Tensor::<Flex, 1>::from_data(TensorData::new(vec![value], [1]), &Default::default());
    cast(value)
}

/// `op` applied to `g` in place on burn-flex in float32, `x·c` or `x/c` with `c` rounded to
/// float32 as burn's scalar operations round it (the same bits); `Err(g)` elsewhere (and for
/// `Clamp`).
pub(crate) fn map<B: Backend, const D: usize>(
    op: Elementwise,
    g: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() || g.dtype() != DType::F32 {
        return Err(g);
    }
    let c = match op {
        Elementwise::Mul(c) | Elementwise::Div(c) => c as f32,
        Elementwise::Clamp(_) => return Err(g),
    };
    let flex: Tensor<Flex, D> = cast(g).unwrap_or_else(|| unreachable!("B is Flex"));
    // A contiguous tensor shares its buffer in `to_contiguous`; the temporary is dropped at
    // the end of the statement, so `storage_mut` works in place unless another owner remains.
    let mut t = flex.into_primitive().tensor().to_contiguous();
    let values = t.storage_mut::<f32>();
    match op {
        Elementwise::Div(_) => values
            .par_chunks_mut(BLOCK)
            .for_each(|b| b.iter_mut().for_each(|v| *v /= c)),
        _ => values
            .par_chunks_mut(BLOCK)
            .for_each(|b| b.iter_mut().for_each(|v| *v *= c)),
    }
    let t = Tensor::<Flex, D>::from_primitive(burn::tensor::TensorPrimitive::Float(t));
    Ok(cast(t).unwrap_or_else(|| unreachable!("B is Flex")))
}

/// Σ v² in float64 over eight interleaved partial sums (independent chains, so the adds
/// do not wait on each other's latency), added in a fixed order.
fn sum_squares(block: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = block.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v) * f64::from(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// `value` as a `U` when `T` is `U` (std's `Any`, by value through a box).
fn cast<T: 'static, U: 'static>(value: T) -> Option<U> {
    (Box::new(value) as Box<dyn Any>)
        .downcast()
        .ok()
        .map(|b| *b)
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::optim::GradientsParams;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Tensor, TensorData};
    use burn_flex::Flex;
    use burn_ndarray::NdArray;

    use crate::{GradAccumulator, NormType, clip_grad_norm, has_non_finite};

    /// A `[rows, cols]` layer (more than one block of values) and gradients over many
    /// magnitudes; `poison` puts a value into the weight gradient's last element.
    fn setup<B: AutodiffBackend>(poison: Option<f32>) -> (Linear<B>, GradientsParams) {
        let (rows, cols) = (9, super::BLOCK / 4 + 5);
        let device = Default::default();
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| {
                    let u = ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0;
                    if i % 5 == 0 { u * 40.0 } else { u * 1e-3 }
                })
                .collect()
        };
        let model = Linear::<B> {
            weight: Param::from_data(
                TensorData::new(values(rows * cols, 1), [rows, cols]),
                &device,
            ),
            bias: Some(Param::from_data(
                TensorData::new(values(cols, 2), [cols]),
                &device,
            )),
        };
        let mut g = values(rows * cols, 3);
        if let Some(p) = poison {
            *g.last_mut().unwrap() = p;
        }
        let mut grads = GradientsParams::new();
        let w = Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(g, [rows, cols]), &device);
        grads.register(model.weight.id, w);
        let b = Tensor::<B::InnerBackend, 1>::from_data(
            TensorData::new(values(cols, 4), [cols]),
            &device,
        );
        grads.register(model.bias.as_ref().unwrap().id, b);
        (model, grads)
    }

    fn host<B: AutodiffBackend>(model: &Linear<B>, grads: &GradientsParams) -> Vec<Vec<u32>> {
        let w = grads.get::<B::InnerBackend, 2>(model.weight.id).unwrap();
        let b = grads
            .get::<B::InnerBackend, 1>(model.bias.as_ref().unwrap().id)
            .unwrap();
        [
            w.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec().unwrap(),
        ]
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
    }

    /// Clip (norm, then the in-place scale) and an accumulation's division on burn-flex
    /// against the composed operations on burn-ndarray: the norm within 1e-6 relative (the
    /// sums differ in order and width), the scaled gradients the same bits given the same
    /// factor; non-finite values found in the last element of the last block.
    #[test]
    fn fused_passes_match_the_composed_operations() {
        let (fm, mut fg) = setup::<Autodiff<Flex>>(None);
        let (nm, mut ng) = setup::<Autodiff<NdArray>>(None);
        let f = clip_grad_norm(&fm, &mut fg, 1.0, NormType::L2, true).unwrap();
        let n = clip_grad_norm(&nm, &mut ng, 1.0, NormType::L2, true).unwrap();
        assert!(((f - n) / n).abs() < 1e-6, "norms {f} and {n}");
        // The same factor on both sides: scale burn-ndarray's by burn-flex's norm.
        let (fm, mut fg) = setup::<Autodiff<Flex>>(None);
        let (nm, mut ng) = setup::<Autodiff<NdArray>>(None);
        crate::scale_grads(&fm, &mut fg, 1.0 / (f + 1e-6));
        crate::scale_grads(&nm, &mut ng, 1.0 / (f + 1e-6));
        assert_eq!(host(&fm, &fg), host(&nm, &ng), "scaled gradients");

        let (fm, fg) = setup::<Autodiff<Flex>>(None);
        let (nm, ng) = setup::<Autodiff<NdArray>>(None);
        let mut acc = GradAccumulator::default();
        acc.add_mean(&fm, fg, 3);
        let fg = acc.finish(&fm).unwrap();
        acc.add_mean(&nm, ng, 3);
        let ng = acc.finish(&nm).unwrap();
        assert_eq!(host(&fm, &fg), host(&nm, &ng), "divided gradients");

        for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let (m, g) = setup::<Autodiff<Flex>>(Some(poison));
            assert!(has_non_finite(&m, &g), "{poison}");
        }
        let (m, g) = setup::<Autodiff<Flex>>(None);
        assert!(!has_non_finite(&m, &g));
    }
}
