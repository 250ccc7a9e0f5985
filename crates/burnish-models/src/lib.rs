#![doc = include_str!("../README.md")]

use burn::tensor::FloatDType;

mod bert;
mod config;
mod deberta;
pub mod fused;
#[cfg(feature = "flex")]
mod gemv;
mod input;
mod layers;
mod llama;
mod modernbert;
pub mod ops;
pub mod random;
mod rope;

pub use bert::{
    BertAttention, BertEmbeddings, BertEncoder, BertIntermediate, BertLayer, BertModel, BertOutput,
    BertPooler, BertResidual, BertSelfAttention,
};
pub use config::{
    Activation, BertConfig, BertFlavor, DECODER_TYPES, DecoderFamily, LlamaConfig, ModelConfig,
    ProblemType,
};
pub use deberta::{
    DebertaAttention, DebertaEmbeddings, DebertaEncoder, DebertaIntermediate, DebertaLayer,
    DebertaResidual, DebertaV2Config, DebertaV2Model, DisentangledSelfAttention,
};
pub use input::InputLimits;
pub use layers::{RmsNorm, embedding, layer_norm, linear};
pub use llama::{
    KvCache, LlamaAttention, LlamaForCausalLm, LlamaLayer, LlamaMlp, LlamaModel,
    positions_from_mask,
};
pub use modernbert::{
    ModernBertAttention, ModernBertConfig, ModernBertEmbeddings, ModernBertLayer, ModernBertMlp,
    ModernBertModel,
};
pub use rope::{Rope, RopeScaling};

/// Mixed-precision compute, as `torch.autocast`: parameters stay float32 (the master
/// weights); each matmul casts its operands to the compute dtype (a differentiable cast, so
/// gradients arrive in float32), while norms, softmax and the loss's input run in float32.
///
/// ```
/// use burn::tensor::FloatDType;
/// use burnish_models::{Autocast, BertConfig};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config: BertConfig = serde_json::from_str(
///     r#"{"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
///         "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}"#,
/// )?;
/// let model = config
///     .init::<burn_ndarray::NdArray>(true, &Default::default())?
///     .with_compute_dtype(FloatDType::BF16);
/// assert_eq!(model.compute_dtype(), FloatDType::BF16);
/// # Ok(()) }
/// ```
pub trait Autocast: Sized {
    /// The same model computing its matmuls in `dtype` (`F32`, the default, is plain
    /// float32).
    #[must_use]
    fn with_compute_dtype(self, dtype: FloatDType) -> Self;

    /// The dtype matmuls compute in.
    fn compute_dtype(&self) -> FloatDType;
}

/// Errors of burnish-models: configurations that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// `config.json` is not valid JSON or lacks a required field.
    #[error("invalid config.json: {0}")]
    Config(String),
    /// A field names something burnish does not implement.
    #[error("unsupported {field} {value:?} (supported: {supported})")]
    Unsupported {
        /// The config field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is supported.
        supported: &'static str,
    },
    /// Sizes or options that do not fit together.
    #[error("inconsistent config: {0}")]
    Inconsistent(String),
    /// A batch the model cannot look up (an id or a length beyond its tables).
    #[error("bad input: {0}")]
    Input(String),
}
