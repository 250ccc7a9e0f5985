//! Pretrained backbones under new or existing heads, from a Hugging Face directory.

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burnish_data::Task;
use burnish_heads::{
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
    DebertaV2ForQuestionAnswering, DebertaV2ForSequenceClassification,
    DebertaV2ForTokenClassification, ModernBertForQuestionAnswering,
    ModernBertForSequenceClassification, ModernBertForTokenClassification, ProblemType,
    RobertaForQuestionAnswering, RobertaForSequenceClassification, RobertaForTokenClassification,
};
use burnish_loader::{HfModelDir, LoadOptions, load_module};
use burnish_models::{
    BertConfig, BertFlavor, BertModel, DebertaV2Config, LlamaForCausalLm, ModelConfig, ModelError,
    ModernBertConfig,
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
    match configured(hf, dropout) {
        ModelConfig::Bert(c) => Ok(c),
        _ => Err(TaskError::WrongFamily {
            path: hf.path().to_owned(),
            task: "a BERT-family encoder head".into(),
            needs: "a BERT-family encoder (bert, roberta, xlm-roberta, distilbert)",
        }),
    }
}

/// The directory's config with the requested dropout (`None` keeps the checkpoint's).
fn configured(hf: &HfModelDir, dropout: Option<f64>) -> ModelConfig {
    let config = hf.config().clone();
    match dropout {
        Some(p) => config.with_dropout(p),
        None => config,
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
    DebertaSequence,
    DebertaToken,
    DebertaQa,
    ModernBertSequence,
    ModernBertToken,
    ModernBertQa,
    Causal,
}

/// The encoder families, for error messages.
const ENCODER_TYPES: &str =
    "an encoder (bert, roberta, xlm-roberta, distilbert, deberta-v2, modernbert)";

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
            (Task::CausalLm, ModelConfig::Llama(_)) => Kind::Causal,
            (Task::CausalLm, _) => return Err(wrong(DECODER_NEEDED)),
            (_, ModelConfig::Llama(_)) => return Err(wrong(ENCODER_TYPES)),
            (Task::SequenceClassification, ModelConfig::Bert(_)) if roberta => {
                Kind::RobertaSequence
            }
            (Task::SequenceClassification, ModelConfig::Bert(_)) => Kind::BertSequence,
            (Task::TokenClassification, ModelConfig::Bert(_)) if roberta => Kind::RobertaToken,
            (Task::TokenClassification, ModelConfig::Bert(_)) => Kind::BertToken,
            (Task::QuestionAnswering, ModelConfig::Bert(_)) if roberta => Kind::RobertaQa,
            (Task::QuestionAnswering, ModelConfig::Bert(_)) => Kind::BertQa,
            (Task::SequenceClassification, ModelConfig::Deberta(_)) => Kind::DebertaSequence,
            (Task::TokenClassification, ModelConfig::Deberta(_)) => Kind::DebertaToken,
            (Task::QuestionAnswering, ModelConfig::Deberta(_)) => Kind::DebertaQa,
            (Task::SequenceClassification, ModelConfig::ModernBert(_)) => Kind::ModernBertSequence,
            (Task::TokenClassification, ModelConfig::ModernBert(_)) => Kind::ModernBertToken,
            (Task::QuestionAnswering, ModelConfig::ModernBert(_)) => Kind::ModernBertQa,
        })
    }
}

/// What a causal-LM task needs, for error messages.
const DECODER_NEEDED: &str = "a decoder (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text)";

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

/// Builds a head with `make` on a fresh backbone (`init` of the family's `config`) and
/// loads the checkpoint into it; parameters under `new` may be absent unless the spec is
/// strict.
fn head_on<B: Backend, C, E, M: Module<B>>(
    hf: &HfModelDir,
    spec: &HeadSpec,
    config: C,
    init: impl FnOnce(&C) -> Result<E, ModelError>,
    make: impl FnOnce(E, &C) -> Result<M, ModelError>,
    new: &[&str],
) -> Result<(M, HeadReport), TaskError> {
    // The sizes are checked against the weights before the model is allocated.
    hf.weights()?;
    let backbone = init(&config).map_err(model_error(hf))?;
    let head = make(backbone, &config).map_err(model_error(hf))?;
    load_pretrained(hf, head, if spec.strict { &[] } else { new })
}

/// Builds a BERT-family head with `make` on a fresh backbone and loads the checkpoint.
fn encoder_head<B: Backend, M: Module<B>>(
    hf: &HfModelDir,
    spec: &HeadSpec,
    pooler: bool,
    make: impl FnOnce(BertModel<B>, &BertConfig) -> Result<M, ModelError>,
    device: &B::Device,
) -> Result<(M, HeadReport), TaskError> {
    let config = encoder_config(hf, spec.dropout)?;
    // DistilBERT's `pre_classifier` lives in the encoder's pooler (`bert.pooler`).
    let new = ["classifier", "pooler", "bert.pooler", "qa_outputs"];
    head_on(
        hf,
        spec,
        config,
        |c| c.init::<B>(pooler, device),
        make,
        &new,
    )
}

/// Builds a DeBERTa-v2/v3 head with `make` and loads the checkpoint.
fn deberta_head<B: Backend, M: Module<B>>(
    hf: &HfModelDir,
    spec: &HeadSpec,
    make: impl FnOnce(burnish_models::DebertaV2Model<B>, &DebertaV2Config) -> Result<M, ModelError>,
    device: &B::Device,
) -> Result<(M, HeadReport), TaskError> {
    let ModelConfig::Deberta(config) = configured(hf, spec.dropout) else {
        return Err(family_mismatch(hf, spec));
    };
    let new = ["classifier", "pooler", "qa_outputs"];
    head_on(hf, spec, config, |c| c.init::<B>(device), make, &new)
}

/// Builds a ModernBERT head with `make` and loads the checkpoint.
fn modernbert_head<B: Backend, M: Module<B>>(
    hf: &HfModelDir,
    spec: &HeadSpec,
    make: impl FnOnce(burnish_models::ModernBertModel<B>, &ModernBertConfig) -> Result<M, ModelError>,
    device: &B::Device,
) -> Result<(M, HeadReport), TaskError> {
    let ModelConfig::ModernBert(config) = configured(hf, spec.dropout) else {
        return Err(family_mismatch(hf, spec));
    };
    head_on(
        hf,
        spec,
        config,
        |c| c.init::<B>(device),
        make,
        &["head", "classifier"],
    )
}

/// A head builder called on a directory of another family (`Kind::of` prevents it).
fn family_mismatch(hf: &HfModelDir, spec: &HeadSpec) -> TaskError {
    TaskError::WrongFamily {
        path: hf.path().to_owned(),
        task: spec.task.name().into(),
        needs: ENCODER_TYPES,
    }
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
            Kind::DebertaSequence => {
                let make = |m, c: &DebertaV2Config| {
                    DebertaV2ForSequenceClassification::new(m, c, n, problem, device)
                };
                let $loaded = deberta_head::<$b, _>(hf, spec, make, device)?;
                $body
            }
            Kind::DebertaToken => {
                let make =
                    |m, c: &DebertaV2Config| DebertaV2ForTokenClassification::new(m, c, n, device);
                let $loaded = deberta_head::<$b, _>(hf, spec, make, device)?;
                $body
            }
            Kind::DebertaQa => {
                let make =
                    |m, c: &DebertaV2Config| Ok(DebertaV2ForQuestionAnswering::new(m, c, device));
                let $loaded = deberta_head::<$b, _>(hf, spec, make, device)?;
                $body
            }
            Kind::ModernBertSequence => {
                let make = |m, c: &ModernBertConfig| {
                    ModernBertForSequenceClassification::new(m, c, n, problem, device)
                };
                let $loaded = modernbert_head::<$b, _>(hf, spec, make, device)?;
                $body
            }
            Kind::ModernBertToken => {
                let make = |m, c: &ModernBertConfig| {
                    ModernBertForTokenClassification::new(m, c, n, device)
                };
                let $loaded = modernbert_head::<$b, _>(hf, spec, make, device)?;
                $body
            }
            Kind::ModernBertQa => {
                let make =
                    |m, c: &ModernBertConfig| ModernBertForQuestionAnswering::new(m, c, device);
                let $loaded = modernbert_head::<$b, _>(hf, spec, make, device)?;
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
