//! Gradient utilities for full-parameter fine-tuning on burn, matching PyTorch:
//!
//! - [`clip_grad_norm`]: one global norm over *all* gradients, exactly
//!   `torch.nn.utils.clip_grad_norm_` (L2 or ∞ norm, the `1e-6`, returns the pre-clip norm,
//!   optional error on a non-finite norm); [`clip_grad_value`]; [`grad_norm`].
//! - [`GradAccumulator`]: micro-batch gradients summed and normalized by the item count of
//!   the whole accumulation cycle (the October 2024 transformers fix).
//! - [`has_non_finite`] and [`scale_grads`]: what a mixed-precision loss scaler needs.
//!
//! Gradients are burn's [`GradientsParams`](burn::optim::GradientsParams) (on the inner
//! backend, as `GradientsParams::from_grads` gives them); functions take the module too,
//! because the module's parameters are what say which gradients exist.

mod accumulate;
mod clip;
mod visit;

pub use accumulate::GradAccumulator;
pub use clip::{NormType, clip_grad_norm, clip_grad_value, grad_norm, has_non_finite, scale_grads};

/// Errors of burnish-grad.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GradError {
    /// The global norm was NaN or infinite and the caller asked for an error.
    #[error(
        "the total gradient norm is {norm}: gradients contain NaN or inf (a loss scaler \
         should skip this step; without one, lower the learning rate or check the data)"
    )]
    NonFiniteNorm {
        /// The norm that was found.
        norm: f64,
    },
    /// A clipping threshold was negative or not finite.
    #[error("clipping threshold must be a finite number >= 0, got {0}")]
    InvalidMaxNorm(f64),
    /// An accumulation cycle ended without any item to normalize by.
    #[error("accumulation cycle of {micro_batches} micro-batch(es) counted 0 items")]
    NoItems {
        /// Micro-batches in the cycle.
        micro_batches: usize,
    },
}
