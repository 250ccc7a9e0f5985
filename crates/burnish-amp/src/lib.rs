#![doc = include_str!("../README.md")]

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
