//! The library's task features end to end, one test binary: checkpoint and resume, and
//! the task set-ups (sentence pairs, regression, multi-label, extractive QA).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

mod resume;
mod tasks;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets")
}
