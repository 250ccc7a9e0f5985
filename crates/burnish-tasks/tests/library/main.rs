//! The library's task features end to end, one test binary: checkpoint and resume, and
//! data-parallel training, the task set-ups (sentence pairs, regression, multi-label, extractive QA) on synthetic
//! and on real data.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burnish_tasks::{RunConfig, RunOptions, RunOutcome, Silent, fine_tune};
use serde_json::Value;

/// The training backend of these tests.
type Flex = Autodiff<burn_flex::Flex<f32, i32>>;

mod families;
mod generation;
mod packing;
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

/// Float tensors by name.
pub(crate) type Weights = BTreeMap<String, Vec<f32>>;

/// Every float tensor of a safetensors file, by name.
pub(crate) fn weights(path: &Path) -> Weights {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The train losses of `metrics.jsonl`, by step.
pub(crate) fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|e| Some((e["step"].as_u64()?, e.get("loss")?.as_f64()?)))
        .collect()
}
