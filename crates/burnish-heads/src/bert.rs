//! Classification heads on a BERT-family encoder, as transformers'
//! `BertForSequenceClassification` and `BertForTokenClassification`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use burnish_models::ops::linear_in;
use burnish_models::random::Dropout;
use burnish_models::{Autocast, BertConfig, BertModel, ModelError, ProblemType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::loss::{LossParts, bce_with_logits, cross_entropy, mse};

/// Labels of a batch for a sequence classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum SequenceLabels {
    /// Class ids, one per example.
    Classes(Vec<i64>),
    /// Multi-hot rows, `[batch, num_labels]` row-major.
    MultiHot(Vec<f32>),
    /// Real targets, `[batch, num_labels]` row-major (one per example for the usual
    /// single-output regression).
    Values(Vec<f32>),
}

/// Label names by id, kept for export as `id2label` / `label2id`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LabelNames(pub Vec<String>);

impl LabelNames {
    /// `LABEL_0`, `LABEL_1`, ... as transformers names unnamed labels.
    pub fn generic(n: usize) -> Self {
        LabelNames((0..n).map(|i| format!("LABEL_{i}")).collect())
    }

    /// `id2label` and `label2id` JSON objects.
    pub fn to_json(&self) -> (Value, Value) {
        let id2label: serde_json::Map<String, Value> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: serde_json::Map<String, Value> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        (Value::Object(id2label), Value::Object(label2id))
    }
}

/// `base` with the fields of a `BertFor<task>` (or `RobertaFor<task>`) class: its
/// architecture name, `num_labels`, `id2label` and `label2id`.
pub(crate) fn head_config(base: &Value, labels: &LabelNames, task: &str) -> Value {
    let mut config = base.clone();
    let (id2label, label2id) = labels.to_json();
    let family = match config.get("model_type").and_then(Value::as_str) {
        Some("roberta") => "Roberta",
        Some("xlm-roberta") => "XLMRoberta",
        Some("distilbert") => "DistilBert",
        Some("deberta-v2") => "DebertaV2",
        Some("modernbert") => "ModernBert",
        _ => "Bert",
    };
    if let Some(fields) = config.as_object_mut() {
        fields.insert(
            "architectures".into(),
            json!([format!("{family}For{task}")]),
        );
        fields.insert("num_labels".into(), json!(labels.0.len()));
        fields.insert("id2label".into(), id2label);
        fields.insert("label2id".into(), label2id);
    }
    config
}

/// `base` as a `...ForSequenceClassification` config with its problem type.
pub(crate) fn sequence_config(base: &Value, labels: &LabelNames, problem: ProblemType) -> Value {
    let mut config = head_config(base, labels, "SequenceClassification");
    if let Some(fields) = config.as_object_mut() {
        let problem = serde_json::to_value(problem).unwrap_or(Value::Null);
        fields.insert("problem_type".into(), problem);
    }
    config
}

/// Cross-entropy of per-token logits `[batch, seq, labels]` against row-major labels.
pub(crate) fn token_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
) -> Result<LossParts<B>, ModelError> {
    let [b, s, k] = logits.dims();
    cross_entropy(logits.reshape([b * s, k]), labels)
}

/// A per-token head needs at least one label.
pub(crate) fn labels_at_least_one(num_labels: usize) -> Result<(), ModelError> {
    if num_labels == 0 {
        return Err(ModelError::Inconsistent(
            "num_labels must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Checks a head's label count against its problem type.
pub(crate) fn check_labels(num_labels: usize, problem: ProblemType) -> Result<(), ModelError> {
    if num_labels == 0 {
        return Err(ModelError::Inconsistent(format!(
            "a {} head needs at least one label",
            problem.name()
        )));
    }
    Ok(())
}

/// The loss of sequence logits `[batch, num_labels]` per the problem type.
pub(crate) fn sequence_loss<B: Backend>(
    problem: ProblemType,
    logits: Tensor<B, 2>,
    labels: &SequenceLabels,
) -> Result<LossParts<B>, ModelError> {
    let [batch, k] = logits.dims();
    let device = logits.device();
    let mismatch = |what: &str| {
        ModelError::Inconsistent(format!(
            "{what} labels for a {problem:?} head of {k} labels and batch {batch}"
        ))
    };
    match (problem, labels) {
        (ProblemType::SingleLabelClassification, SequenceLabels::Classes(c))
            if c.len() == batch =>
        {
            cross_entropy(logits, c)
        }
        (ProblemType::MultiLabelClassification, SequenceLabels::MultiHot(v))
            if v.len() == batch * k =>
        {
            let targets = Tensor::from_data(TensorData::new(v.clone(), [batch, k]), &device);
            Ok(bce_with_logits(logits, targets))
        }
        (ProblemType::Regression, SequenceLabels::Values(v)) if v.len() == batch * k => {
            let targets = Tensor::from_data(TensorData::new(v.clone(), [batch, k]), &device);
            Ok(mse(logits, targets))
        }
        (_, SequenceLabels::Classes(_)) => Err(mismatch("class")),
        (_, SequenceLabels::MultiHot(_)) => Err(mismatch("multi-hot")),
        (_, SequenceLabels::Values(_)) => Err(mismatch("real-valued")),
    }
}

pub(crate) fn dropout_of(config: &BertConfig) -> Dropout {
    Dropout::new(
        config
            .classifier_dropout
            .unwrap_or(config.hidden_dropout_prob),
    )
}

/// A new `Linear(hidden → n)` with N(0, initializer_range) weights and zero bias, drawn
/// from this thread's generator (`burnish_models::random::seed_thread` makes them
/// reproducible whatever other threads do) and materialized now, so that a clone of the
/// model copies them (burn 0.21 re-draws lazily initialized parameters in clones, burn #5040).
pub(crate) fn new_head<B: Backend>(
    config: &BertConfig,
    inputs: usize,
    n: usize,
    device: &B::Device,
) -> Linear<B> {
    new_linear(config.initializer_range, inputs, n, true, device)
}

/// [`new_head`] for any family: N(0, `std`) weights, a zero bias when `bias`.
pub(crate) fn new_linear<B: Backend>(
    std: f64,
    inputs: usize,
    n: usize,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    burnish_models::random::linear(inputs, n, bias, std, device)
}

/// An output layer computed in the compute dtype, its logits returned in float32 for the
/// loss (as transformers' losses upcast them).
pub(crate) fn logits<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    cx: FloatDType,
) -> Tensor<B, D> {
    linear_in(layer, x, cx).cast(FloatDType::F32)
}

/// Implements [`Autocast`] for a head by passing the dtype to its encoder field.
macro_rules! autocast_through {
    ($head:ident . $field:ident) => {
        impl<B: Backend> burnish_models::Autocast for $head<B> {
            fn with_compute_dtype(mut self, dtype: burn::tensor::FloatDType) -> Self {
                self.$field = self.$field.with_compute_dtype(dtype);
                self
            }

            fn compute_dtype(&self) -> burn::tensor::FloatDType {
                self.$field.compute_dtype()
            }
        }
    };
}
pub(crate) use autocast_through;

autocast_through!(BertForSequenceClassification.bert);
autocast_through!(BertForTokenClassification.bert);

/// A BERT-family encoder with a sequence classification head. On a DistilBERT encoder it
/// is transformers' `DistilBertForSequenceClassification`: the pooler is its
/// `pre_classifier` (ReLU), the encoder is saved under `distilbert.`.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// The encoder (HF `bert.`, `distilbert.`), built with a pooler.
    pub bert: BertModel<B>,
    dropout: Dropout,
    /// `Linear(hidden, num_labels)` (HF `classifier`).
    pub classifier: Linear<B>,
    #[module(skip)]
    problem: ProblemType,
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// A head on `bert` (which must have a pooler) with `num_labels` outputs.
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] when `bert` has no pooler or `num_labels` is 0.
    pub fn new(
        bert: BertModel<B>,
        config: &BertConfig,
        num_labels: usize,
        problem: ProblemType,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        if bert.pooler.is_none() {
            return Err(ModelError::Inconsistent(
                "sequence classification needs the pooler".into(),
            ));
        }
        check_labels(num_labels, problem)?;
        Ok(Self {
            bert,
            // DistilBERT's sequence head has a dropout of its own.
            dropout: match config.seq_classif_dropout {
                Some(p) => Dropout::new(p),
                None => dropout_of(config),
            },
            classifier: new_head(config, config.hidden_size, num_labels, device),
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
        let out = self.bert.forward(input_ids, attention_mask, token_type_ids);
        let pooled = out.pooler_output.unwrap_or_else(|| {
            let [b, _, h] = out.last_hidden_state.dims();
            out.last_hidden_state.slice([0..b, 0..1]).reshape([b, h])
        });
        logits(
            &self.classifier,
            self.dropout.forward(pooled),
            self.bert.compute_dtype(),
        )
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

    /// `config.json` fields transformers needs to load this head:
    /// `architectures`, `num_labels`, `id2label`, `label2id`, `problem_type`.
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        sequence_config(base, labels, self.problem)
    }
}

/// A BERT-family encoder with a per-token classification head.
#[derive(Module, Debug)]
pub struct BertForTokenClassification<B: Backend> {
    /// The encoder (HF `bert.`), without pooler.
    pub bert: BertModel<B>,
    dropout: Dropout,
    /// `Linear(hidden, num_labels)` (HF `classifier`).
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForTokenClassification<B> {
    /// A per-token head with `num_labels` outputs.
    ///
    /// # Errors
    /// [`ModelError::Inconsistent`] when `num_labels` is 0.
    pub fn new(
        bert: BertModel<B>,
        config: &BertConfig,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        labels_at_least_one(num_labels)?;
        Ok(Self {
            bert,
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
        let out = self.bert.forward(input_ids, attention_mask, token_type_ids);
        logits(
            &self.classifier,
            self.dropout.forward(out.last_hidden_state),
            self.bert.compute_dtype(),
        )
    }

    /// Cross-entropy over tokens, labels `[batch, seq]` row-major with −100 ignored.
    ///
    /// # Errors
    /// [`ModelError::Input`] when there are not `batch × seq` labels.
    pub fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> Result<LossParts<B>, ModelError> {
        token_loss(logits, labels)
    }

    /// `config.json` fields transformers needs to load this head: `architectures`,
    /// `num_labels`, `id2label`, `label2id`.
    pub fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
        head_config(base, labels, "TokenClassification")
    }
}
