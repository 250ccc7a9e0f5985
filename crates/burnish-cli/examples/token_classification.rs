//! Named-entity tagging (BIO) with the library: train from a config file, then evaluate
//! the exported model with entity-level precision, recall and F1 (seqeval's rules). Uses the
//! tiny random BERT and toy tagging data of `tests/assets`; runs in seconds.
//!
//! ```sh
//! cargo run -p burnish-cli --example token_classification
//! ```

use std::path::PathBuf;

use burnish::backend::{Cpu, CpuTrain};
use burnish_cli::read_config;
use burnish_tasks::{EvalOptions, RunOptions, Silent, evaluate_dir, fine_tune};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets");
    let config = read_config(&assets.join("configs/toy-ner.toml"))?;
    let options = RunOptions {
        output_dir: Some(std::env::temp_dir().join("burnish-example-ner")),
        ..RunOptions::default()
    };
    let outcome = fine_tune::<CpuTrain>(&config, &options, &mut Silent, &Default::default())?;
    let metrics = evaluate_dir::<Cpu>(
        &outcome.final_dir,
        &assets.join("data/toy-ner/validation.jsonl"),
        &EvalOptions::default(),
        &Default::default(),
    )?;
    println!(
        "entity F1 before training: {:.3}",
        outcome.before.map_or(f64::NAN, |m| m["f1"])
    );
    println!(
        "exported model: entity precision {:.3}, recall {:.3}, F1 {:.3}",
        metrics["precision"], metrics["recall"], metrics["f1"]
    );
    Ok(())
}
