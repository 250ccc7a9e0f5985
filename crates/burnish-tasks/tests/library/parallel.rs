//! Data parallel in one process: 2 and 3 workers (threads over burn-collective) against one
//! worker with the same global batch, with accumulation, clipping, warmup and shuffling,
//! dropout off, an item count that the workers do not divide, and a last batch with fewer
//! rows than workers.

use std::collections::BTreeMap;
use std::path::Path;

use burnish_tasks::{RunConfig, RunOptions, Silent, fine_tune_on};
use serde_json::{Value, json};

use super::{Flex, assets};

/// Every float tensor of a safetensors file, by name.
fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The train losses of `metrics.jsonl`, by step.
fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|e| Some((e["step"].as_u64()?, e.get("loss")?.as_f64()?)))
        .collect()
}

fn run(dir: &Path, data: &Path, workers: usize) -> (BTreeMap<String, Vec<f32>>, Vec<(u64, f64)>) {
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
        let mut errors = Vec::new();
        for (name, a) in &one {
            let b = &many[name];
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
            errors.push((diff / scale.max(1e-12), diff, name.clone()));
        }
        errors.sort_by(|x, y| y.0.total_cmp(&x.0));
        eprintln!("{workers} workers, worst: {:?}", &errors[..4]);
        for (rel, diff, name) in errors {
            // A key bias adds the same score to every key of a query, which softmax cancels:
            // its exact gradient is 0, only rounding noise moves it (by ~1e-8 here), so it
            // is compared in absolute terms.
            if name.ends_with("key.bias") {
                assert!(
                    diff <= 1e-6,
                    "{workers} workers: {name} differs by {diff:.2e}"
                );
                continue;
            }
            assert!(
                rel <= 1e-5,
                "{workers} workers: {name} differs by {rel:.2e} relative"
            );
        }
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
