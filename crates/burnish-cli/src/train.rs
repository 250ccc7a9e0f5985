//! `burnish train`: the whole fine-tuning run, from a config to `final/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burnish_data::{BadRows, Task, TokenCache, sample_order};
use burnish_heads::LabelNames;
use burnish_loader::{HfModelDir, LoadOptions, Weights, export_dir, load_module};
use burnish_optim::AdamWConfig;
use burnish_schedule::Warmup;
use burnish_trainer::{
    BestMetric, BoxError, Control, EarlyStopping, EvalEvent, FitConfig, FitState, FitSummary,
    Hooks, StepReport, TrainData, Trainer, TrainerConfig,
};
use serde_json::{Value, json};

use crate::checkpoint::{Resume, Saver, config_hash, config_json, find, new_run_id};
use crate::infer::{Setup, cache_metrics, labels_of};
use crate::progress::Progress;
use crate::task::{DeviceBatch, HeadReport, TaskModel, with_task_model};
use crate::{CliError, RunConfig};

/// Command-line overrides of a run.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Replaces `[train] output_dir`.
    pub output_dir: Option<PathBuf>,
    /// No progress bar and no lines on stderr.
    pub quiet: bool,
    /// Resume from a checkpoint (`--resume [DIR]`).
    pub resume: Option<Resume>,
    /// Resume even when the configuration or the data changed (`--force`).
    pub force: bool,
    /// End the run after this optimizer step, as a preemption would (after its
    /// checkpoint, when one is due).
    pub stop_after: Option<u64>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Where everything was written.
    pub output_dir: PathBuf,
    /// The fine-tuned model, HF format.
    pub final_dir: PathBuf,
    /// The best model by the validation metric, HF format (when there is validation data).
    pub best_dir: Option<PathBuf>,
    /// How the loop ended.
    pub summary: FitSummary,
    /// Validation metrics of the pretrained model with its new head.
    pub before: Option<BTreeMap<String, f64>>,
    /// Validation metrics of the final model.
    pub after: Option<BTreeMap<String, f64>>,
    /// Test metrics of the final model.
    pub test: Option<BTreeMap<String, f64>>,
    /// Training examples (after skipped rows).
    pub train_examples: usize,
    /// Wall time of the training loop, seconds.
    pub train_seconds: f64,
}

/// Fine-tunes the model of `config` on `device`. See the crate docs for what is written.
///
/// # Errors
/// [`CliError`] for anything unusable (model, data, output directory) or a failed step.
pub fn train<B: AutodiffBackend>(
    config: &RunConfig,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainOutcome, CliError> {
    let hf = HfModelDir::open(&config.model.path)?;
    let labels = label_names(config, &hf)?;
    let n = labels.len();
    // Head initialization draws from the backend generator: seed it for a reproducible run.
    B::seed(device, config.train.seed);
    with_task_model!(
        B,
        &hf,
        config.model.task,
        n,
        config.model.dropout,
        false,
        device,
        |loaded| run(config, options, &hf, loaded, labels, device)
    )
}

/// Label names: `[model] labels`, else `LABEL_<i>` for `num_labels`, else the checkpoint's
/// own `id2label` (a model fine-tuned before); none for causal LM.
fn label_names(config: &RunConfig, hf: &HfModelDir) -> Result<Vec<String>, CliError> {
    if config.model.task == Task::CausalLm {
        return Ok(Vec::new());
    }
    if let Some(labels) = &config.model.labels {
        return Ok(labels.clone());
    }
    if let Some(n) = config.model.num_labels {
        return Ok(LabelNames::generic(n).0);
    }
    let own = labels_of(hf);
    if own.is_empty() {
        return Err(CliError::Usage(format!(
            "[model] labels (or num_labels) is required: {} has no id2label",
            hf.path().display()
        )));
    }
    Ok(own)
}

/// The training set as batches planned per epoch (seeded shuffle, optional length
/// grouping) and read from the token cache on demand.
struct CacheData<'a, B: Backend> {
    cache: &'a TokenCache,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    lengths: Option<Vec<u32>>,
    pad_id: u32,
    device: B::Device,
    plan: Option<(usize, Vec<usize>)>,
}

impl<B: Backend> CacheData<'_, B> {
    /// The example order of `epoch`, computed once per epoch.
    fn plan(&mut self, epoch: usize) -> &[usize] {
        if self.plan.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let order = sample_order(
                self.cache.len(),
                self.batch_size,
                self.seed,
                epoch as u64,
                self.shuffle,
                self.lengths.as_deref(),
            );
            self.plan = Some((epoch, order));
        }
        self.plan.as_ref().map_or(&[], |(_, o)| o.as_slice())
    }
}

impl<B: Backend> TrainData for CacheData<'_, B> {
    type Batch = DeviceBatch<B>;

    fn epoch_len(&mut self, epoch: usize) -> Result<usize, BoxError> {
        Ok(self.plan(epoch).len().div_ceil(self.batch_size))
    }

    fn batch(&mut self, epoch: usize, index: usize) -> Result<DeviceBatch<B>, BoxError> {
        let size = self.batch_size;
        let indices = self
            .plan(epoch)
            .chunks(size)
            .nth(index)
            .ok_or_else(|| format!("batch {index} of epoch {epoch} does not exist"))?
            .to_vec();
        let batch = self.cache.batch(&indices, self.pad_id)?;
        Ok(DeviceBatch::new(&batch, &self.device))
    }
}

/// The command's hooks: progress, `best/` exported whenever the validation metric
/// improves, checkpoints, and the preemption stop.
struct RunHooks<'a> {
    progress: Progress,
    hf: &'a HfModelDir,
    labels: LabelNames,
    best_dir: Option<PathBuf>,
    saver: Saver<'a>,
    best_now: bool,
    stop_after: Option<u64>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + TaskModel<B>> Hooks<B, M> for RunHooks<'_> {
    fn after_step(
        &mut self,
        trainer: &Trainer<B, M>,
        state: &FitState,
        report: &StepReport,
    ) -> Result<Control, BoxError> {
        self.progress.step(report.step, report.loss, report.lr);
        let best = std::mem::take(&mut self.best_now);
        if let Some(every) = self.saver.save_every
            && (report.step.is_multiple_of(every) || best)
        {
            self.saver.save(trainer, state, best)?;
        }
        Ok(if self.stop_after == Some(report.step) {
            Control::Stop
        } else {
            Control::Continue
        })
    }

    fn on_eval(&mut self, trainer: &Trainer<B, M>, event: &EvalEvent) -> Result<Control, BoxError> {
        if event.is_best
            && let Some(dir) = &self.best_dir
        {
            export(trainer.model(), self.hf, &self.labels, dir)?;
            self.best_now = true;
        }
        Ok(Control::Continue)
    }

    fn on_log(&mut self, event: &Value) {
        self.progress.event(event);
    }
}

fn export<B: Backend, M: TaskModel<B>>(
    model: &M,
    hf: &HfModelDir,
    labels: &LabelNames,
    dir: &Path,
) -> Result<(), CliError> {
    let config = model.export_config(hf.config_json(), labels);
    export_dir(dir, model, hf.naming(), &config, Some(hf.path()))?;
    Ok(())
}

fn run<B: AutodiffBackend, M: AutodiffModule<B> + TaskModel<B>>(
    config: &RunConfig,
    options: &TrainOptions,
    hf: &HfModelDir,
    (model, head): (M, HeadReport),
    labels: Vec<String>,
    device: &B::Device,
) -> Result<TrainOutcome, CliError>
where
    M::InnerModule: TaskModel<B::InnerBackend>,
{
    let t = &config.train;
    let output_dir = options
        .output_dir
        .clone()
        .or_else(|| t.output_dir.clone())
        .ok_or_else(|| {
            CliError::Usage(
                "no output directory: set [train] output_dir or pass --output-dir".into(),
            )
        })?;
    std::fs::create_dir_all(&output_dir).map_err(CliError::io(&output_dir))?;
    let mut progress = Progress::new(options.quiet);
    let compute = t.precision.compute_dtype();
    if !B::supports_dtype(device, compute.into()) {
        return Err(CliError::Usage(format!(
            "[train] precision: {} needs a backend with {compute:?} tensors (--backend flex \
             or --device cuda); burn-ndarray computes in float32 only",
            t.precision
        )));
    }
    let model = model.with_compute_dtype(compute);
    if !head.new_parameters.is_empty() {
        progress.line(&format!(
            "new head parameters, N(0, initializer_range): {}",
            head.new_parameters.join(", ")
        ));
    }

    let setup = Setup::new(hf, config.model.task, config.data.max_length, labels)?;
    let cache_root = config
        .data
        .cache_dir
        .clone()
        .unwrap_or_else(|| output_dir.join("cache"));
    let bad = if config.data.skip_bad_rows {
        BadRows::Skip
    } else {
        BadRows::Fail
    };
    let open = |path: &Path| -> Result<TokenCache, CliError> {
        let started = Instant::now();
        let (cache, built) =
            TokenCache::open_or_build(path, &setup.encoder(true), bad, &cache_root)?;
        let meta = cache.meta();
        progress.line(&format!(
            "{}: {} examples, {} tokens{}{}",
            path.display(),
            meta.examples,
            meta.tokens,
            if built {
                format!(", tokenized in {:.1} s", started.elapsed().as_secs_f64())
            } else {
                ", from the token cache".into()
            },
            if meta.skipped > 0 {
                format!(
                    ", {} bad rows skipped (first: {})",
                    meta.skipped,
                    meta.skipped_rows.join("; ")
                )
            } else {
                String::new()
            }
        ));
        Ok(cache)
    };
    let train_cache = open(&config.data.train)?;
    let valid_cache = config.data.validation.as_deref().map(open).transpose()?;
    let test_cache = config.data.test.as_deref().map(open).transpose()?;

    let batches_per_epoch = train_cache.len().div_ceil(t.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(t.grad_accum) as u64;
    let (epochs, total_steps) = match t.max_steps {
        Some(max) => (max.div_ceil(steps_per_epoch) as usize, max),
        None => (t.epochs, t.epochs as u64 * steps_per_epoch),
    };
    let trainer_config = TrainerConfig {
        lr: t.lr,
        weight_decay: t.weight_decay,
        adam: AdamWConfig {
            beta1: t.adam_beta1,
            beta2: t.adam_beta2,
            epsilon: t.adam_epsilon,
            ..AdamWConfig::default()
        },
        schedule: t.schedule.0.clone(),
        warmup: if t.warmup_ratio > 0.0 {
            Warmup::Ratio(t.warmup_ratio)
        } else {
            Warmup::Steps(t.warmup_steps)
        },
        total_steps,
        max_grad_norm: (t.max_grad_norm > 0.0).then_some(t.max_grad_norm),
        seed: Some(t.seed),
        precision: t.precision,
        ..TrainerConfig::default()
    };
    let run_config = config_json(config);
    let train_fingerprint = train_cache.meta().fingerprint.clone();
    let resumed = match &options.resume {
        Some(resume) => find(
            resume,
            &output_dir,
            &run_config,
            &train_fingerprint,
            options.force,
            &|line| progress.line(line),
        )?,
        None => None,
    };
    let model = match &resumed {
        Some(r) => {
            let dir = r.checkpoint.dir();
            let weights = Weights::open_dir(dir)?;
            load_module(model, &weights, hf.naming(), &LoadOptions::default(), dir)?.0
        }
        None => model,
    };
    let eval_batch = t.eval_batch_size.unwrap_or(t.batch_size);
    let inner_device = device.clone();
    let evaluate = |m: &M::InnerModule, cache: &TokenCache| {
        cache_metrics::<B::InnerBackend, _>(m, cache, &setup, eval_batch, &inner_device)
    };
    let before = match (&valid_cache, t.eval_at_start) {
        _ if resumed.is_some() => resumed.as_ref().and_then(|r| r.state.before.clone()),
        (Some(cache), true) => {
            let metrics = evaluate(&model.valid(), cache)?;
            progress.line(&format!("before training: {}", format_metrics(&metrics)));
            Some(metrics)
        }
        _ => None,
    };

    let metric = config.metric_for_best();
    let fit = FitConfig {
        epochs,
        max_steps: t.max_steps,
        grad_accum: t.grad_accum,
        eval_every: t.eval_every,
        log_every: t.log_every,
        best_metric: valid_cache.as_ref().map(|_| BestMetric::named(&metric)),
        early_stopping: t.early_stopping_patience.map(|patience| EarlyStopping {
            patience,
            threshold: t.early_stopping_threshold,
        }),
        output_dir: Some(output_dir.clone()),
    };
    let mut data = CacheData::<B> {
        cache: &train_cache,
        batch_size: t.batch_size,
        seed: t.seed,
        shuffle: config.data.shuffle,
        lengths: if config.data.group_by_length {
            Some(train_cache.lengths()?)
        } else {
            None
        },
        pad_id: setup.tokenizer.pad_id(),
        device: device.clone(),
        plan: None,
    };
    let label_names = LabelNames(setup.labels.clone());
    let best_dir = valid_cache.as_ref().map(|_| output_dir.join("best"));
    let saver = Saver {
        root: output_dir.clone(),
        save_every: t.save_every,
        keep_last: t.keep_last,
        hf,
        labels: label_names.clone(),
        config_hash: config_hash(&run_config),
        config: run_config,
        run_id: resumed
            .as_ref()
            .map_or_else(new_run_id, |r| r.state.run_id.clone()),
        parent: resumed
            .as_ref()
            .map(|r| burnish_checkpoint::dir_name(r.state.step)),
        best_step: resumed.as_ref().and_then(|r| r.state.fit.best.map(|b| b.1)),
        train_fingerprint,
        before: before.clone(),
    };
    progress.start(total_steps);
    let mut hooks = RunHooks {
        progress,
        hf,
        labels: label_names.clone(),
        best_dir: best_dir.clone(),
        saver,
        best_now: false,
        stop_after: options.stop_after,
    };
    hooks.progress.line(&format!(
        "training {} parameters: {} examples, {epochs} epoch(s), {total_steps} optimizer steps of {} × {} examples",
        model.num_params(),
        train_cache.len(),
        t.grad_accum,
        t.batch_size
    ));
    let mut trainer = Trainer::new(model, trainer_config)?;
    let fit_state = match resumed {
        Some(r) => {
            let bytes = r.checkpoint.read("optimizer.safetensors")?;
            let optim = burnish_optim::AdamWState::from_bytes(&bytes).map_err(|e| {
                CliError::Usage(format!(
                    "{}: {e}",
                    r.checkpoint.path("optimizer.safetensors").display()
                ))
            })?;
            trainer.restore(optim, r.state.step, r.state.scaler)?;
            r.state.fit
        }
        None => FitState::default(),
    };
    let started = Instant::now();
    let valid_ref = valid_cache.as_ref();
    let summary = trainer.fit_from(
        fit_state,
        &fit,
        &mut data,
        |m: &M, b: &DeviceBatch<B>| m.loss(m.logits(b), &b.labels),
        |m: &M::InnerModule| match valid_ref {
            Some(cache) => evaluate(m, cache).map_err(|e| Box::new(e) as BoxError),
            None => Ok(BTreeMap::new()),
        },
        &mut hooks,
    );
    hooks.progress.finish();
    let summary = summary?;
    let train_seconds = started.elapsed().as_secs_f64();

    let final_dir = output_dir.join("final");
    let model = trainer.into_model();
    export(&model, hf, &label_names, &final_dir)?;
    let inner = model.valid();
    let after = valid_cache
        .as_ref()
        .map(|c| evaluate(&inner, c))
        .transpose()?;
    let test = test_cache
        .as_ref()
        .map(|c| evaluate(&inner, c))
        .transpose()?;
    if let Some(m) = &after {
        hooks
            .progress
            .line(&format!("after training: {}", format_metrics(m)));
    }
    if let Some(m) = &test {
        hooks.progress.line(&format!("test: {}", format_metrics(m)));
    }
    let results = json!({
        "steps": summary.steps, "stopped_by": summary.stopped_by, "train_examples": train_cache.len(),
        "train_seconds": train_seconds, "best": summary.best, "metric_for_best": metric,
        "validation_before": before, "validation_after": after, "test": test,
    });
    let path = output_dir.join("results.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    )
    .map_err(CliError::io(&path))?;
    Ok(TrainOutcome {
        output_dir,
        final_dir,
        best_dir: best_dir.filter(|d| d.is_dir()),
        summary,
        before,
        after,
        test,
        train_examples: train_cache.len(),
        train_seconds,
    })
}

/// `name value, ...` with four decimals.
pub(crate) fn format_metrics(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}
