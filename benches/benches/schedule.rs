//! One learning-rate evaluation per schedule kind.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use burnish_schedule::{Ramp, ScheduleConfig, ScheduleKind, Warmup};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn schedules(c: &mut Criterion) {
    let kinds = [
        ScheduleKind::Linear,
        ScheduleKind::Cosine {
            num_cycles: 0.5,
            min_lr_ratio: 0.1,
        },
        ScheduleKind::Polynomial {
            lr_end: 1e-7,
            power: 2.0,
        },
        ScheduleKind::InverseSqrt { timescale: None },
        ScheduleKind::WarmupStableDecay {
            decay: Warmup::Ratio(0.2),
            warmup_ramp: Ramp::Linear,
            decay_ramp: Ramp::Cosine,
            min_lr_ratio: 0.0,
            num_cycles: 0.5,
        },
    ];
    let mut group = c.benchmark_group("schedule_lr");
    for kind in kinds {
        let name = kind.name();
        let schedule = ScheduleConfig {
            kind,
            peak_lr: 5e-5,
            total_steps: 10_000,
            warmup: Warmup::Ratio(0.06),
        }
        .build()
        .expect("valid schedule");
        group.bench_function(name, |b| b.iter(|| schedule.lr(black_box(7_321))));
    }
    group.finish();
}

criterion_group!(benches, schedules);
criterion_main!(benches);
