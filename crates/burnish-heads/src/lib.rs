//! Task heads for full-parameter fine-tuning on burn, with transformers' losses and names.
//!
//! - [`BertForSequenceClassification`]: pooler → dropout → `Linear(hidden, num_labels)`,
//!   with the three [`ProblemType`]s (cross-entropy, BCE with logits, MSE).
//! - [`BertForTokenClassification`]: dropout → per-token `Linear`, labels −100 ignored.
//! - [`RobertaForSequenceClassification`] (first token → dense → tanh → `out_proj`, no
//!   pooler) and [`RobertaForTokenClassification`], with the backbone under `roberta.`.
//! - [`causal_lm_loss`] for `burnish_models::LlamaForCausalLm`: shifted labels, −100
//!   ignored; [`generate`] continues a prompt with the KV cache (greedy, or sampled with
//!   temperature, top-k and top-p from a seed).
//!
//! Losses come as [`LossParts`] (sum and item count) so that a trainer normalizes over a
//! whole accumulation cycle. Module paths are the HF names of the `...For...` classes
//! (`bert.*`, `classifier.*`), so `burnish-loader` loads and exports them as they are.

mod bert;
mod generate;
mod loss;
mod roberta;

pub use bert::{
    BertForSequenceClassification, BertForTokenClassification, LabelNames, ProblemType,
    SequenceLabels,
};
pub use generate::{GenerationConfig, generate};
pub use loss::{
    IGNORE_INDEX, LossParts, bce_with_logits, causal_lm_loss, count_causal_targets, cross_entropy,
    mse,
};
pub use roberta::{
    RobertaClassificationHead, RobertaForSequenceClassification, RobertaForTokenClassification,
};
