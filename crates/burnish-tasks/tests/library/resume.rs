//! Checkpoint and resume as a library feature, in process: a run stopped at step k and
//! resumed from its checkpoint in a fresh `Trainer` ends with weights byte-identical to the
//! uninterrupted run, with accumulation, clipping, warmup, dropout, shuffling and fp16 loss
//! scaling in play (on burn-flex, which has f16); a checkpoint of another configuration or
//! other data is refused with a typed error.

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burnish_amp::Precision;
use burnish_data::{BadRows, Task, TokenCache};
use burnish_heads::{BertForSequenceClassification, LabelNames, ProblemType};
use burnish_loader::{HfModelDir, write_module};
use burnish_schedule::Warmup;
use burnish_tasks::{
    CacheData, Checkpointer, DeviceBatch, Resumed, RunFingerprint, TaskError, TaskModel, TaskSetup,
    encoder_config, load_pretrained, with_precision,
};
use burnish_trainer::{
    BoxError, Control, FitConfig, FitState, Hooks, StepReport, Trainer, TrainerConfig,
};

type B = Autodiff<burn_flex::Flex<f32, i32>>;
type Model = BertForSequenceClassification<B>;

use super::assets;

/// Saves and stops after step `.0`; counts the fp16 steps skipped on overflow.
struct StopAt(u64, u64);

impl<O> Hooks<B, Model, O> for StopAt {
    fn on_step_end(
        &mut self,
        _: &mut Trainer<B, Model, O>,
        _: &FitState,
        report: &StepReport,
    ) -> Result<Control, BoxError> {
        self.1 += u64::from(report.skipped);
        Ok(if report.step == self.0 {
            Control::SAVE | Control::STOP
        } else {
            Control::CONTINUE
        })
    }
}

#[derive(Debug)]
struct Run {
    weights: Vec<u8>,
    steps: u64,
    skipped: u64,
}

/// The toy sentiment classifier trained in fp16 on toy-bert; `lr` varies the config.
fn run(
    cache: &TokenCache,
    out: &Path,
    lr: f64,
    stop_at: Option<u64>,
    resume: Option<&Resumed>,
) -> Result<Run, TaskError> {
    let device = Default::default();
    burnish_models::random::seed_thread(3);
    let hf = HfModelDir::open(&assets().join("toy-bert"))?;
    let config = encoder_config(&hf, Some(0.1))?;
    let single = ProblemType::SingleLabelClassification;
    let model = config
        .init::<B>(true, &device)
        .and_then(|b| Model::new(b, &config, 2, single, &device))
        .unwrap();
    let (model, _) = load_pretrained(&hf, model, &["classifier"])?;
    let mut model = with_precision(model, Precision::Fp16, &device)?;
    let mut data = CacheData::<B>::new(cache, 8, 0, 5, true, &device)?;
    let fit = FitConfig {
        epochs: 2,
        grad_accum: 3,
        output_dir: Some(out.to_owned()),
        ..FitConfig::default()
    };
    let plan = fit.plan(data.batches_per_epoch())?;
    let trainer_config = TrainerConfig {
        lr,
        warmup: Warmup::Steps(2),
        total_steps: plan.total_steps,
        max_grad_norm: Some(0.5),
        precision: Precision::Fp16,
        seed: 11,
        ..TrainerConfig::default()
    };
    let run = RunFingerprint::new(serde_json::json!({"train": trainer_config}));
    let print = cache.meta().content.clone();
    let labels = LabelNames::generic(2);
    let mut saver = Checkpointer::new(out, &hf, labels, run.clone(), &print).keep_last(Some(1));
    if let Some(r) = resume {
        r.check(&run, &print)?;
        model = r.load_model(model, hf.naming())?;
        saver = saver.continuing(r);
    }
    let mut trainer = Trainer::new(model, trainer_config)?;
    let state = match resume {
        Some(r) => r.restore(&mut trainer)?,
        None => FitState::default(),
    };
    let mut hooks = (StopAt(stop_at.unwrap_or(u64::MAX), 0), saver);
    let loss = |m: &Model, b: &DeviceBatch<B>| m.step_loss(b);
    let none = |_: &_| Ok(BTreeMap::new());
    let summary = trainer.fit_from(state, &fit, &mut data, loss, none, &mut hooks)?;
    let mut weights = Vec::new();
    write_module(&trainer.into_model().valid(), hf.naming(), &mut weights).unwrap();
    Ok(Run {
        weights,
        steps: summary.steps,
        skipped: hooks.0.1,
    })
}

#[test]
fn a_run_resumed_in_a_fresh_trainer_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let hf = HfModelDir::open(&assets().join("toy-bert")).unwrap();
    let labels = vec!["negative".to_owned(), "positive".to_owned()];
    let setup = TaskSetup::new(&hf, Task::SequenceClassification, 16, labels).unwrap();
    let train = assets().join("data/toy-sentiment/train.jsonl");
    let (cache, _) =
        TokenCache::open_or_build(&train, &setup.encoder(true), BadRows::Fail, dir.path()).unwrap();

    let reference = run(&cache, &dir.path().join("a"), 2e-3, None, None).unwrap();
    assert!(reference.steps >= 8, "{} steps", reference.steps);
    assert!(
        reference.skipped > 0,
        "fp16 loss scaling skipped no step: the test would not exercise it"
    );
    let k = reference.steps / 2 + 1;
    let out = dir.path().join("b");
    let stopped = run(&cache, &out, 2e-3, Some(k), None).unwrap();
    assert_eq!(stopped.steps, k);
    assert_ne!(stopped.weights, reference.weights);

    let resumed = Resumed::latest(&out, &mut |_| {}).unwrap().unwrap();
    assert_eq!(resumed.step(), k);
    assert!(
        resumed.state.trainer.scaler.is_some(),
        "the loss scaler is saved"
    );
    let finished = run(&cache, &out, 2e-3, None, Some(&resumed)).unwrap();
    assert_eq!(finished.steps, reference.steps);
    assert!(
        finished.weights == reference.weights,
        "the resumed run's final weights differ from the uninterrupted run's"
    );

    // Another configuration is refused, naming the key.
    let err = run(&cache, &out, 1e-3, None, Some(&resumed)).unwrap_err();
    assert!(
        matches!(&err, TaskError::Inconsistent { detail, .. } if detail.contains("[train] lr")),
        "{err}"
    );
    // So is other data.
    let other = RunFingerprint::new(serde_json::json!({}));
    let err = resumed.check(&other, "another fingerprint").unwrap_err();
    assert!(matches!(err, TaskError::Inconsistent { .. }), "{err}");
}

#[test]
fn a_model_without_half_precision_compute_is_refused() {
    use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
    use burn::tensor::Tensor;

    #[derive(burn::module::Module, Debug)]
    struct Plain<B: burn::tensor::backend::Backend> {
        embedding: Embedding<B>,
        out: Linear<B>,
    }

    impl<B: burn::tensor::backend::Backend> TaskModel<B> for Plain<B> {
        fn logits(&self, batch: &DeviceBatch<B>) -> Tensor<B, 3> {
            self.out
                .forward(self.embedding.forward(batch.input_ids.clone()).mean_dim(1))
        }

        fn loss(
            &self,
            logits: Tensor<B, 3>,
            batch: &DeviceBatch<B>,
        ) -> Result<burnish_heads::LossParts<B>, burnish_tasks::TaskError> {
            let [b, _, k] = logits.dims();
            Ok(burnish_heads::cross_entropy(
                logits.reshape([b, k]),
                &batch.labels,
            )?)
        }
    }

    let device = Default::default();
    let model = Plain::<B> {
        embedding: EmbeddingConfig::new(10, 4).init(&device),
        out: LinearConfig::new(4, 2).init(&device),
    };
    let err = with_precision(model, Precision::Bf16, &device).unwrap_err();
    assert!(matches!(err, TaskError::NoAutocast { .. }), "{err}");
    assert!(err.to_string().contains("Plain"), "{err}");
}
