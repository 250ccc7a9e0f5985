//! `burnish bench`: training throughput of a BERT-family sequence classifier on fixed
//! synthetic batches: samples/s, tokens/s, achieved TFLOP/s and model FLOPs utilization.
//!
//! The model is a Hugging Face directory (all-MiniLM-L6-v2, say) or random weights of a
//! named size (`bert-base`); every parameter trains, as in `train`. Token ids are drawn from
//! a fixed-seed generator: throughput does not depend on what the tokens say.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_amp::Precision;
use burnish_heads::{BertForSequenceClassification, ProblemType};
use burnish_loader::HfModelDir;
use burnish_models::BertConfig;
use burnish_tasks::{
    DeviceBatch, TaskError, TaskModel, encoder_config, load_pretrained, with_precision,
};
use burnish_trainer::{Trainer, TrainerConfig};
use serde::Serialize;

use crate::CliError;

/// What to measure; also the arguments of `burnish bench`, whose defaults are these.
#[derive(Debug, Clone, clap::Parser)]
pub struct BenchOptions {
    /// A BERT-family model directory; random `--random` weights without it.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Random weights of this size when there is no `model`: `bert-base` or `minilm`.
    #[arg(long, default_value = "bert-base")]
    pub random: String,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per example.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Measured optimizer steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Steps run before measuring (allocator, kernel compilation and caches warm up).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Compute precision: fp32, bf16 or fp16.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// The device's peak dense TFLOP/s in `precision`, for the utilization figure.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
}

/// The command line's defaults: one place for them.
impl Default for BenchOptions {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["bench"])
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

fn random_config(name: &str) -> Result<BertConfig, CliError> {
    let (hidden, layers, heads, inner) = match name {
        "bert-base" => (768, 12, 12, 3072),
        "minilm" => (384, 6, 12, 1536),
        other => {
            return Err(CliError::Usage(format!(
                "--random {other}: expected bert-base or minilm"
            )));
        }
    };
    let json = format!(
        r#"{{"model_type": "bert", "vocab_size": 30522, "hidden_size": {hidden},
            "num_hidden_layers": {layers}, "num_attention_heads": {heads},
            "intermediate_size": {inner}, "max_position_embeddings": 512}}"#
    );
    serde_json::from_str(&json).map_err(|e| CliError::Usage(format!("--random {name}: {e}")))
}

/// The classifier to measure: a model directory under a new head, or random weights.
fn bench_model<B: AutodiffBackend>(
    options: &BenchOptions,
    device: &B::Device,
) -> Result<(BertConfig, BertForSequenceClassification<B>), CliError> {
    let (config, path) = match &options.model {
        Some(dir) => (encoder_config(&HfModelDir::open(dir)?, None)?, dir.clone()),
        None => {
            let path = PathBuf::from(format!("--random {}", options.random));
            (random_config(&options.random)?, path)
        }
    };
    let model_err = |source| TaskError::Model { path, source };
    let single = ProblemType::SingleLabelClassification;
    let make = |b| BertForSequenceClassification::new(b, &config, 2, single, device);
    let model = config
        .init::<B>(true, device)
        .and_then(make)
        .map_err(model_err)?;
    let model = match &options.model {
        Some(dir) => load_pretrained(&HfModelDir::open(dir)?, model, &["classifier", "pooler"])?.0,
        None => model,
    };
    if options.seq_len > config.max_position_embeddings {
        return Err(CliError::Usage(format!(
            "--seq-len {}: the model has {} positions",
            options.seq_len, config.max_position_embeddings
        )));
    }
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
    // A fixed linear congruential stream: the same ids on every run and device.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            1000 + ((state >> 33) % (config.vocab_size as u64 - 1000)) as i64
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
    }
}

/// Measures training throughput on `device`.
///
/// # Errors
/// [`CliError`] for an unusable model, a sequence longer than the model's positions, a
/// backend without the precision's dtype, or a failed step.
pub fn bench<B: AutodiffBackend>(
    options: &BenchOptions,
    device: &B::Device,
) -> Result<BenchReport, CliError> {
    if options.batch_size == 0 || options.seq_len == 0 || options.steps == 0 {
        return Err(CliError::Usage(
            "--batch-size, --seq-len and --steps must be positive".into(),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_command_line_definition() {
        let d = BenchOptions::default();
        assert_eq!(d.model, None);
        assert_eq!(
            (d.random.as_str(), d.batch_size, d.seq_len),
            ("bert-base", 32, 128)
        );
        assert_eq!((d.steps, d.warmup, d.precision), (20, 3, Precision::Fp32));
        let parsed = <BenchOptions as clap::Parser>::try_parse_from([
            "bench",
            "--precision",
            "bf16",
            "--seq-len",
            "64",
        ])
        .map_err(|e| e.to_string());
        assert!(matches!(parsed, Ok(ref o) if o.precision == Precision::Bf16 && o.seq_len == 64));
    }
}
