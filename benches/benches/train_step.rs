//! One full training step (forward, backward, clipping, AdamW) of an all-MiniLM-L6-v2-sized
//! BERT classifier (random weights, 22.7M parameters), batch 8 × 64 tokens, on burn-ndarray
//! and burn-flex (fp32 and bf16); and the trainer's overhead: the same step on burn-flex
//! through `Trainer::step` and through a bare burn loop (burn's own AdamW with clipping).
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use burn::backend::Autodiff;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use burnish_amp::Precision;
use burnish_heads::{BertForSequenceClassification, ProblemType, SequenceLabels};
use burnish_models::Autocast;
use burnish_trainer::{Trainer, TrainerConfig};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};

const BATCH: usize = 8;
const SEQ: usize = 64;

/// `Trainer::step` on the classifier in `precision`, as `name` of `group`.
fn bench_trainer<B: AutodiffBackend>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    precision: Precision,
) {
    let (model, ids, labels) = minilm_classifier::<B>();
    let model = model.with_compute_dtype(precision.compute_dtype());
    let trainer_config = TrainerConfig {
        precision,
        total_steps: 1_000_000,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, trainer_config).expect("valid settings");
    let loss = |m: &BertForSequenceClassification<B>, _: &()| {
        let logits = m.forward(ids.clone(), None, None);
        m.loss(logits, &labels).expect("labels fit")
    };
    group.bench_function(name, |b| {
        b.iter(|| trainer.step(&[()], loss).expect("step"))
    });
}

/// The classifier, its ids and labels.
fn minilm_classifier<B: AutodiffBackend>() -> (
    BertForSequenceClassification<B>,
    Tensor<B, 2, Int>,
    SequenceLabels,
) {
    let device = B::Device::default();
    let config = burnish_benches::minilm_config();
    let backbone = config.init::<B>(true, &device).expect("valid model");
    let model = BertForSequenceClassification::new(
        backbone,
        &config,
        2,
        ProblemType::SingleLabelClassification,
        &device,
    )
    .expect("valid head");
    let ids: Vec<i64> = (0..BATCH * SEQ)
        .map(|i| (i * 7919 % 29_000 + 1000) as i64)
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [BATCH, SEQ]), &device);
    let labels = SequenceLabels::Classes((0..BATCH as i64).map(|i| i % 2).collect());
    (model, ids, labels)
}

/// `Trainer::step` against the loop a burn user writes by hand for the same step: forward,
/// loss read back, backward, burn's AdamW with norm clipping. burn clips each tensor by its
/// own norm where burnish clips by the global norm and leaves biases and norms undecayed:
/// the same amount of work, not the same update.
fn trainer_overhead(c: &mut Criterion) {
    type B = Autodiff<Flex>;
    let mut group = c.benchmark_group("trainer_overhead_minilm_8x64");
    group.sample_size(10);

    bench_trainer::<B>(&mut group, "trainer", Precision::Fp32);

    let (model, ids, labels) = minilm_classifier::<B>();
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .with_epsilon(1e-8)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init::<B, BertForSequenceClassification<B>>();
    let mut model = Some(model);
    group.bench_function("bare_burn", |b| {
        b.iter(|| {
            let m = model.take().expect("the model is back after each step");
            let logits = m.forward(ids.clone(), None, None);
            let parts = m.loss(logits, &labels).expect("labels fit");
            let loss = parts.sum.div_scalar(parts.count as f64);
            let value: f32 = loss.clone().into_scalar().elem();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            model = Some(optim.step(2e-5, m, grads));
            value
        })
    });
    group.finish();
}

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step_minilm_8x64");
    group.sample_size(10);
    bench_trainer::<Autodiff<NdArray>>(&mut group, "ndarray_fp32", Precision::Fp32);
    bench_trainer::<Autodiff<Flex>>(&mut group, "flex_fp32", Precision::Fp32);
    bench_trainer::<Autodiff<Flex>>(&mut group, "flex_bf16", Precision::Bf16);
    group.finish();
}

criterion_group!(benches, train_step, trainer_overhead);
criterion_main!(benches);
