//! BERT, RoBERTa (and XLM-RoBERTa) and DistilBERT encoders (post-LayerNorm), as
//! transformers' `BertModel`, `RobertaModel` and `DistilBertModel`.

use crate::random::Dropout;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor};

use crate::config::{Activation, BertConfig, BertFlavor};
use crate::layers::{embedding, layer_norm, linear};
use crate::ops::{
    activate, attention, embed, frozen_where, layer_norm_f32, linear_in, merge_heads, split_heads,
};
use crate::{Autocast, ModelError};

/// Word, position and token-type embeddings, summed, normalized and dropped out.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `[vocab_size, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `[max_position_embeddings, hidden]`.
    pub position_embeddings: Embedding<B>,
    /// `[type_vocab_size, hidden]` (absent for DistilBERT, which has no token types).
    pub token_type_embeddings: Option<Embedding<B>>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
    /// RoBERTa's padding index (positions start after it); `None` for BERT.
    padding_idx: Option<usize>,
    /// The padding token, whose word-embedding row (and RoBERTa's position row) gets no
    /// gradient, as torch's `nn.Embedding(padding_idx=pad_token_id)`.
    pad_token_id: usize,
}

/// Query, key and value projections (HF `attention.self`).
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// Query projection.
    pub query: Linear<B>,
    /// Key projection.
    pub key: Linear<B>,
    /// Value projection.
    pub value: Linear<B>,
    dropout: Dropout,
    heads: usize,
}

/// Projection, dropout, residual and LayerNorm after a sub-layer (HF `output`).
#[derive(Module, Debug)]
pub struct BertResidual<B: Backend> {
    /// Output projection.
    pub dense: Linear<B>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

/// Self-attention with its output block (HF `attention`).
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// HF `attention.self`.
    pub self_attn: BertSelfAttention<B>,
    /// HF `attention.output`.
    pub output: BertResidual<B>,
}

/// The feed-forward up-projection (HF `intermediate`).
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// Up-projection.
    pub dense: Linear<B>,
}

/// One encoder layer (HF `encoder.layer.N`).
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Self-attention block.
    pub attention: BertAttention<B>,
    /// Feed-forward up-projection.
    pub intermediate: BertIntermediate<B>,
    /// Feed-forward down-projection with residual and LayerNorm.
    pub output: BertResidual<B>,
    #[module(skip)]
    activation: Activation,
}

/// The stack of layers (HF `encoder`).
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// Layers, HF `encoder.layer.N`.
    pub layer: Vec<BertLayer<B>>,
}

/// `act(Linear(h[:, 0]))`: BERT's `pooler` (tanh), or DistilBERT's `pre_classifier`
/// (ReLU).
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    /// Pooler projection.
    pub dense: Linear<B>,
    #[module(skip)]
    activation: Activation,
}

/// A BERT-family encoder. Parameter paths follow the Hugging Face names, with `self_attn`
/// for `self` and `layer_norm` for `LayerNorm` (burn's `gamma`/`beta` for `weight`/`bias`).
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Encoder layers.
    pub encoder: BertEncoder<B>,
    /// Pooler (absent when built without one).
    pub pooler: Option<BertPooler<B>>,
    /// The dtype matmuls compute in (see [`BertModel::with_compute_dtype`]).
    #[module(skip)]
    compute: FloatDType,
}

/// What [`BertModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct BertOutput<B: Backend> {
    /// `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`, when the model has a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
}

fn dropout(p: f64) -> Dropout {
    Dropout::new(p)
}

impl BertConfig {
    /// Builds the encoder with transformers' initialization (to be overwritten by a
    /// loader); `with_pooler` adds the pooler.
    ///
    /// # Errors
    /// [`ModelError`] when the config does not validate.
    pub fn init<B: Backend>(
        &self,
        with_pooler: bool,
        device: &B::Device,
    ) -> Result<BertModel<B>, ModelError> {
        self.validate()?;
        let h = self.hidden_size;
        let std = self.initializer_range;
        let activation = self.activation()?;
        let residual = |d_in: usize| BertResidual {
            dense: linear(d_in, h, true, std, device),
            layer_norm: layer_norm(h, self.layer_norm_eps, device),
            dropout: dropout(self.hidden_dropout_prob),
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attn: BertSelfAttention {
                        query: linear(h, h, true, std, device),
                        key: linear(h, h, true, std, device),
                        value: linear(h, h, true, std, device),
                        dropout: dropout(self.attention_probs_dropout_prob),
                        heads: self.num_attention_heads,
                    },
                    output: residual(h),
                },
                intermediate: BertIntermediate {
                    dense: linear(h, self.intermediate_size, true, std, device),
                },
                output: residual(self.intermediate_size),
                activation,
            })
            .collect();
        Ok(BertModel {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(self.vocab_size, h, std, device),
                position_embeddings: embedding(self.max_position_embeddings, h, std, device),
                token_type_embeddings: (self.flavor != BertFlavor::DistilBert)
                    .then(|| embedding(self.type_vocab_size, h, std, device)),
                layer_norm: layer_norm(h, self.layer_norm_eps, device),
                dropout: dropout(self.hidden_dropout_prob),
                padding_idx: match self.flavor {
                    BertFlavor::Bert | BertFlavor::DistilBert => None,
                    BertFlavor::Roberta => Some(self.pad_token_id.unwrap_or(1)),
                },
                // transformers' defaults when config.json has none: BERT 0, RoBERTa 1.
                pad_token_id: self.pad_token_id.unwrap_or(match self.flavor {
                    BertFlavor::Bert | BertFlavor::DistilBert => 0,
                    BertFlavor::Roberta => 1,
                }),
            },
            encoder: BertEncoder { layer: layers },
            // Not burn's lazy initializer (its generator is process-wide): a checkpoint
            // without a pooler (DistilBERT's `pre_classifier`) keeps these values, which
            // must follow the run's seed whatever else the process runs.
            pooler: with_pooler.then(|| BertPooler {
                dense: crate::random::optional_linear(h, h, true, std, device),
                activation: match self.flavor {
                    BertFlavor::DistilBert => Activation::Relu,
                    _ => Activation::Tanh,
                },
            }),
            compute: FloatDType::F32,
        })
    }
}

impl<B: Backend> BertEmbeddings<B> {
    fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = match self.padding_idx {
            None => Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                .unsqueeze::<2>()
                .expand([batch, seq]),
            // transformers' create_position_ids_from_input_ids: pads keep padding_idx, real
            // tokens count from padding_idx + 1.
            Some(pad) => {
                let mask = input_ids.clone().not_equal_elem(pad as i64).int();
                mask.clone().cumsum(1).mul(mask).add_scalar(pad as i64)
            }
        };
        let is_pad = input_ids.clone().equal_elem(self.pad_token_id as i64);
        // Padding rows take part in the forward pass but learn nothing from it (a QA loss
        // reads the outputs at padded positions too).
        let frozen_at_pads = |x: Tensor<B, 3>| frozen_where(x, is_pad.clone());
        let positions = embed(&self.position_embeddings, positions);
        let positions = match self.padding_idx {
            Some(_) => frozen_at_pads(positions),
            None => positions,
        };
        let x = frozen_at_pads(embed(&self.word_embeddings, input_ids));
        let x = match &self.token_type_embeddings {
            Some(table) => {
                let types = token_type_ids.unwrap_or_else(|| Tensor::zeros([batch, seq], &device));
                x.add(embed(table, types))
            }
            None => x,
        };
        let x = x.add(positions);
        self.dropout.forward(layer_norm_f32(&self.layer_norm, x))
    }
}

impl<B: Backend> BertEmbeddings<B> {
    /// RoBERTa's padding id (positions start after it); `None` for BERT.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }
}

impl<B: Backend> BertSelfAttention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, Bool>>,
        cx: FloatDType,
    ) -> Tensor<B, 3> {
        let d = x.dims()[2] / self.heads;
        let split = |t: Tensor<B, 3>| split_heads(t, self.heads, d);
        let q = split(linear_in(&self.query, x.clone(), cx));
        let k = split(linear_in(&self.key, x.clone(), cx));
        let v = split(linear_in(&self.value, x, cx));
        merge_heads(attention(q, k, v, mask, &self.dropout))
    }
}

impl<B: Backend> BertResidual<B> {
    /// The residual stream stays float32: the projection is cast up before the sum.
    fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>, cx: FloatDType) -> Tensor<B, 3> {
        let x = self.dropout.forward(linear_in(&self.dense, x, cx));
        layer_norm_f32(&self.layer_norm, x.cast(FloatDType::F32).add(residual))
    }
}

impl<B: Backend> BertLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, Bool>>,
        cx: FloatDType,
    ) -> Tensor<B, 3> {
        let attn = self.attention.self_attn.forward(x.clone(), mask, cx);
        let x = self.attention.output.forward(attn, x, cx);
        let inner = activate(
            self.activation,
            linear_in(&self.intermediate.dense, x.clone(), cx),
        );
        self.output.forward(inner, x, cx)
    }
}

impl<B: Backend> BertModel<B> {
    /// Encodes a batch. `attention_mask` is 1 for tokens and 0 for padding (all ones when
    /// `None`); `token_type_ids` default to 0 (DistilBERT ignores them).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> BertOutput<B> {
        let [batch, seq] = input_ids.dims();
        let mask = attention_mask.map(|m| m.equal_elem(0).reshape([batch, 1, 1, seq]));
        let mut x = self.embeddings.forward(input_ids, token_type_ids);
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask.clone(), self.compute);
        }
        let pooler_output = self.pooler.as_ref().map(|p| {
            let [_, _, hidden] = x.dims();
            let first = x.clone().slice([0..batch, 0..1]).reshape([batch, hidden]);
            activate(p.activation, linear_in(&p.dense, first, self.compute)).cast(FloatDType::F32)
        });
        BertOutput {
            last_hidden_state: x,
            pooler_output,
        }
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }
}

/// Embeddings, LayerNorm, softmax and the residual stream stay float32.
impl<B: Backend> Autocast for BertModel<B> {
    fn with_compute_dtype(mut self, dtype: FloatDType) -> Self {
        self.compute = dtype;
        self
    }

    fn compute_dtype(&self) -> FloatDType {
        self.compute
    }
}
