//! burnish-schedule against transformers' schedulers, value for value.

use burnish_schedule::ScheduleConfig;
use burnish_tests::fixture;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    config: ScheduleConfig,
    lrs: Vec<f64>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[test]
fn every_schedule_equals_transformers() {
    let fx: Fixture = fixture("schedules.json");
    assert!(fx.cases.len() >= 30, "fixture has {} cases", fx.cases.len());
    let mut worst = 0.0f64;
    for case in &fx.cases {
        let schedule = case
            .config
            .build()
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(case.lrs.len() as u64, schedule.total_steps() + 1);
        for (step, &expected) in case.lrs.iter().enumerate() {
            let got = schedule.lr(step as u64);
            let err = (got - expected).abs();
            worst = worst.max(err / expected.abs().max(1e-300));
            assert!(
                err <= 1e-15 * expected.abs().max(1e-12),
                "{}: step {step}: burnish {got:e}, transformers {expected:e}",
                case.name
            );
        }
    }
    eprintln!(
        "{} schedules, worst relative error {worst:e}",
        fx.cases.len()
    );
}
