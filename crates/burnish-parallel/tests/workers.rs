//! Trainers in step over burnish-parallel: fp16 loss scaling decides the same skips on
//! every worker, and the workers' models stay bit-identical.
#![allow(clippy::unwrap_used)]

use burn::backend::Autodiff;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use burnish_amp::{LossScalerConfig, Precision};
use burnish_heads::LossParts;
use burnish_parallel::{
    Abort, CollectiveSync, Topology, replicate, reset_local_group, run_workers, shard_range,
};
use burnish_trainer::{Trainer, TrainerConfig};

type B = Autodiff<Flex>;

/// Cross-entropy summed over rows `rows` of a fixed batch of 10.
fn loss(model: &Linear<B>, rows: std::ops::Range<usize>) -> LossParts<B> {
    let device = Default::default();
    let n = rows.len();
    let x: Vec<f32> = rows
        .clone()
        .flat_map(|r| (0..4).map(move |c| ((r * 4 + c) as f32 * 0.37).sin()))
        .collect();
    let labels: Vec<i64> = rows.map(|r| (r % 3) as i64).collect();
    let x = Tensor::<B, 2>::from_data(TensorData::new(x, [n, 4]), &device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [n, 1]), &device);
    let sum = log_softmax(model.forward(x), 1)
        .gather(1, labels)
        .sum()
        .neg();
    LossParts {
        sum,
        count: n as u64,
    }
}

#[test]
fn fp16_overflow_skips_the_same_steps_on_every_worker() {
    reset_local_group::<Flex>();
    let device = Default::default();
    let model: Linear<B> = LinearConfig::new(4, 3).init(&device);
    let workers = 3;
    let mut models = replicate(&model, &vec![device; workers]);
    // A scale so large that the scaled loss of the whole batch overflows f32 until it has
    // backed off a few times; shards of fewer rows overflow at other scales, and the
    // summed gradients must make every worker skip together.
    let config = TrainerConfig {
        precision: Precision::Fp16,
        loss_scaler: LossScalerConfig {
            init_scale: 3.0e38,
            ..LossScalerConfig::default()
        },
        total_steps: 12,
        lr: 1e-2,
        max_grad_norm: Some(1.0),
        ..TrainerConfig::default()
    };
    let topology = Topology::local(workers);
    let abort = Abort::new();
    let models: Vec<_> = (0..workers)
        .map(|_| std::sync::Mutex::new(Some(models.remove(0))))
        .collect();
    let work = |local: usize| {
        let model = models[local].lock().unwrap().take().unwrap();
        let sync = CollectiveSync::<Flex>::register(&topology, local, device, abort.clone())?;
        let mut trainer = Trainer::new(model, config.clone())
            .unwrap()
            .with_grad_sync(sync);
        let rows = shard_range(10, local, workers);
        let mut skipped = Vec::new();
        for _ in 0..12 {
            let report = trainer
                .step(&[()], |m: &Linear<B>, _: &()| loss(m, rows.clone()))
                .unwrap();
            skipped.push(report.skipped);
        }
        let weights = trainer.model().weight.val().into_data();
        trainer.finish_grad_sync().unwrap();
        Ok::<_, burnish_grad::SyncError>((skipped, weights))
    };
    let (first, others) = run_workers(workers, &abort, |l| l, || work(0), work).unwrap();
    assert!(
        first.0.iter().any(|&s| s),
        "no step overflowed: {:?}",
        first.0
    );
    assert!(
        first.0.iter().any(|&s| !s),
        "every step overflowed: {:?}",
        first.0
    );
    for (skipped, weights) in others {
        assert_eq!(skipped, first.0);
        assert_eq!(weights, first.1, "the workers' models differ");
    }
}
