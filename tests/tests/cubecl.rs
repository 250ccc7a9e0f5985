//! burnish on burn's CubeCL stack without a GPU: burn-wgpu (burn-cubecl + burn-fusion, as
//! burn-cuda, with another kernel compiler) on Mesa's lavapipe, Vulkan run on the CPU. The
//! same runs are made on burn-ndarray and compared: what differs between the two stacks
//! (lazy fused kernels, autotune, `i32` integers, `u32` booleans, device reads as syncs, the
//! half-precision kernels) shows here rather than on a user's GPU.
//!
//! One test binary, built only with `--features wgpu` (`scripts/cubecl-check.sh`), a few
//! tests on the toy models of `tests/assets`. Every kernel shape costs a shader compilation
//! on lavapipe (about 1-2 s), so the runs are short.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burnish_heads::{BertForQuestionAnswering, GenerationConfig, generate};
use burnish_loader::{HfModelDir, LoadOptions};
use burnish_tasks::{Resume, RunConfig, RunOptions, RunOutcome, Silent, TaskError, fine_tune};
use serde_json::{Value, json};

type Gpu = burnish::backend::Wgpu;
type Cpu = burn_ndarray::NdArray<f32>;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// A short run of `task` on a toy model, every training feature on: dropout (its masks come
/// from the thread's generator, so both backends draw the same), accumulation, clipping,
/// warmup, AdamW with weight decay, evaluation before and after, a checkpoint every 2 steps.
fn config(task: &str, out: &Path, extra: Value) -> RunConfig {
    let data = |name: &str| assets().join("data").join(name);
    let (model, labels, train, validation) = match task {
        "sequence-classification" => (
            "toy-bert",
            json!(["negative", "positive"]),
            data("toy-sentiment/train.jsonl"),
            data("toy-sentiment/validation.jsonl"),
        ),
        "token-classification" => (
            "toy-bert",
            json!(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
            data("toy-ner/train.jsonl"),
            data("toy-ner/validation.jsonl"),
        ),
        "causal-lm" => (
            "toy-llama",
            Value::Null,
            data("toy-sft/train.jsonl"),
            data("toy-sft/validation.jsonl"),
        ),
        other => panic!("no toy run for {other}"),
    };
    let mut config = json!({
        "model": {"path": assets().join(model), "task": task, "labels": labels},
        "data": {"train": train, "validation": validation, "max_length": 16},
        "train": {"max_steps": 4, "batch_size": 8, "grad_accum": 2, "lr": 5e-3,
                  "warmup_steps": 1, "weight_decay": 0.01, "max_grad_norm": 1.0,
                  "eval_every": 4, "save_every": 2, "seed": 7, "output_dir": out},
    });
    if labels_absent(&config) {
        config["model"].as_object_mut().unwrap().remove("labels");
    }
    if task != "causal-lm" {
        config["model"]["dropout"] = json!(0.1);
    }
    for (section, fields) in extra.as_object().unwrap() {
        for (k, v) in fields.as_object().unwrap() {
            config[section][k] = v.clone();
        }
    }
    serde_json::from_value(config).unwrap()
}

fn labels_absent(config: &Value) -> bool {
    config["model"]["labels"].is_null()
}

fn run<B: AutodiffBackend>(
    config: &RunConfig,
    options: RunOptions,
) -> Result<RunOutcome, TaskError> {
    fine_tune::<B>(config, &options, &mut Silent, &Default::default())
}

/// The float tensors of an exported model, by name.
fn weights(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The largest `|a − b| / (rtol·max|b| + atol)` over all tensors (≤ 1 passes), and the
/// tensor where it is.
fn excess(
    a: &BTreeMap<String, Vec<f32>>,
    b: &BTreeMap<String, Vec<f32>>,
    rtol: f32,
    atol: f32,
) -> (f32, String) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = (0.0f32, String::new());
    for (name, x) in a {
        let y = &b[name];
        if name.ends_with("attention.self.key.bias") {
            // Adding b_k to every key adds q·b_k to all of a query's scores, which the
            // softmax ignores: its gradient is 0 in exact arithmetic and rounding noise in
            // float, and Adam turns noise into steps of about lr in either direction, on
            // each stack its own way (measured: the worst tensor before this exclusion).
            assert!(x.iter().all(|v| v.is_finite()), "{name}");
            continue;
        }
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (p, q) in x.iter().zip(y) {
            assert!(p.is_finite(), "{name}: {p}");
            let e = (p - q).abs() / (rtol * scale + atol);
            if e > worst.0 {
                worst = (e, name.clone());
            }
        }
    }
    worst
}

fn close(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, tol: f64, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, x) in a {
        let y = b[k];
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what} {k}: wgpu {x}, ndarray {y}"
        );
    }
}

#[test]
fn every_task_trains_as_on_the_cpu() {
    for task in [
        "sequence-classification",
        "token-classification",
        "causal-lm",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gpu = run::<Autodiff<Gpu>>(
            &config(task, &dir.path().join("gpu"), json!({})),
            RunOptions::default(),
        )
        .unwrap();
        let cpu = run::<Autodiff<Cpu>>(
            &config(task, &dir.path().join("cpu"), json!({})),
            RunOptions::default(),
        )
        .unwrap();
        assert_eq!(gpu.summary.steps, 4, "{task}");
        eprintln!(
            "{task}: before {:?} / {:?}\n  after {:?} / {:?}",
            gpu.before, cpu.before, gpu.after, cpu.after
        );
        close(
            gpu.before.as_ref().unwrap(),
            cpu.before.as_ref().unwrap(),
            1e-5,
            task,
        );
        close(
            gpu.after.as_ref().unwrap(),
            cpu.after.as_ref().unwrap(),
            1e-3,
            task,
        );
        // Four AdamW steps of f32 computed in another order: Adam divides each gradient by
        // its own running RMS (ε 1e-8), so components with tiny gradients turn the stacks'
        // rounding differences into visible steps. Measured (key biases included): 0.2 and
        // 0.13 of 1e-4 relative for the encoders; 2.2e-4 relative for the decoder (in
        // `o_proj`), whose eval losses agree to 1e-7.
        let rtol = if task == "causal-lm" { 5e-4 } else { 1e-4 };
        let (gpu, cpu) = (weights(&gpu.final_dir), weights(&cpu.final_dir));
        let (e, name) = excess(&gpu, &cpu, rtol, 1e-6);
        eprintln!("{task}: weight excess {e} (in {name})");
        assert!(e <= 1.0, "{task}: {name} differs by {e}× the tolerance");
    }
}

#[test]
fn a_resumed_run_ends_where_the_uninterrupted_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let task = "sequence-classification";
    let whole = run::<Autodiff<Gpu>>(
        &config(task, &dir.path().join("a"), json!({})),
        RunOptions::default(),
    )
    .unwrap();
    let out = dir.path().join("b");
    let c = config(task, &out, json!({}));
    let stopped = RunOptions {
        stop_after: Some(2),
        ..RunOptions::default()
    };
    run::<Autodiff<Gpu>>(&c, stopped).unwrap();
    assert!(out.join("checkpoint-2").is_dir());
    let resume = RunOptions {
        resume: Some(Resume::Latest),
        ..RunOptions::default()
    };
    let resumed = run::<Autodiff<Gpu>>(&c, resume).unwrap();
    assert_eq!(weights(&resumed.final_dir), weights(&whole.final_dir));
}

/// burn-flex: the CPU backend with half precision, the reference of the fp16 run.
type Flex = burn_flex::Flex<f32, i32>;

#[test]
fn fp16_trains_with_loss_scaling_and_bf16_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let task = "sequence-classification";
    let fp16 = json!({"train": {"precision": "fp16"}});
    let gpu = run::<Autodiff<Gpu>>(
        &config(task, &dir.path().join("g"), fp16.clone()),
        RunOptions::default(),
    )
    .unwrap();
    let cpu = run::<Autodiff<Flex>>(
        &config(task, &dir.path().join("c"), fp16),
        RunOptions::default(),
    )
    .unwrap();
    eprintln!("fp16 wgpu {:?} vs burn-flex {:?}", gpu.after, cpu.after);
    // A step skipped on one stack (loss-scale overflow) and not on the other would move the
    // eval loss by more than 1e-5 and the weights by about lr (5e-3 per element, several
    // 1e-2 of a tensor's largest value). Half-precision matmuls round differently on the
    // two stacks, and Adam turns that into visible steps on components with tiny
    // gradients: measured 3.1e-6 on the eval loss, and weights at 0.82 of this bound at
    // worst (the pooler's bias; the word embeddings' rare rows at 0.6).
    close(
        gpu.after.as_ref().unwrap(),
        cpu.after.as_ref().unwrap(),
        2e-5,
        "fp16",
    );
    let (gpu, cpu) = (weights(&gpu.final_dir), weights(&cpu.final_dir));
    let (e, name) = excess(&gpu, &cpu, 1e-2, 1e-5);
    eprintln!("fp16: weight excess {e} (in {name})");
    assert!(e <= 1.0, "fp16: {name} differs by {e}× the tolerance");

    let bf16 = json!({"train": {"precision": "bf16"}});
    let err = run::<Autodiff<Gpu>>(
        &config(task, &dir.path().join("b"), bf16),
        RunOptions::default(),
    )
    .unwrap_err();
    eprintln!("bf16: {err}");
    assert!(err.to_string().contains("bf16"), "{err}");
}

#[test]
fn greedy_generation_with_the_kv_cache_is_the_cpus() {
    let hf = HfModelDir::open(&assets().join("toy-llama")).unwrap();
    // The device as the command gets it: the facade's probed default adapter.
    let device = burnish::backend::wgpu_device().unwrap();
    let gpu = hf
        .load_llama::<Gpu>(&device, &LoadOptions::default())
        .unwrap()
        .0;
    let cpu = hf
        .load_llama::<Cpu>(&Default::default(), &LoadOptions::default())
        .unwrap()
        .0;
    let config = GenerationConfig {
        max_new_tokens: 12,
        ..GenerationConfig::default()
    };
    let prompt = [5, 9, 17, 4, 22];
    let on_gpu = generate(&gpu, &prompt, &config);
    assert_eq!(on_gpu.len(), 12);
    assert_eq!(on_gpu, generate(&cpu, &prompt, &config));
}

/// Span logits, loss and gradients of the extractive-QA head on a padded batch with token
/// types, on both stacks.
fn qa_step<B: AutodiffBackend>() -> (Vec<f32>, f32, Vec<f32>, Vec<f32>) {
    let device = Default::default();
    let hf = HfModelDir::open(&assets().join("toy-bert")).unwrap();
    let (bert, _) = hf.load_bert::<B>(&device, &LoadOptions::default()).unwrap();
    let burnish_models::ModelConfig::Bert(config) = hf.config().clone() else {
        panic!("toy-bert is a BERT")
    };
    burnish_models::random::seed_thread(1);
    let model = BertForQuestionAnswering::new(bert, &config, &device);
    let ids: Vec<i64> = (0..24).map(|i| (i * 7 + 3) % 48).collect();
    let mask: Vec<i64> = (0..24).map(|i| i64::from(i < 20)).collect();
    let types: Vec<i64> = (0..24).map(|i| i64::from(i % 12 >= 5)).collect();
    let int = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [2, 12]), &device);
    let logits = model.forward(int(ids), Some(int(mask)), Some(int(types)));
    let loss = model.loss(logits.clone(), &[6, 8, 5, 7]).unwrap().sum;
    let grads = loss.backward();
    let vec = |t: Tensor<B::InnerBackend, 2>| t.into_data().convert::<f32>().to_vec().unwrap();
    (
        logits.into_data().convert::<f32>().to_vec().unwrap(),
        loss.into_scalar().elem::<f32>(),
        vec(model.qa_outputs.weight.grad(&grads).unwrap()),
        vec(model
            .bert
            .embeddings
            .word_embeddings
            .weight
            .grad(&grads)
            .unwrap()),
    )
}

#[test]
fn the_qa_head_computes_what_the_cpu_does() {
    let (gpu, cpu) = (qa_step::<Autodiff<Gpu>>(), qa_step::<Autodiff<Cpu>>());
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
    };
    eprintln!(
        "qa: logits {:e}, loss {} vs {}, head grad {:e}, embedding grad {:e}",
        max_diff(&gpu.0, &cpu.0),
        gpu.1,
        cpu.1,
        max_diff(&gpu.2, &cpu.2),
        max_diff(&gpu.3, &cpu.3)
    );
    assert!(max_diff(&gpu.0, &cpu.0) <= 1e-5);
    assert!((gpu.1 - cpu.1).abs() <= 1e-5 * cpu.1.abs());
    assert!(max_diff(&gpu.2, &cpu.2) <= 1e-5);
    assert!(max_diff(&gpu.3, &cpu.3) <= 1e-5);
}
