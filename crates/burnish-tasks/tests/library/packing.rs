//! Packed causal-LM batches (`[data] packing = true`) against the same run unpacked: the
//! examples of each micro-batch packed into fewer rows compute the same loss and, with
//! dropout off, the same updates.

use std::path::Path;

use serde_json::{Value, json};

use super::{Weights, assets, fine_tune_with, weights};

/// A length-skewed instruction set: a few long texts among many short prompt/response
/// pairs, in the toy Llama's vocabulary.
fn skewed_rows(path: &Path) {
    let words = [
        "the", "sky", "is", "blue", "grass", "green", "snow", "white", "coal", "black", "fire",
        "red",
    ];
    let mut rows = Vec::new();
    for i in 0..30usize {
        let row = if i % 10 == 3 {
            let text: Vec<&str> = (0..26).map(|k| words[(i + 5 * k) % words.len()]).collect();
            json!({"text": text.join(" ")})
        } else {
            let (thing, color) = (words[2 * (i % 6) + 1], words[(2 * (i % 6) + 4) % 12]);
            json!({"prompt": format!("what is the color of {thing} ?"), "response": color})
        };
        rows.push(row.to_string());
    }
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}

/// A logged training step.
struct Step {
    step: u64,
    loss: f64,
    grad_norm: f64,
}

fn run(dir: &Path, data: &Path, packing: bool, steps: u64) -> (Weights, Vec<Step>) {
    let config = json!({
        "model": {"path": assets().join("toy-llama"), "task": "causal-lm"},
        "data": {"train": data, "max_length": 32, "packing": packing},
        "train": {"max_steps": steps, "batch_size": 10, "grad_accum": 2, "lr": 5e-3,
                  "warmup_steps": 1, "max_grad_norm": 1.0, "log_every": 1,
                  "eval_at_start": false, "output_dir": dir, "seed": 5},
    });
    let outcome = fine_tune_with(config, std::iter::empty());
    assert_eq!(outcome.summary.steps, steps);
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let steps = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "train")
        .map(|e| Step {
            step: e["step"].as_u64().unwrap(),
            loss: e["loss"].as_f64().unwrap(),
            grad_norm: e["grad_norm"].as_f64().unwrap(),
        })
        .collect();
    (weights(&outcome.final_dir.join("model.safetensors")), steps)
}

/// The steps' losses and gradient norms agree within 1e-5 relative (the gradients
/// themselves: `model_parity::packed_rows_give_the_gradients_of_separate_examples`), and the
/// weights within 1e-4 of each tensor's norm (measured here: 1.5e-7). The bound is looser
/// than the losses' because AdamW's first step moves every element by about ±lr whatever
/// its gradient's size: an element whose gradient sums to almost nothing (|g| near
/// ε = 1e-8) turns float rounding into a step difference (without warmup, one element of
/// the 4608 of a projection moved 2.9e-5 apart, 2e-5 of the tensor's norm).
#[test]
fn packed_batches_train_like_unpacked_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.jsonl");
    skewed_rows(&data);
    let (plain, plain_log) = run(&tmp.path().join("plain"), &data, false, 4);
    let (packed, packed_log) = run(&tmp.path().join("packed"), &data, true, 4);
    assert_eq!(plain_log.len(), 4);
    for (a, b) in plain_log.iter().zip(&packed_log) {
        assert_eq!(a.step, b.step);
        for (what, x, y) in [
            ("loss", a.loss, b.loss),
            ("grad_norm", a.grad_norm, b.grad_norm),
        ] {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs(),
                "step {}: {what} {x} vs {y}",
                a.step
            );
            eprintln!("step {}: {what} {x} vs {y}", a.step);
        }
    }
    let mut worst = 0.0f32;
    for (name, a) in &plain {
        let b = &packed[name];
        let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt();
        assert!(
            diff <= 1e-4 * norm,
            "{name}: off by {diff:e} (norm {norm:e})"
        );
        worst = worst.max(diff / norm);
    }
    eprintln!("packed vs unpacked after 4 steps: largest ‖a − b‖ / ‖a‖ = {worst:.2e}");
}

#[test]
fn packing_is_refused_for_other_tasks() {
    let assets = assets();
    let config = json!({
        "model": {"path": assets.join("toy-bert"), "task": "sequence-classification",
                  "labels": ["negative", "positive"]},
        "data": {"train": assets.join("data/toy-sentiment/train.jsonl"), "packing": true},
        "train": {"max_steps": 1},
    });
    let config: burnish_tasks::RunConfig = serde_json::from_value(config).unwrap();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("data.packing") && err.contains("causal-LM"),
        "{err}"
    );
}
