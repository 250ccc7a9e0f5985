//! Task heads on a ModernBERT encoder, as transformers'
//! `ModernBertForSequenceClassification` (CLS or masked-mean pooling),
//! `ModernBertForTokenClassification` and `ModernBertForQuestionAnswering`: each puts the
//! `head` (dense, activation, LayerNorm) and dropout before its `classifier`.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor};
use burnish_models::ops::{activate, layer_norm_f32, linear_in};
use burnish_models::random::Dropout;
use burnish_models::{
    Activation, Autocast, ModelError, ModernBertConfig, ModernBertModel, ProblemType,
};
use serde_json::Value;

use crate::bert::{
    LabelNames, SequenceLabels, autocast_through, check_labels, head_config, labels_at_least_one,
    logits, new_linear, sequence_config, sequence_loss, token_loss,
};
use crate::loss::LossParts;
use crate::qa::span_loss;

/// `norm(act(dense(x)))` (HF `head`).
#[derive(Module, Debug)]
pub struct ModernBertPredictionHead<B: Backend> {
    /// `Linear(hidden, hidden)`, biased when `classifier_bias`.
    pub dense: Linear<B>,
    /// LayerNorm as the encoder's.
    pub norm: LayerNorm<B>,
    #[module(skip)]
    activation: Activation,
}

impl<B: Backend> ModernBertPredictionHead<B> {
    fn new(config: &ModernBertConfig, device: &B::Device) -> Result<Self, ModelError> {
        let (h, std) = (config.hidden_size, config.initializer_range);
        Ok(Self {
            dense: new_linear(std, h, h, config.classifier_bias, device),
            norm: config.norm(device),
            activation: config.head_activation()?,
        })
    }

    fn forward<const D: usize>(&self, x: Tensor<B, D>, cx: FloatDType) -> Tensor<B, D> {
        layer_norm_f32(
            &self.norm,
            activate(self.activation, linear_in(&self.dense, x, cx)),
        )
    }
}

/// A ModernBERT encoder with a sequence classification head.
#[derive(Module, Debug)]
pub struct ModernBertForSequenceClassification<B: Backend> {
    /// The encoder (HF `model.`).
    pub model: ModernBertModel<B>,
    /// HF `head`.
    pub head: ModernBertPredictionHead<B>,
    drop: Dropout,
    /// `Linear(hidden, num_labels)` (HF `classifier`).
    pub classifier: Linear<B>,
    #[module(skip)]
    problem: ProblemType,
    mean_pooling: bool,
}

/// A ModernBERT encoder with a per-token classification head.
#[derive(Module, Debug)]
pub struct ModernBertForTokenClassification<B: Backend> {
    /// The encoder (HF `model.`).
    pub model: ModernBertModel<B>,
    /// HF `head`.
    pub head: ModernBertPredictionHead<B>,
    drop: Dropout,
    /// `Linear(hidden, num_labels)` (HF `classifier`).
    pub classifier: Linear<B>,
}

/// A ModernBERT encoder with an extractive QA head (its span layer is named `classifier`).
#[derive(Module, Debug)]
pub struct ModernBertForQuestionAnswering<B: Backend> {
    /// The encoder (HF `model.`).
    pub model: ModernBertModel<B>,
    /// HF `head`.
    pub head: ModernBertPredictionHead<B>,
    drop: Dropout,
    /// `Linear(hidden, 2)`: start and end logits per token (HF `classifier`).
    pub classifier: Linear<B>,
}

autocast_through!(ModernBertForSequenceClassification.model);
autocast_through!(ModernBertForTokenClassification.model);
autocast_through!(ModernBertForQuestionAnswering.model);

/// Head, dropout and classifier of `n` outputs, new.
type Parts<B> = (ModernBertPredictionHead<B>, Dropout, Linear<B>);

fn parts<B: Backend>(
    config: &ModernBertConfig,
    n: usize,
    device: &B::Device,
) -> Result<Parts<B>, ModelError> {
    Ok((
        ModernBertPredictionHead::new(config, device)?,
        Dropout::new(config.classifier_dropout),
        new_linear(
            config.initializer_range,
            config.hidden_size,
            n,
            true,
            device,
        ),
    ))
}

/// Per-token logits through the encoder, head, dropout and classifier.
fn per_token<B: Backend>(
    (model, head, drop, classifier): (
        &ModernBertModel<B>,
        &ModernBertPredictionHead<B>,
        &Dropout,
        &Linear<B>,
    ),
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Option<Tensor<B, 2, Int>>,
) -> Tensor<B, 3> {
    let cx = model.compute_dtype();
    let hidden = head.forward(model.forward(input_ids, attention_mask), cx);
    logits(classifier, drop.forward(hidden), cx)
}

impl<B: Backend> ModernBertForSequenceClassification<B> {
    /// A new head with `num_labels` outputs; pooling per `classifier_pooling`.
    ///
    /// # Errors
    /// [`ModelError`] for 0 labels or an unknown `classifier_activation`.
    pub fn new(
        model: ModernBertModel<B>,
        config: &ModernBertConfig,
        num_labels: usize,
        problem: ProblemType,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        check_labels(num_labels, problem)?;
        let (head, drop, classifier) = parts(config, num_labels, device)?;
        Ok(Self {
            model,
            head,
            drop,
            classifier,
            problem,
            mean_pooling: config.mean_pooling(),
        })
    }

    /// The problem type.
    pub fn problem(&self) -> ProblemType {
        self.problem
    }

    /// Logits `[batch, num_labels]` (token types are ignored: ModernBERT has none).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        _token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 2> {
        let cx = self.model.compute_dtype();
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let hidden = self.model.forward(input_ids, attention_mask.clone());
        let [_, _, h] = hidden.dims();
        let pooled = if self.mean_pooling {
            let mask = attention_mask
                .unwrap_or_else(|| Tensor::ones([b, s], &device))
                .float();
            let summed = hidden
                .mul(mask.clone().reshape([b, s, 1]))
                .sum_dim(1)
                .reshape([b, h]);
            summed.div(mask.sum_dim(1))
        } else {
            hidden.slice([0..b, 0..1]).reshape([b, h])
        };
        let pooled = self.head.forward(pooled, cx);
        logits(&self.classifier, self.drop.forward(pooled), cx)
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

    /// `config.json` of the exported model (`ModernBertForSequenceClassification`).
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        sequence_config(base, labels, self.problem)
    }
}

impl<B: Backend> ModernBertForTokenClassification<B> {
    /// A new per-token head with `num_labels` outputs.
    ///
    /// # Errors
    /// [`ModelError`] for 0 labels or an unknown `classifier_activation`.
    pub fn new(
        model: ModernBertModel<B>,
        config: &ModernBertConfig,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        labels_at_least_one(num_labels)?;
        let (head, drop, classifier) = parts(config, num_labels, device)?;
        Ok(Self {
            model,
            head,
            drop,
            classifier,
        })
    }

    /// Logits `[batch, seq, num_labels]` (token types are ignored).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        _token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        per_token(
            (&self.model, &self.head, &self.drop, &self.classifier),
            input_ids,
            attention_mask,
        )
    }

    /// Cross-entropy over tokens, labels `[batch, seq]` row-major with −100 ignored.
    ///
    /// # Errors
    /// [`ModelError::Input`] when there are not `batch × seq` labels.
    pub fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> Result<LossParts<B>, ModelError> {
        token_loss(logits, labels)
    }

    /// `config.json` of the exported model (`ModernBertForTokenClassification`).
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        head_config(base, labels, "TokenClassification")
    }
}

impl<B: Backend> ModernBertForQuestionAnswering<B> {
    /// A new span head.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for an unknown `classifier_activation`.
    pub fn new(
        model: ModernBertModel<B>,
        config: &ModernBertConfig,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let (head, drop, classifier) = parts(config, 2, device)?;
        Ok(Self {
            model,
            head,
            drop,
            classifier,
        })
    }

    /// Span logits `[batch, seq, 2]`: start logits at `[.., 0]`, end at `[.., 1]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        _token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        per_token(
            (&self.model, &self.head, &self.drop, &self.classifier),
            input_ids,
            attention_mask,
        )
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

    /// `config.json` of the exported model (`ModernBertForQuestionAnswering`).
    pub fn export_config(&self, base: &Value, _labels: &LabelNames) -> Value {
        head_config(base, &LabelNames::generic(2), "QuestionAnswering")
    }
}
