//! Compose your own trainer from the math crates alone: a hand-written loop over a small
//! burn model with AdamW (decoupled weight decay, no decay on biases and norms), linear
//! warmup then cosine decay, gradient accumulation normalized over the cycle, and global
//! gradient-norm clipping. No burnish model, data or trainer crate is involved.
//!
//! ```sh
//! cargo run -p burnish --example compose_trainer
//! ```

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor};
use burnish::backend::CpuTrain;
use burnish::grad::{GradAccumulator, NormType, clip_grad_norm};
use burnish::optim::{AdamW, AdamWConfig, ParamGroups};
use burnish::schedule::{ScheduleConfig, ScheduleKind, Warmup};

/// A two-layer regressor with a norm in between.
#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    up: Linear<B>,
    norm: LayerNorm<B>,
    act: Relu,
    down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn new(device: &B::Device) -> Self {
        Mlp {
            up: LinearConfig::new(4, 32).init(device),
            norm: LayerNormConfig::new(32).init(device),
            act: Relu::new(),
            down: LinearConfig::new(32, 1).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.down
            .forward(self.act.forward(self.norm.forward(self.up.forward(x))))
    }
}

/// A micro-batch of `rows` examples of y = x0 − 2·x1 + x2·x3.
fn micro_batch<B: Backend>(rows: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let x = Tensor::<B, 2>::random([rows, 4], Distribution::Normal(0.0, 1.0), device);
    let col = |i: usize| x.clone().slice([0..rows, i..i + 1]);
    let y = col(0) - col(1).mul_scalar(2.0) + col(2) * col(3);
    (x, y)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Default::default();
    CpuTrain::seed(&device, 7);
    let mut model = Mlp::<CpuTrain>::new(&device);
    let steps = 300;
    let schedule = ScheduleConfig {
        kind: ScheduleKind::Cosine {
            num_cycles: 0.5,
            min_lr_ratio: 0.0,
        },
        peak_lr: 1e-2,
        total_steps: steps,
        warmup: Warmup::Ratio(0.05),
    }
    .build()?;
    let config = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    // The default groups exclude biases and norm weights from weight decay.
    let mut optim = AdamW::new(config, ParamGroups::default())?;
    let accumulation = 4;
    for step in 0..steps {
        // One optimizer step = 4 micro-batches of different sizes; the gradient is that of
        // the mean over all their examples, not the mean of the micro-batch means.
        let mut cycle = GradAccumulator::new();
        let mut loss_sum = 0.0;
        for micro in 0..accumulation {
            let rows = 8 + 4 * micro;
            let (x, y) = micro_batch(rows, &device);
            let summed = (model.forward(x) - y).powi_scalar(2).sum();
            loss_sum += summed.clone().into_scalar().elem::<f64>();
            let grads = GradientsParams::from_grads(summed.backward(), &model);
            cycle.add_sum(&model, grads, rows as u64);
        }
        let examples = cycle.items();
        let mut grads = cycle.finish(&model)?;
        let norm = clip_grad_norm(&model, &mut grads, 1.0, NormType::L2, true)?;
        let lr = schedule.lr(step);
        model = optim.step(lr, model, grads);
        if step % 50 == 0 || step + 1 == steps {
            println!(
                "step {step:>3}  lr {lr:.2e}  loss {:.4}  grad norm {norm:.3}",
                loss_sum / examples as f64
            );
        }
    }
    Ok(())
}
