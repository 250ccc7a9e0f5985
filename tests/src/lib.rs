//! Shared helpers of burnish's cross-crate tests: the reference fixtures produced by
//! `tests/reference/generate.py` (PyTorch + transformers) and the small module they use.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::de::DeserializeOwned;

/// The backend of the reference and parity tests: burn-ndarray, or CUDA with the `cuda`
/// feature (`scripts/gpu-check.sh` runs them on a GPU).
#[cfg(not(feature = "cuda"))]
pub type TestBackend = burn_ndarray::NdArray;
/// The backend of the reference and parity tests: CUDA (the `cuda` feature).
#[cfg(feature = "cuda")]
pub type TestBackend = burn_cuda::Cuda;

/// The `tests/` folder: `BURNISH_TESTS_DIR` when set (test binaries carried to another
/// machine, see `scripts/gpu-check.sh`), else where this crate was compiled.
pub fn tests_dir() -> PathBuf {
    std::env::var_os("BURNISH_TESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Reads `tests/reference/fixtures/<name>` into `T`.
///
/// # Panics
/// When the fixture is missing or malformed: the tests cannot run without it.
pub fn fixture<T: DeserializeOwned>(name: &str) -> T {
    let path = tests_dir().join("reference/fixtures").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The module of the AdamW fixture: `dense` (Linear 4→8), `norm` (LayerNorm 8),
/// `head` (Linear 8→3), named as in the PyTorch script.
#[derive(Module, Debug)]
pub struct Tiny<B: Backend> {
    /// First layer.
    pub dense: Linear<B>,
    /// Normalization; burn names its parameters `gamma`/`beta`.
    pub norm: LayerNorm<B>,
    /// Output layer.
    pub head: Linear<B>,
}

/// Parameter names of [`Tiny`], PyTorch spelling → burn path.
pub const TINY_NAMES: [(&str, &str); 6] = [
    ("dense.weight", "dense.weight"),
    ("dense.bias", "dense.bias"),
    ("norm.weight", "norm.gamma"),
    ("norm.bias", "norm.beta"),
    ("head.weight", "head.weight"),
    ("head.bias", "head.bias"),
];

fn linear<B: Backend>(
    weight: &[f32],
    bias: &[f32],
    out: usize,
    inp: usize,
    d: &B::Device,
) -> Linear<B> {
    // PyTorch stores Linear weights [out, in]; burn stores [in, out].
    let w = Tensor::<B, 2>::from_data(TensorData::new(weight.to_vec(), [out, inp]), d).transpose();
    Linear {
        weight: Param::from_tensor(w),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias.to_vec(), [out]),
            d,
        ))),
    }
}

impl<B: Backend> Tiny<B> {
    /// Builds the module from PyTorch-named flat values.
    pub fn from_torch(values: &BTreeMap<String, Vec<f32>>, device: &B::Device) -> Self {
        let v = |name: &str| values[name].as_slice();
        let mut norm = LayerNormConfig::new(8).init(device);
        norm.gamma = Param::from_tensor(Tensor::from_data(
            TensorData::new(v("norm.weight").to_vec(), [8]),
            device,
        ));
        norm.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(v("norm.bias").to_vec(), [8]),
            device,
        )));
        Tiny {
            dense: linear(v("dense.weight"), v("dense.bias"), 8, 4, device),
            norm,
            head: linear(v("head.weight"), v("head.bias"), 3, 8, device),
        }
    }

    /// The parameters as PyTorch-named flat values (Linear weights transposed back).
    pub fn to_torch(&self) -> BTreeMap<String, Vec<f32>> {
        let flat = |t: Tensor<B, 1>| t.into_data().to_vec::<f32>().unwrap_or_default();
        let flat2 = |t: Tensor<B, 2>| flat(t.transpose().flatten(0, 1));
        let bias =
            |p: &Option<Param<Tensor<B, 1>>>| p.as_ref().map(|b| flat(b.val())).unwrap_or_default();
        BTreeMap::from([
            ("dense.weight".to_owned(), flat2(self.dense.weight.val())),
            ("dense.bias".to_owned(), bias(&self.dense.bias)),
            ("norm.weight".to_owned(), flat(self.norm.gamma.val())),
            ("norm.bias".to_owned(), bias(&self.norm.beta)),
            ("head.weight".to_owned(), flat2(self.head.weight.val())),
            ("head.bias".to_owned(), bias(&self.head.bias)),
        ])
    }
}

/// `‖a − b‖ / ‖b‖` in f64 (0 when both are zero).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Four bare parameters shaped `[5, 3]`, `[3]`, `[2, 2, 2]`, `[1]`, as in the clipping fixture.
#[derive(Module, Debug)]
pub struct Bag<B: Backend> {
    /// `[5, 3]`
    pub a: Param<Tensor<B, 2>>,
    /// `[3]`
    pub b: Param<Tensor<B, 1>>,
    /// `[2, 2, 2]`
    pub c: Param<Tensor<B, 3>>,
    /// `[1]`
    pub d: Param<Tensor<B, 1>>,
}

impl<B: burn::tensor::backend::AutodiffBackend> Bag<B> {
    /// A bag of zeros.
    pub fn zeros(device: &B::Device) -> Self {
        Bag {
            a: Param::from_tensor(Tensor::zeros([5, 3], device)),
            b: Param::from_tensor(Tensor::zeros([3], device)),
            c: Param::from_tensor(Tensor::zeros([2, 2, 2], device)),
            d: Param::from_tensor(Tensor::zeros([1], device)),
        }
    }

    /// Gradients for the four parameters, from flat row-major values.
    pub fn grads(&self, values: &[Vec<f32>]) -> burn::optim::GradientsParams {
        let device = self.a.val().device();
        let mut grads = burn::optim::GradientsParams::new();
        let data = |i: usize, shape: &[usize]| TensorData::new(values[i].clone(), shape.to_vec());
        grads.register::<B::InnerBackend, 2>(
            self.a.id,
            Tensor::from_data(data(0, &[5, 3]), &device),
        );
        grads.register::<B::InnerBackend, 1>(self.b.id, Tensor::from_data(data(1, &[3]), &device));
        grads.register::<B::InnerBackend, 3>(
            self.c.id,
            Tensor::from_data(data(2, &[2, 2, 2]), &device),
        );
        grads.register::<B::InnerBackend, 1>(self.d.id, Tensor::from_data(data(3, &[1]), &device));
        grads
    }

    /// The four gradients back as flat values (empty where a gradient is absent).
    pub fn read(&self, grads: &burn::optim::GradientsParams) -> Vec<Vec<f32>> {
        fn flat<B2: Backend, const D: usize>(t: Option<Tensor<B2, D>>) -> Vec<f32> {
            t.map(|t| t.into_data().to_vec::<f32>().unwrap_or_default())
                .unwrap_or_default()
        }
        vec![
            flat(grads.get::<B::InnerBackend, 2>(self.a.id)),
            flat(grads.get::<B::InnerBackend, 1>(self.b.id)),
            flat(grads.get::<B::InnerBackend, 3>(self.c.id)),
            flat(grads.get::<B::InnerBackend, 1>(self.d.id)),
        ]
    }
}

/// `../shared` next to the repository (models and data; CI has it).
pub fn shared_dir() -> PathBuf {
    tests_dir().join("../../shared")
}

/// Whether `path` (something under `../shared`) is there. When it is not, the test skips
/// with a SKIPPED line, except where `BURNISH_REQUIRE_SHARED` is set (CI sets it: CI has
/// `../shared`, so a missing one there is a failure, never a silent "ok").
///
/// # Panics
/// When `path` is absent and `BURNISH_REQUIRE_SHARED` is set.
pub fn shared_present(path: &std::path::Path) -> bool {
    if path.exists() {
        return true;
    }
    assert!(
        std::env::var_os("BURNISH_REQUIRE_SHARED").is_none(),
        "{} is absent, and BURNISH_REQUIRE_SHARED says this run must have ../shared",
        path.display()
    );
    eprintln!("SKIPPED: {} is absent (CI has it)", path.display());
    false
}

/// The `input_ids` and `attention_mask` of a tokenized batch as tensors.
pub fn id_tensors<B2: Backend>(
    e: &burnish_loader::Encoded,
) -> (
    Tensor<B2, 2, burn::tensor::Int>,
    Tensor<B2, 2, burn::tensor::Int>,
) {
    let device = Default::default();
    (
        Tensor::from_data(TensorData::new(e.input_ids.clone(), e.shape), &device),
        Tensor::from_data(TensorData::new(e.attention_mask.clone(), e.shape), &device),
    )
}

/// all-MiniLM-L6-v2 from `../shared`: its directory, a tokenizer truncating to
/// `max_length`, and its config; `None` (see [`shared_present`]) when `../shared` lacks it or
/// the data set `data` (CI has both).
///
/// # Panics
/// When the model directory exists but cannot be read.
pub fn minilm(
    max_length: usize,
    data: &str,
) -> Option<(
    burnish_loader::HfModelDir,
    burnish_loader::HfTokenizer,
    burnish_models::BertConfig,
)> {
    let model_dir = shared_dir().join("models/all-MiniLM-L6-v2");
    if !shared_present(&model_dir) || !shared_present(&shared_dir().join("data").join(data)) {
        return None;
    }
    let hf = burnish_loader::HfModelDir::open(&model_dir).expect("MiniLM config");
    let tokenizer = hf
        .tokenizer(burnish_loader::TokenizerConfig {
            max_length,
            ..Default::default()
        })
        .expect("MiniLM tokenizer");
    let burnish_models::ModelConfig::Bert(config) = hf.config().clone() else {
        panic!("all-MiniLM-L6-v2 is not a BERT config")
    };
    Some((hf, tokenizer, config))
}

/// Loads the pretrained backbone of `hf` into a head module, leaving a new `classifier`
/// at its initialization.
///
/// # Panics
/// When the checkpoint cannot be loaded.
pub fn load_backbone<B2: Backend, M: Module<B2>>(
    head: M,
    hf: &burnish_loader::HfModelDir,
) -> (M, burnish_loader::LoadReport) {
    let options = burnish_loader::LoadOptions {
        allow_missing: vec!["classifier".into()],
        ..Default::default()
    };
    let weights = hf.weights().expect("MiniLM weights");
    burnish_loader::load_module(head, &weights, hf.naming(), &options, hf.path())
        .expect("MiniLM loads")
}
