//! Products of a few rows with a weight matrix, the work of a decoding step, on a team of
//! threads that spin between jobs (burn-flex, float32, no autodiff).
//!
//! Decoding one token multiplies one row by every weight of the model: about 200 small
//! products per token for a 30-layer decoder, each 30-200 µs of streaming. Dispatched through
//! rayon, each one paid a thread wake-up of about the same length (rayon's workers sleep
//! within microseconds of running dry, and the step's element-wise work between two products
//! is longer than that), so two threads ran a product no faster than one. Here the helper
//! threads keep spinning for [`SPIN`] after their last job, as OpenMP's threads do under
//! PyTorch, and the caller computes a share itself: a product's latency is its streaming
//! time over the threads.
//!
//! The team has `rayon::current_num_threads() − 1` helpers (so `RAYON_NUM_THREADS` bounds
//! both), started on first use; idle helpers block on their channel and cost nothing.
//! A product is split over contiguous ranges of the weight's storage: the rows of `[in, out]`
//! (each part adds its rows' contributions into its own partial sums, added in part order)
//! or the rows of `[out, in]` (each part computes whole outputs). Results are the same from
//! run to run; the partial sums make the last bits depend on the number of threads.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use burn_flex::FlexTensor;

/// How long an idle helper (or a caller waiting for its helpers) spins before it blocks.
const SPIN: Duration = Duration::from_millis(1);

/// Multiply-adds below which a product runs on the caller alone.
const MIN_PARALLEL: usize = 1 << 15;

type Job = Box<dyn FnOnce() + Send>;

/// Senders to the helper threads, one channel each.
struct Team {
    helpers: Vec<Sender<Job>>,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let helpers = (1..rayon::current_num_threads())
            .filter_map(|i| {
                let (jobs, inbox) = mpsc::channel();
                // A helper that cannot start is simply absent: the caller does its share.
                std::thread::Builder::new()
                    .name(format!("burnish-gemv-{i}"))
                    .spawn(move || serve(inbox))
                    .ok()
                    .map(|_| jobs)
            })
            .collect();
        Team { helpers }
    })
}

/// A helper's loop: run jobs; spin for [`SPIN`] after each, then block until the next.
fn serve(inbox: Receiver<Job>) {
    let mut idle_since = Instant::now();
    loop {
        let job = match inbox.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty) if idle_since.elapsed() < SPIN => {
                std::hint::spin_loop();
                continue;
            }
            Err(TryRecvError::Empty) => match inbox.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(TryRecvError::Disconnected) => return,
        };
        // A panicking job drops its result sender, so the caller redoes that part; the
        // helper stays.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        idle_since = Instant::now();
    }
}

/// `work(k)` for every `k < parts`: parts 1.. on the helpers (one each), part 0 and any
/// part that found no helper or did not come back (its job panicked) on the caller.
fn run_parts<T: Send + 'static>(
    parts: usize,
    work: Arc<dyn Fn(usize) -> T + Send + Sync>,
) -> Vec<T> {
    let (done, results) = mpsc::channel();
    let mut waiting = 0;
    for (k, helper) in (1..parts).zip(&team().helpers) {
        let (work, done) = (Arc::clone(&work), done.clone());
        // A failed send drops the job: its part is computed below.
        let sent = helper.send(Box::new(move || {
            let _ = done.send((k, work(k)));
        }));
        waiting += usize::from(sent.is_ok());
    }
    drop(done);
    let mut out: Vec<Option<T>> = (0..parts).map(|_| None).collect();
    if let Some(first) = out.first_mut() {
        *first = Some(work(0));
    }
    let since = Instant::now();
    while waiting > 0 {
        let received = match results.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Empty) if since.elapsed() < SPIN => {
                std::hint::spin_loop();
                continue;
            }
            Err(TryRecvError::Empty) => results.recv().ok(),
            Err(TryRecvError::Disconnected) => None,
        };
        let Some((k, y)) = received else { break };
        out[k] = Some(y);
        waiting -= 1;
    }
    out.into_iter()
        .enumerate()
        .map(|(k, y)| y.unwrap_or_else(|| work(k)))
        .collect()
}

/// How a `[in, out]` weight lies in its storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Row-major `[in, out]`: element `(i, j)` at `i·out + j` (a loaded `Linear` weight).
    InOut,
    /// Row-major `[out, in]`: element `(i, j)` at `j·in + i` (the transposed view of an
    /// embedding table, a tied output projection).
    OutIn,
}

/// A weight `W` `[d_in, d_out]` of a product: float32 `storage` from `offset`, in `order`.
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    pub(crate) storage: FlexTensor,
    pub(crate) offset: usize,
    pub(crate) dims: [usize; 2],
    pub(crate) order: Order,
}

impl Weight {
    /// The range of storage rows (`in` rows for `InOut`, `out` rows for `OutIn`) that part
    /// `k` of `parts` takes.
    fn share(&self, k: usize, parts: usize) -> std::ops::Range<usize> {
        let span = match self.order {
            Order::InOut => self.dims[0],
            Order::OutIn => self.dims[1],
        };
        let per_part = span.div_ceil(parts);
        (k * per_part).min(span)..((k + 1) * per_part).min(span)
    }
}

/// `x·W` for `x` `[rows, d_in]` (row-major) and each of `weights` (all `[d_in, ·]`), in one
/// dispatch to the team: each thread takes its share of every weight. Returns one
/// `[rows, d_out]` row-major result per weight.
pub(crate) fn matmul_rows(x: Vec<f32>, rows: usize, weights: Vec<Weight>) -> Vec<Vec<f32>> {
    let work: usize = weights.iter().map(|w| w.dims[0] * w.dims[1] * rows).sum();
    let parts = match work >= MIN_PARALLEL {
        true => team().helpers.len() + 1,
        false => 1,
    };
    let (x, weights) = (Arc::new(x), Arc::new(weights));
    let shared = Arc::clone(&weights);
    let per_part = move |k: usize| -> Vec<Vec<f32>> {
        shared
            .iter()
            .map(|w| {
                let range = w.share(k, parts);
                let values = &w.storage.storage::<f32>()[w.offset..];
                match w.order {
                    Order::InOut => in_out_rows(&x, rows, values, w.dims, range),
                    Order::OutIn => out_in_columns(&x, rows, values, w.dims[0], range),
                }
            })
            .collect()
    };
    let mut results = run_parts(parts, Arc::new(per_part));
    weights
        .iter()
        .enumerate()
        .map(|(n, w)| {
            let d_out = w.dims[1];
            match w.order {
                // Partial sums over row ranges, added in part order.
                Order::InOut => {
                    let mut y = std::mem::take(&mut results[0][n]);
                    for part in &results[1..] {
                        y.iter_mut().zip(&part[n]).for_each(|(y, p)| *y += p);
                    }
                    y
                }
                // Whole outputs of a column range per part.
                Order::OutIn => {
                    let mut y = vec![0.0f32; rows * d_out];
                    for (k, part) in results.iter().enumerate() {
                        let range = w.share(k, parts);
                        let width = range.len();
                        for r in 0..rows {
                            y[r * d_out + range.start..][..width]
                                .copy_from_slice(&part[n][r * width..][..width]);
                        }
                    }
                    y
                }
            }
        })
        .collect()
}

/// Partial `x·W` over the weight rows `range` of a row-major `[d_in, d_out]` `w`: each
/// group of four weight rows is read once for every row of `x` while it is in cache.
fn in_out_rows(
    x: &[f32],
    rows: usize,
    w: &[f32],
    [d_in, d_out]: [usize; 2],
    range: std::ops::Range<usize>,
) -> Vec<f32> {
    let mut acc = vec![0.0f32; rows * d_out];
    let mut i = range.start;
    while i + 4 <= range.end {
        let block = &w[i * d_out..(i + 4) * d_out];
        let (w0, rest) = block.split_at(d_out);
        let (w1, rest) = rest.split_at(d_out);
        let (w2, w3) = rest.split_at(d_out);
        for (r, acc) in acc.chunks_exact_mut(d_out).enumerate() {
            let x = &x[r * d_in + i..][..4];
            let (x0, x1, x2, x3) = (x[0], x[1], x[2], x[3]);
            for ((((a, &a0), &a1), &a2), &a3) in acc.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *a += x0 * a0 + x1 * a1 + x2 * a2 + x3 * a3;
            }
        }
        i += 4;
    }
    for i in i..range.end {
        let wi = &w[i * d_out..][..d_out];
        for (r, acc) in acc.chunks_exact_mut(d_out).enumerate() {
            let xi = x[r * d_in + i];
            acc.iter_mut().zip(wi).for_each(|(a, &v)| *a += xi * v);
        }
    }
    acc
}

/// Outputs `range` of `x·W` for a row-major `[d_out, d_in]` `w` (`W` transposed): dot
/// products in sixteen lanes, `[rows, range.len()]` row-major.
fn out_in_columns(
    x: &[f32],
    rows: usize,
    w: &[f32],
    d_in: usize,
    range: std::ops::Range<usize>,
) -> Vec<f32> {
    let width = range.len();
    let mut y = vec![0.0f32; rows * width];
    for (c, j) in range.enumerate() {
        let wj = &w[j * d_in..][..d_in];
        for r in 0..rows {
            y[r * width + c] = dot(wj, &x[r * d_in..][..d_in]);
        }
    }
    y
}

/// `Σ a·b` in sixteen interleaved float32 lanes (vector registers), lanes added in order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (mut a16, mut b16) = (a.chunks_exact(16), b.chunks_exact(16));
    for (a, b) in (&mut a16).zip(&mut b16) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += a * b;
        }
    }
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(a, b)| a * b)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// `x·W` in float64, `W` given row-major `[d_in, d_out]`.
    fn reference(x: &[f32], rows: usize, w: &[f32], d_in: usize, d_out: usize) -> Vec<f64> {
        (0..rows * d_out)
            .map(|k| {
                let (r, j) = (k / d_out, k % d_out);
                (0..d_in)
                    .map(|i| f64::from(x[r * d_in + i]) * f64::from(w[i * d_out + j]))
                    .sum()
            })
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|k| ((k as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1 << 24) as f32 - 0.5)
            .collect()
    }

    #[test]
    fn both_orders_match_a_float64_product_for_every_shape_and_split() {
        // Shapes around the four-row groups, the sixteen lanes and the parallel threshold;
        // an offset into the storage as a slice of a larger tensor has.
        for &(rows, d_in, d_out) in &[
            (1, 5, 3),
            (1, 64, 512),
            (3, 67, 509),
            (4, 130, 300),
            (2, 576, 192),
        ] {
            let x = values(rows * d_in, 1);
            let w = values(d_in * d_out, 2);
            let wt: Vec<f32> = (0..d_in * d_out)
                .map(|k| w[(k % d_in) * d_out + k / d_in])
                .collect();
            let expected = reference(&x, rows, &w, d_in, d_out);
            for (stored, order) in [(&w, Order::InOut), (&wt, Order::OutIn)] {
                let mut padded = vec![9.0f32; 7];
                padded.extend_from_slice(stored);
                let storage = FlexTensor::from_data(TensorData::new(padded, [7 + d_in * d_out]));
                let weight = |dims| Weight {
                    storage: storage.clone(),
                    offset: 7,
                    dims,
                    order,
                };
                let mut y = matmul_rows(x.clone(), rows, vec![weight([d_in, d_out])]);
                assert_eq!((y.len(), y[0].len()), (1, rows * d_out));
                let y = y.remove(0);
                for (k, (&y, &e)) in y.iter().zip(&expected).enumerate() {
                    let bound = 1e-5 * (1.0 + e.abs()) * (d_in as f64).sqrt();
                    assert!(
                        (f64::from(y) - e).abs() < bound,
                        "{order:?} {rows}x{d_in}x{d_out} at {k}: {y} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn weights_in_one_dispatch_give_what_each_gives_alone() {
        let (rows, d_in) = (2, 96);
        let x = values(rows * d_in, 5);
        let weights: Vec<Weight> = [
            (Order::InOut, 400),
            (Order::OutIn, 350),
            (Order::InOut, 1000),
        ]
        .into_iter()
        .enumerate()
        .map(|(n, (order, d_out))| Weight {
            storage: FlexTensor::from_data(TensorData::new(
                values(d_in * d_out, 10 + n as u32),
                [d_in * d_out],
            )),
            offset: 0,
            dims: [d_in, d_out],
            order,
        })
        .collect();
        let together = matmul_rows(x.clone(), rows, weights.clone());
        let alone: Vec<Vec<f32>> = weights
            .into_iter()
            .flat_map(|w| matmul_rows(x.clone(), rows, vec![w]))
            .collect();
        assert_eq!(together, alone);
    }

    #[test]
    fn a_product_is_the_same_run_to_run_and_from_many_callers() {
        let (rows, d_in, d_out) = (2, 300, 700);
        let (x, w) = (values(rows * d_in, 3), values(d_in * d_out, 4));
        let weight = Weight {
            storage: FlexTensor::from_data(TensorData::new(w, [d_in * d_out])),
            offset: 0,
            dims: [d_in, d_out],
            order: Order::InOut,
        };
        let first = matmul_rows(x.clone(), rows, vec![weight.clone()]);
        // Several callers share the helpers at once; each gets its own results.
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..4)
                .map(|_| {
                    let (x, weight) = (x.clone(), weight.clone());
                    s.spawn(move || matmul_rows(x, rows, vec![weight]))
                })
                .collect();
            for run in runs {
                assert_eq!(run.join().ok().as_ref(), Some(&first));
            }
        });
    }

    #[test]
    fn a_part_whose_work_panics_on_a_helper_is_redone_by_the_caller() {
        // The caller's own part (0) succeeds; the others panic on their first attempt (on a
        // helper) and are recomputed on the caller; the helpers keep serving.
        let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&attempts);
        let work = move |k: usize| {
            let first = {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let first = !seen.contains(&k);
                seen.push(k);
                first
            };
            assert!(k == 0 || !first, "part {k} fails on its helper");
            vec![k as f32]
        };
        let parts = team().helpers.len() + 1;
        let out = run_parts(parts, Arc::new(work));
        let expected: Vec<Vec<f32>> = (0..parts).map(|k| vec![k as f32]).collect();
        assert_eq!(out, expected);
        let again = run_parts(parts, Arc::new(|k: usize| vec![2.0 * k as f32]));
        assert_eq!(
            again,
            (0..parts).map(|k| vec![2.0 * k as f32]).collect::<Vec<_>>()
        );
        // Parts beyond the helpers run on the caller.
        let more = run_parts(parts + 2, Arc::new(|k: usize| vec![k as f32]));
        assert_eq!(
            more,
            (0..parts + 2).map(|k| vec![k as f32]).collect::<Vec<_>>()
        );
    }
}
