//! Causal-LM instruction tuning: a tiny random Llama learns a toy instruction set (prompt /
//! response pairs, and chat messages through the tokenizer's chat template; prompt tokens
//! are masked), then answers with greedy decoding through the KV cache. Runs in seconds.
//!
//! ```sh
//! cargo run -p burnish-cli --example instruction_tuning
//! ```
//! `examples/configs/smollm2-sft.toml` does the same with SmolLM2-135M-Instruct.

use std::path::PathBuf;

use burnish::backend::{Cpu, CpuTrain};
use burnish_cli::read_config;
use burnish_heads::{GenerationConfig, generate};
use burnish_loader::{HfModelDir, LoadOptions, TokenizerConfig};
use burnish_tasks::{RunOptions, Silent, fine_tune};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets");
    let config = read_config(&assets.join("configs/toy-sft.toml"))?;
    let options = RunOptions {
        output_dir: Some(std::env::temp_dir().join("burnish-example-sft")),
        ..RunOptions::default()
    };
    let outcome = fine_tune::<CpuTrain>(&config, &options, &mut Silent, &Default::default())?;

    // The exported directory is an ordinary HF model: load it and generate.
    let dir = HfModelDir::open(&outcome.final_dir)?;
    let (model, _) = dir.load_llama::<Cpu>(&Default::default(), &LoadOptions::default())?;
    let tokenizer = dir.tokenizer(TokenizerConfig::default())?;
    let generation = GenerationConfig {
        max_new_tokens: 4,
        eos_token_id: tokenizer.token_to_id("<|im_end|>").map(i64::from),
        ..GenerationConfig::default()
    };
    for question in [
        "what is the color of grass ?",
        "what is the color of coal ?",
    ] {
        let ids: Vec<i64> = tokenizer.encode_unpadded(&[question], true)?[0]
            .iter()
            .map(|&i| i64::from(i))
            .collect();
        let answer: Vec<u32> = generate(&model, &ids, &generation)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        println!("{question} -> {}", tokenizer.decode(&answer)?);
    }
    Ok(())
}
