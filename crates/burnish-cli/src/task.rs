//! One trait over the five task models, and how each is built from a model directory.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_data::{Batch, Task};
use burnish_heads::{
    BertForSequenceClassification, BertForTokenClassification, LabelNames, LossParts, ProblemType,
    RobertaForSequenceClassification, RobertaForTokenClassification, causal_lm_loss, cross_entropy,
};
use burnish_loader::{HfModelDir, LoadOptions, load_module};
use burnish_models::{
    Autocast, BertConfig, BertFlavor, BertModel, LlamaForCausalLm, ModelConfig, ModelError,
};
use serde_json::Value;

use crate::CliError;

/// A batch moved to a device.
#[derive(Debug, Clone)]
pub struct DeviceBatch<B: Backend> {
    /// Token ids `[batch, seq]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// Labels as [`Batch::labels`].
    pub labels: Vec<i64>,
    /// `[batch, seq]`.
    pub shape: [usize; 2],
}

impl<B: Backend> DeviceBatch<B> {
    /// Uploads `batch`.
    pub fn new(batch: &Batch, device: &B::Device) -> Self {
        let shape = batch.encoded.shape;
        let ints = |v: &[i64]| Tensor::from_data(TensorData::new(v.to_vec(), shape), device);
        DeviceBatch {
            input_ids: ints(&batch.encoded.input_ids),
            attention_mask: ints(&batch.encoded.attention_mask),
            labels: batch.labels.clone(),
            shape,
        }
    }
}

/// What the training loop, evaluation and prediction need of a task model (which also
/// computes in half precision on request, [`Autocast`]).
pub trait TaskModel<B: Backend>: Module<B> + Autocast {
    /// Logits `[batch, positions, outputs]`; sequence classification has one position.
    fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3>;

    /// Summed loss over the labels that count, and their number.
    fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> LossParts<B>;

    /// `config.json` of the exported model (architecture and label fields set).
    fn export_config(&self, base: &Value, labels: &LabelNames) -> Value;
}

macro_rules! sequence_classifier {
    ($ty:ident) => {
        impl<B: Backend> TaskModel<B> for $ty<B> {
            fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
                self.forward(
                    batch.input_ids.clone(),
                    Some(batch.attention_mask.clone()),
                    None,
                )
                .unsqueeze_dim(1)
            }

            fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> LossParts<B> {
                let [b, _, k] = logits.dims();
                // Cross-entropy of single-label classification: the only problem type the
                // command trains (class ids, −100 ignored).
                cross_entropy(logits.reshape([b, k]), labels)
            }

            fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
                $ty::export_config(self, base, labels)
            }
        }
    };
}

macro_rules! token_classifier {
    ($ty:ident) => {
        impl<B: Backend> TaskModel<B> for $ty<B> {
            fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
                self.forward(
                    batch.input_ids.clone(),
                    Some(batch.attention_mask.clone()),
                    None,
                )
            }

            fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> LossParts<B> {
                $ty::loss(self, logits, labels)
            }

            fn export_config(&self, base: &Value, labels: &LabelNames) -> Value {
                $ty::export_config(self, base, labels)
            }
        }
    };
}

sequence_classifier!(BertForSequenceClassification);
sequence_classifier!(RobertaForSequenceClassification);
token_classifier!(BertForTokenClassification);
token_classifier!(RobertaForTokenClassification);

impl<B: Backend> TaskModel<B> for LlamaForCausalLm<B> {
    fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
        self.forward(
            batch.input_ids.clone(),
            Some(batch.attention_mask.clone()),
            None,
        )
    }

    fn loss(&self, logits: Tensor<B, 3>, labels: &[i64]) -> LossParts<B> {
        causal_lm_loss(logits, labels)
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
}

/// Which task model a directory and task make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    BertSequence,
    RobertaSequence,
    BertToken,
    RobertaToken,
    Causal,
}

impl Kind {
    pub(crate) fn of(hf: &HfModelDir, task: Task) -> Result<Self, CliError> {
        let wrong = |what: &str| {
            CliError::Usage(format!(
                "{}: task {} needs {what}",
                hf.path().display(),
                task.name()
            ))
        };
        Ok(match (task, hf.config()) {
            (Task::SequenceClassification, ModelConfig::Bert(c)) => match c.flavor {
                BertFlavor::Roberta => Kind::RobertaSequence,
                _ => Kind::BertSequence,
            },
            (Task::TokenClassification, ModelConfig::Bert(c)) => match c.flavor {
                BertFlavor::Roberta => Kind::RobertaToken,
                _ => Kind::BertToken,
            },
            (Task::CausalLm, ModelConfig::Llama(_)) => Kind::Causal,
            (Task::CausalLm, _) => return Err(wrong("a decoder (llama, mistral, qwen2)")),
            (_, _) => return Err(wrong("an encoder (bert, roberta)")),
        })
    }
}

/// The encoder config of `hf` with the requested dropout.
pub(crate) fn bert_config(hf: &HfModelDir, dropout: Option<f64>) -> Result<BertConfig, CliError> {
    match hf.config() {
        ModelConfig::Bert(c) => Ok(match dropout {
            Some(p) => c.clone().with_dropout(p),
            None => c.clone(),
        }),
        ModelConfig::Llama(_) => Err(CliError::Usage(format!(
            "{}: not an encoder",
            hf.path().display()
        ))),
    }
}

/// How a head met the checkpoint: loaded from it, or new (these parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeadReport {
    pub(crate) new_parameters: Vec<String>,
}

/// Builds an encoder head with `make` and loads the checkpoint into it. Parameters of the
/// head (and a pooler the checkpoint lacks) may be missing: they keep their fresh
/// N(0, initializer_range) values. With `strict`, nothing may be missing.
pub(crate) fn load_encoder_head<B: Backend, M: Module<B>>(
    hf: &HfModelDir,
    config: &BertConfig,
    pooler: bool,
    make: impl FnOnce(BertModel<B>) -> Result<M, ModelError>,
    strict: bool,
    device: &B::Device,
) -> Result<(M, HeadReport), CliError> {
    let model_err = |source| CliError::Model {
        path: hf.path().to_owned(),
        source,
    };
    let backbone = config.init::<B>(pooler, device).map_err(model_err)?;
    let head = make(backbone).map_err(model_err)?;
    let options = LoadOptions {
        allow_missing: if strict {
            Vec::new()
        } else {
            vec!["classifier".into(), "pooler".into()]
        },
        ..LoadOptions::default()
    };
    let (model, report) = load_module(head, &hf.weights()?, hf.naming(), &options, hf.path())?;
    Ok((
        model,
        HeadReport {
            new_parameters: report.missing,
        },
    ))
}

/// Loads a Llama-family model (strictly: a causal LM's head is part of the checkpoint).
pub(crate) fn load_causal<B: Backend>(
    hf: &HfModelDir,
    device: &B::Device,
) -> Result<(LlamaForCausalLm<B>, HeadReport), CliError> {
    let (model, _) = hf.load_llama::<B>(device, &LoadOptions::default())?;
    Ok((
        model,
        HeadReport {
            new_parameters: Vec::new(),
        },
    ))
}

/// The single-label problem type every classifier of the command uses.
pub(crate) const SINGLE: ProblemType = ProblemType::SingleLabelClassification;

/// Builds the task model of `task` on the directory `hf` (`n` labels, encoder dropout
/// `dropout`), loads the checkpoint into it (`strict`: the head must be there too), binds
/// `(model, HeadReport)` to `$loaded` and evaluates `$body`: one monomorphic body per task
/// model, chosen at run time.
macro_rules! with_task_model {
    ($b:ty, $hf:expr, $task:expr, $n:expr, $dropout:expr, $strict:expr, $device:expr, |$loaded:ident| $body:expr) => {{
        use burnish_heads::{
            BertForSequenceClassification, BertForTokenClassification,
            RobertaForSequenceClassification, RobertaForTokenClassification,
        };
        use $crate::task::{Kind, SINGLE, bert_config, load_causal, load_encoder_head};
        let hf: &burnish_loader::HfModelDir = $hf;
        let (n, dropout, strict, device): (usize, Option<f64>, bool, _) =
            ($n, $dropout, $strict, $device);
        match Kind::of(hf, $task)? {
            Kind::BertSequence => {
                let c = bert_config(hf, dropout)?;
                let make = |b| BertForSequenceClassification::new(b, &c, n, SINGLE, device);
                let $loaded = load_encoder_head::<$b, _>(hf, &c, true, make, strict, device)?;
                $body
            }
            Kind::RobertaSequence => {
                let c = bert_config(hf, dropout)?;
                let make = |b| RobertaForSequenceClassification::new(b, &c, n, SINGLE, device);
                let $loaded = load_encoder_head::<$b, _>(hf, &c, false, make, strict, device)?;
                $body
            }
            Kind::BertToken => {
                let c = bert_config(hf, dropout)?;
                let make = |b| BertForTokenClassification::new(b, &c, n, device);
                let $loaded = load_encoder_head::<$b, _>(hf, &c, false, make, strict, device)?;
                $body
            }
            Kind::RobertaToken => {
                let c = bert_config(hf, dropout)?;
                let make = |b| RobertaForTokenClassification::new(b, &c, n, device);
                let $loaded = load_encoder_head::<$b, _>(hf, &c, false, make, strict, device)?;
                $body
            }
            Kind::Causal => {
                if dropout.is_some_and(|p| p > 0.0) {
                    return Err(CliError::Usage(
                        "[model] dropout: the Llama family trains without dropout in burnish"
                            .into(),
                    ));
                }
                let $loaded = load_causal::<$b>(hf, device)?;
                $body
            }
        }
    }};
}
pub(crate) use with_task_model;
