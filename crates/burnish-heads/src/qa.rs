//! Extractive question-answering heads, as transformers' `BertForQuestionAnswering` and
//! `RobertaForQuestionAnswering`: `qa_outputs`, a `Linear(hidden, 2)` over every token,
//! gives the start and end logits of the answer span.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burnish_models::{Autocast, BertConfig, BertModel, ModelError};
use serde_json::Value;

use crate::bert::{LabelNames, autocast_through, head_config, logits, new_head};
use crate::loss::{IGNORE_INDEX, LossParts, cross_entropy};

/// The loss of span logits `[batch, seq, 2]` against `positions` (start and end token per
/// example, row-major `[batch, 2]`), as transformers computes it: the mean of the start
/// and end cross-entropies over the sequence positions. A position outside the sequence
/// is ignored, as transformers' clamp to `ignored_index` does.
///
/// # Errors
/// [`ModelError::Input`] when there are not two positions per example.
pub fn span_loss<B: Backend>(
    logits: Tensor<B, 3>,
    positions: &[i64],
) -> Result<LossParts<B>, ModelError> {
    let [batch, seq, two] = logits.dims();
    if positions.len() != 2 * batch || two != 2 {
        return Err(ModelError::Input(format!(
            "{} span positions for {batch} examples of {two} span logits (2 each expected)",
            positions.len()
        )));
    }
    let side = |i: usize| -> (Tensor<B, 2>, Vec<i64>) {
        let logits = logits.clone().slice([0..batch, 0..seq, i..i + 1]);
        let labels = positions
            .iter()
            .skip(i)
            .step_by(2)
            .map(|&p| {
                if p >= 0 && (p as usize) < seq {
                    p
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        (logits.reshape([batch, seq]), labels)
    };
    let (start, start_labels) = side(0);
    let (end, end_labels) = side(1);
    let start = cross_entropy(start, &start_labels)?;
    let end = cross_entropy(end, &end_labels)?;
    // Both sides count the same examples whenever the positions lie in the sequence
    // (always so for burnish's windows); the start side's count normalizes.
    Ok(LossParts {
        sum: start.sum.add(end.sum).div_scalar(2.0),
        count: start.count,
    })
}

macro_rules! qa_head {
    ($name:ident, $field:ident, $hf:literal) => {
        #[doc = concat!("A ", $hf, "-family encoder with an extractive QA head (transformers' `", $hf, "ForQuestionAnswering`).")]
        #[derive(Module, Debug)]
        pub struct $name<B: Backend> {
            #[doc = concat!("The encoder (HF `", stringify!($field), ".`), without pooler.")]
            pub $field: BertModel<B>,
            /// `Linear(hidden, 2)`: start and end logits per token (HF `qa_outputs`).
            pub qa_outputs: Linear<B>,
        }

        impl<B: Backend> $name<B> {
            /// A new span head, N(0, initializer_range) weights and zero bias.
            pub fn new($field: BertModel<B>, config: &BertConfig, device: &B::Device) -> Self {
                Self {
                    $field,
                    qa_outputs: new_head(config, config.hidden_size, 2, device),
                }
            }

            /// Span logits `[batch, seq, 2]`: start logits at `[.., 0]`, end at `[.., 1]`.
            pub fn forward(
                &self,
                input_ids: Tensor<B, 2, Int>,
                attention_mask: Option<Tensor<B, 2, Int>>,
                token_type_ids: Option<Tensor<B, 2, Int>>,
            ) -> Tensor<B, 3> {
                let out = self
                    .$field
                    .forward(input_ids, attention_mask, token_type_ids);
                logits(
                    &self.qa_outputs,
                    out.last_hidden_state,
                    self.$field.compute_dtype(),
                )
            }

            /// [`span_loss`] of `logits` against start/end `positions`.
            ///
            /// # Errors
            /// [`ModelError::Input`] when there are not two positions per example.
            pub fn loss(
                &self,
                logits: Tensor<B, 3>,
                positions: &[i64],
            ) -> Result<LossParts<B>, ModelError> {
                span_loss(logits, positions)
            }

            /// `config.json` fields transformers needs to load this head: `architectures`
            /// and two labels (`qa_outputs` has `num_labels` = 2 outputs).
            pub fn export_config(&self, base: &Value, _labels: &LabelNames) -> Value {
                head_config(base, &LabelNames::generic(2), "QuestionAnswering")
            }
        }

        autocast_through!($name.$field);
    };
}

qa_head!(BertForQuestionAnswering, bert, "Bert");
qa_head!(RobertaForQuestionAnswering, roberta, "Roberta");

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use burn_ndarray::NdArray;

    use super::*;

    #[test]
    fn span_loss_is_the_mean_of_start_and_end_cross_entropies() {
        let device = Default::default();
        // One example, three positions: start logits [0, 1, 2], end logits [2, 0, 0].
        let data = TensorData::new(vec![0.0f32, 2.0, 1.0, 0.0, 2.0, 0.0], [1, 3, 2]);
        let logits = Tensor::<NdArray, 3>::from_data(data, &device);
        let parts = span_loss(logits.clone(), &[2, 0]).unwrap();
        let lse = |x: &[f64]| x.iter().map(|v| v.exp()).sum::<f64>().ln();
        let start = lse(&[0.0, 1.0, 2.0]) - 2.0;
        let end = lse(&[2.0, 0.0, 0.0]) - 2.0;
        let got = f64::from(parts.sum.into_scalar());
        assert!((got - (start + end) / 2.0).abs() < 1e-6, "{got}");
        assert_eq!(parts.count, 1);
        assert!(span_loss(logits, &[1]).is_err());
    }
}
