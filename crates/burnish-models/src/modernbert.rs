//! ModernBERT encoders, as transformers' `ModernBertModel`: pre-LayerNorm layers without
//! biases, rotary positions with a global and a local base, GeGLU feed-forward, and
//! global attention every `global_attn_every_n_layers` layers with bidirectional
//! sliding-window attention (`local_attention` tokens wide) between them.

use crate::random::Dropout;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{
    Activation, default_hidden_act, default_range, divisible, encoder_min_parameters, nonzero,
    positive, probability, sliding_layers, token_ids,
};
use crate::layers::{embedding, linear};
use crate::ops::{
    activate, attention_scaled, embed_padded, layer_norm_f32, linear_in, merge_heads, split_heads,
};
use crate::rope::{Rope, apply_rotary, rotary_tables};
use crate::{Autocast, ModelError};

fn positions_8192() -> usize {
    8192
}
fn eps_1e5() -> f64 {
    1e-5
}
fn window_128() -> usize {
    128
}
fn every_3() -> usize {
    3
}
fn cls() -> String {
    "cls".to_owned()
}

/// A ModernBERT configuration (`model_type` `modernbert`), with transformers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModernBertConfig {
    /// `modernbert`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Feed-forward inner size (the input projection is twice as wide: GeGLU).
    pub intermediate_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward activation.
    #[serde(default = "default_hidden_act")]
    pub hidden_activation: String,
    /// Longest sequence (rotary positions are computed for any length).
    #[serde(default = "positions_8192")]
    pub max_position_embeddings: usize,
    /// Standard deviation of new weights.
    #[serde(default = "default_range")]
    pub initializer_range: f64,
    /// LayerNorm ε.
    #[serde(default = "eps_1e5")]
    pub norm_eps: f64,
    /// Whether LayerNorms have a bias.
    #[serde(default)]
    pub norm_bias: bool,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Bias on the attention projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Dropout on attention probabilities and the attention output.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Bias on the feed-forward projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Dropout inside the feed-forward block.
    #[serde(default)]
    pub mlp_dropout: f64,
    /// Dropout after the embeddings.
    #[serde(default)]
    pub embedding_dropout: f64,
    /// Attention of each layer, `full_attention` or `sliding_attention` (transformers 5).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Period of global layers when `layer_types` is absent (layer 0 is global).
    #[serde(default = "every_3")]
    pub global_attn_every_n_layers: usize,
    /// Width of the local window: a token sees those within `local_attention / 2`.
    #[serde(default = "window_128")]
    pub local_attention: usize,
    /// Rotary parameters per layer type (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Rotary base of global layers (transformers 4; default 160 000).
    #[serde(default)]
    pub global_rope_theta: Option<f64>,
    /// Rotary base of local layers (transformers 4; default 10 000).
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    /// How a sequence head pools the tokens: `cls` or `mean`.
    #[serde(default = "cls")]
    pub classifier_pooling: String,
    /// Dropout before a classifier.
    #[serde(default)]
    pub classifier_dropout: f64,
    /// Bias on the head's dense layer.
    #[serde(default)]
    pub classifier_bias: bool,
    /// The head's activation.
    #[serde(default = "default_hidden_act")]
    pub classifier_activation: String,
}

impl ModernBertConfig {
    /// The feed-forward activation.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown `hidden_activation`.
    pub fn activation(&self) -> Result<Activation, ModelError> {
        Activation::parse("hidden_activation", &self.hidden_activation)
    }

    /// The classification head's activation.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown `classifier_activation`.
    pub fn head_activation(&self) -> Result<Activation, ModelError> {
        Activation::parse("classifier_activation", &self.classifier_activation)
    }

    /// Whether sequence heads average the tokens (`mean`) instead of reading the first.
    pub fn mean_pooling(&self) -> bool {
        self.classifier_pooling == "mean"
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Whether each layer attends locally (`true`) or globally.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown layer type, [`ModelError::Inconsistent`]
    /// when `layer_types` does not have one entry per layer.
    pub fn local_layers(&self) -> Result<Vec<bool>, ModelError> {
        match &self.layer_types {
            Some(types) => sliding_layers(types, self.num_hidden_layers),
            None => Ok((0..self.num_hidden_layers)
                .map(|i| !i.is_multiple_of(self.global_attn_every_n_layers.max(1)))
                .collect()),
        }
    }

    /// The rotary embedding of global (`local = false`) or local layers.
    ///
    /// # Errors
    /// As [`Rope::from_params`].
    pub fn rope(&self, local: bool) -> Result<Rope, ModelError> {
        let key = if local {
            "sliding_attention"
        } else {
            "full_attention"
        };
        let theta = match local {
            true => self.local_rope_theta.unwrap_or(10_000.0),
            false => self.global_rope_theta.unwrap_or(160_000.0),
        };
        let null = serde_json::Value::Null;
        let params = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get(key))
            .unwrap_or(&null);
        Rope::from_params(
            "rope_parameters",
            params,
            theta,
            None,
            self.max_position_embeddings,
        )
    }

    /// Sets every dropout probability of the encoder.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.attention_dropout = p;
        self.mlp_dropout = p;
        self.embedding_dropout = p;
        self
    }

    /// The fewest parameters an encoder of this configuration has.
    pub fn min_parameters(&self) -> u128 {
        encoder_min_parameters(
            [self.vocab_size, self.hidden_size],
            self.hidden_size,
            self.intermediate_size,
            3,
            self.num_hidden_layers,
        )
    }

    /// Checks sizes and options.
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] or [`ModelError::Unsupported`] naming the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("local_attention", self.local_attention),
            (
                "global_attn_every_n_layers",
                self.global_attn_every_n_layers,
            ),
        ] {
            nonzero(field, v)?;
        }
        divisible(self.hidden_size, self.num_attention_heads)?;
        if !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::Inconsistent(format!(
                "rotary embeddings need an even head size, got {}",
                self.head_dim()
            )));
        }
        if !matches!(self.classifier_pooling.as_str(), "cls" | "mean") {
            return Err(ModelError::Unsupported {
                field: "classifier_pooling",
                value: self.classifier_pooling.clone(),
                supported: "cls, mean",
            });
        }
        self.local_layers()?;
        for local in [false, true] {
            if self.rope(local)?.partial != 1.0 {
                return Err(ModelError::Unsupported {
                    field: "rope_parameters",
                    value: "partial_rotary_factor".to_owned(),
                    supported: "full rotation",
                });
            }
        }
        self.activation()?;
        self.head_activation()?;
        positive("norm_eps", self.norm_eps)?;
        positive("initializer_range", self.initializer_range)?;
        if let Some(pad) = self.pad_token_id {
            token_ids("pad_token_id", Some(&pad.into()), self.vocab_size)?;
        }
        for (field, p) in [
            ("attention_dropout", self.attention_dropout),
            ("mlp_dropout", self.mlp_dropout),
            ("embedding_dropout", self.embedding_dropout),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            probability(field, p)?;
        }
        Ok(())
    }

    /// A LayerNorm as ModernBERT builds them (ε `norm_eps`, a bias only with `norm_bias`).
    pub fn norm<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNormConfig::new(self.hidden_size)
            .with_epsilon(self.norm_eps)
            .with_bias(self.norm_bias)
            .init(device)
    }

    /// Builds the encoder with transformers' initialization (lazy parameters).
    ///
    /// # Errors
    /// [`ModelError`] when the config does not validate.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ModernBertModel<B>, ModelError> {
        self.validate()?;
        let (h, std) = (self.hidden_size, self.initializer_range);
        let activation = self.activation()?;
        let dropout = |p: f64| Dropout::new(p);
        let layers = self
            .local_layers()?
            .into_iter()
            .enumerate()
            .map(|(i, local)| ModernBertLayer {
                attn_norm: (i > 0).then(|| self.norm(device)),
                attn: ModernBertAttention {
                    wqkv: linear(h, 3 * h, self.attention_bias, std, device),
                    wo: linear(h, h, self.attention_bias, std, device),
                    dropout: dropout(self.attention_dropout),
                    out_drop: dropout(self.attention_dropout),
                    heads: self.num_attention_heads,
                },
                mlp_norm: self.norm(device),
                mlp: ModernBertMlp {
                    wi: linear(h, 2 * self.intermediate_size, self.mlp_bias, std, device),
                    wo: linear(self.intermediate_size, h, self.mlp_bias, std, device),
                    drop: dropout(self.mlp_dropout),
                    activation,
                },
                local,
            })
            .collect();
        Ok(ModernBertModel {
            embeddings: ModernBertEmbeddings {
                tok_embeddings: embedding(self.vocab_size, h, std, device),
                norm: self.norm(device),
                drop: dropout(self.embedding_dropout),
                pad_token_id: self.pad_token_id,
            },
            layers,
            final_norm: self.norm(device),
            ropes: [self.rope(false)?, self.rope(true)?],
            half_window: self.local_attention / 2,
            compute: FloatDType::F32,
        })
    }
}

/// Token embeddings, normalized and dropped out (HF `embeddings`).
#[derive(Module, Debug)]
pub struct ModernBertEmbeddings<B: Backend> {
    /// `[vocab_size, hidden]`.
    pub tok_embeddings: Embedding<B>,
    /// LayerNorm.
    pub norm: LayerNorm<B>,
    drop: Dropout,
    /// The padding token, whose row gets no gradient.
    pad_token_id: Option<usize>,
}

/// Attention with a fused `[q | k | v]` projection (HF `attn`).
#[derive(Module, Debug)]
pub struct ModernBertAttention<B: Backend> {
    /// `hidden → 3·hidden`, queries then keys then values (HF `Wqkv`).
    pub wqkv: Linear<B>,
    /// Output projection (HF `Wo`).
    pub wo: Linear<B>,
    dropout: Dropout,
    out_drop: Dropout,
    heads: usize,
}

/// GeGLU feed-forward (HF `mlp`): `Wo(act(a) · b)` with `[a | b] = Wi(x)`.
#[derive(Module, Debug)]
pub struct ModernBertMlp<B: Backend> {
    /// `hidden → 2·intermediate` (HF `Wi`).
    pub wi: Linear<B>,
    /// `intermediate → hidden` (HF `Wo`).
    pub wo: Linear<B>,
    drop: Dropout,
    #[module(skip)]
    activation: Activation,
}

/// One pre-norm layer (HF `layers.N`); layer 0 has no `attn_norm` (the embeddings are
/// already normalized).
#[derive(Module, Debug)]
pub struct ModernBertLayer<B: Backend> {
    /// Norm before attention (absent in layer 0).
    pub attn_norm: Option<LayerNorm<B>>,
    /// Attention.
    pub attn: ModernBertAttention<B>,
    /// Norm before the feed-forward block.
    pub mlp_norm: LayerNorm<B>,
    /// Feed-forward block.
    pub mlp: ModernBertMlp<B>,
    local: bool,
}

/// A ModernBERT encoder. Parameter paths follow the HF names, lower-cased (`attn.wqkv`
/// for `attn.Wqkv`).
#[derive(Module, Debug)]
pub struct ModernBertModel<B: Backend> {
    /// Embeddings.
    pub embeddings: ModernBertEmbeddings<B>,
    /// Layers.
    pub layers: Vec<ModernBertLayer<B>>,
    /// Final LayerNorm.
    pub final_norm: LayerNorm<B>,
    #[module(skip)]
    ropes: [Rope; 2],
    half_window: usize,
    #[module(skip)]
    compute: FloatDType,
}

/// `x·cos + rotate_half(x)·sin` in float32, as ModernBERT's `apply_rotary_pos_emb`.
fn rotate<B: Backend>(x: Tensor<B, 4>, (cos, sin): &(Tensor<B, 4>, Tensor<B, 4>)) -> Tensor<B, 4> {
    let dtype = x.dtype();
    apply_rotary(x.cast(FloatDType::F32), cos.clone(), sin.clone()).cast(dtype)
}

impl<B: Backend> ModernBertModel<B> {
    /// Encodes a batch into `[batch, seq, hidden]`. `attention_mask` is 1 for tokens and
    /// 0 for padding (all ones when `None`).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let cx = self.compute;
        let heads = self.layers.first().map_or(1, |l| l.attn.heads);
        let e = &self.embeddings;
        let tokens = embed_padded(&e.tok_embeddings, input_ids, e.pad_token_id);
        let mut x = e.drop.forward(layer_norm_f32(&e.norm, tokens));
        let [_, _, hidden] = x.dims();
        let d = hidden / heads;

        let padding: Tensor<B, 4, Bool> = match attention_mask {
            Some(m) => m.equal_elem(0).reshape([batch, 1, 1, seq]),
            None => Tensor::<B, 4, Int>::zeros([batch, 1, 1, seq], &device).bool(),
        }
        .expand([batch, 1, seq, seq]);
        // Local layers also hide keys more than `local_attention / 2` positions away.
        let index = Tensor::<B, 1, Int>::arange(0..seq as i64, &device);
        let distance = index
            .clone()
            .unsqueeze::<2>()
            .sub(index.unsqueeze_dim::<2>(1))
            .abs();
        let far = distance
            .greater_elem(self.half_window as i64)
            .reshape([1, 1, seq, seq])
            .expand([batch, 1, seq, seq]);
        let masks = [padding.clone(), padding.bool_or(far)];
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device).unsqueeze::<2>();
        let tables = self
            .ropes
            .map(|rope| rotary_tables::<B>(positions.clone(), &rope.inv_freq(d)));

        for layer in &self.layers {
            let kind = usize::from(layer.local);
            let h = match &layer.attn_norm {
                Some(norm) => layer_norm_f32(norm, x.clone()),
                None => x.clone(),
            };
            let qkv = linear_in(&layer.attn.wqkv, h, cx);
            let part = |i: usize| {
                let part = qkv
                    .clone()
                    .slice([0..batch, 0..seq, i * hidden..(i + 1) * hidden]);
                split_heads(crate::fused::contiguous(part), heads, d)
            };
            let (q, k, v) = (
                rotate(part(0), &tables[kind]),
                rotate(part(1), &tables[kind]),
                part(2),
            );
            let scale = (d as f64).powf(-0.5);
            let attn = attention_scaled(
                q,
                k,
                v,
                Some(masks[kind].clone()),
                &layer.attn.dropout,
                scale,
                None,
            );
            let attn = merge_heads(attn);
            let attn = layer
                .attn
                .out_drop
                .forward(linear_in(&layer.attn.wo, attn, cx));
            x = x.add(attn.cast(FloatDType::F32));
            let mlp = &layer.mlp;
            let both = linear_in(&mlp.wi, layer_norm_f32(&layer.mlp_norm, x.clone()), cx);
            let inner = both.dims()[2] / 2;
            let input = both.clone().slice([0..batch, 0..seq, 0..inner]);
            let gate = both.slice([0..batch, 0..seq, inner..2 * inner]);
            let out = linear_in(
                &mlp.wo,
                mlp.drop.forward(activate(mlp.activation, input).mul(gate)),
                cx,
            );
            x = x.add(out.cast(FloatDType::F32));
        }
        layer_norm_f32(&self.final_norm, x)
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

impl<B: Backend> Autocast for ModernBertModel<B> {
    fn with_compute_dtype(mut self, dtype: FloatDType) -> Self {
        self.compute = dtype;
        self
    }

    fn compute_dtype(&self) -> FloatDType {
        self.compute
    }
}
