//! The training set of a run as [`TrainData`]: batches planned per epoch and read from the
//! token cache on demand, uploaded to the device.

use burn::tensor::backend::Backend;
use burnish_data::{TokenCache, sample_order};
use burnish_trainer::{BoxError, TrainData};

use burnish_models::InputLimits;
use burnish_parallel::shard_range;

use crate::{DeviceBatch, TaskError};

/// Batches of a [`TokenCache`] in a seeded order (shuffled per epoch, optionally grouped by
/// length), read by position so a resumed run starts mid-epoch without reading the
/// batches it skips.
///
/// The order is a function of the seed and the epoch only, so a run resumed from a
/// checkpoint sees exactly the batches the uninterrupted run saw.
#[derive(Debug)]
pub struct CacheData<'a, B: Backend> {
    cache: &'a TokenCache,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    lengths: Option<Vec<u32>>,
    pad_id: u32,
    device: B::Device,
    plan: Option<(usize, Vec<usize>)>,
    limits: Option<InputLimits>,
    shard: (usize, usize),
    packing: Option<usize>,
}

impl<'a, B: Backend> CacheData<'a, B> {
    /// Batches of `batch_size` examples of `cache`, padded with `pad_id`, shuffled with
    /// `seed` (when `shuffle`), uploaded to `device`.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] for a zero batch size.
    pub fn new(
        cache: &'a TokenCache,
        batch_size: usize,
        pad_id: u32,
        seed: u64,
        shuffle: bool,
        device: &B::Device,
    ) -> Result<Self, TaskError> {
        if batch_size == 0 {
            return Err(TaskError::Invalid {
                field: "batch_size".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(CacheData {
            cache,
            batch_size,
            seed,
            shuffle,
            lengths: None,
            pad_id,
            device: device.clone(),
            plan: None,
            limits: None,
            shard: (0, 1),
            packing: None,
        })
    }

    /// Checks every batch against a model's [`TaskModel::input_limits`](crate::TaskModel::input_limits) before upload
    /// (an out-of-range id fails as [`TaskError::Input`] instead of reaching the device).
    pub fn with_limits(mut self, limits: Option<InputLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// Packs the examples of each micro-batch into rows of at most `max_length` tokens
    /// ([`TokenCache::packed_batch`]): the same examples per step as unpacked, in fewer
    /// and fuller rows. For causal-LM caches and models that keep the examples of a row
    /// apart (burnish's Llama family).
    ///
    /// # Errors
    /// [`TaskError::Invalid`] for a zero `max_length`; [`TaskError::Data`] when the cache
    /// does not hold causal-LM rows.
    pub fn packed(mut self, max_length: usize) -> Result<Self, TaskError> {
        if max_length == 0 {
            return Err(TaskError::Invalid {
                field: "max_length".into(),
                message: "must be at least 1 to pack rows".into(),
            });
        }
        // An empty batch tells whether the cache can be packed, before any step runs.
        self.cache.packed_batch(&[], self.pad_id, max_length)?;
        self.packing = Some(max_length);
        Ok(self)
    }

    /// Batches examples of similar length together (less padding), still seeded.
    ///
    /// # Errors
    /// [`TaskError::Data`] when the cache's records cannot be read.
    pub fn grouped_by_length(mut self) -> Result<Self, TaskError> {
        self.lengths = Some(self.cache.lengths()?);
        self.plan = None;
        Ok(self)
    }

    /// Makes this the data of worker `rank` of `world` data-parallel workers: each
    /// micro-batch of the one-worker order is split into contiguous parts
    /// ([`shard_range`](burnish_parallel::shard_range)), and this worker trains on its part.
    /// The examples of every optimizer step are the same for any number of workers, so the
    /// run computes what one worker would, and every example is seen exactly once per epoch
    /// over all workers. A part is empty when a batch has fewer rows than workers.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] when `rank` is not below `world`.
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Self, TaskError> {
        if rank >= world {
            return Err(TaskError::Invalid {
                field: "rank".into(),
                message: format!("{rank} is not below the {world} worker(s)"),
            });
        }
        self.shard = (rank, world);
        Ok(self)
    }

    /// The examples (cache indices) this worker trains on in micro-batch `index` of
    /// `epoch`, in order.
    ///
    /// # Errors
    /// A message when the micro-batch does not exist.
    pub fn local_indices(&mut self, epoch: usize, index: usize) -> Result<Vec<usize>, BoxError> {
        let (size, (rank, world)) = (self.batch_size, self.shard);
        let batch = self
            .plan(epoch)
            .chunks(size)
            .nth(index)
            .ok_or_else(|| format!("batch {index} of epoch {epoch} does not exist"))?;
        Ok(batch[shard_range(batch.len(), rank, world)].to_vec())
    }

    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.cache.len().div_ceil(self.batch_size)
    }

    /// The example order of `epoch`, computed once per epoch.
    fn plan(&mut self, epoch: usize) -> &[usize] {
        if self.plan.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let order = sample_order(
                self.cache.len(),
                self.batch_size,
                self.seed,
                epoch as u64,
                self.shuffle,
                self.lengths.as_deref(),
            );
            self.plan = Some((epoch, order));
        }
        self.plan.as_ref().map_or(&[], |(_, o)| o.as_slice())
    }
}

impl<B: Backend> TrainData for CacheData<'_, B> {
    type Batch = DeviceBatch<B>;

    fn epoch_len(&mut self, epoch: usize) -> Result<usize, BoxError> {
        Ok(self.plan(epoch).len().div_ceil(self.batch_size))
    }

    fn batch(&mut self, epoch: usize, index: usize) -> Result<DeviceBatch<B>, BoxError> {
        self.local_batch(epoch, index)?.ok_or_else(|| {
            let (rank, world) = self.shard;
            format!("worker {rank} of {world} has no row of batch {index} of epoch {epoch}").into()
        })
    }

    fn local_batch(
        &mut self,
        epoch: usize,
        index: usize,
    ) -> Result<Option<DeviceBatch<B>>, BoxError> {
        let indices = self.local_indices(epoch, index)?;
        if indices.is_empty() {
            return Ok(None);
        }
        let batch = match self.packing {
            Some(max_length) => self.cache.packed_batch(&indices, self.pad_id, max_length)?,
            None => self.cache.batch(&indices, self.pad_id)?,
        };
        Ok(Some(DeviceBatch::checked(
            &batch,
            self.limits,
            &self.device,
        )?))
    }
}
