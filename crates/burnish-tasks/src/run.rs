//! A whole fine-tuning run from a [`RunConfig`]: what `burnish train` does, as one library
//! call built from the others of this crate (read it as an example of composing them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burnish_data::{BadRows, Task, TokenCache};
use burnish_heads::LabelNames;
use burnish_loader::{HfModelDir, export_dir};
use burnish_parallel::{
    Abort, CollectiveSync, Topology, replicate, reset_local_group, run_workers,
};
use burnish_trainer::{
    BoxError, Control, EvalEvent, FitConfig, FitState, FitSummary, Hooks, StepReport, Trainer,
};
use serde_json::{Value, json};

use crate::{
    CacheData, Checkpointer, DeviceBatch, HeadReport, HeadSpec, Resumed, RunConfig, RunFingerprint,
    TaskError, TaskModel, TaskSetup, UseTrainModel, evaluate, label_names, metrics_for,
    with_precision, with_train_model,
};

/// Keys that may change between a checkpoint and its resumption without changing what the
/// run computes.
pub const FREE_KEYS: [&str; 11] = [
    "train.output_dir",
    "data.cache_dir",
    "train.log_every",
    "train.save_every",
    "train.keep_last",
    // Recomputing activations gives the same bits (the CLI's resume test proves it).
    "train.gradient_checkpointing",
    // Any number of workers computes the same steps (each step's examples do not depend
    // on it), so a run may resume on other devices.
    "distributed.devices",
    "distributed.nodes",
    "distributed.node_rank",
    "distributed.coordinator",
    "distributed.timeout_secs",
];

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The newest valid checkpoint of the output directory; a fresh start when there is none.
    Latest,
    /// This checkpoint directory.
    From(PathBuf),
}

/// What a run shows while it goes: lines, a step counter, logged events. The `burnish`
/// command draws a progress bar with it; the default does nothing.
pub trait RunObserver {
    /// A line of information (data read, resumed from, metrics before and after).
    fn line(&mut self, _text: &str) {}
    /// Training starts: `total` optimizer steps in all.
    fn start(&mut self, _total: u64) {}
    /// An optimizer step ended.
    fn step(&mut self, _report: &StepReport) {}
    /// An event was written to `metrics.jsonl`.
    fn event(&mut self, _event: &Value) {}
    /// Training ended (before the final evaluation).
    fn finish(&mut self) {}
}

/// A [`RunObserver`] that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl RunObserver for Silent {}

/// How to run besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where everything is written; `[train] output_dir` when `None`.
    pub output_dir: Option<PathBuf>,
    /// Resume from a checkpoint.
    pub resume: Option<Resume>,
    /// Resume even when the configuration or the data changed.
    pub force: bool,
    /// End the run after this optimizer step, as a preemption would (after its
    /// checkpoint, when one is due).
    pub stop_after: Option<u64>,
    /// Start afresh in an output directory that holds another run, removing that run's
    /// outputs ([`RUN_OUTPUTS`] and its checkpoints; the token cache stays). Without it such a directory is
    /// refused unless the run resumes.
    pub overwrite: bool,
    /// This process's node of a multi-node data-parallel run (`[distributed] node_rank`
    /// when `None`).
    pub node_rank: Option<usize>,
}

/// What a run writes into its output directory besides its `checkpoint-<step>/`
/// directories and the token cache: a directory holding any of them holds a run.
pub const RUN_OUTPUTS: [&str; 7] = [
    "metrics.jsonl",
    "results.json",
    "trainer_state.json",
    "final",
    "best",
    "curves.svg",
    "curves.png",
];

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
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
    /// This process's node in a multi-node data-parallel run (0 otherwise); a node other
    /// than 0 wrote nothing and its outcome has the loop's summary only.
    pub node_rank: usize,
}

/// Fine-tunes the model of `config` on `device`: loads the pretrained backbone under the
/// task's head, tokenizes the data into the token cache, trains every parameter (resuming
/// from a checkpoint when asked), exports `best/` at each new best and `final/` at the
/// end, and writes `metrics.jsonl`, `trainer_state.json` and `results.json` into the
/// output directory. `observer` sees its progress.
///
/// # Errors
/// [`TaskError`] for anything unusable (model, data, output directory, checkpoint) or a
/// failed step ([`TaskError::Train`]).
pub fn fine_tune<B: AutodiffBackend>(
    config: &RunConfig,
    options: &RunOptions,
    observer: &mut dyn RunObserver,
    device: &B::Device,
) -> Result<RunOutcome, TaskError> {
    fine_tune_on::<B>(config, options, observer, std::slice::from_ref(device))
}

/// [`fine_tune`] data-parallel over this process's `devices` (one worker each, as listed
/// in `[distributed] devices`) and, with `[distributed] nodes > 1`, over several
/// processes: every worker trains on its part of each batch
/// ([`CacheData::shard`](crate::CacheData::shard)), the gradients are summed before each
/// step ([`Trainer::with_grad_sync`]), so the run computes what one device would with the
/// same `batch_size` and `grad_accum`. The first device's worker on node 0 logs,
/// evaluates, checkpoints and exports; a node other than 0 writes nothing into the output
/// directory (it may share it, to resume from node 0's checkpoints) and returns the loop's
/// summary only. A failed or killed worker ends every worker with an error within
/// `[distributed] timeout_secs`; `--resume` continues the run, on any number of workers.
///
/// # Errors
/// As [`fine_tune`]; [`TaskError::Invalid`] when `devices` does not match the
/// configuration, [`TaskError::Parallel`] for unusable `[distributed]` settings,
/// [`TaskError::Sync`] (or [`TaskError::Train`]) when the workers cannot form their group
/// or fall out of step.
pub fn fine_tune_on<B: AutodiffBackend>(
    config: &RunConfig,
    options: &RunOptions,
    observer: &mut dyn RunObserver,
    devices: &[B::Device],
) -> Result<RunOutcome, TaskError> {
    let wanted = config.distributed.as_ref().map_or(1, |d| d.devices.len());
    let Some(device) = devices.first().filter(|_| devices.len() == wanted) else {
        return Err(TaskError::Invalid {
            field: "distributed.devices".into(),
            message: format!(
                "the configuration names {wanted} device(s), the run was given {}",
                devices.len()
            ),
        });
    };
    let topology = config
        .distributed
        .as_ref()
        .map(|d| d.topology(options.node_rank))
        .transpose()?;
    config.validate()?;
    let hf = HfModelDir::open(&config.model.path)?;
    let problem = config
        .model
        .problem_type
        .unwrap_or_else(|| crate::problem_of(&hf));
    // The checkpoint's problem type, once read, is the run's (its default best metric).
    let mut resolved = config.clone();
    if config.model.task == Task::SequenceClassification {
        resolved.model.problem_type = Some(problem);
    }
    let config = &resolved;
    let labels = label_names(
        &hf,
        config.model.task,
        problem,
        config.model.labels.as_deref(),
        config.model.num_labels,
    )?;
    // Everything that can be refused is, before the model is loaded.
    let setup = TaskSetup::new(&hf, config.model.task, config.data.max_length, labels).map_err(
        |e| match e {
            TaskError::Invalid { field, message } if field == "max_length" => TaskError::Invalid {
                field: "data.max_length".into(),
                message,
            },
            other => other,
        },
    )?;
    let mut setup = setup.with_problem(problem);
    setup.qa = config.data.qa_options();
    if let Some(threshold) = config.model.threshold {
        setup = setup.with_threshold(threshold)?;
    }
    let output = match topology.as_ref().is_none_or(Topology::is_main_node) {
        true => prepare_output_dir(config, options)?,
        false => follower_output_dir(config, options)?,
    };
    if topology.is_some() {
        reset_local_group::<B::InnerBackend>();
    }
    let spec = HeadSpec {
        dropout: config.model.dropout,
        problem,
        ..HeadSpec::new(config.model.task, setup.labels.len())
    };
    // A new head's weights come from this thread's generator: seed it for a reproducible run.
    burnish_models::random::seed_thread(config.train.seed);
    let run = Run::<B> {
        config,
        options,
        observer,
        hf: &hf,
        setup,
        output,
        device: device.clone(),
        devices: devices.to_vec(),
        topology,
    };
    with_train_model(&hf, &spec, device, run)?
}

/// Whether two paths name the same existing file or directory (links resolved).
pub(crate) fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Why `dir` cannot be a run's output directory for the model in `model`: empty, or the
/// model's own directory. Checked on the config and again on the directory in use (which
/// `RunOptions::output_dir` may override).
pub(crate) fn unusable_output_dir(dir: &Path, model: &Path) -> Option<String> {
    if dir.as_os_str().is_empty() {
        return Some("is empty".into());
    }
    same_path(dir, model).then(|| {
        format!(
            "{} is the model's directory: the run would write over the pretrained model",
            dir.display()
        )
    })
}

/// The run's output directory, checked: not empty, not the model's directory, not a
/// file, and not holding another run unless the run resumes or overwrites it (then the
/// earlier run's outputs are removed first).
fn prepare_output_dir(config: &RunConfig, options: &RunOptions) -> Result<PathBuf, TaskError> {
    let invalid = |message: String| TaskError::Invalid {
        field: "train.output_dir".into(),
        message,
    };
    let dir = options
        .output_dir
        .clone()
        .or_else(|| config.train.output_dir.clone())
        .ok_or_else(|| invalid("no output directory: set it (or pass one)".into()))?;
    if let Some(problem) = unusable_output_dir(&dir, &config.model.path) {
        return Err(invalid(problem));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(invalid(format!(
            "{} is a file, not a directory",
            dir.display()
        )));
    }
    let checkpoints = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("checkpoint-"));
    let earlier: Vec<String> = RUN_OUTPUTS
        .iter()
        .map(|name| name.to_string())
        .chain(checkpoints)
        .filter(|name| dir.join(name).exists())
        .collect();
    if !earlier.is_empty() && options.resume.is_none() {
        if !options.overwrite {
            return Err(invalid(format!(
                "{} holds another run ({}): resume it, or overwrite it",
                dir.display(),
                earlier.join(", ")
            )));
        }
        for name in &earlier {
            let path = dir.join(name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(TaskError::io(&path))?;
        }
    }
    std::fs::create_dir_all(&dir).map_err(TaskError::io(&dir))?;
    Ok(dir)
}

/// The output directory of a node other than 0: node 0's, read for checkpoints but never
/// cleared nor checked for another run here (node 0 does that).
fn follower_output_dir(config: &RunConfig, options: &RunOptions) -> Result<PathBuf, TaskError> {
    let dir = options
        .output_dir
        .clone()
        .or_else(|| config.train.output_dir.clone())
        .ok_or_else(|| TaskError::Invalid {
            field: "train.output_dir".into(),
            message: "no output directory: set it (or pass one)".into(),
        })?;
    std::fs::create_dir_all(&dir).map_err(TaskError::io(&dir))?;
    Ok(dir)
}

struct Run<'a, B: AutodiffBackend> {
    config: &'a RunConfig,
    options: &'a RunOptions,
    observer: &'a mut dyn RunObserver,
    hf: &'a HfModelDir,
    setup: TaskSetup,
    output: PathBuf,
    device: B::Device,
    /// This process's devices (the first is `device`), one worker each.
    devices: Vec<B::Device>,
    topology: Option<Topology>,
}

impl<B: AutodiffBackend> UseTrainModel<B> for Run<'_, B> {
    type Output = Result<RunOutcome, TaskError>;

    fn visit<M>(self, model: M, report: HeadReport) -> Self::Output
    where
        M: AutodiffModule<B> + TaskModel<B>,
        M::InnerModule: TaskModel<B::InnerBackend>,
    {
        self.train(model, &report)
    }
}

/// The run's data: the token caches of its files.
struct Caches {
    train: TokenCache,
    valid: Option<TokenCache>,
    test: Option<TokenCache>,
}

impl<B: AutodiffBackend> Run<'_, B> {
    fn open_caches(&mut self, output: &Path) -> Result<Caches, TaskError> {
        let data = &self.config.data;
        // Nodes sharing the output directory do not build one cache at the same time.
        let own = match self.topology.as_ref().map_or(0, |t| t.node_rank) {
            0 => "cache".to_string(),
            node => format!("cache-node-{node}"),
        };
        let root = data.cache_dir.clone().unwrap_or_else(|| output.join(own));
        let bad = if data.skip_bad_rows {
            BadRows::Skip
        } else {
            BadRows::Fail
        };
        let encoder = self.setup.encoder(true);
        let mut open = |path: &Path| -> Result<TokenCache, TaskError> {
            let started = Instant::now();
            let (cache, built) = TokenCache::open_or_build(path, &encoder, bad, &root)?;
            let meta = cache.meta();
            let how = if built {
                format!(", tokenized in {:.1} s", started.elapsed().as_secs_f64())
            } else {
                ", from the token cache".into()
            };
            let skipped = match meta.skipped {
                0 => String::new(),
                n => format!(
                    ", {n} bad rows skipped (first: {})",
                    meta.skipped_rows.join("; ")
                ),
            };
            let (examples, tokens) = (meta.examples, meta.tokens);
            let line = format!(
                "{}: {examples} examples, {tokens} tokens{how}{skipped}",
                path.display()
            );
            self.observer.line(&line);
            Ok(cache)
        };
        Ok(Caches {
            train: open(&data.train)?,
            valid: data.validation.as_deref().map(&mut open).transpose()?,
            test: data.test.as_deref().map(&mut open).transpose()?,
        })
    }

    fn find_resume(
        options: &RunOptions,
        observer: &mut dyn RunObserver,
        output: &Path,
        run: &RunFingerprint,
        data_fingerprint: &str,
    ) -> Result<Option<Resumed>, TaskError> {
        let resumed = match &options.resume {
            None => return Ok(None),
            Some(Resume::From(dir)) => Resumed::open(dir)?,
            Some(Resume::Latest) => match Resumed::latest(output, &mut |l| observer.line(l))? {
                Some(r) => r,
                None => {
                    let dir = output.display();
                    observer.line(&format!(
                        "no checkpoint in {dir}: starting from the beginning"
                    ));
                    return Ok(None);
                }
            },
        };
        if !options.force {
            resumed.check(run, data_fingerprint)?;
        }
        let (dir, step) = (resumed.checkpoint.dir().display(), resumed.step());
        observer.line(&format!("resuming from {dir} (step {step})"));
        Ok(Some(resumed))
    }

    fn train<M>(mut self, model: M, head: &HeadReport) -> Result<RunOutcome, TaskError>
    where
        M: AutodiffModule<B> + TaskModel<B>,
        M::InnerModule: TaskModel<B::InnerBackend>,
    {
        let (config, t) = (self.config, &self.config.train);
        let output = self.output.clone();
        let model = with_precision(model, t.precision, &self.device)?;
        let limits = model.input_limits();
        if !head.new_parameters.is_empty() {
            let names = head.new_parameters.join(", ");
            self.observer.line(&format!(
                "new head parameters, N(0, initializer_range): {names}"
            ));
        }
        let caches = self.open_caches(&output)?;
        let setup = &self.setup;
        let pad = setup.tokenizer.pad_id();
        let train_data = |device: &B::Device| -> Result<CacheData<'_, B>, TaskError> {
            let data = CacheData::<B>::new(
                &caches.train,
                t.batch_size,
                pad,
                t.seed,
                config.data.shuffle,
                device,
            )?
            .with_limits(limits);
            let data = match config.data.packing {
                true => data.packed(config.data.max_length)?,
                false => data,
            };
            match config.data.group_by_length {
                true => data.grouped_by_length(),
                false => Ok(data),
            }
        };
        let mut data = train_data(&self.device)?;
        let fit = config.fit_config(Some(output.clone()));
        let plan = fit.plan(data.batches_per_epoch())?;
        if t.warmup_steps > plan.total_steps {
            return Err(TaskError::Invalid {
                field: "train.warmup_steps".into(),
                message: format!(
                    "{} is more than the run's {} optimizer steps",
                    t.warmup_steps, plan.total_steps
                ),
            });
        }
        let run = RunFingerprint::new(serde_json::to_value(config).unwrap_or(Value::Null))
            .ignoring(&FREE_KEYS);
        let data_fingerprint = caches.train.meta().content.clone();
        let resumed = Self::find_resume(
            self.options,
            &mut *self.observer,
            &output,
            &run,
            &data_fingerprint,
        )?;
        let model = match &resumed {
            Some(r) => r.load_model(model, self.hf.naming())?,
            None => model,
        };
        let eval_batch = t.eval_batch_size.unwrap_or(t.batch_size);
        let evaluate_on = |m: &M::InnerModule, cache: &TokenCache, device: &B::Device| {
            let mut metrics = metrics_for(setup, cache)?;
            evaluate::<B::InnerBackend, _>(m, cache, pad, eval_batch, metrics.as_mut(), device)
        };
        let main_node = self.topology.as_ref().is_none_or(Topology::is_main_node);
        let before = match (&caches.valid, t.eval_at_start, &resumed) {
            (_, _, Some(r)) => r.state.before.clone(),
            (Some(cache), true, None) if main_node => {
                let metrics = evaluate_on(&model.valid(), cache, &self.device)?;
                self.observer
                    .line(&format!("before training: {}", format_metrics(&metrics)));
                Some(metrics)
            }
            _ => None,
        };
        let labels = LabelNames(setup.labels.clone());
        let mut checkpointer =
            Checkpointer::new(&output, self.hf, labels.clone(), run, &data_fingerprint)
                .keep_last(t.keep_last)
                .with_before(before.clone());
        let trainer_config = config.trainer_config(plan.total_steps);
        let mut trainer = Trainer::new(model, trainer_config.clone())?;
        let state = match &resumed {
            Some(r) => {
                checkpointer = checkpointer.continuing(r);
                r.restore(&mut trainer)?
            }
            None => FitState::default(),
        };
        let (params, examples) = (trainer.model().num_params(), caches.train.len());
        self.observer.line(&format!(
            "training {params} parameters: {examples} examples, {} epoch(s), {} optimizer steps of {} × {} examples",
            plan.epochs, plan.total_steps, t.grad_accum, t.batch_size
        ));
        // Data parallel: the other devices' workers start from copies of this model and
        // the same checkpoint, each on its part of every batch.
        let topology = self.topology.clone().unwrap_or_else(|| Topology::local(1));
        let abort = Abort::new();
        let replicas = Mutex::new(
            replicate(trainer.model(), &self.devices[1..])
                .into_iter()
                .map(Some)
                .collect::<Vec<_>>(),
        );
        if let Some(t) = &self.topology {
            let (world, nodes) = (t.world_size(), t.nodes);
            self.observer.line(&format!(
                "data parallel: {world} workers ({} per node × {nodes} node(s)), this node {}",
                t.workers_per_node, t.node_rank
            ));
        }
        let follower = Follower {
            fit: &fit,
            topology: &topology,
            abort: &abort,
            resumed: resumed.as_ref(),
            valid: caches.valid.as_ref(),
            stop_after: self.options.stop_after,
        };
        let follow = |local: usize| {
            let model = replicas
                .lock()
                .map_err(|_| TaskError::Invalid {
                    field: "distributed.devices".into(),
                    message: "a worker failed while the models were handed out".into(),
                })?
                .get_mut(local - 1)
                .and_then(Option::take)
                .ok_or_else(|| TaskError::Invalid {
                    field: "distributed.devices".into(),
                    message: format!("no model for worker {local}"),
                })?;
            let device = &self.devices[local];
            follower.run(
                local,
                device,
                Trainer::new(model, trainer_config.clone())?,
                train_data(device)?,
                &|m, c| evaluate_on(m, c, device),
            )
        };
        let lead = |mut trainer: Trainer<B, M>| -> Result<RunOutcome, TaskError> {
            let observer = &mut *self.observer;
            let rank = topology.rank_of(0);
            if self.topology.is_some() {
                let sync = register::<B>(&topology, 0, &self.device, &abort)?;
                trainer = trainer.with_grad_sync(sync);
                data = data.shard(rank, topology.world_size())?;
            }
            observer.start(plan.total_steps);
            let best_dir = caches.valid.as_ref().map(|_| output.join("best"));
            let mut hooks = (
                RunHooks {
                    observer: &mut *observer,
                    hf: self.hf,
                    labels: labels.clone(),
                    best_dir: best_dir.clone(),
                    stop_after: self.options.stop_after,
                },
                checkpointer,
            );
            let started = Instant::now();
            let evaluate = |m: &M::InnerModule, c: &TokenCache| evaluate_on(m, c, &self.device);
            let valid = caches.valid.as_ref();
            let summary = fit_on(
                &mut trainer,
                state,
                &fit,
                &mut data,
                valid,
                &evaluate,
                &mut hooks,
            );
            observer.finish();
            let summary = summary?;
            trainer.finish_grad_sync()?;
            let train_seconds = started.elapsed().as_secs_f64();
            let final_dir = output.join("final");
            let model = trainer.into_model();
            export(&model, self.hf, &labels, &final_dir)?;
            let inner = model.valid();
            let mut finally = |cache: Option<&TokenCache>, name: &str| {
                let metrics = cache
                    .map(|c| evaluate_on(&inner, c, &self.device))
                    .transpose()?;
                if let Some(m) = &metrics {
                    observer.line(&format!("{name}: {}", format_metrics(m)));
                }
                Ok::<_, TaskError>(metrics)
            };
            let after = finally(caches.valid.as_ref(), "after training")?;
            let test = finally(caches.test.as_ref(), "test")?;
            let outcome = RunOutcome {
                output_dir: output.clone(),
                final_dir,
                best_dir: best_dir.filter(|d| d.is_dir()),
                summary,
                before: before.clone(),
                after,
                test,
                train_examples: caches.train.len(),
                train_seconds,
                node_rank: 0,
            };
            write_results(&outcome, &config.metric_for_best())?;
            Ok(outcome)
        };
        let first = || match main_node {
            true => lead(trainer),
            // Node > 0 writes nothing: its outcome has the loop's summary only.
            false => {
                let started = Instant::now();
                let data = train_data(&self.device)?;
                let device = &self.device;
                let summary =
                    follower.run(0, device, trainer, data, &|m, c| evaluate_on(m, c, device))?;
                Ok(RunOutcome {
                    output_dir: output.clone(),
                    final_dir: output.join("final"),
                    best_dir: None,
                    summary,
                    before: None,
                    after: None,
                    test: None,
                    train_examples: caches.train.len(),
                    train_seconds: started.elapsed().as_secs_f64(),
                    node_rank: topology.node_rank,
                })
            }
        };
        if self.topology.is_none() {
            return first();
        }
        let rank_of = |local| topology.rank_of(local);
        let (outcome, _) = run_workers(self.devices.len(), &abort, rank_of, first, follow)?;
        Ok(outcome)
    }
}

/// Registers this node's worker `local` in the data-parallel group.
fn register<B: AutodiffBackend>(
    topology: &Topology,
    local: usize,
    device: &B::Device,
    abort: &Abort,
) -> Result<CollectiveSync<B::InnerBackend>, TaskError> {
    Ok(CollectiveSync::<B::InnerBackend>::register(
        topology,
        local,
        device.clone(),
        abort.clone(),
    )?)
}

/// What a data-parallel worker other than global rank 0 needs: it trains in step with the
/// others but logs and saves nothing. It evaluates only when early stopping needs the
/// metrics (every worker then decides the same stop); otherwise the best metric is rank
/// 0's business alone.
struct Follower<'a> {
    fit: &'a FitConfig,
    topology: &'a Topology,
    abort: &'a Abort,
    resumed: Option<&'a Resumed>,
    valid: Option<&'a TokenCache>,
    stop_after: Option<u64>,
}

/// Evaluates an inner model on a cache.
type EvalOn<'e, M> = dyn Fn(&M, &TokenCache) -> Result<BTreeMap<String, f64>, TaskError> + 'e;

impl Follower<'_> {
    fn run<B, M>(
        &self,
        local: usize,
        device: &B::Device,
        trainer: Trainer<B, M>,
        data: CacheData<'_, B>,
        evaluate_on: &EvalOn<'_, M::InnerModule>,
    ) -> Result<FitSummary, TaskError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + TaskModel<B>,
    {
        let sync = register::<B>(self.topology, local, device, self.abort)?;
        let rank = self.topology.rank_of(local);
        let mut trainer = trainer.with_grad_sync(sync);
        let state = match self.resumed {
            Some(r) => r.restore(&mut trainer)?,
            None => FitState::default(),
        };
        let mut data = data.shard(rank, self.topology.world_size())?;
        let mut fit = self.fit.clone();
        fit.output_dir = None;
        let evaluates = fit.early_stopping.is_some();
        if !evaluates {
            fit.best_metric = None;
        }
        let valid = self.valid.filter(|_| evaluates);
        let mut hooks = StopAfter(self.stop_after);
        let summary = fit_on(
            &mut trainer,
            state,
            &fit,
            &mut data,
            valid,
            evaluate_on,
            &mut hooks,
        )?;
        trainer.finish_grad_sync()?;
        Ok(summary)
    }
}

/// The loop of a task model over the cache, evaluating on `valid` when there is one.
fn fit_on<B, M, H>(
    trainer: &mut Trainer<B, M>,
    state: FitState,
    fit: &FitConfig,
    data: &mut CacheData<'_, B>,
    valid: Option<&TokenCache>,
    evaluate_on: &EvalOn<'_, M::InnerModule>,
    hooks: &mut H,
) -> Result<FitSummary, burnish_trainer::TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + TaskModel<B>,
    H: Hooks<B, M>,
{
    trainer.fit_from(
        state,
        fit,
        data,
        |m: &M, b: &DeviceBatch<B>| m.step_loss(b),
        |m: &M::InnerModule| match valid {
            Some(cache) => evaluate_on(m, cache).map_err(|e| Box::new(e) as BoxError),
            None => Ok(BTreeMap::new()),
        },
        hooks,
    )
}

/// The preemption stop alone: a follower's hooks.
struct StopAfter(Option<u64>);

impl<B: AutodiffBackend, M: AutodiffModule<B>, O> Hooks<B, M, O> for StopAfter {
    fn on_step_end(
        &mut self,
        _: &mut Trainer<B, M, O>,
        _: &FitState,
        report: &StepReport,
    ) -> Result<Control, BoxError> {
        Ok(match self.0 == Some(report.step) {
            true => Control::STOP,
            false => Control::CONTINUE,
        })
    }
}

/// `results.json`: how the run ended and its metrics before, after and on the test set.
fn write_results(outcome: &RunOutcome, metric: &str) -> Result<(), TaskError> {
    let s = &outcome.summary;
    let results = json!({
        "steps": s.steps, "stopped_by": s.stopped_by, "train_examples": outcome.train_examples,
        "train_seconds": outcome.train_seconds, "best": s.best, "metric_for_best": metric,
        "validation_before": outcome.before, "validation_after": outcome.after, "test": outcome.test,
    });
    let path = outcome.output_dir.join("results.json");
    let text = serde_json::to_string_pretty(&results).unwrap_or_default();
    std::fs::write(&path, text).map_err(TaskError::io(&path))
}

/// Exports `model` as a Hugging Face directory `dir` (atomically replaced).
///
/// # Errors
/// [`TaskError::Load`] naming the file.
pub fn export<B: burn::tensor::backend::Backend, M: TaskModel<B>>(
    model: &M,
    hf: &HfModelDir,
    labels: &LabelNames,
    dir: &Path,
) -> Result<(), TaskError> {
    let config = model.export_config(hf.config_json(), labels);
    export_dir(dir, model, hf.naming(), &config, Some(hf.path()))?;
    Ok(())
}

/// The run's own hooks: the observer, `best/` exported at each new best, and the
/// preemption stop.
struct RunHooks<'a> {
    observer: &'a mut dyn RunObserver,
    hf: &'a HfModelDir,
    labels: LabelNames,
    best_dir: Option<PathBuf>,
    stop_after: Option<u64>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + TaskModel<B>, O> Hooks<B, M, O> for RunHooks<'_> {
    fn on_step_end(
        &mut self,
        _: &mut Trainer<B, M, O>,
        _: &FitState,
        report: &StepReport,
    ) -> Result<Control, BoxError> {
        self.observer.step(report);
        Ok(if self.stop_after == Some(report.step) {
            Control::STOP
        } else {
            Control::CONTINUE
        })
    }

    fn on_evaluate(
        &mut self,
        trainer: &Trainer<B, M, O>,
        _: &FitState,
        event: &EvalEvent,
    ) -> Result<Control, BoxError> {
        if event.is_best
            && let Some(dir) = &self.best_dir
        {
            export(trainer.model(), self.hf, &self.labels, dir)?;
        }
        Ok(Control::CONTINUE)
    }

    fn on_log(&mut self, event: &Value) {
        self.observer.event(event);
    }
}

/// `name value, ...` with four decimals.
pub fn format_metrics(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}
