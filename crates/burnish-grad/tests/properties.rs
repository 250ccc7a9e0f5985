//! Property tests of global clipping and accumulation.

use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_ndarray::NdArray;
use std::sync::{Arc, Barrier, Mutex};

use burnish_grad::{GradAccumulator, GradSync, NormType, SyncError, clip_grad_norm, grad_norm};
use proptest::prelude::*;

type B = Autodiff<NdArray>;
type Inner = NdArray;

#[derive(Module, Debug)]
struct Pair<B: Backend> {
    w: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
}

fn pair() -> Pair<B> {
    let d = Default::default();
    Pair {
        w: Param::from_tensor(Tensor::zeros([3, 4], &d)),
        b: Param::from_tensor(Tensor::zeros([5], &d)),
    }
}

fn grads_of(model: &Pair<B>, w: &[f32], b: &[f32]) -> GradientsParams {
    let d = Default::default();
    let mut g = GradientsParams::new();
    g.register::<Inner, 2>(
        model.w.id,
        Tensor::from_data(TensorData::new(w.to_vec(), [3, 4]), &d),
    );
    g.register::<Inner, 1>(
        model.b.id,
        Tensor::from_data(TensorData::new(b.to_vec(), [5]), &d),
    );
    g
}

fn values(model: &Pair<B>, g: &GradientsParams) -> Vec<f32> {
    let mut out = g
        .get::<Inner, 2>(model.w.id)
        .expect("w")
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    out.extend(
        g.get::<Inner, 1>(model.b.id)
            .expect("b")
            .into_data()
            .to_vec::<f32>()
            .expect("f32"),
    );
    out
}

fn grad_strategy() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    let elem = prop_oneof![-1e3f32..1e3, -1.0f32..1.0, -1e-3f32..1e-3];
    (
        proptest::collection::vec(elem.clone(), 12),
        proptest::collection::vec(elem, 5),
    )
}

fn norm_strategy() -> impl Strategy<Value = NormType> {
    prop_oneof![Just(NormType::L2), Just(NormType::Inf)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn clipped_norm_is_at_most_max_norm((w, b) in grad_strategy(), max_norm in 1e-3f64..10.0, norm in norm_strategy()) {
        let model = pair();
        let mut g = grads_of(&model, &w, &b);
        clip_grad_norm(&model, &mut g, max_norm, norm, true).unwrap();
        let after = grad_norm(&model, &g, norm);
        prop_assert!(after <= max_norm * (1.0 + 1e-6), "{after} > {max_norm}");
    }

    #[test]
    fn small_gradients_are_untouched((w, b) in grad_strategy(), factor in 1.01f64..100.0, norm in norm_strategy()) {
        let model = pair();
        let mut g = grads_of(&model, &w, &b);
        let total = grad_norm(&model, &g, norm);
        let returned = clip_grad_norm(&model, &mut g, total * factor + 1e-5, norm, true).unwrap();
        prop_assert_eq!(returned, total);
        let expected: Vec<f32> = w.iter().chain(&b).copied().collect();
        prop_assert_eq!(values(&model, &g), expected);
    }

    #[test]
    fn clipping_twice_equals_clipping_once((w, b) in grad_strategy(), max_norm in 1e-2f64..10.0, norm in norm_strategy()) {
        let model = pair();
        let mut once = grads_of(&model, &w, &b);
        clip_grad_norm(&model, &mut once, max_norm, norm, true).unwrap();
        let once_values = values(&model, &once);
        clip_grad_norm(&model, &mut once, max_norm, norm, true).unwrap();
        // The second pass can only shrink by the 1e-6 guard: relative 1e-6 / max_norm.
        let tol = 2e-6 / max_norm.min(1.0) + 1e-6;
        for (a, b) in values(&model, &once).iter().zip(&once_values) {
            prop_assert!((a - b).abs() as f64 <= tol * b.abs() as f64 + 1e-30, "{a} vs {b}");
        }
    }

    #[test]
    fn norm_scales_with_the_gradients((w, b) in grad_strategy(), c in prop_oneof![-100.0f32..-0.01, 0.01f32..100.0], norm in norm_strategy()) {
        let model = pair();
        let base = grad_norm(&model, &grads_of(&model, &w, &b), norm);
        let scaled_w: Vec<f32> = w.iter().map(|x| x * c).collect();
        let scaled_b: Vec<f32> = b.iter().map(|x| x * c).collect();
        let scaled = grad_norm(&model, &grads_of(&model, &scaled_w, &scaled_b), norm);
        let expected = base * f64::from(c.abs());
        prop_assert!((scaled - expected).abs() <= 1e-5 * expected + 1e-30, "{scaled} vs {expected}");
    }
}

/// Token classification: per-token cross entropy of a linear layer, labels −100 ignored.
/// Returns (sum of token losses, number of counted tokens).
fn token_loss(model: &Linear<B>, x: &[f32], labels: &[i64]) -> (Tensor<B, 1>, u64) {
    let d = Default::default();
    let n = labels.len();
    let x = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [n, 4]), &d);
    let logp = log_softmax(model.forward(x), 1);
    let clamped: Vec<i64> = labels.iter().map(|&l| l.max(0)).collect();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(clamped, [n, 1]), &d);
    let mask: Vec<f32> = labels
        .iter()
        .map(|&l| if l == -100 { 0.0 } else { 1.0 })
        .collect();
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, 1]), &d);
    let picked = logp.gather(1, idx).mul(mask).sum().neg();
    (picked, labels.iter().filter(|&&l| l != -100).count() as u64)
}

fn linear_grads(model: &Linear<B>, g: &GradientsParams) -> Vec<f32> {
    let mut out = g
        .get::<Inner, 2>(model.weight.id)
        .expect("w")
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    let bias = model.bias.as_ref().expect("bias");
    out.extend(
        g.get::<Inner, 1>(bias.id)
            .expect("b")
            .into_data()
            .to_vec::<f32>()
            .expect("f32"),
    );
    out
}

fn batch_strategy() -> impl Strategy<Value = (Vec<f32>, Vec<i64>, Vec<usize>)> {
    (4usize..24).prop_flat_map(|n| {
        (
            proptest::collection::vec(-2.0f32..2.0, n * 4),
            proptest::collection::vec(prop_oneof![3 => 0i64..3, 1 => Just(-100i64)], n),
            proptest::collection::vec(1usize..6, 1..5),
        )
    })
}

/// Splits `0..n` into consecutive chunks with the given sizes (the last takes the rest).
fn chunks(n: usize, sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for &s in sizes {
        if start >= n {
            break;
        }
        out.push(start..(start + s).min(n));
        start += s;
    }
    if start < n {
        out.push(start..n);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn accumulated_micro_batches_equal_the_union((x, labels, sizes) in batch_strategy(), use_mean in any::<bool>()) {
        let total: u64 = labels.iter().filter(|&&l| l != -100).count() as u64;
        prop_assume!(total > 0);
        let model: Linear<B> = LinearConfig::new(4, 3).init(&Default::default());

        let (sum, count) = token_loss(&model, &x, &labels);
        let union = GradientsParams::from_grads(sum.div_scalar(count as f64).backward(), &model);

        let mut acc = GradAccumulator::new();
        for range in chunks(labels.len(), &sizes) {
            let (sum, items) = token_loss(&model, &x[range.start * 4..range.end * 4], &labels[range]);
            if use_mean && items > 0 {
                let grads = GradientsParams::from_grads(sum.div_scalar(items as f64).backward(), &model);
                acc.add_mean(&model, grads, items);
            } else {
                acc.add_sum(&model, GradientsParams::from_grads(sum.backward(), &model), items);
            }
        }
        prop_assert_eq!(acc.items(), total);
        let accumulated = acc.finish(&model).unwrap();
        for (a, b) in linear_grads(&model, &accumulated).iter().zip(linear_grads(&model, &union)) {
            prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn an_empty_cycle_is_an_error_not_nan() {
    let model: Linear<B> = LinearConfig::new(4, 3).init(&Default::default());
    let (sum, items) = token_loss(&model, &[0.5; 8], &[-100, -100]);
    assert_eq!(items, 0);
    let mut acc = GradAccumulator::new();
    acc.add_sum(
        &model,
        GradientsParams::from_grads(sum.backward(), &model),
        items,
    );
    let err = acc.finish(&model).unwrap_err();
    assert_eq!(err, burnish_grad::GradError::NoItems { micro_batches: 1 });
    assert_eq!(acc.micro_batches(), 0, "reset after finish");
}

/// A [`GradSync`] over threads of this test: each worker adds its tensor into one shared
/// buffer, and all read the sum once everyone has added.
struct ThreadSum {
    rank: usize,
    world: usize,
    shared: Arc<(Mutex<Vec<f32>>, Barrier)>,
}

impl GradSync<Inner> for ThreadSum {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, t: Tensor<Inner, 1>) -> Result<Tensor<Inner, 1>, SyncError> {
        let mine = t.into_data().to_vec::<f32>().expect("f32");
        let (sum, barrier) = &*self.shared;
        {
            let mut sum = sum.lock().expect("lock");
            sum.resize(mine.len(), 0.0);
            for (s, m) in sum.iter_mut().zip(&mine) {
                *s += m;
            }
        }
        barrier.wait();
        let total = sum.lock().expect("lock").clone();
        let n = total.len();
        Ok(Tensor::from_data(
            TensorData::new(total, [n]),
            &Default::default(),
        ))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Micro-batches dealt round-robin to 1-4 workers (some with none at all), each summing
    /// its own and finishing with `finish_synced`: every worker gets the gradient of the
    /// mean over the union, the total item count and the total loss.
    #[test]
    fn synced_workers_equal_one_accumulator((x, labels, sizes) in batch_strategy(), world in 1usize..5) {
        let total: u64 = labels.iter().filter(|&&l| l != -100).count() as u64;
        prop_assume!(total > 0);
        let model: Linear<B> = LinearConfig::new(4, 3).init(&Default::default());
        let (sum, count) = token_loss(&model, &x, &labels);
        let loss_sum = sum.clone().into_scalar() as f64;
        let union = GradientsParams::from_grads(sum.div_scalar(count as f64).backward(), &model);
        let union = linear_grads(&model, &union);
        let parts = chunks(labels.len(), &sizes);
        let shared = Arc::new((Mutex::new(Vec::new()), Barrier::new(world)));
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..world).map(|rank| {
                let (model, shared, parts, x, labels) = (model.clone(), shared.clone(), &parts, &x, &labels);
                scope.spawn(move || {
                    let mut acc = GradAccumulator::new();
                    let mut extras = [0.0];
                    for range in parts.iter().skip(rank).step_by(world) {
                        let (sum, items) = token_loss(&model, &x[range.start * 4..range.end * 4], &labels[range.clone()]);
                        extras[0] += sum.clone().into_scalar() as f64;
                        acc.add_sum(&model, GradientsParams::from_grads(sum.backward(), &model), items);
                    }
                    let mut sync = ThreadSum { rank, world, shared };
                    let (grads, items) = acc.finish_synced(&model, &mut sync, &mut extras).expect("synced");
                    (linear_grads(&model, &grads), items, extras[0])
                })
            }).collect();
            handles.into_iter().map(|h| h.join().expect("worker")).collect()
        });
        for (grads, items, loss) in &results {
            prop_assert_eq!(*items, total);
            prop_assert!((loss - loss_sum).abs() <= 1e-4 * (1.0 + loss_sum.abs()), "{loss} vs {loss_sum}");
            prop_assert_eq!(grads, &results[0].0, "workers disagree");
            for (a, b) in grads.iter().zip(&union) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
