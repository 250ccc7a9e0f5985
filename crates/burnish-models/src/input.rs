//! What an embedding lookup can take, checked on the host before a batch is uploaded: an
//! out-of-range id panics inside a CPU backend and reads garbage on a GPU.

use burn::tensor::backend::Backend;

use crate::{BertModel, DebertaV2Model, LlamaForCausalLm, ModelError, ModernBertModel};

/// The ranges a model's embedding tables cover.
///
/// ```
/// use burnish_models::InputLimits;
/// let limits = InputLimits { vocab_size: 10, type_vocab_size: Some(2), max_positions: Some(4) };
/// assert!(limits.check(&[1, 9, 0, 0], &[0, 1, 1, 1], [1, 4]).is_ok());
/// let err = limits.check(&[1, 10], &[0, 0], [1, 2]).unwrap_err();
/// assert_eq!(err.to_string(), "bad input: token id 10 at [0, 1] is not below vocab_size 10");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Rows of the token embedding table: every id must be below it.
    pub vocab_size: usize,
    /// Rows of the segment embedding table; `None` when the model has none.
    pub type_vocab_size: Option<usize>,
    /// The longest sequence the position table covers; `None` when positions are computed
    /// (rotary embeddings).
    pub max_positions: Option<usize>,
}

impl InputLimits {
    /// Checks `[batch, seq]` row-major ids and segment ids (`token_type_ids` may be empty).
    ///
    /// # Errors
    /// [`ModelError::Input`] naming the first id out of range, or the sequence length.
    pub fn check(
        &self,
        input_ids: &[i64],
        token_type_ids: &[i64],
        [_, seq]: [usize; 2],
    ) -> Result<(), ModelError> {
        if let Some(max) = self.max_positions
            && seq > max
        {
            return Err(ModelError::Input(format!(
                "a sequence of {seq} tokens is longer than the {max} positions of the model"
            )));
        }
        let at = |i: usize| format!("[{}, {}]", i / seq.max(1), i % seq.max(1));
        let vocab = self.vocab_size as i64;
        if let Some(i) = input_ids.iter().position(|&id| !(0..vocab).contains(&id)) {
            return Err(ModelError::Input(format!(
                "token id {} at {} is not below vocab_size {vocab}",
                input_ids[i],
                at(i)
            )));
        }
        if let Some(types) = self.type_vocab_size.map(|t| t as i64)
            && let Some(i) = token_type_ids
                .iter()
                .position(|&t| !(0..types).contains(&t))
        {
            return Err(ModelError::Input(format!(
                "segment id {} at {} is not below type_vocab_size {types}",
                token_type_ids[i],
                at(i)
            )));
        }
        Ok(())
    }
}

impl<B: Backend> BertModel<B> {
    /// The ranges of this encoder's tables (RoBERTa's positions start after the padding
    /// id).
    pub fn input_limits(&self) -> InputLimits {
        let e = &self.embeddings;
        let offset = e.padding_idx().map_or(0, |pad| pad + 1);
        InputLimits {
            vocab_size: e.word_embeddings.weight.dims()[0],
            type_vocab_size: e.token_type_embeddings.as_ref().map(|t| t.weight.dims()[0]),
            max_positions: Some(e.position_embeddings.weight.dims()[0].saturating_sub(offset)),
        }
    }
}

impl<B: Backend> DebertaV2Model<B> {
    /// The ranges of this encoder's tables (positions only with absolute embeddings).
    pub fn input_limits(&self) -> InputLimits {
        let e = &self.embeddings;
        InputLimits {
            vocab_size: e.word_embeddings.weight.dims()[0],
            type_vocab_size: e.token_type_embeddings.as_ref().map(|t| t.weight.dims()[0]),
            max_positions: e.position_embeddings.as_ref().map(|t| t.weight.dims()[0]),
        }
    }
}

impl<B: Backend> ModernBertModel<B> {
    /// The ranges of this encoder's tables: the vocabulary only (rotary positions).
    pub fn input_limits(&self) -> InputLimits {
        InputLimits {
            vocab_size: self.embeddings.tok_embeddings.weight.dims()[0],
            type_vocab_size: None,
            max_positions: None,
        }
    }
}

impl<B: Backend> LlamaForCausalLm<B> {
    /// The ranges of this decoder's tables: the vocabulary only (rotary positions are
    /// computed).
    pub fn input_limits(&self) -> InputLimits {
        InputLimits {
            vocab_size: self.model.embed_tokens.weight.dims()[0],
            type_vocab_size: None,
            max_positions: None,
        }
    }
}
