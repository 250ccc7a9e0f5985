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
    fn on_step_end(
        &mut self,
        _: &mut Trainer<B, Linear<B>>,
        _: &FitState,
        report: &StepReport,
    ) -> Result<Control, BoxError> {
        self.1.push(report.loss);
        Ok(if report.step == self.0 {
            Control::STOP
        } else {
            Control::CONTINUE
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
    fn on_step_end(
        &mut self,
        _: &mut Trainer<B, Linear<B>>,
        state: &FitState,
        _: &StepReport,
    ) -> Result<Control, BoxError> {
        self.0.push(state.clone());
        Ok(Control::CONTINUE)
    }

    fn on_epoch_end(
        &mut self,
        _: &mut Trainer<B, Linear<B>>,
        state: &FitState,
        _: usize,
    ) -> Result<Control, BoxError> {
        self.0.push(state.clone());
        Ok(Control::CONTINUE)
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
    // A step that ends an epoch is seen there by `on_step_end`, and at the start of the next
    // epoch by `on_epoch_end` (and by `save`), which is where a resumed run continues.
    assert_eq!(
        positions,
        [
            (0, 2),
            (0, 4),
            (0, 5),
            (1, 0),
            (1, 2),
            (1, 4),
            (1, 5),
            (2, 0)
        ]
    );
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

/// Records the order of hook calls; asks for an evaluation after step 1 and a save after
/// step 2.
#[derive(Default)]
struct Recorder(Vec<String>);

impl Hooks<B, Linear<B>> for Recorder {
    fn on_train_begin(
        &mut self,
        _: &mut Trainer<B, Linear<B>>,
        _: &FitState,
    ) -> Result<Control, BoxError> {
        self.0.push("train_begin".into());
        Ok(Control::CONTINUE)
    }

    fn on_epoch_begin(
        &mut self,
        _: &mut Trainer<B, Linear<B>>,
        s: &FitState,
    ) -> Result<Control, BoxError> {
        self.0.push(format!("epoch_begin {}", s.epoch));
        Ok(Control::CONTINUE)
    }

    fn on_step_end(
        &mut self,
        _: &mut Trainer<B, Linear<B>>,
        _: &FitState,
        r: &StepReport,
    ) -> Result<Control, BoxError> {
        self.0.push(format!("step {}", r.step));
        Ok(match r.step {
            1 => Control::EVALUATE,
            2 => Control::SAVE,
            _ => Control::CONTINUE,
        })
    }

    fn on_evaluate(
        &mut self,
        _: &Trainer<B, Linear<B>>,
        _: &FitState,
        e: &burnish_trainer::EvalEvent,
    ) -> Result<Control, BoxError> {
        self.0.push(format!("eval {}", e.step));
        Ok(Control::CONTINUE)
    }

    fn on_epoch_end(
        &mut self,
        _: &mut Trainer<B, Linear<B>>,
        _: &FitState,
        epoch: usize,
    ) -> Result<Control, BoxError> {
        self.0.push(format!("epoch_end {epoch}"));
        Ok(Control::CONTINUE)
    }

    fn save(
        &mut self,
        t: &Trainer<B, Linear<B>>,
        _: &FitState,
        _: bool,
    ) -> Result<Option<std::path::PathBuf>, BoxError> {
        Ok(Some(format!("saved-{}", t.steps_done()).into()))
    }

    fn on_save(
        &mut self,
        _: &Trainer<B, Linear<B>>,
        _: &FitState,
        path: &std::path::Path,
    ) -> Result<Control, BoxError> {
        self.0.push(path.display().to_string());
        Ok(Control::CONTINUE)
    }

    fn on_train_end(
        &mut self,
        _: &Trainer<B, Linear<B>>,
        _: &FitState,
        s: &burnish_trainer::FitSummary,
    ) -> Result<(), BoxError> {
        self.0.push(format!("train_end {}", s.stopped_by));
        Ok(())
    }
}

#[test]
fn hooks_run_in_order_and_can_ask_for_evaluation_and_save() {
    let config = FitConfig {
        epochs: 2,
        grad_accum: 2,
        save_every: Some(3),
        ..Default::default()
    };
    let eval = |m: &Linear<NdArray>| Ok(BTreeMap::from([("eval_loss".to_owned(), loss_inner(m))]));
    // A second hook in a tuple: its stop ends the run after step 4.
    let mut hooks = (Recorder::default(), StopAt(4, Vec::new()));
    let summary = trainer()
        .fit(&config, &mut batches(3), loss, eval, &mut hooks)
        .unwrap();
    assert_eq!(summary.stopped_by, "hook");
    assert_eq!(
        hooks.0.0,
        [
            "train_begin",
            "epoch_begin 0",
            "step 1",
            "eval 1",
            "step 2",
            "eval 2",
            "epoch_end 0",
            "saved-2",
            "epoch_begin 1",
            "step 3",
            "saved-3",
            "step 4",
            "eval 4",
            "epoch_end 1",
            "train_end hook"
        ]
    );
}

#[test]
fn the_plan_is_the_one_step_count_and_a_zero_schedule_is_refused() {
    let config = FitConfig {
        epochs: 3,
        grad_accum: 2,
        ..Default::default()
    };
    let plan = config.plan(5).unwrap();
    assert_eq!(
        (plan.steps_per_epoch, plan.total_steps, plan.epochs),
        (3, 9, 3)
    );
    let capped = FitConfig {
        max_steps: Some(4),
        ..config.clone()
    };
    assert_eq!(capped.plan(5).unwrap().epochs, 2);
    assert!(config.plan(0).is_err());
    let err = FitConfig {
        grad_accum: 0,
        ..config
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().starts_with("grad_accum: "), "{err}");

    // One step whose warmup never leaves 0: training would change nothing.
    let zero = TrainerConfig {
        total_steps: 1,
        warmup: burnish_schedule::Warmup::Steps(1),
        ..Default::default()
    };
    let err = Trainer::new(model(), zero).unwrap_err();
    assert!(
        matches!(err, burnish_trainer::TrainError::ZeroSchedule { .. }),
        "{err}"
    );
    let err = Trainer::new(
        model(),
        TrainerConfig {
            lr: -1.0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "lr: must be positive, got -1");
}

#[test]
fn any_schedule_function_and_extra_loss_metrics() {
    let optim =
        burnish_optim::AdamW::new(Default::default(), burnish_optim::ParamGroups::all_decay())
            .unwrap();
    let config = TrainerConfig {
        total_steps: 10,
        ..Default::default()
    };
    // Halving every two steps.
    let schedule = |step: u64| 0.05 * 0.5f64.powi((step / 2) as i32);
    let mut t = Trainer::with_parts(model(), config, optim, schedule).unwrap();
    let with_metric = |m: &Linear<B>, rows: &Rows| {
        burnish_trainer::StepLoss::from(loss(m, rows)).with_metric("rows", rows.0.len() as f64)
    };
    let data = batches(2);
    let lrs: Vec<f64> = (0..5)
        .map(|_| t.step(&data, with_metric).unwrap().lr)
        .collect();
    assert_eq!(lrs, [0.05, 0.05, 0.025, 0.025, 0.0125]);
    let report = t.step(&data, with_metric).unwrap();
    // Each micro-batch adds its row count (4), the cycle has 8 items: a mean of 1 per item.
    assert_eq!(report.metrics["rows"], 1.0);
}

#[test]
fn hooks_can_change_the_model_between_steps() {
    struct Freeze;
    impl Hooks<B, Linear<B>> for Freeze {
        fn on_step_begin(
            &mut self,
            t: &mut Trainer<B, Linear<B>>,
            _: &FitState,
        ) -> Result<Control, BoxError> {
            // Freeze the bias before the third step.
            if t.steps_done() == 2 {
                t.map_model(|mut m| {
                    m.bias = m.bias.map(|b| b.set_require_grad(false));
                    m
                });
            }
            Ok(Control::CONTINUE)
        }
    }
    let none = |_: &Linear<NdArray>| Ok(BTreeMap::new());
    let bias = |t: &Trainer<B, Linear<B>>| -> f32 {
        t.model().bias.as_ref().unwrap().val().into_scalar().elem()
    };
    let run = |steps: u64| {
        let mut t = trainer();
        let config = FitConfig {
            max_steps: Some(steps),
            ..Default::default()
        };
        let mut hooks = (Freeze, States(Vec::new()));
        t.fit(&config, &mut batches(5), loss, none, &mut hooks)
            .unwrap();
        assert_eq!(hooks.1.0.len() as u64, steps);
        t
    };
    let (two, four) = (run(2), run(4));
    // Steps 3 and 4 left the frozen bias where step 2 put it, and still trained the weight.
    assert_eq!(bias(&two), bias(&four));
    assert_ne!(
        two.model().weight.val().into_data(),
        four.model().weight.val().into_data()
    );
}

#[test]
fn a_restore_with_more_skipped_steps_than_steps_is_refused() {
    let mut t = trainer();
    let bytes = t.optimizer_state_bytes().unwrap();
    let state = burnish_trainer::TrainerState {
        steps_done: 2,
        scaler: Some(burnish_amp::ScalerState {
            scale: 65536.0,
            growth_tracker: 0,
            consecutive_skips: 0,
            total_skips: 5,
        }),
    };
    let err = t.restore(&bytes, state).unwrap_err();
    assert!(
        err.to_string()
            .contains("5 skipped steps out of 2 steps done"),
        "{err}"
    );
    assert_eq!(t.steps_done(), 0);
}
