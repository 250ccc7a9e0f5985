use proptest::prelude::*;

use super::*;

fn cfg(kind: ScheduleKind, total: u64, warmup: u64) -> ScheduleConfig {
    ScheduleConfig {
        kind,
        peak_lr: 1.0,
        total_steps: total,
        warmup: Warmup::Steps(warmup),
    }
}

#[test]
fn linear_matches_the_documented_sequence() {
    let s = cfg(ScheduleKind::Linear, 10, 3).build().unwrap();
    let expected = [
        0.0,
        1.0 / 3.0,
        2.0 / 3.0,
        1.0,
        6.0 / 7.0,
        5.0 / 7.0,
        4.0 / 7.0,
        3.0 / 7.0,
        2.0 / 7.0,
        1.0 / 7.0,
    ];
    let got: Vec<f64> = s.lrs().collect();
    assert_eq!(got, expected);
    assert_eq!(s.lr(10), 0.0);
    assert_eq!(s.lr(1000), 0.0);
}

#[test]
fn warmup_ratio_rounds_up_like_transformers() {
    let mut c = cfg(ScheduleKind::Linear, 1000, 0);
    c.warmup = Warmup::Ratio(0.06);
    assert_eq!(c.build().unwrap().warmup_steps(), 60);
    c.total_steps = 7;
    c.warmup = Warmup::Ratio(0.1);
    assert_eq!(c.build().unwrap().warmup_steps(), 1);
}

#[test]
fn invalid_configs_are_typed_errors() {
    let mut c = cfg(ScheduleKind::Linear, 0, 0);
    assert_eq!(c.build().unwrap_err(), ScheduleError::ZeroTotalSteps);
    c.total_steps = 10;
    c.warmup = Warmup::Steps(11);
    assert_eq!(
        c.build().unwrap_err(),
        ScheduleError::WarmupExceedsTotal {
            warmup: 11,
            total: 10
        }
    );
    c.warmup = Warmup::Ratio(1.5);
    assert!(matches!(
        c.build().unwrap_err(),
        ScheduleError::OutOfRange {
            field: "warmup.ratio",
            ..
        }
    ));
    c.warmup = Warmup::Steps(0);
    for bad in [-1e-5, f64::NAN, f64::INFINITY] {
        c.peak_lr = bad;
        assert!(matches!(
            c.build().unwrap_err(),
            ScheduleError::InvalidPeakLr(_)
        ));
    }
    let poly = ScheduleConfig {
        kind: ScheduleKind::Polynomial {
            lr_end: 1e-3,
            power: 1.0,
        },
        peak_lr: 1e-3,
        total_steps: 10,
        warmup: Warmup::Steps(2),
    };
    assert!(matches!(
        poly.build().unwrap_err(),
        ScheduleError::EndLrNotBelowPeak { .. }
    ));
    let mut poly = poly;
    poly.peak_lr = 1.0;
    poly.warmup = Warmup::Steps(10);
    assert!(matches!(
        poly.build().unwrap_err(),
        ScheduleError::NoDecaySteps { .. }
    ));
    let wsd = cfg(
        ScheduleKind::WarmupStableDecay {
            decay: Warmup::Steps(8),
            warmup_ramp: Ramp::Linear,
            decay_ramp: Ramp::Cosine,
            min_lr_ratio: 0.0,
            num_cycles: 0.5,
        },
        10,
        3,
    );
    assert!(matches!(
        wsd.build().unwrap_err(),
        ScheduleError::PhasesExceedTotal { .. }
    ));
}

#[test]
fn errors_name_the_field() {
    let c = cfg(
        ScheduleKind::Cosine {
            num_cycles: 0.5,
            min_lr_ratio: 2.0,
        },
        10,
        0,
    );
    let msg = c.build().unwrap_err().to_string();
    assert!(msg.contains("kind.min_lr_ratio"), "{msg}");
}

#[test]
fn unknown_fields_are_rejected() {
    let typo = r#"{"kind": {"type": "linear"}, "peak_lr": 1.0, "total_step": 10}"#;
    assert!(serde_json::from_str::<ScheduleConfig>(typo).is_err());
    let typo = r#"{"kind": {"type": "cosine", "min_lr": 0.1}, "peak_lr": 1.0, "total_steps": 10}"#;
    assert!(serde_json::from_str::<ScheduleConfig>(typo).is_err());
}

#[test]
fn cosine_holds_its_final_value_past_total() {
    let s = cfg(
        ScheduleKind::Cosine {
            num_cycles: 0.5,
            min_lr_ratio: 0.1,
        },
        10,
        2,
    )
    .build()
    .unwrap();
    assert_eq!(s.multiplier(10), 0.1);
    assert_eq!(s.multiplier(15), 0.1);
}

fn kind_strategy() -> impl Strategy<Value = ScheduleKind> {
    let ramp = prop_oneof![
        Just(Ramp::Linear),
        Just(Ramp::Cosine),
        Just(Ramp::OneMinusSqrt)
    ];
    prop_oneof![
        Just(ScheduleKind::Constant),
        Just(ScheduleKind::ConstantWithWarmup),
        Just(ScheduleKind::Linear),
        (0.0..=1.0f64).prop_map(|m| ScheduleKind::Cosine {
            num_cycles: 0.5,
            min_lr_ratio: m
        }),
        (1u64..5).prop_map(|c| ScheduleKind::CosineWithHardRestarts { num_cycles: c }),
        (0.0..0.5f64, 0.1..4.0f64).prop_map(|(e, p)| ScheduleKind::Polynomial {
            lr_end: e,
            power: p
        }),
        proptest::option::of(1u64..20_000).prop_map(|t| ScheduleKind::InverseSqrt { timescale: t }),
        (0.0..0.5f64, ramp.clone(), ramp, 0.0..=1.0f64).prop_map(|(d, wr, dr, m)| {
            ScheduleKind::WarmupStableDecay {
                decay: Warmup::Ratio(d),
                warmup_ramp: wr,
                decay_ramp: dr,
                min_lr_ratio: m,
                num_cycles: 0.5,
            }
        }),
    ]
}

fn config_strategy() -> impl Strategy<Value = ScheduleConfig> {
    (kind_strategy(), 2u64..3000, 0.0..0.5f64, 0.5..2.0f64).prop_map(|(kind, total, ratio, lr)| {
        ScheduleConfig {
            kind,
            peak_lr: lr,
            total_steps: total,
            warmup: Warmup::Ratio(ratio),
        }
    })
}

/// Kinds whose multiplier never increases after warmup.
fn is_decaying(kind: &ScheduleKind) -> bool {
    !matches!(
        kind,
        ScheduleKind::CosineWithHardRestarts { num_cycles: 2.. }
    )
}

proptest! {
    #[test]
    fn lr_stays_within_zero_and_peak(c in config_strategy(), extra in 0u64..100) {
        let s = c.build().unwrap();
        for step in 0..=s.total_steps() + extra {
            let lr = s.lr(step);
            prop_assert!(lr >= 0.0 && lr <= c.peak_lr * (1.0 + 1e-12), "lr({step}) = {lr}");
        }
    }

    #[test]
    fn warmup_rises_and_decay_falls(c in config_strategy()) {
        let s = c.build().unwrap();
        let w = s.warmup_steps();
        let uses_warmup = !matches!(c.kind, ScheduleKind::Constant);
        if uses_warmup {
            for step in 1..=w {
                prop_assert!(s.multiplier(step) >= s.multiplier(step - 1));
            }
        }
        if is_decaying(&c.kind) {
            for step in w + 1..=s.total_steps() + 10 {
                prop_assert!(
                    s.multiplier(step) <= s.multiplier(step - 1),
                    "rose at step {}: {} -> {}", step, s.multiplier(step - 1), s.multiplier(step)
                );
            }
        }
    }

    #[test]
    fn warmup_ends_exactly_at_peak(c in config_strategy()) {
        let s = c.build().unwrap();
        let w = s.warmup_steps();
        prop_assume!(w > 0 && w < s.total_steps());
        if !matches!(c.kind, ScheduleKind::Constant) {
            // The ramp s/W meets the post-warmup formula at s = W: no jump at the boundary.
            // Polynomial's (lr − end + end)/lr can round to 1 ± 1 ulp, as in transformers.
            prop_assert!((s.multiplier(w) - 1.0).abs() <= 1e-12);
            // The last warmup step is one ramp step below the peak: 1/W for the linear
            // and cosine ramps, sqrt(1/W) for the 1-sqrt ramp of warmup-stable-decay.
            let step_bound = match c.kind {
                ScheduleKind::WarmupStableDecay { warmup_ramp: Ramp::OneMinusSqrt, .. } => {
                    (1.0 / w as f64).sqrt()
                }
                _ => 1.0 / w as f64,
            };
            let ramp_end = s.multiplier(w - 1);
            prop_assert!((1.0 - ramp_end) <= step_bound + 1e-12);
            prop_assert_eq!(s.multiplier(0) , match c.kind {
                ScheduleKind::WarmupStableDecay { min_lr_ratio, .. } => min_lr_ratio,
                _ => 0.0,
            });
        }
    }

    #[test]
    fn value_at_total_per_kind(c in config_strategy()) {
        let s = c.build().unwrap();
        let end = s.multiplier(s.total_steps());
        let expected = match &c.kind {
            ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear | ScheduleKind::CosineWithHardRestarts { .. } => 0.0,
            ScheduleKind::Cosine { min_lr_ratio, .. } => *min_lr_ratio,
            ScheduleKind::Polynomial { lr_end, .. } => lr_end / c.peak_lr,
            ScheduleKind::InverseSqrt { timescale } => {
                let w = s.warmup_steps();
                let ts = timescale.unwrap_or(if w == 0 { 10_000 } else { w }) as f64;
                1.0 / ((s.total_steps() - w) as f64 / ts + 1.0).sqrt()
            }
            ScheduleKind::WarmupStableDecay { min_lr_ratio, .. } => *min_lr_ratio,
        };
        prop_assert!((end - expected).abs() <= 1e-12, "λ(T) = {end}, expected {expected}");
    }

    #[test]
    fn serde_round_trip(c in config_strategy()) {
        let json = serde_json::to_string(&c).unwrap();
        let back: ScheduleConfig = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &c);
        let (a, b) = (c.build().unwrap(), back.build().unwrap());
        for step in 0..=c.total_steps {
            prop_assert_eq!(a.lr(step).to_bits(), b.lr(step).to_bits());
        }
    }
}
