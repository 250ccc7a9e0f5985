//! Real token classification, shortened for CI: all-MiniLM-L6-v2 with a new per-token head on
//! wnut16 (../shared/data), BIO tags aligned to first sub-words, entity F1 (seqeval) before
//! and after.
// Helpers outside #[test] functions unwrap too: a broken fixture should fail loudly.
#![allow(clippy::unwrap_used)]

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn_ndarray::NdArray;
use burnish_data::{BadRows, TaggingBatch, epoch_order, read_tagging, tagging_batch};
use burnish_heads::BertForTokenClassification;
use burnish_schedule::Warmup;
use burnish_tests::{id_tensors, load_backbone, minilm, shared_dir};
use burnish_trainer::metrics::entity_scores;
use burnish_trainer::{Trainer, TrainerConfig};

type B = Autodiff<NdArray>;

/// Entity F1 with predictions read at each word's first sub-word (labels ≠ −100).
fn entity_f1(
    model: &BertForTokenClassification<NdArray>,
    batches: &[TaggingBatch],
    tags: &[String],
) -> f64 {
    let (mut predicted, mut gold) = (Vec::new(), Vec::new());
    for b in batches {
        let (ids, mask) = id_tensors::<NdArray>(&b.encoded);
        let [rows, seq] = b.encoded.shape;
        let pred: Vec<i64> = model
            .forward(ids, Some(mask), None)
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        for r in 0..rows {
            let (mut p, mut g) = (Vec::new(), Vec::new());
            for t in 0..seq {
                let label = b.labels[r * seq + t];
                if label >= 0 {
                    g.push(tags[label as usize].as_str());
                    p.push(tags[pred[r * seq + t] as usize].as_str());
                }
            }
            predicted.push(p);
            gold.push(g);
        }
    }
    entity_scores(&predicted, &gold).f1
}

#[test]
fn minilm_learns_wnut16_entities() {
    let Some((hf, tokenizer, config)) = minilm(64, "wnut16") else {
        return;
    };
    let data_dir = shared_dir().join("data/wnut16");
    let kinds = [
        "company",
        "facility",
        "geo-loc",
        "movie",
        "musicartist",
        "other",
        "person",
        "product",
        "sportsteam",
        "tvshow",
    ];
    let tags: Vec<String> = std::iter::once("O".to_owned())
        .chain(
            kinds
                .iter()
                .flat_map(|k| [format!("B-{k}"), format!("I-{k}")]),
        )
        .collect();
    let device = Default::default();
    burnish_models::random::seed_thread(7);
    let head = BertForTokenClassification::<B>::new(
        config.init(false, &device).unwrap(),
        &config,
        tags.len(),
        &device,
    )
    .unwrap();
    let (head, _) = load_backbone(head, &hf);

    let train = read_tagging(&data_dir.join("train.jsonl"), &tags, BadRows::Fail).unwrap();
    let valid = read_tagging(&data_dir.join("validation.jsonl"), &tags, BadRows::Fail).unwrap();
    // Validation sentences that have entities, so F1 measures something.
    let with_entities: Vec<usize> = (0..valid.examples.len())
        .filter(|&i| valid.examples[i].tags.iter().any(|&t| t != 0))
        .take(96)
        .collect();
    let valid_batches: Vec<TaggingBatch> = with_entities
        .chunks(32)
        .map(|c| tagging_batch(&tokenizer, &valid.examples, c).unwrap())
        .collect();
    // Train on sentences with entities too: the CI run is short.
    let pool: Vec<usize> = (0..train.examples.len())
        .filter(|&i| train.examples[i].tags.iter().any(|&t| t != 0))
        .collect();
    let order: Vec<usize> = epoch_order(pool.len(), 7, 0, true)
        .into_iter()
        .map(|i| pool[i])
        .collect();

    let (steps, batch) = (40usize, 16usize);
    let config = TrainerConfig {
        lr: 3e-4,
        total_steps: steps as u64,
        warmup: Warmup::Ratio(0.1),
        ..Default::default()
    };
    let f1_before = entity_f1(&head.valid(), &valid_batches, &tags);
    let mut trainer = Trainer::new(head, config).unwrap();
    let loss = |m: &BertForTokenClassification<B>, b: &TaggingBatch| {
        let (ids, mask) = id_tensors::<B>(&b.encoded);
        m.loss(m.forward(ids, Some(mask), None), &b.labels)
    };
    let mut first = None;
    let mut last = 0.0;
    for step in 0..steps {
        let b = tagging_batch(
            &tokenizer,
            &train.examples,
            &order[step * batch..(step + 1) * batch],
        )
        .unwrap();
        let report = trainer.step(&[b], loss).unwrap();
        first.get_or_insert(report.loss);
        last = report.loss;
    }
    let f1_after = entity_f1(&trainer.model().valid(), &valid_batches, &tags);
    eprintln!(
        "wnut16, {steps} steps x {batch}: train loss {:.3} -> {last:.3}, entity F1 {f1_before:.3} -> {f1_after:.3}",
        first.unwrap_or(0.0)
    );
    assert!(
        last < first.unwrap_or(0.0) / 2.0,
        "training loss did not fall"
    );
    assert!(
        f1_after > f1_before + 0.05,
        "entity F1 {f1_before} -> {f1_after}"
    );
}
