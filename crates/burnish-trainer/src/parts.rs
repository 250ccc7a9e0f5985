//! The replaceable parts of a [`Trainer`](crate::Trainer): its optimizer, its learning-rate
//! schedule and what its loss reports.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burnish_heads::LossParts;
use burnish_optim::{AdamW, AdamWState};
use burnish_schedule::Schedule;

use crate::BoxError;

/// An optimizer the trainer can step and checkpoint. burnish's [`AdamW`] is the default;
/// implement this for your own (SGD, Lion, a wrapper that logs).
///
/// ```
/// use burn::module::AutodiffModule;
/// use burn::optim::GradientsParams;
/// use burn::tensor::backend::AutodiffBackend;
/// use burnish_trainer::{BoxError, Optimizer};
///
/// /// Plain SGD without state, through burn's own optimizer.
/// struct Sgd;
///
/// impl<B: AutodiffBackend, M: AutodiffModule<B>> Optimizer<B, M> for Sgd {
///     fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
///         use burn::optim::{Optimizer as _, SgdConfig};
///         // burn's SGD has no state worth keeping across steps here.
///         SgdConfig::new().init::<B, M>().step(lr, model, grads)
///     }
///     fn state_bytes(&self) -> Result<Vec<u8>, BoxError> {
///         Ok(Vec::new())
///     }
///     fn load_state_bytes(&mut self, _bytes: &[u8], _model: &M) -> Result<(), BoxError> {
///         Ok(())
///     }
/// }
/// ```
pub trait Optimizer<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// One update of `model` with gradients `grads` (already normalized, unscaled and
    /// clipped) at learning rate `lr`.
    fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M;

    /// The optimizer's whole state as bytes, for a checkpoint.
    ///
    /// # Errors
    /// When the state cannot be serialized.
    fn state_bytes(&self) -> Result<Vec<u8>, BoxError>;

    /// Restores a state written by [`state_bytes`](Self::state_bytes), checked against
    /// `model`.
    ///
    /// # Errors
    /// When the bytes are not such a state or do not fit the model.
    fn load_state_bytes(&mut self, bytes: &[u8], model: &M) -> Result<(), BoxError>;
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Optimizer<B, M> for AdamW<B> {
    fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        AdamW::step(self, lr, model, grads)
    }

    fn state_bytes(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.state().to_bytes()?)
    }

    fn load_state_bytes(&mut self, bytes: &[u8], model: &M) -> Result<(), BoxError> {
        Ok(self.load_state(AdamWState::from_bytes(bytes)?, model)?)
    }
}

/// A learning rate as a function of the number of optimizer updates already applied
/// (transformers' pairing: update `k`, 1-based, uses `lr(k − 1)`). The schedules of
/// `burnish-schedule` are one; any `Fn(u64) -> f64` is another.
///
/// ```
/// use burnish_trainer::LrSchedule;
/// let halving = |step: u64| 1e-3 * 0.5f64.powi((step / 100) as i32);
/// assert_eq!(halving.lr(250), 2.5e-4);
/// ```
pub trait LrSchedule: Send {
    /// The learning rate of the update that follows `step` applied updates.
    fn lr(&self, step: u64) -> f64;
}

impl LrSchedule for Schedule {
    fn lr(&self, step: u64) -> f64 {
        Schedule::lr(self, step)
    }
}

impl<F: Fn(u64) -> f64 + Send> LrSchedule for F {
    fn lr(&self, step: u64) -> f64 {
        self(step)
    }
}

/// What a loss function gives the trainer for one micro-batch: the summed loss with its
/// item count and, optionally, extra metrics to report with the step (each a *sum* over
/// the micro-batch's items, like the loss; the step reports them as means over the
/// cycle's items). A plain [`LossParts`] converts into it; a loss function may also return
/// a `Result` of either (see [`IntoStepLoss`]).
#[derive(Debug, Clone)]
pub struct StepLoss<B: burn::tensor::backend::Backend> {
    /// The summed loss and its item count.
    pub parts: LossParts<B>,
    /// Extra metrics, summed over the micro-batch's items (`"aux_loss"` → 3.2, say).
    pub metrics: BTreeMap<String, f64>,
}

impl<B: burn::tensor::backend::Backend> StepLoss<B> {
    /// The loss with one extra metric (a sum over the micro-batch's items).
    #[must_use]
    pub fn with_metric(mut self, name: impl Into<String>, sum: f64) -> Self {
        self.metrics.insert(name.into(), sum);
        self
    }
}

impl<B: burn::tensor::backend::Backend> From<LossParts<B>> for StepLoss<B> {
    fn from(parts: LossParts<B>) -> Self {
        StepLoss {
            parts,
            metrics: BTreeMap::new(),
        }
    }
}

/// What a loss function may return: a [`StepLoss`], a [`LossParts`], or a `Result` of
/// either whose error stops the step as [`TrainError::Loss`](crate::TrainError::Loss)
/// (a batch the loss cannot take, say).
pub trait IntoStepLoss<B: burn::tensor::backend::Backend> {
    /// The step loss, or why there is none.
    ///
    /// # Errors
    /// The loss function's own error.
    fn into_step_loss(self) -> Result<StepLoss<B>, BoxError>;
}

impl<B: burn::tensor::backend::Backend> IntoStepLoss<B> for StepLoss<B> {
    fn into_step_loss(self) -> Result<StepLoss<B>, BoxError> {
        Ok(self)
    }
}

impl<B: burn::tensor::backend::Backend> IntoStepLoss<B> for LossParts<B> {
    fn into_step_loss(self) -> Result<StepLoss<B>, BoxError> {
        Ok(self.into())
    }
}

impl<B, T, E> IntoStepLoss<B> for Result<T, E>
where
    B: burn::tensor::backend::Backend,
    T: IntoStepLoss<B>,
    E: Into<BoxError>,
{
    fn into_step_loss(self) -> Result<StepLoss<B>, BoxError> {
        self.map_err(Into::into)?.into_step_loss()
    }
}
