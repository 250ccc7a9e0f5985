//! Training throughput of a BERT-family sequence classifier on fixed synthetic batches:
//! samples/s, tokens/s, achieved TFLOP/s and model FLOPs utilization (`burnish bench`,
//! [`bench()`]); greedy generation speed of a decoder ([`bench_generation`], `burnish bench
//! --generate`).
//!
//! The model is a Hugging Face directory (all-MiniLM-L6-v2, say) or random weights of a
//! named size; every parameter trains, through the same [`Trainer`] step as a real run. Token
//! ids come from a fixed-seed generator: throughput does not depend on what they say.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burnish_amp::Precision;
use burnish_heads::{BertForSequenceClassification, GenerationConfig, ProblemType, generate};
use burnish_loader::{HfModelDir, TokenizerConfig};
use burnish_models::BertConfig;
use burnish_trainer::{Trainer, TrainerConfig};
use serde::Serialize;

use crate::{
    DeviceBatch, TaskError, TaskModel, encoder_config, load_causal, load_pretrained, with_precision,
};

/// The model a benchmark trains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchModel {
    /// A BERT-family Hugging Face directory, under a new two-class head.
    Dir(PathBuf),
    /// Random weights the size of BERT-base (110 M parameters).
    BertBase,
    /// Random weights the size of all-MiniLM-L6-v2 (22 M parameters).
    MiniLm,
}

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// The model.
    pub model: BenchModel,
    /// Examples per step.
    pub batch_size: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// Measured optimizer steps.
    pub steps: usize,
    /// Steps run before measuring (allocator, kernel compilation and caches warm up).
    pub warmup: usize,
    /// Compute precision.
    pub precision: Precision,
    /// The device's peak dense TFLOP/s in `precision`, for the utilization figure.
    pub peak_tflops: Option<f64>,
}

impl Default for BenchOptions {
    /// Random BERT-base, 32 examples of 128 tokens, 3 warm-up and 20 measured steps, fp32.
    fn default() -> Self {
        BenchOptions {
            model: BenchModel::BertBase,
            batch_size: 32,
            seq_len: 128,
            steps: 20,
            warmup: 3,
            precision: Precision::Fp32,
            peak_tflops: None,
        }
    }
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Trainable parameters.
    pub parameters: usize,
    /// Examples per second.
    pub samples_per_second: f64,
    /// Tokens per second.
    pub tokens_per_second: f64,
    /// Mean wall time of one optimizer step, seconds.
    pub step_seconds: f64,
    /// Model FLOPs of one step: `6·N·T + 12·L·H·S·T` (N non-embedding parameters, T tokens,
    /// L layers, H hidden size, S sequence length; forward + backward, as in the PaLM paper's
    /// MFU definition).
    pub flops_per_step: f64,
    /// Achieved model TFLOP/s.
    pub tflops: f64,
    /// `tflops / peak_tflops`, when the peak was given.
    pub mfu: Option<f64>,
}

/// The configuration of a random model of a named size.
fn random_config(hidden: usize, layers: usize, heads: usize, inner: usize) -> BertConfig {
    let json = format!(
        r#"{{"model_type": "bert", "vocab_size": 30522, "hidden_size": {hidden},
            "num_hidden_layers": {layers}, "num_attention_heads": {heads},
            "intermediate_size": {inner}, "max_position_embeddings": 512}}"#
    );
    // Every field is a literal above: a failure is a bug here, not a user's input.
    serde_json::from_str(&json).expect("the random model's configuration parses")
}

/// The classifier to measure: a model directory under a new head, or random weights.
fn bench_model<B: AutodiffBackend>(
    options: &BenchOptions,
    device: &B::Device,
) -> Result<(BertConfig, BertForSequenceClassification<B>), TaskError> {
    let (config, path) = match &options.model {
        BenchModel::Dir(dir) => (encoder_config(&HfModelDir::open(dir)?, None)?, dir.clone()),
        BenchModel::BertBase => (random_config(768, 12, 12, 3072), "random bert-base".into()),
        BenchModel::MiniLm => (random_config(384, 6, 12, 1536), "random minilm".into()),
    };
    if options.seq_len > config.max_position_embeddings {
        return Err(TaskError::Invalid {
            field: "seq_len".into(),
            message: format!(
                "{}: the model has {} positions",
                options.seq_len, config.max_position_embeddings
            ),
        });
    }
    let model_err = |source| TaskError::Model { path, source };
    let single = ProblemType::SingleLabelClassification;
    let make = |b| BertForSequenceClassification::new(b, &config, 2, single, device);
    let model = config
        .init::<B>(true, device)
        .and_then(make)
        .map_err(model_err)?;
    let model = match &options.model {
        BenchModel::Dir(dir) => {
            load_pretrained(&HfModelDir::open(dir)?, model, &["classifier", "pooler"])?.0
        }
        BenchModel::BertBase | BenchModel::MiniLm => model,
    };
    let model = with_precision(model, options.precision, device)?;
    Ok((config, model))
}

/// `batch` rows of `seq` token ids from a fixed generator, with alternating labels.
fn synthetic_batch<B: AutodiffBackend>(
    config: &BertConfig,
    batch: usize,
    seq: usize,
    device: &B::Device,
) -> DeviceBatch<B> {
    // A fixed linear congruential stream: the same ids on every run and device, above the
    // special tokens of BERT's vocabulary.
    let first = config.vocab_size.min(1000) as u64;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (first + (state >> 33) % (config.vocab_size as u64 - first)) as i64
        })
        .collect();
    let ints =
        |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [batch, seq]), device);
    DeviceBatch {
        input_ids: ints(ids),
        attention_mask: ints(vec![1; batch * seq]),
        token_type_ids: ints(vec![0; batch * seq]),
        labels: (0..batch as i64).map(|i| i % 2).collect(),
        targets: Vec::new(),
        items: batch as u64,
        shape: [batch, seq],
        position_ids: None,
    }
}

/// Measures training throughput on `device`: `warmup` steps, then `steps` timed ones.
///
/// ```
/// use burnish_tasks::bench::{BenchModel, BenchOptions, bench};
/// type B = burn::backend::Autodiff<burn_ndarray::NdArray<f32>>;
///
/// let options = BenchOptions {
///     model: BenchModel::MiniLm,
///     batch_size: 2,
///     seq_len: 8,
///     steps: 1,
///     warmup: 0,
///     ..BenchOptions::default()
/// };
/// let report = bench::<B>(&options, &Default::default())?;
/// assert!(report.samples_per_second > 0.0);
/// # Ok::<(), burnish_tasks::TaskError>(())
/// ```
///
/// # Errors
/// [`TaskError::Invalid`] for a zero size or a sequence longer than the model's positions
/// (the field named as in [`BenchOptions`]); the loading errors of a model directory; a
/// backend without the precision's dtype; a failed step.
pub fn bench<B: AutodiffBackend>(
    options: &BenchOptions,
    device: &B::Device,
) -> Result<BenchReport, TaskError> {
    for (field, value) in [
        ("batch_size", options.batch_size),
        ("seq_len", options.seq_len),
        ("steps", options.steps),
    ] {
        if value == 0 {
            return Err(TaskError::Invalid {
                field: field.into(),
                message: "must be at least 1".into(),
            });
        }
    }
    // The random backbone draws from the backend's generator, the head from the thread's.
    B::seed(device, 0);
    burnish_models::random::seed_thread(0);
    let (config, model) = bench_model::<B>(options, device)?;
    let parameters = model.num_params();
    let embedding_parameters =
        (config.vocab_size + config.max_position_embeddings + config.type_vocab_size)
            * config.hidden_size;

    let [batch, seq] = [options.batch_size, options.seq_len];
    let data = synthetic_batch::<B>(&config, batch, seq, device);

    let trainer_config = TrainerConfig {
        lr: 2e-5,
        total_steps: (options.warmup + options.steps) as u64,
        precision: options.precision,
        seed: 0,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, trainer_config)?;
    let loss = |m: &BertForSequenceClassification<B>, b: &DeviceBatch<B>| m.step_loss(b);
    for _ in 0..options.warmup {
        trainer.step(std::slice::from_ref(&data), loss)?;
    }
    let start = Instant::now();
    for _ in 0..options.steps {
        // The step reads the loss back, which waits for the device: timing is honest.
        trainer.step(std::slice::from_ref(&data), loss)?;
    }
    let seconds = start.elapsed().as_secs_f64();

    let tokens = (batch * seq) as f64;
    let flops_per_step = 6.0 * (parameters - embedding_parameters) as f64 * tokens
        + 12.0 * (config.num_hidden_layers * config.hidden_size * seq) as f64 * tokens;
    let step_seconds = seconds / options.steps as f64;
    let tflops = flops_per_step / step_seconds / 1e12;
    Ok(BenchReport {
        parameters,
        samples_per_second: batch as f64 / step_seconds,
        tokens_per_second: tokens / step_seconds,
        step_seconds,
        flops_per_step,
        tflops,
        mfu: options.peak_tflops.map(|peak| tflops / peak),
    })
}

/// What [`bench_generation`] measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationBenchOptions {
    /// A causal-LM Hugging Face directory (config.json, weights, tokenizer.json).
    pub model: PathBuf,
    /// The prompt, tokenized with the tokenizer's special tokens.
    pub prompt: String,
    /// Tokens generated per run; every run generates all of them (no stop at the end of
    /// sequence token), as `generate(min_new_tokens = max_new_tokens)` does.
    pub new_tokens: usize,
    /// Measured runs.
    pub runs: usize,
    /// Runs before measuring (allocator and caches warm up).
    pub warmup: usize,
}

impl Default for GenerationBenchOptions {
    /// No model; a short English prompt, 32 new tokens, 1 warm-up and 3 measured runs.
    fn default() -> Self {
        GenerationBenchOptions {
            model: PathBuf::new(),
            prompt: "The capital of France is".into(),
            new_tokens: 32,
            runs: 3,
            warmup: 1,
        }
    }
}

/// The measurement of [`bench_generation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationReport {
    /// Parameters of the decoder.
    pub parameters: usize,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated per run.
    pub new_tokens: usize,
    /// Mean wall time of one run (the prompt's forward pass and every new token), seconds.
    pub run_seconds: f64,
    /// New tokens per second of a run.
    pub tokens_per_second: f64,
    /// The generated ids (greedy: the same every run), to compare with another library's.
    pub tokens: Vec<i64>,
}

/// Greedy generation speed of a decoder directory: each run continues the prompt by
/// `new_tokens` tokens through [`generate`] (one forward pass of the prompt, then one token
/// at a time through the KV cache), timed from the prompt's ids to the last new id.
///
/// # Errors
/// [`TaskError::Invalid`] for zero `new_tokens` or `runs`; the loading errors of the
/// directory (not a decoder, missing tokenizer, ...).
pub fn bench_generation<B: Backend>(
    options: &GenerationBenchOptions,
    device: &B::Device,
) -> Result<GenerationReport, TaskError> {
    for (field, value) in [("new_tokens", options.new_tokens), ("runs", options.runs)] {
        if value == 0 {
            return Err(TaskError::Invalid {
                field: field.into(),
                message: "must be at least 1".into(),
            });
        }
    }
    let hf = HfModelDir::open(&options.model)?;
    let (model, _) = load_causal::<B>(&hf, None, device)?;
    let tokenizer = hf.tokenizer(TokenizerConfig::default())?;
    let prompt: Vec<i64> = tokenizer
        .encode_unpadded(&[&options.prompt], true)?
        .into_iter()
        .flatten()
        .map(i64::from)
        .collect();
    if prompt.is_empty() {
        return Err(TaskError::Invalid {
            field: "prompt".into(),
            message: "tokenizes to no tokens".into(),
        });
    }
    let config = GenerationConfig {
        max_new_tokens: options.new_tokens,
        ..GenerationConfig::default()
    };
    for _ in 0..options.warmup {
        generate(&model, &prompt, &config);
    }
    let start = Instant::now();
    let mut tokens = Vec::new();
    for _ in 0..options.runs {
        // Each new id is read back to pick the next: timing is honest on any device.
        tokens = generate(&model, &prompt, &config);
    }
    let run_seconds = start.elapsed().as_secs_f64() / options.runs as f64;
    Ok(GenerationReport {
        parameters: model.num_params(),
        prompt_tokens: prompt.len(),
        new_tokens: tokens.len(),
        run_seconds,
        tokens_per_second: tokens.len() as f64 / run_seconds,
        tokens,
    })
}
