//! Classification heads on a RoBERTa encoder, as transformers'
//! `RobertaForSequenceClassification` and `RobertaForTokenClassification`: the backbone
//! lives under `roberta.` and has no pooler; the sequence head reads the first token
//! through its own dense + tanh layer.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burnish_models::ops::linear_in;
use burnish_models::random::Dropout;
use burnish_models::{Autocast, BertConfig, BertModel, ModelError, ProblemType};
use serde_json::Value;

use crate::bert::{
    LabelNames, SequenceLabels, autocast_through, check_labels, dropout_of, head_config, logits,
    new_head, sequence_config, sequence_loss, token_loss,
};
use crate::loss::LossParts;

/// `dropout → dense → tanh → dropout → out_proj` on the first token (HF
/// `RobertaClassificationHead`).
#[derive(Module, Debug)]
pub struct RobertaClassificationHead<B: Backend> {
    /// `Linear(hidden, hidden)`.
    pub dense: Linear<B>,
    dropout: Dropout,
    /// `Linear(hidden, num_labels)`.
    pub out_proj: Linear<B>,
}

autocast_through!(RobertaForSequenceClassification.roberta);
autocast_through!(RobertaForTokenClassification.roberta);

/// A RoBERTa encoder with a sequence classification head.
#[derive(Module, Debug)]
pub struct RobertaForSequenceClassification<B: Backend> {
    /// The encoder (HF `roberta.`), without pooler.
    pub roberta: BertModel<B>,
    /// The head (HF `classifier.dense`, `classifier.out_proj`).
    pub classifier: RobertaClassificationHead<B>,
    #[module(skip)]
    problem: ProblemType,
}

impl<B: Backend> RobertaForSequenceClassification<B> {
    /// A head with `num_labels` outputs on `roberta` (built without pooler).
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] when `num_labels` is 0.
    pub fn new(
        roberta: BertModel<B>,
        config: &BertConfig,
        num_labels: usize,
        problem: ProblemType,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        check_labels(num_labels, problem)?;
        let h = config.hidden_size;
        Ok(Self {
            roberta,
            classifier: RobertaClassificationHead {
                dense: new_head(config, h, h, device),
                dropout: dropout_of(config),
                out_proj: new_head(config, h, num_labels, device),
            },
            problem,
        })
    }

    /// The problem type.
    pub fn problem(&self) -> ProblemType {
        self.problem
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 2> {
        let hidden = self
            .roberta
            .forward(input_ids, attention_mask, token_type_ids)
            .last_hidden_state;
        let [b, _, h] = hidden.dims();
        let first = hidden.slice([0..b, 0..1]).reshape([b, h]);
        let head = &self.classifier;
        let cx = self.roberta.compute_dtype();
        let x = linear_in(&head.dense, head.dropout.forward(first), cx).tanh();
        logits(&head.out_proj, head.dropout.forward(x), cx)
    }

    /// The loss of `logits` against `labels`, per the problem type.
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] when the labels' kind or length do not fit.
    pub fn loss(
        &self,
        logits: Tensor<B, 2>,
        labels: &SequenceLabels,
    ) -> Result<LossParts<B>, ModelError> {
        sequence_loss(self.problem, logits, labels)
    }

    /// `config.json` fields transformers needs to load this head.
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        sequence_config(base, labels, self.problem)
    }
}

/// A RoBERTa encoder with a per-token classification head.
#[derive(Module, Debug)]
pub struct RobertaForTokenClassification<B: Backend> {
    /// The encoder (HF `roberta.`), without pooler.
    pub roberta: BertModel<B>,
    dropout: Dropout,
    /// `Linear(hidden, num_labels)` (HF `classifier`).
    pub classifier: Linear<B>,
}

impl<B: Backend> RobertaForTokenClassification<B> {
    /// A per-token head with `num_labels` outputs.
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] when `num_labels` is 0.
    pub fn new(
        roberta: BertModel<B>,
        config: &BertConfig,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        check_labels(num_labels, ProblemType::SingleLabelClassification)?;
        Ok(Self {
            roberta,
            dropout: dropout_of(config),
            classifier: new_head(config, config.hidden_size, num_labels, device),
        })
    }

    /// Logits `[batch, seq, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let out = self
            .roberta
            .forward(input_ids, attention_mask, token_type_ids);
        logits(
            &self.classifier,
            self.dropout.forward(out.last_hidden_state),
            self.roberta.compute_dtype(),
        )
    }

    /// Cross-entropy over tokens, labels `[batch, seq]` row-major with −100 ignored.
    ///
    /// # Errors
    /// [`ModelError::Input`] when there are not `batch × seq` labels.
    pub fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> Result<LossParts<B>, ModelError> {
        token_loss(logits, labels)
    }

    /// `config.json` fields transformers needs to load this head.
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        head_config(base, labels, "TokenClassification")
    }
}
