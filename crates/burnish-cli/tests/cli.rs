//! The `burnish` command end to end on the toy models and data of `tests/assets`
//! (tiny random BERT and Llama with word-level tokenizers, made by
//! `tests/reference/generate_toy.py`): training learns, the exports reload with the same
//! metrics, prediction writes one line per input, runs are deterministic, and bad configs
//! fail with one line naming the key.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use burnish::backend::{Cpu, CpuTrain};
use burnish_cli::read_config;
use burnish_tasks::{
    EvalOptions, RunOptions, RunOutcome, Silent, evaluate_dir as evaluate, fine_tune,
    predict_dir as predict,
};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets")
}

fn run(name: &str, out: &Path) -> RunOutcome {
    let config = read_config(&assets().join("configs").join(name)).unwrap();
    let options = RunOptions {
        output_dir: Some(out.to_owned()),
        ..RunOptions::default()
    };
    fine_tune::<CpuTrain>(&config, &options, &mut Silent, &Default::default()).unwrap()
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "train")
        .map(|e| e["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn sequence_classification_learns_exports_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run("toy-sentiment.toml", dir.path());
    let (before, after) = (outcome.before.unwrap(), outcome.after.unwrap());
    assert!(
        after["eval_loss"] < before["eval_loss"] / 4.0,
        "{before:?} -> {after:?}"
    );
    assert!(after["accuracy"] > 0.95, "{after:?}");
    let best = outcome.best_dir.unwrap();
    assert!(best.join("model.safetensors").is_file());
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(outcome.final_dir.join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "positive");
    assert!(outcome.final_dir.join("tokenizer.json").is_file());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["global_step"], 64);

    // The exported model evaluates to the metrics training reported.
    let data = assets().join("data/toy-sentiment/validation.jsonl");
    let metrics = evaluate::<Cpu>(
        &outcome.final_dir,
        &data,
        &EvalOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert!(
        (metrics["eval_loss"] - after["eval_loss"]).abs() < 1e-6,
        "{metrics:?}"
    );
    assert_eq!(metrics["accuracy"], after["accuracy"]);

    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"a lovely film\"}\n\n{\"text\": \"dull plot\"}\n",
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    let n = predict::<Cpu>(
        &outcome.final_dir,
        &input,
        &output,
        &EvalOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(n, 2);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["label"], "positive");
    assert_eq!(lines[1]["label"], "negative");
    assert_eq!(lines[0]["logits"].as_array().unwrap().len(), 2);
}

#[test]
fn token_classification_finds_the_entities() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run("toy-ner.toml", dir.path());
    let (before, after) = (outcome.before.unwrap(), outcome.after.unwrap());
    assert!(
        before["f1"] < 0.5 && after["f1"] > 0.95,
        "{before:?} -> {after:?}"
    );
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"tokens\": [\"bob\", \"met\", \"alice\", \"in\", \"rome\", \".\"]}\n",
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    predict::<Cpu>(
        &outcome.final_dir,
        &input,
        &output,
        &EvalOptions::default(),
        &Default::default(),
    )
    .unwrap();
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
    assert_eq!(
        line["tags"],
        serde_json::json!(["B-PER", "O", "B-PER", "O", "B-LOC", "O"])
    );
}

#[test]
fn a_tiny_llama_learns_the_instructions_and_runs_are_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let outcome = run("toy-sft.toml", a.path());
    let after = outcome.after.unwrap();
    assert!(after["eval_loss"] < 0.05, "{after:?}");
    run("toy-sft.toml", b.path());
    assert_eq!(losses(a.path()), losses(b.path()), "same seed, same losses");

    let input = a.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"what is the color of snow ?\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"say hello\"}]}\n",
    )
    .unwrap();
    let output = a.path().join("out.jsonl");
    let options = EvalOptions {
        max_new_tokens: 5,
        ..EvalOptions::default()
    };
    predict::<Cpu>(
        &outcome.final_dir,
        &input,
        &output,
        &options,
        &Default::default(),
    )
    .unwrap();
    let texts: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["white", "hello there !"]);
}

fn burnish(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_fail_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(assets().join("configs/toy-sentiment.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{}/", assets().display()));
    let cases = [
        ("lr = 3e-3", "lr = \"fast\"", "[train] lr: invalid type"),
        (
            "lr = 3e-3",
            "lr = 3e-3\nlearning_rate = 1.0",
            "unknown field `learning_rate`",
        ),
        (
            "epochs = 4",
            "epochs = 0",
            "[train] epochs: must be positive",
        ),
        (
            "max_length = 16",
            "max_length = 16\nvalidation_file = \"x\"",
            "unknown field `validation_file`",
        ),
        (
            "toy-sentiment/train.jsonl",
            "toy-sentiment/nope.jsonl",
            "[data] train: no file",
        ),
        ("path = ", "paths = ", "unknown field `paths`"),
        (
            "sequence-classification",
            "classification",
            "[model] task: unknown variant",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(base.contains(from), "{from}");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, base.replacen(from, to, 1)).unwrap();
        let (code, stderr) = burnish(&["train", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{to}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{to}: {stderr}");
        assert!(stderr.contains(expected), "{to}: {stderr}");
        assert!(stderr.contains("bad.toml"), "{to}: {stderr}");
    }
    let (code, stderr) = burnish(&["train", "--config", "/no/such.toml"]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    let (code, stderr) = burnish(&["eval", "--model", "/no/such/dir", "--data", "x.jsonl"]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(!stderr.contains("panicked"));
}
