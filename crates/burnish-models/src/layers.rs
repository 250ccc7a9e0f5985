//! Constructors of burn layers with transformers' initialization: weights N(0, σ), biases
//! 0, norms 1/0. Parameters are lazy: a loader that replaces them never materializes the
//! random values.

use burn::module::{Initializer, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// A Linear `[d_in → d_out]` with N(0, std) weights and a zero bias when `bias` is set.
pub fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    if bias {
        layer.bias = Some(Initializer::Zeros.init([d_out], device));
    }
    layer
}

/// An embedding table `[n, d]` with N(0, std) rows.
pub fn embedding<B: Backend>(n: usize, d: usize, std: f64, device: &B::Device) -> Embedding<B> {
    EmbeddingConfig::new(n, d)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// A LayerNorm over `d` features with ε, weight 1 and bias 0.
pub fn layer_norm<B: Backend>(d: usize, eps: f64, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d).with_epsilon(eps).init(device)
}

/// RMSNorm as transformers' `LlamaRMSNorm`, `weight · x / sqrt(mean(x²) + ε)`, or with
/// `unit_offset` as Gemma's, `(1 + weight) · x / sqrt(mean(x²) + ε)` (weight stored
/// zero-centred).
#[derive(burn::module::Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale, `[d]`, initialized to 1 (0 with `unit_offset`).
    pub weight: Param<Tensor<B, 1>>,
    /// ε added to the mean square.
    pub eps: f64,
    /// Gemma's `(1 + weight)` scale.
    #[module(skip)]
    pub unit_offset: bool,
}

impl<B: Backend> RmsNorm<B> {
    /// A new RMSNorm over `d` features.
    pub fn new(d: usize, eps: f64, device: &B::Device) -> Self {
        RmsNorm {
            weight: Initializer::Ones.init([d], device),
            eps,
            unit_offset: false,
        }
    }

    /// A new Gemma RMSNorm over `d` features: scale `1 + weight`, weight initialized to 0.
    pub fn with_unit_offset(d: usize, eps: f64, device: &B::Device) -> Self {
        RmsNorm {
            weight: Initializer::Zeros.init([d], device),
            eps,
            unit_offset: true,
        }
    }

    /// Normalizes over the last dimension in float32 and returns float32.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // Statistics in float32 whatever the input dtype, as transformers' LlamaRMSNorm.
        let x = x.cast(burn::tensor::FloatDType::F32);
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x.mul(variance.add_scalar(self.eps).sqrt().recip());
        let scale = match self.unit_offset {
            true => self.weight.val().add_scalar(1.0),
            false => self.weight.val(),
        };
        normed.mul(scale.unsqueeze())
    }
}
