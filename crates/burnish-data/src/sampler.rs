//! Which examples go into which batch, per epoch: a pure function of the seed and the
//! epoch, so a resumed run finds its place by position alone.

use crate::epoch_order;

/// Length-grouped order (transformers' `LengthGroupedSampler`): a seeded shuffle cut into
/// mega-batches of `min(n / (4·batch_size), 50)·batch_size` examples, each sorted by length,
/// longest first, so batches hold examples of similar length and pad less. The mega-batch
/// holding the longest example comes first, so an out-of-memory shows on the first step.
pub fn grouped_order(lengths: &[u32], batch_size: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let n = lengths.len();
    let batch_size = batch_size.max(1);
    let mult = (n / (batch_size * 4)).clamp(1, 50);
    let mega = mult * batch_size;
    let mut order = epoch_order(n, seed, epoch, true);
    for chunk in order.chunks_mut(mega) {
        // Stable sort: equal lengths keep their shuffled order.
        chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    let longest = order
        .chunks(mega)
        .enumerate()
        .max_by_key(|(k, c)| (c.first().map_or(0, |&i| lengths[i]), std::cmp::Reverse(*k)))
        .map_or(0, |(k, _)| k);
    if longest > 0 {
        let (head, tail) = order.split_at_mut(longest * mega);
        let width = mega.min(tail.len());
        head[..width].swap_with_slice(&mut tail[..width]);
    }
    order
}

/// The example order of one epoch: [`epoch_order`], or [`grouped_order`] when `lengths`
/// is given and shuffling is on. Batch `i` is `order[i·batch_size..(i+1)·batch_size]`
/// (use `chunks`); the last batch may be smaller. One flat vector, so an epoch of `n`
/// examples costs `8n` bytes whatever the batch size.
pub fn sample_order(
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    lengths: Option<&[u32]>,
) -> Vec<usize> {
    match lengths {
        Some(lengths) if shuffle => grouped_order(lengths, batch_size, seed, epoch),
        _ => epoch_order(n, seed, epoch, shuffle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn grouped_is_a_seeded_permutation(lengths in proptest::collection::vec(1u32..300, 0..500), batch in 1usize..40, seed: u64, epoch in 0u64..5) {
            let order = grouped_order(&lengths, batch, seed, epoch);
            prop_assert_eq!(&order, &grouped_order(&lengths, batch, seed, epoch));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..lengths.len()).collect::<Vec<_>>());
            if let Some(max) = lengths.iter().max() {
                prop_assert_eq!(lengths[order[0]], *max);
            }
        }

        #[test]
        fn batches_cover_every_example_once(n in 0usize..300, batch in 1usize..33, seed: u64, shuffle: bool) {
            let order = sample_order(n, batch, seed, 0, shuffle, None);
            let batches: Vec<&[usize]> = order.chunks(batch).collect();
            prop_assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= batch));
            let mut all: Vec<usize> = batches.concat();
            all.sort_unstable();
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn grouping_cuts_padding() {
        // Lengths 1..=2000 in a random order: grouped batches pad far less.
        let lengths: Vec<u32> = epoch_order(2000, 1, 0, true)
            .into_iter()
            .map(|i| i as u32 + 1)
            .collect();
        let padding = |order: Vec<usize>| -> u64 {
            order
                .chunks(16)
                .map(|b| {
                    let max = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                    b.iter().map(|&i| u64::from(max - lengths[i])).sum::<u64>()
                })
                .sum()
        };
        let plain = padding(sample_order(2000, 16, 3, 0, true, None));
        let grouped = padding(sample_order(2000, 16, 3, 0, true, Some(&lengths)));
        assert!(grouped * 10 < plain, "grouped {grouped}, plain {plain}");
    }
}
