//! DeBERTa-v2 and v3 encoders, as transformers' `DebertaV2Model`: post-LayerNorm layers
//! with disentangled attention — content-to-content scores plus content-to-position
//! (`c2p`) and position-to-content (`p2c`) scores against shared relative-position
//! embeddings, in log buckets (`position_buckets`), with keys shared between content and
//! positions (`share_att_key`).

use crate::random::Dropout;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::{
    Activation, default_dropout, default_hidden_act, default_range, divisible,
    encoder_min_parameters, nonzero, positive, probability, token_ids,
};
use crate::layers::{embedding, layer_norm, linear};
use crate::ops::{
    MASKED, activate, embed, embed_padded, layer_norm_f32, linear_in, merge_heads, split_heads,
};
use crate::{Autocast, ModelError};

fn positions_512() -> usize {
    512
}
fn eps_1e7() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}

/// A DeBERTa-v2/v3 configuration (`model_type` `deberta-v2`), with transformers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebertaV2Config {
    /// `deberta-v2`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Dropout after embeddings, sub-layer outputs and on relative embeddings.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Absolute position table size (and relative span when `max_relative_positions` < 1).
    #[serde(default = "positions_512")]
    pub max_position_embeddings: usize,
    /// Token types (0 in DeBERTa-v3: no table).
    #[serde(default)]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "eps_1e7")]
    pub layer_norm_eps: f64,
    /// Disentangled (relative-position) attention.
    #[serde(default)]
    pub relative_attention: bool,
    /// Relative span; < 1 means `max_position_embeddings`.
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    /// Log buckets of relative positions; < 1 means none.
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    /// Content keys and queries also project the relative embeddings.
    #[serde(default)]
    pub share_att_key: bool,
    /// `c2p`, `p2c` (a list, or `"p2c|c2p"` in older configs).
    #[serde(default)]
    pub pos_att_type: Option<serde_json::Value>,
    /// `layer_norm` normalizes the relative embeddings.
    #[serde(default)]
    pub norm_rel_ebd: Option<String>,
    /// Absolute positions added to the embeddings (false in DeBERTa-v3).
    #[serde(default = "yes")]
    pub position_biased_input: bool,
    /// Embedding width when it differs from `hidden_size` (a projection follows).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// DeBERTa-v2-xlarge's convolution after the first layer (unsupported when > 0).
    #[serde(default)]
    pub conv_kernel_size: usize,
    /// A head size other than `hidden_size / num_attention_heads` (unsupported).
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Width of the sequence head's pooler (must be `hidden_size`).
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    /// Dropout before the pooler's projection.
    #[serde(default)]
    pub pooler_dropout: f64,
    /// The pooler's activation.
    #[serde(default = "default_hidden_act")]
    pub pooler_hidden_act: String,
    /// Dropout before a sequence classifier; `None` uses `hidden_dropout_prob`.
    #[serde(default)]
    pub cls_dropout: Option<f64>,
    /// Standard deviation of new weights.
    #[serde(default = "default_range")]
    pub initializer_range: f64,
}

/// Which relative-position scores a layer adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct PosAtt {
    c2p: bool,
    p2c: bool,
}

impl DebertaV2Config {
    fn pos_att(&self) -> Result<PosAtt, ModelError> {
        let names: Vec<String> = match &self.pos_att_type {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s
                .to_lowercase()
                .split('|')
                .map(|p| p.trim().to_owned())
                .collect(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_owned())
                .collect(),
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "pos_att_type must be a list or a string, got {other}"
                )));
            }
        };
        let mut att = PosAtt::default();
        for name in names {
            match name.as_str() {
                "c2p" => att.c2p = true,
                "p2c" => att.p2c = true,
                other => {
                    return Err(ModelError::Unsupported {
                        field: "pos_att_type",
                        value: other.to_owned(),
                        supported: "c2p, p2c",
                    });
                }
            }
        }
        Ok(att)
    }

    /// The relative span: `max_relative_positions`, or `max_position_embeddings`.
    pub fn max_relative(&self) -> usize {
        match self.max_relative_positions {
            m if m >= 1 => m as usize,
            _ => self.max_position_embeddings,
        }
    }

    /// Half the number of relative embeddings: `position_buckets`, or the span.
    pub fn attention_span(&self) -> usize {
        match self.position_buckets {
            b if b > 0 => b as usize,
            _ => self.max_relative(),
        }
    }

    /// The width of the embedding tables.
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// The feed-forward activation.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown `hidden_act`.
    pub fn activation(&self) -> Result<Activation, ModelError> {
        Activation::parse("hidden_act", &self.hidden_act)
    }

    /// The sequence head's pooler activation.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown `pooler_hidden_act`.
    pub fn pooler_activation(&self) -> Result<Activation, ModelError> {
        Activation::parse("pooler_hidden_act", &self.pooler_hidden_act)
    }

    /// Sets every dropout probability of the encoder.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.hidden_dropout_prob = p;
        self.attention_probs_dropout_prob = p;
        self
    }

    /// The fewest parameters an encoder of this configuration has.
    pub fn min_parameters(&self) -> u128 {
        encoder_min_parameters(
            [self.vocab_size, self.embedding_width()],
            self.hidden_size,
            self.intermediate_size,
            2,
            self.num_hidden_layers,
        )
    }

    /// Checks sizes and options.
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] for sizes that do not fit, [`ModelError::Unsupported`]
    /// for options burnish does not implement (the convolution of DeBERTa-v2-xlarge, a
    /// head size of its own, a pooler of another width).
    pub fn validate(&self) -> Result<(), ModelError> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("embedding_size", self.embedding_width()),
        ] {
            nonzero(field, v)?;
        }
        divisible(self.hidden_size, self.num_attention_heads)?;
        let unsupported = |field, value: String, supported| {
            Err(ModelError::Unsupported {
                field,
                value,
                supported,
            })
        };
        if self.conv_kernel_size > 0 {
            return unsupported(
                "conv_kernel_size",
                self.conv_kernel_size.to_string(),
                "0 (no convolution layer)",
            );
        }
        let head = self.hidden_size / self.num_attention_heads;
        if let Some(size) = self.attention_head_size.filter(|&s| s != head) {
            return unsupported(
                "attention_head_size",
                size.to_string(),
                "hidden_size / num_attention_heads",
            );
        }
        if let Some(size) = self.pooler_hidden_size.filter(|&s| s != self.hidden_size) {
            return unsupported("pooler_hidden_size", size.to_string(), "hidden_size");
        }
        match self.norm_rel_ebd.as_deref().map(str::trim) {
            None | Some("none") | Some("layer_norm") => {}
            Some(other) => {
                return unsupported("norm_rel_ebd", other.to_owned(), "none, layer_norm");
            }
        }
        if self.position_buckets > 0 && self.position_buckets < 2 {
            return Err(ModelError::Inconsistent(
                "position_buckets must be at least 2".to_owned(),
            ));
        }
        self.pos_att()?;
        self.activation()?;
        self.pooler_activation()?;
        positive("layer_norm_eps", self.layer_norm_eps)?;
        positive("initializer_range", self.initializer_range)?;
        if let Some(pad) = self.pad_token_id {
            token_ids("pad_token_id", Some(&pad.into()), self.vocab_size)?;
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("pooler_dropout", self.pooler_dropout),
            ("cls_dropout", self.cls_dropout.unwrap_or(0.0)),
        ] {
            probability(field, p)?;
        }
        Ok(())
    }

    /// Builds the encoder with transformers' initialization (lazy parameters).
    ///
    /// # Errors
    /// [`ModelError`] when the config does not validate.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<DebertaV2Model<B>, ModelError> {
        self.validate()?;
        let (h, std, eps) = (
            self.hidden_size,
            self.initializer_range,
            self.layer_norm_eps,
        );
        let e = self.embedding_width();
        let att = self.pos_att()?;
        let relative = self.relative_attention;
        let separate = relative && !self.share_att_key;
        let dropout = |p: f64| Dropout::new(p);
        let residual = |d_in: usize| DebertaResidual {
            dense: linear(d_in, h, true, std, device),
            layer_norm: layer_norm(h, eps, device),
            dropout: dropout(self.hidden_dropout_prob),
        };
        let activation = self.activation()?;
        let layer = (0..self.num_hidden_layers)
            .map(|_| DebertaLayer {
                attention: DebertaAttention {
                    self_attn: DisentangledSelfAttention {
                        query_proj: linear(h, h, true, std, device),
                        key_proj: linear(h, h, true, std, device),
                        value_proj: linear(h, h, true, std, device),
                        pos_key_proj: (separate && att.c2p)
                            .then(|| linear(h, h, true, std, device)),
                        pos_query_proj: (separate && att.p2c)
                            .then(|| linear(h, h, true, std, device)),
                        dropout: dropout(self.attention_probs_dropout_prob),
                        pos_dropout: dropout(self.hidden_dropout_prob),
                        heads: self.num_attention_heads,
                        c2p: relative && att.c2p,
                        p2c: relative && att.p2c,
                    },
                    output: residual(h),
                },
                intermediate: DebertaIntermediate {
                    dense: linear(h, self.intermediate_size, true, std, device),
                },
                output: residual(self.intermediate_size),
                activation,
            })
            .collect();
        let norm_rel = self.norm_rel_ebd.as_deref().map(str::trim) == Some("layer_norm");
        Ok(DebertaV2Model {
            embeddings: DebertaEmbeddings {
                word_embeddings: embedding(self.vocab_size, e, std, device),
                position_embeddings: self
                    .position_biased_input
                    .then(|| embedding(self.max_position_embeddings, e, std, device)),
                token_type_embeddings: (self.type_vocab_size > 0)
                    .then(|| embedding(self.type_vocab_size, e, std, device)),
                embed_proj: (e != h).then(|| linear(e, h, false, std, device)),
                layer_norm: layer_norm(h, eps, device),
                dropout: dropout(self.hidden_dropout_prob),
                pad_token_id: self.pad_token_id.unwrap_or(0),
            },
            encoder: DebertaEncoder {
                layer,
                rel_embeddings: relative
                    .then(|| embedding(2 * self.attention_span(), h, std, device)),
                layer_norm: (relative && norm_rel).then(|| layer_norm(h, eps, device)),
                span: self.attention_span(),
                buckets: self.position_buckets.max(0) as usize,
                max_relative: self.max_relative(),
            },
            compute: FloatDType::F32,
        })
    }
}

/// Word (+ absolute position, + token type) embeddings, projected when narrower,
/// normalized, zeroed at padding and dropped out (HF `embeddings`).
#[derive(Module, Debug)]
pub struct DebertaEmbeddings<B: Backend> {
    /// `[vocab_size, embedding_size]`.
    pub word_embeddings: Embedding<B>,
    /// Absolute positions (`position_biased_input`; absent in DeBERTa-v3).
    pub position_embeddings: Option<Embedding<B>>,
    /// Token types (absent when `type_vocab_size` is 0, as in DeBERTa-v3).
    pub token_type_embeddings: Option<Embedding<B>>,
    /// `embedding_size → hidden_size`, when they differ.
    pub embed_proj: Option<Linear<B>>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
    /// The padding token, whose word row gets no gradient.
    pad_token_id: usize,
}

/// Disentangled self-attention (HF `attention.self`).
#[derive(Module, Debug)]
pub struct DisentangledSelfAttention<B: Backend> {
    /// Query projection (also of relative embeddings with `share_att_key`).
    pub query_proj: Linear<B>,
    /// Key projection (also of relative embeddings with `share_att_key`).
    pub key_proj: Linear<B>,
    /// Value projection.
    pub value_proj: Linear<B>,
    /// Relative-embedding keys for `c2p` without `share_att_key`.
    pub pos_key_proj: Option<Linear<B>>,
    /// Relative-embedding queries for `p2c` without `share_att_key`.
    pub pos_query_proj: Option<Linear<B>>,
    dropout: Dropout,
    pos_dropout: Dropout,
    heads: usize,
    c2p: bool,
    p2c: bool,
}

/// Projection, dropout, residual and LayerNorm after a sub-layer (HF `output`).
#[derive(Module, Debug)]
pub struct DebertaResidual<B: Backend> {
    /// Output projection.
    pub dense: Linear<B>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

/// Attention with its output block (HF `attention`).
#[derive(Module, Debug)]
pub struct DebertaAttention<B: Backend> {
    /// HF `attention.self`.
    pub self_attn: DisentangledSelfAttention<B>,
    /// HF `attention.output`.
    pub output: DebertaResidual<B>,
}

/// The feed-forward up-projection (HF `intermediate`).
#[derive(Module, Debug)]
pub struct DebertaIntermediate<B: Backend> {
    /// Up-projection.
    pub dense: Linear<B>,
}

/// One encoder layer (HF `encoder.layer.N`).
#[derive(Module, Debug)]
pub struct DebertaLayer<B: Backend> {
    /// Attention block.
    pub attention: DebertaAttention<B>,
    /// Feed-forward up-projection.
    pub intermediate: DebertaIntermediate<B>,
    /// Feed-forward down-projection with residual and LayerNorm.
    pub output: DebertaResidual<B>,
    #[module(skip)]
    activation: Activation,
}

/// The layers and the shared relative-position embeddings (HF `encoder`).
#[derive(Module, Debug)]
pub struct DebertaEncoder<B: Backend> {
    /// Layers.
    pub layer: Vec<DebertaLayer<B>>,
    /// `[2·span, hidden]` relative-position embeddings.
    pub rel_embeddings: Option<Embedding<B>>,
    /// HF `encoder.LayerNorm` of the relative embeddings (`norm_rel_ebd = layer_norm`).
    pub layer_norm: Option<LayerNorm<B>>,
    span: usize,
    buckets: usize,
    max_relative: usize,
}

/// A DeBERTa-v2/v3 encoder. Parameter paths follow the HF names with `self_attn` for
/// `self` and `layer_norm` for `LayerNorm`.
#[derive(Module, Debug)]
pub struct DebertaV2Model<B: Backend> {
    /// Embeddings.
    pub embeddings: DebertaEmbeddings<B>,
    /// Encoder.
    pub encoder: DebertaEncoder<B>,
    #[module(skip)]
    compute: FloatDType,
}

/// transformers' `make_log_bucket_position`, in float32 as torch computes it: distances
/// under `bucket/2` stay, longer ones fall into logarithmic buckets up to `max_position`.
fn log_bucket(relative: i64, bucket: usize, max_position: usize) -> i64 {
    let mid = (bucket / 2) as i64;
    let abs = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs <= mid {
        return relative;
    }
    let log_denominator = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos =
        ((abs as f32 / mid as f32).ln() / log_denominator * (mid - 1) as f32).ceil() + mid as f32;
    log_pos as i64 * relative.signum()
}

/// What the layers of one forward pass share for their relative scores: the normalized
/// relative embeddings `[2·span, hidden]` and the gather indices of c2p and p2c
/// `[batch, heads, seq, seq]`, built once per pass.
struct Relative<B: Backend> {
    embeddings: Tensor<B, 2>,
    span: usize,
    c2p: Tensor<B, 4, Int>,
    p2c: Tensor<B, 4, Int>,
}

impl<B: Backend> DebertaEncoder<B> {
    /// The relative-score inputs of a `[batch, heads, seq, seq]` attention, when the
    /// encoder has relative embeddings.
    fn relative(&self, [batch, heads, seq]: [usize; 3], device: &B::Device) -> Option<Relative<B>> {
        let table = self.rel_embeddings.as_ref()?;
        let weight = table.weight.val();
        let embeddings = match &self.layer_norm {
            Some(norm) => layer_norm_f32(norm, weight),
            None => weight,
        };
        // Relative positions `i − j`, bucketed, of query i and key j.
        let positions: Vec<i64> = (0..seq as i64)
            .flat_map(|i| (0..seq as i64).map(move |j| i - j))
            .map(|r| match self.buckets {
                0 => r,
                b => log_bucket(r, b, self.max_relative),
            })
            .collect();
        let span = self.span as i64;
        let index = |sign: i64| {
            let ids: Vec<i64> = positions
                .iter()
                .map(|&r| (sign * r + span).clamp(0, 2 * span - 1))
                .collect();
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [seq, seq]), device)
                .reshape([1, 1, seq, seq])
                .expand([batch, heads, seq, seq])
        };
        Some(Relative {
            embeddings,
            span: self.span,
            c2p: index(1),
            p2c: index(-1),
        })
    }
}

impl<B: Backend> DisentangledSelfAttention<B> {
    /// Attention of `x` `[batch, seq, hidden]`, with the relative scores of `relative`
    /// when the encoder has them.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4, Bool>,
        relative: Option<&Relative<B>>,
        cx: FloatDType,
    ) -> Tensor<B, 3> {
        let [batch, _, hidden] = x.dims();
        let heads = self.heads;
        let d = hidden / heads;
        let split = |t: Tensor<B, 3>| split_heads(t, heads, d);
        let q = split(linear_in(&self.query_proj, x.clone(), cx));
        let k = split(linear_in(&self.key_proj, x.clone(), cx));
        let v = split(linear_in(&self.value_proj, x, cx));
        let factor = 1 + usize::from(self.c2p) + usize::from(self.p2c);
        // torch.sqrt of a float32 tensor: the scale is a float32 value.
        let scale = f64::from((d as f32 * factor as f32).sqrt());
        let mut scores = q
            .clone()
            .matmul(k.clone().div_scalar(scale).swap_dims(2, 3));
        if let Some(relative) = relative {
            let span = relative.span;
            let rel = self
                .pos_dropout
                .forward(relative.embeddings.clone())
                .unsqueeze_dim::<3>(0);
            let project = |layer: &Linear<B>| {
                split(linear_in(layer, rel.clone(), cx)).expand([batch, heads, 2 * span, d])
            };
            if self.c2p {
                let pos_key = project(self.pos_key_proj.as_ref().unwrap_or(&self.key_proj));
                let c2p = q
                    .matmul(pos_key.swap_dims(2, 3))
                    .gather(3, relative.c2p.clone());
                scores = scores.add(c2p.div_scalar(scale));
            }
            if self.p2c {
                let pos_query = project(self.pos_query_proj.as_ref().unwrap_or(&self.query_proj));
                let p2c = k
                    .matmul(pos_query.swap_dims(2, 3))
                    .gather(3, relative.p2c.clone())
                    .swap_dims(2, 3);
                scores = scores.add(p2c.div_scalar(scale));
            }
        }
        let scores = scores.cast(FloatDType::F32).mask_fill(mask, MASKED);
        let probs = self.dropout.forward(crate::fused::softmax_last(scores));
        merge_heads(probs.cast(v.dtype()).matmul(v))
    }
}

impl<B: Backend> DebertaResidual<B> {
    fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>, cx: FloatDType) -> Tensor<B, 3> {
        let x = self.dropout.forward(linear_in(&self.dense, x, cx));
        layer_norm_f32(&self.layer_norm, x.cast(FloatDType::F32).add(residual))
    }
}

impl<B: Backend> DebertaV2Model<B> {
    /// Encodes a batch into `[batch, seq, hidden]`. `attention_mask` is 1 for tokens, 0
    /// for padding (all ones when `None`); `token_type_ids` default to 0 and are ignored
    /// without a token-type table.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let mask = attention_mask.unwrap_or_else(|| Tensor::ones([batch, seq], &device));
        let e = &self.embeddings;
        let mut x = embed_padded(&e.word_embeddings, input_ids, Some(e.pad_token_id));
        if let Some(table) = &e.position_embeddings {
            let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                .unsqueeze::<2>()
                .expand([batch, seq]);
            x = x.add(embed(table, positions));
        }
        if let Some(table) = &e.token_type_embeddings {
            let types = token_type_ids.unwrap_or_else(|| Tensor::zeros([batch, seq], &device));
            x = x.add(embed(table, types));
        }
        if let Some(proj) = &e.embed_proj {
            x = linear_in(proj, x, self.compute).cast(FloatDType::F32);
        }
        let token = mask.clone().float().reshape([batch, seq, 1]);
        let mut x = e
            .dropout
            .forward(layer_norm_f32(&e.layer_norm, x).mul(token));

        // A query and a key attend to each other only when both are tokens, as
        // transformers' `get_attention_mask` builds it (a padding query sees nothing).
        let keep = mask.clone().reshape([batch, 1, 1, seq]).bool();
        let both = keep.clone().expand([batch, 1, seq, seq]).bool_and(
            keep.reshape([batch, 1, seq, 1])
                .expand([batch, 1, seq, seq]),
        );
        let hidden_mask = both.bool_not().expand([batch, self.heads(), seq, seq]);

        let enc = &self.encoder;
        let relative = enc.relative([batch, self.heads(), seq], &device);
        for layer in &enc.layer {
            let attn = layer.attention.self_attn.forward(
                x.clone(),
                hidden_mask.clone(),
                relative.as_ref(),
                self.compute,
            );
            let h = layer.attention.output.forward(attn, x, self.compute);
            let inner = activate(
                layer.activation,
                linear_in(&layer.intermediate.dense, h.clone(), self.compute),
            );
            x = layer.output.forward(inner, h, self.compute);
        }
        x
    }

    /// Number of attention heads.
    fn heads(&self) -> usize {
        self.encoder
            .layer
            .first()
            .map_or(1, |l| l.attention.self_attn.heads)
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }
}

impl<B: Backend> Autocast for DebertaV2Model<B> {
    fn with_compute_dtype(mut self, dtype: FloatDType) -> Self {
        self.compute = dtype;
        self
    }

    fn compute_dtype(&self) -> FloatDType {
        self.compute
    }
}

#[cfg(test)]
mod tests {
    use super::log_bucket;

    /// Values of transformers' `make_log_bucket_position` (torch 2.15): exact up to half
    /// the buckets, logarithmic beyond.
    #[test]
    fn log_buckets_match_transformers() {
        for (relative, bucket) in [
            (0, 0),
            (5, 5),
            (-127, -127),
            (128, 128),
            (129, 129),
            (200, 169),
            (-300, -207),
            (511, 255),
        ] {
            assert_eq!(log_bucket(relative, 256, 512), bucket, "{relative}");
        }
        let small: Vec<i64> = (-40..=40).map(|r| log_bucket(r, 8, 32)).collect();
        assert_eq!(small[..9], [-8; 9]);
        assert_eq!(small[36..49], [-4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 5, 5, 6]);
        assert_eq!(small[72..], [8; 9]);
    }
}
