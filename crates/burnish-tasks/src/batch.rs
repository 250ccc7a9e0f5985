//! Batches of the token cache on a device.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burnish_data::Batch;

/// A batch moved to a device: what every [`TaskModel`](crate::TaskModel) reads.
#[derive(Debug, Clone)]
pub struct DeviceBatch<B: Backend> {
    /// Token ids `[batch, seq]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// Segment ids `[batch, seq]` (0 for a single sentence).
    pub token_type_ids: Tensor<B, 2, Int>,
    /// Labels as [`Batch::labels`]: one class id per example, or `[batch, seq]` per token
    /// with −100 where nothing is learned.
    pub labels: Vec<i64>,
    /// Float targets `[batch, k]` row-major ([`Batch::targets`]).
    pub targets: Vec<f32>,
    /// Items the loss counts ([`Batch::items`]).
    pub items: u64,
    /// `[batch, seq]`.
    pub shape: [usize; 2],
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
        }
    }
}
