//! The precision policy: which dtype computes, which dtype holds the master weights.

use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// Compute precision of a training run. Master weights, the gradients the optimizer sees
/// and the optimizer moments are float32 in every mode; only the forward and backward
/// compute runs in half precision.
///
/// Written `"fp32"`, `"bf16"` or `"fp16"` in configs and on the command line.
///
/// ```
/// use burnish_amp::Precision;
/// let p: Precision = "fp16".parse()?;
/// assert!(p.needs_loss_scaling());
/// assert!(!Precision::Bf16.needs_loss_scaling());
/// # Ok::<(), burnish_amp::ParsePrecisionError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// bfloat16 compute: float32's range, so no loss scaling is needed.
    Bf16,
    /// float16 compute: narrow range, so the loss is scaled dynamically.
    Fp16,
}

impl Precision {
    /// The dtype forward and backward compute in.
    pub fn compute_dtype(self) -> FloatDType {
        match self {
            Precision::Fp32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::Fp16 => FloatDType::F16,
        }
    }

    /// The dtype of master weights, optimizer-facing gradients and optimizer moments.
    pub fn master_dtype(self) -> FloatDType {
        FloatDType::F32
    }

    /// Whether this mode needs a [`LossScaler`](crate::LossScaler) (only fp16).
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::Fp16
    }

    /// The config spelling: `fp32`, `bf16` or `fp16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A precision name that is not `fp32`, `bf16` or `fp16`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision {0:?}: expected fp32, bf16 or fp16")]
pub struct ParsePrecisionError(pub String);

impl FromStr for Precision {
    type Err = ParsePrecisionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "fp16" | "f16" | "float16" => Ok(Precision::Fp16),
            _ => Err(ParsePrecisionError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
            assert_eq!(p.as_str().parse::<Precision>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
            assert_eq!(p.master_dtype(), FloatDType::F32);
        }
        assert!("fp8".parse::<Precision>().is_err());
    }
}
