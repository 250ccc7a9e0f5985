//! The open task-model trait and its implementations for the built-in heads.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};
use burnish_heads::{
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
    DebertaV2ForQuestionAnswering, DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification, LabelNames, LossParts, ModernBertForQuestionAnswering,
    ModernBertForSequenceClassification, ModernBertForTokenClassification, ProblemType,
    RobertaForQuestionAnswering, RobertaForSequenceClassification, RobertaForTokenClassification,
    SequenceLabels, causal_lm_loss,
};
use burnish_models::{Autocast, InputLimits, LlamaForCausalLm};
use burnish_trainer::StepLoss;
use serde_json::Value;

use crate::{DeviceBatch, TaskError};

/// What training, evaluation, prediction and checkpoints need of a model: implement it for
/// your own model (a backbone under a head of your design) and every library call of this
/// crate takes it.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::backend::Backend;
/// use burn::tensor::Tensor;
/// use burnish_heads::{LossParts, cross_entropy};
/// use burnish_tasks::{DeviceBatch, TaskError, TaskModel};
///
/// /// A bag-of-embeddings classifier: mean of token embeddings, then a linear layer.
/// #[derive(Module, Debug)]
/// struct BagOfWords<B: Backend> {
///     embedding: burn::nn::Embedding<B>,
///     out: Linear<B>,
/// }
///
/// impl<B: Backend> TaskModel<B> for BagOfWords<B> {
///     fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
///         let pooled = self.embedding.forward(batch.input_ids.clone()).mean_dim(1);
///         self.out.forward(pooled)
///     }
///     fn loss(
///         &self,
///         logits: Tensor<B, 3>,
///         batch: &DeviceBatch<B>,
///     ) -> Result<LossParts<B>, TaskError> {
///         let [b, _, k] = logits.dims();
///         Ok(cross_entropy(logits.reshape([b, k]), &batch.labels)?)
///     }
/// }
/// ```
pub trait TaskModel<B: Backend>: Module<B> {
    /// Logits `[batch, positions, outputs]`; sequence classification has one position.
    fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3>;

    /// Summed loss over the labels that count, and their number.
    ///
    /// # Errors
    /// [`TaskError::Batch`] when the batch's labels do not fit the logits.
    fn loss(&self, logits: Tensor<B, 3>, batch: &DeviceBatch<B>)
    -> Result<LossParts<B>, TaskError>;

    /// The loss of one training micro-batch, with any extra metrics to report (a sum
    /// over the batch's items each, see [`StepLoss`]); by default [`loss`](Self::loss) of
    /// [`logits`](Self::logits) alone.
    ///
    /// # Errors
    /// As [`loss`](Self::loss).
    fn step_loss(&self, batch: &DeviceBatch<B>) -> Result<StepLoss<B>, TaskError> {
        Ok(self.loss(self.logits(batch), batch)?.into())
    }

    /// The ranges the model's embedding tables cover; batches are checked against them
    /// on the host before upload ([`DeviceBatch::checked`]). `None` (the default) checks
    /// nothing.
    fn input_limits(&self) -> Option<InputLimits> {
        None
    }

    /// `config.json` of the exported model (architecture and label fields set); by
    /// default the backbone's own.
    fn export_config(&self, base: &Value, _labels: &LabelNames) -> Value {
        base.clone()
    }

    /// The same model computing in `dtype`. The default accepts only float32: a model
    /// that does not implement half-precision compute is refused, never silently run in
    /// fp32.
    ///
    /// # Errors
    /// [`TaskError::NoAutocast`].
    fn with_compute_dtype(self, dtype: FloatDType) -> Result<Self, TaskError>
    where
        Self: Sized,
    {
        match dtype {
            FloatDType::F32 => Ok(self),
            _ => Err(TaskError::NoAutocast {
                model: std::any::type_name::<Self>(),
                dtype,
            }),
        }
    }
}

/// The labels of a batch in the form the head's problem type takes.
fn sequence_labels<B: Backend>(problem: ProblemType, batch: &DeviceBatch<B>) -> SequenceLabels {
    match problem {
        ProblemType::SingleLabelClassification => SequenceLabels::Classes(batch.labels.clone()),
        ProblemType::MultiLabelClassification => SequenceLabels::MultiHot(batch.targets.clone()),
        ProblemType::Regression => SequenceLabels::Values(batch.targets.clone()),
    }
}

/// `TaskModel` for an encoder head whose encoder is `$ty.$backbone`: `$shape` turns the head's output `$out` into
/// `[batch, positions, outputs]`, `$loss` is the loss of `$logits` for `$batch` (`$m` is
/// the model).
macro_rules! encoder_head {
    ($ty:ident . $backbone:ident, |$out:ident| $shape:expr, |$m:ident, $logits:ident, $batch:ident| $loss:expr) => {
        impl<B: Backend> TaskModel<B> for $ty<B> {
            fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
                let $out = self.forward(
                    batch.input_ids.clone(),
                    Some(batch.attention_mask.clone()),
                    Some(batch.token_type_ids.clone()),
                );
                $shape
            }

            fn loss(
                &self,
                $logits: Tensor<B, 3>,
                $batch: &DeviceBatch<B>,
            ) -> Result<LossParts<B>, TaskError> {
                let $m = self;
                Ok($loss?)
            }

            fn input_limits(&self) -> Option<InputLimits> {
                Some(self.$backbone.input_limits())
            }

            fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
                $ty::export_config(self, base, labels)
            }

            fn with_compute_dtype(self, dtype: FloatDType) -> Result<Self, TaskError> {
                Ok(Autocast::with_compute_dtype(self, dtype))
            }
        }
    };
}

/// Sequence classification: one position; the labels' form follows the problem type.
macro_rules! sequence_classifier {
    ($ty:ident . $backbone:ident) => {
        encoder_head!(
            $ty.$backbone,
            |out| out.unsqueeze_dim(1),
            |m, logits, batch| {
                let [b, _, k] = logits.dims();
                let labels = sequence_labels(m.problem(), batch);
                $ty::loss(m, logits.reshape([b, k]), &labels)
            }
        );
    };
}

sequence_classifier!(BertForSequenceClassification.bert);
sequence_classifier!(RobertaForSequenceClassification.roberta);
sequence_classifier!(DebertaV2ForSequenceClassification.deberta);
sequence_classifier!(ModernBertForSequenceClassification.model);
/// A head with labels in the batch as the head's `loss` takes them: per token (token
/// classification) or start/end per example (QA).
macro_rules! labeled_head {
    ($ty:ident . $backbone:ident) => {
        encoder_head!($ty.$backbone, |out| out, |m, logits, batch| $ty::loss(
            m,
            logits,
            &batch.labels
        ));
    };
}

labeled_head!(BertForTokenClassification.bert);
labeled_head!(RobertaForTokenClassification.roberta);
labeled_head!(BertForQuestionAnswering.bert);
labeled_head!(RobertaForQuestionAnswering.roberta);
labeled_head!(DebertaV2ForTokenClassification.deberta);
labeled_head!(DebertaV2ForQuestionAnswering.deberta);
labeled_head!(ModernBertForTokenClassification.model);
labeled_head!(ModernBertForQuestionAnswering.model);

impl<B: Backend> TaskModel<B> for LlamaForCausalLm<B> {
    fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
        let (ids, mask) = (batch.input_ids.clone(), Some(batch.attention_mask.clone()));
        match &batch.position_ids {
            Some(positions) => {
                let hidden = self
                    .model
                    .forward_with_positions(ids, mask, positions.clone(), None);
                self.project(hidden)
            }
            None => self.forward(ids, mask, None),
        }
    }

    fn loss(
        &self,
        logits: Tensor<B, 3>,
        batch: &DeviceBatch<B>,
    ) -> Result<LossParts<B>, TaskError> {
        Ok(causal_lm_loss(logits, &batch.labels)?)
    }

    fn input_limits(&self) -> Option<InputLimits> {
        Some(LlamaForCausalLm::input_limits(self))
    }

    fn export_config(&self, base: &Value, _labels: &LabelNames) -> Value {
        let mut config = base.clone();
        // Some checkpoints (converted ones) lack `architectures`; transformers' Auto classes
        // and `burnish eval` read the task from it.
        if let Some(fields) = config.as_object_mut()
            && !fields.contains_key("architectures")
        {
            let class = match fields.get("model_type").and_then(Value::as_str) {
                Some("mistral") => "MistralForCausalLM",
                Some("qwen2") => "Qwen2ForCausalLM",
                _ => "LlamaForCausalLM",
            };
            fields.insert("architectures".into(), serde_json::json!([class]));
        }
        config
    }

    fn with_compute_dtype(self, dtype: FloatDType) -> Result<Self, TaskError> {
        Ok(Autocast::with_compute_dtype(self, dtype))
    }
}

/// Prepares `model` for training in `precision` on `device`: checks that the backend has
/// the compute dtype and that the model computes in it ([`TaskModel::with_compute_dtype`]).
///
/// # Errors
/// [`TaskError::Train`] with [`TrainError::Precision`](burnish_trainer::TrainError::Precision)
/// when the backend lacks the dtype; [`TaskError::NoAutocast`].
pub fn with_precision<B: Backend, M: TaskModel<B>>(
    model: M,
    precision: burnish_amp::Precision,
    device: &B::Device,
) -> Result<M, TaskError> {
    let dtype = precision.compute_dtype();
    if !B::supports_dtype(device, dtype.into()) {
        return Err(burnish_trainer::TrainError::Precision { precision, dtype }.into());
    }
    model.with_compute_dtype(dtype)
}
