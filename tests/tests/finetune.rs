//! Real fine-tuning, shortened for CI: all-MiniLM-L6-v2 with a new classification head on
//! rotten_tomatoes (../shared/data). Every parameter trains; dropout is on in training and
//! off in evaluation. Validation loss must fall and accuracy must pass 60%.
// Helpers outside #[test] functions unwrap too: a broken fixture should fail loudly.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use burn_ndarray::NdArray;
use burnish_data::{
    BadRows, ClassificationBatch, classification_batch, epoch_order, read_classification,
};
use burnish_heads::{BertForSequenceClassification, LabelNames, ProblemType, SequenceLabels};
use burnish_loader::{HfModelDir, LoadOptions, export_dir, load_module};
use burnish_models::ModelConfig;
use burnish_schedule::Warmup;
use burnish_tests::{id_tensors, load_backbone, minilm, shared_dir};
use burnish_trainer::metrics::accuracy;
use burnish_trainer::{Trainer, TrainerConfig};

type B = Autodiff<NdArray>;

/// Mean loss and accuracy with dropout off (the inner, non-autodiff model).
fn evaluate(
    model: &BertForSequenceClassification<NdArray>,
    batches: &[ClassificationBatch],
) -> (f64, f64) {
    let (mut loss, mut items, mut preds, mut labels) = (0.0, 0, Vec::new(), Vec::new());
    for b in batches {
        let (ids, mask) = id_tensors::<NdArray>(&b.encoded);
        let logits = model.forward(ids, Some(mask), None);
        let parts = model
            .loss(logits.clone(), &SequenceLabels::Classes(b.labels.clone()))
            .unwrap();
        loss += parts.sum.into_scalar().elem::<f64>();
        items += parts.count;
        preds.extend(
            logits
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap(),
        );
        labels.extend(&b.labels);
    }
    (loss / items as f64, accuracy(&preds, &labels))
}

#[test]
fn minilm_learns_rotten_tomatoes() {
    let Some((hf, tokenizer, config)) = minilm(64, "rotten_tomatoes") else {
        return;
    };
    let data_dir = shared_dir().join("data/rotten_tomatoes");
    let model_dir = hf.path().to_owned();
    let device = Default::default();
    // Head initialization and dropout draw from this thread's generator: seed it for a
    // reproducible run.
    burnish_models::random::seed_thread(42);
    let head = BertForSequenceClassification::<B>::new(
        config.init(true, &device).unwrap(),
        &config,
        2,
        ProblemType::SingleLabelClassification,
        &device,
    )
    .unwrap();
    let (head, report) = load_backbone(head, &hf);
    assert_eq!(report.missing, ["classifier.weight", "classifier.bias"]);

    let train = read_classification(&data_dir.join("train.jsonl"), None, BadRows::Fail).unwrap();
    let valid =
        read_classification(&data_dir.join("validation.jsonl"), None, BadRows::Fail).unwrap();
    let valid_batches: Vec<ClassificationBatch> = (0..4)
        .map(|i| {
            classification_batch(
                &tokenizer,
                &valid.examples,
                &(i * 50..(i + 1) * 50).collect::<Vec<_>>(),
            )
            .unwrap()
        })
        .collect();

    let (steps, batch) = (40usize, 16usize);
    let config = TrainerConfig {
        lr: 3e-4,
        weight_decay: 0.01,
        total_steps: steps as u64,
        warmup: Warmup::Ratio(0.1),
        ..Default::default()
    };
    let (loss_before, acc_before) = evaluate(&head.valid(), &valid_batches);
    let mut trainer = Trainer::new(head, config).unwrap();
    let order = epoch_order(train.examples.len(), 42, 0, true);
    let start = Instant::now();
    for step in 0..steps {
        let b = classification_batch(
            &tokenizer,
            &train.examples,
            &order[step * batch..(step + 1) * batch],
        )
        .unwrap();
        trainer
            .step(
                &[b],
                |m: &BertForSequenceClassification<B>, b: &ClassificationBatch| {
                    let (ids, mask) = id_tensors::<B>(&b.encoded);
                    m.loss(
                        m.forward(ids, Some(mask), None),
                        &SequenceLabels::Classes(b.labels.clone()),
                    )
                    .unwrap()
                },
            )
            .unwrap();
    }
    let elapsed = start.elapsed();
    let (loss_after, acc_after) = evaluate(&trainer.model().valid(), &valid_batches);
    eprintln!(
        "rotten_tomatoes, {steps} steps x {batch}: validation loss {loss_before:.4} -> {loss_after:.4}, \
         accuracy {acc_before:.3} -> {acc_after:.3}, {:.1} samples/s",
        (steps * batch) as f64 / elapsed.as_secs_f64()
    );
    assert!(loss_after < loss_before, "validation loss did not fall");
    assert!(acc_after > 0.6, "accuracy {acc_after}");

    // Export as a BertForSequenceClassification directory and load it back.
    let out = std::env::var_os("BURNISH_EXPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("burnish-rt-{}", std::process::id())));
    let model = trainer.into_model();
    let labels = LabelNames(vec!["negative".into(), "positive".into()]);
    let config_json = model.export_config(hf.config_json(), &labels);
    export_dir(&out, &model, hf.naming(), &config_json, Some(&model_dir)).unwrap();
    let back = HfModelDir::open(&out).unwrap();
    assert_eq!(
        back.config_json()["architectures"][0],
        "BertForSequenceClassification"
    );
    assert_eq!(back.config_json()["id2label"]["1"], "positive");
    let ModelConfig::Bert(config) = back.config().clone() else {
        panic!("not BERT")
    };
    let reloaded = BertForSequenceClassification::<NdArray>::new(
        config.init(true, &Default::default()).unwrap(),
        &config,
        2,
        ProblemType::SingleLabelClassification,
        &Default::default(),
    )
    .unwrap();
    let (reloaded, report) = load_module(
        reloaded,
        &back.weights().unwrap(),
        back.naming(),
        &LoadOptions::default(),
        back.path(),
    )
    .unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!(evaluate(&reloaded, &valid_batches), (loss_after, acc_after));
    if std::env::var_os("BURNISH_EXPORT_DIR").is_none() {
        std::fs::remove_dir_all(&out).ok();
    }
}
