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

use burn::tensor::backend::{AutodiffBackend, Backend};
use burnish::backend::CpuTrain;
use burnish_cli::{BenchArgs, CliError, Progress, field_error, plot_run, read_config};
use burnish_data::Task;
use burnish_parallel::ParallelError;
use burnish_tasks::{
    DeviceName, EvalOptions, QaOptions, Resume, RunOptions, TaskError, evaluate_dir, fine_tune_on,
    predict_dir,
};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "burnish",
    version,
    about = "Full-parameter fine-tuning of Hugging Face transformers on burn"
)]
struct Cli {
    /// Where to compute: `cpu`, `cuda` / `cuda:N` (a build with the `cuda` feature) or
    /// `wgpu` (a build with the `wgpu` feature).
    #[arg(long, global = true, default_value = "cpu", value_parser = |t: &str| t.parse::<DeviceName>())]
    device: DeviceName,
    /// The CPU backend: burn-flex (the default when built with the `flex` feature: faster,
    /// and it has bf16/fp16) or burn-ndarray (float32 only).
    #[arg(long, value_enum, global = true, default_value = DEFAULT_BACKEND)]
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

#[cfg(feature = "flex")]
const DEFAULT_BACKEND: &str = "flex";
#[cfg(not(feature = "flex"))]
const DEFAULT_BACKEND: &str = "ndarray";

#[derive(Clone, Copy, ValueEnum)]
enum TaskArg {
    SequenceClassification,
    TokenClassification,
    CausalLm,
    QuestionAnswering,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Self {
        match t {
            TaskArg::SequenceClassification => Task::SequenceClassification,
            TaskArg::TokenClassification => Task::TokenClassification,
            TaskArg::CausalLm => Task::CausalLm,
            TaskArg::QuestionAnswering => Task::QuestionAnswering,
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
        /// Start afresh in an output directory that holds another run, removing its
        /// outputs (final/, best/, checkpoints/, logs; the token cache stays).
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// End after this optimizer step, as a preemption would (for testing resumes).
        #[arg(long, value_name = "STEP", value_parser = clap::value_parser!(u64).range(1..))]
        stop_after: Option<u64>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
        /// This process's node in a multi-node data-parallel run (`[distributed]
        /// node_rank`); node 0 listens for the other nodes, logs and saves.
        #[arg(long, value_name = "N")]
        node_rank: Option<usize>,
    },
    /// Draw a run's loss curves and validation metric (`curves.svg`, `curves.png`);
    /// `train` does it at the end of every run.
    Plot {
        /// The run's output directory (with `metrics.jsonl`).
        run: PathBuf,
    },
    /// Measure training throughput on fixed synthetic batches (samples/s, tokens/s,
    /// TFLOP/s, model FLOPs utilization).
    Bench {
        #[command(flatten)]
        options: BenchArgs,
        /// Recompute activations in the backward pass (`[train] gradient_checkpointing`).
        #[arg(long)]
        gradient_checkpointing: bool,
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
        /// Longest sequence in tokens (default: the model's positions, at most 512).
        #[arg(long, value_parser = at_least_one)]
        max_length: Option<usize>,
        /// Examples per forward pass.
        #[arg(long, default_value_t = 32, value_parser = at_least_one)]
        batch_size: usize,
        #[command(flatten)]
        outputs: OutputArgs,
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
        /// Longest input in tokens (default: the model's positions, at most 512).
        #[arg(long, value_parser = at_least_one)]
        max_length: Option<usize>,
        /// Tokens generated per prompt (causal LM).
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[command(flatten)]
        outputs: OutputArgs,
    },
}

/// How outputs become predictions, per task.
#[derive(clap::Args)]
struct OutputArgs {
    /// Multi-label classification: the probability above which a class is predicted
    /// (default 0.5).
    #[arg(long)]
    threshold: Option<f64>,
    /// Question answering: context tokens shared by consecutive windows of a long context.
    #[arg(long, default_value_t = QaOptions::default().doc_stride)]
    doc_stride: usize,
    /// Question answering: the longest answer, in tokens.
    #[arg(long, default_value_t = QaOptions::default().max_answer_length, value_parser = at_least_one)]
    max_answer_length: usize,
    /// Question answering: questions may have no answer (SQuAD v2).
    #[arg(long)]
    version_2_with_negative: bool,
}

impl OutputArgs {
    /// `base` with these settings.
    fn options(self, base: EvalOptions) -> EvalOptions {
        EvalOptions {
            threshold: self.threshold,
            qa: QaOptions {
                doc_stride: self.doc_stride,
                max_answer_length: self.max_answer_length,
                version_2_with_negative: self.version_2_with_negative,
                ..base.qa
            },
            ..base
        }
    }
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A library setting named as the flag that sets it (`max_length` → `--max-length`).
fn flag_error(e: TaskError) -> CliError {
    match e {
        TaskError::Invalid { field, message } if !field.contains('.') => {
            CliError::Usage(format!("--{}: {message}", field.replace('_', "-")))
        }
        other => other.into(),
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    // Activation checkpointing is a property of the autodiff backend type, and
    // `[distributed] devices` chooses the devices, so the config is read before the backend.
    let (checkpointing, devices) = match &cli.command {
        Command::Train { config, .. } => {
            let run = read_config(config)?;
            let devices = match &run.distributed {
                Some(_) if cli.device != DeviceName::Cpu => {
                    return Err(CliError::Usage(
                        "--device: the configuration's [distributed] devices choose the \
                         devices; leave --device out"
                            .into(),
                    ));
                }
                Some(d) => d.device_names().map_err(|e| train_error(config, e))?,
                None => vec![cli.device],
            };
            (run.train.gradient_checkpointing, devices)
        }
        Command::Bench {
            gradient_checkpointing,
            ..
        } => (*gradient_checkpointing, vec![cli.device]),
        _ => (false, vec![cli.device]),
    };
    let n = devices.len();
    match (devices[0], cli.backend, checkpointing) {
        (DeviceName::Cpu, BackendArg::Ndarray, false) => run_on::<CpuTrain>(cli.command, &cpus(n)),
        // Not instantiated for burn-ndarray: each backend type compiles the whole training
        // path once more.
        (DeviceName::Cpu, BackendArg::Ndarray, true) => Err(CliError::Usage(
            "[train] gradient_checkpointing: available with --backend flex or --device cuda".into(),
        )),
        #[cfg(feature = "flex")]
        (DeviceName::Cpu, BackendArg::Flex, false) => {
            run_on::<burnish::backend::FlexTrain>(cli.command, &cpus(n))
        }
        #[cfg(feature = "flex")]
        (DeviceName::Cpu, BackendArg::Flex, true) => {
            run_on::<burnish::backend::FlexTrainCheckpointed>(cli.command, &cpus(n))
        }
        #[cfg(feature = "cuda")]
        (DeviceName::Cuda(_), _, checkpointing) => {
            let cuda =
                burnish::backend::cuda_devices(devices.iter().filter_map(DeviceName::cuda_index))
                    .map_err(device_error)?;
            if checkpointing {
                run_on::<burnish::backend::CudaTrainCheckpointed>(cli.command, &cuda)
            } else {
                run_on::<burnish::backend::CudaTrain>(cli.command, &cuda)
            }
        }
        #[cfg(not(feature = "cuda"))]
        (DeviceName::Cuda(_), _, _) => Err(built_without("cuda")),
        #[cfg(feature = "wgpu")]
        (DeviceName::Wgpu, _, checkpointing) => {
            let device = [burnish::backend::wgpu_device().map_err(device_error)?];
            if checkpointing {
                run_on::<burnish::backend::WgpuTrainCheckpointed>(cli.command, &device)
            } else {
                run_on::<burnish::backend::WgpuTrain>(cli.command, &device)
            }
        }
        #[cfg(not(feature = "wgpu"))]
        (DeviceName::Wgpu, _, _) => Err(built_without("wgpu")),
    }
}

/// A GPU device the backend cannot use, as a `--device` usage error.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn device_error(e: burnish::backend::DeviceError) -> CliError {
    CliError::Usage(format!("--device {e}"))
}

/// `--device <feature>` in a build without that cargo feature.
#[cfg(any(not(feature = "cuda"), not(feature = "wgpu")))]
fn built_without(feature: &str) -> CliError {
    CliError::Usage(format!(
        "--device {feature}: this burnish was built without {feature}; build it with \
         `cargo build --release -p burnish-cli --features {feature}`"
    ))
}

/// A failed run of the config at `path`, worded for the command: settings located in the
/// TOML, resume problems pointing at their flags.
fn train_error(path: &std::path::Path, e: TaskError) -> CliError {
    match e {
        TaskError::Inconsistent { dir, detail } => CliError::Usage(format!(
            "cannot resume {} exactly: {detail} (pass --force to resume anyway)",
            dir.display()
        )),
        TaskError::Invalid { field, message } if field == "train.output_dir" => {
            CliError::Usage(format!(
                "[train] output_dir: {message} (--resume continues it, --overwrite \
                 replaces it)"
            ))
        }
        TaskError::Invalid { field, message } if field == "resume" => {
            CliError::Usage(format!("--resume: {message}"))
        }
        TaskError::Invalid { field, message }
        | TaskError::Parallel(ParallelError::Invalid { field, message })
            if field.contains('.') =>
        {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            field_error(path, &text, &field, &message)
        }
        other => other.into(),
    }
}

/// `n` default (CPU) devices.
fn cpus<D: Default + Clone>(n: usize) -> Vec<D> {
    vec![D::default(); n]
}

fn run_on<B: AutodiffBackend>(command: Command, devices: &[B::Device]) -> Result<(), CliError> {
    let device = &devices[0];
    match command {
        Command::Train {
            config,
            output_dir,
            resume,
            force,
            overwrite,
            stop_after,
            quiet,
            node_rank,
        } => {
            let options = RunOptions {
                output_dir,
                resume: resume.map(|dir| dir.map_or(Resume::Latest, Resume::From)),
                force,
                stop_after,
                overwrite,
                node_rank,
            };
            train::<B>(&config, &options, quiet, devices)
        }
        Command::Bench { options, .. } => match options.generation().map_err(CliError::Usage)? {
            Some(generation) => bench_generation_on::<B::InnerBackend>(&generation, device),
            None => bench_on::<B>(&options.options(), device),
        },
        Command::Plot { run } => {
            print_curves(&plot_run(&run)?);
            Ok(())
        }
        Command::Eval {
            model,
            data,
            task,
            max_length,
            batch_size,
            outputs,
        } => {
            let options = outputs.options(EvalOptions {
                task: task.map(Task::from),
                max_length,
                batch_size,
                ..EvalOptions::default()
            });
            let metrics = evaluate_dir::<B::InnerBackend>(&model, &data, &options, device)
                .map_err(flag_error)?;
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
            outputs,
        } => {
            let options = outputs.options(EvalOptions {
                task: task.map(Task::from),
                max_length,
                max_new_tokens,
                ..EvalOptions::default()
            });
            let n = predict_dir::<B::InnerBackend>(&model, &input, &output, &options, device)
                .map_err(flag_error)?;
            eprintln!("{n} predictions written to {}", output.display());
            Ok(())
        }
    }
}

fn train<B: AutodiffBackend>(
    path: &std::path::Path,
    options: &RunOptions,
    quiet: bool,
    devices: &[B::Device],
) -> Result<(), CliError> {
    let config = read_config(path)?;
    let outcome = fine_tune_on::<B>(&config, options, &mut Progress::new(quiet), devices)
        .map_err(|e| train_error(path, e))?;
    if outcome.node_rank > 0 {
        let (node, steps) = (outcome.node_rank, outcome.summary.steps);
        println!("node {node}: {steps} steps done in step with node 0, which saves the model");
        return Ok(());
    }
    println!("final model: {}", outcome.final_dir.display());
    if let Some(best) = &outcome.best_dir {
        println!("best model: {}", best.display());
    }
    let log = outcome.output_dir.join("metrics.jsonl");
    println!("metrics log: {}", log.display());
    // The model is saved: a picture that cannot be drawn is a warning, not a failure.
    match plot_run(&outcome.output_dir) {
        Ok(paths) => print_curves(&paths),
        Err(e) => eprintln!("warning: {e}"),
    }
    Ok(())
}

fn bench_on<B: AutodiffBackend>(
    options: &burnish_tasks::bench::BenchOptions,
    device: &B::Device,
) -> Result<(), CliError> {
    let r = burnish_tasks::bench::bench::<B>(options, device).map_err(flag_error)?;
    let mfu = r.mfu.map(|m| format!(", MFU {:.1} %", m * 100.0));
    eprintln!(
        "{} parameters, batch {} x {} tokens, {}: \
         {:.2} samples/s, {:.0} tokens/s, {:.3} s/step, {:.2} TFLOP/s{}",
        r.parameters,
        options.batch_size,
        options.seq_len,
        options.precision,
        r.samples_per_second,
        r.tokens_per_second,
        r.step_seconds,
        r.tflops,
        mfu.unwrap_or_default()
    );
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    Ok(())
}

fn bench_generation_on<B: Backend>(
    options: &burnish_tasks::bench::GenerationBenchOptions,
    device: &B::Device,
) -> Result<(), CliError> {
    // The library names its fields; the command's flags for them differ.
    let flag = |e: TaskError| match e {
        TaskError::Invalid { field, message } => {
            let flag = match field.as_str() {
                "new_tokens" => "generate",
                "runs" => "steps",
                other => other,
            };
            CliError::Usage(format!("--{flag}: {message}"))
        }
        other => other.into(),
    };
    let r = burnish_tasks::bench::bench_generation::<B>(options, device).map_err(flag)?;
    eprintln!(
        "{} parameters, prompt {} tokens, {} new tokens: {:.3} s/run, {:.2} tokens/s",
        r.parameters, r.prompt_tokens, r.new_tokens, r.run_seconds, r.tokens_per_second
    );
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    Ok(())
}

fn print_curves([svg, png]: &[PathBuf; 2]) {
    println!("loss curves: {} and {}", svg.display(), png.display());
}

/// glibc serves allocations above 32 MiB with a fresh `mmap` and unmaps them on free, so
/// every tensor-sized temporary page-faults in anew: 19 % of a MiniLM fine-tune's time
/// (docs/benchmarks.md; mimalloc recovered only half of it). glibc reads its thresholds
/// from the environment at start-up only, so they are set and the program re-executed,
/// unless the user set them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    use std::os::unix::process::CommandExt;
    const MMAP: &str = "MALLOC_MMAP_THRESHOLD_";
    if std::env::var_os(MMAP).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only when it failed; the program then runs with glibc's defaults.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(MMAP, "2147483647")
        .env("MALLOC_TRIM_THRESHOLD_", "2147483647")
        .exec();
}

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, as every other error: clap's message up to its usage hint.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", message.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
