//! burnish-trainer against a PyTorch + transformers loop (tests/reference/generate_trainer.py):
//! same init, same data, dropout 0, 10 steps with accumulation 2, warmup, clipping and
//! weight decay; and accumulation k × b against one batch of k·b.
// Helpers outside #[test] functions unwrap too: a broken fixture should fail loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_heads::{
    BertForSequenceClassification, DebertaV2ForQuestionAnswering,
    DebertaV2ForSequenceClassification, DebertaV2ForTokenClassification, LossParts,
    ModernBertForQuestionAnswering, ModernBertForSequenceClassification,
    ModernBertForTokenClassification, ProblemType, SequenceLabels,
};
use burnish_loader::{
    HfModelDir, LoadOptions, Naming, SafetensorsFile, Weights, load_module, save_module,
};
use burnish_models::ModelConfig;
use burnish_schedule::Warmup;
use burnish_tests::TestBackend;
use burnish_tests::{fixture, rel_err};
use burnish_trainer::{Trainer, TrainerConfig};
use serde::Deserialize;

type B = Autodiff<TestBackend>;
type Model = BertForSequenceClassification<B>;

#[derive(Deserialize)]
struct Reference {
    steps: u64,
    grad_accum: usize,
    micro_batch: usize,
    seq: usize,
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    labels: Vec<i64>,
    losses: Vec<f64>,
    grad_norms: Vec<f64>,
    lrs: Vec<f64>,
}

fn reference_dir() -> PathBuf {
    burnish_tests::tests_dir().join("reference")
}

/// bert-tiny-cls with dropout 0, head loaded from the checkpoint.
fn model() -> Model {
    let dir = HfModelDir::open(&reference_dir().join("models/bert-tiny-cls")).unwrap();
    let ModelConfig::Bert(config) = dir.config().clone() else {
        panic!("not BERT")
    };
    let config = config.with_dropout(0.0);
    let device = Default::default();
    let head = BertForSequenceClassification::new(
        config.init::<B>(true, &device).unwrap(),
        &config,
        3,
        ProblemType::SingleLabelClassification,
        &device,
    )
    .unwrap();
    let weights = dir.weights().unwrap();
    let (head, report) = load_module(
        head,
        &weights,
        Naming::Bert,
        &LoadOptions::default(),
        dir.path(),
    )
    .unwrap();
    assert!(report.loaded.iter().any(|n| n == "classifier.weight"));
    head
}

struct Batch {
    ids: Vec<i64>,
    mask: Vec<i64>,
    labels: Vec<i64>,
    rows: usize,
}

fn batch(r: &Reference, start: usize, rows: usize) -> Batch {
    let s = r.seq;
    Batch {
        ids: r.input_ids[start * s..(start + rows) * s].to_vec(),
        mask: r.attention_mask[start * s..(start + rows) * s].to_vec(),
        labels: r.labels[start..start + rows].to_vec(),
        rows,
    }
}

fn loss(seq: usize) -> impl Fn(&Model, &Batch) -> LossParts<B> {
    move |m: &Model, b: &Batch| {
        let device = Default::default();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(b.ids.clone(), [b.rows, seq]), &device);
        let mask =
            Tensor::<B, 2, Int>::from_data(TensorData::new(b.mask.clone(), [b.rows, seq]), &device);
        let logits = m.forward(ids, Some(mask), None);
        m.loss(logits, &SequenceLabels::Classes(b.labels.clone()))
            .unwrap()
    }
}

fn config(r: &Reference) -> TrainerConfig {
    TrainerConfig {
        lr: 5e-4,
        weight_decay: 0.01,
        total_steps: r.steps,
        warmup: Warmup::Steps(3),
        max_grad_norm: Some(1.0),
        ..Default::default()
    }
}

/// Every parameter, by HF name, through the exporter.
fn exported(m: &Model) -> BTreeMap<String, Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_module(m, Naming::Bert, &path).unwrap();
    read_all(&path)
}

fn read_all(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let weights = Weights::from_files(vec![SafetensorsFile::open(path).unwrap()]).unwrap();
    weights
        .names()
        .into_iter()
        .map(|n| (n.to_owned(), weights.read_f32(n).unwrap()))
        .collect()
}

#[test]
fn ten_steps_match_pytorch() {
    let r: Reference = fixture("trainer.json");
    let mut trainer = Trainer::new(model(), config(&r)).unwrap();
    let cycle = r.grad_accum * r.micro_batch;
    for step in 0..r.steps as usize {
        let micro: Vec<Batch> = (0..r.grad_accum)
            .map(|m| batch(&r, step * cycle + m * r.micro_batch, r.micro_batch))
            .collect();
        let report = trainer.step(&micro, loss(r.seq)).unwrap();
        assert_eq!(report.lr, r.lrs[step], "lr at step {step}");
        assert_eq!(report.items, cycle as u64);
        assert!(
            (report.loss - r.losses[step]).abs() < 1e-5,
            "loss {step}: {} vs {}",
            report.loss,
            r.losses[step]
        );
        let norm_err = (report.grad_norm - r.grad_norms[step]).abs() / r.grad_norms[step];
        assert!(
            norm_err < 1e-4,
            "grad norm {step}: {} vs {}",
            report.grad_norm,
            r.grad_norms[step]
        );
    }
    let ours = exported(trainer.model());
    let reference = read_all(&reference_dir().join("fixtures/trainer_final.safetensors"));
    let initial = exported(&model());
    let mut worst = (0.0f64, String::new());
    let mut worst_update = (0.0f64, String::new());
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    for (name, a) in &ours {
        let b = &reference[name];
        // Attention key biases get a zero gradient in exact arithmetic (softmax ignores a
        // shift shared by all keys): their float gradient is rounding noise (~1e-10, below
        // ε), so AdamW moves them by about lr·g/ε ≈ 5e-6 a step in a run-dependent
        // direction. Judge them by an absolute bound well below what a real gradient would
        // move them (lr = 5e-4 a step).
        if name.contains("attention.self.key.bias") {
            let max = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(max < 1e-4, "{name}: differs by {max}");
            continue;
        }
        let err = rel_err(a, b);
        if err > worst.0 {
            worst = (err, name.clone());
        }
        assert!(err <= 1e-4, "{name}: relative error {err:e}");
        // The update itself, Δ = θ − θ₀, is the sharper comparison.
        let init = &initial[name];
        let delta = |v: &[f32]| v.iter().zip(init).map(|(x, y)| x - y).collect::<Vec<_>>();
        let err = rel_err(&delta(a), &delta(b));
        if err > worst_update.0 {
            worst_update = (err, name.clone());
        }
        assert!(err <= 1e-2, "{name}: update relative error {err:e}");
    }
    eprintln!(
        "worst parameter rel err {:e} ({}), worst update rel err {:e} ({})",
        worst.0, worst.1, worst_update.0, worst_update.1
    );
}

#[test]
fn accumulating_k_micro_batches_equals_one_big_batch() {
    let r: Reference = fixture("trainer.json");
    let cfg = TrainerConfig {
        max_grad_norm: None,
        ..config(&r)
    };
    let mut small = Trainer::new(model(), cfg.clone()).unwrap();
    let mut big = Trainer::new(model(), cfg).unwrap();
    // Unequal micro-batches: 1 + 3 + 2 rows against one batch of 6.
    let micro = [batch(&r, 0, 1), batch(&r, 1, 3), batch(&r, 4, 2)];
    let a = small.step(&micro, loss(r.seq)).unwrap();
    let b = big.step(&[batch(&r, 0, 6)], loss(r.seq)).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-6);
    let (x, y) = (exported(small.model()), exported(big.model()));
    for (name, p) in &x {
        let q = &y[name];
        let max = p
            .iter()
            .zip(q)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0f32, f32::max);
        assert!(max <= 1e-5, "{name}: {max}");
    }
}

/// One case of `tasks.json` (tests/reference/generate_tasks.py): a head's inputs, labels,
/// logits and loss, and one training step's grad norm and updated parameters.
#[derive(Deserialize)]
struct HeadStep {
    name: String,
    shape: [usize; 2],
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    token_type_ids: Vec<i64>,
    labels: BTreeMap<String, Vec<f64>>,
    logits: Vec<f32>,
    loss: f64,
    grad_norm: f64,
    after: BTreeMap<String, Vec<f32>>,
}

#[derive(Deserialize)]
struct Tasks {
    heads: Vec<HeadStep>,
}

/// A task head's logits and loss on one batch of a [`HeadStep`].
trait TaskHead: burn::module::AutodiffModule<B> + Sized {
    fn new_from(dir: &HfModelDir) -> Self;
    fn logits_and_loss(&self, case: &HeadStep) -> (Tensor<B, 3>, LossParts<B>);
}

fn ints(case: &HeadStep, values: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), case.shape),
        &Default::default(),
    )
}

fn bert_config(dir: &HfModelDir) -> burnish_models::BertConfig {
    let ModelConfig::Bert(config) = dir.config().clone() else {
        panic!("not an encoder")
    };
    config
}

fn loaded<M: burn::module::Module<B>>(dir: &HfModelDir, m: M) -> M {
    let weights = dir.weights().unwrap();
    let (m, report) = load_module(
        m,
        &weights,
        dir.naming(),
        &LoadOptions::default(),
        dir.path(),
    )
    .unwrap();
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    m
}

impl TaskHead for Model {
    fn new_from(dir: &HfModelDir) -> Self {
        let config = bert_config(dir);
        let problem = match dir.config_json()["problem_type"].as_str() {
            Some("regression") => ProblemType::Regression,
            _ => ProblemType::MultiLabelClassification,
        };
        let n = dir.config_json()["id2label"].as_object().unwrap().len();
        let device = Default::default();
        let bert = config.init::<B>(true, &device).unwrap();
        loaded(dir, Model::new(bert, &config, n, problem, &device).unwrap())
    }

    fn logits_and_loss(&self, case: &HeadStep) -> (Tensor<B, 3>, LossParts<B>) {
        let logits = self.forward(
            ints(case, &case.input_ids),
            Some(ints(case, &case.attention_mask)),
            Some(ints(case, &case.token_type_ids)),
        );
        let targets = case.labels["labels"].iter().map(|&v| v as f32).collect();
        let labels = match self.problem() {
            ProblemType::Regression => SequenceLabels::Values(targets),
            _ => SequenceLabels::MultiHot(targets),
        };
        let loss = self.loss(logits.clone(), &labels).unwrap();
        (logits.unsqueeze_dim(1), loss)
    }
}

macro_rules! qa_task_head {
    ($ty:ty) => {
        impl TaskHead for $ty {
            fn new_from(dir: &HfModelDir) -> Self {
                let config = bert_config(dir);
                let device = Default::default();
                let backbone = config.init::<B>(false, &device).unwrap();
                loaded(dir, <$ty>::new(backbone, &config, &device))
            }

            fn logits_and_loss(&self, case: &HeadStep) -> (Tensor<B, 3>, LossParts<B>) {
                let logits = self.forward(
                    ints(case, &case.input_ids),
                    Some(ints(case, &case.attention_mask)),
                    Some(ints(case, &case.token_type_ids)),
                );
                let (start, end) = (
                    &case.labels["start_positions"],
                    &case.labels["end_positions"],
                );
                let positions: Vec<i64> = start
                    .iter()
                    .zip(end)
                    .flat_map(|(&s, &e)| [s as i64, e as i64])
                    .collect();
                let loss = self.loss(logits.clone(), &positions).unwrap();
                (logits, loss)
            }
        }
    };
}

qa_task_head!(burnish_heads::BertForQuestionAnswering<B>);
qa_task_head!(burnish_heads::RobertaForQuestionAnswering<B>);

fn check_head_step<M: TaskHead>(case: &HeadStep) {
    let dir = HfModelDir::open(&reference_dir().join("models").join(&case.name)).unwrap();
    let model = M::new_from(&dir);
    let (logits, _) = model.logits_and_loss(case);
    let logits: Vec<f32> = logits.into_data().to_vec().unwrap();
    let diff = logits
        .iter()
        .zip(&case.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "{}: logits differ by {diff}", case.name);
    let config = TrainerConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        total_steps: 1,
        warmup: Warmup::Steps(0),
        max_grad_norm: Some(1.0),
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, config).unwrap();
    let report = trainer
        .step(std::slice::from_ref(case), |m: &M, c: &HeadStep| {
            m.logits_and_loss(c).1
        })
        .unwrap();
    assert!(
        (report.loss - case.loss).abs() < 1e-5,
        "{}: loss {} vs {}",
        case.name,
        report.loss,
        case.loss
    );
    let norm_err = (report.grad_norm - case.grad_norm).abs() / case.grad_norm;
    assert!(
        norm_err < 1e-4,
        "{}: grad norm {} vs {}",
        case.name,
        report.grad_norm,
        case.grad_norm
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    save_module(trainer.model(), dir.naming(), &path).unwrap();
    let ours = read_all(&path);
    for (name, reference) in &case.after {
        // The QA bias gets a zero gradient in exact arithmetic (each softmax over positions
        // ignores a shift shared by all of them), so its float gradient is rounding noise
        // that AdamW turns into a step of up to lr in either direction, in both runs:
        // bound the difference by 2·lr.
        if name == "qa_outputs.bias" {
            let max = ours[name]
                .iter()
                .zip(reference)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(max <= 2.001e-3, "{}: {name} moved {max}", case.name);
            continue;
        }
        let err = rel_err(&ours[name], reference);
        assert!(err <= 1e-4, "{}: {name} relative error {err:e}", case.name);
    }
    eprintln!(
        "{}: logits max |Δ| {diff:.1e}, loss {:.6} (torch {:.6}), grad norm rel err {norm_err:.1e}, {} parameters checked",
        case.name,
        report.loss,
        case.loss,
        case.after.len()
    );
}

/// Regression, multi-label and QA heads on a sentence pair (segment ids): logits, loss,
/// clipped grad norm and the updated head, segment-embedding and attention weights after
/// one AdamW step, against transformers.
#[test]
fn task_heads_take_one_step_like_pytorch() {
    let tasks: Tasks = fixture("tasks.json");
    assert_eq!(tasks.heads.len(), 4);
    for case in &tasks.heads {
        match case.name.as_str() {
            "bert-tiny-regression" | "bert-tiny-multilabel" => check_head_step::<Model>(case),
            "bert-tiny-qa" => check_head_step::<burnish_heads::BertForQuestionAnswering<B>>(case),
            "roberta-tiny-qa" => {
                check_head_step::<burnish_heads::RobertaForQuestionAnswering<B>>(case)
            }
            other => panic!("unknown case {other}"),
        }
    }
}

/// The backbone of a new family's head, built from the directory's config.
fn family_backbone<T>(dir: &HfModelDir, init: impl FnOnce(&ModelConfig) -> Option<T>) -> T {
    init(dir.config()).unwrap_or_else(|| panic!("{}: another family", dir.path().display()))
}

/// [`TaskHead`] for a head of the newer encoder families: `$new` builds it from the
/// backbone and the family's config `c` (`n` labels), `$labels` turns the case into the
/// head's labels.
macro_rules! family_head {
    ($ty:ty, $variant:ident, |$m:ident, $c:ident, $n:ident| $new:expr, |$case:ident| $labels:expr) => {
        impl TaskHead for $ty {
            fn new_from(dir: &HfModelDir) -> Self {
                let device = Default::default();
                let $n = dir.config_json()["id2label"]
                    .as_object()
                    .map_or(2, |labels| labels.len());
                let head = family_backbone(dir, |config| match config {
                    ModelConfig::$variant($c) => {
                        let $m = $c.init::<B>(&device).unwrap();
                        Some($new)
                    }
                    _ => None,
                });
                loaded(dir, head)
            }

            fn logits_and_loss(&self, $case: &HeadStep) -> (Tensor<B, 3>, LossParts<B>) {
                let logits = self.forward(
                    ints($case, &$case.input_ids),
                    Some(ints($case, &$case.attention_mask)),
                    None,
                );
                let labels = $labels;
                let loss = self.loss(logits.clone(), &labels).unwrap();
                (shaped(logits), loss)
            }
        }
    };
}

/// Logits as `[batch, positions, outputs]`.
trait Shaped {
    fn into_3d(self) -> Tensor<B, 3>;
}
impl Shaped for Tensor<B, 2> {
    fn into_3d(self) -> Tensor<B, 3> {
        self.unsqueeze_dim(1)
    }
}
impl Shaped for Tensor<B, 3> {
    fn into_3d(self) -> Tensor<B, 3> {
        self
    }
}
fn shaped(t: impl Shaped) -> Tensor<B, 3> {
    t.into_3d()
}

fn class_labels(case: &HeadStep) -> Vec<i64> {
    case.labels["labels"].iter().map(|&v| v as i64).collect()
}

fn span_positions(case: &HeadStep) -> Vec<i64> {
    let (start, end) = (
        &case.labels["start_positions"],
        &case.labels["end_positions"],
    );
    start
        .iter()
        .zip(end)
        .flat_map(|(&s, &e)| [s as i64, e as i64])
        .collect()
}

family_head!(
    DebertaV2ForSequenceClassification<B>,
    Deberta,
    |m, c, n| DebertaV2ForSequenceClassification::new(
        m,
        c,
        n,
        ProblemType::SingleLabelClassification,
        &Default::default()
    )
    .unwrap(),
    |case| SequenceLabels::Classes(class_labels(case))
);
family_head!(
    DebertaV2ForTokenClassification<B>,
    Deberta,
    |m, c, n| DebertaV2ForTokenClassification::new(m, c, n, &Default::default()).unwrap(),
    |case| class_labels(case)
);
family_head!(
    DebertaV2ForQuestionAnswering<B>,
    Deberta,
    |m, c, _n| DebertaV2ForQuestionAnswering::new(m, c, &Default::default()),
    |case| span_positions(case)
);
family_head!(
    ModernBertForSequenceClassification<B>,
    ModernBert,
    |m, c, n| ModernBertForSequenceClassification::new(
        m,
        c,
        n,
        ProblemType::SingleLabelClassification,
        &Default::default()
    )
    .unwrap(),
    |case| SequenceLabels::Classes(class_labels(case))
);
family_head!(
    ModernBertForTokenClassification<B>,
    ModernBert,
    |m, c, n| ModernBertForTokenClassification::new(m, c, n, &Default::default()).unwrap(),
    |case| class_labels(case)
);
family_head!(
    ModernBertForQuestionAnswering<B>,
    ModernBert,
    |m, c, _n| ModernBertForQuestionAnswering::new(m, c, &Default::default()).unwrap(),
    |case| span_positions(case)
);

/// DistilBERT (multi-label, through the BERT head with its `pre_classifier`), DeBERTa-v3
/// and ModernBERT (mean pooling) sequence, token and QA heads: logits, loss, clipped grad
/// norm and updated head and backbone weights after one AdamW step, against transformers
/// (tests/reference/generate_families.py).
#[test]
fn new_family_heads_take_one_step_like_pytorch() {
    let families: Tasks = fixture("families.json");
    assert_eq!(families.heads.len(), 7);
    for case in &families.heads {
        match case.name.as_str() {
            "distilbert-tiny-multilabel" => check_head_step::<Model>(case),
            "deberta-v3-tiny-seqcls" => {
                check_head_step::<DebertaV2ForSequenceClassification<B>>(case)
            }
            "deberta-v3-tiny-tokcls" => check_head_step::<DebertaV2ForTokenClassification<B>>(case),
            "deberta-v3-tiny-qa" => check_head_step::<DebertaV2ForQuestionAnswering<B>>(case),
            "modernbert-tiny-seqcls-mean" => {
                check_head_step::<ModernBertForSequenceClassification<B>>(case)
            }
            "modernbert-tiny-tokcls" => {
                check_head_step::<ModernBertForTokenClassification<B>>(case)
            }
            "modernbert-tiny-qa" => check_head_step::<ModernBertForQuestionAnswering<B>>(case),
            other => panic!("unknown case {other}"),
        }
    }
}
