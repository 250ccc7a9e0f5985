//! Data parallel in one process: 2 and 3 workers (threads over burn-collective) against one
//! worker with the same global batch, with accumulation, clipping, warmup and shuffling,
//! dropout off, an item count that the workers do not divide, and a last batch with fewer
//! rows than workers; the distributed sampler; fp16 skips agreed by all workers.

use std::path::Path;

use burnish_tasks::{RunConfig, RunOptions, Silent, fine_tune_on};
use serde_json::json;

use super::{Flex, Weights, assets, losses, weights};

/// burn-collective keeps one group per backend type and process: the tests that form one
/// take turns.
static ONE_GROUP_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(dir: &Path, data: &Path, workers: usize) -> (Weights, Vec<(u64, f64)>) {
    let assets = assets();
    let mut config = json!({
        "model": {"path": assets.join("toy-bert"), "task": "sequence-classification",
                  "labels": ["negative", "positive"], "dropout": 0.0},
        "data": {"train": data, "validation": assets.join("data/toy-sentiment/validation.jsonl"),
                 "max_length": 16},
        "train": {"max_steps": 10, "batch_size": 5, "grad_accum": 2, "lr": 3e-3,
                  "warmup_steps": 3, "max_grad_norm": 0.5, "log_every": 1, "eval_every": 5,
                  "output_dir": dir, "seed": 7},
    });
    if workers > 1 {
        config["distributed"] = json!({"devices": vec!["cpu"; workers], "timeout_secs": 120});
    }
    let config: RunConfig = serde_json::from_value(config).unwrap();
    let devices = vec![Default::default(); workers];
    let outcome =
        fine_tune_on::<Flex>(&config, &RunOptions::default(), &mut Silent, &devices).unwrap();
    assert_eq!(outcome.summary.steps, 10);
    (
        weights(&outcome.final_dir.join("model.safetensors")),
        losses(dir),
    )
}

#[test]
fn two_and_three_workers_train_like_one() {
    let _turn = ONE_GROUP_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    // 61 rows in batches of 5: 12 full batches and one of 1 row, which leaves workers 1 and
    // 2 with nothing; 5 rows split 3 + 2 and 2 + 2 + 1.
    let rows: Vec<String> =
        std::fs::read_to_string(assets().join("data/toy-sentiment/train.jsonl"))
            .unwrap()
            .lines()
            .take(61)
            .map(str::to_owned)
            .collect();
    let data = tmp.path().join("train.jsonl");
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let (one, one_losses) = run(&tmp.path().join("one"), &data, 1);
    assert_eq!(one_losses.len(), 10);
    for workers in [2, 3] {
        let dir = tmp.path().join(format!("w{workers}"));
        let (many, many_losses) = run(&dir, &data, workers);
        assert_eq!(
            many.keys().collect::<Vec<_>>(),
            one.keys().collect::<Vec<_>>()
        );
        // Element-wise |a − b| ≤ 1e-5·|a| + 1e-6 (torch.testing's float32 atol is 1e-5):
        // parameters that start at 0 have moved by ~lr, and Adam turns the rounding noise
        // of their near-0 gradient components into steps of that size.
        let mut worst = (0.0f32, 0.0f32, String::new());
        for (name, a) in &one {
            for (x, y) in a.iter().zip(&many[name]) {
                let excess = (x - y).abs() - 1e-5 * x.abs();
                if excess > worst.0 {
                    worst = (excess, (x - y).abs() / x.abs(), name.clone());
                }
            }
        }
        eprintln!(
            "{workers} workers: largest |a − b| − 1e-5·|a| = {:.2e} ({})",
            worst.0, worst.2
        );
        assert!(
            worst.0 <= 1e-6,
            "{workers} workers: {} is off by {:.2e}",
            worst.2,
            worst.0
        );
        for ((s1, l1), (s2, l2)) in one_losses.iter().zip(&many_losses) {
            assert_eq!(s1, s2);
            assert!(
                (l1 - l2).abs() <= 1e-5 * l1.abs(),
                "step {s1}: loss {l1} vs {l2}"
            );
        }
        // Rank 0 alone writes: the same outputs as one worker.
        assert!(dir.join("best/model.safetensors").is_file());
        assert!(dir.join("results.json").is_file());
    }
}

/// The distributed sampler: for 1-5 workers, shuffled and length-grouped, the workers'
/// parts of every micro-batch, in rank order, are the one-worker micro-batch, so every
/// example is seen exactly once per epoch and each step's examples do not depend on the
/// number of workers.
#[test]
fn the_parts_of_every_batch_are_the_one_worker_batch() {
    use burnish_data::{BadRows, Task, TokenCache};
    use burnish_loader::HfModelDir;
    use burnish_tasks::{CacheData, TaskSetup};
    use burnish_trainer::TrainData;

    type Inner = burn_flex::Flex<f32, i32>;
    let dir = tempfile::tempdir().unwrap();
    let hf = HfModelDir::open(&assets().join("toy-bert")).unwrap();
    let labels = vec!["negative".to_owned(), "positive".to_owned()];
    let setup = TaskSetup::new(&hf, Task::SequenceClassification, 16, labels).unwrap();
    let train = assets().join("data/toy-sentiment/train.jsonl");
    let encoder = setup.encoder(true);
    let (cache, _) =
        TokenCache::open_or_build(&train, &encoder, BadRows::Fail, dir.path()).unwrap();
    let device = Default::default();
    for grouped in [false, true] {
        let data = |rank: usize, world: usize| {
            let data = CacheData::<Inner>::new(&cache, 7, 0, 3, true, &device).unwrap();
            let data = if grouped {
                data.grouped_by_length().unwrap()
            } else {
                data
            };
            data.shard(rank, world).unwrap()
        };
        let mut one = data(0, 1);
        for epoch in 0..2 {
            let batches = one.epoch_len(epoch).unwrap();
            let mut seen = Vec::new();
            for world in 1..6 {
                let mut parts: Vec<_> = (0..world).map(|rank| data(rank, world)).collect();
                for index in 0..batches {
                    let whole = one.local_indices(epoch, index).unwrap();
                    let joined: Vec<usize> = parts
                        .iter_mut()
                        .flat_map(|p| p.local_indices(epoch, index).unwrap())
                        .collect();
                    assert_eq!(
                        joined, whole,
                        "epoch {epoch}, batch {index}, {world} workers"
                    );
                    if world == 1 {
                        seen.extend(whole);
                    }
                }
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..cache.len()).collect::<Vec<_>>(), "epoch {epoch}");
        }
    }
}

/// Trainers in step: fp16 loss scaling decides the same skips on every worker, and the
/// workers' models stay bit-identical.
mod fp16 {
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
        let _turn = super::ONE_GROUP_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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
            Ok::<_, burnish_trainer::SyncError>((skipped, weights))
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
}
