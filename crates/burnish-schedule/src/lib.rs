#![doc = include_str!("../README.md")]

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// Why a schedule configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// `total_steps` was zero.
    #[error("total_steps must be at least 1, got 0")]
    ZeroTotalSteps,
    /// The peak learning rate was negative, NaN or infinite.
    #[error("peak_lr must be a finite number >= 0, got {0}")]
    InvalidPeakLr(f64),
    /// Warmup, given as steps (or resolved from a ratio), exceeds the total.
    #[error("warmup of {warmup} steps exceeds total_steps = {total}")]
    WarmupExceedsTotal {
        /// Warmup steps after resolving a ratio.
        warmup: u64,
        /// Total optimizer steps.
        total: u64,
    },
    /// A field that must be a finite number in a range was not.
    #[error("{field} must be {expected}, got {value}")]
    OutOfRange {
        /// The configuration field, e.g. `warmup.ratio` or `kind.power`.
        field: &'static str,
        /// The accepted range, in words.
        expected: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// Polynomial decay needs an end lr strictly below the peak (transformers raises too).
    #[error("polynomial decay needs lr_end ({lr_end}) < peak_lr ({peak_lr})")]
    EndLrNotBelowPeak {
        /// The configured end learning rate.
        lr_end: f64,
        /// The configured peak learning rate.
        peak_lr: f64,
    },
    /// A schedule with a decay phase got no step to decay over.
    #[error("{kind} needs at least one step after warmup, but warmup = total_steps = {total}")]
    NoDecaySteps {
        /// The schedule kind.
        kind: &'static str,
        /// Total optimizer steps.
        total: u64,
    },
    /// Warmup-stable-decay phases add up to more than the total.
    #[error("warmup ({warmup}) + decay ({decay}) steps exceed total_steps = {total}")]
    PhasesExceedTotal {
        /// Warmup steps.
        warmup: u64,
        /// Decay steps.
        decay: u64,
        /// Total optimizer steps.
        total: u64,
    },
}

/// Length of a phase (warmup, or the decay of warmup-stable-decay), as steps or as a ratio
/// of `total_steps` (resolved as `ceil(total_steps · ratio)`, as transformers does).
///
/// Serialized as `{"steps": 100}` or `{"ratio": 0.06}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Warmup {
    /// An absolute number of optimizer steps.
    Steps(u64),
    /// A fraction of `total_steps`, in `[0, 1]`.
    Ratio(f64),
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup::Steps(0)
    }
}

impl Warmup {
    fn resolve(self, field: &'static str, total: u64) -> Result<u64, ScheduleError> {
        match self {
            Warmup::Steps(n) => Ok(n),
            Warmup::Ratio(r) if r.is_finite() && (0.0..=1.0).contains(&r) => {
                // Same f64 arithmetic as Python's `math.ceil(num_training_steps * ratio)`.
                Ok((total as f64 * r).ceil() as u64)
            }
            Warmup::Ratio(r) => Err(ScheduleError::OutOfRange {
                field,
                expected: "a finite ratio in [0, 1]",
                value: r,
            }),
        }
    }
}

/// The shape of the warmup or decay ramp in [`ScheduleKind::WarmupStableDecay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ramp {
    /// Straight line.
    #[default]
    Linear,
    /// Half a cosine wave.
    Cosine,
    /// `1 − sqrt(progress)` (decay) or `1 − sqrt(1 − progress)` (warmup).
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

fn default_half() -> f64 {
    0.5
}
fn default_one_cycle() -> u64 {
    1
}
fn default_lr_end() -> f64 {
    1e-7
}
fn default_power() -> f64 {
    1.0
}
fn default_decay_ramp() -> Ramp {
    Ramp::Cosine
}

/// The schedule family and its own parameters; defaults are transformers' defaults.
///
/// Serialized with a `type` tag: `{"type": "polynomial", "power": 2.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleKind {
    /// `λ = 1` (`get_constant_schedule`); warmup is ignored.
    Constant,
    /// Linear warmup, then `λ = 1` (`get_constant_schedule_with_warmup`).
    ConstantWithWarmup,
    /// Linear warmup, then linear decay to 0 at `total_steps`
    /// (`get_linear_schedule_with_warmup`).
    Linear,
    /// Linear warmup, then cosine decay (`get_cosine_schedule_with_warmup`, and
    /// `get_cosine_with_min_lr_schedule_with_warmup` when `min_lr_ratio > 0`).
    Cosine {
        /// Number of cosine waves over the decay phase; 0.5 decays from 1 to the minimum.
        #[serde(default = "default_half")]
        num_cycles: f64,
        /// Floor of the multiplier, in `[0, 1]`: `λ = f·(1 − min) + min`.
        #[serde(default)]
        min_lr_ratio: f64,
    },
    /// Linear warmup, then `num_cycles` cosine decays each restarting at the peak
    /// (`get_cosine_with_hard_restarts_schedule_with_warmup`).
    CosineWithHardRestarts {
        /// Number of hard restarts (at least 1).
        #[serde(default = "default_one_cycle")]
        num_cycles: u64,
    },
    /// Linear warmup, then polynomial decay from the peak to `lr_end`
    /// (`get_polynomial_decay_schedule_with_warmup`).
    Polynomial {
        /// Absolute learning rate reached at `total_steps` (must be below the peak).
        #[serde(default = "default_lr_end")]
        lr_end: f64,
        /// Exponent of the decay; 1 is linear.
        #[serde(default = "default_power")]
        power: f64,
    },
    /// Linear warmup, then `1/sqrt((s + timescale − W)/timescale)`
    /// (`get_inverse_sqrt_schedule`).
    InverseSqrt {
        /// Decay timescale; `None` means the warmup length, or 10 000 without warmup.
        #[serde(default)]
        timescale: Option<u64>,
    },
    /// Warmup, a stable phase at the peak, then a decay phase of `decay` steps ending at
    /// `total_steps` (`get_wsd_schedule`).
    WarmupStableDecay {
        /// Length of the decay phase.
        decay: Warmup,
        /// Shape of the warmup ramp.
        #[serde(default)]
        warmup_ramp: Ramp,
        /// Shape of the decay ramp.
        #[serde(default = "default_decay_ramp")]
        decay_ramp: Ramp,
        /// Floor of the multiplier, in `[0, 1]`, during warmup and decay.
        #[serde(default)]
        min_lr_ratio: f64,
        /// Cosine waves over the decay phase when `decay_ramp` is cosine.
        #[serde(default = "default_half")]
        num_cycles: f64,
    },
}

impl ScheduleKind {
    /// The `type` tag of this kind, as written in configuration files.
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::ConstantWithWarmup => "constant_with_warmup",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine { .. } => "cosine",
            ScheduleKind::CosineWithHardRestarts { .. } => "cosine_with_hard_restarts",
            ScheduleKind::Polynomial { .. } => "polynomial",
            ScheduleKind::InverseSqrt { .. } => "inverse_sqrt",
            ScheduleKind::WarmupStableDecay { .. } => "warmup_stable_decay",
        }
    }
}

/// A learning-rate schedule as configured by a user; [`ScheduleConfig::build`] validates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The schedule family.
    pub kind: ScheduleKind,
    /// The learning rate at the end of warmup (the optimizer's base lr).
    pub peak_lr: f64,
    /// Number of optimizer steps the schedule spans.
    pub total_steps: u64,
    /// Warmup length; defaults to no warmup.
    #[serde(default)]
    pub warmup: Warmup,
}

fn check_ratio(field: &'static str, value: f64) -> Result<(), ScheduleError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ScheduleError::OutOfRange {
            field,
            expected: "a finite number in [0, 1]",
            value,
        })
    }
}

fn check_positive(field: &'static str, value: f64) -> Result<(), ScheduleError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ScheduleError::OutOfRange {
            field,
            expected: "a finite number > 0",
            value,
        })
    }
}

impl ScheduleConfig {
    /// Validates the configuration and resolves ratios into step counts.
    ///
    /// # Errors
    /// A [`ScheduleError`] naming the offending field: zero `total_steps`, negative or
    /// non-finite lr, warmup longer than the run, a polynomial `lr_end` not below the peak,
    /// ratios outside `[0, 1]`, non-positive `power` or `timescale`.
    pub fn build(&self) -> Result<Schedule, ScheduleError> {
        let total = self.total_steps;
        if total == 0 {
            return Err(ScheduleError::ZeroTotalSteps);
        }
        if !(self.peak_lr.is_finite() && self.peak_lr >= 0.0) {
            return Err(ScheduleError::InvalidPeakLr(self.peak_lr));
        }
        let warmup = self.warmup.resolve("warmup.ratio", total)?;
        if warmup > total {
            return Err(ScheduleError::WarmupExceedsTotal { warmup, total });
        }
        let mut decay = 0;
        match &self.kind {
            ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup | ScheduleKind::Linear => {}
            ScheduleKind::Cosine {
                num_cycles,
                min_lr_ratio,
            } => {
                if !(num_cycles.is_finite() && *num_cycles >= 0.0) {
                    return Err(ScheduleError::OutOfRange {
                        field: "kind.num_cycles",
                        expected: "a finite number >= 0",
                        value: *num_cycles,
                    });
                }
                check_ratio("kind.min_lr_ratio", *min_lr_ratio)?;
            }
            ScheduleKind::CosineWithHardRestarts { num_cycles } => {
                if *num_cycles == 0 {
                    return Err(ScheduleError::OutOfRange {
                        field: "kind.num_cycles",
                        expected: "at least 1",
                        value: 0.0,
                    });
                }
            }
            ScheduleKind::Polynomial { lr_end, power } => {
                if !(lr_end.is_finite() && *lr_end >= 0.0) {
                    return Err(ScheduleError::OutOfRange {
                        field: "kind.lr_end",
                        expected: "a finite number >= 0",
                        value: *lr_end,
                    });
                }
                if *lr_end >= self.peak_lr {
                    return Err(ScheduleError::EndLrNotBelowPeak {
                        lr_end: *lr_end,
                        peak_lr: self.peak_lr,
                    });
                }
                check_positive("kind.power", *power)?;
                // transformers divides by (T − W) here and would raise ZeroDivisionError.
                if warmup == total {
                    return Err(ScheduleError::NoDecaySteps {
                        kind: self.kind.name(),
                        total,
                    });
                }
            }
            ScheduleKind::InverseSqrt { timescale } => {
                if *timescale == Some(0) {
                    return Err(ScheduleError::OutOfRange {
                        field: "kind.timescale",
                        expected: "at least 1",
                        value: 0.0,
                    });
                }
            }
            ScheduleKind::WarmupStableDecay {
                decay: d,
                min_lr_ratio,
                num_cycles,
                ..
            } => {
                decay = d.resolve("kind.decay.ratio", total)?;
                if warmup + decay > total {
                    return Err(ScheduleError::PhasesExceedTotal {
                        warmup,
                        decay,
                        total,
                    });
                }
                check_ratio("kind.min_lr_ratio", *min_lr_ratio)?;
                if !(num_cycles.is_finite() && *num_cycles >= 0.0) {
                    return Err(ScheduleError::OutOfRange {
                        field: "kind.num_cycles",
                        expected: "a finite number >= 0",
                        value: *num_cycles,
                    });
                }
            }
        }
        Ok(Schedule {
            config: self.clone(),
            warmup,
            decay,
        })
    }
}

/// A validated schedule: a pure function from the step count to the learning rate.
///
/// Built by [`ScheduleConfig::build`]; see the [crate docs](crate) for step semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    config: ScheduleConfig,
    warmup: u64,
    decay: u64,
}

/// transformers' shared linear warmup ramp: `s / max(1, W)`.
fn linear_warmup(step: u64, warmup: u64) -> f64 {
    step as f64 / warmup.max(1) as f64
}

impl Schedule {
    /// The validated configuration this schedule was built from.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// Warmup length in steps, after resolving a ratio.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup
    }

    /// Number of optimizer steps the schedule spans.
    pub fn total_steps(&self) -> u64 {
        self.config.total_steps
    }

    /// The peak (base) learning rate.
    pub fn peak_lr(&self) -> f64 {
        self.config.peak_lr
    }

    /// The learning rate after `step` scheduler steps: `peak_lr · multiplier(step)`.
    pub fn lr(&self, step: u64) -> f64 {
        self.config.peak_lr * self.multiplier(step)
    }

    /// The multiplier `λ(step)` of the peak learning rate, in `[0, 1]`.
    ///
    /// Up to `total_steps` every kind equals transformers' lambda bit for bit (same f64
    /// operations in the same order). Past `total_steps`, transformers' cosine rises again;
    /// here every decaying kind holds its value at `total_steps` instead (the other kinds
    /// already do in transformers), so a run that overshoots never climbs back up.
    pub fn multiplier(&self, step: u64) -> f64 {
        let w = self.warmup;
        let t = self.config.total_steps;
        match &self.config.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::ConstantWithWarmup => {
                if step < w {
                    linear_warmup(step, w)
                } else {
                    1.0
                }
            }
            ScheduleKind::Linear => {
                if step < w {
                    return linear_warmup(step, w);
                }
                let remaining = t.saturating_sub(step) as f64;
                (remaining / t.saturating_sub(w).max(1) as f64).max(0.0)
            }
            ScheduleKind::Cosine {
                num_cycles,
                min_lr_ratio,
            } => {
                if step < w {
                    return linear_warmup(step, w);
                }
                let progress = (step.min(t) - w) as f64 / (t - w).max(1) as f64;
                let f = 0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos());
                (f * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
            }
            ScheduleKind::CosineWithHardRestarts { num_cycles } => {
                if step < w {
                    return linear_warmup(step, w);
                }
                let progress = (step - w) as f64 / (t - w).max(1) as f64;
                if progress >= 1.0 {
                    return 0.0;
                }
                (0.5 * (1.0 + (PI * ((*num_cycles as f64 * progress) % 1.0)).cos())).max(0.0)
            }
            ScheduleKind::Polynomial { lr_end, power } => {
                if step < w {
                    return linear_warmup(step, w);
                }
                let lr_init = self.config.peak_lr;
                if step > t {
                    return lr_end / lr_init;
                }
                let lr_range = lr_init - lr_end;
                let decay_steps = (t - w) as f64;
                let pct_remaining = 1.0 - (step - w) as f64 / decay_steps;
                (lr_range * pct_remaining.powf(*power) + lr_end) / lr_init
            }
            ScheduleKind::InverseSqrt { timescale } => {
                if step < w {
                    return linear_warmup(step, w);
                }
                let timescale = timescale.unwrap_or(if w == 0 { 10_000 } else { w });
                // step ≥ w, so (step − w + timescale) never underflows.
                let shifted = (step - w + timescale) as f64;
                1.0 / (shifted / timescale as f64).sqrt()
            }
            ScheduleKind::WarmupStableDecay {
                warmup_ramp,
                decay_ramp,
                min_lr_ratio,
                num_cycles,
                ..
            } => {
                let d = self.decay;
                let floor = |f: f64| (f * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0);
                if step < w {
                    let p = linear_warmup(step, w);
                    return floor(match warmup_ramp {
                        Ramp::Linear => p,
                        Ramp::Cosine => 0.5 * (1.0 - (PI * p).cos()),
                        Ramp::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
                    });
                }
                let stable = t - w - d;
                if step < w + stable {
                    return 1.0;
                }
                if step < w + stable + d {
                    let p = (step - w - stable) as f64 / d.max(1) as f64;
                    return floor(match decay_ramp {
                        Ramp::Linear => 1.0 - p,
                        Ramp::Cosine => 0.5 * (1.0 + (PI * num_cycles * 2.0 * p).cos()),
                        Ramp::OneMinusSqrt => 1.0 - p.sqrt(),
                    });
                }
                *min_lr_ratio
            }
        }
    }

    /// An iterator over the learning rates of steps `0..total_steps`.
    pub fn lrs(&self) -> impl Iterator<Item = f64> + '_ {
        (0..self.config.total_steps).map(|s| self.lr(s))
    }
}

#[cfg(test)]
mod tests;
