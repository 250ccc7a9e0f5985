//! The fine-tuning loop of burnish, composed from the math crates.
//!
//! [`Trainer::step`] is one optimizer step, written out so it reads top to bottom:
//! losses of the cycle's micro-batches → gradients summed and divided by the cycle's item
//! count → (fp16: unscaled, the step skipped on inf/NaN) → global-norm clip → AdamW at the
//! scheduled lr. The caller owns the data and the epochs; what a step did comes back as a
//! [`StepReport`].
//!
//! Mixed precision is two settings that go together: the model computes in half precision
//! ([`burnish_models::Autocast::with_compute_dtype`] with [`Precision::compute_dtype`]) while
//! its parameters, the gradients and the AdamW moments stay float32, and
//! [`TrainerConfig::precision`] `Fp16` makes the trainer scale the loss dynamically
//! ([`burnish_amp::LossScaler`], `torch.amp.GradScaler`'s rules).
//!
//! ```
//! use burn::backend::Autodiff;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::{Tensor, TensorData};
//! use burn_ndarray::NdArray;
//! use burnish_heads::{LossParts, mse};
//! use burnish_trainer::{Trainer, TrainerConfig};
//!
//! type B = Autodiff<NdArray>;
//! let device = Default::default();
//! let model: Linear<B> = LinearConfig::new(2, 1).init(&device);
//! let config = TrainerConfig { lr: 0.1, total_steps: 50, weight_decay: 0.0, ..Default::default() };
//! let mut trainer = Trainer::new(model, config)?;
//! // y = x0 − x1, one micro-batch of 4 examples per step.
//! let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 0., 0., 1., 1., 1., 2., 0.], [4, 2]), &device);
//! let y = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, -1., 0., 2.], [4, 1]), &device);
//! let loss = |m: &Linear<B>, _: &()| mse(m.forward(x.clone()), y.clone());
//! let first = trainer.step(&[()], loss)?.loss;
//! for _ in 0..48 {
//!     trainer.step(&[()], loss)?;
//! }
//! assert!(trainer.step(&[()], loss)?.loss < first / 10.0);
//! # Ok::<(), burnish_trainer::TrainError>(())
//! ```

mod fit;
pub mod metrics;

pub use fit::{
    BestMetric, BoxError, Control, EarlyStopping, EvalEvent, FitConfig, FitState, FitSummary,
    Hooks, NoHooks, TrainData,
};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use burnish_amp::{LossScaler, LossScalerConfig, Precision, ScalerState};
use burnish_grad::{GradAccumulator, GradError, NormType, clip_grad_norm};
use burnish_heads::LossParts;
use burnish_optim::{AdamW, AdamWConfig, OptimError, ParamGroups};
use burnish_schedule::{Schedule, ScheduleConfig, ScheduleError, ScheduleKind, Warmup};
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
    /// Optimizer steps the schedule spans.
    pub total_steps: u64,
    /// Global-norm clipping threshold; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Seeds the backend's random generator before each step with a value derived from
    /// this seed and the step number, so dropout masks depend on the step alone: a run
    /// resumed at step N draws the masks the uninterrupted run drew. `None` leaves the
    /// generator alone.
    pub seed: Option<u64>,
    /// Compute precision; `Fp16` turns on dynamic loss scaling. The model's own compute
    /// dtype is set on the model (see the crate docs).
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
            seed: None,
            precision: Precision::Fp32,
            loss_scaler: LossScalerConfig::default(),
        }
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
#[derive(Debug, Clone, Copy, PartialEq)]
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
}

/// A model with its optimizer and schedule, stepped one accumulation cycle at a time.
#[derive(Debug)]
pub struct Trainer<B: AutodiffBackend, M: AutodiffModule<B>> {
    model: Option<M>,
    optim: AdamW<B>,
    schedule: Schedule,
    config: TrainerConfig,
    step: u64,
    scaler: Option<LossScaler>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Trainer<B, M> {
    /// A trainer at step 0.
    ///
    /// # Errors
    /// [`TrainError::Schedule`] or [`TrainError::Optim`] for invalid settings.
    pub fn new(model: M, config: TrainerConfig) -> Result<Self, TrainError> {
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
        let scaler = match config.precision.needs_loss_scaling() {
            true => Some(LossScaler::new(config.loss_scaler.clone())?),
            false => None,
        };
        Ok(Trainer {
            model: Some(model),
            optim,
            schedule,
            config,
            step: 0,
            scaler,
        })
    }

    /// The model.
    pub fn model(&self) -> &M {
        // Only `step` takes the model out, and it always puts one back.
        self.model
            .as_ref()
            .expect("the model is present between steps")
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
    pub fn optimizer(&self) -> &AdamW<B> {
        &self.optim
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
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

    /// Puts the trainer back where a checkpoint left it: the optimizer state (checked
    /// against the model), the number of steps done (the dropout seed of the next step;
    /// minus the skipped ones, the schedule position) and, in fp16, the loss scaler's
    /// state.
    ///
    /// # Errors
    /// [`TrainError::Optim`] when the state does not fit the model;
    /// [`TrainError::Amp`] for an invalid scaler state; [`TrainError::Config`] when the
    /// scaler state is missing in fp16 or present in another precision.
    pub fn restore(
        &mut self,
        state: burnish_optim::AdamWState,
        steps_done: u64,
        scaler: Option<ScalerState>,
    ) -> Result<(), TrainError> {
        let model = self
            .model
            .as_ref()
            .expect("the model is present between steps");
        match (&mut self.scaler, scaler) {
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
        self.optim.load_state(state, model)?;
        self.step = steps_done;
        Ok(())
    }

    /// One optimizer step over the micro-batches of one accumulation cycle. `loss` gives a
    /// micro-batch's summed loss and item count; the cycle's gradient is the gradient of
    /// the mean over *all* its items (the October 2024 transformers fix), whatever the
    /// micro-batches' sizes.
    ///
    /// In fp16 the backward pass runs on the scaled loss; the gradients are unscaled before
    /// clipping, and a cycle with inf/NaN gradients leaves the model, the optimizer and the
    /// schedule unchanged (the report says `skipped`) while the scale backs off.
    ///
    /// # Errors
    /// [`TrainError::NoMicroBatch`]; [`TrainError::Grad`] when the cycle has no item or
    /// (without loss scaling; with or without clipping) the gradient norm is not finite
    /// (the model is left unchanged then).
    pub fn step<T>(
        &mut self,
        micro_batches: &[T],
        loss: impl Fn(&M, &T) -> LossParts<B>,
    ) -> Result<StepReport, TrainError> {
        if micro_batches.is_empty() {
            return Err(TrainError::NoMicroBatch);
        }
        let model = self
            .model
            .as_ref()
            .expect("the model is present between steps");
        if let Some(seed) = self.config.seed
            && let Some(device) = model.devices().first()
        {
            B::seed(device, step_seed(seed, self.step));
        }
        let loss_scale = self.scaler.as_ref().map(LossScaler::scale);
        let mut accumulator = GradAccumulator::new();
        let mut loss_sum = 0.0;
        for batch in micro_batches {
            let parts = loss(model, batch);
            loss_sum += parts.sum.clone().into_scalar().elem::<f64>();
            let objective = match &self.scaler {
                Some(scaler) => scaler.scale_loss(parts.sum),
                None => parts.sum,
            };
            let grads = GradientsParams::from_grads(objective.backward(), model);
            accumulator.add_sum(model, grads, parts.count);
        }
        let items = accumulator.items();
        let mut grads = accumulator.finish(model)?;
        // The schedule does not advance on skipped steps (transformers skips
        // `lr_scheduler.step()` when the scaler skipped the optimizer).
        let skipped = self.scaler.as_ref().map_or(0, |s| s.state().total_skips);
        let lr = self.schedule.lr(self.step - skipped);
        let mut report = StepReport {
            step: self.step + 1,
            loss: loss_sum / items as f64,
            grad_norm: f64::NAN,
            lr,
            items,
            skipped: false,
            loss_scale,
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
