//! Losses as transformers computes them, returned as (sum, count) so accumulation can
//! normalize over a whole cycle.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_models::ModelError;

/// The label value that is ignored (transformers' `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// A loss summed over its items, with the item count; `mean = sum / count`.
#[derive(Debug, Clone)]
pub struct LossParts<B: Backend> {
    /// Sum of per-item losses, shape `[1]`.
    pub sum: Tensor<B, 1>,
    /// Number of items that contributed (labels ≠ −100, examples, or elements).
    pub count: u64,
}

impl<B: Backend> LossParts<B> {
    /// The mean loss (`sum / max(count, 1)`, 0 when nothing counted).
    pub fn mean(&self) -> Tensor<B, 1> {
        self.sum.clone().div_scalar(self.count.max(1) as f64)
    }
}

/// Cross-entropy of `logits` `[n, classes]` against class ids `labels` (−100 ignored).
///
/// Labels outside `0..classes` other than −100 are ignored too rather than panicking; the
/// data layer rejects them before they get here.
///
/// # Errors
/// [`ModelError::Input`] when there are not `n` labels.
pub fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[i64],
) -> Result<LossParts<B>, ModelError> {
    let [n, classes] = logits.dims();
    if labels.len() != n {
        return Err(ModelError::Input(format!(
            "{} labels for {n} rows of logits",
            labels.len()
        )));
    }
    let device = logits.device();
    let valid: Vec<bool> = labels
        .iter()
        .map(|&l| l >= 0 && (l as usize) < classes)
        .collect();
    let count = valid.iter().filter(|&&v| v).count() as u64;
    let index: Vec<i64> = labels
        .iter()
        .zip(&valid)
        .map(|(&l, &v)| if v { l } else { 0 })
        .collect();
    let mask: Vec<f32> = valid.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [n, 1]), &device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, 1]), &device);
    let picked = log_softmax(logits, 1).gather(1, index);
    Ok(LossParts {
        sum: picked.mul(mask).sum().neg(),
        count,
    })
}

/// Binary cross-entropy with logits over every element (multi-label classification),
/// in the numerically stable form `max(x, 0) − x·y + log(1 + e^{−|x|})`.
pub fn bce_with_logits<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> LossParts<B> {
    let [n, k] = logits.dims();
    let loss = logits
        .clone()
        .clamp_min(0.0)
        .sub(logits.clone().mul(targets))
        .add(logits.abs().neg().exp().log1p());
    LossParts {
        sum: loss.sum(),
        count: (n * k) as u64,
    }
}

/// Mean-squared error over every element (regression).
pub fn mse<B: Backend>(predictions: Tensor<B, 2>, targets: Tensor<B, 2>) -> LossParts<B> {
    let [n, k] = predictions.dims();
    LossParts {
        sum: predictions.sub(targets).square().sum(),
        count: (n * k) as u64,
    }
}

/// Causal-LM loss: `logits[:, :-1]` against `labels[:, 1:]` (−100 ignored), as
/// transformers' `ForCausalLMLoss`; `labels` is row-major `[batch, seq]`.
///
/// # Errors
/// [`ModelError::Input`] when there are not `batch × seq` labels.
pub fn causal_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
) -> Result<LossParts<B>, ModelError> {
    let [batch, seq, vocab] = logits.dims();
    if labels.len() != batch * seq {
        return Err(ModelError::Input(format!(
            "{} labels for logits of {batch} × {seq} positions",
            labels.len()
        )));
    }
    if seq < 2 {
        return Ok(LossParts {
            sum: Tensor::zeros([1], &logits.device()),
            count: 0,
        });
    }
    let shifted = logits
        .slice([0..batch, 0..seq - 1, 0..vocab])
        .reshape([batch * (seq - 1), vocab]);
    let targets: Vec<i64> = labels
        .chunks(seq)
        .flat_map(|row| row[1..].iter().copied())
        .collect();
    cross_entropy(shifted, &targets)
}

/// Number of labels that count (≠ −100) after the causal shift, for normalizing an
/// accumulation cycle before its forward passes.
pub fn count_causal_targets(labels: &[i64], seq: usize) -> u64 {
    labels
        .chunks(seq.max(1))
        .flat_map(|row| row.iter().skip(1))
        .filter(|&&l| l != IGNORE_INDEX)
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_ndarray::NdArray;

    type B = NdArray;

    fn t2(v: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn cross_entropy_ignores_minus_100() {
        let logits = t2(vec![2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 1.0, 1.0, 1.0], [3, 3]);
        let parts = cross_entropy(logits, &[0, IGNORE_INDEX, 2]).unwrap();
        assert_eq!(parts.count, 2);
        let expected = -((2f32.exp() / (2f32.exp() + 2.0)).ln()) + 3f32.ln();
        let got = parts.sum.into_scalar();
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn a_label_count_not_matching_the_logits_is_an_error() {
        let err = cross_entropy(t2(vec![0.0; 6], [3, 2]), &[0, 1]).unwrap_err();
        assert_eq!(err.to_string(), "bad input: 2 labels for 3 rows of logits");
        let logits = Tensor::<B, 3>::zeros([2, 3, 4], &Default::default());
        assert!(causal_lm_loss(logits, &[0; 5]).is_err());
    }

    #[test]
    fn bce_matches_the_naive_formula() {
        let x = [0.3f32, -1.2, 2.0, 0.0];
        let y = [1.0f32, 0.0, 0.0, 1.0];
        let parts = bce_with_logits(t2(x.to_vec(), [2, 2]), t2(y.to_vec(), [2, 2]));
        let naive: f32 = x
            .iter()
            .zip(y)
            .map(|(x, y)| {
                let p = 1.0 / (1.0 + (-x).exp());
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .sum();
        assert!((parts.sum.into_scalar() - naive).abs() < 1e-5);
        assert_eq!(parts.count, 4);
    }

    #[test]
    fn causal_loss_shifts_labels() {
        // Row: labels [a, b, c]: position 0 predicts b, position 1 predicts c.
        let logits = Tensor::<B, 3>::from_data(
            TensorData::new(
                vec![0.0f32, 5.0, 0.0, 0.0, 0.0, 5.0, 9.0, 9.0, 9.0],
                [1, 3, 3],
            ),
            &Default::default(),
        );
        let parts = causal_lm_loss(logits, &[IGNORE_INDEX, 1, 2]).unwrap();
        assert_eq!(parts.count, 2);
        let each = -(5f32.exp() / (5f32.exp() + 2.0)).ln();
        assert!((parts.sum.into_scalar() - 2.0 * each).abs() < 1e-5);
        assert_eq!(
            count_causal_targets(&[IGNORE_INDEX, 1, 2, 7, IGNORE_INDEX, 3], 3),
            3
        );
    }
}
