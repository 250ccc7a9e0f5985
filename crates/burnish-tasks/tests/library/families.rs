//! The newer model families through the whole library path: a tiny checkpoint written by
//! transformers (tests/reference/generate_families.py) with a toy tokenizer beside it,
//! `fine_tune` for a few dozen steps, the export evaluated again by `evaluate_dir` (which
//! rebuilds the head from the exported `config.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burnish_tasks::{EvalOptions, evaluate_dir};
use serde_json::{Value, json};

use super::{assets, fine_tune_with};

/// A model directory: `checkpoint`'s config and weights, `tokenizer`'s tokenizer files.
fn family_dir(checkpoint: &str, tokenizer: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let models = assets().join("../reference/models");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(models.join(checkpoint).join(file), dir.path().join(file)).unwrap();
    }
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(assets().join(tokenizer).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

/// Trains `model` on the toy data set `data` with `task` (and `labels`), returns the
/// metrics before and after and the export's metrics on the validation file.
fn run(
    checkpoint: &str,
    tokenizer: &str,
    model: Value,
    data: &str,
    train: Value,
) -> (
    BTreeMap<String, f64>,
    BTreeMap<String, f64>,
    BTreeMap<String, f64>,
) {
    let dir = family_dir(checkpoint, tokenizer);
    let out = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = assets().join("data").join(data);
    let config = json!({
        "model": {"path": dir.path()},
        "data": {"train": data_dir.join("train.jsonl"),
                 "validation": data_dir.join("validation.jsonl"), "max_length": 32},
        "train": {"output_dir": out.path().join("run"), "seed": 3, "log_every": 1000},
    });
    let outcome = fine_tune_with(config, [("model", model), ("train", train)]);
    let (before, after) = (outcome.before.unwrap(), outcome.after.unwrap());
    let again = evaluate_dir::<burn_flex::Flex<f32, i32>>(
        Path::new(&outcome.final_dir),
        &data_dir.join("validation.jsonl"),
        &EvalOptions::default(),
        &Default::default(),
    )
    .unwrap();
    eprintln!("{checkpoint}: before {before:?}\n  after {after:?}\n  export {again:?}");
    (before, after, again)
}

/// The same metric from the run's last evaluation and from the reloaded export.
fn same(after: &BTreeMap<String, f64>, again: &BTreeMap<String, f64>, key: &str) {
    assert!(
        (after[key] - again[key]).abs() <= 1e-5 * after[key].abs().max(1.0),
        "{key}: {} in the run, {} from the export",
        after[key],
        again[key]
    );
}

#[test]
fn new_encoders_learn_toy_sentiment_and_tags() {
    let sentiment = json!({"task": "sequence-classification", "labels": ["negative", "positive"],
                           "dropout": 0.0});
    // The DeBERTa and ModernBERT checkpoints have weights of std 0.3 (strong signals for the
    // parity tests), slow starting points: more steps than the toy BERT needs.
    let train = json!({"max_steps": 128, "batch_size": 16, "lr": 1e-2, "warmup_ratio": 0.1,
                       "eval_every": 128});
    for checkpoint in ["distilbert-tiny", "deberta-v3-tiny", "modernbert-tiny"] {
        let (before, after, again) = run(
            checkpoint,
            "toy-bert",
            sentiment.clone(),
            "toy-sentiment",
            train.clone(),
        );
        assert!(
            after["accuracy"] >= 0.9 && after["accuracy"] > before["accuracy"],
            "{checkpoint}: accuracy {} -> {}",
            before["accuracy"],
            after["accuracy"]
        );
        same(&after, &again, "accuracy");
    }
    let tags = json!({"task": "token-classification",
                      "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], "dropout": 0.0});
    for checkpoint in ["deberta-v2-tiny", "modernbert-tiny"] {
        let (before, after, again) = run(
            checkpoint,
            "toy-bert",
            tags.clone(),
            "toy-ner",
            train.clone(),
        );
        assert!(
            after["f1"] >= 0.8 && after["f1"] > before["f1"],
            "{checkpoint}: entity F1 {} -> {}",
            before["f1"],
            after["f1"]
        );
        same(&after, &again, "f1");
    }
}

#[test]
fn new_decoders_memorize_toy_instructions() {
    let train = json!({"epochs": 40, "batch_size": 7, "lr": 1e-2, "weight_decay": 0.0,
                       "warmup_steps": 5, "eval_every": 1000});
    for checkpoint in ["qwen3-tiny", "phi3-tiny", "gemma2-tiny", "gemma3-tiny"] {
        let (before, after, again) = run(
            checkpoint,
            "toy-llama",
            json!({"task": "causal-lm"}),
            "toy-sft",
            train.clone(),
        );
        assert!(
            after["eval_loss"] < 0.5 * before["eval_loss"],
            "{checkpoint}: eval loss {} -> {}",
            before["eval_loss"],
            after["eval_loss"]
        );
        same(&after, &again, "eval_loss");
    }
}
