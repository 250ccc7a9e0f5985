//! The library's task features end to end, one test binary: checkpoint and resume, and
//! data-parallel training, the task set-ups (sentence pairs, regression, multi-label, extractive QA) on synthetic
//! and on real data.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use burn::backend::Autodiff;
use burnish_tasks::{RunConfig, RunOptions, RunOutcome, Silent, fine_tune};
use serde_json::Value;

/// The training backend of these tests.
type Flex = Autodiff<burn_flex::Flex<f32, i32>>;

mod families;
mod parallel;
mod real_data;
mod resume;
mod tasks;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets")
}

/// Fine-tunes the run `config` (JSON of a `RunConfig`) describes, after each
/// `(section, {key: value})` of `overrides` replaced those keys of its section.
fn fine_tune_with(
    mut config: Value,
    overrides: impl IntoIterator<Item = (&'static str, Value)>,
) -> RunOutcome {
    for (section, fields) in overrides {
        for (k, v) in fields.as_object().unwrap() {
            config[section][k] = v.clone();
        }
    }
    let config: RunConfig = serde_json::from_value(config).unwrap();
    fine_tune::<Flex>(
        &config,
        &RunOptions::default(),
        &mut Silent,
        &Default::default(),
    )
    .unwrap()
}
