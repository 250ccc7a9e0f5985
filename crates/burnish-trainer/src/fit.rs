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

/// The validation metric that decides the best model (transformers'
/// `metric_for_best_model` and `greater_is_better`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestMetric {
    /// Metric name as returned by the evaluation (e.g. `eval_loss`, `accuracy`).
    pub metric: String,
    /// Whether larger is better (accuracy) or smaller (loss).
    pub greater_is_better: bool,
}

impl BestMetric {
    /// `metric`, with the direction guessed as transformers does: names containing
    /// `loss` or `perplexity` are better smaller, everything else larger.
    pub fn named(metric: &str) -> Self {
        BestMetric {
            metric: metric.to_owned(),
            greater_is_better: !(metric.contains("loss") || metric.contains("perplexity")),
        }
    }
}

/// When to stop because the best metric stopped improving (transformers'
/// `EarlyStoppingCallback`: an evaluation improves when it beats the best by more than
/// `threshold`; after `patience` evaluations without improvement, training stops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Evaluations without improvement before stopping.
    pub patience: usize,
    /// Minimum improvement that counts.
    #[serde(default)]
    pub threshold: f64,
}

/// A boxed error from user code (data loading, evaluation).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The training data of a run, one epoch at a time. Batches are asked for by position, so
/// a resumed run starts mid-epoch without loading the batches it skips.
pub trait TrainData {
    /// A micro-batch.
    type Batch;

    /// Micro-batches in epoch `epoch` (0-based).
    fn epoch_len(&mut self, epoch: usize) -> Result<usize, BoxError>;

    /// Micro-batch `index` of epoch `epoch`.
    fn batch(&mut self, epoch: usize, index: usize) -> Result<Self::Batch, BoxError>;
}

/// The same micro-batches every epoch.
impl<T: Clone> TrainData for Vec<T> {
    type Batch = T;

    fn epoch_len(&mut self, _epoch: usize) -> Result<usize, BoxError> {
        Ok(self.len())
    }

    fn batch(&mut self, _epoch: usize, index: usize) -> Result<T, BoxError> {
        self.get(index)
            .cloned()
            .ok_or_else(|| format!("batch {index} of {}", self.len()).into())
    }
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
    /// The metric that decides the best model; `None` tracks no best.
    pub best_metric: Option<BestMetric>,
    /// Early stopping on [`best_metric`](Self::best_metric); `None` trains to the end.
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
            best_metric: None,
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
    /// Whether this evaluation is the best so far (by the best metric).
    pub is_best: bool,
}

/// Where a run is: enough, with the trainer's own state, to resume it exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FitState {
    /// Epoch being trained (0-based).
    pub epoch: usize,
    /// Micro-batches of this epoch already consumed.
    pub batches_done: usize,
    /// Best value of the best metric and its step.
    pub best: Option<(f64, u64)>,
    /// Evaluations since the last improvement.
    pub bad_evals: usize,
    /// Training loss summed over items since the last evaluation.
    pub loss_sum: f64,
    /// Items behind `loss_sum`.
    pub loss_items: u64,
    /// Every event written to `metrics.jsonl`, in order.
    pub history: Vec<serde_json::Value>,
}

/// Callbacks that let a user compose a custom trainer; every method has a default. They
/// see the whole [`Trainer`] (model, optimizer, schedule) and the loop's [`FitState`], which
/// is what a checkpoint saves.
pub trait Hooks<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// Before each optimizer step.
    fn before_step(&mut self, _trainer: &Trainer<B, M>, _state: &FitState) -> Control {
        Control::Continue
    }

    /// After each optimizer step (and its evaluation, if one was due).
    fn after_step(
        &mut self,
        _trainer: &Trainer<B, M>,
        _state: &FitState,
        _report: &StepReport,
    ) -> Result<Control, BoxError> {
        Ok(Control::Continue)
    }

    /// After each evaluation (save the best model here, for instance).
    fn on_eval(
        &mut self,
        _trainer: &Trainer<B, M>,
        _event: &EvalEvent,
    ) -> Result<Control, BoxError> {
        Ok(Control::Continue)
    }

    /// For each event written to `metrics.jsonl`.
    fn on_log(&mut self, _event: &serde_json::Value) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl<B: AutodiffBackend, M: AutodiffModule<B>> Hooks<B, M> for NoHooks {}

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
    file: Option<(BufWriter<File>, PathBuf)>,
}

impl Log {
    /// Opens `metrics.jsonl`, rewritten with the `history` of the state being resumed (so
    /// events logged after the checkpoint by an interrupted run disappear).
    fn open(dir: Option<&Path>, history: &[serde_json::Value]) -> Result<Self, TrainError> {
        let Some(dir) = dir else {
            return Ok(Log { file: None });
        };
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
            path: dir.to_owned(),
            source: e,
        })?;
        let path = dir.join("metrics.jsonl");
        let file = File::create(&path).map_err(|e| TrainError::Io {
            path: path.clone(),
            source: e,
        })?;
        let mut log = Log {
            file: Some((BufWriter::new(file), path)),
        };
        for event in history {
            log.append(event)?;
        }
        Ok(log)
    }

    fn append(&mut self, event: &serde_json::Value) -> Result<(), TrainError> {
        if let Some((file, path)) = &mut self.file {
            let io = |e| TrainError::Io {
                path: path.clone(),
                source: e,
            };
            writeln!(file, "{event}").map_err(io)?;
            file.flush().map_err(|e| TrainError::Io {
                path: path.clone(),
                source: e,
            })?;
        }
        Ok(())
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Trainer<B, M> {
    /// Trains from the start; see [`fit_from`](Self::fit_from).
    ///
    /// # Errors
    /// As [`fit_from`](Self::fit_from).
    pub fn fit<D: TrainData>(
        &mut self,
        config: &FitConfig,
        data: &mut D,
        loss: impl Fn(&M, &D::Batch) -> LossParts<B>,
        evaluate: impl FnMut(&M::InnerModule) -> Result<BTreeMap<String, f64>, BoxError>,
        hooks: &mut impl Hooks<B, M>,
    ) -> Result<FitSummary, TrainError> {
        self.fit_from(FitState::default(), config, data, loss, evaluate, hooks)
    }

    /// Trains for `config.epochs` from `state`, stepping once per `grad_accum`
    /// micro-batches (a shorter last cycle of an epoch is kept and normalized by its own
    /// item count), evaluating with `evaluate` every `eval_every` steps or at the end of
    /// each epoch (it gets the model without autodiff, so dropout is off), logging to
    /// `metrics.jsonl`, tracking the best metric, and stopping early or by a hook. Writes
    /// `trainer_state.json` at the end.
    ///
    /// # Errors
    /// Any [`TrainError`] of a step, of the data or the evaluation, of a hook, or an I/O
    /// error writing the logs; [`TrainError::Config`] for early stopping without a best
    /// metric.
    pub fn fit_from<D: TrainData>(
        &mut self,
        mut state: FitState,
        config: &FitConfig,
        data: &mut D,
        loss: impl Fn(&M, &D::Batch) -> LossParts<B>,
        mut evaluate: impl FnMut(&M::InnerModule) -> Result<BTreeMap<String, f64>, BoxError>,
        hooks: &mut impl Hooks<B, M>,
    ) -> Result<FitSummary, TrainError> {
        if config.early_stopping.is_some() && config.best_metric.is_none() {
            return Err(TrainError::Config(
                "early stopping needs a best metric to watch".into(),
            ));
        }
        let dir = config.output_dir.as_deref();
        let mut log = Log::open(dir, &state.history)?;
        let mut evals = Vec::new();
        let mut stopped_by = "completed";
        let mut clock = Instant::now();
        let mut items_since_log = 0u64;
        let accum = config.grad_accum.max(1);
        'epochs: while state.epoch < config.epochs {
            let epoch = state.epoch;
            let len = data.epoch_len(epoch).map_err(TrainError::Data)?;
            if len == 0 {
                return Err(TrainError::Data(
                    format!("epoch {epoch} has no batch").into(),
                ));
            }
            // The position moves to the next epoch inside the loop, before `after_step`,
            // so a checkpoint taken there resumes at the right place.
            while state.epoch == epoch {
                // A run resumed from its last step has nothing left to do.
                if config.max_steps.is_some_and(|max| self.steps_done() >= max) {
                    stopped_by = "max_steps";
                    break 'epochs;
                }
                if hooks.before_step(self, &state) == Control::Stop {
                    stopped_by = "hook";
                    break 'epochs;
                }
                let end = (state.batches_done + accum).min(len);
                let cycle = (state.batches_done..end)
                    .map(|i| data.batch(epoch, i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(TrainError::Data)?;
                let report = self.step(&cycle, &loss)?;
                state.batches_done = end;
                state.loss_sum += report.loss * report.items as f64;
                state.loss_items += report.items;
                items_since_log += report.items;
                // Every skipped fp16 step is logged, whatever the logging interval.
                if report.skipped || report.step % config.log_every.max(1) == 0 {
                    let seconds = clock.elapsed().as_secs_f64();
                    let mut event = json!({"event": "train", "step": report.step, "epoch": epoch, "lr": report.lr,
                        "loss": report.loss, "grad_norm": report.grad_norm, "items_per_second": items_since_log as f64 / seconds.max(1e-9)});
                    if let Some(scale) = report.loss_scale {
                        event["loss_scale"] = json!(scale);
                        event["skipped"] = json!(report.skipped);
                    }
                    write_event(&mut log, &mut state, hooks, event)?;
                    clock = Instant::now();
                    items_since_log = 0;
                }
                let eval_now = match config.eval_every {
                    Some(n) => report.step % n.max(1) == 0,
                    None => state.batches_done == len,
                };
                let mut stop = false;
                if eval_now {
                    let event =
                        self.evaluate_now(&mut state, config, epoch, report.step, &mut evaluate)?;
                    write_event(&mut log, &mut state, hooks, event_json(&event))?;
                    stop |= hooks.on_eval(self, &event).map_err(TrainError::Hook)? == Control::Stop;
                    evals.push(event);
                }
                if state.batches_done == len {
                    state.epoch += 1;
                    state.batches_done = 0;
                }
                stop |= hooks
                    .after_step(self, &state, &report)
                    .map_err(TrainError::Hook)?
                    == Control::Stop;
                if let Some(es) = &config.early_stopping
                    && eval_now
                    && state.bad_evals >= es.patience
                {
                    stopped_by = "early_stopping";
                    break 'epochs;
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
            best: state.best,
            stopped_by,
        };
        if let Some(dir) = dir {
            let best = state.best;
            let trainer_state = json!({"global_step": summary.steps, "epoch": state.epoch, "stopped_by": stopped_by,
                "best_metric": best.map(|b| b.0), "best_step": best.map(|b| b.1), "log_history": state.history});
            let path = dir.join("trainer_state.json");
            let text = serde_json::to_string_pretty(&trainer_state).unwrap_or_default();
            std::fs::write(&path, text).map_err(|e| TrainError::Io { path, source: e })?;
        }
        Ok(summary)
    }

    fn evaluate_now(
        &self,
        state: &mut FitState,
        config: &FitConfig,
        epoch: usize,
        step: u64,
        evaluate: &mut impl FnMut(&M::InnerModule) -> Result<BTreeMap<String, f64>, BoxError>,
    ) -> Result<EvalEvent, TrainError> {
        let metrics = evaluate(&self.model().valid()).map_err(TrainError::Eval)?;
        let train_loss = state.loss_sum / state.loss_items.max(1) as f64;
        (state.loss_sum, state.loss_items) = (0.0, 0);
        let mut is_best = false;
        if let Some(goal) = &config.best_metric {
            let value = *metrics.get(&goal.metric).ok_or_else(|| {
                TrainError::Config(format!(
                    "the evaluation returned no `{}` (it returned: {})",
                    goal.metric,
                    metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let threshold = config
                .early_stopping
                .as_ref()
                .map_or(0.0, |es| es.threshold);
            let better = |margin: f64| match state.best {
                None => true,
                Some((b, _)) if goal.greater_is_better => value > b + margin,
                Some((b, _)) => value < b - margin,
            };
            // Best model: any improvement; patience: improvement beyond the threshold.
            if better(threshold) {
                state.bad_evals = 0;
            } else {
                state.bad_evals += 1;
            }
            if better(0.0) {
                state.best = Some((value, step));
                is_best = true;
            }
        }
        Ok(EvalEvent {
            step,
            epoch,
            metrics,
            train_loss,
            is_best,
        })
    }
}

fn event_json(event: &EvalEvent) -> serde_json::Value {
    let gap = event.metrics.get("eval_loss").map(|l| l - event.train_loss);
    json!({"event": "eval", "step": event.step, "epoch": event.epoch, "metrics": event.metrics,
           "train_loss": event.train_loss, "generalization_gap": gap, "is_best": event.is_best})
}

fn write_event<B: AutodiffBackend, M: AutodiffModule<B>>(
    log: &mut Log,
    state: &mut FitState,
    hooks: &mut impl Hooks<B, M>,
    event: serde_json::Value,
) -> Result<(), TrainError> {
    log.append(&event)?;
    hooks.on_log(&event);
    state.history.push(event);
    Ok(())
}
