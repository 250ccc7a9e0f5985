//! Model configurations, read from a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

use crate::ModelError;

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
}

impl Activation {
    fn parse(field: &'static str, value: &str) -> Result<Self, ModelError> {
        serde_json::from_value(serde_json::Value::String(value.to_owned())).map_err(|_| {
            ModelError::Unsupported {
                field,
                value: value.to_owned(),
                supported: "gelu, gelu_new, gelu_pytorch_tanh, relu, silu",
            }
        })
    }
}

fn default_eps() -> f64 {
    1e-12
}
fn default_range() -> f64 {
    0.02
}
fn default_type_vocab() -> usize {
    2
}
fn default_hidden_act() -> String {
    "gelu".to_owned()
}
fn default_silu() -> String {
    "silu".to_owned()
}
fn default_dropout() -> f64 {
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
    /// RoBERTa: positions count non-pad tokens from `pad_token_id + 1`.
    Roberta,
}

/// A BERT-family encoder configuration (`model_type` `bert` or `roberta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `bert` or `roberta`.
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
}

/// A Llama-family decoder configuration (`llama`, `mistral`, `qwen2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
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
    /// Per-head size; `None` means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// MLP activation (SwiGLU's gate).
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    /// Longest sequence the rotary tables cover.
    pub max_position_embeddings: usize,
    /// RMSNorm ε.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base θ as transformers 4 writes it; see [`LlamaConfig::rope_theta`].
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Rotary parameters as transformers 5 writes them (`{"rope_theta": …,
    /// "rope_type": "default"}`); only the default rope type is supported.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Rotary scaling (transformers 4); only `null` or the default type is supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Mistral's sliding attention window, in tokens; `None` attends to everything.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2's switch for its sliding window (unsupported when true).
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Whether `lm_head` shares the input embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections (Llama); qwen2 always has q/k/v biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
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

/// An architecture configuration, chosen by `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// BERT or RoBERTa encoder.
    Bert(BertConfig),
    /// Llama-family decoder.
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// The fewest parameters a model of this configuration has; see
    /// [`BertConfig::min_parameters`].
    pub fn min_parameters(&self) -> u128 {
        match self {
            ModelConfig::Bert(c) => c.min_parameters(),
            ModelConfig::Llama(c) => c.min_parameters(),
        }
    }

    /// The number of rows of the token embedding table.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
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
            ModelConfig::Llama(_) => None,
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
            "bert" | "roberta" => {
                ModelConfig::Bert(serde_json::from_value(value).map_err(parse_err)?)
            }
            "llama" | "mistral" | "qwen2" => {
                ModelConfig::Llama(serde_json::from_value(value).map_err(parse_err)?)
            }
            other => {
                return Err(ModelError::Unsupported {
                    field: "model_type",
                    value: other.to_owned(),
                    supported: "bert, roberta, llama, mistral, qwen2",
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
            ModelConfig::Llama(c) => c.validate(),
        }
    }
}

fn nonzero(field: &'static str, value: usize) -> Result<(), ModelError> {
    if value == 0 {
        return Err(ModelError::Inconsistent(format!(
            "{field} must be at least 1"
        )));
    }
    Ok(())
}

fn positive(field: &'static str, value: f64) -> Result<(), ModelError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(ModelError::Inconsistent(format!(
            "{field} must be a finite number > 0, got {value}"
        )));
    }
    Ok(())
}

/// Every id of a special-token field (a number or a list of numbers, as transformers
/// writes `eos_token_id`) must be a row of the embedding table.
fn token_ids(
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

fn probability(field: &'static str, p: f64) -> Result<(), ModelError> {
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
        let n = |v: usize| v as u128;
        let (h, i) = (n(self.hidden_size), n(self.intermediate_size));
        let tables = n(self.vocab_size)
            .saturating_add(n(self.max_position_embeddings))
            .saturating_add(n(self.type_vocab_size));
        let layer = h
            .saturating_mul(h)
            .saturating_mul(4)
            .saturating_add(h.saturating_mul(i).saturating_mul(2));
        tables
            .saturating_mul(h)
            .saturating_add(n(self.num_hidden_layers).saturating_mul(layer))
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
            ("type_vocab_size", self.type_vocab_size),
        ] {
            nonzero(field, v)?;
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::Inconsistent(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
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
        if let Some(p) = self.classifier_dropout {
            probability("classifier_dropout", p)?;
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
    /// The MLP gate activation.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown `hidden_act`.
    pub fn activation(&self) -> Result<Activation, ModelError> {
        Activation::parse("hidden_act", &self.hidden_act)
    }

    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary base θ: `rope_parameters.rope_theta` (transformers 5), else the top-level
    /// `rope_theta` (transformers 4), else 10 000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or_else(default_theta)
    }

    /// The attention window: Mistral's `sliding_window` when set; Qwen2 declares its window
    /// but only uses it with `use_sliding_window`, which is rejected by `validate`.
    pub fn attention_window(&self) -> Option<usize> {
        match self.model_type.as_str() {
            "mistral" => self.sliding_window,
            _ => None,
        }
    }

    /// Whether q/k/v projections carry a bias (qwen2 always, Llama when `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
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
            ("num_key_value_heads", self.kv_heads()),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            nonzero(field, v)?;
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::Inconsistent(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(ModelError::Inconsistent(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::Inconsistent(format!(
                "rotary embeddings need an even head_dim, got {}",
                self.head_dim()
            )));
        }
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 0.0) {
            return Err(ModelError::Inconsistent(format!(
                "rope_theta must be > 0, got {theta}"
            )));
        }
        for (field, value) in [
            ("rope_scaling", &self.rope_scaling),
            ("rope_parameters", &self.rope_parameters),
        ] {
            let Some(value) = value else { continue };
            let kind = value.get("rope_type").or_else(|| value.get("type"));
            let default = value.is_null() || kind.is_none_or(|k| k == "default");
            if !default {
                return Err(ModelError::Unsupported {
                    field,
                    value: value.to_string(),
                    supported: "the default rope type (no scaling)",
                });
            }
        }
        if self.model_type == "qwen2" && self.use_sliding_window == Some(true) {
            return Err(ModelError::Unsupported {
                field: "use_sliding_window",
                value: "true".to_owned(),
                supported: "false",
            });
        }
        if self.attention_window() == Some(0) {
            return Err(ModelError::Inconsistent(
                "sliding_window must be at least 1".to_owned(),
            ));
        }
        self.activation()?;
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("initializer_range", self.initializer_range)?;
        for (field, ids) in [
            ("bos_token_id", &self.bos_token_id),
            ("eos_token_id", &self.eos_token_id),
            ("pad_token_id", &self.pad_token_id),
        ] {
            token_ids(field, ids.as_ref(), self.vocab_size)?;
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
