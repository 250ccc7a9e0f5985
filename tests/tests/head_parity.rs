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

#[derive(Deserialize)]
struct PairCase {
    tokenizer: String,
    max_length: usize,
    text: String,
    text_pair: String,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Window {
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    offsets: Vec<Option<(usize, usize)>>,
    start: i64,
    end: i64,
}

#[derive(Deserialize)]
struct WindowCase {
    tokenizer: String,
    max_length: usize,
    stride: usize,
    question: String,
    context: String,
    answer: String,
    answer_start: usize,
    windows: Vec<Window>,
}

#[derive(Deserialize)]
struct SquadCase {
    prediction: String,
    golds: Vec<String>,
    exact: f64,
    f1: f64,
}

#[derive(Deserialize)]
struct Tokenization {
    pairs: Vec<PairCase>,
    windows: Vec<WindowCase>,
    #[serde(default)]
    squad: Vec<SquadCase>,
}

/// The cases made with transformers' fast tokenizers: BERT's WordPiece and RoBERTa's
/// byte-level BPE (`tasks.json`), and a SentencePiece Unigram with DeBERTa-v3's template
/// (`sentencepiece.json`, tests/reference/generate_sentencepiece.py).
fn tokenization_cases() -> [Tokenization; 2] {
    [fixture("tasks.json"), fixture("sentencepiece.json")]
}

fn tokenizer(name: &str, max_length: usize) -> burnish_loader::HfTokenizer {
    let path = match name {
        "minilm-compact" => burnish_tests::tests_dir().join("../assets/minilm-compact"),
        "toy-roberta" => burnish_tests::tests_dir().join("assets/toy-roberta-tokenizer"),
        "toy-deberta" => burnish_tests::tests_dir().join("assets/toy-deberta-tokenizer"),
        other => panic!("unknown tokenizer {other}"),
    };
    let config = burnish_loader::TokenizerConfig {
        max_length,
        ..Default::default()
    };
    burnish_loader::HfTokenizer::from_file(&path.join("tokenizer.json"), config).unwrap()
}

/// Sentence pairs get the tokenizer's pair template and `longest_first` truncation exactly
/// as transformers' `tokenizer(text, text_pair, truncation=True, max_length=n)` (BERT's
/// WordPiece, RoBERTa's byte-level BPE, a SentencePiece Unigram as DeBERTa-v3's), and the cached segment boundary gives back
/// the same token type ids.
#[test]
fn pairs_tokenize_like_transformers() {
    for fixture in tokenization_cases() {
        pairs_of(&fixture);
    }
}

fn pairs_of(fixture: &Tokenization) {
    for case in &fixture.pairs {
        let tok = tokenizer(&case.tokenizer, case.max_length);
        let pair = [(case.text.as_str(), case.text_pair.as_str())];
        let (ids, types) = tok.encode_pairs_unpadded(&pair).unwrap().remove(0);
        let what = format!("{} at {}: {:?}", case.tokenizer, case.max_length, case.text);
        assert_eq!(ids, case.input_ids, "{what}");
        assert_eq!(types, case.token_type_ids, "{what}");
        let labels = ["no".to_owned(), "yes".to_owned()];
        let encoder = burnish_data::RowEncoder {
            task: burnish_data::Task::SequenceClassification,
            problem: ProblemType::SingleLabelClassification,
            tokenizer: &tok,
            labels: &labels,
            chat_template: None,
            eos_id: None,
            require_labels: true,
            doc_stride: burnish_data::DEFAULT_DOC_STRIDE,
        };
        let row = serde_json::json!({"text": case.text, "text_pair": case.text_pair, "label": 1});
        let example = encoder
            .encode(&[&row])
            .unwrap()
            .remove(0)
            .unwrap()
            .remove(0);
        let from_segment: Vec<u32> = (0..ids.len())
            .map(|i| u32::from(example.segment > 0 && i >= example.segment as usize))
            .collect();
        assert_eq!(from_segment, case.token_type_ids, "{what}");
    }
    eprintln!(
        "{} pairs tokenized as transformers does",
        fixture.pairs.len()
    );
}

/// Long QA contexts split into the windows transformers' fast tokenizer makes with
/// `truncation="only_second"`, `return_overflowing_tokens` and `stride` (same ids, segment
/// ids and context offsets), labeled with the answer tokens transformers' run_qa finds.
#[test]
fn qa_windows_and_offsets_match_transformers() {
    for fixture in tokenization_cases() {
        windows_of(&fixture);
    }
}

fn windows_of(fixture: &Tokenization) {
    let mut windows = 0;
    for case in &fixture.windows {
        let tok = tokenizer(&case.tokenizer, case.max_length);
        let what = format!(
            "{} {}/{}: {:?}",
            case.tokenizer, case.max_length, case.stride, case.question
        );
        let pair = [(case.question.trim_start(), case.context.as_str())];
        let ours = tok
            .encode_qa_windows(&pair, case.stride)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(ours.len(), case.windows.len(), "{what}");
        let encoder = burnish_data::RowEncoder {
            task: burnish_data::Task::QuestionAnswering,
            problem: ProblemType::SingleLabelClassification,
            tokenizer: &tok,
            labels: &[],
            chat_template: None,
            eos_id: None,
            require_labels: true,
            doc_stride: case.stride,
        };
        let row = serde_json::json!({"question": case.question, "context": case.context,
            "answers": {"text": [case.answer], "answer_start": [case.answer_start]}});
        let examples = encoder.encode(&[&row]).unwrap().remove(0).unwrap();
        for ((w, reference), example) in ours.iter().zip(&case.windows).zip(&examples) {
            assert_eq!(w.ids, reference.input_ids, "{what}");
            assert_eq!(w.type_ids, reference.token_type_ids, "{what}");
            assert_eq!(w.context_offsets, reference.offsets, "{what}");
            assert_eq!(example.ids, reference.input_ids, "{what}");
            assert_eq!(
                (example.label, example.end_label),
                (reference.start, reference.end),
                "{what}"
            );
            windows += 1;
        }
    }
    eprintln!("{windows} windows identical to transformers'");
}

/// SQuAD exact match and F1 as the official (v2) evaluation functions score them.
#[test]
fn squad_scores_match_the_official_functions() {
    let fixture: Tokenization = fixture("tasks.json");
    for case in &fixture.squad {
        let golds: Vec<&str> = case.golds.iter().map(String::as_str).collect();
        let exact = burnish_trainer::metrics::squad_exact(&case.prediction, &golds);
        let f1 = burnish_trainer::metrics::squad_f1(&case.prediction, &golds);
        assert_eq!(exact, case.exact, "{:?} vs {golds:?}", case.prediction);
        assert!(
            (f1 - case.f1).abs() < 1e-12,
            "{:?} vs {golds:?}: {f1}",
            case.prediction
        );
    }
}
