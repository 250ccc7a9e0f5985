//! burnish-amp's LossScaler against torch.amp.GradScaler on a real overflow sequence.

use burn::backend::Autodiff;
use burnish_amp::{LossScaler, LossScalerConfig};
use burnish_tests::TestBackend;
use burnish_tests::{Bag, fixture};
use serde::Deserialize;

type B = Autodiff<TestBackend>;

#[derive(Deserialize)]
struct Fixture {
    init_scale: f32,
    growth_factor: f32,
    backoff_factor: f32,
    growth_interval: u32,
    overflow: Vec<bool>,
    scale_after: Vec<f32>,
    stepped: Vec<bool>,
}

#[test]
fn scaler_follows_grad_scaler() {
    let fx: Fixture = fixture("scaler.json");
    let mut scaler = LossScaler::new(LossScalerConfig {
        init_scale: fx.init_scale,
        growth_factor: fx.growth_factor,
        backoff_factor: fx.backoff_factor,
        growth_interval: fx.growth_interval,
        ..Default::default()
    })
    .expect("valid config");
    let bag = Bag::<B>::zeros(&Default::default());
    for (step, &overflow) in fx.overflow.iter().enumerate() {
        // Scaled gradients as torch's backward would produce them, with inf where torch had.
        let s = scaler.scale();
        let bad = if overflow { f32::INFINITY } else { 4.0 * s };
        let values = vec![
            vec![s; 15],
            vec![2.0 * s, 3.0 * s, bad],
            vec![s; 8],
            vec![s],
        ];
        let mut grads = bag.grads(&values);
        let found_inf = scaler.unscale(&bag, &mut grads);
        assert_eq!(found_inf, overflow, "step {step}: overflow detection");
        if !overflow {
            assert_eq!(
                bag.read(&grads)[1],
                [2.0, 3.0, 4.0],
                "step {step}: unscaled exactly"
            );
        }
        let outcome = scaler.update(found_inf);
        assert_eq!(
            outcome.should_step(),
            fx.stepped[step],
            "step {step}: stepped"
        );
        assert_eq!(scaler.scale(), fx.scale_after[step], "step {step}: scale");
    }
    assert_eq!(
        scaler.state().total_skips,
        fx.overflow.iter().filter(|&&o| o).count() as u64
    );
}
