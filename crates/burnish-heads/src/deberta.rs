//! Task heads on a DeBERTa-v2/v3 encoder, as transformers'
//! `DebertaV2ForSequenceClassification` (its `ContextPooler`: dropout, dense, activation on
//! the first token), `DebertaV2ForTokenClassification` and
//! `DebertaV2ForQuestionAnswering`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor};
use burnish_models::ops::{activate, linear_in};
use burnish_models::random::Dropout;
use burnish_models::{
    Activation, Autocast, DebertaV2Config, DebertaV2Model, ModelError, ProblemType,
};
use serde_json::Value;

use crate::bert::{
    LabelNames, SequenceLabels, autocast_through, check_labels, head_config, labels_at_least_one,
    logits, new_linear, sequence_config, sequence_loss, token_loss,
};
use crate::loss::LossParts;
use crate::qa::span_loss;

/// The first token's state, dropped out, projected and activated (HF `pooler`).
#[derive(Module, Debug)]
pub struct ContextPooler<B: Backend> {
    /// `Linear(hidden, hidden)`.
    pub dense: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
}

/// A DeBERTa-v2/v3 encoder with a sequence classification head.
#[derive(Module, Debug)]
pub struct DebertaV2ForSequenceClassification<B: Backend> {
    /// The encoder (HF `deberta.`).
    pub deberta: DebertaV2Model<B>,
    /// The pooler (HF `pooler`).
    pub pooler: ContextPooler<B>,
    dropout: Dropout,
    /// `Linear(hidden, num_labels)` (HF `classifier`).
    pub classifier: Linear<B>,
    #[module(skip)]
    problem: ProblemType,
}

/// A DeBERTa-v2/v3 encoder with a per-token classification head.
#[derive(Module, Debug)]
pub struct DebertaV2ForTokenClassification<B: Backend> {
    /// The encoder (HF `deberta.`).
    pub deberta: DebertaV2Model<B>,
    dropout: Dropout,
    /// `Linear(hidden, num_labels)` (HF `classifier`).
    pub classifier: Linear<B>,
}

/// A DeBERTa-v2/v3 encoder with an extractive QA head.
#[derive(Module, Debug)]
pub struct DebertaV2ForQuestionAnswering<B: Backend> {
    /// The encoder (HF `deberta.`).
    pub deberta: DebertaV2Model<B>,
    /// `Linear(hidden, 2)`: start and end logits per token (HF `qa_outputs`).
    pub qa_outputs: Linear<B>,
}

autocast_through!(DebertaV2ForSequenceClassification.deberta);
autocast_through!(DebertaV2ForTokenClassification.deberta);
autocast_through!(DebertaV2ForQuestionAnswering.deberta);

fn dropout(p: f64) -> Dropout {
    Dropout::new(p)
}

impl<B: Backend> DebertaV2ForSequenceClassification<B> {
    /// A new head with `num_labels` outputs on `deberta` (pooler and classifier new,
    /// N(0, initializer_range)); the classifier's dropout is `cls_dropout`, else
    /// `hidden_dropout_prob`.
    ///
    /// # Errors
    /// [`ModelError`] for 0 labels or an unknown pooler activation.
    pub fn new(
        deberta: DebertaV2Model<B>,
        config: &DebertaV2Config,
        num_labels: usize,
        problem: ProblemType,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        check_labels(num_labels, problem)?;
        let (h, std) = (config.hidden_size, config.initializer_range);
        Ok(Self {
            deberta,
            pooler: ContextPooler {
                dense: new_linear(std, h, h, true, device),
                dropout: dropout(config.pooler_dropout),
                activation: config.pooler_activation()?,
            },
            dropout: dropout(config.cls_dropout.unwrap_or(config.hidden_dropout_prob)),
            classifier: new_linear(std, h, num_labels, true, device),
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
        let cx = self.deberta.compute_dtype();
        let hidden = self
            .deberta
            .forward(input_ids, attention_mask, token_type_ids);
        let [b, _, h] = hidden.dims();
        let first = self
            .pooler
            .dropout
            .forward(hidden.slice([0..b, 0..1]).reshape([b, h]));
        let pooled = activate(
            self.pooler.activation,
            linear_in(&self.pooler.dense, first, cx),
        )
        .cast(FloatDType::F32);
        logits(&self.classifier, self.dropout.forward(pooled), cx)
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

    /// `config.json` of the exported model (`DebertaV2ForSequenceClassification`).
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        sequence_config(base, labels, self.problem)
    }
}

impl<B: Backend> DebertaV2ForTokenClassification<B> {
    /// A new per-token head with `num_labels` outputs (dropout `hidden_dropout_prob`).
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] when `num_labels` is 0.
    pub fn new(
        deberta: DebertaV2Model<B>,
        config: &DebertaV2Config,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        labels_at_least_one(num_labels)?;
        Ok(Self {
            deberta,
            dropout: dropout(config.hidden_dropout_prob),
            classifier: new_linear(
                config.initializer_range,
                config.hidden_size,
                num_labels,
                true,
                device,
            ),
        })
    }

    /// Logits `[batch, seq, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let hidden = self
            .deberta
            .forward(input_ids, attention_mask, token_type_ids);
        logits(
            &self.classifier,
            self.dropout.forward(hidden),
            self.deberta.compute_dtype(),
        )
    }

    /// Cross-entropy over tokens, labels `[batch, seq]` row-major with −100 ignored.
    ///
    /// # Errors
    /// [`ModelError::Input`] when there are not `batch × seq` labels.
    pub fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> Result<LossParts<B>, ModelError> {
        token_loss(logits, labels)
    }

    /// `config.json` of the exported model (`DebertaV2ForTokenClassification`).
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        head_config(base, labels, "TokenClassification")
    }
}

impl<B: Backend> DebertaV2ForQuestionAnswering<B> {
    /// A new span head (no dropout, as transformers').
    pub fn new(deberta: DebertaV2Model<B>, config: &DebertaV2Config, device: &B::Device) -> Self {
        Self {
            deberta,
            qa_outputs: new_linear(
                config.initializer_range,
                config.hidden_size,
                2,
                true,
                device,
            ),
        }
    }

    /// Span logits `[batch, seq, 2]`: start logits at `[.., 0]`, end at `[.., 1]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let hidden = self
            .deberta
            .forward(input_ids, attention_mask, token_type_ids);
        logits(&self.qa_outputs, hidden, self.deberta.compute_dtype())
    }

    /// [`span_loss`] of `logits` against start/end `positions`.
    ///
    /// # Errors
    /// [`ModelError::Input`] when there are not two positions per example.
    pub fn loss(
        &self,
        logits: Tensor<B, 3>,
        positions: &[i64],
    ) -> Result<LossParts<B>, ModelError> {
        span_loss(logits, positions)
    }

    /// `config.json` of the exported model (`DebertaV2ForQuestionAnswering`).
    pub fn export_config(&self, base: &Value, _labels: &LabelNames) -> Value {
        head_config(base, &LabelNames::generic(2), "QuestionAnswering")
    }
}
