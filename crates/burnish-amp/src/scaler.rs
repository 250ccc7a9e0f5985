//! Dynamic loss scaling with `torch.amp.GradScaler`'s state machine and defaults.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::AmpError;

/// Settings of a [`LossScaler`]; the defaults are `torch.amp.GradScaler`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScalerConfig {
    /// Starting scale, 2^16.
    pub init_scale: f32,
    /// Multiplier after `growth_interval` steps without inf/NaN, 2.
    pub growth_factor: f32,
    /// Multiplier after a step with inf/NaN, 0.5.
    pub backoff_factor: f32,
    /// Clean steps needed before the scale grows, 2000.
    pub growth_interval: u32,
    /// Floor of the scale. torch has none and, after ~150 overflows in a row, reaches a
    /// scale of 0 that silently zeroes every gradient from then on; the default floor is
    /// the smallest normal f32 (2^-126), far below any scale a healthy run reaches.
    pub min_scale: f32,
}

impl Default for LossScalerConfig {
    fn default() -> Self {
        LossScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            min_scale: f32::MIN_POSITIVE,
        }
    }
}

/// The mutable part of a [`LossScaler`], saved in checkpoints for an exact resume.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerState {
    /// Current scale.
    pub scale: f32,
    /// Clean steps since the last growth or backoff (torch's `_growth_tracker`).
    pub growth_tracker: u32,
    /// Steps skipped in a row up to now.
    pub consecutive_skips: u32,
    /// Steps skipped since the start of training.
    pub total_skips: u64,
}

/// What [`LossScaler::update`] decided for one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOutcome {
    /// Gradients were finite: the optimizer and the scheduler step.
    Applied {
        /// The scale for the next step (grown if the interval completed).
        scale: f32,
        /// Whether the scale grew at this step.
        grew: bool,
    },
    /// Gradients had inf/NaN: skip the optimizer step *and* the scheduler step.
    Skipped {
        /// The scale before backing off.
        old_scale: f32,
        /// The scale for the next step.
        new_scale: f32,
    },
}

impl StepOutcome {
    /// Whether the optimizer (and the LR schedule) should step.
    pub fn should_step(&self) -> bool {
        matches!(self, StepOutcome::Applied { .. })
    }
}

/// Dynamic loss scaler for fp16 training, with `torch.amp.GradScaler` semantics.
///
/// The order per optimizer step is torch's: backward on `scale_loss(loss)`, then
/// [`unscale`](Self::unscale) (which reports inf/NaN), then clipping, then the optimizer
/// step only if [`update`](Self::update) says so.
///
/// ```text
/// inf/NaN found:  scale ← max(scale · backoff, min_scale); tracker ← 0; skip the step
/// otherwise:      tracker += 1; if tracker = interval { scale ← scale · growth if finite;
///                                                     tracker ← 0 }
/// ```
///
/// ```
/// use burnish_amp::{LossScaler, LossScalerConfig};
/// let mut scaler = LossScaler::new(LossScalerConfig { growth_interval: 2, ..Default::default() })?;
/// assert_eq!(scaler.scale(), 65536.0);
/// assert!(!scaler.update(true).should_step()); // overflow: skip, back off
/// assert_eq!(scaler.scale(), 32768.0);
/// scaler.update(false);
/// scaler.update(false); // two clean steps: grow
/// assert_eq!(scaler.scale(), 65536.0);
/// # Ok::<(), burnish_amp::AmpError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    config: LossScalerConfig,
    state: ScalerState,
}

impl LossScaler {
    /// A scaler at `init_scale`.
    ///
    /// # Errors
    /// [`AmpError::InvalidConfig`] naming the field: scales must be finite and positive,
    /// `growth_factor > 1`, `0 < backoff_factor < 1`, `growth_interval ≥ 1`,
    /// `min_scale ≤ init_scale`.
    pub fn new(config: LossScalerConfig) -> Result<Self, AmpError> {
        let invalid = |field: &'static str, value: f64| AmpError::InvalidConfig { field, value };
        let c = &config;
        if !(c.init_scale.is_finite() && c.init_scale > 0.0) {
            return Err(invalid("init_scale", c.init_scale.into()));
        }
        if !(c.growth_factor.is_finite() && c.growth_factor > 1.0) {
            return Err(invalid("growth_factor", c.growth_factor.into()));
        }
        if !(c.backoff_factor > 0.0 && c.backoff_factor < 1.0) {
            return Err(invalid("backoff_factor", c.backoff_factor.into()));
        }
        if c.growth_interval == 0 {
            return Err(invalid("growth_interval", 0.0));
        }
        if !(c.min_scale > 0.0 && c.min_scale <= c.init_scale) {
            return Err(invalid("min_scale", c.min_scale.into()));
        }
        let state = ScalerState {
            scale: config.init_scale,
            growth_tracker: 0,
            consecutive_skips: 0,
            total_skips: 0,
        };
        Ok(LossScaler { config, state })
    }

    /// The settings.
    pub fn config(&self) -> &LossScalerConfig {
        &self.config
    }

    /// The current scale `S`.
    pub fn scale(&self) -> f32 {
        self.state.scale
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> ScalerState {
        self.state
    }

    /// Restores a saved state.
    ///
    /// # Errors
    /// [`AmpError::InvalidState`] when the scale is not finite, not positive, or below the
    /// configured floor.
    pub fn load_state(&mut self, state: ScalerState) -> Result<(), AmpError> {
        if !(state.scale.is_finite() && state.scale >= self.config.min_scale) {
            return Err(AmpError::InvalidState { scale: state.scale });
        }
        self.state = state;
        Ok(())
    }

    /// `loss · S`, the value to call `backward` on.
    pub fn scale_loss<B: Backend, const D: usize>(&self, loss: Tensor<B, D>) -> Tensor<B, D> {
        loss.mul_scalar(self.state.scale)
    }

    /// Divides every gradient by `S` (multiplies by `1/S` computed in f64 then rounded to
    /// f32, as torch does) and returns whether any gradient is inf or NaN.
    pub fn unscale<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        grads: &mut GradientsParams,
    ) -> bool {
        let inv_scale = (1.0 / f64::from(self.state.scale)) as f32;
        burnish_grad::scale_grads(module, grads, inv_scale.into());
        burnish_grad::has_non_finite(module, grads)
    }

    /// Advances the state machine after a step whose unscaled gradients had (or had not)
    /// inf/NaN, and says whether the optimizer may step.
    pub fn update(&mut self, found_inf: bool) -> StepOutcome {
        let s = &mut self.state;
        if found_inf {
            let old_scale = s.scale;
            s.scale = (s.scale * self.config.backoff_factor).max(self.config.min_scale);
            s.growth_tracker = 0;
            s.consecutive_skips += 1;
            s.total_skips += 1;
            return StepOutcome::Skipped {
                old_scale,
                new_scale: s.scale,
            };
        }
        s.consecutive_skips = 0;
        let successful = s.growth_tracker + 1;
        let mut grew = false;
        if successful == self.config.growth_interval {
            let grown = s.scale * self.config.growth_factor;
            if grown.is_finite() {
                s.scale = grown;
                grew = true;
            }
            s.growth_tracker = 0;
        } else {
            s.growth_tracker = successful;
        }
        StepOutcome::Applied {
            scale: s.scale,
            grew,
        }
    }
}
