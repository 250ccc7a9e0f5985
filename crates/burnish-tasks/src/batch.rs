//! Batches of the token cache on a device.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_data::Batch;
use burnish_models::InputLimits;

use crate::TaskError;

/// A batch moved to a device: what every [`TaskModel`](crate::TaskModel) reads.
#[derive(Debug, Clone)]
pub struct DeviceBatch<B: Backend> {
    /// Token ids `[batch, seq]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for tokens, 0 for padding; in packed rows the example number 1, 2, … of each
    /// token ([`TokenCache::packed_batch`](burnish_data::TokenCache::packed_batch)).
    pub attention_mask: Tensor<B, 2, Int>,
    /// Segment ids `[batch, seq]` (0 for a single sentence).
    pub token_type_ids: Tensor<B, 2, Int>,
    /// Labels as [`Batch::labels`]: one class id per example, a start and an end per
    /// example (spans), or `[batch, seq]` per token
    /// with −100 where nothing is learned.
    pub labels: Vec<i64>,
    /// Float targets `[batch, k]` row-major ([`Batch::targets`]).
    pub targets: Vec<f32>,
    /// Items the loss counts ([`Batch::items`]).
    pub items: u64,
    /// `[batch, seq]`.
    pub shape: [usize; 2],
    /// Position ids `[batch, seq]` of packed rows (restarting per example); `None` when
    /// each row is one example at positions `0..seq`.
    pub position_ids: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> DeviceBatch<B> {
    /// Uploads `batch` to `device`.
    pub fn new(batch: &Batch, device: &B::Device) -> Self {
        let shape = batch.encoded.shape;
        let ints = |v: &[i64]| Tensor::from_data(TensorData::new(v.to_vec(), shape), device);
        DeviceBatch {
            input_ids: ints(&batch.encoded.input_ids),
            attention_mask: ints(&batch.encoded.attention_mask),
            token_type_ids: ints(&batch.encoded.token_type_ids),
            labels: batch.labels.clone(),
            targets: batch.targets.clone(),
            items: batch.items,
            shape,
            position_ids: (!batch.position_ids.is_empty()).then(|| ints(&batch.position_ids)),
        }
    }

    /// Uploads `batch` after checking its ids and length against `limits` (a model's
    /// [`TaskModel::input_limits`](crate::TaskModel::input_limits)): an id beyond an
    /// embedding table never reaches the device.
    ///
    /// # Errors
    /// [`TaskError::Input`] naming the examples of the batch.
    pub fn checked(
        batch: &Batch,
        limits: Option<InputLimits>,
        device: &B::Device,
    ) -> Result<Self, TaskError> {
        let e = &batch.encoded;
        let [rows, seq] = e.shape;
        let cells = rows * seq;
        let fits = e.input_ids.len() == cells
            && e.attention_mask.len() == cells
            && e.token_type_ids.len() == cells
            && (batch.position_ids.is_empty() || batch.position_ids.len() == cells)
            && (batch.labels.is_empty()
                || batch.labels.len() == rows
                || batch.labels.len() == 2 * rows
                || batch.labels.len() == cells)
            && (batch.targets.is_empty() || batch.targets.len().is_multiple_of(rows.max(1)));
        if !fits {
            return Err(TaskError::Input {
                examples: batch.indices.clone(),
                source: burnish_models::ModelError::Input(format!(
                    "a batch of shape {rows} × {seq} with {} ids, {} labels and {} targets",
                    e.input_ids.len(),
                    batch.labels.len(),
                    batch.targets.len()
                )),
            });
        }
        if let Some(limits) = limits {
            limits
                .check(&e.input_ids, &e.token_type_ids, e.shape)
                .map_err(|source| TaskError::Input {
                    examples: batch.indices.clone(),
                    source,
                })?;
        }
        Ok(Self::new(batch, device))
    }
}
