//! One AdamW step over BERT-base-sized parameters (110M elements), warm state.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn_ndarray::NdArray;
use burnish_benches::{ParamStack, bert_base_shapes};
use burnish_optim::{AdamW, AdamWConfig, ParamGroups};
use criterion::{Criterion, criterion_group, criterion_main};

type B = Autodiff<NdArray>;

fn adamw(c: &mut Criterion) {
    let model = ParamStack::<B>::new(&bert_base_shapes(), &Default::default());
    let mut optim =
        AdamW::new(AdamWConfig::default(), ParamGroups::default()).expect("valid config");
    // One step first so the moments exist, as in every step but the first of a real run.
    let grads = model.random_grads();
    let mut slot = Some(optim.step(1e-5, model, grads));
    let numel = slot.as_ref().map_or(0, |m| m.numel());
    let mut group = c.benchmark_group("adamw_step");
    group.sample_size(10);
    group.bench_function(format!("bert_base_{}M", numel / 1_000_000), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let Some(model) = slot.take() else { break };
                let grads = model.random_grads();
                let start = Instant::now();
                slot = Some(optim.step(1e-5, model, grads));
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, adamw);
criterion_main!(benches);
