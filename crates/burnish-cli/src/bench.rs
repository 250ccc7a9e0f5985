//! `burnish bench`'s flags, turned into [`burnish_tasks::bench::BenchOptions`]; the
//! measurement is the library's.

use std::path::PathBuf;

use burnish_amp::Precision;
use burnish_tasks::bench::{BenchModel, BenchOptions};

/// The arguments of `burnish bench`; their defaults are the library's.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A BERT-family model directory; random `--random` weights without it.
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
}
