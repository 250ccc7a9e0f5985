//! Drive burn's `LrScheduler` (and so burn-train's `Learner`) with a burnish schedule.

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;
use burnish_schedule::Schedule;

/// A [`Schedule`] behind burn's [`LrScheduler`] trait.
///
/// burn calls `step()` before each optimizer step and uses the value it returns, so the
/// first call returns `lr(0)`, the second `lr(1)`, ...: the same pairing of steps and
/// values as the Hugging Face Trainer. The record is the number of steps taken.
///
/// ```
/// use burn::optim::lr_scheduler::LrScheduler;
/// use burnish_optim::BurnLrScheduler;
/// use burnish_schedule::{ScheduleConfig, ScheduleKind, Warmup};
/// let schedule = ScheduleConfig { kind: ScheduleKind::Linear, peak_lr: 1.0,
///                                 total_steps: 4, warmup: Warmup::Steps(2) }.build()?;
/// let mut burn_scheduler = BurnLrScheduler::new(schedule);
/// let lrs: Vec<f64> = (0..4).map(|_| burn_scheduler.step()).collect();
/// assert_eq!(lrs, [0.0, 0.5, 1.0, 0.5]);
/// # Ok::<(), burnish_schedule::ScheduleError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BurnLrScheduler {
    schedule: Schedule,
    steps_taken: usize,
}

impl BurnLrScheduler {
    /// Wraps a schedule, starting at step 0.
    pub fn new(schedule: Schedule) -> Self {
        BurnLrScheduler {
            schedule,
            steps_taken: 0,
        }
    }

    /// Number of `step()` calls so far.
    pub fn steps_taken(&self) -> usize {
        self.steps_taken
    }
}

impl LrScheduler for BurnLrScheduler {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let lr = self.schedule.lr(self.steps_taken as u64);
        self.steps_taken += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.steps_taken
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.steps_taken = record;
        self
    }
}
