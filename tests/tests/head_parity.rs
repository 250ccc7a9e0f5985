//! Task heads loaded from checkpoints that already have them (BERT and RoBERTa, sequence
//! and token classification) give transformers' logits; fixtures by
//! `tests/reference/generate_heads.py`.
#![allow(clippy::unwrap_used)]

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_heads::{
    BertForSequenceClassification, BertForTokenClassification, ProblemType,
    RobertaForSequenceClassification, RobertaForTokenClassification,
};
use burnish_loader::{HfModelDir, LoadOptions, LoadReport, load_module};
use burnish_models::{BertConfig, ModelConfig};
use burnish_tests::TestBackend;
use burnish_tests::fixture;
use serde::Deserialize;

type B = TestBackend;

#[derive(Deserialize)]
struct Case {
    name: String,
    shape: [usize; 2],
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    logits: Vec<f32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn load<M: Module<B>>(hf: &HfModelDir, model: M) -> M {
    let (model, report): (M, LoadReport) = load_module(
        model,
        &hf.weights().unwrap(),
        hf.naming(),
        &LoadOptions::default(),
        hf.path(),
    )
    .unwrap();
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    // RoBERTa heads have no pooler; transformers does not save one for them either.
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    model
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

#[test]
fn heads_match_transformers() {
    let fixture: Fixture = fixture("heads.json");
    let device = Default::default();
    for case in &fixture.cases {
        let dir = burnish_tests::tests_dir()
            .join("reference/models")
            .join(&case.name);
        let hf = HfModelDir::open(&dir).unwrap();
        let ModelConfig::Bert(config) = hf.config().clone() else {
            panic!("{}: not an encoder", case.name)
        };
        let config: BertConfig = config;
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(case.input_ids.clone(), case.shape),
            &device,
        );
        let mask = Tensor::<B, 2, Int>::from_data(
            TensorData::new(case.attention_mask.clone(), case.shape),
            &device,
        );
        let single = ProblemType::SingleLabelClassification;
        let logits: Vec<f32> = match case.name.as_str() {
            "bert-tiny-seqcls" => {
                let head = BertForSequenceClassification::new(
                    config.init(true, &device).unwrap(),
                    &config,
                    3,
                    single,
                    &device,
                )
                .unwrap();
                values(load(&hf, head).forward(ids, Some(mask), None))
            }
            "bert-tiny-tokcls" => {
                let head = BertForTokenClassification::new(
                    config.init(false, &device).unwrap(),
                    &config,
                    5,
                    &device,
                )
                .unwrap();
                values(load(&hf, head).forward(ids, Some(mask), None))
            }
            "roberta-tiny-seqcls" => {
                let head = RobertaForSequenceClassification::new(
                    config.init(false, &device).unwrap(),
                    &config,
                    3,
                    single,
                    &device,
                )
                .unwrap();
                values(load(&hf, head).forward(ids, Some(mask), None))
            }
            "roberta-tiny-tokcls" => {
                let head = RobertaForTokenClassification::new(
                    config.init(false, &device).unwrap(),
                    &config,
                    5,
                    &device,
                )
                .unwrap();
                values(load(&hf, head).forward(ids, Some(mask), None))
            }
            other => panic!("unknown case {other}"),
        };
        let diff = logits
            .iter()
            .zip(&case.logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{}: max |Δ| {diff:.2e}", case.name);
        assert!(diff < 1e-5, "{}: max |Δ| {diff}", case.name);
    }
}
