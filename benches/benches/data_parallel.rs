//! Data parallel on the CPU: one training step of an all-MiniLM-L6-v2-sized BERT
//! classifier (random weights, 22.7M parameters) over a global batch of 8 × 64 tokens, on
//! 1, 2 and 4 worker threads of burn-flex (each worker takes its part of the batch, the
//! gradients are summed through burnish-parallel), and the gradient all-reduce alone.
//! The bytes each worker sends per step are printed. On a machine with fewer cores than
//! workers the workers share cores: the step time then shows the synchronization cost,
//! not a speed-up.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::sync::mpsc::{Receiver, Sender, channel};

use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use burnish_grad::GradSync;
use burnish_heads::{BertForSequenceClassification, ProblemType, SequenceLabels};
use burnish_parallel::{
    Abort, CollectiveSync, Topology, replicate, reset_local_group, shard_range,
};
use burnish_trainer::{Trainer, TrainerConfig};
use criterion::{Criterion, criterion_group, criterion_main};

type B = Autodiff<Flex>;
type Model = BertForSequenceClassification<B>;

const BATCH: usize = 8;
const SEQ: usize = 64;

/// Worker `rank`'s rows of the global batch: ids and labels.
fn part(rank: usize, workers: usize) -> (Tensor<B, 2, Int>, SequenceLabels) {
    let rows = shard_range(BATCH, rank, workers);
    let ids: Vec<i64> = rows
        .clone()
        .flat_map(|r| (0..SEQ).map(move |t| ((r * SEQ + t) * 7919 % 29_000 + 1000) as i64))
        .collect();
    let ids = Tensor::from_data(TensorData::new(ids, [rows.len(), SEQ]), &Default::default());
    (
        ids,
        SequenceLabels::Classes(rows.map(|r| (r % 2) as i64).collect()),
    )
}

/// What a worker does per iteration: a training step on its part of the batch, or the
/// all-reduce of a MiniLM-sized gradient buffer alone.
enum Work {
    Step(Box<Trainer<B, Model>>),
    Reduce(Box<CollectiveSync<Flex>>, Tensor<Flex, 1>),
}

impl Work {
    fn new(model: Model, sync: CollectiveSync<Flex>, all_reduce_only: bool, len: usize) -> Self {
        if all_reduce_only {
            return Work::Reduce(Box::new(sync), Tensor::ones([len], &Default::default()));
        }
        let config = TrainerConfig {
            total_steps: 1_000_000,
            ..TrainerConfig::default()
        };
        let trainer = Trainer::new(model, config).expect("valid settings");
        Work::Step(Box::new(trainer.with_grad_sync(sync)))
    }

    fn run(&mut self, rank: usize, workers: usize) {
        match self {
            Work::Step(trainer) => {
                let (ids, labels) = part(rank, workers);
                let loss = |m: &Model, _: &()| {
                    let logits = m.forward(ids.clone(), None, None);
                    m.loss(logits, &labels).expect("labels fit")
                };
                trainer.step(&[()], loss).expect("step");
            }
            Work::Reduce(sync, flat) => {
                sync.all_reduce_sum(flat.clone()).expect("all-reduce");
            }
        }
    }
}

/// Measures `workers` workers: worker 0 is the measured thread, the others wait for a
/// signal and do the same work in step.
fn with_workers(c: &mut Criterion, group: &str, workers: usize, all_reduce_only: bool) {
    reset_local_group::<Flex>();
    let device = Default::default();
    let config = burnish_benches::minilm_config();
    let backbone = config.init::<B>(true, &device).expect("valid model");
    let single = ProblemType::SingleLabelClassification;
    let model = Model::new(backbone, &config, 2, single, &device).expect("valid head");
    // Gradients, one presence flag per parameter tensor, the item count (2) and the loss.
    let mut tensors = 0;
    model.visit(&mut Count(&mut tensors));
    let len = model.num_params() + tensors + 3;
    if !all_reduce_only {
        eprintln!(
            "{workers} workers: each sends {len} f32 = {:.1} MB per step",
            len as f64 * 4.0 / 1e6
        );
    }
    let mut models = replicate(&model, &vec![device; workers]);
    let topology = Topology::local(workers);
    let abort = Abort::new();
    std::thread::scope(|scope| {
        let mut signals: Vec<Sender<bool>> = Vec::new();
        for local in 1..workers {
            let (tx, rx): (Sender<bool>, Receiver<bool>) = channel();
            signals.push(tx);
            let (model, topology, abort) = (models.remove(1), &topology, abort.clone());
            scope.spawn(move || {
                let sync = CollectiveSync::<Flex>::register(topology, local, device, abort)
                    .expect("group");
                let mut work = Work::new(model, sync, all_reduce_only, len);
                while rx.recv() == Ok(true) {
                    work.run(local, workers);
                }
            });
        }
        let sync =
            CollectiveSync::<Flex>::register(&topology, 0, device, abort.clone()).expect("group");
        let mut work = Work::new(models.remove(0), sync, all_reduce_only, len);
        let mut group = c.benchmark_group(group);
        group.sample_size(10);
        group.bench_function(format!("{workers}_workers"), |b| {
            b.iter(|| {
                for signal in &signals {
                    signal.send(true).expect("worker alive");
                }
                work.run(0, workers);
            })
        });
        group.finish();
        for signal in &signals {
            let _ = signal.send(false);
        }
    });
}

/// Counts parameter tensors.
struct Count<'a>(&'a mut usize);

impl burn::module::ModuleVisitor<B> for Count<'_> {
    fn visit_float<const D: usize>(&mut self, _: &burn::module::Param<Tensor<B, D>>) {
        *self.0 += 1;
    }
}

fn data_parallel(c: &mut Criterion) {
    for workers in [1, 2, 4] {
        with_workers(c, "dp_train_step_minilm_8x64", workers, false);
    }
    for workers in [2, 4] {
        with_workers(c, "dp_all_reduce_minilm", workers, true);
    }
}

criterion_group!(benches, data_parallel);
criterion_main!(benches);
