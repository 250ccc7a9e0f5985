//! Property tests of AdamW's invariants, groups and state.

use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use burnish_optim::{AdamW, AdamWConfig, AdamWState, OptimError, ParamGroups};
use proptest::prelude::*;

type B = Autodiff<NdArray>;
type Inner = NdArray;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
    norm: LayerNorm<B>,
}

fn net(w: &[f32]) -> Net<B> {
    let d = Default::default();
    Net {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w.to_vec(), [2, 3]), &d)),
        bias: Param::from_tensor(Tensor::from_data(TensorData::new(w[..3].to_vec(), [3]), &d)),
        norm: LayerNormConfig::new(3).init(&d),
    }
}

fn grads(model: &Net<B>, g: &[f32]) -> GradientsParams {
    let d = Default::default();
    let mut out = GradientsParams::new();
    out.register::<Inner, 2>(
        model.weight.id,
        Tensor::from_data(TensorData::new(g.to_vec(), [2, 3]), &d),
    );
    out.register::<Inner, 1>(
        model.bias.id,
        Tensor::from_data(TensorData::new(g[..3].to_vec(), [3]), &d),
    );
    out.register::<Inner, 1>(
        model.norm.gamma.id,
        Tensor::from_data(TensorData::new(g[3..].to_vec(), [3]), &d),
    );
    out
}

fn values<const D: usize>(p: &Param<Tensor<B, D>>) -> Vec<f32> {
    p.val().into_data().to_vec::<f32>().expect("f32")
}

fn six() -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-10.0f32..10.0, 6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn first_update_is_bounded_by_lr(w in six(), g in six(), lr in 1e-5f64..1e-1) {
        let model = net(&w);
        let mut optim = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() }, ParamGroups::all_decay()).unwrap();
        let g_model = grads(&model, &g);
        let updated = optim.step(lr, model, g_model);
        for (after, before) in values(&updated.weight).iter().zip(&w) {
            prop_assert!(f64::from((after - before).abs()) <= lr * (1.0 + 1e-5) + 1e-6);
        }
    }

    #[test]
    fn zero_gradient_means_pure_decoupled_decay(w in six(), lr in 1e-5f64..1e-1, wd in 0.0f64..0.5) {
        let model = net(&w);
        let mut optim = AdamW::new(AdamWConfig { weight_decay: wd, ..Default::default() }, ParamGroups::default()).unwrap();
        let g_model = grads(&model, &[0.0; 6]);
        let gamma_before = values(&model.norm.gamma);
        let updated = optim.step(lr, model, g_model);
        let factor = (1.0 - lr * wd) as f32;
        let expected: Vec<f32> = w.iter().map(|x| x * factor).collect();
        prop_assert_eq!(values(&updated.weight), expected);
        // The bias and the LayerNorm weight sit in the no-decay group: untouched.
        prop_assert_eq!(values(&updated.bias), w[..3].to_vec());
        prop_assert_eq!(values(&updated.norm.gamma), gamma_before);
    }

    #[test]
    fn updates_ignore_the_gradient_scale(w in six(), g in proptest::collection::vec(0.1f32..10.0, 6), c in 0.01f32..100.0) {
        let run = |scale: f32| {
            let model = net(&w);
            // ε > 0 is required; this one is far below every √v here, so the update is exactly scale-free.
            let mut optim = AdamW::new(AdamWConfig { epsilon: 1e-30, ..Default::default() }, ParamGroups::default()).unwrap();
            let mut model = model;
            for step in 0..3 {
                let gs: Vec<f32> = g.iter().map(|x| x * scale * (step + 1) as f32).collect();
                let gp = grads(&model, &gs);
                model = optim.step(1e-2, model, gp);
            }
            values(&model.weight)
        };
        for (a, b) in run(1.0).iter().zip(run(c)) {
            prop_assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn state_bytes_round_trip(w in six(), g in six(), steps in 1usize..4, amsgrad in any::<bool>()) {
        let mut model = net(&w);
        let config = AdamWConfig { amsgrad, ..Default::default() };
        let mut optim = AdamW::<B>::new(config.clone(), ParamGroups::default()).unwrap();
        for _ in 0..steps {
            let gp = grads(&model, &g);
            model = optim.step(1e-3, model, gp);
        }
        let state = optim.state();
        let back = AdamWState::from_bytes(&state.to_bytes().unwrap()).unwrap();
        prop_assert_eq!(&back, &state);
        let mut fresh = AdamW::<B>::new(config, ParamGroups::default()).unwrap();
        fresh.load_state(back, &model).unwrap();
        prop_assert_eq!(fresh.state(), state);
    }
}

#[test]
fn params_without_gradient_are_not_touched() {
    let model = net(&[1.0; 6]);
    let mut optim = AdamW::<B>::new(AdamWConfig::default(), ParamGroups::all_decay()).unwrap();
    let updated = optim.step(1e-2, model, GradientsParams::new());
    assert_eq!(values(&updated.weight), vec![1.0; 6]);
    assert!(optim.state().params.is_empty());
}

#[test]
fn state_that_does_not_fit_is_refused() {
    let mut model = net(&[1.0; 6]);
    let mut optim = AdamW::<B>::new(AdamWConfig::default(), ParamGroups::default()).unwrap();
    let gp = grads(&model, &[0.5; 6]);
    model = optim.step(1e-3, model, gp);
    let mut state = optim.state();

    let mut renamed = state.clone();
    let moments = renamed.params.remove("weight").unwrap();
    renamed.params.insert("encoder.weight".into(), moments);
    let err = optim.load_state(renamed, &model).unwrap_err();
    assert!(
        matches!(err, OptimError::UnknownParameter { ref path } if path == "encoder.weight"),
        "{err}"
    );

    let m = state.params.get_mut("bias").unwrap();
    m.exp_avg = TensorData::new(vec![0.0f32; 4], [4]);
    let err = optim.load_state(state.clone(), &model).unwrap_err();
    assert!(err.to_string().contains("bias.exp_avg"), "{err}");

    let mut amsgrad = AdamW::<B>::new(
        AdamWConfig {
            amsgrad: true,
            ..Default::default()
        },
        ParamGroups::default(),
    )
    .unwrap();
    let err = amsgrad.load_state(optim.state(), &model).unwrap_err();
    assert!(matches!(err, OptimError::AmsgradMismatch { .. }), "{err}");

    assert!(AdamWState::from_bytes(b"not a safetensors file").is_err());
}

#[test]
fn invalid_hyper_parameters_are_refused() {
    for (config, field) in [
        (
            AdamWConfig {
                beta1: 1.0,
                ..Default::default()
            },
            "beta1",
        ),
        (
            AdamWConfig {
                beta2: -0.1,
                ..Default::default()
            },
            "beta2",
        ),
        (
            AdamWConfig {
                epsilon: f64::NAN,
                ..Default::default()
            },
            "epsilon",
        ),
        (
            AdamWConfig {
                weight_decay: -1.0,
                ..Default::default()
            },
            "weight_decay",
        ),
    ] {
        let err = AdamW::<B>::new(config, ParamGroups::default()).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn torch_defaults() {
    let c = AdamWConfig::default();
    assert_eq!(
        (c.beta1, c.beta2, c.epsilon, c.weight_decay, c.amsgrad),
        (0.9, 0.999, 1e-8, 1e-2, false)
    );
}

#[derive(Module, Debug)]
struct Deep<B: Backend> {
    weight: Param<Tensor<B, 7>>,
}

#[test]
fn a_parameter_of_rank_seven_is_refused_not_skipped() {
    let deep = Deep::<B> {
        weight: Param::from_tensor(Tensor::zeros([1, 1, 1, 1, 1, 1, 2], &Default::default())),
    };
    let optim = AdamW::<B>::new(AdamWConfig::default(), ParamGroups::default()).unwrap();
    let err = optim.check_module(&deep).unwrap_err();
    assert!(
        err.to_string().contains("weight: a parameter of rank 7"),
        "{err}"
    );
    assert!(optim.check_module(&net(&[0.0; 6])).is_ok());
}

#[test]
fn group_rules_out_of_range_are_refused() {
    use burnish_optim::{GroupRule, Matcher};
    for (lr_scale, weight_decay) in [
        (0.0, None),
        (-1.0, None),
        (f64::NAN, None),
        (1.0, Some(-0.1)),
    ] {
        let rule = GroupRule {
            name: "g".into(),
            matcher: Matcher::HfNoDecay,
            weight_decay,
            lr_scale,
        };
        let groups = ParamGroups::new(vec![rule]);
        assert!(matches!(
            AdamW::<B>::new(AdamWConfig::default(), groups),
            Err(OptimError::InvalidHyperParameter { .. })
        ));
    }
    let zero_eps = AdamWConfig {
        epsilon: 0.0,
        ..Default::default()
    };
    assert!(AdamW::<B>::new(zero_eps, ParamGroups::default()).is_err());
}
