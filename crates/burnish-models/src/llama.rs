//! Llama-family decoders (Llama, Mistral, Qwen2 shapes): RMSNorm, rotary embeddings,
//! SwiGLU, grouped-query attention, causal + padding masks, optional tied embeddings, and a
//! KV cache for generation, as transformers' `LlamaForCausalLM`.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};

use crate::config::{Activation, LlamaConfig};
use crate::layers::{RmsNorm, embedding, linear};
use crate::ops::{activate, attention, linear_in, repeat_kv};
use crate::{Autocast, ModelError};

/// Attention projections of one layer (HF `self_attn`).
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection, `[hidden → heads·head_dim]`.
    pub q_proj: Linear<B>,
    /// Key projection, `[hidden → kv_heads·head_dim]`.
    pub k_proj: Linear<B>,
    /// Value projection, `[hidden → kv_heads·head_dim]`.
    pub v_proj: Linear<B>,
    /// Output projection, `[heads·head_dim → hidden]`.
    pub o_proj: Linear<B>,
    dropout: Dropout,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// SwiGLU MLP (HF `mlp`): `down(act(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: Linear<B>,
    /// Up projection.
    pub up_proj: Linear<B>,
    /// Down projection.
    pub down_proj: Linear<B>,
    #[module(skip)]
    activation: Activation,
}

/// One pre-norm decoder layer (HF `model.layers.N`).
#[derive(Module, Debug)]
pub struct LlamaLayer<B: Backend> {
    /// Attention.
    pub self_attn: LlamaAttention<B>,
    /// MLP.
    pub mlp: LlamaMlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The decoder stack without an output layer (HF `model`).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embeddings, `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    rope_theta: f64,
    window: Option<usize>,
    /// The dtype matmuls compute in (see [`LlamaForCausalLm::with_compute_dtype`]).
    #[module(skip)]
    compute: FloatDType,
}

/// A decoder with its language-model head (HF `LlamaForCausalLM`); with tied embeddings
/// `lm_head` is `None` and the embedding matrix projects to the vocabulary.
#[derive(Module, Debug)]
pub struct LlamaForCausalLm<B: Backend> {
    /// The decoder.
    pub model: LlamaModel<B>,
    /// Output projection `[hidden → vocab]`, absent when tied.
    pub lm_head: Option<Linear<B>>,
}

/// Keys and values of past positions, per layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Attention mask of the past positions, `[batch, past]`, 1 = token.
    mask: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache {
            layers: Vec::new(),
            mask: None,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LlamaConfig {
    /// Builds the decoder and its LM head with transformers' initialization.
    ///
    /// # Errors
    /// [`ModelError`] when the config does not validate.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<LlamaForCausalLm<B>, ModelError> {
        self.validate()?;
        let h = self.hidden_size;
        let std = self.initializer_range;
        let (heads, kv_heads, head_dim) =
            (self.num_attention_heads, self.kv_heads(), self.head_dim());
        let activation = self.activation()?;
        let qkv_bias = self.qkv_bias();
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaLayer {
                self_attn: LlamaAttention {
                    q_proj: linear(h, heads * head_dim, qkv_bias, std, device),
                    k_proj: linear(h, kv_heads * head_dim, qkv_bias, std, device),
                    v_proj: linear(h, kv_heads * head_dim, qkv_bias, std, device),
                    o_proj: linear(heads * head_dim, h, self.attention_bias, std, device),
                    dropout: DropoutConfig::new(self.attention_dropout).init(),
                    heads,
                    kv_heads,
                    head_dim,
                },
                mlp: LlamaMlp {
                    gate_proj: linear(h, self.intermediate_size, self.mlp_bias, std, device),
                    up_proj: linear(h, self.intermediate_size, self.mlp_bias, std, device),
                    down_proj: linear(self.intermediate_size, h, self.mlp_bias, std, device),
                    activation,
                },
                input_layernorm: RmsNorm::new(h, self.rms_norm_eps, device),
                post_attention_layernorm: RmsNorm::new(h, self.rms_norm_eps, device),
            })
            .collect();
        Ok(LlamaForCausalLm {
            model: LlamaModel {
                embed_tokens: embedding(self.vocab_size, h, std, device),
                layers,
                norm: RmsNorm::new(h, self.rms_norm_eps, device),
                rope_theta: self.rope_theta(),
                window: self.attention_window(),
                compute: FloatDType::F32,
            },
            lm_head: (!self.tie_word_embeddings)
                .then(|| linear(h, self.vocab_size, false, std, device)),
        })
    }
}

/// cos/sin tables `[batch, 1, seq, head_dim]` for the given (flattened) positions, computed in f32 as
/// transformers' `LlamaRotaryEmbedding` does (`inv_freq = 1/θ^(2i/d)`, angle = pos·inv_freq,
/// the two halves repeated).
fn rotary_tables<B: Backend>(
    positions: &[i64],
    [batch, seq]: [usize; 2],
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(batch * seq * head_dim);
    let mut sin = Vec::with_capacity(batch * seq * head_dim);
    for &p in positions {
        // The two halves of the head share the same angles.
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let shape = [batch, 1, seq, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// `x·cos + rotate_half(x)·sin`, with `rotate_half([a, b]) = [−b, a]` over the two halves;
/// the float32 tables are cast to `x`'s dtype first, as transformers does.
fn apply_rotary<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let (cos, sin) = (cos.cast(x.dtype()), sin.cast(x.dtype()));
    let first = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let second = x.clone().slice([0..b, 0..h, 0..s, d / 2..d]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x.mul(cos).add(rotated.mul(sin))
}

impl<B: Backend> LlamaAttention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: &(Tensor<B, 4>, Tensor<B, 4>),
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut (Tensor<B, 4>, Tensor<B, 4>)>,
        cx: FloatDType,
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let [batch, seq, _] = x.dims();
        let split =
            |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let q = split(linear_in(&self.q_proj, x.clone(), cx), self.heads);
        let k = split(linear_in(&self.k_proj, x.clone(), cx), self.kv_heads);
        let v = split(linear_in(&self.v_proj, x, cx), self.kv_heads);
        let q = apply_rotary(q, rotary.0.clone(), rotary.1.clone());
        let k = apply_rotary(k, rotary.0.clone(), rotary.1.clone());
        let (k, v) = match cache {
            Some((past_k, past_v)) => (
                Tensor::cat(vec![past_k.clone(), k], 2),
                Tensor::cat(vec![past_v.clone(), v], 2),
            ),
            None => (k, v),
        };
        let groups = self.heads / self.kv_heads;
        let out = attention(
            q,
            repeat_kv(k.clone(), groups),
            repeat_kv(v.clone(), groups),
            Some(mask),
            &self.dropout,
        );
        let out = out
            .swap_dims(1, 2)
            .reshape([batch, seq, self.heads * self.head_dim]);
        (linear_in(&self.o_proj, out, cx), (k, v))
    }
}

/// transformers' generation positions: the number of real tokens before each position
/// (`cumsum(mask) − 1`), and 1 on padding. Use them with left-padded batches.
pub fn positions_from_mask<B: Backend>(attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
    let padding = attention_mask.clone().equal_elem(0);
    attention_mask.cumsum(1).sub_scalar(1).mask_fill(padding, 1)
}

impl<B: Backend> LlamaModel<B> {
    /// Runs the decoder on `input_ids` `[batch, seq]` and returns the final hidden states
    /// `[batch, seq, hidden]`, with positions `past..past + seq` as transformers' forward
    /// uses when no position ids are given. `attention_mask` (1 = token, 0 = padding)
    /// covers the new tokens, or past and new together; with `cache`, only the new tokens
    /// are passed and the cache grows by them.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let past = cache.as_ref().map_or(0, |c| c.len()) as i64;
        let positions = Tensor::<B, 1, Int>::arange(past..past + seq as i64, &input_ids.device())
            .unsqueeze::<2>()
            .expand([batch, seq]);
        self.forward_with_positions(input_ids, attention_mask, positions, cache)
    }

    /// [`forward`](Self::forward) with explicit position ids `[batch, seq]` (for example
    /// [`positions_from_mask`] for left-padded generation).
    pub fn forward_with_positions(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        position_ids: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let total = past + seq;
        let full_mask = match (attention_mask, cache.as_ref().and_then(|c| c.mask.clone())) {
            (Some(m), _) if m.dims()[1] == total => m,
            (Some(m), Some(past_mask)) => Tensor::cat(vec![past_mask, m], 1),
            (Some(m), None) => m,
            (None, Some(past_mask)) => {
                Tensor::cat(vec![past_mask, Tensor::ones([batch, seq], &device)], 1)
            }
            (None, None) => Tensor::ones([batch, total], &device),
        };
        let positions: Vec<i64> = position_ids
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        let head_dim = self.layers.first().map_or(2, |l| l.self_attn.head_dim);
        let rotary =
            rotary_tables::<B>(&positions, [batch, seq], head_dim, self.rope_theta, &device);

        // Key j is hidden from query i when j > past + i (causal) or j is padding.
        let causal = Tensor::<B, 1, Int>::arange(0..total as i64, &device)
            .unsqueeze::<2>()
            .greater(
                Tensor::<B, 1, Int>::arange(past as i64..total as i64, &device)
                    .unsqueeze_dim::<2>(1),
            );
        let padding = full_mask
            .clone()
            .equal_elem(0)
            .reshape([batch, 1, 1, total]);
        // Mistral's sliding window also hides keys `window` or more positions back.
        let causal = match self.window {
            Some(window) => causal.bool_or(
                Tensor::<B, 1, Int>::arange(0..total as i64, &device)
                    .unsqueeze::<2>()
                    .add_scalar(window as i64)
                    .lower_equal(
                        Tensor::<B, 1, Int>::arange(past as i64..total as i64, &device)
                            .unsqueeze_dim::<2>(1),
                    ),
            ),
            None => causal,
        };
        let mask = causal
            .reshape([1, 1, seq, total])
            .expand([batch, 1, seq, total])
            .bool_or(padding.expand([batch, 1, seq, total]));

        let cx = self.compute;
        let mut x = self.embed_tokens.forward(input_ids);
        let mut new_cache = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().and_then(|c| c.layers.get_mut(i));
            let (attn, kv) = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &rotary,
                mask.clone(),
                layer_cache,
                cx,
            );
            // The residual stream stays float32; sub-layer outputs are cast up to join it.
            x = x.add(attn.cast(FloatDType::F32));
            let h = layer.post_attention_layernorm.forward(x.clone());
            let mlp = &layer.mlp;
            let gated = activate(mlp.activation, linear_in(&mlp.gate_proj, h.clone(), cx))
                .mul(linear_in(&mlp.up_proj, h, cx));
            x = x.add(linear_in(&mlp.down_proj, gated, cx).cast(FloatDType::F32));
            new_cache.push(kv);
        }
        if let Some(c) = cache {
            c.layers = new_cache;
            c.mask = Some(full_mask);
        }
        self.norm.forward(x)
    }
}

impl<B: Backend> LlamaForCausalLm<B> {
    /// Logits `[batch, seq, vocab]` for `input_ids`; see [`LlamaModel::forward`] for the
    /// mask and cache.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let hidden = self.model.forward(input_ids, attention_mask, cache);
        self.project(hidden)
    }

    /// Projects hidden states to vocabulary logits (through the tied embedding when there
    /// is no `lm_head`). The projection runs in the compute dtype; the logits are float32,
    /// as transformers upcasts them for the loss.
    pub fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let cx = self.model.compute;
        let logits = match &self.lm_head {
            Some(head) => linear_in(head, hidden, cx),
            None => {
                let [b, s, h] = hidden.dims();
                let weight = self.model.embed_tokens.weight.val().cast(cx);
                let vocab = weight.dims()[0];
                hidden
                    .cast(cx)
                    .reshape([b * s, h])
                    .matmul(weight.transpose())
                    .reshape([b, s, vocab])
            }
        };
        logits.cast(FloatDType::F32)
    }

    /// Whether the output projection is the input embedding.
    pub fn is_tied(&self) -> bool {
        self.lm_head.is_none()
    }
}

/// Embeddings, RMSNorm, softmax, the residual stream and the logits stay float32.
impl<B: Backend> Autocast for LlamaForCausalLm<B> {
    fn with_compute_dtype(mut self, dtype: FloatDType) -> Self {
        self.model.compute = dtype;
        self
    }

    fn compute_dtype(&self) -> FloatDType {
        self.model.compute
    }
}
