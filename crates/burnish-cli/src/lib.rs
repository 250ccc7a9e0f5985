//! The `burnish` command as a library: everything `burnish train`, `eval` and `predict`
//! do, callable from Rust (tests, notebooks, other tools).
//!
//! - [`RunConfig`]: the TOML run configuration, checked with errors that name the key.
//! - [`train`]: load a Hugging Face model, put the task head on it, fine-tune every
//!   parameter, write `metrics.jsonl`, `trainer_state.json`, `best/` and `final/`.
//! - [`evaluate`] and [`predict`]: run a fine-tuned (or any) model directory on JSONL.
//! - [`TaskModel`]: the one trait the five task models implement so one loop drives them.
//! - [`plot_run`]: the loss curves and validation metric of a run as SVG and PNG.
//! - [`bench()`]: training throughput (samples/s, tokens/s, model FLOPs utilization).
//!
//! ```no_run
//! use burnish_cli::{RunConfig, TrainOptions, train};
//! let config = RunConfig::from_file("examples/configs/quickstart.toml".as_ref())?;
//! let outcome = train::<burnish::backend::CpuTrain>(&config, &TrainOptions::default(), &Default::default())?;
//! println!("final model in {}", outcome.final_dir.display());
//! # Ok::<(), burnish_cli::CliError>(())
//! ```

mod bench;
mod checkpoint;
mod config;
mod error;
mod infer;
mod plot;
mod progress;
mod task;
mod train;

pub use bench::{BenchOptions, BenchReport, bench};
pub use checkpoint::Resume;
pub use config::{DataSection, ModelSection, RunConfig, Schedule, TrainSection};
pub use error::CliError;
pub use infer::{EvalOptions, evaluate, predict};
pub use plot::{Curves, plot_run};
pub use task::{DeviceBatch, TaskModel};
pub use train::{TrainOptions, TrainOutcome, train};
