//! The configuration of a whole fine-tuning run: `[model]`, `[data]`, `[train]`, as the
//! `burnish` command reads it from TOML and [`fine_tune`](crate::fine_tune) takes it. The
//! optimization defaults are the library's own ([`TrainerConfig::default`] and friends).

use std::path::PathBuf;

use burnish_amp::Precision;
use burnish_data::{ProblemType, Task};
use burnish_optim::AdamWConfig;
use burnish_schedule::{ScheduleKind, Warmup};
use burnish_trainer::{BestMetric, EarlyStopping, FitConfig, TrainerConfig};
use serde::{Deserialize, Deserializer, Serialize};

use crate::TaskError;

/// A whole run: `[model]`, `[data]`, `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The pretrained model and the task head.
    pub model: ModelSection,
    /// Data files and tokenization.
    pub data: DataSection,
    /// Optimization, evaluation, output.
    #[serde(default)]
    pub train: TrainSection,
    /// Data-parallel training over several devices (and processes); one device when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedSection>,
}

/// `[distributed]`: data-parallel training, one worker per device. Every worker trains on
/// its part of each batch and the gradients are summed, so the run computes what one
/// device would with the same `batch_size` (the global batch) and `grad_accum`.
///
/// Several nodes (processes, on one machine or several) each run the same configuration
/// with their own `node_rank` (usually `--node-rank`); node 0 listens at `coordinator` for
/// the others, logs and saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedSection {
    /// This process's devices, one worker each: `"cpu"`, `"cuda:0"`, `"cuda:1"`...
    pub devices: Vec<String>,
    /// Processes taking part, each with the same number of devices.
    #[serde(default = "one")]
    pub nodes: usize,
    /// This process's node, from 0 (`--node-rank` overrides it).
    #[serde(default)]
    pub node_rank: usize,
    /// `host:port` where node 0 listens for the other nodes, when `nodes > 1`.
    #[serde(default)]
    pub coordinator: Option<String>,
    /// Seconds a worker waits for the others (a killed or stuck worker ends the run with an
    /// error after at most this long; `--resume` continues it).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn one() -> usize {
    1
}

fn default_timeout() -> u64 {
    burnish_parallel::DEFAULT_TIMEOUT.as_secs()
}

/// A device as configurations and flags name it: `cpu`, `cuda` (= `cuda:0`), `cuda:N` or
/// `wgpu` (the default wgpu adapter). Which backend serves it is the caller's choice.
///
/// ```
/// use burnish_tasks::DeviceName;
///
/// assert_eq!("cuda:1".parse(), Ok(DeviceName::Cuda(1)));
/// assert_eq!("wgpu".parse(), Ok(DeviceName::Wgpu));
/// assert!("gpu".parse::<DeviceName>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
    /// The default adapter of burn-wgpu (on a machine without a GPU, Mesa's lavapipe).
    Wgpu,
}

impl DeviceName {
    /// The CUDA index, for a CUDA device.
    pub fn cuda_index(&self) -> Option<usize> {
        match self {
            DeviceName::Cuda(index) => Some(*index),
            DeviceName::Cpu | DeviceName::Wgpu => None,
        }
    }
}

impl std::str::FromStr for DeviceName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "cpu" => Ok(DeviceName::Cpu),
            None if text == "cuda" => Ok(DeviceName::Cuda(0)),
            None if text == "wgpu" => Ok(DeviceName::Wgpu),
            Some(("cuda", index)) => index
                .parse()
                .map(DeviceName::Cuda)
                .map_err(|_| format!("`{index}` is not a device index (cuda:0, cuda:1, ...)")),
            _ => Err(format!("`{text}`: expected cpu, cuda, cuda:N or wgpu")),
        }
    }
}

impl DistributedSection {
    /// `devices`, parsed and checked: at least one, all of one kind, no GPU twice.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] on `distributed.devices`.
    pub fn device_names(&self) -> Result<Vec<DeviceName>, TaskError> {
        let invalid = |message: String| TaskError::Invalid {
            field: "distributed.devices".into(),
            message,
        };
        let names = self
            .devices
            .iter()
            .map(|name| name.parse::<DeviceName>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let Some(first) = names.first() else {
            return Err(invalid("no device: list at least one".into()));
        };
        let kind = std::mem::discriminant(first);
        if names.iter().any(|d| std::mem::discriminant(d) != kind) {
            return Err(invalid(
                "mixes device kinds (cpu, cuda, wgpu): use one kind".into(),
            ));
        }
        if names.len() > 1 && names[0] == DeviceName::Wgpu {
            return Err(invalid(
                "wgpu has one device (the default adapter): list it once".into(),
            ));
        }
        for (i, name) in names.iter().enumerate() {
            if let DeviceName::Cuda(n) = name
                && names[..i].contains(name)
            {
                return Err(invalid(format!("cuda:{n} is listed twice")));
            }
        }
        Ok(names)
    }

    /// The workers of node `node_rank` (this section's when `None`), checked.
    ///
    /// # Errors
    /// [`TaskError::Parallel`] naming the `distributed.*` setting that is unusable.
    pub fn topology(
        &self,
        node_rank: Option<usize>,
    ) -> Result<burnish_parallel::Topology, TaskError> {
        let node_rank = node_rank.unwrap_or(self.node_rank);
        let mut topology = burnish_parallel::Topology::local(self.devices.len())
            .with_timeout(std::time::Duration::from_secs(self.timeout_secs));
        if self.nodes > 1 || node_rank > 0 {
            let coordinator = self.coordinator.clone().unwrap_or_default();
            topology = topology.with_nodes(self.nodes, node_rank, &coordinator);
        }
        topology.validate()?;
        Ok(topology)
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face model directory (config.json, weights, tokenizer.json). Required.
    pub path: PathBuf,
    /// `sequence-classification`, `token-classification` or `causal-lm`. Required.
    pub task: Task,
    /// Number of classes or tags; taken from `labels` when absent.
    #[serde(default)]
    pub num_labels: Option<usize>,
    /// Class or tag names by id (tags in BIO: `O`, `B-PER`, `I-PER`, ...); labels in the
    /// data may be these names or their ids.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Sets the encoder's dropout probabilities (hidden and attention); absent keeps the
    /// checkpoint's. Training has dropout on, evaluation off.
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Sequence classification's `problem_type`, as transformers names it:
    /// `single_label_classification` (one class, cross-entropy),
    /// `multi_label_classification` (any classes, BCE with logits) or `regression` (real
    /// values, MSE). Absent: the checkpoint's, else single-label (regression for a
    /// one-label checkpoint).
    #[serde(default)]
    pub problem_type: Option<ProblemType>,
    /// Multi-label classification predicts the classes whose probability is above this
    /// (default 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training JSONL. Required.
    pub train: PathBuf,
    /// Validation JSONL, evaluated during training (best model, early stopping).
    #[serde(default)]
    pub validation: Option<PathBuf>,
    /// Test JSONL, evaluated once with the final model.
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Longest sequence in tokens, special tokens included; longer rows are truncated.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Shuffle the training data every epoch (seeded by `train.seed`).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Batch examples of similar length together (less padding).
    #[serde(default)]
    pub group_by_length: bool,
    /// Causal LM: pack the examples of each micro-batch into rows of up to `max_length`
    /// tokens, each example attending only to itself at positions from 0: the same loss
    /// and updates as unpacked, with less padding computed.
    #[serde(default)]
    pub packing: bool,
    /// Skip unusable rows (listed in the log) instead of failing.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Where tokenized data is cached; default `<output_dir>/cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Question answering: context tokens shared by consecutive windows of a context
    /// longer than `max_length` (transformers' `stride`).
    #[serde(default = "default_doc_stride")]
    pub doc_stride: usize,
    /// Question answering: the longest answer predicted, in tokens.
    #[serde(default = "default_max_answer_length")]
    pub max_answer_length: usize,
    /// Question answering: questions may have no answer (SQuAD v2); "no answer" is
    /// predicted when it scores above the best span.
    #[serde(default)]
    pub version_2_with_negative: bool,
}

impl ModelSection {
    /// `[model]` for `task` on the model directory `path`, every other key at its default.
    pub fn new(path: impl Into<PathBuf>, task: Task) -> Self {
        ModelSection {
            path: path.into(),
            task,
            num_labels: None,
            labels: None,
            dropout: None,
            problem_type: None,
            threshold: None,
        }
    }
}

impl DataSection {
    /// `[data]` training on `train`, every other key at its default (the defaults of a
    /// TOML file that names only `train`).
    pub fn new(train: impl Into<PathBuf>) -> Self {
        DataSection {
            train: train.into(),
            validation: None,
            test: None,
            max_length: default_max_length(),
            shuffle: true,
            group_by_length: false,
            packing: false,
            skip_bad_rows: false,
            cache_dir: None,
            doc_stride: default_doc_stride(),
            max_answer_length: default_max_answer_length(),
            version_2_with_negative: false,
        }
    }

    /// The question-answering settings of this section.
    pub fn qa_options(&self) -> crate::QaOptions {
        crate::QaOptions {
            doc_stride: self.doc_stride,
            max_answer_length: self.max_answer_length,
            version_2_with_negative: self.version_2_with_negative,
            ..crate::QaOptions::default()
        }
    }
}

/// The schedule, written as a name (`"cosine"`) or a table with its parameters
/// (`{ type = "cosine", num_cycles = 0.5 }`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule(pub ScheduleKind);

impl Default for Schedule {
    fn default() -> Self {
        Schedule(ScheduleKind::Linear)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spec {
            Name(String),
            Table(serde_json::Value),
        }
        let value = match Spec::deserialize(d)? {
            Spec::Name(name) => serde_json::json!({ "type": name }),
            Spec::Table(v) => v,
        };
        serde_json::from_value(value).map(Schedule).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e} (names: constant, constant_with_warmup, linear, cosine, \
                 cosine_with_hard_restarts, polynomial, inverse_sqrt, warmup_stable_decay)"
            ))
        })
    }
}

/// `[train]`; defaults follow transformers' `TrainingArguments` except `weight_decay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Seed of shuffling, head initialization and dropout.
    pub seed: u64,
    /// Passes over the training data.
    pub epochs: usize,
    /// Optimizer steps to run; overrides `epochs` when set.
    pub max_steps: Option<u64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Examples per evaluation batch (default `batch_size`).
    pub eval_batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay (biases and norm weights excluded).
    pub weight_decay: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_epsilon: f64,
    /// Warmup in optimizer steps (exclusive with `warmup_ratio`).
    pub warmup_steps: u64,
    /// Warmup as a fraction of all steps.
    pub warmup_ratio: f64,
    /// LR schedule after warmup.
    pub schedule: Schedule,
    /// Global gradient-norm clipping threshold; 0 disables clipping.
    pub max_grad_norm: f64,
    /// `fp32`, `bf16` or `fp16`.
    pub precision: Precision,
    /// Recompute cheap activations in the backward pass instead of storing them (burn's
    /// `BalancedCheckpointing`): less memory, same numbers.
    pub gradient_checkpointing: bool,
    /// Evaluate every N optimizer steps; absent evaluates at the end of each epoch.
    pub eval_every: Option<u64>,
    /// Save a checkpoint every N optimizer steps.
    pub save_every: Option<u64>,
    /// Checkpoints kept besides the best.
    pub keep_last: Option<usize>,
    /// Stop after this many evaluations without improvement of `metric_for_best`.
    pub early_stopping_patience: Option<usize>,
    /// Minimum improvement that resets the patience.
    pub early_stopping_threshold: f64,
    /// Validation metric that picks `best/`: default `accuracy`, `f1` (token
    /// classification) or `eval_loss` (causal LM).
    pub metric_for_best: Option<String>,
    /// Where everything is written (overridden by `--output-dir`).
    pub output_dir: Option<PathBuf>,
    /// Write a training event every N optimizer steps.
    pub log_every: u64,
    /// Evaluate the pretrained model before training, for a before/after comparison.
    pub eval_at_start: bool,
}

/// The library's defaults ([`TrainerConfig`], [`FitConfig`], [`AdamWConfig`]), written
/// once there; only the run's own settings are chosen here (3 epochs and batches of 8, as
/// transformers' `TrainingArguments`).
impl Default for TrainSection {
    fn default() -> Self {
        let (t, f) = (TrainerConfig::default(), FitConfig::default());
        let adam = AdamWConfig::default();
        TrainSection {
            seed: t.seed,
            epochs: 3,
            max_steps: f.max_steps,
            batch_size: 8,
            eval_batch_size: None,
            grad_accum: f.grad_accum,
            lr: t.lr,
            weight_decay: t.weight_decay,
            adam_beta1: adam.beta1,
            adam_beta2: adam.beta2,
            adam_epsilon: adam.epsilon,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            schedule: Schedule(t.schedule),
            max_grad_norm: t.max_grad_norm.unwrap_or(0.0),
            precision: t.precision,
            gradient_checkpointing: false,
            eval_every: f.eval_every,
            save_every: f.save_every,
            keep_last: None,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            metric_for_best: None,
            output_dir: None,
            log_every: f.log_every,
            eval_at_start: true,
        }
    }
}

fn default_max_length() -> usize {
    128
}

fn default_doc_stride() -> usize {
    crate::QaOptions::default().doc_stride
}

fn default_max_answer_length() -> usize {
    crate::QaOptions::default().max_answer_length
}

fn yes() -> bool {
    true
}

impl RunConfig {
    /// Checks the values the types cannot (ranges, files that must exist,
    /// combinations); relative paths are taken as they are.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] whose `field` is `section.key` (`train.lr`).
    pub fn validate(&self) -> Result<(), TaskError> {
        let err = |field: &str, message: String| {
            Err(TaskError::Invalid {
                field: field.into(),
                message,
            })
        };
        if !self.model.path.join("config.json").is_file() {
            let path = self.model.path.display();
            return err(
                "model.path",
                format!("{path} is not a Hugging Face model directory (no config.json)"),
            );
        }
        for (key, file) in [
            ("data.train", Some(&self.data.train)),
            ("data.validation", self.data.validation.as_ref()),
            ("data.test", self.data.test.as_ref()),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                return err(key, format!("no file {}", file.display()));
            }
        }
        self.validate_model()?;
        if self.data.max_length < 2 {
            return err("data.max_length", "must be at least 2".into());
        }
        if self.data.packing && self.model.task != Task::CausalLm {
            return err(
                "data.packing",
                format!(
                    "packs causal-LM rows only, not {} rows",
                    self.model.task.name()
                ),
            );
        }
        let qa = self.model.task == Task::QuestionAnswering;
        if qa && self.data.doc_stride >= self.data.max_length {
            let (stride, max) = (self.data.doc_stride, self.data.max_length);
            return err(
                "data.doc_stride",
                format!("{stride} tokens, but windows hold at most max_length = {max}"),
            );
        }
        if self.data.max_answer_length == 0 {
            return err("data.max_answer_length", "must be at least 1".into());
        }
        self.validate_train()
    }

    fn validate_model(&self) -> Result<(), TaskError> {
        let err = |field: &str, message: String| {
            Err(TaskError::Invalid {
                field: field.into(),
                message,
            })
        };
        if let (Some(n), Some(labels)) = (self.model.num_labels, &self.model.labels)
            && n != labels.len()
        {
            return err(
                "model.num_labels",
                format!("{n}, but `labels` names {}", labels.len()),
            );
        }
        if self.model.num_labels == Some(0) {
            return err("model.num_labels", "must be at least 1".into());
        }
        let sequence = self.model.task == Task::SequenceClassification;
        if let Some(problem) = self.model.problem_type
            && !sequence
        {
            return err(
                "model.problem_type",
                format!(
                    "{} is a sequence-classification setting; task is {}",
                    problem.name(),
                    self.model.task.name()
                ),
            );
        }
        if let Some(threshold) = self.model.threshold {
            if self.model.problem_type != Some(ProblemType::MultiLabelClassification) {
                return err(
                    "model.threshold",
                    "applies to problem_type = \"multi_label_classification\" only".into(),
                );
            }
            crate::setup::check_threshold(threshold).map_err(|e| match e {
                TaskError::Invalid { message, .. } => TaskError::Invalid {
                    field: "model.threshold".into(),
                    message,
                },
                other => other,
            })?;
        }
        let unlabeled = matches!(self.model.task, Task::CausalLm | Task::QuestionAnswering);
        if unlabeled && (self.model.labels.is_some() || self.model.num_labels.is_some()) {
            let key = if self.model.labels.is_some() {
                "model.labels"
            } else {
                "model.num_labels"
            };
            let task = match self.model.task {
                Task::CausalLm => "causal-LM",
                _ => "question-answering",
            };
            return err(key, format!("a {task} run has no labels: remove it"));
        }
        if let Some(labels) = &self.model.labels {
            if labels.is_empty() {
                return err("model.labels", "is empty: name the classes or tags".into());
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = labels.iter().find(|l| !seen.insert(l.as_str())) {
                return err("model.labels", format!("{twice:?} is named twice"));
            }
            if let Some(blank) = labels.iter().position(|l| l.trim().is_empty()) {
                return err("model.labels", format!("label {blank} is blank"));
            }
        }
        if let Some(p) = self.model.dropout
            && !(0.0..1.0).contains(&p)
        {
            return err("model.dropout", format!("must be in [0, 1), got {p}"));
        }
        Ok(())
    }

    /// `[train]`: what the library's own checks say (named by their keys here), and
    /// the combinations only a run has.
    fn validate_train(&self) -> Result<(), TaskError> {
        let t = &self.train;
        let err = |field: &str, message: String| {
            Err(TaskError::Invalid {
                field: format!("train.{field}"),
                message,
            })
        };
        for (key, v) in [
            ("batch_size", t.batch_size as u64),
            ("eval_batch_size", t.eval_batch_size.map_or(1, |v| v as u64)),
            ("keep_last", t.keep_last.map_or(1, |v| v as u64)),
        ] {
            if v == 0 {
                return err(key, "must be positive".into());
            }
        }
        for (key, v) in [
            ("max_grad_norm", t.max_grad_norm),
            ("early_stopping_threshold", t.early_stopping_threshold),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return err(key, format!("must be ≥ 0, got {v}"));
            }
        }
        if !(0.0..=1.0).contains(&t.warmup_ratio) {
            let ratio = t.warmup_ratio;
            return err("warmup_ratio", format!("must be in [0, 1], got {ratio}"));
        }
        if t.warmup_steps > 0 && t.warmup_ratio > 0.0 {
            let both = "set either warmup_steps or warmup_ratio, not both";
            return err("warmup_ratio", both.into());
        }
        if t.early_stopping_patience.is_some() && self.data.validation.is_none() {
            return err("early_stopping_patience", "needs [data] validation".into());
        }
        if t.early_stopping_patience == Some(0) {
            return err("early_stopping_patience", "must be at least 1".into());
        }
        if let Some(metric) = &t.metric_for_best {
            let problem = self.model.problem_type.unwrap_or_default();
            let known = crate::metric_names(self.model.task, problem);
            if !known.contains(&metric.as_str()) {
                let what = match self.model.task {
                    Task::SequenceClassification => problem.name(),
                    task => task.name(),
                };
                return err(
                    "metric_for_best",
                    format!("{metric:?} is not a metric of {what}: {}", known.join(", ")),
                );
            }
            if self.data.validation.is_none() {
                return err("metric_for_best", "needs [data] validation".into());
            }
        }
        if let Some(problem) = t
            .output_dir
            .as_deref()
            .and_then(|dir| crate::run::unusable_output_dir(dir, &self.model.path))
        {
            return err("output_dir", problem);
        }
        if t.keep_last.is_some() && t.save_every.is_none() {
            return err("keep_last", "needs save_every".into());
        }
        let library = |e: burnish_trainer::TrainError| match e {
            burnish_trainer::TrainError::Invalid { field, message } => TaskError::Invalid {
                field: format!("train.{}", library_key(&field)),
                message,
            },
            other => TaskError::Train(other),
        };
        self.trainer_config(1).validate().map_err(library)?;
        self.fit_config(None).validate().map_err(library)
    }

    /// The metric that picks the best model: `metric_for_best`, or the task's default.
    pub fn metric_for_best(&self) -> String {
        self.train.metric_for_best.clone().unwrap_or_else(|| {
            match (self.model.task, self.model.problem_type.unwrap_or_default()) {
                (Task::SequenceClassification, ProblemType::SingleLabelClassification) => {
                    "accuracy"
                }
                (Task::SequenceClassification, ProblemType::Regression) => "pearson",
                (Task::SequenceClassification, ProblemType::MultiLabelClassification) => "micro_f1",
                (Task::TokenClassification, _) => "f1",
                (Task::CausalLm, _) => "eval_loss",
                (Task::QuestionAnswering, _) => "f1",
            }
            .to_owned()
        })
    }

    /// The trainer's settings for a run of `total_steps` optimizer steps.
    pub fn trainer_config(&self, total_steps: u64) -> TrainerConfig {
        let t = &self.train;
        TrainerConfig {
            lr: t.lr,
            weight_decay: t.weight_decay,
            adam: AdamWConfig {
                beta1: t.adam_beta1,
                beta2: t.adam_beta2,
                epsilon: t.adam_epsilon,
                ..AdamWConfig::default()
            },
            schedule: t.schedule.0.clone(),
            warmup: if t.warmup_ratio > 0.0 {
                Warmup::Ratio(t.warmup_ratio)
            } else {
                Warmup::Steps(t.warmup_steps)
            },
            total_steps,
            max_grad_norm: (t.max_grad_norm > 0.0).then_some(t.max_grad_norm),
            seed: t.seed,
            precision: t.precision,
            ..TrainerConfig::default()
        }
    }

    /// The loop's settings, writing its logs to `output_dir`.
    pub fn fit_config(&self, output_dir: Option<PathBuf>) -> FitConfig {
        let t = &self.train;
        FitConfig {
            epochs: t.epochs,
            max_steps: t.max_steps,
            grad_accum: t.grad_accum,
            eval_every: t.eval_every,
            log_every: t.log_every,
            save_every: t.save_every,
            best_metric: self
                .data
                .validation
                .as_ref()
                .map(|_| BestMetric::named(&self.metric_for_best())),
            early_stopping: t.early_stopping_patience.map(|patience| EarlyStopping {
                patience,
                threshold: t.early_stopping_threshold,
            }),
            output_dir,
        }
    }
}

/// The `[train]` key of a library field (`adam.epsilon` → `adam_epsilon`).
fn library_key(field: &str) -> &str {
    match field {
        "adam.beta1" => "adam_beta1",
        "adam.beta2" => "adam_beta2",
        "adam.epsilon" => "adam_epsilon",
        other => other,
    }
}
