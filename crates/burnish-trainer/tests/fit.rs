//! The epoch loop: accumulation cycles, evaluation, early stopping, hooks and logs.
// Helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use burn_ndarray::NdArray;
use burnish_heads::{LossParts, mse};
use burnish_trainer::{
    BestMetric, BoxError, Control, EarlyStopping, FitConfig, FitState, Hooks, NoHooks, StepReport,
    Trainer, TrainerConfig,
};

type B = Autodiff<NdArray>;

fn model() -> Linear<B> {
    let d = Default::default();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.5f32, -0.5], [2, 1]),
            &d,
        )),
        bias: Some(Param::from_tensor(Tensor::zeros([1], &d))),
    }
}

/// A micro-batch of (x0, x1, y) rows.
#[derive(Clone)]
struct Rows(Vec<[f32; 3]>);

/// Micro-batches of rows for y = 2·x0 − x1 + 1.
fn batches(n: usize) -> Vec<Rows> {
    (0..n)
        .map(|b| {
            Rows(
                (0..4)
                    .map(|r| {
                        let (x0, x1) = ((b * 4 + r) as f32 * 0.1, ((b + r) % 3) as f32);
                        [x0, x1, 2.0 * x0 - x1 + 1.0]
                    })
                    .collect(),
            )
        })
        .collect()
}

fn loss(m: &Linear<B>, rows: &Rows) -> LossParts<B> {
    let rows = &rows.0;
    let d = Default::default();
    let x: Vec<f32> = rows.iter().flat_map(|r| [r[0], r[1]]).collect();
    let y: Vec<f32> = rows.iter().map(|r| r[2]).collect();
    let x = Tensor::<B, 2>::from_data(TensorData::new(x, [rows.len(), 2]), &d);
    let y = Tensor::<B, 2>::from_data(TensorData::new(y, [rows.len(), 1]), &d);
    mse(m.forward(x), y)
}

fn trainer() -> Trainer<B, Linear<B>> {
    let config = TrainerConfig {
        lr: 0.05,
        total_steps: 100,
        weight_decay: 0.0,
        ..Default::default()
    };
    Trainer::new(model(), config).unwrap()
}

#[test]
fn accumulation_cycles_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = FitConfig {
        epochs: 2,
        grad_accum: 2,
        log_every: 1,
        output_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let mut t = trainer();
    let eval = |m: &Linear<NdArray>| {
        let l = loss_inner(m);
        Ok(BTreeMap::from([("eval_loss".to_owned(), l)]))
    };
    let summary = t
        .fit(&config, &mut batches(5), loss, eval, &mut NoHooks)
        .unwrap();
    // 5 micro-batches with accumulation 2: cycles of 2, 2 and 1, twice.
    assert_eq!(summary.steps, 6);
    assert_eq!(summary.evals.len(), 2, "one evaluation per epoch");
    assert!(summary.evals[1].metrics["eval_loss"] < summary.evals[0].metrics["eval_loss"]);
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.iter().filter(|e| e["event"] == "train").count(), 6);
    let eval = events.iter().find(|e| e["event"] == "eval").unwrap();
    assert!(eval["generalization_gap"].is_number(), "{eval}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["global_step"], 6);
    assert_eq!(state["log_history"].as_array().unwrap().len(), events.len());
}

fn loss_inner(m: &Linear<NdArray>) -> f64 {
    let d = Default::default();
    let x =
        Tensor::<NdArray, 2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &d);
    let y = Tensor::<NdArray, 2>::from_data(TensorData::new(vec![3.0f32, 0.0], [2, 1]), &d);
    m.forward(x).sub(y).square().mean().into_scalar().elem()
}

#[test]
fn early_stopping_after_patience() {
    let config = FitConfig {
        epochs: 10,
        eval_every: Some(1),
        best_metric: Some(BestMetric::named("accuracy")),
        early_stopping: Some(EarlyStopping {
            patience: 2,
            threshold: 0.0,
        }),
        ..Default::default()
    };
    let mut t = trainer();
    let mut calls = 0;
    let scores = [0.5, 0.7, 0.7, 0.69, 0.9];
    let eval = |_: &Linear<NdArray>| {
        calls += 1;
        Ok(BTreeMap::from([("accuracy".to_owned(), scores[calls - 1])]))
    };
    let summary = t
        .fit(&config, &mut batches(3), loss, eval, &mut NoHooks)
        .unwrap();
    assert_eq!(summary.stopped_by, "early_stopping");
    assert_eq!(
        summary.evals.len(),
        4,
        "0.7 at step 2, then two evaluations without improvement"
    );
    assert_eq!(summary.best, Some((0.7, 2)));
    assert!(summary.evals[1].is_best && !summary.evals[2].is_best);
}

struct StopAt(u64, Vec<f64>);

impl Hooks<B, Linear<B>> for StopAt {
    fn after_step(
        &mut self,
        _: &Trainer<B, Linear<B>>,
        _: &FitState,
        report: &StepReport,
    ) -> Result<Control, BoxError> {
        self.1.push(report.loss);
        Ok(if report.step == self.0 {
            Control::Stop
        } else {
            Control::Continue
        })
    }
}

#[test]
fn hooks_stop_and_runs_are_deterministic() {
    let config = FitConfig {
        epochs: 3,
        max_steps: Some(8),
        ..Default::default()
    };
    let none = |_: &Linear<NdArray>| Ok(BTreeMap::new());
    let mut hook = StopAt(4, Vec::new());
    let summary = trainer()
        .fit(&config, &mut batches(5), loss, none, &mut hook)
        .unwrap();
    assert_eq!((summary.steps, summary.stopped_by), (4, "hook"));

    let mut a = StopAt(u64::MAX, Vec::new());
    let mut b = StopAt(u64::MAX, Vec::new());
    let sa = trainer()
        .fit(&config, &mut batches(5), loss, none, &mut a)
        .unwrap();
    trainer()
        .fit(&config, &mut batches(5), loss, none, &mut b)
        .unwrap();
    assert_eq!((sa.steps, sa.stopped_by), (8, "max_steps"));
    assert_eq!(a.1, b.1, "same data, same init: identical losses");
    assert!(
        a.1[5] < a.1[0],
        "the same batch, one epoch later, has a lower loss"
    );
}

/// Records the fit state after every step.
struct States(Vec<FitState>);

impl Hooks<B, Linear<B>> for States {
    fn after_step(
        &mut self,
        _: &Trainer<B, Linear<B>>,
        state: &FitState,
        _: &StepReport,
    ) -> Result<Control, BoxError> {
        self.0.push(state.clone());
        Ok(Control::Continue)
    }
}

#[test]
fn the_state_tracks_position_and_best_without_early_stopping() {
    let config = FitConfig {
        epochs: 2,
        grad_accum: 2,
        eval_every: Some(2),
        best_metric: Some(BestMetric::named("eval_loss")),
        ..Default::default()
    };
    let mut t = trainer();
    let eval = |m: &Linear<NdArray>| Ok(BTreeMap::from([("eval_loss".to_owned(), loss_inner(m))]));
    let mut states = States(Vec::new());
    let summary = t
        .fit(&config, &mut batches(5), loss, eval, &mut states)
        .unwrap();
    let positions: Vec<(usize, usize)> =
        states.0.iter().map(|s| (s.epoch, s.batches_done)).collect();
    assert_eq!(positions, [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]);
    assert_eq!(summary.evals.len(), 3);
    let best = summary.best.unwrap();
    let lowest = summary
        .evals
        .iter()
        .map(|e| e.metrics["eval_loss"])
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best.0, lowest);
    assert!(!BestMetric::named("eval_loss").greater_is_better);
    assert!(BestMetric::named("f1").greater_is_better);

    // Early stopping without a best metric is a configuration error.
    let bad = FitConfig {
        best_metric: None,
        early_stopping: Some(EarlyStopping {
            patience: 1,
            threshold: 0.0,
        }),
        ..config
    };
    let err = trainer()
        .fit(&bad, &mut batches(5), loss, eval, &mut NoHooks)
        .unwrap_err();
    assert!(err.to_string().contains("best metric"), "{err}");
}

#[test]
fn a_run_resumed_at_max_steps_takes_no_further_step() {
    let config = FitConfig {
        epochs: 5,
        max_steps: Some(3),
        ..Default::default()
    };
    let none = |_: &Linear<NdArray>| Ok(BTreeMap::new());
    let mut t = trainer();
    let summary = t
        .fit(&config, &mut batches(5), loss, none, &mut NoHooks)
        .unwrap();
    assert_eq!((summary.steps, summary.stopped_by), (3, "max_steps"));
    let state = FitState {
        epoch: 0,
        batches_done: 3,
        ..FitState::default()
    };
    let again = t
        .fit_from(state, &config, &mut batches(5), loss, none, &mut NoHooks)
        .unwrap();
    assert_eq!((again.steps, again.stopped_by), (3, "max_steps"));
}

#[test]
fn a_nan_gradient_is_an_error_with_or_without_clipping() {
    for max_grad_norm in [Some(1.0), None] {
        let config = TrainerConfig {
            max_grad_norm,
            total_steps: 10,
            ..Default::default()
        };
        let mut trainer = Trainer::new(model(), config).unwrap();
        let bad = Rows(vec![[f32::NAN, 1.0, 0.0]]);
        let err = trainer.step(&[bad], loss).unwrap_err().to_string();
        assert!(err.contains("NaN or inf"), "{max_grad_norm:?}: {err}");
        assert_eq!(trainer.steps_done(), 0, "the model is left unchanged");
    }
}
