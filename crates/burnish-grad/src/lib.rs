#![doc = include_str!("../README.md")]

mod accumulate;
mod clip;
#[cfg(feature = "flex")]
mod fused;
mod sync;
mod visit;

pub use accumulate::GradAccumulator;
pub use clip::{NormType, clip_grad_norm, clip_grad_value, grad_norm, has_non_finite, scale_grads};
pub use sync::{GradSync, SyncError};

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
    /// Data-parallel workers could not sum their gradients.
    #[error(transparent)]
    Sync(#[from] SyncError),
}
