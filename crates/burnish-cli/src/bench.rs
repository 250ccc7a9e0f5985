//! `burnish bench`'s flags, turned into [`burnish_tasks::bench::BenchOptions`] (training)
//! or [`GenerationBenchOptions`] (`--generate`); the measurement is the library's.

use std::path::PathBuf;

use burnish_amp::Precision;
use burnish_tasks::bench::{BenchModel, BenchOptions, GenerationBenchOptions};

/// The arguments of `burnish bench`; their defaults are the library's.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A BERT-family model directory (a decoder with `--generate`); random `--random`
    /// weights without it.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Random weights of this size when there is no `--model`.
    #[arg(long, default_value = "bert-base", value_parser = ["bert-base", "minilm"])]
    pub random: String,
    /// Examples per step.
    #[arg(long, default_value_t = BenchOptions::default().batch_size)]
    pub batch_size: usize,
    /// Tokens per example.
    #[arg(long, default_value_t = BenchOptions::default().seq_len)]
    pub seq_len: usize,
    /// Measured optimizer steps.
    #[arg(long, default_value_t = BenchOptions::default().steps)]
    pub steps: usize,
    /// Steps run before measuring (allocator, kernel compilation and caches warm up).
    #[arg(long, default_value_t = BenchOptions::default().warmup)]
    pub warmup: usize,
    /// Compute precision: fp32, bf16 or fp16.
    #[arg(long, default_value_t = BenchOptions::default().precision)]
    pub precision: Precision,
    /// The device's peak dense TFLOP/s in `precision`, for the utilization figure.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Measure greedy generation of this many tokens per run instead of training (needs a
    /// decoder `--model`); `--steps` runs are measured after `--warmup` ones.
    #[arg(long)]
    pub generate: Option<usize>,
    /// The prompt `--generate` continues.
    #[arg(long, default_value_t = GenerationBenchOptions::default().prompt)]
    pub prompt: String,
}

impl BenchArgs {
    /// The library's options.
    pub fn options(&self) -> BenchOptions {
        let model = match (&self.model, self.random.as_str()) {
            (Some(dir), _) => BenchModel::Dir(dir.clone()),
            (None, "minilm") => BenchModel::MiniLm,
            (None, _) => BenchModel::BertBase,
        };
        BenchOptions {
            model,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            steps: self.steps,
            warmup: self.warmup,
            precision: self.precision,
            peak_tflops: self.peak_tflops,
        }
    }

    /// The library's generation options when `--generate` is given.
    ///
    /// # Errors
    /// A message naming `--model` when `--generate` has no model directory.
    pub fn generation(&self) -> Result<Option<GenerationBenchOptions>, String> {
        let Some(new_tokens) = self.generate else {
            return Ok(None);
        };
        let model = self
            .model
            .clone()
            .ok_or("--generate needs --model, a decoder's Hugging Face directory")?;
        Ok(Some(GenerationBenchOptions {
            model,
            prompt: self.prompt.clone(),
            new_tokens,
            runs: self.steps,
            warmup: self.warmup,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(flags: &[&str]) -> Result<BenchOptions, String> {
        let argv = std::iter::once("bench").chain(flags.iter().copied());
        <Command as clap::Parser>::try_parse_from(argv)
            .map(|c| c.args.options())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn no_flags_are_the_library_defaults_and_flags_replace_them() {
        assert_eq!(parse(&[]), Ok(BenchOptions::default()));
        let options = parse(&[
            "--random",
            "minilm",
            "--precision",
            "bf16",
            "--seq-len",
            "64",
        ]);
        let expected = BenchOptions {
            model: BenchModel::MiniLm,
            precision: Precision::Bf16,
            seq_len: 64,
            ..BenchOptions::default()
        };
        assert_eq!(options, Ok(expected));
        assert!(parse(&["--random", "gpt"]).is_err_and(|e| e.contains("bert-base")));
    }

    #[test]
    fn generate_measures_a_decoder_directory() {
        let args = |flags: &[&str]| {
            let argv = std::iter::once("bench").chain(flags.iter().copied());
            <Command as clap::Parser>::try_parse_from(argv)
                .unwrap()
                .args
        };
        assert_eq!(args(&[]).generation(), Ok(None));
        let expected = GenerationBenchOptions {
            model: "smol".into(),
            prompt: "Hi".into(),
            new_tokens: 8,
            runs: 2,
            warmup: 0,
        };
        let flags = [
            "--generate",
            "8",
            "--model",
            "smol",
            "--prompt",
            "Hi",
            "--steps",
            "2",
            "--warmup",
            "0",
        ];
        assert_eq!(args(&flags).generation(), Ok(Some(expected)));
        let err = args(&["--generate", "8"]).generation().unwrap_err();
        assert!(err.contains("--model"), "{err}");
    }
}
