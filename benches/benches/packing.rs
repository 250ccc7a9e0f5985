//! Causal-LM SFT steps on a length-skewed batch, padded and packed: a decoder with
//! SmolLM2-135M's layer shapes (4 of its 30 layers, random weights, 53M parameters), 8
//! examples (one of 256 tokens, seven of 20-44), one full training step (forward, backward,
//! clipping, AdamW) on burn-flex. Throughput is counted in real (non-padding) tokens.
//!
//! Padded: 8 rows of 256 positions. Packed as `TokenCache::packed_batch` lays it out (first
//! fit, longest first, rows of at most 256): 2 rows, examples numbered in the attention
//! mask, positions restarting per example, each example's first label ignored.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use burnish_heads::causal_lm_loss;
use burnish_models::LlamaForCausalLm;
use burnish_trainer::{Trainer, TrainerConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MAX_LENGTH: usize = 256;
const LENGTHS: [usize; 8] = [256, 20, 44, 28, 36, 24, 40, 32];
const IGNORE: i64 = -100;

/// Inputs of one micro-batch `[rows, seq]`: ids, mask, positions (None = 0..seq), labels.
struct Inputs {
    shape: [usize; 2],
    ids: Vec<i64>,
    mask: Vec<i64>,
    positions: Option<Vec<i64>>,
    labels: Vec<i64>,
}

fn example(e: usize) -> Vec<i64> {
    (0..LENGTHS[e])
        .map(|t| ((e * 7919 + t * 104_729) % 48_000 + 100) as i64)
        .collect()
}

fn padded() -> Inputs {
    let (rows, seq) = (LENGTHS.len(), MAX_LENGTH);
    let mut inputs = Inputs {
        shape: [rows, seq],
        ids: Vec::new(),
        mask: Vec::new(),
        positions: None,
        labels: Vec::new(),
    };
    for e in 0..rows {
        let ids = example(e);
        let pad = seq - ids.len();
        inputs.mask.extend(std::iter::repeat_n(1, ids.len()));
        inputs.mask.extend(std::iter::repeat_n(0, pad));
        inputs.labels.extend(&ids);
        inputs.labels.extend(std::iter::repeat_n(IGNORE, pad));
        inputs.ids.extend(ids);
        inputs.ids.extend(std::iter::repeat_n(0, pad));
    }
    inputs
}

fn packed() -> Inputs {
    let mut order: Vec<usize> = (0..LENGTHS.len()).collect();
    order.sort_by_key(|&e| std::cmp::Reverse(LENGTHS[e]));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for e in order {
        match rows.iter_mut().find(|(n, _)| n + LENGTHS[e] <= MAX_LENGTH) {
            Some((n, members)) => {
                *n += LENGTHS[e];
                members.push(e);
            }
            None => rows.push((LENGTHS[e], vec![e])),
        }
    }
    let seq = rows.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let (mut ids, mut mask, mut positions, mut labels) = (vec![], vec![], vec![], vec![]);
    for (n, members) in &rows {
        for (segment, &e) in (1i64..).zip(members) {
            let tokens = example(e);
            mask.extend(std::iter::repeat_n(segment, tokens.len()));
            positions.extend(0..tokens.len() as i64);
            labels.push(IGNORE);
            labels.extend(&tokens[1..]);
            ids.extend(tokens);
        }
        let pad = seq - n;
        ids.extend(std::iter::repeat_n(0, pad));
        mask.extend(std::iter::repeat_n(0, pad));
        positions.extend(std::iter::repeat_n(0, pad));
        labels.extend(std::iter::repeat_n(IGNORE, pad));
    }
    Inputs {
        shape: [rows.len(), seq],
        ids,
        mask,
        positions: Some(positions),
        labels,
    }
}

fn bench_layout<B: AutodiffBackend>(c: &mut Criterion, name: &str, inputs: Inputs) {
    let device = B::Device::default();
    let config = burnish_benches::smollm2_config(4);
    let model = config.init::<B>(&device).expect("valid model");
    let trainer_config = TrainerConfig {
        total_steps: 1_000_000,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, trainer_config).expect("valid settings");
    let ints = |v: &[i64]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(v.to_vec(), inputs.shape), &device)
    };
    let (ids, mask) = (ints(&inputs.ids), ints(&inputs.mask));
    let positions = inputs.positions.as_deref().map(ints);
    let labels = inputs.labels.clone();
    let loss = |m: &LlamaForCausalLm<B>, _: &()| {
        let hidden = match &positions {
            Some(p) => {
                m.model
                    .forward_with_positions(ids.clone(), Some(mask.clone()), p.clone(), None)
            }
            None => m.model.forward(ids.clone(), Some(mask.clone()), None),
        };
        causal_lm_loss(m.project(hidden), &labels).expect("labels fit")
    };
    let mut group = c.benchmark_group("sft_step_skewed_8_examples");
    group.sample_size(10);
    group.throughput(Throughput::Elements(LENGTHS.iter().sum::<usize>() as u64));
    group.bench_function(name, |b| {
        b.iter(|| trainer.step(&[()], loss).expect("step"))
    });
    group.finish();
}

fn packing(c: &mut Criterion) {
    bench_layout::<Autodiff<Flex>>(c, "padded_8x256", padded());
    bench_layout::<Autodiff<Flex>>(c, "packed_2x256", packed());
}

criterion_group!(benches, packing);
criterion_main!(benches);
