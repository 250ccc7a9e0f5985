//! Rotary position embeddings: the inverse frequencies of transformers' rope types, their
//! cos/sin tables and the rotation.

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};

use crate::ModelError;

/// How the inverse frequencies are rescaled for a longer context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `default`: none.
    None,
    /// `linear`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, the band between
    /// interpolated (Llama 3.1 / 3.2).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length of pretraining.
        original: f64,
    },
}

/// The rotary embedding of a group of layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// The base θ.
    pub theta: f64,
    /// The fraction of each head that is rotated (the rest passes unchanged).
    pub partial: f64,
    /// Frequency rescaling.
    pub scaling: RopeScaling,
}

fn number(field: &'static str, params: &serde_json::Value, key: &str) -> Result<f64, ModelError> {
    params
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| {
            ModelError::Inconsistent(format!("{field}.{key} must be a number > 0, got {params}"))
        })
}

impl Rope {
    /// Reads a rope parameter object (transformers 5's `rope_parameters`, or 4's
    /// `rope_scaling`; `null` is the default type) with the config's fallbacks.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for rope types other than `default`, `linear`,
    /// `llama3`; [`ModelError::Inconsistent`] for missing or non-positive parameters.
    pub fn from_params(
        field: &'static str,
        params: &serde_json::Value,
        theta: f64,
        partial: Option<f64>,
        original_max_positions: usize,
    ) -> Result<Self, ModelError> {
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default");
        let theta = match params.get("rope_theta") {
            Some(v) if !v.is_null() => number(field, params, "rope_theta")?,
            _ => theta,
        };
        let partial = params
            .get("partial_rotary_factor")
            .and_then(serde_json::Value::as_f64)
            .or(partial)
            .unwrap_or(1.0);
        if !(theta.is_finite() && theta > 0.0) {
            return Err(ModelError::Inconsistent(format!(
                "rope_theta must be > 0, got {theta}"
            )));
        }
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(ModelError::Inconsistent(format!(
                "partial_rotary_factor must be in (0, 1], got {partial}"
            )));
        }
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: number(field, params, "factor")?,
            },
            "llama3" => {
                let original = match params.get("original_max_position_embeddings") {
                    Some(v) if !v.is_null() => {
                        number(field, params, "original_max_position_embeddings")?
                    }
                    _ => original_max_positions as f64,
                };
                let scaling = RopeScaling::Llama3 {
                    factor: number(field, params, "factor")?,
                    low_freq_factor: number(field, params, "low_freq_factor")?,
                    high_freq_factor: number(field, params, "high_freq_factor")?,
                    original,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = scaling
                    && high_freq_factor <= low_freq_factor
                {
                    return Err(ModelError::Inconsistent(format!(
                        "{field}: high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                    )));
                }
                scaling
            }
            other => {
                return Err(ModelError::Unsupported {
                    field,
                    value: other.to_owned(),
                    supported: "rope types default, linear, llama3",
                });
            }
        };
        Ok(Rope {
            theta,
            partial,
            scaling,
        })
    }

    /// The number of rotated features of a head: `int(head_dim · partial)`.
    pub fn rotary_dim(&self, head_dim: usize) -> usize {
        (head_dim as f64 * self.partial) as usize
    }

    /// The inverse frequencies `[rotary_dim / 2]`, in float32 as transformers computes
    /// them: `1 / θ^(2i/d)`, then rescaled.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let dim = self.rotary_dim(head_dim);
        let base =
            (0..dim / 2).map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / dim as f32));
        match self.scaling {
            RopeScaling::None => base.collect(),
            RopeScaling::Linear { factor } => base.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original,
            } => {
                let (factor, low, high, original) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original as f32,
                );
                let (low_wavelen, high_wavelen) = (original / low, original / high);
                base.map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen < high_wavelen || wavelen > low_wavelen {
                        return scaled;
                    }
                    let smooth = (original / wavelen - low) / (high - low);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                })
                .collect()
            }
        }
    }
}

/// cos/sin tables `[batch, 1, seq, rotary_dim]` for `positions` `[batch, seq]`, computed on
/// their device in float32 as transformers' rotary embeddings do (angle = pos·inv_freq, the
/// two halves repeated): no host read of the positions, so a decoding step on a GPU waits
/// for nothing but its chosen token.
pub(crate) fn rotary_tables<B: Backend>(
    positions: Tensor<B, 2, Int>,
    inv_freq: &[f32],
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, seq] = positions.dims();
    let half = inv_freq.len();
    let device = positions.device();
    let freq = Tensor::<B, 1>::from_data(TensorData::new(inv_freq.to_vec(), [half]), &device)
        .reshape([1, 1, half])
        .expand([batch, seq, half]);
    // Exact in float32 for positions below 2^24, as `p as f32`.
    let angles = positions
        .float()
        .cast(FloatDType::F32)
        .reshape([batch, seq, 1])
        .expand([batch, seq, half])
        .mul(freq);
    // The two halves of the rotated features share the same angles.
    let angles = Tensor::cat(vec![angles.clone(), angles], 2).reshape([batch, 1, seq, 2 * half]);
    (angles.clone().cos(), angles.sin())
}

/// `x·cos + rotate_half(x)·sin` on the first `rotary_dim` features (the tables' width),
/// with `rotate_half([a, b]) = [−b, a]` over their two halves; the other features pass
/// unchanged (partial rotary). The float32 tables are cast to `x`'s dtype first, as
/// transformers does.
pub(crate) fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let r = cos.dims()[3];
    let (cos, sin) = (cos.cast(x.dtype()), sin.cast(x.dtype()));
    let rot = if r == d {
        x.clone()
    } else {
        x.clone().slice([0..b, 0..h, 0..s, 0..r])
    };
    let first = rot.clone().slice([0..b, 0..h, 0..s, 0..r / 2]);
    let second = rot.clone().slice([0..b, 0..h, 0..s, r / 2..r]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    let out = rot.mul(cos).add(rotated.mul(sin));
    if r == d {
        return out;
    }
    Tensor::cat(vec![out, x.slice([0..b, 0..h, 0..s, r..d])], 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_and_refusals() {
        let rope =
            |p: serde_json::Value| Rope::from_params("rope_parameters", &p, 10_000.0, None, 8192);
        let plain = rope(json!(null)).unwrap();
        assert_eq!(plain.scaling, RopeScaling::None);
        assert_eq!(plain.inv_freq(8), [1.0, 0.1, 0.01, 0.001]);
        let linear =
            rope(json!({"rope_type": "linear", "factor": 8.0, "rope_theta": 100.0})).unwrap();
        assert_eq!(linear.inv_freq(4), [0.125, 0.0125]);
        let partial = rope(json!({"rope_type": "default", "partial_rotary_factor": 0.75})).unwrap();
        assert_eq!(partial.rotary_dim(96), 72);
        assert_eq!(partial.inv_freq(96).len(), 36);
        // Llama 3: the highest frequencies kept, the lowest divided by the factor.
        let l3 = rope(json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_theta": 500000.0}))
        .unwrap();
        let (base, scaled) = (plain_base(500_000.0, 64), l3.inv_freq(64));
        assert_eq!(scaled[0], base[0]);
        assert!((scaled[31] - base[31] / 8.0).abs() <= 1e-12);
        for (field, bad) in [
            ("yarn", json!({"rope_type": "yarn", "factor": 4.0})),
            ("factor", json!({"rope_type": "linear"})),
            ("partial", json!({"partial_rotary_factor": 1.5})),
        ] {
            assert!(rope(bad).is_err(), "{field}");
        }
    }

    fn plain_base(theta: f64, dim: usize) -> Vec<f32> {
        Rope {
            theta,
            partial: 1.0,
            scaling: RopeScaling::None,
        }
        .inv_freq(dim)
    }
}
