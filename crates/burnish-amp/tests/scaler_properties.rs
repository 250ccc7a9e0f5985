//! Property tests of the loss-scaler state machine.

use burnish_amp::{LossScaler, LossScalerConfig, StepOutcome};
use proptest::prelude::*;

fn is_power_of_two(x: f32) -> bool {
    // A normal f32 power of two has an all-zero mantissa.
    x.is_normal() && x > 0.0 && x.to_bits() & 0x007f_ffff == 0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn scale_is_a_bounded_power_of_two(
        overflows in proptest::collection::vec(any::<bool>(), 0..600),
        interval in 1u32..6,
        init_exp in -20i32..40,
    ) {
        let mut scaler = LossScaler::new(LossScalerConfig {
            init_scale: 2f32.powi(init_exp),
            growth_interval: interval,
            ..Default::default()
        }).unwrap();
        for &o in &overflows {
            scaler.update(o);
            let s = scaler.scale();
            prop_assert!(is_power_of_two(s), "{s}");
            prop_assert!(s >= f32::MIN_POSITIVE && s <= 2f32.powi(127));
        }
    }

    #[test]
    fn grows_only_after_interval_clean_steps_and_backs_off_on_every_overflow(
        overflows in proptest::collection::vec(prop_oneof![4 => Just(false), 1 => Just(true)], 0..300),
        interval in 1u32..8,
    ) {
        let mut scaler = LossScaler::new(LossScalerConfig {
            growth_interval: interval,
            ..Default::default()
        }).unwrap();
        let mut clean_run = 0u32;
        for &o in &overflows {
            let before = scaler.scale();
            let outcome = scaler.update(o);
            if o {
                clean_run = 0;
                prop_assert_eq!(outcome, StepOutcome::Skipped { old_scale: before, new_scale: before * 0.5 });
                prop_assert_eq!(scaler.scale(), before * 0.5);
                prop_assert_eq!(scaler.state().growth_tracker, 0);
            } else {
                clean_run += 1;
                prop_assert!(outcome.should_step());
                if clean_run == interval {
                    clean_run = 0;
                    // Growth stops at the largest finite f32 power of two, as in torch.
                    let grown = before * 2.0;
                    prop_assert_eq!(scaler.scale(), if grown.is_finite() { grown } else { before });
                } else {
                    prop_assert_eq!(scaler.scale(), before);
                }
                prop_assert_eq!(scaler.state().growth_tracker, clean_run);
            }
        }
    }

    #[test]
    fn saved_state_continues_identically(
        first in proptest::collection::vec(any::<bool>(), 0..50),
        second in proptest::collection::vec(any::<bool>(), 0..50),
    ) {
        let config = LossScalerConfig { growth_interval: 3, ..Default::default() };
        let mut straight = LossScaler::new(config.clone()).unwrap();
        let mut resumed = LossScaler::new(config).unwrap();
        for &o in &first {
            straight.update(o);
            resumed.update(o);
        }
        let json = serde_json::to_string(&resumed.state()).unwrap();
        let mut fresh = LossScaler::new(resumed.config().clone()).unwrap();
        fresh.load_state(serde_json::from_str(&json).unwrap()).unwrap();
        for &o in &second {
            prop_assert_eq!(straight.update(o), fresh.update(o));
        }
        prop_assert_eq!(straight.state(), fresh.state());
    }
}

#[test]
fn scale_never_reaches_zero_or_infinity() {
    let mut scaler = LossScaler::new(LossScalerConfig::default()).unwrap();
    for _ in 0..1000 {
        scaler.update(true);
    }
    assert_eq!(scaler.scale(), f32::MIN_POSITIVE);
    assert_eq!(scaler.state().consecutive_skips, 1000);
    let mut scaler = LossScaler::new(LossScalerConfig {
        growth_interval: 1,
        ..Default::default()
    })
    .unwrap();
    for _ in 0..1000 {
        scaler.update(false);
    }
    assert_eq!(scaler.scale(), 2f32.powi(127));
}

#[test]
fn invalid_configs_name_the_field() {
    let bad = [
        LossScalerConfig {
            init_scale: 0.0,
            ..Default::default()
        },
        LossScalerConfig {
            growth_factor: 1.0,
            ..Default::default()
        },
        LossScalerConfig {
            backoff_factor: 1.5,
            ..Default::default()
        },
        LossScalerConfig {
            growth_interval: 0,
            ..Default::default()
        },
        LossScalerConfig {
            init_scale: f32::NAN,
            ..Default::default()
        },
    ];
    let fields = [
        "init_scale",
        "growth_factor",
        "backoff_factor",
        "growth_interval",
        "init_scale",
    ];
    for (config, field) in bad.into_iter().zip(fields) {
        let err = LossScaler::new(config).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}
