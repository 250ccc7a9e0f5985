//! Global-norm and value clipping over all gradients of a module.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::GradError;
use crate::visit::{Elementwise, Reduction, map_grads, reduce_grads};

/// The norm used by [`clip_grad_norm`] and [`grad_norm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormType {
    /// Euclidean norm over all gradient elements (torch's default `norm_type=2.0`).
    #[default]
    L2,
    /// Largest absolute gradient element (`norm_type=inf`).
    Inf,
}

/// The global gradient norm, computed on the device as torch does: the norm of the vector
/// of per-parameter norms. Parameters without a gradient are ignored; with no gradient at
/// all the norm is 0.
///
/// Only one value leaves the device (the result), so this costs one synchronization.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
    norm: NormType,
) -> f64 {
    let per_tensor = match norm {
        NormType::L2 => Reduction::SumSquares,
        NormType::Inf => Reduction::MaxAbs,
    };
    let mut norms = reduce_grads::<B, M>(module, grads, per_tensor);
    if norms.is_empty() {
        return 0.0;
    }
    if norm == NormType::L2 {
        // torch takes the norm of the per-tensor norms.
        norms = norms
            .into_iter()
            .map(|sum_squares| sum_squares.sqrt())
            .collect();
    }
    let norms = Tensor::cat(norms, 0);
    let total = match norm {
        NormType::L2 => norms.square().sum().sqrt(),
        NormType::Inf => norms.max(),
    };
    total.into_scalar().elem::<f64>()
}

/// Clips all gradients together by their global norm, exactly like
/// `torch.nn.utils.clip_grad_norm_`, and returns the norm *before* clipping.
///
/// ```text
/// total = ‖(‖g₁‖, ‖g₂‖, …)‖
/// coef  = min(1, max_norm / (total + 1e-6))      (f32 arithmetic, as torch)
/// gᵢ   ← gᵢ · coef
/// ```
/// With `coef = 1` the gradients are left untouched. burn's own
/// `GradientClipping::Norm` clips each tensor by its own norm, which is not the same.
///
/// # Errors
/// [`GradError::NonFiniteNorm`] when `error_if_nonfinite` is set and the norm is NaN or
/// infinite (the gradients are then left as they were); [`GradError::InvalidMaxNorm`] when
/// `max_norm` is negative or not finite. Without `error_if_nonfinite`, a non-finite norm
/// propagates into the gradients as torch's does (a loss scaler then skips the step).
///
/// ```
/// use burn::backend::Autodiff;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::GradientsParams;
/// use burn::tensor::Tensor;
/// use burn_ndarray::NdArray;
/// use burnish_grad::{clip_grad_norm, grad_norm, NormType};
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model: Linear<B> = LinearConfig::new(4, 2).init(&device);
/// let loss = model.forward(Tensor::<B, 2>::ones([8, 4], &device) * 100.0).sum();
/// let mut grads = GradientsParams::from_grads(loss.backward(), &model);
/// let before = clip_grad_norm(&model, &mut grads, 1.0, NormType::L2, false)?;
/// assert!(before > 1.0);
/// assert!(grad_norm(&model, &grads, NormType::L2) <= 1.0 + 1e-6);
/// # Ok::<(), burnish_grad::GradError>(())
/// ```
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
    norm: NormType,
    error_if_nonfinite: bool,
) -> Result<f64, GradError> {
    if !(max_norm.is_finite() && max_norm >= 0.0) {
        return Err(GradError::InvalidMaxNorm(max_norm));
    }
    let total = grad_norm(module, grads, norm);
    if error_if_nonfinite && !total.is_finite() {
        return Err(GradError::NonFiniteNorm { norm: total });
    }
    let coef = clip_coefficient(max_norm, total);
    if coef != 1.0 {
        map_grads::<B, M>(module, grads, Elementwise::Mul(coef.into()));
    }
    Ok(total)
}

/// `min(1, max_norm / (total + 1e-6))` in f32, keeping NaN (torch's clamp propagates it,
/// `f32::min` would not).
fn clip_coefficient(max_norm: f64, total: f64) -> f32 {
    let coef = max_norm as f32 / (total as f32 + 1e-6);
    if coef.is_nan() { coef } else { coef.min(1.0) }
}

/// Clamps every gradient element into `[-clip_value, clip_value]`
/// (`torch.nn.utils.clip_grad_value_`).
///
/// # Errors
/// [`GradError::InvalidMaxNorm`] when `clip_value` is negative or not finite.
pub fn clip_grad_value<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    clip_value: f64,
) -> Result<(), GradError> {
    if !(clip_value.is_finite() && clip_value >= 0.0) {
        return Err(GradError::InvalidMaxNorm(clip_value));
    }
    map_grads::<B, M>(module, grads, Elementwise::Clamp(clip_value));
    Ok(())
}

/// Whether any gradient element of `module` in `grads` is NaN or infinite.
///
/// One value leaves the device, whatever the number of parameters.
pub fn has_non_finite<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> bool {
    let flags = reduce_grads::<B, M>(module, grads, Reduction::NonFinite);
    if flags.is_empty() {
        return false;
    }
    Tensor::cat(flags, 0).sum().into_scalar().elem::<f64>() > 0.0
}

/// Multiplies every gradient of `module` in `grads` by `factor` (used to unscale after
/// loss scaling).
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    map_grads::<B, M>(module, grads, Elementwise::Mul(factor));
}

#[cfg(test)]
mod tests {
    use super::clip_coefficient;

    #[test]
    fn coefficient_clamps_and_keeps_nan() {
        assert_eq!(clip_coefficient(1.0, 0.5), 1.0);
        assert!((clip_coefficient(1.0, 4.0) - 0.25).abs() < 1e-6);
        assert!(clip_coefficient(1.0, f64::NAN).is_nan());
        assert_eq!(clip_coefficient(1.0, f64::INFINITY), 0.0);
    }
}
