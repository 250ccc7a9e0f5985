//! Pretrained backbones under new or existing heads, from a Hugging Face directory.

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burnish_data::Task;
use burnish_heads::{
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
    ProblemType, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification,
};
use burnish_loader::{HfModelDir, LoadOptions, load_module};
use burnish_models::{
    BertConfig, BertFlavor, BertModel, LlamaForCausalLm, ModelConfig, ModelError,
};

use crate::{TaskError, TaskModel};

/// How a head met the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadReport {
    /// Parameters the checkpoint did not have: new, at their N(0, initializer_range)
    /// initialization.
    pub new_parameters: Vec<String>,
}

/// Loads the weights of `hf` into `model` (a backbone under a head of any design):
/// parameters under the paths in `new` (`["head"]`, `["classifier", "pooler"]`) may be
/// missing from the checkpoint and keep their fresh initialization; every other parameter
/// must be there.
///
/// # Errors
/// [`TaskError::Load`] when a required tensor is missing or of another shape.
pub fn load_pretrained<B: Backend, M: Module<B>>(
    hf: &HfModelDir,
    model: M,
    new: &[&str],
) -> Result<(M, HeadReport), TaskError> {
    let options = LoadOptions {
        allow_missing: new.iter().map(|s| (*s).to_owned()).collect(),
        ..LoadOptions::default()
    };
    let (model, report) = load_module(model, &hf.weights()?, hf.naming(), &options, hf.path())?;
    Ok((
        model,
        HeadReport {
            new_parameters: report.missing,
        },
    ))
}

/// The encoder config of `hf` with the requested dropout.
///
/// # Errors
/// [`TaskError::WrongFamily`] for a decoder.
pub fn encoder_config(hf: &HfModelDir, dropout: Option<f64>) -> Result<BertConfig, TaskError> {
    match hf.config() {
        ModelConfig::Bert(c) => Ok(match dropout {
            Some(p) => c.clone().with_dropout(p),
            None => c.clone(),
        }),
        _ => Err(TaskError::WrongFamily {
            path: hf.path().to_owned(),
            task: "a BERT-family encoder head".into(),
            needs: "a BERT-family encoder (bert, roberta, xlm-roberta, distilbert)",
        }),
    }
}

/// Which built-in head a task on a model directory needs, and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadSpec {
    /// The task.
    pub task: Task,
    /// Classes or tags (ignored for causal LM).
    pub num_labels: usize,
    /// Sequence classification's loss (transformers' `problem_type`).
    pub problem: ProblemType,
    /// The encoder's dropout probabilities; `None` keeps the checkpoint's.
    pub dropout: Option<f64>,
    /// The head must be in the checkpoint (a fine-tuned model) instead of new.
    pub strict: bool,
}

impl HeadSpec {
    /// A new head for `task` with `num_labels` outputs, single-label, the checkpoint's
    /// dropout.
    pub fn new(task: Task, num_labels: usize) -> Self {
        HeadSpec {
            task,
            num_labels,
            problem: ProblemType::SingleLabelClassification,
            dropout: None,
            strict: false,
        }
    }
}

/// The built-in task models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    BertSequence,
    RobertaSequence,
    BertToken,
    RobertaToken,
    BertQa,
    RobertaQa,
    Causal,
}

impl Kind {
    fn of(hf: &HfModelDir, spec: &HeadSpec) -> Result<Self, TaskError> {
        let wrong = |needs| TaskError::WrongFamily {
            path: hf.path().to_owned(),
            task: spec.task.name().into(),
            needs,
        };
        let roberta =
            matches!(hf.config(), ModelConfig::Bert(c) if c.flavor == BertFlavor::Roberta);
        Ok(match (spec.task, hf.config()) {
            (Task::SequenceClassification, ModelConfig::Bert(_)) if roberta => {
                Kind::RobertaSequence
            }
            (Task::SequenceClassification, ModelConfig::Bert(_)) => Kind::BertSequence,
            (Task::TokenClassification, ModelConfig::Bert(_)) if roberta => Kind::RobertaToken,
            (Task::TokenClassification, ModelConfig::Bert(_)) => Kind::BertToken,
            (Task::QuestionAnswering, ModelConfig::Bert(_)) if roberta => Kind::RobertaQa,
            (Task::QuestionAnswering, ModelConfig::Bert(_)) => Kind::BertQa,
            (Task::CausalLm, ModelConfig::Llama(_)) => Kind::Causal,
            (Task::CausalLm, _) => return Err(wrong("a decoder (llama, mistral, qwen2)")),
            (_, _) => return Err(wrong("an encoder (bert, roberta)")),
        })
    }
}

/// Receives the built-in task model a directory and [`HeadSpec`] make, whatever its type
/// (for inference: any backend).
pub trait UseModel<B: Backend> {
    /// What the visit returns.
    type Output;
    /// Called once with the loaded model.
    fn visit<M: TaskModel<B>>(self, model: M, report: HeadReport) -> Self::Output;
}

/// [`UseModel`] for training: the model is differentiable and its inner (inference)
/// module is a task model too, for evaluation during training.
pub trait UseTrainModel<B: AutodiffBackend> {
    /// What the visit returns.
    type Output;
    /// Called once with the loaded model.
    fn visit<M>(self, model: M, report: HeadReport) -> Self::Output
    where
        M: AutodiffModule<B> + TaskModel<B>,
        M::InnerModule: TaskModel<B::InnerBackend>;
}

fn model_error(hf: &HfModelDir) -> impl Fn(ModelError) -> TaskError + '_ {
    |source| TaskError::Model {
        path: hf.path().to_owned(),
        source,
    }
}

/// Builds an encoder head with `make` on a fresh backbone and loads the checkpoint into it.
fn encoder_head<B: Backend, M: Module<B>>(
    hf: &HfModelDir,
    spec: &HeadSpec,
    pooler: bool,
    make: impl FnOnce(BertModel<B>, &BertConfig) -> Result<M, ModelError>,
    device: &B::Device,
) -> Result<(M, HeadReport), TaskError> {
    let config = encoder_config(hf, spec.dropout)?;
    // The sizes are checked against the weights before the model is allocated.
    hf.weights()?;
    let backbone = config.init::<B>(pooler, device).map_err(model_error(hf))?;
    let head = make(backbone, &config).map_err(model_error(hf))?;
    let new: &[&str] = if spec.strict {
        &[]
    } else {
        &["classifier", "pooler", "qa_outputs"]
    };
    load_pretrained(hf, head, new)
}

/// Loads a Llama-family causal LM (its head is part of the checkpoint).
///
/// # Errors
/// [`TaskError::Load`]; [`TaskError::Invalid`] for dropout (decoders train without it).
pub fn load_causal<B: Backend>(
    hf: &HfModelDir,
    dropout: Option<f64>,
    device: &B::Device,
) -> Result<(LlamaForCausalLm<B>, HeadReport), TaskError> {
    if dropout.is_some_and(|p| p > 0.0) {
        return Err(TaskError::Invalid {
            field: "dropout".into(),
            message: "the Llama family trains without dropout in burnish".into(),
        });
    }
    let (model, _) = hf.load_llama::<B>(device, &LoadOptions::default())?;
    Ok((model, HeadReport::default()))
}

/// One monomorphic body per built-in model, chosen at run time: `$loaded` is bound to
/// `(model, report)` of the kind `Kind::of` picks.
macro_rules! dispatch {
    ($b:ty, $hf:expr, $spec:expr, $device:expr, |$loaded:ident| $body:expr) => {{
        let (hf, spec, device) = ($hf, $spec, $device);
        let (n, problem) = (spec.num_labels, spec.problem);
        Ok(match Kind::of(hf, spec)? {
            Kind::BertSequence => {
                let make = |b, c: &BertConfig| {
                    BertForSequenceClassification::new(b, c, n, problem, device)
                };
                let $loaded = encoder_head::<$b, _>(hf, spec, true, make, device)?;
                $body
            }
            Kind::RobertaSequence => {
                let make = |b, c: &BertConfig| {
                    RobertaForSequenceClassification::new(b, c, n, problem, device)
                };
                let $loaded = encoder_head::<$b, _>(hf, spec, false, make, device)?;
                $body
            }
            Kind::BertToken => {
                let make = |b, c: &BertConfig| BertForTokenClassification::new(b, c, n, device);
                let $loaded = encoder_head::<$b, _>(hf, spec, false, make, device)?;
                $body
            }
            Kind::RobertaToken => {
                let make = |b, c: &BertConfig| RobertaForTokenClassification::new(b, c, n, device);
                let $loaded = encoder_head::<$b, _>(hf, spec, false, make, device)?;
                $body
            }
            Kind::BertQa => {
                let make = |b, c: &BertConfig| Ok(BertForQuestionAnswering::new(b, c, device));
                let $loaded = encoder_head::<$b, _>(hf, spec, false, make, device)?;
                $body
            }
            Kind::RobertaQa => {
                let make = |b, c: &BertConfig| Ok(RobertaForQuestionAnswering::new(b, c, device));
                let $loaded = encoder_head::<$b, _>(hf, spec, false, make, device)?;
                $body
            }
            Kind::Causal => {
                let $loaded = load_causal::<$b>(hf, spec.dropout, device)?;
                $body
            }
        })
    }};
}

/// Loads the built-in task model of `spec` on `hf` (pretrained backbone, new head unless
/// `strict`) and hands it to `user`.
///
/// # Errors
/// [`TaskError::WrongFamily`], [`TaskError::Model`], [`TaskError::Load`].
pub fn with_model<B: Backend, U: UseModel<B>>(
    hf: &HfModelDir,
    spec: &HeadSpec,
    device: &B::Device,
    user: U,
) -> Result<U::Output, TaskError> {
    dispatch!(B, hf, spec, device, |loaded| user.visit(loaded.0, loaded.1))
}

/// [`with_model`] for training.
///
/// # Errors
/// As [`with_model`].
pub fn with_train_model<B: AutodiffBackend, U: UseTrainModel<B>>(
    hf: &HfModelDir,
    spec: &HeadSpec,
    device: &B::Device,
    user: U,
) -> Result<U::Output, TaskError> {
    dispatch!(B, hf, spec, device, |loaded| user.visit(loaded.0, loaded.1))
}
