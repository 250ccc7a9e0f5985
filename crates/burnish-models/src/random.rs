//! Randomness owned by the calling thread: dropout masks and new-layer initialization drawn
//! from a per-thread generator that [`seed_thread`] sets.
//!
//! burn's own `Dropout` and initializers draw from one generator per backend *type*, shared
//! by every thread of the process: two trainers in one process (data-parallel workers on
//! threads, or tests run side by side) then take numbers from each other's stream, and a
//! run's dropout masks depend on what else ran at the time. Here each thread has its own
//! ChaCha8 stream, so a step seeded with `seed_thread(s)` draws the same masks whatever the
//! other threads do, on every backend (the masks are made on the host and uploaded).
//!
//! ```
//! use burn::tensor::Tensor;
//! use burn_ndarray::NdArray;
//! use burnish_models::random::{Dropout, seed_thread};
//! type B = burn::backend::Autodiff<NdArray>;
//!
//! let device = Default::default();
//! let x = Tensor::<B, 2>::ones([4, 8], &device);
//! let dropout = Dropout::new(0.5);
//! seed_thread(7);
//! let a = dropout.forward(x.clone()).into_data();
//! seed_thread(7);
//! let b = dropout.forward(x).into_data();
//! assert_eq!(a, b);
//! ```

use std::cell::RefCell;
use std::thread::LocalKey;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

thread_local! {
    // A thread that never called `seed_thread` still gets a fixed, reproducible stream.
    static GENERATOR: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0));
    // Layers a checkpoint may or may not supply ([`optional_linear`]): a second stream of
    // the same seed, so that drawing one does not shift the draws after it.
    static SIDE: RefCell<ChaCha8Rng> = RefCell::new(side_stream(0));
}

fn side_stream(seed: u64) -> ChaCha8Rng {
    let mut generator = ChaCha8Rng::seed_from_u64(seed);
    generator.set_stream(1);
    generator
}

/// Restarts this thread's generators at `seed`: the dropout masks and new-layer weights that
/// this thread draws next are a function of `seed` alone.
pub fn seed_thread(seed: u64) {
    GENERATOR.with(|g| *g.borrow_mut() = ChaCha8Rng::seed_from_u64(seed));
    SIDE.with(|g| *g.borrow_mut() = side_stream(seed));
}

fn with_generator<T>(f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
    GENERATOR.with(|g| f(&mut g.borrow_mut()))
}

/// A float32 tensor of `shape` with N(0, std) values from this thread's generator (Box-Muller
/// pairs), on `device`: the initialization of a new task head.
pub fn normal<B: Backend, const D: usize>(
    shape: [usize; D],
    std: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    normal_from(&GENERATOR, shape, std, device)
}

fn normal_from<B: Backend, const D: usize>(
    generator: &'static LocalKey<RefCell<ChaCha8Rng>>,
    shape: [usize; D],
    std: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product::<usize>();
    let values = generator.with(|rng| {
        let rng = &mut *rng.borrow_mut();
        let mut values = Vec::with_capacity(n + 1);
        while values.len() < n {
            // 1 - u lies in (0, 1], so the logarithm is finite.
            let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt() * std;
            let angle = std::f64::consts::TAU * rng.random::<f64>();
            values.push((radius * angle.cos()) as f32);
            values.push((radius * angle.sin()) as f32);
        }
        values.truncate(n);
        values
    });
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A new `Linear [d_in → d_out]` with N(0, std) weights from this thread's generator ([`normal`])
/// and, when `bias`, a zero bias; unlike burn's lazy initializers the values exist now, so a
/// clone of the model copies them.
pub fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    linear_from(&GENERATOR, [d_in, d_out], bias, std, device)
}

fn linear_from<B: Backend>(
    generator: &'static LocalKey<RefCell<ChaCha8Rng>>,
    [d_in, d_out]: [usize; 2],
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(normal_from(generator, [d_in, d_out], std, device)),
        bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// Draws per task of [`dropout_mask`]: large enough to amortize scheduling.
const DRAWS_PER_TASK: usize = 1 << 16;

/// [`linear`] for a layer that a checkpoint may or may not supply (an encoder's pooler,
/// DistilBERT's `pre_classifier`): drawn from a second stream of this thread's seed, so the
/// values a missing layer keeps follow the run's seed, and whether it is drawn does not
/// shift the draws of the layers after it (the task head).
pub fn optional_linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    linear_from(&SIDE, [d_in, d_out], bias, std, device)
}

/// The multipliers of one dropout mask: `1/keep` with probability `keep`, else 0.
///
/// Element `i` takes word `i` of the generator's stream from its current position, as a
/// loop of `next_u32` would, but blocks of the stream are drawn on rayon's threads (ChaCha
/// seeks to any word); the generator then continues after the last word drawn. The mask is
/// therefore the same whatever the number of threads.
fn dropout_mask(n: usize, keep: f64) -> Vec<f32> {
    // An element is kept when a uniform u32 falls below keep·2³²; `keep` < 1 here, so the
    // threshold fits.
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    with_generator(|rng| {
        let start = rng.get_word_pos();
        let mut mask = vec![0.0f32; n];
        let shared: &ChaCha8Rng = rng;
        mask.par_chunks_mut(DRAWS_PER_TASK)
            .enumerate()
            .for_each(|(block, values)| {
                let mut stream = shared.clone();
                stream.set_word_pos(start + (block * DRAWS_PER_TASK) as u128);
                for value in values {
                    if u64::from(stream.next_u32()) < threshold {
                        *value = scale;
                    }
                }
            });
        rng.set_word_pos(start + n as u128);
        mask
    })
}

/// Inverted dropout, as `torch.nn.Dropout`: in training (an autodiff backend) each element is
/// zeroed with probability `prob` and the others scaled by `1/(1 − prob)`; without autodiff
/// (evaluation) it is the identity. The mask comes from this thread's generator
/// ([`seed_thread`]), not from the backend's process-wide one.
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    /// Probability of zeroing an element, in `[0, 1)`.
    pub prob: f64,
}

impl Dropout {
    /// Dropout with probability `prob`; values outside `[0, 1)` are clamped into it (1 would
    /// zero everything and divide by 0).
    pub fn new(prob: f64) -> Self {
        let prob = if prob.is_finite() { prob } else { 0.0 };
        Dropout {
            prob: prob.clamp(0.0, 1.0 - f64::EPSILON),
        }
    }

    /// Applies the dropout (training) or returns `x` unchanged (evaluation, or `prob` 0).
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let shape = x.shape();
        let Some(mask) = self.draw::<B>(shape.num_elements(), &x.device()) else {
            return x;
        };
        // The multipliers are made in the input's dtype (a half-precision activation gets a
        // half-precision mask) and are constants: no gradient flows into them.
        let mask =
            Tensor::<B, D>::from_data(TensorData::new(mask, shape), (&x.device(), x.dtype()));
        x * mask
    }

    /// The multipliers of a mask over `n` elements on `device`, drawn now from this thread's
    /// generator (as [`forward`](Self::forward) draws them); `None` where dropout is the
    /// identity (evaluation, or `prob` 0), and then nothing is drawn.
    pub(crate) fn draw<B: Backend>(&self, n: usize, device: &B::Device) -> Option<Vec<f32>> {
        (self.prob > 0.0 && B::ad_enabled(device)).then(|| dropout_mask(n, 1.0 - self.prob))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn_ndarray::NdArray;
    use proptest::prelude::*;
    use rand::RngCore;

    type B = Autodiff<NdArray>;

    fn dropped(p: f64, seed: u64, n: usize) -> Vec<f32> {
        seed_thread(seed);
        let x = Tensor::<B, 1>::ones([n], &Default::default());
        Dropout::new(p).forward(x).into_data().to_vec().unwrap()
    }

    #[test]
    fn other_threads_drawing_do_not_change_this_threads_masks() {
        let alone = dropped(0.3, 5, 4096);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noise = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Draws from this module and from burn's shared backend generator meanwhile.
                let device = Default::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seed_thread(99);
                    <B as Backend>::seed(&device, 99);
                    let x = Tensor::<B, 1>::ones([512], &device);
                    let _ = Dropout::new(0.5).forward(x.clone()).into_data();
                    let _ = burn::nn::DropoutConfig::new(0.5)
                        .init()
                        .forward(x)
                        .into_data();
                }
            })
        };
        let together: Vec<_> = (0..20).map(|_| dropped(0.3, 5, 4096)).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        noise.join().unwrap();
        assert!(together.iter().all(|masks| *masks == alone));
        assert_ne!(dropped(0.3, 6, 4096), alone, "another seed, another mask");
    }

    #[test]
    fn masks_drawn_in_blocks_are_the_serial_stream() {
        // Three blocks and part of a fourth, then a draw after the mask.
        let n = 3 * DRAWS_PER_TASK + 1234;
        let keep = 0.7;
        seed_thread(11);
        let mask = dropout_mask(n, keep);
        let next = with_generator(|rng| rng.next_u32());
        let mut serial = ChaCha8Rng::seed_from_u64(11);
        let threshold = (keep * 4_294_967_296.0) as u64;
        for (i, &m) in mask.iter().enumerate() {
            let kept = u64::from(serial.next_u32()) < threshold;
            assert_eq!(m != 0.0, kept, "element {i}");
        }
        assert_eq!(
            next,
            serial.next_u32(),
            "the stream continues after the mask"
        );
    }

    #[test]
    fn optional_layers_follow_the_seed_without_shifting_the_main_stream() {
        let device = Default::default();
        let draw = |optional: bool| {
            seed_thread(9);
            let side = optional.then(|| {
                let layer = optional_linear::<NdArray>(6, 5, true, 0.02, &device);
                layer.weight.val().into_data().to_vec::<f32>().unwrap()
            });
            let head = normal::<NdArray, 2>([4, 3], 0.02, &device);
            (side, head.into_data().to_vec::<f32>().unwrap())
        };
        let (side, head) = draw(true);
        let (again, _) = draw(true);
        assert_eq!(side, again, "a function of the seed");
        assert_eq!(draw(false).1, head, "the head's draws do not move");
        assert_ne!(side.unwrap()[..12], head[..], "another stream");
    }

    #[test]
    fn evaluation_and_zero_probability_are_the_identity() {
        let x = Tensor::<NdArray, 1>::from_floats([1.0, -2.0, 3.0], &Default::default());
        let y = Dropout::new(0.9).forward(x.clone());
        assert_eq!(y.into_data(), x.into_data());
        assert!(dropped(0.0, 1, 64).iter().all(|&v| v == 1.0));
        assert_eq!(Dropout::new(f64::NAN).prob, 0.0);
        assert!(Dropout::new(1.0).prob < 1.0);
    }

    #[test]
    fn the_gradient_is_the_mask() {
        seed_thread(3);
        let x = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &Default::default())
            .require_grad();
        let y = Dropout::new(0.5).forward(x.clone());
        let grads = y.clone().sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let y: Vec<f32> = y.into_data().to_vec().unwrap();
        for (i, (g, y)) in g.iter().zip(&y).enumerate() {
            assert_eq!(*y, *g * (i + 1) as f32);
        }
    }

    #[test]
    fn new_weights_are_normal_with_the_given_spread() {
        seed_thread(1);
        let w: Vec<f32> = normal::<NdArray, 2>([300, 101], 0.02, &Default::default())
            .into_data()
            .to_vec()
            .unwrap();
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = w
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        // 30,300 draws: the mean's standard error is 1.1e-4, the std's 8e-5.
        assert!(mean.abs() < 6e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "std {}", var.sqrt());
        let beyond = w.iter().filter(|v| v.abs() > 0.04).count() as f64 / n;
        assert!((beyond - 0.0455).abs() < 0.006, "beyond 2σ: {beyond}");
        seed_thread(1);
        let again = normal::<NdArray, 2>([300, 101], 0.02, &Default::default());
        assert_eq!(again.into_data().to_vec::<f32>().unwrap(), w);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn masks_keep_about_one_minus_p_and_rescale(p in 0.0f64..0.95, seed in any::<u64>()) {
            let n = 20_000;
            let y = dropped(p, seed, n);
            let keep = 1.0 - p;
            let scale = (1.0 / keep) as f32;
            prop_assert!(y.iter().all(|&v| v == 0.0 || v == scale));
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // Six standard errors of a binomial proportion.
            let bound = 6.0 * (p * keep / n as f64).sqrt() + 1e-9;
            prop_assert!((kept - keep).abs() <= bound, "kept {kept} of p {p}");
        }
    }
}
