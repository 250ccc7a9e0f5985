//! Model configurations, read from a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::deberta::DebertaV2Config;
use crate::modernbert::ModernBertConfig;
use crate::rope::Rope;

/// Activation functions named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the error function (`gelu` in transformers).
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
    /// SiLU / swish (Llama's MLP gate).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// tanh (BERT's pooler).
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    pub(crate) fn parse(field: &'static str, value: &str) -> Result<Self, ModelError> {
        serde_json::from_value(serde_json::Value::String(value.to_owned())).map_err(|_| {
            ModelError::Unsupported {
                field,
                value: value.to_owned(),
                supported: "gelu, gelu_new, gelu_pytorch_tanh, relu, silu, tanh",
            }
        })
    }
}

fn default_eps() -> f64 {
    1e-12
}
pub(crate) fn default_range() -> f64 {
    0.02
}
fn default_type_vocab() -> usize {
    2
}
pub(crate) fn default_hidden_act() -> String {
    "gelu".to_owned()
}
fn default_silu() -> String {
    "silu".to_owned()
}
pub(crate) fn default_dropout() -> f64 {
    0.1
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}

/// Which BERT-family variant: they differ in position ids (and in checkpoint names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BertFlavor {
    /// BERT: positions `0..seq_len`.
    Bert,
    /// RoBERTa (and XLM-RoBERTa, the same architecture): positions count non-pad tokens
    /// from `pad_token_id + 1`.
    #[serde(alias = "xlm-roberta")]
    Roberta,
    /// DistilBERT: BERT's layers without token types or pooler, under other names (its
    /// `config.json` is read by [`ModelConfig::from_json`]).
    #[serde(rename = "distilbert")]
    DistilBert,
}

/// A BERT-family encoder configuration (`model_type` `bert`, `roberta` or `xlm-roberta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `bert`, or `roberta` (also for `xlm-roberta`, the same architecture).
    #[serde(rename = "model_type")]
    pub flavor: BertFlavor,
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
    /// Feed-forward activation name.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Dropout after embeddings, attention output and feed-forward output.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Size of the position embedding table.
    pub max_position_embeddings: usize,
    /// Number of token types (segments); RoBERTa checkpoints use 1.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id (RoBERTa's position offset).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Standard deviation of new weights.
    #[serde(default = "default_range")]
    pub initializer_range: f64,
    /// Dropout of a classification head; `None` uses `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// `absolute` only (relative position types are not supported).
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// DistilBERT's dropout before its sequence classifier (`seq_classif_dropout`); other
    /// heads use `classifier_dropout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_classif_dropout: Option<f64>,
}

/// DistilBERT's `config.json` fields, converted to a [`BertConfig`].
#[derive(Deserialize)]
struct DistilBertJson {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_hidden_act")]
    activation: String,
    #[serde(default = "default_dropout")]
    dropout: f64,
    #[serde(default = "default_dropout")]
    attention_dropout: f64,
    #[serde(default)]
    seq_classif_dropout: Option<f64>,
    #[serde(default = "default_range")]
    initializer_range: f64,
    #[serde(default)]
    pad_token_id: Option<usize>,
}

impl From<DistilBertJson> for BertConfig {
    fn from(d: DistilBertJson) -> Self {
        BertConfig {
            flavor: BertFlavor::DistilBert,
            vocab_size: d.vocab_size,
            hidden_size: d.dim,
            num_hidden_layers: d.n_layers,
            num_attention_heads: d.n_heads,
            intermediate_size: d.hidden_dim,
            hidden_act: d.activation,
            hidden_dropout_prob: d.dropout,
            attention_probs_dropout_prob: d.attention_dropout,
            max_position_embeddings: d.max_position_embeddings,
            // No token-type table.
            type_vocab_size: 0,
            // DistilBERT's LayerNorms are built with ε = 1e-12 whatever the config says.
            layer_norm_eps: 1e-12,
            pad_token_id: Some(d.pad_token_id.unwrap_or(0)),
            initializer_range: d.initializer_range,
            classifier_dropout: None,
            position_embedding_type: None,
            seq_classif_dropout: Some(d.seq_classif_dropout.unwrap_or(0.2)),
        }
    }
}

/// A Llama-family decoder configuration: `llama`, `mistral`, `qwen2`, `qwen3`, `phi3`,
/// `gemma2` and `gemma3_text` (see [`DecoderFamily`] for what each changes).
///
/// Fields a family does not use are ignored as transformers ignores them; options burnish
/// does not implement are refused by [`LlamaConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral`, `qwen2`, `qwen3`, `phi3`, `gemma2` or `gemma3_text`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); `None` means no grouping.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size; `None` means the family's default (see [`LlamaConfig::head_dim`]).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// MLP activation (SwiGLU's gate).
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    /// Gemma's name for the MLP activation (it ignores `hidden_act`).
    #[serde(default)]
    pub hidden_activation: Option<String>,
    /// Longest sequence the rotary tables cover.
    pub max_position_embeddings: usize,
    /// RMSNorm ε; `None` means the family's default (1e-5 for Phi-3, else 1e-6).
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    /// Rotary base θ as transformers 4 writes it; see [`LlamaConfig::rope`].
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Rotary parameters as transformers 5 writes them (`{"rope_theta": …, "rope_type":
    /// "default"}`, or one such object per layer type for Gemma 3).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Rotary scaling (transformers 4): `null`, `default`, `linear` or `llama3`.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Gemma 3's rotary base of its sliding-window layers (transformers 4).
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    /// Fraction of each head the rotation applies to (Phi-3 family, transformers 4).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Context length the rotary scaling was pretrained at (Phi-3, Llama 3 scaling).
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// The attention window of sliding-window layers, in tokens.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen's switch for its sliding window.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Qwen's first layer with a sliding window (when `layer_types` is absent).
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// Gemma 3's period of full-attention layers (when `layer_types` is absent).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// Attention of each layer, `full_attention` or `sliding_attention` (transformers 5).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Whether `lm_head` shares the input embedding matrix; `None` means the family's
    /// default (tied for Gemma, untied otherwise).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Bias on q/k/v/o projections (Llama, Qwen3, Gemma); qwen2 always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Gemma's attention scale is `query_pre_attn_scalar^-½` instead of `head_dim^-½`.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2's cap on attention scores, `c·tanh(s/c)` (absent: 50, `null`: none).
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    /// Gemma's cap on output logits (absent: 30 for Gemma 2, none for Gemma 3).
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    /// Gemma's bidirectional attention (refused: burnish trains causal decoders).
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    /// Phi-3's dropout on sub-layer outputs (burnish trains decoders without it).
    #[serde(default)]
    pub resid_pdrop: Option<f64>,
    /// Phi-3's dropout on embeddings (burnish trains decoders without it).
    #[serde(default)]
    pub embd_pdrop: Option<f64>,
    /// Standard deviation of new weights.
    #[serde(default = "default_range")]
    pub initializer_range: f64,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Padding token.
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
}

/// A field that is present (`Some`), possibly `null` (`Some(None)`), as opposed to
/// absent (`None`, through `#[serde(default)]`): transformers' defaults differ.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// What a decoder family changes in the Llama architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderFamily {
    /// Llama: the base.
    Llama,
    /// Mistral: a sliding window on every layer when `sliding_window` is set.
    Mistral,
    /// Qwen2: q/k/v biases; a sliding window above `max_window_layers` when
    /// `use_sliding_window`.
    Qwen2,
    /// Qwen3: RMSNorm of each query and key head (`q_norm`, `k_norm`), no biases, head
    /// size 128 by default; windows as Qwen2.
    Qwen3,
    /// Phi-3: fused `qkv_proj` and `gate_up_proj`, partial rotary, a window on every
    /// layer when set.
    Phi3,
    /// Gemma 2: `(1 + w)` RMSNorm around both sub-layers, GeGLU, embeddings scaled by
    /// √hidden, attention scale from `query_pre_attn_scalar`, soft-capped attention
    /// scores and logits, sliding window on alternate layers, tied embeddings.
    Gemma2,
    /// Gemma 3 (text): Gemma 2 with `q_norm`/`k_norm`, no score capping, five
    /// sliding-window layers per global one and a separate rotary base for them.
    Gemma3,
}

impl DecoderFamily {
    /// The family of a `model_type`, if it is a supported decoder.
    pub fn of(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "llama" => DecoderFamily::Llama,
            "mistral" => DecoderFamily::Mistral,
            "qwen2" => DecoderFamily::Qwen2,
            "qwen3" => DecoderFamily::Qwen3,
            "phi3" => DecoderFamily::Phi3,
            "gemma2" => DecoderFamily::Gemma2,
            "gemma3_text" => DecoderFamily::Gemma3,
            _ => return None,
        })
    }

    /// Whether the family is Gemma 2 or 3 (shared norms, scaling and defaults).
    pub fn is_gemma(self) -> bool {
        matches!(self, DecoderFamily::Gemma2 | DecoderFamily::Gemma3)
    }
}

/// The supported decoder `model_type`s, for error messages.
pub const DECODER_TYPES: &str = "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text";

/// Every supported `model_type`, for error messages.
const SUPPORTED_TYPES: &str = "bert, roberta, xlm-roberta, distilbert, deberta-v2, modernbert, llama, mistral, \
     qwen2, qwen3, phi3, gemma2, gemma3_text";

/// An architecture configuration, chosen by `model_type`.
// One config per loaded model: boxing the larger variant would save nothing worth its
// noise in every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// BERT, RoBERTa, XLM-RoBERTa or DistilBERT encoder.
    Bert(BertConfig),
    /// DeBERTa-v2/v3 encoder.
    Deberta(DebertaV2Config),
    /// ModernBERT encoder.
    ModernBert(ModernBertConfig),
    /// Llama-family decoder.
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// The fewest parameters a model of this configuration has; see
    /// [`BertConfig::min_parameters`].
    pub fn min_parameters(&self) -> u128 {
        match self {
            ModelConfig::Bert(c) => c.min_parameters(),
            ModelConfig::Deberta(c) => c.min_parameters(),
            ModelConfig::ModernBert(c) => c.min_parameters(),
            ModelConfig::Llama(c) => c.min_parameters(),
        }
    }

    /// The number of rows of the token embedding table.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.vocab_size,
            ModelConfig::Deberta(c) => c.vocab_size,
            ModelConfig::ModernBert(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }

    /// The same config with every dropout probability of an encoder set to `p`; a decoder
    /// is returned unchanged (its attention dropout stays the checkpoint's).
    #[must_use]
    pub fn with_dropout(self, p: f64) -> Self {
        match self {
            ModelConfig::Bert(c) => ModelConfig::Bert(c.with_dropout(p)),
            ModelConfig::Deberta(c) => ModelConfig::Deberta(c.with_dropout(p)),
            ModelConfig::ModernBert(c) => ModelConfig::ModernBert(c.with_dropout(p)),
            decoder @ ModelConfig::Llama(_) => decoder,
        }
    }

    /// The shape of the token embedding table, `[vocab, width]`.
    pub fn embedding_shape(&self) -> [usize; 2] {
        match self {
            ModelConfig::Bert(c) => [c.vocab_size, c.hidden_size],
            ModelConfig::Deberta(c) => [c.vocab_size, c.embedding_width()],
            ModelConfig::ModernBert(c) => [c.vocab_size, c.hidden_size],
            ModelConfig::Llama(c) => [c.vocab_size, c.hidden_size],
        }
    }

    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.num_hidden_layers,
            ModelConfig::Deberta(c) => c.num_hidden_layers,
            ModelConfig::ModernBert(c) => c.num_hidden_layers,
            ModelConfig::Llama(c) => c.num_hidden_layers,
        }
    }

    /// The `model_type` this config was read from.
    pub fn model_type(&self) -> &str {
        match self {
            ModelConfig::Bert(c) => match c.flavor {
                BertFlavor::Bert => "bert",
                BertFlavor::Roberta => "roberta",
                BertFlavor::DistilBert => "distilbert",
            },
            ModelConfig::Deberta(c) => &c.model_type,
            ModelConfig::ModernBert(c) => &c.model_type,
            ModelConfig::Llama(c) => &c.model_type,
        }
    }

    /// The longest sequence the position table covers; `None` for rotary positions,
    /// which are computed for any length.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            // RoBERTa's positions start after the padding id.
            ModelConfig::Bert(c) if c.flavor == BertFlavor::Roberta => Some(
                c.max_position_embeddings
                    .saturating_sub(c.pad_token_id.unwrap_or(1) + 1),
            ),
            ModelConfig::Bert(c) => Some(c.max_position_embeddings),
            ModelConfig::Deberta(c) if c.position_biased_input => Some(c.max_position_embeddings),
            ModelConfig::Deberta(_) | ModelConfig::ModernBert(_) | ModelConfig::Llama(_) => None,
        }
    }

    /// Parses a `config.json` text and validates it.
    ///
    /// # Errors
    /// [`ModelError::Config`] for malformed JSON or missing fields,
    /// [`ModelError::Unsupported`] for an unknown `model_type` or `hidden_act`, and
    /// [`ModelError::Inconsistent`] for sizes that do not fit together.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::Config("no `model_type` string".to_owned()))?
            .to_owned();
        let parse_err = |e: serde_json::Error| ModelError::Config(e.to_string());
        let config = match model_type.as_str() {
            "bert" | "roberta" | "xlm-roberta" => {
                ModelConfig::Bert(serde_json::from_value(value).map_err(parse_err)?)
            }
            "deberta-v2" => ModelConfig::Deberta(serde_json::from_value(value).map_err(parse_err)?),
            "modernbert" => {
                ModelConfig::ModernBert(serde_json::from_value(value).map_err(parse_err)?)
            }
            "distilbert" => ModelConfig::Bert(
                serde_json::from_value::<DistilBertJson>(value)
                    .map_err(parse_err)?
                    .into(),
            ),
            t if DecoderFamily::of(t).is_some() => {
                ModelConfig::Llama(serde_json::from_value(value).map_err(parse_err)?)
            }
            "gemma3" => {
                return Err(ModelError::Unsupported {
                    field: "model_type",
                    value: "gemma3".to_owned(),
                    supported: "gemma3_text (a text-only Gemma 3 checkpoint; the image-text model is not supported)",
                });
            }
            other => {
                return Err(ModelError::Unsupported {
                    field: "model_type",
                    value: other.to_owned(),
                    supported: SUPPORTED_TYPES,
                });
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes fit together and the options are supported.
    ///
    /// # Errors
    /// See [`ModelConfig::from_json`].
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            ModelConfig::Bert(c) => c.validate(),
            ModelConfig::Deberta(c) => c.validate(),
            ModelConfig::ModernBert(c) => c.validate(),
            ModelConfig::Llama(c) => c.validate(),
        }
    }
}

pub(crate) fn nonzero(field: &'static str, value: usize) -> Result<(), ModelError> {
    if value == 0 {
        return Err(ModelError::Inconsistent(format!(
            "{field} must be at least 1"
        )));
    }
    Ok(())
}

/// Heads must split the hidden size evenly.
pub(crate) fn divisible(hidden_size: usize, heads: usize) -> Result<(), ModelError> {
    if !hidden_size.is_multiple_of(heads) {
        return Err(ModelError::Inconsistent(format!(
            "hidden_size {hidden_size} is not divisible by num_attention_heads {heads}"
        )));
    }
    Ok(())
}

/// transformers 5's `layer_types`: per layer, whether it attends in a sliding window.
///
/// # Errors
/// [`ModelError::Unsupported`] for an unknown layer type, [`ModelError::Inconsistent`]
/// when there is not one entry per layer.
pub(crate) fn sliding_layers(types: &[String], layers: usize) -> Result<Vec<bool>, ModelError> {
    if types.len() != layers {
        return Err(ModelError::Inconsistent(format!(
            "layer_types has {} entries for num_hidden_layers {layers}",
            types.len()
        )));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "full_attention" => Ok(false),
            "sliding_attention" => Ok(true),
            other => Err(ModelError::Unsupported {
                field: "layer_types",
                value: other.to_owned(),
                supported: "full_attention, sliding_attention",
            }),
        })
        .collect()
}

/// The fewest parameters of an encoder: the token table (`vocab × width`) and per layer
/// four `hidden²` attention projections and `ffn` feed-forward matrices of
/// `hidden × intermediate` (saturating, no biases or norms).
pub(crate) fn encoder_min_parameters(
    [vocab, width]: [usize; 2],
    hidden: usize,
    intermediate: usize,
    ffn: u128,
    layers: usize,
) -> u128 {
    let n = |v: usize| v as u128;
    let (h, i) = (n(hidden), n(intermediate));
    let layer = h
        .saturating_mul(h)
        .saturating_mul(4)
        .saturating_add(h.saturating_mul(i).saturating_mul(ffn));
    n(vocab)
        .saturating_mul(n(width))
        .saturating_add(n(layers).saturating_mul(layer))
}

pub(crate) fn positive(field: &'static str, value: f64) -> Result<(), ModelError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(ModelError::Inconsistent(format!(
            "{field} must be a finite number > 0, got {value}"
        )));
    }
    Ok(())
}

/// Every id of a special-token field (a number or a list of numbers, as transformers
/// writes `eos_token_id`) must be a row of the embedding table.
pub(crate) fn token_ids(
    field: &'static str,
    value: Option<&serde_json::Value>,
    vocab_size: usize,
) -> Result<(), ModelError> {
    let ids: Vec<&serde_json::Value> = match value {
        None | Some(serde_json::Value::Null) => return Ok(()),
        Some(serde_json::Value::Array(ids)) => ids.iter().collect(),
        Some(one) => vec![one],
    };
    for id in ids {
        match id.as_u64() {
            Some(id) if id < vocab_size as u64 => {}
            _ => {
                return Err(ModelError::Inconsistent(format!(
                    "{field} {id} is not a token id below vocab_size {vocab_size}"
                )));
            }
        }
    }
    Ok(())
}

pub(crate) fn probability(field: &'static str, p: f64) -> Result<(), ModelError> {
    if !(0.0..1.0).contains(&p) {
        return Err(ModelError::Inconsistent(format!(
            "{field} must be a probability in [0, 1), got {p}"
        )));
    }
    Ok(())
}

impl BertConfig {
    /// The feed-forward activation.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown `hidden_act`.
    pub fn activation(&self) -> Result<Activation, ModelError> {
        Activation::parse("hidden_act", &self.hidden_act)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// The fewest parameters an encoder of this configuration has (embedding tables and
    /// the layers' projections, no biases or norms): what a weights file must at least
    /// hold before the model is allocated.
    pub fn min_parameters(&self) -> u128 {
        let tables = self
            .vocab_size
            .saturating_add(self.max_position_embeddings)
            .saturating_add(self.type_vocab_size);
        encoder_min_parameters(
            [tables, self.hidden_size],
            self.hidden_size,
            self.intermediate_size,
            2,
            self.num_hidden_layers,
        )
    }

    /// Sets every dropout probability of the encoder (embeddings, attention, outputs).
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.hidden_dropout_prob = p;
        self.attention_probs_dropout_prob = p;
        self
    }

    /// Checks sizes and options.
    ///
    /// # Errors
    /// See [`ModelConfig::from_json`].
    pub fn validate(&self) -> Result<(), ModelError> {
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            nonzero(field, v)?;
        }
        // DistilBERT has no token-type table; the others need one.
        if self.flavor != BertFlavor::DistilBert {
            nonzero("type_vocab_size", self.type_vocab_size)?;
        }
        divisible(self.hidden_size, self.num_attention_heads)?;
        self.activation()?;
        positive("layer_norm_eps", self.layer_norm_eps)?;
        positive("initializer_range", self.initializer_range)?;
        if let Some(pad) = self.pad_token_id {
            token_ids("pad_token_id", Some(&pad.into()), self.vocab_size)?;
        }
        probability("hidden_dropout_prob", self.hidden_dropout_prob)?;
        probability(
            "attention_probs_dropout_prob",
            self.attention_probs_dropout_prob,
        )?;
        for (field, p) in [
            ("classifier_dropout", self.classifier_dropout),
            ("seq_classif_dropout", self.seq_classif_dropout),
        ] {
            if let Some(p) = p {
                probability(field, p)?;
            }
        }
        match self.position_embedding_type.as_deref() {
            None | Some("absolute") => {}
            Some(other) => {
                return Err(ModelError::Unsupported {
                    field: "position_embedding_type",
                    value: other.to_owned(),
                    supported: "absolute",
                });
            }
        }
        if self.flavor == BertFlavor::Roberta {
            let pad = self.pad_token_id.unwrap_or(1);
            if pad + 1 >= self.max_position_embeddings {
                return Err(ModelError::Inconsistent(format!(
                    "RoBERTa positions start at pad_token_id + 1 = {}, beyond max_position_embeddings {}",
                    pad + 1,
                    self.max_position_embeddings
                )));
            }
        }
        Ok(())
    }
}

impl LlamaConfig {
    /// The family `model_type` names ([`DecoderFamily::Llama`] for an unknown one, which
    /// [`validate`](Self::validate) refuses).
    pub fn family(&self) -> DecoderFamily {
        DecoderFamily::of(&self.model_type).unwrap_or(DecoderFamily::Llama)
    }

    /// The MLP gate activation (`hidden_activation` for Gemma, `hidden_act` otherwise).
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown activation.
    pub fn activation(&self) -> Result<Activation, ModelError> {
        if self.family().is_gemma() {
            let act = self.hidden_activation.as_deref();
            return Activation::parse("hidden_activation", act.unwrap_or("gelu_pytorch_tanh"));
        }
        Activation::parse("hidden_act", &self.hidden_act)
    }

    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one attention head: `head_dim`, else transformers' default for the family
    /// (128 for Qwen3, 256 for Gemma, `hidden_size / num_attention_heads` otherwise).
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(match self.family() {
            DecoderFamily::Qwen3 => 128,
            DecoderFamily::Gemma2 | DecoderFamily::Gemma3 => 256,
            _ => self.hidden_size / self.num_attention_heads.max(1),
        })
    }

    /// RMSNorm ε: `rms_norm_eps`, else 1e-5 for Phi-3 and 1e-6 otherwise.
    pub fn rms_eps(&self) -> f64 {
        self.rms_norm_eps.unwrap_or(match self.family() {
            DecoderFamily::Phi3 => 1e-5,
            _ => default_rms_eps(),
        })
    }

    /// Whether `lm_head` is the input embedding (`tie_word_embeddings`, else tied for
    /// Gemma only).
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(self.family().is_gemma())
    }

    /// Whether q/k/v projections carry a bias (always for Qwen2, never for Phi-3,
    /// `attention_bias` otherwise).
    pub fn qkv_bias(&self) -> bool {
        match self.family() {
            DecoderFamily::Qwen2 => true,
            DecoderFamily::Phi3 => false,
            _ => self.attention_bias,
        }
    }

    /// Whether the output projection carries a bias (`attention_bias`, never for Qwen2
    /// and Phi-3).
    pub fn o_bias(&self) -> bool {
        match self.family() {
            DecoderFamily::Qwen2 | DecoderFamily::Phi3 => false,
            _ => self.attention_bias,
        }
    }

    /// Whether the MLP projections carry a bias (`mlp_bias`, Llama only).
    pub fn mlp_bias(&self) -> bool {
        self.family() == DecoderFamily::Llama && self.mlp_bias
    }

    /// The attention scores' scale: `query_pre_attn_scalar^-½` for Gemma (default 256),
    /// `head_dim^-½` otherwise.
    pub fn attention_scale(&self) -> f64 {
        match self.family() {
            f if f.is_gemma() => self.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5),
            _ => (self.head_dim() as f64).powf(-0.5),
        }
    }

    /// Gemma 2's cap on attention scores (default 50; Gemma 3 has none, as transformers'
    /// `Gemma3Attention` never applies it).
    pub fn attention_softcap(&self) -> Option<f64> {
        match self.family() {
            DecoderFamily::Gemma2 => self.attn_logit_softcapping.unwrap_or(Some(50.0)),
            _ => None,
        }
    }

    /// Gemma's cap on output logits (default 30 for Gemma 2, none for Gemma 3).
    pub fn logit_softcap(&self) -> Option<f64> {
        match self.family() {
            DecoderFamily::Gemma2 => self.final_logit_softcapping.unwrap_or(Some(30.0)),
            DecoderFamily::Gemma3 => self.final_logit_softcapping.flatten(),
            _ => None,
        }
    }

    /// The attention window of each layer (`None`: full attention), from `layer_types`
    /// when the config has them, else from the family's rule: every layer for Mistral and
    /// Phi-3; layers from `max_window_layers` (default 28) for Qwen with
    /// `use_sliding_window`; every other layer for Gemma 2 (the first sliding); five of
    /// every `sliding_window_pattern` (default 6) for Gemma 3.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown layer type, [`ModelError::Inconsistent`]
    /// when `layer_types` does not have one entry per layer.
    pub fn layer_windows(&self) -> Result<Vec<Option<usize>>, ModelError> {
        let n = self.num_hidden_layers;
        let family = self.family();
        // Qwen declares a window it only uses with `use_sliding_window`.
        let window = match family {
            DecoderFamily::Qwen2 | DecoderFamily::Qwen3
                if self.use_sliding_window != Some(true) =>
            {
                None
            }
            DecoderFamily::Llama => None,
            _ => self.sliding_window,
        };
        let sliding: Vec<bool> = match &self.layer_types {
            Some(types) => sliding_layers(types, n)?,
            None => (0..n)
                .map(|i| match family {
                    DecoderFamily::Llama => false,
                    DecoderFamily::Mistral | DecoderFamily::Phi3 => true,
                    DecoderFamily::Qwen2 | DecoderFamily::Qwen3 => {
                        i >= self.max_window_layers.unwrap_or(28)
                    }
                    DecoderFamily::Gemma2 => (i + 1) % 2 != 0,
                    DecoderFamily::Gemma3 => {
                        (i + 1) % self.sliding_window_pattern.unwrap_or(6).max(1) != 0
                    }
                })
                .collect(),
        };
        Ok(sliding.into_iter().map(|s| window.filter(|_| s)).collect())
    }

    /// The rotary embedding of full-attention layers (`sliding = false`) or of
    /// sliding-window layers: Gemma 3 gives those their own base
    /// (`rope_parameters.sliding_attention`, or `rope_local_base_freq`, default 10 000),
    /// every other family uses one rotary embedding for all layers.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for a rope type other than `default`, `linear` and
    /// `llama3`; [`ModelError::Inconsistent`] for missing or invalid parameters.
    pub fn rope(&self, sliding: bool) -> Result<Rope, ModelError> {
        let gemma3 = self.family() == DecoderFamily::Gemma3;
        let nested = self.rope_parameters.as_ref().is_some_and(|p| {
            p.get("full_attention").is_some() || p.get("sliding_attention").is_some()
        });
        let key = if sliding && gemma3 {
            "sliding_attention"
        } else {
            "full_attention"
        };
        let null = serde_json::Value::Null;
        let parameters = self.rope_parameters.as_ref().filter(|p| !p.is_null());
        // transformers 5 reads a config's `rope_scaling` in place of its `rope_parameters`.
        let scaling = self.rope_scaling.as_ref().filter(|s| !s.is_null());
        let (field, params) = match (parameters, scaling) {
            // transformers 4's Gemma 3 scales its global layers only.
            (_, Some(s)) if !(sliding && gemma3) => ("rope_scaling", s),
            (Some(p), _) if nested => ("rope_parameters", p.get(key).unwrap_or(&null)),
            _ if sliding && gemma3 => ("rope_local_base_freq", &null),
            (Some(p), _) => ("rope_parameters", p),
            _ => ("rope_parameters", &null),
        };
        let theta = self.rope_theta.or_else(|| {
            parameters
                .and_then(|p| p.get("rope_theta"))
                .and_then(serde_json::Value::as_f64)
        });
        let default_theta = match (self.family(), sliding) {
            (DecoderFamily::Gemma3, true) => self.rope_local_base_freq.unwrap_or(10_000.0),
            (DecoderFamily::Gemma3, false) => theta.unwrap_or(1_000_000.0),
            _ => theta.unwrap_or_else(default_theta),
        };
        Rope::from_params(
            field,
            params,
            default_theta,
            self.partial_rotary_factor,
            self.original_max_position_embeddings
                .unwrap_or(self.max_position_embeddings),
        )
    }

    /// Checks sizes and options.
    ///
    /// # Errors
    /// See [`ModelConfig::from_json`].
    pub fn validate(&self) -> Result<(), ModelError> {
        if DecoderFamily::of(&self.model_type).is_none() {
            return Err(ModelError::Unsupported {
                field: "model_type",
                value: self.model_type.clone(),
                supported: DECODER_TYPES,
            });
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("head_dim", self.head_dim()),
        ] {
            nonzero(field, v)?;
        }
        if self.head_dim.is_none() {
            divisible(self.hidden_size, self.num_attention_heads)?;
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(ModelError::Inconsistent(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        for sliding in [false, true] {
            let rope = self.rope(sliding)?;
            let dim = rope.rotary_dim(self.head_dim());
            if dim == 0 || !dim.is_multiple_of(2) {
                return Err(ModelError::Inconsistent(format!(
                    "rotary embeddings need an even, non-zero rotary size, got {dim} (head_dim {} × partial_rotary_factor {})",
                    self.head_dim(),
                    rope.partial
                )));
            }
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(ModelError::Unsupported {
                field: "use_bidirectional_attention",
                value: "true".to_owned(),
                supported: "false (causal decoders)",
            });
        }
        if self.layer_windows()?.contains(&Some(0)) {
            return Err(ModelError::Inconsistent(
                "sliding_window must be at least 1".to_owned(),
            ));
        }
        for (field, cap) in [
            ("attn_logit_softcapping", self.attention_softcap()),
            ("final_logit_softcapping", self.logit_softcap()),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
        ] {
            if let Some(c) = cap {
                positive(field, c)?;
            }
        }
        self.activation()?;
        positive("rms_norm_eps", self.rms_eps())?;
        positive("initializer_range", self.initializer_range)?;
        for (field, ids) in [
            ("bos_token_id", &self.bos_token_id),
            ("eos_token_id", &self.eos_token_id),
            ("pad_token_id", &self.pad_token_id),
        ] {
            token_ids(field, ids.as_ref(), self.vocab_size)?;
        }
        for (field, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
        ] {
            probability(field, p.unwrap_or(0.0))?;
        }
        probability("attention_dropout", self.attention_dropout)
    }

    /// The fewest parameters a model of this configuration has (embedding and the
    /// layers' projections, no biases or norms), saturating: what a weights file must at
    /// least hold before the model is allocated.
    pub fn min_parameters(&self) -> u128 {
        let n = |v: usize| v as u128;
        let (h, i) = (n(self.hidden_size), n(self.intermediate_size));
        let q = n(self.num_attention_heads).saturating_mul(n(self.head_dim()));
        let kv = n(self.kv_heads()).saturating_mul(n(self.head_dim()));
        let layer = [(2, q), (2, kv), (3, i)]
            .into_iter()
            .fold(0u128, |sum, (k, d)| {
                sum.saturating_add(h.saturating_mul(d).saturating_mul(k))
            });
        n(self.vocab_size)
            .saturating_mul(h)
            .saturating_add(n(self.num_hidden_layers).saturating_mul(layer))
    }
}

/// transformers' `problem_type` of a sequence classifier: which loss its logits take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// One class per example, cross-entropy.
    #[default]
    SingleLabelClassification,
    /// Any number of classes per example, BCE with logits on 0/1 targets.
    MultiLabelClassification,
    /// Real-valued targets (one per output, usually `num_labels` = 1), MSE.
    Regression,
}

impl ProblemType {
    /// transformers' spelling (`single_label_classification`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ProblemType::SingleLabelClassification => "single_label_classification",
            ProblemType::MultiLabelClassification => "multi_label_classification",
            ProblemType::Regression => "regression",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A tiny config of `model_type` with `extra` fields merged in.
    fn parse(model_type: &str, extra: Value) -> Result<ModelConfig, ModelError> {
        let mut config = match model_type {
            "distilbert" => json!({"vocab_size": 10, "dim": 8, "n_layers": 1, "n_heads": 2,
                                   "hidden_dim": 16, "max_position_embeddings": 16}),
            _ => json!({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "intermediate_size": 16,
                        "max_position_embeddings": 16}),
        };
        config["model_type"] = json!(model_type);
        for (k, v) in extra.as_object().into_iter().flatten() {
            config[k] = v.clone();
        }
        ModelConfig::from_json(&config.to_string())
    }

    fn refused(model_type: &str, extra: Value, names: &[&str]) {
        let message = match parse(model_type, extra.clone()) {
            Ok(config) => panic!("{model_type} {extra}: accepted as {config:?}"),
            Err(e) => e.to_string(),
        };
        for name in names {
            assert!(message.contains(name), "{model_type} {extra}: {message}");
        }
        assert!(!message.contains('\n'), "one line: {message}");
    }

    #[test]
    fn every_family_parses_with_transformers_defaults() {
        for t in [
            "bert",
            "roberta",
            "xlm-roberta",
            "distilbert",
            "deberta-v2",
            "modernbert",
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "phi3",
            "gemma2",
            "gemma3_text",
        ] {
            let config = parse(t, json!({"head_dim": 4}));
            assert!(config.is_ok(), "{t}: {config:?}");
        }
        let Ok(ModelConfig::Llama(gemma)) = parse("gemma2", json!({})) else {
            panic!("gemma2")
        };
        assert_eq!(
            (
                gemma.head_dim(),
                gemma.tied(),
                gemma.attention_softcap(),
                gemma.logit_softcap()
            ),
            (256, true, Some(50.0), Some(30.0))
        );
        let windows = gemma.layer_windows().map(|w| w.len());
        assert_eq!(windows, Ok(2));
        let Ok(ModelConfig::Llama(qwen)) = parse("qwen3", json!({"sliding_window": 4})) else {
            panic!("qwen3")
        };
        // Qwen declares a window it uses only with `use_sliding_window`.
        assert_eq!(qwen.layer_windows(), Ok(vec![None, None]));
        assert_eq!(qwen.head_dim(), 128);
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        refused("gpt2", json!({}), &["model_type", "gpt2", "gemma3_text"]);
        refused("gemma3", json!({}), &["gemma3_text"]);
        refused("deberta", json!({}), &["model_type", "deberta-v2"]);
        refused(
            "deberta-v2",
            json!({"conv_kernel_size": 3}),
            &["conv_kernel_size"],
        );
        refused(
            "deberta-v2",
            json!({"attention_head_size": 3}),
            &["attention_head_size"],
        );
        refused(
            "deberta-v2",
            json!({"pos_att_type": ["p2p"]}),
            &["pos_att_type", "p2p"],
        );
        refused(
            "modernbert",
            json!({"classifier_pooling": "max"}),
            &["classifier_pooling"],
        );
        // `rope_scaling` replaces `rope_parameters`, as transformers 5 reads them.
        refused(
            "llama",
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
                   "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
            &["rope_scaling", "yarn"],
        );
        refused(
            "phi3",
            json!({"rope_scaling": {"type": "longrope"}}),
            &["longrope"],
        );
        refused(
            "gemma3_text",
            json!({"use_bidirectional_attention": true}),
            &["use_bidirectional_attention"],
        );
        refused(
            "qwen3",
            json!({"layer_types": ["full_attention"]}),
            &["layer_types", "2"],
        );
        refused(
            "gemma2",
            json!({"layer_types": ["full_attention", "chunked"]}),
            &["chunked"],
        );
        refused(
            "llama",
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
            &["low_freq_factor"],
        );
        refused(
            "phi3",
            json!({"partial_rotary_factor": 0.1, "head_dim": 8}),
            &["rotary"],
        );
    }
}
