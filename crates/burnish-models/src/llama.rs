//! Llama-family decoders (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3): RMSNorm, rotary
//! embeddings, gated MLPs, grouped-query attention, causal, padding and sliding-window
//! masks, optional tied embeddings, and a KV cache for generation, as transformers'
//! `LlamaForCausalLM` and its relatives.

use crate::random::Dropout;
use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor};

use crate::config::{Activation, DecoderFamily, LlamaConfig};
use crate::fused::{contiguous, linear_rows, write_positions};
use crate::layers::{RmsNorm, embedding, linear};
use crate::ops::{
    activate, attention_scaled, embed, linear_in, linear_in_each, merge_heads, soft_cap,
    split_heads,
};
use crate::rope::{Rope, apply_rotary, rotary_tables};
use crate::{Autocast, ModelError};

/// Attention of one layer (HF `self_attn`): separate q/k/v projections, or Phi-3's fused
/// `qkv_proj`; Qwen3 and Gemma 3 normalize each query and key head (`q_norm`, `k_norm`).
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection, `[hidden → heads·head_dim]` (absent when fused).
    pub q_proj: Option<Linear<B>>,
    /// Key projection, `[hidden → kv_heads·head_dim]` (absent when fused).
    pub k_proj: Option<Linear<B>>,
    /// Value projection, `[hidden → kv_heads·head_dim]` (absent when fused).
    pub v_proj: Option<Linear<B>>,
    /// Phi-3's fused projection, `[hidden → (heads + 2·kv_heads)·head_dim]`: queries,
    /// then keys, then values.
    pub qkv_proj: Option<Linear<B>>,
    /// Output projection, `[heads·head_dim → hidden]`.
    pub o_proj: Linear<B>,
    /// RMSNorm over each query head's features (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm<B>>,
    /// RMSNorm over each key head's features (Qwen3, Gemma 3).
    pub k_norm: Option<RmsNorm<B>>,
    dropout: Dropout,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    #[module(skip)]
    scale: f64,
    #[module(skip)]
    softcap: Option<f64>,
}

/// Gated MLP (HF `mlp`): `down(act(gate(x)) · up(x))` — SwiGLU, or GeGLU for Gemma;
/// Phi-3 fuses gate and up into `gate_up_proj` (gate first).
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection (absent when fused).
    pub gate_proj: Option<Linear<B>>,
    /// Up projection (absent when fused).
    pub up_proj: Option<Linear<B>>,
    /// Phi-3's fused `[gate | up]` projection, `[hidden → 2·intermediate]`.
    pub gate_up_proj: Option<Linear<B>>,
    /// Down projection.
    pub down_proj: Linear<B>,
    #[module(skip)]
    activation: Activation,
}

/// One pre-norm decoder layer (HF `model.layers.N`). Gemma normalizes both sides of each
/// sub-layer: `post_attention_layernorm` then applies to the attention output and
/// `pre_feedforward_layernorm` / `post_feedforward_layernorm` surround the MLP; otherwise
/// `post_attention_layernorm` is the norm before the MLP.
#[derive(Module, Debug)]
pub struct LlamaLayer<B: Backend> {
    /// Attention.
    pub self_attn: LlamaAttention<B>,
    /// MLP.
    pub mlp: LlamaMlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP, or (Gemma) of the attention output.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Gemma's norm before the MLP.
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    /// Gemma's norm of the MLP output.
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    /// The attention window of this layer, `None` for full attention.
    #[module(skip)]
    window: Option<usize>,
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
    /// Rotary embeddings of full-attention and of sliding-window layers.
    #[module(skip)]
    ropes: [Rope; 2],
    /// Gemma's embedding multiplier, √hidden.
    #[module(skip)]
    embed_scale: Option<f64>,
    /// Gemma's cap on the output logits.
    #[module(skip)]
    logit_softcap: Option<f64>,
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

/// `true` where a query `[batch, 1, seq, keys]` must not see a key.
type HiddenKeys<B> = Tensor<B, 4, Bool>;

/// Keys and values of past positions, per layer, for incremental decoding.
///
/// Each layer keeps its keys and values in a buffer with room for more positions (doubled
/// when full) and writes a step's new positions into it ([`crate::fused::write_positions`]:
/// in place on burn-flex and burn-ndarray while the buffer is not shared), so a decoding
/// step copies its own keys and values, not the whole past; attention reads the filled
/// positions as a view. A cloned cache shares the buffers until one of the two writes.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    /// Attention mask of the past positions, `[batch, past]`, 1 = token; `None` while no
    /// mask was given (all tokens).
    mask: Option<Tensor<B, 2, Int>>,
}

/// One layer's key and value buffers `[batch, kv_heads, capacity, head_dim]`, of which the
/// first `len` positions are filled.
#[derive(Debug, Clone, Default)]
struct LayerCache<B: Backend> {
    buffers: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    len: usize,
}

/// Positions a layer's buffers hold at least.
const MIN_CAPACITY: usize = 16;

impl<B: Backend> LayerCache<B> {
    /// Writes `k` and `v` `[batch, kv_heads, seq, head_dim]` after the filled positions and
    /// returns views of all of them.
    fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, s, d] = k.dims();
        let (start, end) = (self.len, self.len + s);
        let (keys, values) = match self.buffers.take() {
            Some((keys, values)) if keys.dims()[2] >= end => (keys, values),
            old => {
                // New buffers holding the filled positions of the old ones.
                let capacity = end.next_power_of_two().max(MIN_CAPACITY);
                let grow = |old: Option<Tensor<B, 4>>, like: &Tensor<B, 4>| {
                    let fresh = Tensor::<B, 4>::zeros([b, h, capacity, d], &like.device())
                        .cast(like.dtype());
                    match old {
                        Some(old) => {
                            write_positions(fresh, old.slice([0..b, 0..h, 0..start, 0..d]), 0)
                        }
                        None => fresh,
                    }
                };
                let (old_keys, old_values) = old.unzip();
                (grow(old_keys, &k), grow(old_values, &v))
            }
        };
        let keys = write_positions(keys, k, start);
        let values = write_positions(values, v, start);
        let view = |t: &Tensor<B, 4>| t.clone().slice([0..b, 0..h, 0..end, 0..d]);
        let out = (view(&keys), view(&values));
        self.buffers = Some((keys, values));
        self.len = end;
        out
    }
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
        self.layers.first().map_or(0, |l| l.len)
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
        let family = self.family();
        let (h, inner, std, eps) = (
            self.hidden_size,
            self.intermediate_size,
            self.initializer_range,
            self.rms_eps(),
        );
        let (heads, kv_heads, head_dim) =
            (self.num_attention_heads, self.kv_heads(), self.head_dim());
        let activation = self.activation()?;
        let (qkv_bias, mlp_bias) = (self.qkv_bias(), self.mlp_bias());
        let fused = family == DecoderFamily::Phi3;
        let gemma = family.is_gemma();
        let norm = |d: usize| match gemma {
            true => RmsNorm::with_unit_offset(d, eps, device),
            false => RmsNorm::new(d, eps, device),
        };
        let separate =
            |d_out: usize, bias: bool| (!fused).then(|| linear(h, d_out, bias, std, device));
        let qk_norm = matches!(family, DecoderFamily::Qwen3 | DecoderFamily::Gemma3);
        let layers = self
            .layer_windows()?
            .into_iter()
            .map(|window| LlamaLayer {
                self_attn: LlamaAttention {
                    q_proj: separate(heads * head_dim, qkv_bias),
                    k_proj: separate(kv_heads * head_dim, qkv_bias),
                    v_proj: separate(kv_heads * head_dim, qkv_bias),
                    qkv_proj: fused
                        .then(|| linear(h, (heads + 2 * kv_heads) * head_dim, false, std, device)),
                    o_proj: linear(heads * head_dim, h, self.o_bias(), std, device),
                    q_norm: qk_norm.then(|| norm(head_dim)),
                    k_norm: qk_norm.then(|| norm(head_dim)),
                    dropout: Dropout::new(self.attention_dropout),
                    heads,
                    kv_heads,
                    head_dim,
                    scale: self.attention_scale(),
                    softcap: self.attention_softcap(),
                },
                mlp: LlamaMlp {
                    gate_proj: separate(inner, mlp_bias),
                    up_proj: separate(inner, mlp_bias),
                    gate_up_proj: fused.then(|| linear(h, 2 * inner, false, std, device)),
                    down_proj: linear(inner, h, mlp_bias, std, device),
                    activation,
                },
                input_layernorm: norm(h),
                post_attention_layernorm: norm(h),
                pre_feedforward_layernorm: gemma.then(|| norm(h)),
                post_feedforward_layernorm: gemma.then(|| norm(h)),
                window,
            })
            .collect();
        Ok(LlamaForCausalLm {
            model: LlamaModel {
                embed_tokens: embedding(self.vocab_size, h, std, device),
                layers,
                norm: norm(h),
                ropes: [self.rope(false)?, self.rope(true)?],
                embed_scale: gemma.then(|| (h as f64).sqrt()),
                logit_softcap: self.logit_softcap(),
                compute: FloatDType::F32,
            },
            lm_head: (!self.tied()).then(|| linear(h, self.vocab_size, false, std, device)),
        })
    }
}

impl<B: Backend> LlamaAttention<B> {
    /// Queries, keys and values `[batch, seq, n·head_dim]` of `x`.
    fn project(&self, x: Tensor<B, 3>, cx: FloatDType) -> [Tensor<B, 3>; 3] {
        let q_width = self.heads * self.head_dim;
        let kv_width = self.kv_heads * self.head_dim;
        if let Some(fused) = &self.qkv_proj {
            let [b, s, _] = x.dims();
            let qkv = linear_in(fused, x, cx);
            let part =
                |from: usize, width: usize| qkv.clone().slice([0..b, 0..s, from..from + width]);
            return [
                part(0, q_width),
                part(q_width, kv_width),
                part(q_width + kv_width, kv_width),
            ];
        }
        // Fields are all present or all absent by construction; a module mapped into
        // another shape would fail here.
        match (&self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(q), Some(k), Some(v)) => linear_in_each([q, k, v], x, cx),
            _ => unreachable!("an attention without q/k/v or qkv projections"),
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: &(Tensor<B, 4>, Tensor<B, 4>),
        mask: Option<Tensor<B, 4, Bool>>,
        cache: Option<&mut LayerCache<B>>,
        cx: FloatDType,
    ) -> Tensor<B, 3> {
        let split = |t: Tensor<B, 3>, n: usize| split_heads(t, n, self.head_dim);
        let [q, k, v] = self.project(x, cx);
        let (q, k, v) = (
            split(q, self.heads),
            split(k, self.kv_heads),
            split(v, self.kv_heads),
        );
        // Per-head norms run in float32 and hand back the compute dtype.
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (
                qn.forward(q.clone()).cast(q.dtype()),
                kn.forward(k.clone()).cast(k.dtype()),
            ),
            _ => (q, k),
        };
        let q = apply_rotary(q, rotary.0.clone(), rotary.1.clone());
        let k = apply_rotary(k, rotary.0.clone(), rotary.1.clone());
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        // Grouped-query attention without repeating the keys and values: the `groups` query
        // heads sharing kv head `i` (heads i·groups..) become `groups·seq` query rows of that
        // head, `[b, kv, groups·seq, d]`, the same numbers in the same order as
        // transformers' `repeat_kv` (so the same dropout draws), each row's mask tiled.
        let groups = self.heads / self.kv_heads;
        let [b, _, s, d] = q.dims();
        let q = contiguous(q).reshape([b, self.kv_heads, groups * s, d]);
        let mask = mask.map(|m| match groups {
            1 => m,
            _ => m.repeat_dim(2, groups),
        });
        let out = attention_scaled(q, k, v, mask, &self.dropout, self.scale, self.softcap)
            .reshape([b, self.heads, s, d]);
        linear_in(&self.o_proj, merge_heads(out), cx)
    }
}

impl<B: Backend> LlamaMlp<B> {
    fn forward(&self, x: Tensor<B, 3>, cx: FloatDType) -> Tensor<B, 3> {
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(fused), _, _) => {
                let [b, s, _] = x.dims();
                let both = linear_in(fused, x, cx);
                let inner = both.dims()[2] / 2;
                (
                    both.clone().slice([0..b, 0..s, 0..inner]),
                    both.slice([0..b, 0..s, inner..2 * inner]),
                )
            }
            (None, Some(gate), Some(up)) => {
                let [gate, up] = linear_in_each([gate, up], x, cx);
                (gate, up)
            }
            _ => unreachable!("an MLP without gate/up or gate_up projections"),
        };
        linear_in(&self.down_proj, activate(self.activation, gate).mul(up), cx)
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
    /// are passed and the cache grows by them. A packed row numbers its examples instead
    /// (1, 1, 1, 2, 2, 0 = two examples and padding): a token attends only to earlier
    /// tokens of its own example; give such rows their positions through
    /// [`forward_with_positions`](Self::forward_with_positions) (restarting at 0 per example).
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
        // `None`: every position so far is a token of one example (no mask was ever given),
        // so only causality and windows hide keys.
        let ones = |n: usize| Tensor::<B, 2, Int>::ones([batch, n], &device);
        let full_mask = match (attention_mask, cache.as_ref().and_then(|c| c.mask.clone())) {
            (Some(m), _) if m.dims()[1] == total => Some(m),
            (Some(m), Some(past_mask)) => Some(Tensor::cat(vec![past_mask, m], 1)),
            (Some(m), None) if past > 0 => Some(Tensor::cat(vec![ones(past), m], 1)),
            (Some(m), None) => Some(m),
            (None, Some(past_mask)) => Some(Tensor::cat(vec![past_mask, ones(seq)], 1)),
            (None, None) => None,
        };
        let head_dim = self.layers.first().map_or(2, |l| l.self_attn.head_dim);
        let tables =
            |rope: &Rope| rotary_tables::<B>(position_ids.clone(), &rope.inv_freq(head_dim));
        let global = tables(&self.ropes[0]);
        // Only Gemma 3 gives its sliding-window layers another rotary embedding.
        let local = (self.ropes[1] != self.ropes[0]
            && self.layers.iter().any(|l| l.window.is_some()))
        .then(|| tables(&self.ropes[1]));

        // Key j is hidden from query i when j > past + i (causal) or j is padding.
        let keys = || Tensor::<B, 1, Int>::arange(0..total as i64, &device).unsqueeze::<2>();
        let queries = || {
            Tensor::<B, 1, Int>::arange(past as i64..total as i64, &device).unsqueeze_dim::<2>(1)
        };
        let padding = full_mask.as_ref().map(|full_mask| {
            let padding = full_mask
                .clone()
                .equal_elem(0)
                .reshape([batch, 1, 1, total])
                .expand([batch, 1, seq, total]);
            // Packed rows number their examples 1, 2, … in the mask: a token also hides the
            // keys of other examples, so each one attends only to itself. A 0/1 mask changes
            // nothing (its token queries already hide exactly the padding keys).
            let query_segments = full_mask
                .clone()
                .slice([0..batch, past..total])
                .reshape([batch, 1, seq, 1])
                .expand([batch, 1, seq, total]);
            let key_segments = full_mask
                .clone()
                .reshape([batch, 1, 1, total])
                .expand([batch, 1, seq, total]);
            let other_segment = query_segments
                .clone()
                .not_equal(key_segments)
                .bool_and(query_segments.not_equal_elem(0));
            padding.bool_or(other_segment)
        });
        // A single new token (a decoding step) sees every earlier key: nothing to hide.
        let causal = (seq > 1).then(|| keys().greater(queries()));
        // The keys a layer hides: causal ones, those `window` or more positions back, padding
        // and other examples; `None` when it hides none.
        let hidden = |window: Option<usize>| -> Option<HiddenKeys<B>> {
            let far = window
                .filter(|&w| total > w)
                .map(|w| keys().add_scalar(w as i64).lower_equal(queries()));
            let positional = match (causal.clone(), far) {
                (Some(c), Some(f)) => Some(c.bool_or(f)),
                (c, f) => c.or(f),
            }
            .map(|h| h.reshape([1, 1, seq, total]).expand([batch, 1, seq, total]));
            match (positional, padding.clone()) {
                (Some(h), Some(p)) => Some(h.bool_or(p)),
                (h, p) => h.or(p),
            }
        };
        // One mask per distinct window (None: causal only), shared by the layers using it.
        let mut masks: Vec<(Option<usize>, Option<HiddenKeys<B>>)> = Vec::new();
        for window in self.layers.iter().map(|l| l.window) {
            if !masks.iter().any(|(w, _)| *w == window) {
                masks.push((window, hidden(window)));
            }
        }

        let cx = self.compute;
        let mut x = embed(&self.embed_tokens, input_ids);
        if let Some(scale) = self.embed_scale {
            x = x.mul_scalar(scale);
        }
        if let Some(c) = cache.as_mut() {
            c.layers.resize_with(self.layers.len(), LayerCache::default);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().and_then(|c| c.layers.get_mut(i));
            let mask = masks
                .iter()
                .find(|(w, _)| *w == layer.window)
                .and_then(|(_, m)| m.clone());
            let rope = match (&local, layer.window) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            let attn = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                rope,
                mask,
                layer_cache,
                cx,
            );
            // The residual stream stays float32; sub-layer outputs are cast up to join it.
            let attn = attn.cast(FloatDType::F32);
            x = match &layer.pre_feedforward_layernorm {
                Some(_) => x.add(layer.post_attention_layernorm.forward(attn)),
                None => x.add(attn),
            };
            let h = match &layer.pre_feedforward_layernorm {
                Some(pre) => pre.forward(x.clone()),
                None => layer.post_attention_layernorm.forward(x.clone()),
            };
            let mlp = layer.mlp.forward(h, cx).cast(FloatDType::F32);
            x = match &layer.post_feedforward_layernorm {
                Some(post) => x.add(post.forward(mlp)),
                None => x.add(mlp),
            };
        }
        if let Some(c) = cache {
            c.mask = full_mask;
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
    /// as transformers upcasts them for the loss, and soft-capped for Gemma.
    pub fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let cx = self.model.compute;
        let logits = match &self.lm_head {
            Some(head) => linear_in(head, hidden, cx),
            None => {
                let [b, s, h] = hidden.dims();
                let weight = self.model.embed_tokens.weight.val().cast(cx);
                let vocab = weight.dims()[0];
                linear_rows(
                    hidden.cast(cx).reshape([b * s, h]),
                    weight.transpose(),
                    None,
                )
                .reshape([b, s, vocab])
            }
        };
        let logits = logits.cast(FloatDType::F32);
        match self.model.logit_softcap {
            Some(cap) => soft_cap(logits, cap),
            None => logits,
        }
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

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::{TensorData, TensorPrimitive};
    use burn_flex::Flex;

    /// Where a buffer's float32 storage starts.
    fn address(t: &Tensor<Flex, 4>) -> *const f32 {
        match t.clone().into_primitive() {
            TensorPrimitive::Float(t) => t.storage::<f32>().as_ptr(),
            TensorPrimitive::QFloat(_) => unreachable!("float tensors"),
        }
    }

    fn step(value: f32) -> Tensor<Flex, 4> {
        Tensor::from_data(
            TensorData::new(vec![value; 2 * 3], [1, 2, 1, 3]),
            &Default::default(),
        )
    }

    #[test]
    fn a_cache_writes_its_buffer_in_place_and_doubles_it_when_full() {
        let mut cache = LayerCache::<Flex>::default();
        let (k, _) = cache.append(step(1.0), step(-1.0));
        assert_eq!(k.dims(), [1, 2, 1, 3]);
        drop(k);
        let first = cache.buffers.as_ref().map(|(k, _)| address(k));
        for n in 2..=MIN_CAPACITY {
            let (k, v) = cache.append(step(n as f32), step(-(n as f32)));
            assert_eq!(k.dims(), [1, 2, n, 3]);
            let keys = k.into_data().to_vec::<f32>().unwrap_or_default();
            let expected: Vec<f32> = (0..2)
                .flat_map(|_| (1..=n).flat_map(|p| [p as f32; 3]))
                .collect();
            assert_eq!(keys, expected);
            assert_eq!(v.dims(), [1, 2, n, 3]);
            // The step's views are gone: the next write finds the buffer unshared.
            assert_eq!(cache.buffers.as_ref().map(|(k, _)| address(k)), first);
        }
        let (k, _) = cache.append(step(99.0), step(0.0));
        assert_eq!(
            (cache.len, k.dims()[2]),
            (MIN_CAPACITY + 1, MIN_CAPACITY + 1)
        );
        let capacity = cache.buffers.as_ref().map(|(k, _)| k.dims()[2]);
        assert_eq!(capacity, Some(2 * MIN_CAPACITY));
        let last = k.slice([0..1, 0..1, MIN_CAPACITY..MIN_CAPACITY + 1, 0..3]);
        assert_eq!(
            last.into_data().to_vec::<f32>().unwrap_or_default(),
            [99.0; 3]
        );
    }
}
