//! burnish-grad's global clipping against torch.nn.utils.clip_grad_norm_.

use burn::backend::Autodiff;
use burnish_grad::{GradError, NormType, clip_grad_norm};
use burnish_tests::TestBackend;
use burnish_tests::{Bag, fixture, rel_err};
use serde::Deserialize;

type B = Autodiff<TestBackend>;

#[derive(Deserialize)]
struct Case {
    norm_type: NormType,
    max_norm: f64,
    grads: Vec<Vec<f32>>,
    total_norm: f64,
    clipped: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    nonfinite_raises: bool,
}

#[test]
fn clipping_equals_torch() {
    let fx: Fixture = fixture("clip.json");
    let bag = Bag::<B>::zeros(&Default::default());
    let mut worst = 0.0f64;
    for (i, case) in fx.cases.iter().enumerate() {
        let mut grads = bag.grads(&case.grads);
        let total = clip_grad_norm(&bag, &mut grads, case.max_norm, case.norm_type, true)
            .expect("finite gradients");
        let norm_err = (total - case.total_norm).abs() / case.total_norm;
        assert!(
            norm_err <= 1e-6,
            "case {i}: norm {total} vs torch {}",
            case.total_norm
        );
        for (ours, theirs) in bag.read(&grads).iter().zip(&case.clipped) {
            let err = rel_err(ours, theirs);
            worst = worst.max(err);
            assert!(err <= 1e-6, "case {i}: clipped gradient rel err {err:e}");
        }
        if case.total_norm < case.max_norm {
            assert_eq!(
                bag.read(&grads),
                case.grads,
                "case {i}: below max_norm, untouched"
            );
        }
    }
    eprintln!("{} clipping cases, worst rel err {worst:e}", fx.cases.len());
}

#[test]
fn non_finite_norm_is_an_error_like_torch() {
    let fx: Fixture = fixture("clip.json");
    assert!(fx.nonfinite_raises);
    let bag = Bag::<B>::zeros(&Default::default());
    let values = vec![
        vec![0.0; 15],
        vec![1.0, f32::INFINITY, 2.0],
        vec![0.0; 8],
        vec![0.0],
    ];
    let mut grads = bag.grads(&values);
    let err = clip_grad_norm(&bag, &mut grads, 1.0, NormType::L2, true).unwrap_err();
    assert!(matches!(err, GradError::NonFiniteNorm { .. }), "{err}");
    assert_eq!(
        bag.read(&grads)[1][1],
        f32::INFINITY,
        "left untouched on error"
    );
    let norm = clip_grad_norm(&bag, &mut grads, 1.0, NormType::L2, false).expect("no error asked");
    assert!(norm.is_infinite());
}
