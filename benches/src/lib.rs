//! Shared fixtures of burnish's criterion benchmarks: parameter sets shaped like real
//! models, filled with deterministic values.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};

/// The configuration of all-MiniLM-L6-v2 (22.7M parameters with a 2-class head), for
/// benchmarks that build it with random weights.
pub fn minilm_config() -> burnish_models::BertConfig {
    serde_json::from_str(
        r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
            "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
            "max_position_embeddings": 512}"#,
    )
    .expect("valid config")
}

/// A decoder with SmolLM2-135M's shapes (hidden 576, 9 query and 3 key/value heads, MLP
/// 1536, tied 49,152-token vocabulary) and `layers` of its 30 layers, for benchmarks that
/// build it with random weights.
pub fn smollm2_config(layers: usize) -> burnish_models::LlamaConfig {
    let json = format!(
        r#"{{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": {layers}, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true}}"#
    );
    match burnish_models::ModelConfig::from_json(&json) {
        Ok(burnish_models::ModelConfig::Llama(config)) => config,
        other => panic!("a llama config, got {other:?}"),
    }
}

/// A bag of parameters with the shapes of a BERT encoder (no forward pass: the benchmarks
/// measure the optimizer and clipping, which only see shapes).
#[derive(Module, Debug)]
pub struct ParamStack<B: Backend> {
    /// Matrices.
    pub matrices: Vec<Param<Tensor<B, 2>>>,
    /// Vectors (biases, norm weights).
    pub vectors: Vec<Param<Tensor<B, 1>>>,
}

/// Shapes of BERT-base (110M parameters): `(matrices, vectors)`.
pub fn bert_base_shapes() -> (Vec<[usize; 2]>, Vec<usize>) {
    bert_shapes(30522, 768, 3072, 12)
}

/// Shapes of a BERT encoder with the given vocabulary, hidden, intermediate and layer sizes.
pub fn bert_shapes(
    vocab: usize,
    hidden: usize,
    ffn: usize,
    layers: usize,
) -> (Vec<[usize; 2]>, Vec<usize>) {
    let mut matrices = vec![[vocab, hidden], [512, hidden], [2, hidden]];
    let mut vectors = vec![hidden, hidden];
    for _ in 0..layers {
        matrices.extend([[hidden, hidden]; 4]);
        matrices.extend([[hidden, ffn], [ffn, hidden]]);
        vectors.extend([hidden; 4]);
        vectors.extend([ffn, hidden, hidden, hidden, hidden, hidden]);
    }
    matrices.push([hidden, hidden]);
    vectors.push(hidden);
    (matrices, vectors)
}

impl<B: Backend> ParamStack<B> {
    /// Parameters of the given shapes, drawn from N(0, 0.02).
    pub fn new(shapes: &(Vec<[usize; 2]>, Vec<usize>), device: &B::Device) -> Self {
        let dist = Distribution::Normal(0.0, 0.02);
        ParamStack {
            matrices: shapes
                .0
                .iter()
                .map(|s| Param::from_tensor(Tensor::random(*s, dist, device)))
                .collect(),
            vectors: shapes
                .1
                .iter()
                .map(|s| Param::from_tensor(Tensor::random([*s], dist, device)))
                .collect(),
        }
    }

    /// Total number of parameter elements.
    pub fn numel(&self) -> usize {
        self.num_params()
    }
}

impl<B: AutodiffBackend> ParamStack<B> {
    /// One random gradient (N(0, 1)) per parameter.
    pub fn random_grads(&self) -> GradientsParams {
        let mut grads = GradientsParams::new();
        let dist = Distribution::Normal(0.0, 1.0);
        for p in &self.matrices {
            let device = p.val().device();
            grads.register::<B::InnerBackend, 2>(
                p.id,
                Tensor::random(p.val().dims(), dist, &device),
            );
        }
        for p in &self.vectors {
            let device = p.val().device();
            grads.register::<B::InnerBackend, 1>(
                p.id,
                Tensor::random(p.val().dims(), dist, &device),
            );
        }
        grads
    }
}
