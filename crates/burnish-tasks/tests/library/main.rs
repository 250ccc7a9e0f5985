//! The library's task features end to end, one test binary: checkpoint and resume, and
//! the task set-ups (sentence pairs, regression, multi-label, extractive QA) on synthetic
//! and on real data.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

mod real_data;
mod resume;
mod tasks;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets")
}
