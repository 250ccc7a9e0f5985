//! One global-norm clip over a BERT-base-sized set of gradients (110M elements).
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use burn::backend::Autodiff;
use burn_ndarray::NdArray;
use burnish_benches::{ParamStack, bert_base_shapes};
use burnish_grad::{NormType, clip_grad_norm};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

type B = Autodiff<NdArray>;

fn clip(c: &mut Criterion) {
    let model = ParamStack::<B>::new(&bert_base_shapes(), &Default::default());
    let mut group = c.benchmark_group("clip_grad_norm");
    group.sample_size(10);
    group.bench_function(format!("bert_base_{}M", model.numel() / 1_000_000), |b| {
        b.iter_batched(
            || model.random_grads(),
            |mut grads| clip_grad_norm(&model, &mut grads, 1.0, NormType::L2, false),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, clip);
criterion_main!(benches);
