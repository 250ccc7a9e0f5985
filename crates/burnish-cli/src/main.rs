//! `burnish`: fine-tune, evaluate and run Hugging Face models.
//!
//! ```text
//! burnish train --config FILE.toml [--output-dir DIR] [--resume [CHECKPOINT]] [--force]
//! burnish eval --model DIR --data FILE.jsonl [--task TASK]
//! burnish predict --model DIR --input FILE.jsonl --output FILE.jsonl [--task TASK]
//! ```
//!
//! User errors (config, files, data) print one line and exit with status 2; a failure
//! while training exits with 1.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use burnish::backend::CpuTrain;
use burnish_cli::{
    CliError, EvalOptions, Resume, RunConfig, TrainOptions, evaluate, predict, train,
};
use burnish_data::Task;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "burnish",
    version,
    about = "Full-parameter fine-tuning of Hugging Face transformers on burn"
)]
struct Cli {
    /// The compute backend (CPU): burn-ndarray, or burn-flex when built with `flex`.
    #[arg(long, value_enum, global = true, default_value = "ndarray")]
    backend: BackendArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Ndarray,
    #[cfg(feature = "flex")]
    Flex,
}

#[derive(Clone, Copy, ValueEnum)]
enum TaskArg {
    SequenceClassification,
    TokenClassification,
    CausalLm,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Self {
        match t {
            TaskArg::SequenceClassification => Task::SequenceClassification,
            TaskArg::TokenClassification => Task::TokenClassification,
            TaskArg::CausalLm => Task::CausalLm,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model as a TOML config describes.
    Train {
        /// The run configuration.
        #[arg(long)]
        config: PathBuf,
        /// Replaces `[train] output_dir`.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Resume from the latest checkpoint of the output directory, or from CHECKPOINT.
        #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT")]
        resume: Option<Option<PathBuf>>,
        /// Resume even when the configuration or the training data changed.
        #[arg(long)]
        force: bool,
        /// End after this optimizer step, as a preemption would (for testing resumes).
        #[arg(long, value_name = "STEP")]
        stop_after: Option<u64>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Print a model's metrics on labeled JSONL as JSON.
    Eval {
        /// A Hugging Face model directory (a fine-tuned `final/` or `best/`).
        #[arg(long)]
        model: PathBuf,
        /// Labeled JSONL.
        #[arg(long)]
        data: PathBuf,
        /// The task; read from the model's `architectures` when absent.
        #[arg(long, value_enum)]
        task: Option<TaskArg>,
        /// Longest sequence in tokens.
        #[arg(long, default_value_t = 512)]
        max_length: usize,
        /// Examples per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
    },
    /// Write one JSON line of outputs per input line.
    Predict {
        /// A Hugging Face model directory.
        #[arg(long)]
        model: PathBuf,
        /// JSONL inputs (`text`, `tokens`, `prompt` or `messages` per task).
        #[arg(long)]
        input: PathBuf,
        /// JSONL outputs.
        #[arg(long)]
        output: PathBuf,
        /// The task; read from the model's `architectures` when absent.
        #[arg(long, value_enum)]
        task: Option<TaskArg>,
        /// Longest input in tokens.
        #[arg(long, default_value_t = 512)]
        max_length: usize,
        /// Tokens generated per prompt (causal LM).
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
    },
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.backend {
        BackendArg::Ndarray => run_on::<CpuTrain>(cli.command),
        #[cfg(feature = "flex")]
        BackendArg::Flex => run_on::<burnish::backend::FlexTrain>(cli.command),
    }
}

fn run_on<B: AutodiffBackend>(command: Command) -> Result<(), CliError> {
    let device = B::Device::default();
    match command {
        Command::Train {
            config,
            output_dir,
            resume,
            force,
            stop_after,
            quiet,
        } => {
            let config = RunConfig::from_file(&config)?;
            let options = TrainOptions {
                output_dir,
                quiet,
                resume: resume.map(|dir| dir.map_or(Resume::Latest, Resume::From)),
                force,
                stop_after,
            };
            let outcome = train::<B>(&config, &options, &device)?;
            println!("final model: {}", outcome.final_dir.display());
            if let Some(best) = &outcome.best_dir {
                println!("best model: {}", best.display());
            }
            println!(
                "metrics log: {}",
                outcome.output_dir.join("metrics.jsonl").display()
            );
            Ok(())
        }
        Command::Eval {
            model,
            data,
            task,
            max_length,
            batch_size,
        } => {
            let options = EvalOptions {
                task: task.map(Task::from),
                max_length,
                batch_size,
                ..EvalOptions::default()
            };
            let metrics = evaluate::<B::InnerBackend>(&model, &data, &options, &device)?;
            println!("{}", serde_json::to_string(&metrics).unwrap_or_default());
            Ok(())
        }
        Command::Predict {
            model,
            input,
            output,
            task,
            max_length,
            max_new_tokens,
        } => {
            let options = EvalOptions {
                task: task.map(Task::from),
                max_length,
                max_new_tokens,
                ..EvalOptions::default()
            };
            let n = predict::<B::InnerBackend>(&model, &input, &output, &options, &device)?;
            eprintln!("{n} predictions written to {}", output.display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                CliError::Train(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}
