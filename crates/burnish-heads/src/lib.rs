#![doc = include_str!("../README.md")]

mod bert;
mod generate;
mod loss;
mod qa;
mod roberta;

pub use bert::{
    BertForSequenceClassification, BertForTokenClassification, LabelNames, SequenceLabels,
};
pub use burnish_models::ProblemType;
pub use generate::{GenerationConfig, generate};
pub use loss::{
    IGNORE_INDEX, LossParts, bce_with_logits, causal_lm_loss, count_causal_targets, cross_entropy,
    mse,
};
pub use qa::{BertForQuestionAnswering, RobertaForQuestionAnswering, span_loss};
pub use roberta::{
    RobertaClassificationHead, RobertaForSequenceClassification, RobertaForTokenClassification,
};
