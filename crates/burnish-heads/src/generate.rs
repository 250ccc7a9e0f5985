//! Text generation with a Llama-family decoder and its KV cache: greedy, or sampled with
//! temperature, top-k and top-p (applied in that order, as transformers' logits warpers),
//! reproducible from a seed.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_models::{KvCache, LlamaForCausalLm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p.
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    pub seed: u64,
    /// Stop after generating this token.
    pub eos_token_id: Option<i64>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 20,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            eos_token_id: None,
        }
    }
}

/// Picks a token from one row of logits.
fn pick(logits: &[f32], config: &GenerationConfig, rng: &mut ChaCha8Rng) -> usize {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0
    };
    if config.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = config.top_k {
        order.truncate(k.max(1));
    }
    let scaled: Vec<f64> = order
        .iter()
        .map(|&i| f64::from(logits[i]) / config.temperature)
        .collect();
    let max = scaled.first().copied().unwrap_or(0.0);
    let mut probs: Vec<f64> = scaled.iter().map(|v| (v - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = config.top_p {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                cumulative += p;
                cumulative >= top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut draw: f64 = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if draw < *p {
            return order[i];
        }
        draw -= p;
    }
    order[probs.len() - 1]
}

/// Continues `prompt` (token ids, one sequence) and returns the new tokens, running the
/// prompt once and then one token at a time through the KV cache.
pub fn generate<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompt: &[i64],
    config: &GenerationConfig,
) -> Vec<i64> {
    let mut out = Vec::with_capacity(config.max_new_tokens);
    if prompt.is_empty() {
        return out;
    }
    let device = model.model.embed_tokens.weight.val().device();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut cache = KvCache::new();
    let mut input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(prompt.to_vec(), [1, prompt.len()]),
        &device,
    );
    for _ in 0..config.max_new_tokens {
        let hidden = model.model.forward(input, None, Some(&mut cache));
        let [_, s, h] = hidden.dims();
        // Only the last position's logits pick a token: the prompt's other positions skip
        // the vocabulary projection.
        let logits = model.project(hidden.slice([0..1, s - 1..s, 0..h]));
        let v = logits.dims()[2];
        let logits = logits.reshape([v]);
        // Greedy reads back one id (the first of equal maxima, as torch's argmax); sampling
        // draws on the host from the row, with the seeded generator.
        let token = if config.temperature <= 0.0 {
            read_ints(logits.argmax(0)).first().copied().unwrap_or(0)
        } else {
            let row = logits
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            pick(&row, config, &mut rng) as i64
        };
        out.push(token);
        if config.eos_token_id == Some(token) {
            break;
        }
        input = Tensor::from_data(TensorData::new(vec![token], [1, 1]), &device);
    }
    out
}

/// The values of an integer tensor as `i64` (CubeCL backends hold `i32`).
fn read_ints<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(pick(&logits, &GenerationConfig::default(), &mut rng), 1);
        let top1 = GenerationConfig {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        assert!((0..50).all(|_| pick(&logits, &top1, &mut rng) == 1));
        let top2 = GenerationConfig {
            temperature: 1.0,
            top_k: Some(2),
            ..Default::default()
        };
        let picks: std::collections::BTreeSet<usize> =
            (0..200).map(|_| pick(&logits, &top2, &mut rng)).collect();
        assert_eq!(picks.into_iter().collect::<Vec<_>>(), [1, 2]);
        // Token 1 alone holds about 48% of the mass: top_p 0.4 keeps only it.
        let nucleus = GenerationConfig {
            temperature: 1.0,
            top_p: Some(0.4),
            ..Default::default()
        };
        assert!((0..50).all(|_| pick(&logits, &nucleus, &mut rng) == 1));
    }

    #[test]
    fn sampling_is_seeded() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let config = GenerationConfig {
            temperature: 1.0,
            seed: 9,
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| pick(&logits, &config, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
