//! A custom trainer composed from the library alone: a pretrained BERT (the toy one in
//! `tests/assets`) under a head of this file's own design, a loss of its own, a hook that
//! unfreezes the embeddings after a few steps, burnish's `Trainer` with checkpoints, and an
//! exact resume.
//!
//! It trains once without interruption, then again stopping half way (saving a
//! checkpoint), resumes from that checkpoint in a fresh `Trainer` and finishes. The last
//! line says whether the resumed run's final weights are byte-identical to the
//! uninterrupted run's; the exit status is 1 when they are not.
//!
//! ```sh
//! cargo run --release -p burnish --example custom_trainer
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burnish::backend::CpuTrain;
use burnish::data::{BadRows, Task, TokenCache};
use burnish::heads::{LabelNames, LossParts, cross_entropy};
use burnish::loader::{HfModelDir, write_module};
use burnish::models::BertModel;
use burnish::models::random::{self, Dropout};
use burnish::schedule::Warmup;
use burnish::tasks::{
    CacheData, Checkpointer, ClassificationMetrics, DeviceBatch, Resumed, RunFingerprint,
    TaskError, TaskModel, TaskSetup, encoder_config, evaluate, load_pretrained,
};
use burnish::trainer::{
    BoxError, Control, FitConfig, FitState, Hooks, StepLoss, StepReport, Trainer, TrainerConfig,
};

type B = CpuTrain;

/// The model: the pretrained encoder, mean pooling over real tokens, dropout, a linear
/// layer. Not a transformers architecture; burnish trains it all the same.
#[derive(Module, Debug)]
struct MeanPoolClassifier<B: Backend> {
    bert: BertModel<B>,
    dropout: Dropout,
    head: Linear<B>,
}

impl<B: Backend> MeanPoolClassifier<B> {
    /// Mean of the last hidden states over the attention mask, `[batch, hidden]`.
    fn pooled(&self, batch: &DeviceBatch<B>) -> Tensor<B, 2> {
        let out = self.bert.forward(
            batch.input_ids.clone(),
            Some(batch.attention_mask.clone()),
            None,
        );
        let mask = batch.attention_mask.clone().float().unsqueeze_dim::<3>(2);
        let summed = (out.last_hidden_state * mask.clone())
            .sum_dim(1)
            .squeeze_dim(1);
        summed / mask.sum_dim(1).squeeze_dim(1)
    }
}

impl<B: Backend> TaskModel<B> for MeanPoolClassifier<B> {
    fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
        let pooled = self.dropout.forward(self.pooled(batch));
        self.head.forward(pooled).unsqueeze_dim(1)
    }

    /// Cross-entropy with label smoothing 0.1 (as `nn.CrossEntropyLoss(label_smoothing=0.1)`:
    /// 0.9 of the usual loss plus 0.1 of the mean negative log-probability of all classes).
    fn loss(
        &self,
        logits: Tensor<B, 3>,
        batch: &DeviceBatch<B>,
    ) -> Result<LossParts<B>, TaskError> {
        let [b, _, k] = logits.dims();
        let logits = logits.reshape([b, k]);
        let hard = cross_entropy(logits.clone(), &batch.labels)?;
        let log_probs = burn::tensor::activation::log_softmax(logits, 1);
        let uniform = log_probs.sum().neg().div_scalar(k as f64).reshape([1]);
        Ok(LossParts {
            sum: hard.sum.mul_scalar(0.9) + uniform.mul_scalar(0.1),
            count: hard.count,
        })
    }

    /// The loss, plus the batch's correct predictions as a training metric.
    fn step_loss(&self, batch: &DeviceBatch<B>) -> Result<StepLoss<B>, TaskError> {
        let logits = self.logits(batch);
        let predicted = logits.clone().argmax(2).flatten::<1>(0, 2);
        let gold = Tensor::<B, 1, Int>::from_data(
            burn::tensor::TensorData::new(batch.labels.clone(), [batch.labels.len()]),
            &predicted.device(),
        );
        let correct: f64 = predicted.equal(gold).int().sum().into_scalar().elem();
        Ok(StepLoss::from(self.loss(logits, batch)?).with_metric("train_accuracy", correct))
    }
}

/// Sets `require_grad` on every parameter it maps.
struct RequireGrad(bool);

impl<B: Backend> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(self.0)
    }
}

/// Gradual unfreezing: the embeddings stay frozen for the first `after` steps. The choice
/// depends on the step alone, so a resumed run freezes exactly as the original did.
struct UnfreezeEmbeddings {
    after: u64,
    applied: Option<bool>,
}

impl<O> Hooks<B, MeanPoolClassifier<B>, O> for UnfreezeEmbeddings {
    fn on_step_begin(
        &mut self,
        trainer: &mut Trainer<B, MeanPoolClassifier<B>, O>,
        _: &FitState,
    ) -> Result<Control, BoxError> {
        let trainable = trainer.steps_done() >= self.after;
        if self.applied != Some(trainable) {
            trainer.map_model(|mut m| {
                m.bert.embeddings = m.bert.embeddings.map(&mut RequireGrad(trainable));
                m
            });
            self.applied = Some(trainable);
        }
        Ok(Control::CONTINUE)
    }
}

/// Stops the run after `step`, saving a checkpoint first (a preemption).
struct StopAt(u64);

impl<O> Hooks<B, MeanPoolClassifier<B>, O> for StopAt {
    fn on_step_end(
        &mut self,
        _: &mut Trainer<B, MeanPoolClassifier<B>, O>,
        _: &FitState,
        report: &StepReport,
    ) -> Result<Control, BoxError> {
        Ok(if report.step == self.0 {
            Control::SAVE | Control::STOP
        } else {
            Control::CONTINUE
        })
    }
}

/// Everything a run needs, built the same way for every run.
struct Setup {
    hf: HfModelDir,
    task: TaskSetup,
    cache: TokenCache,
    valid: TokenCache,
}

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets")
}

fn setup(scratch: &Path) -> Result<Setup, BoxError> {
    let hf = HfModelDir::open(&assets().join("toy-bert"))?;
    let labels = vec!["negative".to_owned(), "positive".to_owned()];
    let task = TaskSetup::new(&hf, Task::SequenceClassification, 16, labels)?;
    let data = assets().join("data/toy-sentiment");
    let open = |file: &str| {
        TokenCache::open_or_build(
            &data.join(file),
            &task.encoder(true),
            BadRows::Fail,
            scratch,
        )
        .map(|(cache, _)| cache)
    };
    let (cache, valid) = (open("train.jsonl")?, open("validation.jsonl")?);
    Ok(Setup {
        hf,
        task,
        cache,
        valid,
    })
}

/// The pretrained encoder (dropout 0.1) under a new head initialized N(0, 0.02).
fn model<M: Backend>(s: &Setup, device: &M::Device) -> Result<MeanPoolClassifier<M>, BoxError> {
    let config = encoder_config(&s.hf, Some(0.1))?;
    // burnish's dropout and new layers draw from this thread's generator, which `run` seeds.
    let model = MeanPoolClassifier {
        bert: config.init(false, device)?,
        dropout: Dropout::new(0.1),
        head: random::linear(config.hidden_size, 2, true, 0.02, device),
    };
    Ok(load_pretrained(&s.hf, model, &["head"])?.0)
}

const EPOCHS: usize = 4;
const BATCH: usize = 8;

/// Trains from the start (or from `resume`), stopping after `stop_at` when given; returns
/// the final model's weights as safetensors bytes.
fn run(
    s: &Setup,
    out: &Path,
    stop_at: Option<u64>,
    resume: Option<&Resumed>,
) -> Result<(Vec<u8>, u64), BoxError> {
    let device = Default::default();
    burnish::models::random::seed_thread(7);
    let pad = s.task.tokenizer.pad_id();
    let mut data = CacheData::<B>::new(&s.cache, BATCH, pad, 7, true, &device)?;
    let fit = FitConfig {
        epochs: EPOCHS,
        grad_accum: 2,
        log_every: 1,
        best_metric: Some(burnish::trainer::BestMetric::named("accuracy")),
        output_dir: Some(out.to_owned()),
        ..FitConfig::default()
    };
    let plan = fit.plan(data.batches_per_epoch())?;
    let config = TrainerConfig {
        lr: 2e-3,
        warmup: Warmup::Ratio(0.2),
        total_steps: plan.total_steps,
        seed: 7,
        ..TrainerConfig::default()
    };
    let fingerprint = RunFingerprint::new(serde_json::json!({
        "train": serde_json::to_value(&config)?, "fit": serde_json::to_value(&fit)?,
    }))
    .ignoring(&["fit.output_dir"]);
    let data_print = s.cache.meta().fingerprint.clone();
    let labels = LabelNames(s.task.labels.clone());
    let mut checkpointer = Checkpointer::new(out, &s.hf, labels, fingerprint.clone(), &data_print);
    let mut model = model::<B>(s, &device)?;
    if let Some(r) = resume {
        r.check(&fingerprint, &data_print)?;
        model = r.load_model(model, s.hf.naming())?;
        checkpointer = checkpointer.continuing(r);
    }
    let mut trainer = Trainer::new(model, config)?;
    let state = match resume {
        Some(r) => r.restore(&mut trainer)?,
        None => FitState::default(),
    };
    let unfreeze = UnfreezeEmbeddings {
        after: 4,
        applied: None,
    };
    let mut hooks = (
        (unfreeze, StopAt(stop_at.unwrap_or(u64::MAX))),
        checkpointer,
    );
    let evaluate_valid = |m: &MeanPoolClassifier<<B as AutodiffBackend>::InnerBackend>| {
        let mut metrics = ClassificationMetrics::new(2);
        evaluate(m, &s.valid, pad, 32, &mut metrics, &device).map_err(BoxError::from)
    };
    let summary = trainer.fit_from(
        state,
        &fit,
        &mut data,
        |m: &MeanPoolClassifier<B>, b: &DeviceBatch<B>| m.step_loss(b),
        evaluate_valid,
        &mut hooks,
    )?;
    let mut bytes = Vec::new();
    write_module(&trainer.into_model().valid(), s.hf.naming(), &mut bytes)?;
    Ok((bytes, summary.steps))
}

fn main() -> ExitCode {
    match compare() {
        Ok(true) => {
            println!("resumed run identical: true");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("resumed run identical: false");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            println!("resumed run identical: false");
            ExitCode::FAILURE
        }
    }
}

fn compare() -> Result<bool, BoxError> {
    let scratch = tempfile_dir()?;
    let s = setup(&scratch.join("cache"))?;
    let (reference, total) = run(&s, &scratch.join("uninterrupted"), None, None)?;
    println!("uninterrupted: {total} steps");
    let half = total / 2;
    let out = scratch.join("interrupted");
    let (_, stopped) = run(&s, &out, Some(half), None)?;
    let resumed = Resumed::open(&out.join(format!("checkpoint-{half}")))?;
    println!(
        "stopped after step {stopped}; resuming from {}",
        resumed.checkpoint.dir().display()
    );
    let (finished, steps) = run(&s, &out, None, Some(&resumed))?;
    println!("resumed run: {steps} steps");
    std::fs::remove_dir_all(&scratch)?;
    Ok(finished == reference)
}

/// A fresh scratch directory under the system's temporary directory.
fn tempfile_dir() -> Result<PathBuf, BoxError> {
    let dir = std::env::temp_dir().join(format!("burnish-custom-trainer-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
