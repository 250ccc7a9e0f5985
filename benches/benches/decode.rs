//! Decoding on burn-flex: one row through a SmolLM2-sized projection (burnish's product on
//! its spinning threads against burn-flex's own matmul, which ran it through rayon), and
//! greedy generation with a decoder of SmolLM2-135M's shapes (4 of its 30 layers, random
//! weights): an 8-token prompt, then 16 tokens through the KV cache.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use burn::tensor::{Distribution, Tensor};
use burn_flex::Flex;
use burnish_heads::{GenerationConfig, generate};
use burnish_models::fused::linear_rows;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn product(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("decode_product_1x576x1536");
    let x = Tensor::<Flex, 2>::random([1, 576], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<Flex, 2>::random([576, 1536], Distribution::Normal(0.0, 0.02), &device);
    group.throughput(Throughput::Bytes((576 * 1536 * 4) as u64));
    group.bench_function("burnish", |b| {
        b.iter(|| linear_rows(x.clone(), w.clone(), None))
    });
    group.bench_function("burn_matmul", |b| b.iter(|| x.clone().matmul(w.clone())));
    group.finish();
}

fn greedy(c: &mut Criterion) {
    let model = burnish_benches::smollm2_config(4)
        .init::<Flex>(&Default::default())
        .expect("valid model");
    let prompt: Vec<i64> = (0..8).map(|t| 100 + 977 * t).collect();
    let config = GenerationConfig {
        max_new_tokens: 16,
        ..GenerationConfig::default()
    };
    let mut group = c.benchmark_group("decode_greedy_smollm2_4_layers");
    group.sample_size(10);
    group.throughput(Throughput::Elements(16));
    group.bench_function("prompt_8_new_16", |b| {
        b.iter(|| generate(&model, &prompt, &config))
    });
    group.finish();
}

criterion_group!(benches, product, greedy);
criterion_main!(benches);
