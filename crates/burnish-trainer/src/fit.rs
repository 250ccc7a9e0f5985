//! The epoch loop around [`Trainer::step`]: evaluation, early stopping, logging, hooks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burnish_optim::AdamW;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{IntoStepLoss, Optimizer, StepReport, TrainError, Trainer};

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
    /// `metric`, with the direction guessed as transformers does, and for the errors it
    /// does not know: names containing `loss`, `perplexity` or `mse` are better smaller,
    /// everything else larger.
    pub fn named(metric: &str) -> Self {
        let smaller = ["loss", "perplexity", "mse"];
        BestMetric {
            metric: metric.to_owned(),
            greater_is_better: !smaller.iter().any(|s| metric.contains(s)),
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

    /// This worker's part of micro-batch `index`: what the loop trains on. `None` when the
    /// part is empty, which only a data-parallel shard has (a batch with fewer rows than
    /// workers). By default the whole micro-batch.
    fn local_batch(&mut self, epoch: usize, index: usize) -> Result<Option<Self::Batch>, BoxError> {
        self.batch(epoch, index).map(Some)
    }
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
    /// Passes over the training data (unused when `max_steps` is set).
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever the epochs.
    pub max_steps: Option<u64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Evaluate every N optimizer steps; `None` evaluates at the end of each epoch.
    pub eval_every: Option<u64>,
    /// Write a train event every N optimizer steps.
    pub log_every: u64,
    /// Ask the hooks to save ([`Hooks::save`]) every N optimizer steps, and after each
    /// evaluation that is the best so far (so rotation can keep it); `None` saves only
    /// when a hook asks ([`Control::SAVE`]).
    pub save_every: Option<u64>,
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
            save_every: None,
            best_metric: None,
            early_stopping: None,
            output_dir: None,
        }
    }
}

impl FitConfig {
    /// Checks the values the types cannot: each error names the field.
    ///
    /// # Errors
    /// [`TrainError::Invalid`]; [`TrainError::Config`] for early stopping without a best
    /// metric.
    pub fn validate(&self) -> Result<(), TrainError> {
        let zero = [
            ("epochs", self.max_steps.is_none() && self.epochs == 0),
            ("max_steps", self.max_steps == Some(0)),
            ("grad_accum", self.grad_accum == 0),
            ("eval_every", self.eval_every == Some(0)),
            ("log_every", self.log_every == 0),
            ("save_every", self.save_every == Some(0)),
        ];
        if let Some((field, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(TrainError::Invalid {
                field: (*field).into(),
                message: "must be positive".into(),
            });
        }
        if self.early_stopping.is_some() && self.best_metric.is_none() {
            return Err(TrainError::Config(
                "early stopping needs a best metric to watch".into(),
            ));
        }
        Ok(())
    }

    /// How many optimizer steps a run over `batches_per_epoch` micro-batches per epoch
    /// takes: the one place the total is derived (a shorter last cycle of an epoch is a
    /// step of its own).
    ///
    /// # Errors
    /// [`TrainError::Invalid`] for an empty epoch or invalid settings.
    ///
    /// ```
    /// use burnish_trainer::FitConfig;
    /// let config = FitConfig { epochs: 3, grad_accum: 4, ..Default::default() };
    /// let plan = config.plan(10)?; // 10 micro-batches: cycles of 4, 4, 2
    /// assert_eq!((plan.steps_per_epoch, plan.total_steps), (3, 9));
    /// # Ok::<(), burnish_trainer::TrainError>(())
    /// ```
    pub fn plan(&self, batches_per_epoch: usize) -> Result<StepPlan, TrainError> {
        self.validate()?;
        if batches_per_epoch == 0 {
            return Err(TrainError::Invalid {
                field: "data".into(),
                message: "an epoch needs at least one batch".into(),
            });
        }
        let steps_per_epoch = batches_per_epoch.div_ceil(self.grad_accum) as u64;
        let total_steps = match self.max_steps {
            Some(max) => max,
            None => self.epochs as u64 * steps_per_epoch,
        };
        Ok(StepPlan {
            batches_per_epoch,
            steps_per_epoch,
            total_steps,
            epochs: total_steps.div_ceil(steps_per_epoch) as usize,
        })
    }
}

/// The length of a run, derived from the data and the settings by [`FitConfig::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Micro-batches per epoch.
    pub batches_per_epoch: usize,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: u64,
    /// Optimizer steps of the run (what the LR schedule spans).
    pub total_steps: u64,
    /// Epochs started (the last may be partial under `max_steps`).
    pub epochs: usize,
}

/// What hooks ask of the loop. Flags combine with `|`:
/// `Control::SAVE | Control::STOP` saves a checkpoint and ends the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    /// End the run (after this step's evaluation and save, when due).
    pub stop: bool,
    /// Evaluate after this step, whatever `eval_every` says.
    pub evaluate: bool,
    /// Save after this step, whatever `save_every` says.
    pub save: bool,
}

impl Control {
    /// Go on.
    pub const CONTINUE: Control = Control {
        stop: false,
        evaluate: false,
        save: false,
    };
    /// End the run.
    pub const STOP: Control = Control {
        stop: true,
        ..Control::CONTINUE
    };
    /// Evaluate now.
    pub const EVALUATE: Control = Control {
        evaluate: true,
        ..Control::CONTINUE
    };
    /// Save now.
    pub const SAVE: Control = Control {
        save: true,
        ..Control::CONTINUE
    };
}

impl std::ops::BitOr for Control {
    type Output = Control;

    fn bitor(self, other: Control) -> Control {
        Control {
            stop: self.stop || other.stop,
            evaluate: self.evaluate || other.evaluate,
            save: self.save || other.save,
        }
    }
}

impl std::ops::BitOrAssign for Control {
    fn bitor_assign(&mut self, other: Control) {
        *self = *self | other;
    }
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

/// Callbacks that compose a custom trainer; every method has a default that does nothing.
/// They see the whole [`Trainer`] and the loop's [`FitState`] (what a checkpoint saves);
/// those called between steps get it mutably and may change the model
/// ([`Trainer::map_model`]: gradual unfreezing, say). Each returns a [`Control`]: stop,
/// evaluate now, save now. Two hooks combine as a tuple `(a, b)`: both run, their
/// controls are joined, and the first that saves gives the path.
pub trait Hooks<B: AutodiffBackend, M: AutodiffModule<B>, O = AdamW<B>> {
    /// Once, before the first step (also of a resumed run).
    ///
    /// # Errors
    /// Any error of the hook; the run ends with it.
    fn on_train_begin(
        &mut self,
        _trainer: &mut Trainer<B, M, O>,
        _state: &FitState,
    ) -> Result<Control, BoxError> {
        Ok(Control::CONTINUE)
    }

    /// At the start of each epoch (also of an epoch resumed mid-way).
    ///
    /// # Errors
    /// Any error of the hook.
    fn on_epoch_begin(
        &mut self,
        _trainer: &mut Trainer<B, M, O>,
        _state: &FitState,
    ) -> Result<Control, BoxError> {
        Ok(Control::CONTINUE)
    }

    /// Before each optimizer step.
    ///
    /// # Errors
    /// Any error of the hook.
    fn on_step_begin(
        &mut self,
        _trainer: &mut Trainer<B, M, O>,
        _state: &FitState,
    ) -> Result<Control, BoxError> {
        Ok(Control::CONTINUE)
    }

    /// After each optimizer step, before its evaluation and save.
    ///
    /// # Errors
    /// Any error of the hook.
    fn on_step_end(
        &mut self,
        _trainer: &mut Trainer<B, M, O>,
        _state: &FitState,
        _report: &StepReport,
    ) -> Result<Control, BoxError> {
        Ok(Control::CONTINUE)
    }

    /// After each evaluation (export the best model here, for instance).
    ///
    /// # Errors
    /// Any error of the hook.
    fn on_evaluate(
        &mut self,
        _trainer: &Trainer<B, M, O>,
        _state: &FitState,
        _event: &EvalEvent,
    ) -> Result<Control, BoxError> {
        Ok(Control::CONTINUE)
    }

    /// After the last step of an epoch (`epoch` is the one that ended; `state` is already
    /// at the start of the next).
    ///
    /// # Errors
    /// Any error of the hook.
    fn on_epoch_end(
        &mut self,
        _trainer: &mut Trainer<B, M, O>,
        _state: &FitState,
        _epoch: usize,
    ) -> Result<Control, BoxError> {
        Ok(Control::CONTINUE)
    }

    /// Saves the training state when a save is due (`best`: this step's evaluation is the
    /// best so far); returns where, or `None` when this hook does not save.
    ///
    /// # Errors
    /// Any error of the save; the run ends with it.
    fn save(
        &mut self,
        _trainer: &Trainer<B, M, O>,
        _state: &FitState,
        _best: bool,
    ) -> Result<Option<PathBuf>, BoxError> {
        Ok(None)
    }

    /// After a save, with its path.
    ///
    /// # Errors
    /// Any error of the hook.
    fn on_save(
        &mut self,
        _trainer: &Trainer<B, M, O>,
        _state: &FitState,
        _path: &Path,
    ) -> Result<Control, BoxError> {
        Ok(Control::CONTINUE)
    }

    /// Once, after the last step (not when the run ends with an error).
    ///
    /// # Errors
    /// Any error of the hook.
    fn on_train_end(
        &mut self,
        _trainer: &Trainer<B, M, O>,
        _state: &FitState,
        _summary: &FitSummary,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    /// For each event written to `metrics.jsonl`.
    fn on_log(&mut self, _event: &serde_json::Value) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl<B: AutodiffBackend, M: AutodiffModule<B>, O> Hooks<B, M, O> for NoHooks {}

/// Both hooks run, in order; controls are joined and the first save's path wins.
impl<B, M, O, H1, H2> Hooks<B, M, O> for (H1, H2)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    H1: Hooks<B, M, O>,
    H2: Hooks<B, M, O>,
{
    fn on_train_begin(
        &mut self,
        t: &mut Trainer<B, M, O>,
        s: &FitState,
    ) -> Result<Control, BoxError> {
        Ok(self.0.on_train_begin(t, s)? | self.1.on_train_begin(t, s)?)
    }

    fn on_epoch_begin(
        &mut self,
        t: &mut Trainer<B, M, O>,
        s: &FitState,
    ) -> Result<Control, BoxError> {
        Ok(self.0.on_epoch_begin(t, s)? | self.1.on_epoch_begin(t, s)?)
    }

    fn on_step_begin(
        &mut self,
        t: &mut Trainer<B, M, O>,
        s: &FitState,
    ) -> Result<Control, BoxError> {
        Ok(self.0.on_step_begin(t, s)? | self.1.on_step_begin(t, s)?)
    }

    fn on_step_end(
        &mut self,
        t: &mut Trainer<B, M, O>,
        s: &FitState,
        r: &StepReport,
    ) -> Result<Control, BoxError> {
        Ok(self.0.on_step_end(t, s, r)? | self.1.on_step_end(t, s, r)?)
    }

    fn on_evaluate(
        &mut self,
        t: &Trainer<B, M, O>,
        s: &FitState,
        e: &EvalEvent,
    ) -> Result<Control, BoxError> {
        Ok(self.0.on_evaluate(t, s, e)? | self.1.on_evaluate(t, s, e)?)
    }

    fn on_epoch_end(
        &mut self,
        t: &mut Trainer<B, M, O>,
        s: &FitState,
        epoch: usize,
    ) -> Result<Control, BoxError> {
        Ok(self.0.on_epoch_end(t, s, epoch)? | self.1.on_epoch_end(t, s, epoch)?)
    }

    fn save(
        &mut self,
        t: &Trainer<B, M, O>,
        s: &FitState,
        best: bool,
    ) -> Result<Option<PathBuf>, BoxError> {
        let first = self.0.save(t, s, best)?;
        let second = self.1.save(t, s, best)?;
        Ok(first.or(second))
    }

    fn on_save(
        &mut self,
        t: &Trainer<B, M, O>,
        s: &FitState,
        path: &Path,
    ) -> Result<Control, BoxError> {
        Ok(self.0.on_save(t, s, path)? | self.1.on_save(t, s, path)?)
    }

    fn on_train_end(
        &mut self,
        t: &Trainer<B, M, O>,
        s: &FitState,
        summary: &FitSummary,
    ) -> Result<(), BoxError> {
        self.0.on_train_end(t, s, summary)?;
        self.1.on_train_end(t, s, summary)
    }

    fn on_log(&mut self, event: &serde_json::Value) {
        self.0.on_log(event);
        self.1.on_log(event);
    }
}

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

/// What the loop needs besides the trainer: its settings, the log, the user's evaluation.
struct Run<'a, E> {
    config: &'a FitConfig,
    log: Log,
    evaluate: E,
    evals: Vec<EvalEvent>,
    clock: Instant,
    items_since_log: u64,
}

/// A function giving the validation metrics of the model without autodiff.
type EvalResult = Result<BTreeMap<String, f64>, BoxError>;

impl<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<B, M>> Trainer<B, M, O> {
    /// Trains from the start; see [`fit_from`](Self::fit_from).
    ///
    /// # Errors
    /// As [`fit_from`](Self::fit_from).
    pub fn fit<D: TrainData, L: IntoStepLoss<B>>(
        &mut self,
        config: &FitConfig,
        data: &mut D,
        loss: impl Fn(&M, &D::Batch) -> L,
        evaluate: impl FnMut(&M::InnerModule) -> EvalResult,
        hooks: &mut impl Hooks<B, M, O>,
    ) -> Result<FitSummary, TrainError> {
        self.fit_from(FitState::default(), config, data, loss, evaluate, hooks)
    }

    /// Trains from `state` for `config.epochs` (or up to `max_steps`), stepping once per
    /// `grad_accum` micro-batches (a shorter last cycle of an epoch is kept and normalized
    /// by its own item count), evaluating with `evaluate` every `eval_every` steps or at
    /// the end of each epoch (it gets the model without autodiff, so dropout is off),
    /// logging to `metrics.jsonl`, tracking the best metric, asking the hooks to save
    /// every `save_every` steps, and stopping early or when a hook says so. Writes
    /// `trainer_state.json` at the end.
    ///
    /// Order within a step: `on_step_begin`, the step, the train log event,
    /// `on_step_end`, the evaluation (when due or asked) and `on_evaluate`, the epoch's
    /// end (`on_epoch_end`), the save (when due or asked) and `on_save`, then stopping.
    ///
    /// # Errors
    /// Any [`TrainError`] of a step, of the data or the evaluation, of a hook, or an I/O
    /// error writing the logs; [`TrainError::Invalid`] or [`TrainError::Config`] for
    /// invalid settings.
    pub fn fit_from<D: TrainData, L: IntoStepLoss<B>>(
        &mut self,
        mut state: FitState,
        config: &FitConfig,
        data: &mut D,
        loss: impl Fn(&M, &D::Batch) -> L,
        evaluate: impl FnMut(&M::InnerModule) -> EvalResult,
        hooks: &mut impl Hooks<B, M, O>,
    ) -> Result<FitSummary, TrainError> {
        config.validate()?;
        let mut run = Run {
            config,
            log: Log::open(config.output_dir.as_deref(), &state.history)?,
            evaluate,
            evals: Vec::new(),
            clock: Instant::now(),
            items_since_log: 0,
        };
        let hook = TrainError::Hook;
        let mut stopped_by = "completed";
        if hooks.on_train_begin(self, &state).map_err(hook)?.stop {
            stopped_by = "hook";
        }
        // With `max_steps`, epochs go on until the steps are done.
        while stopped_by == "completed"
            && (config.max_steps.is_some() || state.epoch < config.epochs)
        {
            let epoch = state.epoch;
            let len = data.epoch_len(epoch).map_err(TrainError::Data)?;
            if len == 0 {
                return Err(TrainError::Data(
                    format!("epoch {epoch} has no batch").into(),
                ));
            }
            if hooks.on_epoch_begin(self, &state).map_err(hook)?.stop {
                stopped_by = "hook";
                break;
            }
            // The position moves to the next epoch inside the loop, before the save, so
            // a checkpoint taken there resumes at the right place.
            while state.epoch == epoch {
                if let Some(reason) =
                    self.one_step(&mut run, &mut state, len, data, &loss, hooks)?
                {
                    stopped_by = reason;
                    break;
                }
            }
        }
        let summary = FitSummary {
            steps: self.steps_done(),
            evals: run.evals,
            best: state.best,
            stopped_by,
        };
        if let Some(dir) = &config.output_dir {
            let best = state.best;
            let trainer_state = json!({"global_step": summary.steps, "epoch": state.epoch, "stopped_by": stopped_by,
                "best_metric": best.map(|b| b.0), "best_step": best.map(|b| b.1), "log_history": state.history});
            let path = dir.join("trainer_state.json");
            let text = serde_json::to_string_pretty(&trainer_state).unwrap_or_default();
            std::fs::write(&path, text).map_err(|e| TrainError::Io { path, source: e })?;
        }
        hooks
            .on_train_end(self, &state, &summary)
            .map_err(TrainError::Hook)?;
        Ok(summary)
    }

    /// One optimizer step of the loop with everything around it; `Some(reason)` ends the
    /// run.
    fn one_step<D: TrainData, L: IntoStepLoss<B>>(
        &mut self,
        run: &mut Run<'_, impl FnMut(&M::InnerModule) -> EvalResult>,
        state: &mut FitState,
        len: usize,
        data: &mut D,
        loss: &impl Fn(&M, &D::Batch) -> L,
        hooks: &mut impl Hooks<B, M, O>,
    ) -> Result<Option<&'static str>, TrainError> {
        let config = run.config;
        let hook = TrainError::Hook;
        // A run resumed from its last step has nothing left to do.
        if config.max_steps.is_some_and(|max| self.steps_done() >= max) {
            return Ok(Some("max_steps"));
        }
        let mut control = hooks.on_step_begin(self, state).map_err(hook)?;
        if control.stop {
            return Ok(Some("hook"));
        }
        let epoch = state.epoch;
        let end = (state.batches_done + config.grad_accum).min(len);
        let mut cycle = Vec::with_capacity(end - state.batches_done);
        for i in state.batches_done..end {
            cycle.extend(data.local_batch(epoch, i).map_err(TrainError::Data)?);
        }
        let report = self.step(&cycle, loss)?;
        state.batches_done = end;
        state.loss_sum += report.loss * report.items as f64;
        state.loss_items += report.items;
        run.log_step(state, hooks, &report, epoch)?;
        control |= hooks.on_step_end(self, state, &report).map_err(hook)?;
        let scheduled = match config.eval_every {
            Some(n) => report.step.is_multiple_of(n),
            None => state.batches_done == len,
        };
        let evaluated = scheduled || control.evaluate;
        let mut is_best = false;
        if evaluated {
            let event = self.evaluate_now(state, config, epoch, report.step, &mut run.evaluate)?;
            run.write_event(state, hooks, event_json(&event))?;
            control |= hooks.on_evaluate(self, state, &event).map_err(hook)?;
            is_best = event.is_best;
            run.evals.push(event);
        }
        if state.batches_done == len {
            state.epoch += 1;
            state.batches_done = 0;
            control |= hooks.on_epoch_end(self, state, epoch).map_err(hook)?;
        }
        let save_due = config
            .save_every
            .is_some_and(|n| report.step.is_multiple_of(n) || is_best);
        if (save_due || control.save)
            && let Some(path) = hooks.save(self, state, is_best).map_err(hook)?
        {
            control |= hooks.on_save(self, state, &path).map_err(hook)?;
        }
        if let Some(es) = &config.early_stopping
            && evaluated
            && state.bad_evals >= es.patience
        {
            return Ok(Some("early_stopping"));
        }
        if control.stop {
            return Ok(Some("hook"));
        }
        if config.max_steps.is_some_and(|max| report.step >= max) {
            return Ok(Some("max_steps"));
        }
        Ok(None)
    }

    fn evaluate_now(
        &self,
        state: &mut FitState,
        config: &FitConfig,
        epoch: usize,
        step: u64,
        evaluate: &mut impl FnMut(&M::InnerModule) -> EvalResult,
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

impl<E> Run<'_, E> {
    /// The train event of a step, every `log_every` steps and for every skipped fp16 step.
    fn log_step<B: AutodiffBackend, M: AutodiffModule<B>, O>(
        &mut self,
        state: &mut FitState,
        hooks: &mut impl Hooks<B, M, O>,
        report: &StepReport,
        epoch: usize,
    ) -> Result<(), TrainError> {
        self.items_since_log += report.items;
        if !(report.skipped || report.step.is_multiple_of(self.config.log_every)) {
            return Ok(());
        }
        let seconds = self.clock.elapsed().as_secs_f64();
        let mut event = json!({"event": "train", "step": report.step, "epoch": epoch, "lr": report.lr,
            "loss": report.loss, "grad_norm": report.grad_norm,
            "items_per_second": self.items_since_log as f64 / seconds.max(1e-9)});
        if let Some(scale) = report.loss_scale {
            event["loss_scale"] = json!(scale);
            event["skipped"] = json!(report.skipped);
        }
        for (name, value) in &report.metrics {
            event[name] = json!(value);
        }
        self.write_event(state, hooks, event)?;
        self.clock = Instant::now();
        self.items_since_log = 0;
        Ok(())
    }

    fn write_event<B: AutodiffBackend, M: AutodiffModule<B>, O>(
        &mut self,
        state: &mut FitState,
        hooks: &mut impl Hooks<B, M, O>,
        event: serde_json::Value,
    ) -> Result<(), TrainError> {
        self.log.append(&event)?;
        hooks.on_log(&event);
        state.history.push(event);
        Ok(())
    }
}

fn event_json(event: &EvalEvent) -> serde_json::Value {
    let gap = event.metrics.get("eval_loss").map(|l| l - event.train_loss);
    json!({"event": "eval", "step": event.step, "epoch": event.epoch, "metrics": event.metrics,
           "train_loss": event.train_loss, "generalization_gap": gap, "is_best": event.is_best})
}
