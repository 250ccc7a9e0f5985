//! The run configuration (`burnish train --config FILE.toml`).
//!
//! Relative paths in the file are relative to the file's own directory, so a config and
//! its data can move together. Unknown keys, wrong types, missing required keys and bad
//! values are refused with one line naming the file, line, section and key.

use std::path::{Path, PathBuf};

use burnish::amp::Precision;
use burnish_data::Task;
use burnish_schedule::ScheduleKind;
use serde::{Deserialize, Deserializer, Serialize};

use crate::CliError;

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
    /// Skip unusable rows (listed in the log) instead of failing.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Where tokenized data is cached; default `<output_dir>/cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
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

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            seed: 42,
            epochs: 3,
            max_steps: None,
            batch_size: 8,
            eval_batch_size: None,
            grad_accum: 1,
            lr: 5e-5,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            schedule: Schedule::default(),
            max_grad_norm: 1.0,
            precision: Precision::Fp32,
            gradient_checkpointing: false,
            eval_every: None,
            save_every: None,
            keep_last: None,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            metric_for_best: None,
            output_dir: None,
            log_every: 10,
            eval_at_start: true,
        }
    }
}

fn default_max_length() -> usize {
    128
}

fn yes() -> bool {
    true
}

/// The `[section]` header in force at byte `at` of `text`, and the key on that line.
fn locate(text: &str, at: usize) -> (usize, Option<String>, Option<String>) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let section = before.lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .map(str::to_owned)
    });
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.starts_with('['));
    (line, section, key)
}

/// The line where `key` is set in `[section]`, if it is written in the file.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == section && t.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

impl RunConfig {
    /// Reads, checks and resolves a config file: relative paths become relative to the
    /// file's directory.
    ///
    /// # Errors
    /// [`CliError::Config`] with one line naming the file, line, section and key.
    pub fn from_file(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::Config {
            location: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Self::from_toml(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        config.validate(&text, path)?;
        Ok(config)
    }

    /// Parses TOML text; `path` only names the source in errors. Paths stay as written.
    ///
    /// # Errors
    /// [`CliError::Config`].
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, CliError> {
        toml::from_str(text).map_err(|e| {
            let (line, section, key) = e
                .span()
                .map(|s| locate(text, s.start))
                .unwrap_or((0, None, None));
            let mut message = e.message().trim().replace('\n', " ");
            let place = match (section, key) {
                (Some(s), Some(k)) if !message.contains(&format!("`{k}`")) => {
                    format!("[{s}] {k}: ")
                }
                (Some(s), _) => format!("[{s}] "),
                (None, Some(k)) => format!("{k}: "),
                (None, None) => String::new(),
            };
            message.insert_str(0, &place);
            CliError::Config {
                location: if line > 0 {
                    format!("{}:{line}", path.display())
                } else {
                    path.display().to_string()
                },
                message,
            }
        })
    }

    /// Makes relative paths relative to the config file's directory `base`.
    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = tidy(&base.join(&*p));
            }
        };
        fix(&mut self.model.path);
        fix(&mut self.data.train);
        for p in [
            &mut self.data.validation,
            &mut self.data.test,
            &mut self.data.cache_dir,
            &mut self.train.output_dir,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// Checks values the types cannot (ranges, files that must exist, combinations).
    ///
    /// # Errors
    /// [`CliError::Config`] naming the first offending key.
    pub fn validate(&self, text: &str, path: &Path) -> Result<(), CliError> {
        let err = |section: &str, key: &str, message: String| CliError::Config {
            location: match line_of(text, section, key) {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            },
            message: format!("[{section}] {key}: {message}"),
        };
        if !self.model.path.join("config.json").is_file() {
            return Err(err(
                "model",
                "path",
                format!(
                    "{} is not a Hugging Face model directory (no config.json)",
                    self.model.path.display()
                ),
            ));
        }
        for (key, file) in [
            ("train", Some(&self.data.train)),
            ("validation", self.data.validation.as_ref()),
            ("test", self.data.test.as_ref()),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(err("data", key, format!("no file {}", file.display())));
            }
        }
        if let (Some(n), Some(labels)) = (self.model.num_labels, &self.model.labels)
            && n != labels.len()
        {
            return Err(err(
                "model",
                "num_labels",
                format!("{n}, but `labels` names {}", labels.len()),
            ));
        }
        if self.model.num_labels == Some(0) {
            return Err(err("model", "num_labels", "must be at least 1".into()));
        }
        if let Some(p) = self.model.dropout
            && !(0.0..1.0).contains(&p)
        {
            return Err(err(
                "model",
                "dropout",
                format!("must be in [0, 1), got {p}"),
            ));
        }
        if self.data.max_length < 2 {
            return Err(err("data", "max_length", "must be at least 2".into()));
        }
        let t = &self.train;
        let positive = [
            ("epochs", t.epochs as f64),
            ("batch_size", t.batch_size as f64),
            ("grad_accum", t.grad_accum as f64),
            ("lr", t.lr),
            ("log_every", t.log_every as f64),
        ];
        for (key, v) in positive {
            if !(v > 0.0 && v.is_finite()) {
                return Err(err("train", key, format!("must be positive, got {v}")));
            }
        }
        for (key, v) in [
            ("eval_batch_size", t.eval_batch_size.map(|v| v as u64)),
            ("max_steps", t.max_steps),
            ("eval_every", t.eval_every),
            ("save_every", t.save_every),
            ("keep_last", t.keep_last.map(|v| v as u64)),
        ] {
            if v == Some(0) {
                return Err(err("train", key, "must be positive".into()));
            }
        }
        for (key, v) in [
            ("weight_decay", t.weight_decay),
            ("max_grad_norm", t.max_grad_norm),
            ("adam_epsilon", t.adam_epsilon),
            ("early_stopping_threshold", t.early_stopping_threshold),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(err("train", key, format!("must be ≥ 0, got {v}")));
            }
        }
        for (key, v) in [("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(err("train", key, format!("must be in [0, 1), got {v}")));
            }
        }
        if !(0.0..=1.0).contains(&t.warmup_ratio) {
            return Err(err(
                "train",
                "warmup_ratio",
                format!("must be in [0, 1], got {}", t.warmup_ratio),
            ));
        }
        if t.warmup_steps > 0 && t.warmup_ratio > 0.0 {
            return Err(err(
                "train",
                "warmup_ratio",
                "set either warmup_steps or warmup_ratio, not both".into(),
            ));
        }
        if t.early_stopping_patience.is_some() && self.data.validation.is_none() {
            return Err(err(
                "train",
                "early_stopping_patience",
                "needs [data] validation".into(),
            ));
        }
        if t.keep_last.is_some() && t.save_every.is_none() {
            return Err(err("train", "keep_last", "needs save_every".into()));
        }
        Ok(())
    }

    /// The metric that picks the best model: `metric_for_best`, or the task's default.
    pub fn metric_for_best(&self) -> String {
        self.train.metric_for_best.clone().unwrap_or_else(|| {
            match self.model.task {
                Task::SequenceClassification => "accuracy",
                Task::TokenClassification => "f1",
                Task::CausalLm => "eval_loss",
            }
            .to_owned()
        })
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (printed paths stay readable;
/// like Python's `os.path.normpath`, a symlinked `b` is not followed);
/// a `..` that would climb above the start is kept.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunConfig, String> {
        RunConfig::from_toml(text, Path::new("run.toml")).map_err(|e| e.to_string())
    }

    const MINIMAL: &str =
        "[model]\npath = \"m\"\ntask = \"sequence-classification\"\n[data]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn defaults_and_schedule_forms() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.train, TrainSection::default());
        assert_eq!(c.data.max_length, 128);
        let c = parse(&format!("{MINIMAL}[train]\nschedule = \"cosine\"\n")).unwrap();
        assert!(matches!(c.train.schedule.0, ScheduleKind::Cosine { .. }));
        let c = parse(&format!(
            "{MINIMAL}[train]\nschedule = {{ type = \"polynomial\", power = 2.0 }}\n"
        ))
        .unwrap();
        assert!(
            matches!(c.train.schedule.0, ScheduleKind::Polynomial { power, .. } if power == 2.0)
        );
    }

    #[test]
    fn errors_name_line_section_and_key() {
        let e = parse(&format!("{MINIMAL}[train]\nlr = \"fast\"\n")).unwrap_err();
        assert!(e.starts_with("run.toml:7: [train] lr: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse(&format!("{MINIMAL}[train]\nlearning_rate = 1e-3\n")).unwrap_err();
        assert!(e.starts_with("run.toml:7: [train] "), "{e}");
        assert!(e.contains("unknown field `learning_rate`"), "{e}");
        let e = parse("[model]\ntask = \"causal-lm\"\n[data]\ntrain = \"x\"\n").unwrap_err();
        assert!(e.contains("missing field `path`"), "{e}");
        let e = parse(&MINIMAL.replace("sequence-classification", "regression")).unwrap_err();
        assert!(e.starts_with("run.toml:3: [model] task: "), "{e}");
        let e = parse(&format!("{MINIMAL}[train]\nschedule = \"cosinus\"\n")).unwrap_err();
        assert!(
            e.contains("[train] schedule") && e.contains("cosine,"),
            "{e}"
        );
    }

    #[test]
    fn values_are_checked_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("t.jsonl"), "").unwrap();
        let file = dir.path().join("run.toml");
        let check = |extra: &str| {
            std::fs::write(&file, format!("{MINIMAL}{extra}")).unwrap();
            RunConfig::from_file(&file).map_err(|e| e.to_string())
        };
        let c = check("").unwrap();
        assert_eq!(c.model.path, model, "relative to the config file");
        assert_eq!(
            tidy(Path::new("examples/configs/../../runs/x")),
            Path::new("runs/x")
        );
        assert_eq!(tidy(Path::new("../a/./b/..")), Path::new("../a"));
        assert_eq!(tidy(Path::new("a/..")), Path::new("."));
        let e = check("[train]\nepochs = 2\nlr = -1.0\n").unwrap_err();
        assert!(
            e.ends_with("run.toml:8: [train] lr: must be positive, got -1"),
            "{e}"
        );
        let e = check("[train]\nwarmup_steps = 10\nwarmup_ratio = 0.1\n").unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let c = check("[train]\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(c.train.precision, Precision::Bf16);
        let e = check("[train]\nprecision = \"fp8\"\n").unwrap_err();
        assert!(e.contains("[train] precision"), "{e}");
        std::fs::write(&file, MINIMAL.replace("t.jsonl", "missing.jsonl")).unwrap();
        let e = RunConfig::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("[data] train: no file"), "{e}");
    }
}
