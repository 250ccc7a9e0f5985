#![doc = include_str!("../README.md")]

mod bert;
mod deberta;
mod generate;
mod loss;
mod modernbert;
mod qa;
mod roberta;

pub use bert::{
    BertForSequenceClassification, BertForTokenClassification, LabelNames, SequenceLabels,
};
pub use burnish_models::ProblemType;
pub use deberta::{
    ContextPooler, DebertaV2ForQuestionAnswering, DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification,
};
pub use generate::{GenerationConfig, generate};
pub use loss::{
    IGNORE_INDEX, LossParts, bce_with_logits, causal_lm_loss, count_causal_targets, cross_entropy,
    mse,
};
pub use modernbert::{
    ModernBertForQuestionAnswering, ModernBertForSequenceClassification,
    ModernBertForTokenClassification, ModernBertPredictionHead,
};
pub use qa::{BertForQuestionAnswering, RobertaForQuestionAnswering, span_loss};
pub use roberta::{
    RobertaClassificationHead, RobertaForSequenceClassification, RobertaForTokenClassification,
};
