//! `burnish eval` and `predict` as library calls: a model directory on a JSONL file.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use burn::tensor::backend::Backend;
use burnish_data::{BadRows, Task, TokenCache};
use burnish_loader::HfModelDir;
use serde_json::Value;

use crate::{
    HeadReport, HeadSpec, TaskError, TaskModel, TaskSetup, UseModel, evaluate, generate_rows,
    labels_of, load_causal, metrics_for, predict, task_of, with_model,
};

/// Settings of [`evaluate_dir`] and [`predict_dir`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The task; `None` reads it from the model's `architectures`.
    pub task: Option<Task>,
    /// Longest sequence in tokens; `None` takes the model's positions, at most 512.
    pub max_length: Option<usize>,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Skip unusable rows instead of failing.
    pub skip_bad_rows: bool,
    /// Tokens generated per prompt (causal LM prediction).
    pub max_new_tokens: usize,
    /// Multi-label classification predicts the labels whose probability is above this
    /// (0.5 by default).
    pub threshold: Option<f64>,
    /// Question answering: windowing and answer selection.
    pub qa: crate::QaOptions,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            task: None,
            max_length: None,
            batch_size: 32,
            skip_bad_rows: false,
            max_new_tokens: 64,
            threshold: None,
            qa: crate::QaOptions::default(),
        }
    }
}

fn open_for(model_dir: &Path, options: &EvalOptions) -> Result<(HfModelDir, TaskSetup), TaskError> {
    if options.batch_size == 0 {
        return Err(TaskError::Invalid {
            field: "batch_size".into(),
            message: "must be at least 1".into(),
        });
    }
    let hf = HfModelDir::open(model_dir)?;
    let max_length = options
        .max_length
        .unwrap_or_else(|| hf.config().max_positions().unwrap_or(512).min(512));
    let task = match options.task {
        Some(t) => t,
        None => task_of(&hf)?,
    };
    let labels = labels_of(&hf);
    if task != Task::CausalLm && labels.is_empty() {
        return Err(TaskError::Labels {
            path: model_dir.to_owned(),
            detail: format!(
                "config.json has no id2label; is this a fine-tuned {} model?",
                task.name()
            ),
        });
    }
    let mut setup = TaskSetup::new(&hf, task, max_length, labels)?;
    if let Some(threshold) = options.threshold {
        setup = setup.with_threshold(threshold)?;
    }
    options.qa.validate()?;
    setup.qa = options.qa;
    Ok((hf, setup))
}

/// A token cache of `data` in a scratch directory removed with the returned guard.
fn scratch_cache(
    data: &Path,
    setup: &TaskSetup,
    labeled: bool,
    options: &EvalOptions,
) -> Result<(TokenCache, tempfile::TempDir), TaskError> {
    let scratch = tempfile::tempdir().map_err(TaskError::io(Path::new(".")))?;
    let bad = if options.skip_bad_rows {
        BadRows::Skip
    } else {
        BadRows::Fail
    };
    let (cache, _) = TokenCache::open_or_build(data, &setup.encoder(labeled), bad, scratch.path())?;
    Ok((cache, scratch))
}

/// A fine-tuned directory holds its head: loaded strictly.
fn strict_spec(setup: &TaskSetup) -> HeadSpec {
    HeadSpec {
        strict: true,
        problem: setup.problem,
        ..HeadSpec::new(setup.task, setup.labels.len())
    }
}

/// Metrics of the model in `model_dir` on the labeled JSONL `data` (the task's
/// [`metrics_for`]).
///
/// # Errors
/// [`TaskError`] for an unusable model directory or data file.
pub fn evaluate_dir<B: Backend>(
    model_dir: &Path,
    data: &Path,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<BTreeMap<String, f64>, TaskError> {
    let (hf, setup) = open_for(model_dir, options)?;
    let (cache, _scratch) = scratch_cache(data, &setup, true, options)?;
    struct Eval<'a, B: Backend>(&'a TaskSetup, &'a TokenCache, usize, &'a B::Device);
    impl<B: Backend> UseModel<B> for Eval<'_, B> {
        type Output = Result<BTreeMap<String, f64>, TaskError>;
        fn visit<M: TaskModel<B>>(self, model: M, _: HeadReport) -> Self::Output {
            let Eval(setup, cache, batch_size, device) = self;
            let mut metrics = metrics_for(setup, cache)?;
            let pad = setup.tokenizer.pad_id();
            evaluate::<B, M>(&model, cache, pad, batch_size, metrics.as_mut(), device)
        }
    }
    let eval = Eval::<B>(&setup, &cache, options.batch_size, device);
    with_model(&hf, &strict_spec(&setup), device, eval)?
}

/// Writes one JSON line per row of `input` to `output` (see [`predict`] and
/// [`generate_rows`] for what each task writes). Returns the number of lines. The output
/// is written beside its place and renamed in, so it never replaces `input` (or an
/// earlier output) with a partial file.
///
/// # Errors
/// [`TaskError`] for an unusable model, input, or output file.
pub fn predict_dir<B: Backend>(
    model_dir: &Path,
    input: &Path,
    output: &Path,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<usize, TaskError> {
    if crate::run::same_path(input, output) {
        return Err(TaskError::Invalid {
            field: "output".into(),
            message: format!(
                "{} is the input file: the predictions would replace it",
                output.display()
            ),
        });
    }
    let (hf, setup) = open_for(model_dir, options)?;
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty());
    let staging = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))
        .map_err(TaskError::io(output))?;
    let mut out = BufWriter::new(staging.as_file());
    let mut emit = |line: Value| writeln!(out, "{line}").map_err(TaskError::io(output));
    let written = if setup.task == Task::CausalLm {
        let (model, _) = load_causal::<B>(&hf, None, device)?;
        generate_rows(&model, &setup, input, options.max_new_tokens, &mut emit)?
    } else {
        let (cache, _scratch) = scratch_cache(input, &setup, false, options)?;
        struct Predict<'a, B: Backend> {
            setup: &'a TaskSetup,
            cache: &'a TokenCache,
            input: &'a Path,
            batch_size: usize,
            device: &'a B::Device,
            emit: &'a mut dyn FnMut(Value) -> Result<(), TaskError>,
        }
        impl<B: Backend> UseModel<B> for Predict<'_, B> {
            type Output = Result<usize, TaskError>;
            fn visit<M: TaskModel<B>>(self, model: M, _: HeadReport) -> Self::Output {
                let p = self;
                predict::<B, M>(
                    &model,
                    p.setup,
                    p.cache,
                    p.input,
                    p.batch_size,
                    p.device,
                    p.emit,
                )
            }
        }
        let task = Predict::<B> {
            setup: &setup,
            cache: &cache,
            input,
            batch_size: options.batch_size,
            device,
            emit: &mut emit,
        };
        with_model(&hf, &strict_spec(&setup), device, task)??
    };
    out.flush().map_err(TaskError::io(output))?;
    drop(out);
    staging.persist(output).map_err(|e| TaskError::Io {
        path: output.to_owned(),
        source: e.error,
    })?;
    Ok(written)
}
