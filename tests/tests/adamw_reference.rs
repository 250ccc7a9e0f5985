//! burnish-optim's AdamW against torch.optim.AdamW: 50 steps with a warmup/decay schedule,
//! transformers' no-decay groups, AMSGrad and per-group lr, fed the gradients torch saw.

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use burnish_optim::{AdamW, AdamWConfig, AdamWState, GroupRule, Matcher, ParamGroups};
use burnish_schedule::{ScheduleConfig, ScheduleKind, Warmup};
use burnish_tests::TestBackend;
use burnish_tests::{TINY_NAMES, Tiny, fixture, rel_err};
use serde::Deserialize;

type B = Autodiff<TestBackend>;
type Inner = TestBackend;

#[derive(Deserialize)]
struct Case {
    name: String,
    weight_decay: f64,
    amsgrad: bool,
    head_lr_scale: f64,
    betas: [f64; 2],
    eps: f64,
    peak_lr: f64,
    warmup: u64,
    steps: u64,
    shapes: BTreeMap<String, Vec<usize>>,
    decay_params: Vec<String>,
    initial: BTreeMap<String, Vec<f32>>,
    grads: Vec<BTreeMap<String, Option<Vec<f32>>>>,
    lrs: Vec<f64>,
    snapshots: BTreeMap<String, BTreeMap<String, Vec<f32>>>,
    state_steps: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn optimizer(case: &Case) -> AdamW<B> {
    let config = AdamWConfig {
        beta1: case.betas[0],
        beta2: case.betas[1],
        epsilon: case.eps,
        weight_decay: case.weight_decay,
        amsgrad: case.amsgrad,
    };
    let groups = ParamGroups::new(vec![
        GroupRule::hf_no_decay(),
        GroupRule {
            name: "head".into(),
            matcher: Matcher::Glob("head.weight".into()),
            weight_decay: None,
            lr_scale: case.head_lr_scale,
        },
    ]);
    AdamW::new(config, groups).expect("valid config")
}

/// The gradients torch saw at `step`, registered under the module's (fresh) ParamIds.
fn grads_at(case: &Case, step: usize, model: &Tiny<B>) -> GradientsParams {
    let mut grads = GradientsParams::new();
    let device = Default::default();
    let g1 = |name: &str| -> Option<Tensor<Inner, 1>> {
        case.grads[step][name]
            .as_ref()
            .map(|g| Tensor::from_data(TensorData::new(g.clone(), [g.len()]), &device))
    };
    let g2 = |name: &str| -> Option<Tensor<Inner, 2>> {
        let shape = &case.shapes[name];
        case.grads[step][name].as_ref().map(|g| {
            Tensor::<Inner, 2>::from_data(TensorData::new(g.clone(), [shape[0], shape[1]]), &device)
                .transpose()
        })
    };
    let mut reg2 = |p: &Param<Tensor<B, 2>>, name: &str| {
        if let Some(g) = g2(name) {
            grads.register(p.id, g);
        }
    };
    reg2(&model.dense.weight, "dense.weight");
    reg2(&model.head.weight, "head.weight");
    let ones = [
        (model.dense.bias.as_ref(), "dense.bias"),
        (Some(&model.norm.gamma), "norm.weight"),
        (model.norm.beta.as_ref(), "norm.bias"),
        (model.head.bias.as_ref(), "head.bias"),
    ];
    for (param, name) in ones {
        if let (Some(p), Some(g)) = (param, g1(name)) {
            grads.register(p.id, g);
        }
    }
    grads
}

fn schedule(case: &Case) -> burnish_schedule::Schedule {
    ScheduleConfig {
        kind: ScheduleKind::Linear,
        peak_lr: case.peak_lr,
        total_steps: case.steps,
        warmup: Warmup::Steps(case.warmup),
    }
    .build()
    .expect("valid schedule")
}

fn run(case: &Case, model: Tiny<B>, optim: &mut AdamW<B>, steps: std::ops::Range<u64>) -> Tiny<B> {
    let schedule = schedule(case);
    let mut model = model;
    for step in steps {
        let lr = schedule.lr(step);
        assert_eq!(
            lr, case.lrs[step as usize],
            "{}: lr at step {step}",
            case.name
        );
        let grads = grads_at(case, step as usize, &model);
        model = optim.step(lr, model, grads);
    }
    model
}

#[test]
fn adamw_matches_torch_for_50_steps() {
    let fx: Fixture = fixture("adamw.json");
    let device = Default::default();
    for case in &fx.cases {
        let mut optim = optimizer(case);
        let mut model = Tiny::<B>::from_torch(&case.initial, &device);

        // Group membership is what transformers' Trainer computes.
        let assignments = optim.assignments(&model);
        for (torch_name, path) in TINY_NAMES {
            let decays = assignments[path].weight_decay != 0.0;
            assert_eq!(
                decays,
                case.decay_params.iter().any(|n| n == torch_name),
                "{}: decay of {path}",
                case.name
            );
        }

        let mut done = 0;
        let mut worst = 0.0f64;
        for (at, expected) in &case.snapshots {
            let at: u64 = at.parse().expect("step number");
            model = run(case, model, &mut optim, done..at);
            done = at;
            let ours = model.to_torch();
            for (name, reference) in expected {
                let initial = &case.initial[name];
                let err = rel_err(&ours[name], reference);
                // The update Δ = θ − θ₀ is the sharper comparison: θ is dominated by θ₀.
                let delta = |v: &[f32]| {
                    v.iter()
                        .zip(initial)
                        .map(|(a, b)| a - b)
                        .collect::<Vec<_>>()
                };
                let delta_err = rel_err(&delta(&ours[name]), &delta(reference));
                worst = worst.max(err);
                assert!(
                    err <= 1e-6,
                    "{}: {name} after {at} steps: rel err {err:e}",
                    case.name
                );
                assert!(
                    delta_err <= 1e-4,
                    "{}: {name} update after {at} steps: rel err {delta_err:e}",
                    case.name
                );
            }
        }
        let state = optim.state();
        for (torch_name, path) in TINY_NAMES {
            assert_eq!(
                state.params[path].step, case.state_steps[torch_name],
                "{path} step"
            );
        }
        eprintln!("{}: worst parameter rel err {worst:e}", case.name);
    }
}

#[test]
fn saved_state_resumes_bit_identically_on_fresh_param_ids() {
    let fx: Fixture = fixture("adamw.json");
    let device = Default::default();
    let dir = std::env::temp_dir().join(format!("burnish-adamw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for case in &fx.cases {
        let mut straight = optimizer(case);
        let model = Tiny::<B>::from_torch(&case.initial, &device);
        let straight_model = run(case, model, &mut straight, 0..case.steps);

        let mut first = optimizer(case);
        let model = Tiny::<B>::from_torch(&case.initial, &device);
        let half = run(case, model, &mut first, 0..case.steps / 2);
        let file = dir.join("optimizer.safetensors");
        first.state().save(&file).expect("save state");
        let weights = half.to_torch();
        drop((first, half));

        // A new process would rebuild the model: new ParamIds, same paths.
        let resumed_model = Tiny::<B>::from_torch(&weights, &device);
        let mut resumed = optimizer(case);
        resumed
            .load_state(AdamWState::load(&file).expect("load state"), &resumed_model)
            .expect("state fits the model");
        let resumed_model = run(
            case,
            resumed_model,
            &mut resumed,
            case.steps / 2..case.steps,
        );

        let (a, b) = (straight_model.to_torch(), resumed_model.to_torch());
        for (name, values) in &a {
            let same = values
                .iter()
                .zip(&b[name])
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{}: {name} differs after resume", case.name);
        }
        assert_eq!(
            straight.state(),
            resumed.state(),
            "{}: optimizer state",
            case.name
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
