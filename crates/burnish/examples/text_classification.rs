//! Text classification end to end with the library: a config written in code, training
//! (every parameter, new head), then `predict` on new sentences. Uses the tiny random BERT
//! and toy sentiment data shipped in `tests/assets`; runs in seconds.
//!
//! ```sh
//! cargo run -p burnish --example text_classification
//! ```
//! For a real model, point `model.path` at an HF directory such as all-MiniLM-L6-v2
//! (`examples/configs/minilm-rotten-tomatoes.toml` does, through the command).

use std::path::PathBuf;

use burnish::backend::{Cpu, CpuTrain};
use burnish::data::Task;
use burnish::tasks::{
    DataSection, EvalOptions, ModelSection, RunConfig, RunOptions, Silent, TrainSection, fine_tune,
    predict_dir,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets");
    let out = std::env::temp_dir().join("burnish-example-classification");
    let config = RunConfig {
        model: ModelSection {
            labels: Some(vec!["negative".into(), "positive".into()]),
            dropout: Some(0.1),
            ..ModelSection::new(assets.join("toy-bert"), Task::SequenceClassification)
        },
        data: DataSection {
            validation: Some(assets.join("data/toy-sentiment/validation.jsonl")),
            max_length: 16,
            ..DataSection::new(assets.join("data/toy-sentiment/train.jsonl"))
        },
        train: TrainSection {
            epochs: 4,
            batch_size: 16,
            lr: 3e-3,
            warmup_ratio: 0.1,
            output_dir: Some(out.clone()),
            ..TrainSection::default()
        },
        distributed: None,
    };
    let outcome = fine_tune::<CpuTrain>(
        &config,
        &RunOptions::default(),
        &mut Silent,
        &Default::default(),
    )?;
    println!("validation before: {:?}", outcome.before);
    println!("validation after:  {:?}", outcome.after);

    let input = out.join("sentences.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"a wonderful moving story\"}\n{\"text\": \"the plot was tedious\"}\n",
    )?;
    let output = out.join("predictions.jsonl");
    predict_dir::<Cpu>(
        &outcome.final_dir,
        &input,
        &output,
        &EvalOptions::default(),
        &Default::default(),
    )?;
    print!("{}", std::fs::read_to_string(&output)?);
    Ok(())
}
