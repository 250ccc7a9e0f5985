#![doc = include_str!("../README.md")]

mod fit;
pub mod metrics;
mod parts;

pub use burnish_grad::{GradSync, SyncError};
pub use fit::{
    BestMetric, BoxError, Control, EarlyStopping, EvalEvent, FitConfig, FitState, FitSummary,
    Hooks, NoHooks, StepPlan, TrainData,
};
pub use parts::{IntoStepLoss, LrSchedule, Optimizer, StepLoss};

use std::collections::BTreeMap;
use std::marker::PhantomData;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use burnish_amp::{LossScaler, LossScalerConfig, Precision, ScalerState};
use burnish_grad::{GradAccumulator, GradError, NormType, clip_grad_norm};
use burnish_optim::{AdamW, AdamWConfig, OptimError, ParamGroups};
use burnish_schedule::{ScheduleConfig, ScheduleError, ScheduleKind, Warmup};
use serde::{Deserialize, Serialize};

/// Optimization settings of a run; the defaults are the Hugging Face Trainer's, with the
/// fine-tuning recipe's weight decay of 0.01.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay (biases and norm weights excluded by the default groups).
    pub weight_decay: f64,
    /// AdamW β1, β2, ε, AMSGrad (weight decay is taken from `weight_decay`).
    pub adam: AdamWConfig,
    /// Parameter groups.
    pub groups: ParamGroups,
    /// Schedule family.
    pub schedule: ScheduleKind,
    /// Warmup length.
    pub warmup: Warmup,
    /// Optimizer steps the schedule spans ([`StepPlan`] derives it from the data).
    pub total_steps: u64,
    /// Global-norm clipping threshold; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Seeds the thread's generator (`burnish_models::random::seed_thread`, the one
    /// burnish's dropout draws from) and the backend's before each step with a value derived
    /// from this seed and the step number, so dropout masks depend on the step alone: a run
    /// resumed at step N draws the masks the uninterrupted run drew.
    pub seed: u64,
    /// Compute precision; `Fp16` turns on dynamic loss scaling. The model's own compute
    /// dtype is set on the model (see the crate docs); [`Trainer::new`] checks that the
    /// backend has the dtype.
    pub precision: Precision,
    /// The fp16 loss scaler's settings (torch's defaults); unused in other precisions.
    pub loss_scaler: LossScalerConfig,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            lr: 5e-5,
            weight_decay: 0.01,
            adam: AdamWConfig::default(),
            groups: ParamGroups::default(),
            schedule: ScheduleKind::Linear,
            warmup: Warmup::Steps(0),
            total_steps: 1000,
            max_grad_norm: Some(1.0),
            seed: 42,
            precision: Precision::Fp32,
            loss_scaler: LossScalerConfig::default(),
        }
    }
}

impl TrainerConfig {
    /// Checks the values the types cannot: each error names the field.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] for the first field out of range.
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid = |field: &'static str, message: String| {
            Err(TrainError::Invalid {
                field: field.into(),
                message,
            })
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return invalid("lr", format!("must be positive, got {}", self.lr));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return invalid(
                "weight_decay",
                format!("must be ≥ 0 and finite, got {}", self.weight_decay),
            );
        }
        if let Some(max) = self.max_grad_norm
            && !(max > 0.0 && max.is_finite())
        {
            return invalid(
                "max_grad_norm",
                format!("must be positive and finite, got {max}"),
            );
        }
        if self.total_steps == 0 {
            return invalid("total_steps", "must be at least 1".into());
        }
        let adam = AdamWConfig {
            weight_decay: self.weight_decay,
            ..self.adam.clone()
        };
        match adam.validate() {
            Err(OptimError::InvalidHyperParameter { field, value }) => Err(TrainError::Invalid {
                field: match field {
                    "weight_decay" => field.into(),
                    _ => format!("adam.{field}"),
                },
                message: match field {
                    "beta1" | "beta2" => format!("must be in [0, 1), got {value}"),
                    "epsilon" => format!("must be > 0 and finite, got {value}"),
                    _ => format!("must be ≥ 0 and finite, got {value}"),
                },
            }),
            other => other.map_err(TrainError::Optim),
        }?;
        self.groups.validate().map_err(|e| match e {
            OptimError::InvalidHyperParameter { field, value } => TrainError::Invalid {
                field: format!("groups.{field}"),
                message: format!("a group rule's {field} is {value}: must be > 0 (≥ 0 for weight_decay) and finite"),
            },
            other => TrainError::Optim(other),
        })
    }
}

/// Why training could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The schedule configuration is invalid.
    #[error("schedule: {0}")]
    Schedule(#[from] ScheduleError),
    /// The optimizer configuration is invalid.
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    /// A setting is out of range; `field` is its name in [`TrainerConfig`] or
    /// [`FitConfig`].
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`lr`, `grad_accum`, ...).
        field: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The learning rate is 0 at every step of the run: training would change nothing.
    #[error(
        "the learning rate is 0 at every one of the {total_steps} steps (warmup {warmup:?} \
         leaves no step with a positive rate): raise total_steps or shorten the warmup"
    )]
    ZeroSchedule {
        /// Steps the schedule spans.
        total_steps: u64,
        /// The configured warmup.
        warmup: Warmup,
    },
    /// The backend cannot compute in the requested precision.
    #[error(
        "precision {precision}: this backend has no {dtype:?} tensors (burn-flex and CUDA \
         have float16 and bfloat16, burn-wgpu float16 only, burn-ndarray float32 only)"
    )]
    Precision {
        /// The requested precision.
        precision: Precision,
        /// The dtype the backend lacks.
        dtype: burn::tensor::FloatDType,
    },
    /// The loss scaler's settings or restored state are invalid.
    #[error("loss scaler: {0}")]
    Amp(#[from] burnish_amp::AmpError),
    /// Clipping or accumulation failed (for example a cycle without any label).
    #[error("gradients: {0}")]
    Grad(#[from] GradError),
    /// A step was asked with no micro-batch.
    #[error("a step needs at least one micro-batch")]
    NoMicroBatch,
    /// Loading a batch failed.
    #[error("data: {0}")]
    Data(BoxError),
    /// The evaluation function failed.
    #[error("evaluation: {0}")]
    Eval(BoxError),
    /// A hook failed (a checkpoint could not be saved, say).
    #[error("{0}")]
    Hook(BoxError),
    /// The loss function returned an error.
    #[error("loss: {0}")]
    Loss(BoxError),
    /// The optimizer state could not be saved or restored.
    #[error("optimizer state: {0}")]
    OptimState(BoxError),
    /// The loop's settings contradict each other.
    #[error("{0}")]
    Config(String),
    /// Writing logs or state failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Optimizer steps completed, this one included.
    pub step: u64,
    /// Mean loss over the cycle's items.
    pub loss: f64,
    /// Global gradient norm before clipping (of the normalized, unscaled gradients); NaN
    /// for a skipped step.
    pub grad_norm: f64,
    /// Learning rate used for this step (the one it would have used, when skipped).
    pub lr: f64,
    /// Items (examples or label tokens) in the cycle.
    pub items: u64,
    /// fp16 only: the gradients had inf/NaN, so neither the optimizer nor the schedule
    /// stepped (the step still counts, as in transformers' `global_step`).
    pub skipped: bool,
    /// fp16 only: the loss scale this step used.
    pub loss_scale: Option<f32>,
    /// The loss function's extra metrics, as means over the cycle's items.
    pub metrics: BTreeMap<String, f64>,
}

/// The trainer's own state between steps, beside the model and optimizer: what a
/// checkpoint needs to resume it exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed (the dropout seed of the next step; minus the skipped
    /// ones, the schedule position).
    pub steps_done: u64,
    /// The fp16 loss scaler (scale, growth tracker, skips); `None` in other precisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<ScalerState>,
}

/// A model with its optimizer and schedule, stepped one accumulation cycle at a time.
/// `O` is the optimizer, burnish's [`AdamW`] unless [`Trainer::with_parts`] says otherwise.
pub struct Trainer<B: AutodiffBackend, M: AutodiffModule<B>, O = AdamW<B>> {
    model: Option<M>,
    optim: O,
    schedule: Box<dyn LrSchedule>,
    config: TrainerConfig,
    step: u64,
    scaler: Option<LossScaler>,
    sync: Option<Box<dyn GradSync<B::InnerBackend>>>,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>, O> std::fmt::Debug for Trainer<B, M, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("scaler", &self.scaler)
            .field(
                "rank",
                &self.sync.as_ref().map(|s| (s.rank(), s.world_size())),
            )
            .finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Trainer<B, M> {
    /// A trainer at step 0 with burnish's AdamW and the schedule of `config`.
    ///
    /// # Errors
    /// [`TrainError::Invalid`], [`TrainError::Schedule`] or [`TrainError::Optim`] for
    /// invalid settings; [`TrainError::ZeroSchedule`] when the schedule never leaves 0;
    /// [`TrainError::Precision`] when the backend lacks the precision's dtype.
    pub fn new(model: M, config: TrainerConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let schedule = ScheduleConfig {
            kind: config.schedule.clone(),
            peak_lr: config.lr,
            total_steps: config.total_steps,
            warmup: config.warmup,
        }
        .build()?;
        let adam = AdamWConfig {
            weight_decay: config.weight_decay,
            ..config.adam.clone()
        };
        let optim = AdamW::new(adam, config.groups.clone())?;
        optim.check_module(&model)?;
        Trainer::with_parts(model, config, optim, schedule)
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>, O> Trainer<B, M, O> {
    /// A trainer at step 0 with any optimizer and any learning-rate schedule (`config`'s
    /// `lr`, `schedule`, `warmup`, `weight_decay`, `adam` and `groups` are then unused:
    /// the parts carry their own settings).
    ///
    /// # Errors
    /// [`TrainError::ZeroSchedule`] when `schedule` is 0 at every one of
    /// `config.total_steps` steps; [`TrainError::Precision`]; [`TrainError::Amp`] for bad
    /// loss-scaler settings.
    pub fn with_parts(
        model: M,
        config: TrainerConfig,
        optim: O,
        schedule: impl LrSchedule + 'static,
    ) -> Result<Self, TrainError> {
        if config.total_steps == 0 {
            return Err(TrainError::Invalid {
                field: "total_steps".into(),
                message: "must be at least 1".into(),
            });
        }
        // Bounded: a schedule still at 0 after 2^24 steps is as useless as one that is always 0.
        if (0..config.total_steps.min(1 << 24)).all(|s| schedule.lr(s) <= 0.0) {
            return Err(TrainError::ZeroSchedule {
                total_steps: config.total_steps,
                warmup: config.warmup,
            });
        }
        let dtype = config.precision.compute_dtype();
        if let Some(device) = model.devices().first()
            && !B::supports_dtype(device, dtype.into())
        {
            return Err(TrainError::Precision {
                precision: config.precision,
                dtype,
            });
        }
        let scaler = match config.precision.needs_loss_scaling() {
            true => Some(LossScaler::new(config.loss_scaler.clone())?),
            false => None,
        };
        Ok(Trainer {
            model: Some(model),
            optim,
            schedule: Box::new(schedule),
            config,
            step: 0,
            scaler,
            sync: None,
            backend: PhantomData,
        })
    }

    /// The model.
    pub fn model(&self) -> &M {
        // Only `step` and `map_model` take the model out, and they always put one back.
        self.model
            .as_ref()
            .expect("the model is present between steps")
    }

    /// Changes the model between steps (unfreeze a layer, swap a head's dropout); the
    /// optimizer keeps its state by parameter path.
    pub fn map_model(&mut self, change: impl FnOnce(M) -> M) {
        let model = self
            .model
            .take()
            .expect("the model is present between steps");
        self.model = Some(change(model));
    }

    /// Ends training and returns the model.
    pub fn into_model(mut self) -> M {
        self.model
            .take()
            .expect("the model is present between steps")
    }

    /// Optimizer steps completed.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// The optimizer (for its state and group assignments).
    pub fn optimizer(&self) -> &O {
        &self.optim
    }

    /// The learning rate of the next step.
    pub fn next_lr(&self) -> f64 {
        self.schedule.lr(self.schedule_position())
    }

    /// The settings.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The fp16 loss scaler's state (`None` in other precisions), for checkpoints.
    pub fn scaler_state(&self) -> Option<ScalerState> {
        self.scaler.as_ref().map(LossScaler::state)
    }

    /// Steps whose optimizer update was skipped for inf/NaN gradients (fp16).
    pub fn skipped_steps(&self) -> u64 {
        self.scaler.as_ref().map_or(0, |s| s.state().total_skips)
    }

    /// The trainer's state besides model and optimizer, for a checkpoint.
    pub fn state(&self) -> TrainerState {
        TrainerState {
            steps_done: self.step,
            scaler: self.scaler_state(),
        }
    }

    /// Makes this trainer one worker of a data-parallel run: from the next step, each
    /// cycle's summed gradients, item count and loss are summed over all workers with
    /// `sync` before the division by the item count, so every worker clips and steps with
    /// the gradient of the whole global batch (the mean over all its items), and the
    /// report's loss and items are the global ones. A worker may then be given an empty
    /// cycle (its part of a small last batch); it still takes part. Extra step metrics
    /// stay this worker's own. The dropout stream of rank `r > 0` differs from rank 0's.
    ///
    /// Every worker must start from the same model, optimizer state and settings.
    pub fn with_grad_sync(mut self, sync: impl GradSync<B::InnerBackend> + 'static) -> Self {
        self.sync = Some(Box::new(sync));
        self
    }

    /// This worker's rank and the number of workers (`(0, 1)` without data parallelism).
    pub fn rank(&self) -> (usize, usize) {
        self.sync
            .as_ref()
            .map_or((0, 1), |s| (s.rank(), s.world_size()))
    }

    /// Ends this worker's part in the data-parallel group, if it has one.
    ///
    /// # Errors
    /// [`TrainError::Grad`] when leaving the group failed.
    pub fn finish_grad_sync(&mut self) -> Result<(), TrainError> {
        match self.sync.take() {
            Some(mut sync) => Ok(sync.finish().map_err(GradError::from)?),
            None => Ok(()),
        }
    }

    /// The schedule's position: steps done minus the skipped ones (transformers skips
    /// `lr_scheduler.step()` when the scaler skipped the optimizer).
    fn schedule_position(&self) -> u64 {
        self.step.saturating_sub(self.skipped_steps())
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<B, M>> Trainer<B, M, O> {
    /// The optimizer's state as bytes, for a checkpoint.
    ///
    /// # Errors
    /// [`TrainError::OptimState`].
    pub fn optimizer_state_bytes(&self) -> Result<Vec<u8>, TrainError> {
        self.optim.state_bytes().map_err(TrainError::OptimState)
    }

    /// Puts the trainer back where a checkpoint left it: the optimizer state (bytes of
    /// [`optimizer_state_bytes`](Self::optimizer_state_bytes), checked against the model),
    /// the steps done and, in fp16, the loss scaler's state.
    ///
    /// # Errors
    /// [`TrainError::OptimState`] when the optimizer state does not fit the model;
    /// [`TrainError::Amp`] for an invalid scaler state; [`TrainError::Config`] when the
    /// scaler state is missing in fp16 or present in another precision.
    pub fn restore(&mut self, optimizer: &[u8], state: TrainerState) -> Result<(), TrainError> {
        if let Some(saved) = &state.scaler
            && saved.total_skips > state.steps_done
        {
            return Err(TrainError::Config(format!(
                "the saved state has {} skipped steps out of {} steps done",
                saved.total_skips, state.steps_done
            )));
        }
        match (&mut self.scaler, state.scaler) {
            (Some(current), Some(saved)) => current.load_state(saved)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(TrainError::Config(
                    "fp16 training needs the loss scaler state, and the checkpoint has none".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(TrainError::Config(format!(
                    "the checkpoint has a loss scaler state, but precision is {}",
                    self.config.precision
                )));
            }
        }
        let model = self
            .model
            .as_ref()
            .expect("the model is present between steps");
        self.optim
            .load_state_bytes(optimizer, model)
            .map_err(TrainError::OptimState)?;
        self.step = state.steps_done;
        Ok(())
    }

    /// One optimizer step over the micro-batches of one accumulation cycle. `loss` gives a
    /// micro-batch's summed loss and item count (a [`LossParts`](burnish_heads::LossParts),
    /// or a [`StepLoss`] with extra metrics); the cycle's gradient is the gradient of the
    /// mean over *all* its items (the October 2024 transformers fix), whatever the
    /// micro-batches' sizes.
    ///
    /// In fp16 the backward pass runs on the scaled loss; the gradients are unscaled before
    /// clipping, and a cycle with inf/NaN gradients leaves the model, the optimizer and the
    /// schedule unchanged (the report says `skipped`) while the scale backs off.
    ///
    /// With [`with_grad_sync`](Self::with_grad_sync), the cycle is summed over all workers
    /// first (see there).
    ///
    /// # Errors
    /// [`TrainError::NoMicroBatch`] (without data parallelism); [`TrainError::Grad`] when
    /// the workers could not sum their gradients, the cycle has no item or
    /// (without loss scaling; with or without clipping) the gradient norm is not finite
    /// (the model is left unchanged then).
    pub fn step<T, L: IntoStepLoss<B>>(
        &mut self,
        micro_batches: &[T],
        loss: impl Fn(&M, &T) -> L,
    ) -> Result<StepReport, TrainError> {
        if micro_batches.is_empty() && self.sync.is_none() {
            return Err(TrainError::NoMicroBatch);
        }
        let model = self
            .model
            .as_ref()
            .expect("the model is present between steps");
        if let Some(device) = model.devices().first() {
            // Rank 0 keeps the one-worker stream; other ranks get streams of their own.
            let rank = self.sync.as_ref().map_or(0, |s| s.rank() as u64);
            let seed = step_seed(
                self.config.seed ^ rank.wrapping_mul(0xD6E8_FEB8_6659_FD93),
                self.step,
            );
            // burnish's dropout draws from the thread's generator (other threads, other
            // trainers, cannot move it); burn's own `Dropout` in a custom model from the
            // backend's, which is reproducible while one trainer runs in the process.
            burnish_models::random::seed_thread(seed);
            B::seed(device, seed);
        }
        let loss_scale = self.scaler.as_ref().map(LossScaler::scale);
        let mut accumulator = GradAccumulator::new();
        let mut loss_sum = 0.0;
        let mut metrics = BTreeMap::<String, f64>::new();
        for batch in micro_batches {
            let StepLoss { parts, metrics: m } = loss(model, batch)
                .into_step_loss()
                .map_err(TrainError::Loss)?;
            for (name, sum) in m {
                *metrics.entry(name).or_default() += sum;
            }
            loss_sum += parts.sum.clone().into_scalar().elem::<f64>();
            let objective = match &self.scaler {
                Some(scaler) => scaler.scale_loss(parts.sum),
                None => parts.sum,
            };
            let grads = GradientsParams::from_grads(objective.backward(), model);
            accumulator.add_sum(model, grads, parts.count);
        }
        let local_items = accumulator.items();
        let (mut grads, items) = match self.sync.as_deref_mut() {
            Some(sync) => {
                let mut extras = [loss_sum];
                let synced = accumulator.finish_synced(model, sync, &mut extras)?;
                loss_sum = extras[0];
                synced
            }
            None => (accumulator.finish(model)?, local_items),
        };
        for value in metrics.values_mut() {
            *value /= local_items.max(1) as f64;
        }
        let lr = self.schedule.lr(self.schedule_position());
        let mut report = StepReport {
            step: self.step + 1,
            loss: loss_sum / items as f64,
            grad_norm: f64::NAN,
            lr,
            items,
            skipped: false,
            loss_scale,
            metrics,
        };
        if let Some(scaler) = &mut self.scaler {
            let found_inf = scaler.unscale(model, &mut grads);
            if !scaler.update(found_inf).should_step() {
                self.step += 1;
                report.skipped = true;
                return Ok(report);
            }
        }
        report.grad_norm = match self.config.max_grad_norm {
            Some(max) => clip_grad_norm(model, &mut grads, max, NormType::L2, true)?,
            None => burnish_grad::grad_norm(model, &grads, NormType::L2),
        };
        // Without clipping nothing else would stop NaN/inf from reaching the weights.
        if !report.grad_norm.is_finite() {
            return Err(GradError::NonFiniteNorm {
                norm: report.grad_norm,
            }
            .into());
        }
        let model = self
            .model
            .take()
            .expect("the model is present between steps");
        self.model = Some(self.optim.step(lr, model, grads));
        self.step += 1;
        Ok(report)
    }
}

/// The generator seed of a step: SplitMix64 of the run seed and the step, so nearby steps
/// and seeds give unrelated streams.
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
