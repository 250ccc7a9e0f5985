//! Tensor functions shared by the architectures.

use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::activation::{relu, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor};

use crate::config::Activation;
use crate::fused::{ScoreScale, attention_probs};

/// Exact GELU, `x · ½ · (1 + erf(x/√2))`, with the exact derivative, as PyTorch's
/// (burn 0.21's built-in `gelu` back-propagates the derivative of the tanh approximation on
/// most backends): burnish's fused kernel on burn-flex, the composition of `erf` elsewhere
/// ([`crate::fused::gelu`]).
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    crate::fused::gelu(x)
}

/// tanh-approximated GELU (`gelu_new`), `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = x
        .clone()
        .add(x.clone().powi_scalar(3).mul_scalar(0.044715))
        .mul_scalar(c);
    x.mul(inner.tanh().add_scalar(1.0)).mul_scalar(0.5)
}

/// Applies an [`Activation`].
pub fn activate<B: Backend, const D: usize>(act: Activation, x: Tensor<B, D>) -> Tensor<B, D> {
    match act {
        Activation::Gelu => gelu_exact(x),
        Activation::GeluTanh => gelu_tanh(x),
        Activation::Relu => relu(x),
        Activation::Silu => silu(x),
        Activation::Tanh => x.tanh(),
    }
}

/// A large negative score for masked positions. Finite (not −inf) so that a row whose keys
/// are all masked (a left-padding query) gives a uniform distribution, never NaN.
pub const MASKED: f32 = f32::MIN;

/// Scaled dot-product attention over `[batch, heads, q_len, head_dim]` queries and
/// `[batch, heads, k_len, head_dim]` keys/values; `mask` is `true` where a key must be
/// ignored, broadcast from `[batch, 1, q_len or 1, k_len]`.
///
/// The two matmuls run in the dtype of `q`/`v`; masking and softmax run in float32, as
/// under `torch.autocast` (a half-precision `f32::MIN` would be −inf, and a row of −inf is
/// NaN). In float32 the casts are no-ops. Scale, mask, softmax and dropout are
/// [`crate::fused::attention_probs`] (one kernel on burn-flex).
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    dropout: &crate::random::Dropout,
) -> Tensor<B, 4> {
    // BERT divides by √d (transformers' `/ math.sqrt(head_dim)`), which rounds differently
    // from multiplying by its inverse.
    let scale = ScoreScale::Divide((q.dims()[3] as f64).sqrt());
    let scores = q.matmul(k.swap_dims(2, 3));
    let probs = attention_probs(scores, scale, mask, dropout);
    probs.cast(v.dtype()).matmul(v)
}

/// [`attention`] with the scores multiplied by `scale` (transformers' decoders:
/// `head_dim^-½`, Gemma's `query_pre_attn_scalar^-½`) and, with `softcap = Some(c)`,
/// capped to `c·tanh(s/c)` before masking (Gemma 2), in float32.
pub fn attention_scaled<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    dropout: &crate::random::Dropout,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<B, 4> {
    let scores = q.matmul(k.swap_dims(2, 3));
    let probs = match softcap {
        // ×1 is exact, forward and backward.
        Some(cap) => {
            let capped = soft_cap(scores.mul_scalar(scale).cast(FloatDType::F32), cap);
            attention_probs(capped, ScoreScale::Multiply(1.0), mask, dropout)
        }
        None => attention_probs(scores, ScoreScale::Multiply(scale), mask, dropout),
    };
    probs.cast(v.dtype()).matmul(v)
}

/// `[batch, seq, heads·head_dim]` → `[batch, heads, seq, head_dim]`, a view; in training
/// its gradient is laid out back as `[batch, seq, …]` by [`crate::fused::contiguous`].
pub fn split_heads<B: Backend>(t: Tensor<B, 3>, heads: usize, head_dim: usize) -> Tensor<B, 4> {
    let [batch, seq, _] = t.dims();
    crate::fused::contiguous(t.reshape([batch, seq, heads, head_dim])).swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` → `[batch, seq, heads·head_dim]`, copied by
/// [`crate::fused::contiguous`] (its gradient is a view).
pub fn merge_heads<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = t.dims();
    crate::fused::contiguous(t.swap_dims(1, 2)).reshape([batch, seq, heads * head_dim])
}

/// Gemma's soft cap, `c·tanh(x/c)`: smooth, odd, bounded by `c`.
pub fn soft_cap<B: Backend, const D: usize>(x: Tensor<B, D>, cap: f64) -> Tensor<B, D> {
    x.div_scalar(cap).tanh().mul_scalar(cap)
}

/// A [`Linear`] layer computed in `dtype`: input, weight and bias are cast to it (the cast
/// is differentiable, so float32 master weights receive float32 gradients), as
/// `torch.autocast` runs `F.linear`. With `F32` on float32 tensors it computes
/// `layer.forward(x)`.
///
/// Leading dimensions are flattened into rows first, as `F.linear` does: burn 0.21's linear
/// on a `[batch, seq, in]` input runs one matmul per batch element, and its weight gradient
/// materializes a `[batch, in, out]` product before summing it over the batch (16 times the
/// weight's memory for a batch of 16); on rows it is one matmul over all tokens, and the
/// weight gradient one `[in, rows] × [rows, out]` product.
pub fn linear_in<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    dtype: FloatDType,
) -> Tensor<B, D> {
    let [y] = linear_in_each([layer], x, dtype);
    y
}

/// [`linear_in`] of the same `x` through each of `layers` (a decoder's q/k/v or gate/up
/// projections): one dispatch to the threads when decoding on burn-flex
/// ([`crate::fused::linear_rows_each`]).
pub fn linear_in_each<B: Backend, const D: usize, const N: usize>(
    layers: [&Linear<B>; N],
    x: Tensor<B, D>,
    dtype: FloatDType,
) -> [Tensor<B, D>; N] {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let weights = layers
        .iter()
        .map(|l| {
            (
                l.weight.val().cast(dtype),
                l.bias.as_ref().map(|b| b.val().cast(dtype)),
            )
        })
        .collect();
    let mut ys = crate::fused::linear_rows_each(x.cast(dtype).reshape([rows, d_in]), weights)
        .into_iter()
        .map(|y| {
            let mut out = dims;
            out[D - 1] = y.dims()[1];
            y.reshape(out)
        });
    std::array::from_fn(|_| {
        ys.next()
            .unwrap_or_else(|| unreachable!("one result per layer"))
    })
}

/// A [`LayerNorm`] computed in float32 whatever the input dtype, returning float32 (the
/// autocast rule for norms: statistics of half-precision values lose too much).
///
/// On burn-flex it runs burnish's fused kernel ([`crate::fused::layer_norm`]).
pub fn layer_norm_f32<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let x = x.cast(FloatDType::F32);
    let epsilon = crate::fused::is_fused::<B>()
        .then(|| layer_norm_epsilon(norm))
        .flatten();
    match epsilon {
        Some(epsilon) => crate::fused::layer_norm(
            x,
            norm.gamma.val(),
            norm.beta.as_ref().map(|b| b.val()),
            epsilon,
        ),
        None => norm.forward(x),
    }
}

/// A `LayerNorm`'s ε. burn 0.21 keeps the field private and its display is the one place
/// that shows it; Rust prints an `f64` in the shortest form that parses back to the same
/// value, so the parse is exact. `None` (burn's own forward then) if the display changes.
fn layer_norm_epsilon<B: Backend>(norm: &LayerNorm<B>) -> Option<f64> {
    let shown = norm.to_string();
    let (_, rest) = shown.split_once("epsilon: ")?;
    rest.split([',', '}']).next()?.trim().parse().ok()
}

/// The rows of `table` at `ids` `[batch, seq]` (`Embedding::forward`), through
/// [`crate::fused::embedding`] (its backward one pass on burn-flex).
pub fn embed<B: Backend>(table: &Embedding<B>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    crate::fused::embedding(table.weight.val(), ids)
}

/// Embeddings of `ids` `[batch, seq]` whose `pad` row learns nothing, as torch's
/// `nn.Embedding(padding_idx = pad)`: the row takes part in the forward pass (a QA loss
/// reads padded positions too) but gets no gradient.
pub fn embed_padded<B: Backend>(
    table: &Embedding<B>,
    ids: Tensor<B, 2, Int>,
    pad: Option<usize>,
) -> Tensor<B, 3> {
    let Some(pad) = pad else {
        return embed(table, ids);
    };
    let is_pad = ids.clone().equal_elem(pad as i64);
    frozen_where(embed(table, ids), is_pad)
}

/// `x` `[batch, seq, hidden]` unchanged forward, but without a gradient at the positions
/// where `frozen` `[batch, seq]` is true.
pub fn frozen_where<B: Backend>(x: Tensor<B, 3>, frozen: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
    let [batch, seq, hidden] = x.dims();
    let frozen = frozen.unsqueeze_dim::<3>(2).expand([batch, seq, hidden]);
    x.clone().mask_where(frozen, x.detach())
}

#[cfg(test)]
mod tests {
    use super::layer_norm_epsilon;
    use crate::layers::layer_norm;

    #[test]
    fn a_layer_norms_epsilon_reads_back_exactly() {
        for eps in [1e-12, 1e-5, 1e-6, 1e-7, 0.1, 3.0e-9, 1.0 / 3.0, 2.5e-300] {
            let norm = layer_norm::<burn_ndarray::NdArray>(4, eps, &Default::default());
            assert_eq!(layer_norm_epsilon(&norm), Some(eps), "{norm}");
        }
    }
}
