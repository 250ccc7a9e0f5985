//! Mixed-precision building blocks for burn, with PyTorch AMP semantics:
//!
//! - [`LossScaler`]: dynamic loss scaling exactly like `torch.amp.GradScaler` (init 2^16,
//!   growth 2, backoff 0.5, interval 2000; skip the step on inf/NaN and say so, so that the
//!   LR schedule does not advance either), with a saveable [`ScalerState`].
//! - [`Precision`]: the precision policy (fp32, bf16 or fp16 compute over float32 master
//!   weights, gradients and optimizer moments) that the trainer wires in.

mod precision;
mod scaler;

pub use precision::{ParsePrecisionError, Precision};
pub use scaler::{LossScaler, LossScalerConfig, ScalerState, StepOutcome};

/// Errors of burnish-amp.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AmpError {
    /// A loss-scaler setting is out of range.
    #[error("invalid loss scaler {field}: {value}")]
    InvalidConfig {
        /// The config field.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A saved scaler state cannot be used.
    #[error("invalid saved loss scale {scale}: must be finite and at least min_scale")]
    InvalidState {
        /// The saved scale.
        scale: f32,
    },
}
