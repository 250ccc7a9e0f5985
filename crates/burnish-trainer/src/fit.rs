//! The epoch loop around [`Trainer::step`]: evaluation, early stopping, logging, hooks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burnish_heads::LossParts;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{StepReport, TrainError, Trainer};

/// When to stop because the validation metric stopped improving (transformers'
/// `EarlyStoppingCallback` semantics: an evaluation improves when it beats the best by more
/// than `threshold`; after `patience` evaluations without improvement, training stops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Metric name as returned by the evaluation (e.g. `eval_loss`, `accuracy`).
    pub metric: String,
    /// Whether larger is better (accuracy) or smaller (loss).
    pub greater_is_better: bool,
    /// Evaluations without improvement before stopping.
    pub patience: usize,
    /// Minimum improvement that counts.
    #[serde(default)]
    pub threshold: f64,
}

/// The loop's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// Passes over the training data.
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever the epochs.
    pub max_steps: Option<u64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Evaluate every N optimizer steps; `None` evaluates at the end of each epoch.
    pub eval_every: Option<u64>,
    /// Write a train event every N optimizer steps.
    pub log_every: u64,
    /// Early stopping; `None` trains to the end.
    pub early_stopping: Option<EarlyStopping>,
    /// Where `metrics.jsonl` and `trainer_state.json` go; `None` writes nothing.
    pub output_dir: Option<PathBuf>,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 1,
            max_steps: None,
            grad_accum: 1,
            eval_every: None,
            log_every: 10,
            early_stopping: None,
            output_dir: None,
        }
    }
}

/// Whether the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop after this step.
    Stop,
}

/// One evaluation: the metrics, and how the training loss compares (overfitting signal).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalEvent {
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch (0-based) being trained.
    pub epoch: usize,
    /// Metrics from the evaluation function (`eval_loss`, `accuracy`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    /// Whether this evaluation is the best so far (by the early-stopping metric).
    pub is_best: bool,
}

/// Callbacks that let a user compose a custom trainer; every method has a default.
pub trait Hooks<M> {
    /// After each optimizer step.
    fn after_step(&mut self, _model: &M, _report: &StepReport) -> Control {
        Control::Continue
    }

    /// After each evaluation (save the best model here, for instance).
    fn on_eval(&mut self, _model: &M, _event: &EvalEvent) -> Control {
        Control::Continue
    }

    /// For each event written to `metrics.jsonl`.
    fn on_log(&mut self, _event: &serde_json::Value) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl<M> Hooks<M> for NoHooks {}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    /// Optimizer steps done.
    pub steps: u64,
    /// Every evaluation, in order.
    pub evals: Vec<EvalEvent>,
    /// Best value of the early-stopping metric and its step.
    pub best: Option<(f64, u64)>,
    /// Why the run stopped: `completed`, `max_steps`, `early_stopping` or `hook`.
    pub stopped_by: &'static str,
}

struct Log {
    file: Option<BufWriter<File>>,
    history: Vec<serde_json::Value>,
}

impl Log {
    fn open(dir: Option<&Path>) -> Result<Self, TrainError> {
        let file = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
                    path: dir.to_owned(),
                    source: e,
                })?;
                let path = dir.join("metrics.jsonl");
                Some(BufWriter::new(
                    File::create(&path).map_err(|e| TrainError::Io { path, source: e })?,
                ))
            }
            None => None,
        };
        Ok(Log {
            file,
            history: Vec::new(),
        })
    }

    fn write<M>(
        &mut self,
        event: serde_json::Value,
        hooks: &mut impl Hooks<M>,
        dir: Option<&Path>,
    ) -> Result<(), TrainError> {
        if let Some(file) = &mut self.file {
            let path = || dir.map(|d| d.join("metrics.jsonl")).unwrap_or_default();
            writeln!(file, "{event}").map_err(|e| TrainError::Io {
                path: path(),
                source: e,
            })?;
            file.flush().map_err(|e| TrainError::Io {
                path: path(),
                source: e,
            })?;
        }
        hooks.on_log(&event);
        self.history.push(event);
        Ok(())
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Trainer<B, M> {
    /// Trains for `config.epochs` over the micro-batches `batches(epoch)` returns, stepping
    /// once per `grad_accum` micro-batches (a shorter last cycle is kept and normalized by
    /// its own item count), evaluating with `evaluate` (which gets the model without
    /// autodiff, so dropout is off), logging to `metrics.jsonl`, and stopping early or by a
    /// hook. Writes `trainer_state.json` at the end.
    ///
    /// # Errors
    /// Any [`TrainError`] of a step, or an I/O error writing the logs.
    pub fn fit<T>(
        &mut self,
        config: &FitConfig,
        mut batches: impl FnMut(usize) -> Vec<T>,
        loss: impl Fn(&M, &T) -> LossParts<B>,
        mut evaluate: impl FnMut(&M::InnerModule) -> BTreeMap<String, f64>,
        hooks: &mut impl Hooks<M>,
    ) -> Result<FitSummary, TrainError> {
        let dir = config.output_dir.as_deref();
        let mut log = Log::open(dir)?;
        let mut evals = Vec::new();
        let mut best: Option<(f64, u64)> = None;
        let mut bad_evals = 0;
        let (mut loss_sum, mut loss_items) = (0.0, 0u64);
        let mut stopped_by = "completed";
        let mut clock = Instant::now();
        let mut items_since_log = 0u64;
        'epochs: for epoch in 0..config.epochs {
            let epoch_batches = batches(epoch);
            let cycles: Vec<&[T]> = epoch_batches.chunks(config.grad_accum.max(1)).collect();
            let last_cycle = cycles.len();
            for (i, cycle) in cycles.into_iter().enumerate() {
                let report = self.step(cycle, &loss)?;
                loss_sum += report.loss * report.items as f64;
                loss_items += report.items;
                items_since_log += report.items;
                if report.step % config.log_every.max(1) == 0 {
                    let seconds = clock.elapsed().as_secs_f64();
                    let event = json!({"event": "train", "step": report.step, "epoch": epoch, "lr": report.lr,
                        "loss": report.loss, "grad_norm": report.grad_norm, "items_per_second": items_since_log as f64 / seconds.max(1e-9)});
                    log.write(event, hooks, dir)?;
                    clock = Instant::now();
                    items_since_log = 0;
                }
                let mut stop = hooks.after_step(self.model(), &report) == Control::Stop;
                let eval_now = match config.eval_every {
                    Some(n) => report.step % n.max(1) == 0,
                    None => i + 1 == last_cycle,
                };
                if eval_now {
                    let metrics = evaluate(&self.model().valid());
                    let train_loss = loss_sum / loss_items.max(1) as f64;
                    (loss_sum, loss_items) = (0.0, 0);
                    let mut is_best = false;
                    if let Some(es) = &config.early_stopping
                        && let Some(&value) = metrics.get(&es.metric)
                    {
                        let improved = match best {
                            None => true,
                            Some((b, _)) if es.greater_is_better => value > b + es.threshold,
                            Some((b, _)) => value < b - es.threshold,
                        };
                        if improved {
                            best = Some((value, report.step));
                            bad_evals = 0;
                            is_best = true;
                        } else {
                            bad_evals += 1;
                        }
                    }
                    let event = EvalEvent {
                        step: report.step,
                        epoch,
                        metrics,
                        train_loss,
                        is_best,
                    };
                    let gap = event.metrics.get("eval_loss").map(|l| l - train_loss);
                    log.write(
                        json!({"event": "eval", "step": report.step, "epoch": epoch, "metrics": event.metrics,
                               "train_loss": train_loss, "generalization_gap": gap, "is_best": is_best}),
                        hooks,
                        dir,
                    )?;
                    stop |= hooks.on_eval(self.model(), &event) == Control::Stop;
                    evals.push(event);
                    if let Some(es) = &config.early_stopping
                        && bad_evals >= es.patience
                    {
                        stopped_by = "early_stopping";
                        break 'epochs;
                    }
                }
                if stop {
                    stopped_by = "hook";
                    break 'epochs;
                }
                if config.max_steps.is_some_and(|max| report.step >= max) {
                    stopped_by = "max_steps";
                    break 'epochs;
                }
            }
        }
        let summary = FitSummary {
            steps: self.steps_done(),
            evals,
            best,
            stopped_by,
        };
        if let Some(dir) = dir {
            let state = json!({"global_step": summary.steps, "stopped_by": stopped_by,
                "best_metric": best.map(|b| b.0), "best_step": best.map(|b| b.1), "log_history": log.history});
            let path = dir.join("trainer_state.json");
            let text = serde_json::to_string_pretty(&state).unwrap_or_default();
            std::fs::write(&path, text).map_err(|e| TrainError::Io { path, source: e })?;
        }
        Ok(summary)
    }
}
