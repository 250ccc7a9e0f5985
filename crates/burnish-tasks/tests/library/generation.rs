//! The generation benchmark: what it times is `generate`, and bad options are typed errors.

use burn::tensor::backend::AutodiffBackend;
use burnish_heads::{GenerationConfig, generate};
use burnish_loader::{HfModelDir, TokenizerConfig};
use burnish_tasks::TaskError;
use burnish_tasks::bench::{GenerationBenchOptions, bench_generation};

use super::{Flex, assets};

type Inner = <Flex as AutodiffBackend>::InnerBackend;

fn options() -> GenerationBenchOptions {
    GenerationBenchOptions {
        model: assets().join("toy-llama"),
        prompt: "the movie was".into(),
        new_tokens: 6,
        runs: 2,
        warmup: 0,
    }
}

#[test]
fn the_benchmark_generates_what_generate_does() {
    let report = bench_generation::<Inner>(&options(), &Default::default()).unwrap();
    let hf = HfModelDir::open(&assets().join("toy-llama")).unwrap();
    let (model, _) = burnish_tasks::load_causal::<Inner>(&hf, None, &Default::default()).unwrap();
    let prompt: Vec<i64> = hf
        .tokenizer(TokenizerConfig::default())
        .unwrap()
        .encode_unpadded(&["the movie was"], true)
        .unwrap()
        .concat()
        .into_iter()
        .map(i64::from)
        .collect();
    let config = GenerationConfig {
        max_new_tokens: 6,
        ..GenerationConfig::default()
    };
    assert_eq!(report.tokens, generate(&model, &prompt, &config));
    assert_eq!(report.prompt_tokens, prompt.len());
    assert_eq!(report.new_tokens, 6);
    let expected = report.new_tokens as f64 / report.run_seconds;
    assert!((report.tokens_per_second - expected).abs() <= 1e-9 * expected);
}

#[test]
fn bad_generation_options_are_named() {
    let zero = GenerationBenchOptions {
        runs: 0,
        ..options()
    };
    let err = bench_generation::<Inner>(&zero, &Default::default()).unwrap_err();
    assert!(
        matches!(&err, TaskError::Invalid { field, .. } if field == "runs"),
        "{err}"
    );
    let encoder = GenerationBenchOptions {
        model: assets().join("toy-bert"),
        ..options()
    };
    let err = bench_generation::<Inner>(&encoder, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("decoder"), "{err}");
}
