//! Checkpoints of a `burnish train` run and resuming from them.
//!
//! A checkpoint (`output_dir/checkpoint-<step>/`, written by `burnish-checkpoint`, so
//! atomic and verified) holds:
//! - `model.safetensors` and `config.json`: the model in HF format (transformers loads a
//!   checkpoint directory as it is);
//! - `optimizer.safetensors`: AdamW moments and per-parameter step counts, by parameter path;
//! - `trainer_state.json`: steps done (the schedule position and the dropout seed of the
//!   next step), the loop's position (epoch, batches done: the data order is a function of
//!   the seed and the epoch), best metric, early-stopping count, loss sums since the last
//!   evaluation, the metrics history, and the training data's fingerprint;
//! - `run_config.json`: the run's configuration, compared on resume.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burnish_checkpoint::{
    Checkpoint, FsStorage, ManifestInfo, clean_partials, latest_valid, rotate,
};
use burnish_heads::LabelNames;
use burnish_loader::{HfModelDir, write_module};
use burnish_trainer::{FitState, Trainer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::task::TaskModel;
use crate::{CliError, RunConfig};

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The newest valid checkpoint of the output directory; a fresh start when there is none.
    Latest,
    /// This checkpoint directory.
    From(PathBuf),
}

/// `trainer_state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedState {
    pub(crate) step: u64,
    pub(crate) fit: FitState,
    pub(crate) run_id: String,
    pub(crate) train_fingerprint: String,
    pub(crate) before: Option<std::collections::BTreeMap<String, f64>>,
    /// The fp16 loss scaler (scale, growth tracker, skips); absent in other precisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scaler: Option<burnish::amp::ScalerState>,
}

/// Keys that may change between a checkpoint and its resumption without changing what the
/// run computes.
const FREE_KEYS: [&str; 6] = [
    "train.output_dir",
    "data.cache_dir",
    "train.log_every",
    "train.save_every",
    "train.keep_last",
    // Recomputing activations gives the same bits (tests/resume.rs proves it).
    "train.gradient_checkpointing",
];

/// `section.key` → value for every key of the config (tables such as a schedule with
/// parameters compare as one value).
fn keys(config: &Value) -> Vec<(String, Value)> {
    config
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(section, table)| {
            table
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(k, v)| (format!("{section}.{k}"), v.clone()))
        })
        .filter(|(k, _)| !FREE_KEYS.contains(&k.as_str()))
        .collect()
}

/// The run configuration as compared on resume (paths as resolved).
pub(crate) fn config_json(config: &RunConfig) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// Hex SHA-256 of the keys that decide what a run computes.
pub(crate) fn config_hash(config: &Value) -> String {
    let text = serde_json::to_string(&keys(config)).unwrap_or_default();
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first key whose value differs between the checkpoint's config and this one.
fn changed_key(saved: &Value, now: &Value) -> Option<String> {
    let (a, b) = (keys(saved), keys(now));
    let get = |list: &[(String, Value)], key: &str| {
        list.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null)
    };
    let mut names: Vec<String> = a.iter().chain(&b).map(|(k, _)| k.clone()).collect();
    names.sort();
    names.dedup();
    names.into_iter().find_map(|k| {
        let (old, new) = (get(&a, &k), get(&b, &k));
        (old != new).then(|| {
            let (section, key) = k.split_once('.').unwrap_or(("", &k));
            format!("[{section}] {key}: {old} in the checkpoint, {new} now")
        })
    })
}

/// A checkpoint to resume from, with its state, checked against the current run.
pub(crate) struct Resumed {
    pub(crate) checkpoint: Checkpoint,
    pub(crate) state: SavedState,
}

fn json_of<T: serde::de::DeserializeOwned>(c: &Checkpoint, name: &str) -> Result<T, CliError> {
    let bytes = c.read(name)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CliError::Usage(format!("{}: {e}", c.path(name).display())))
}

/// Finds and checks the checkpoint to resume from; `Ok(None)` means start from the
/// beginning (no checkpoint yet, said on stderr by the caller).
pub(crate) fn find(
    resume: &Resume,
    output_dir: &Path,
    config: &Value,
    train_fingerprint: &str,
    force: bool,
    say: &dyn Fn(&str),
) -> Result<Option<Resumed>, CliError> {
    let removed = clean_partials(output_dir, &FsStorage)?;
    if removed > 0 {
        say(&format!(
            "removed {removed} partial checkpoint(s) left by an interrupted run"
        ));
    }
    let checkpoint = match resume {
        Resume::From(dir) => burnish_checkpoint::load(dir)?,
        Resume::Latest => {
            let latest = latest_valid(output_dir)?;
            for refused in &latest.refused {
                say(&format!("skipping a damaged checkpoint: {refused}"));
            }
            match latest.checkpoint {
                Some(c) => c,
                None => {
                    say(&format!(
                        "no checkpoint in {}: starting from the beginning",
                        output_dir.display()
                    ));
                    return Ok(None);
                }
            }
        }
    };
    let saved_config: Value = json_of(&checkpoint, "run_config.json")?;
    let state: SavedState = json_of(&checkpoint, "trainer_state.json")?;
    if !force {
        if let Some(change) = changed_key(&saved_config, config) {
            return Err(CliError::Usage(format!(
                "cannot resume {} exactly: {change} (pass --force to resume anyway)",
                checkpoint.dir().display()
            )));
        }
        if state.train_fingerprint != train_fingerprint {
            return Err(CliError::Usage(format!(
                "cannot resume {} exactly: [data] train: the file or its tokenization changed (pass --force to resume anyway)",
                checkpoint.dir().display()
            )));
        }
    }
    say(&format!(
        "resuming from {} (step {})",
        checkpoint.dir().display(),
        state.step
    ));
    Ok(Some(Resumed { checkpoint, state }))
}

/// Saves checkpoints during a run and rotates them.
pub(crate) struct Saver<'a> {
    pub(crate) root: PathBuf,
    pub(crate) save_every: Option<u64>,
    pub(crate) keep_last: Option<usize>,
    pub(crate) hf: &'a HfModelDir,
    pub(crate) labels: LabelNames,
    pub(crate) config: Value,
    pub(crate) config_hash: String,
    pub(crate) run_id: String,
    pub(crate) parent: Option<String>,
    pub(crate) best_step: Option<u64>,
    pub(crate) train_fingerprint: String,
    pub(crate) before: Option<std::collections::BTreeMap<String, f64>>,
}

impl Saver<'_> {
    /// Saves `checkpoint-<step>`; with `best`, this step is the best so far and is kept by
    /// rotation.
    pub(crate) fn save<B: AutodiffBackend, M: AutodiffModule<B> + TaskModel<B>>(
        &mut self,
        trainer: &Trainer<B, M>,
        fit: &FitState,
        best: bool,
    ) -> Result<PathBuf, CliError> {
        let step = trainer.steps_done();
        let state = SavedState {
            step,
            fit: fit.clone(),
            run_id: self.run_id.clone(),
            train_fingerprint: self.train_fingerprint.clone(),
            before: self.before.clone(),
            scaler: trainer.scaler_state(),
        };
        let info = ManifestInfo {
            step,
            epoch: fit.epoch as u64,
            run_id: self.run_id.clone(),
            parent: self.parent.clone(),
            config_hash: self.config_hash.clone(),
        };
        let model = trainer.model();
        let hf_config = model.export_config(self.hf.config_json(), &self.labels);
        let optim = trainer
            .optimizer()
            .state()
            .to_bytes()
            .map_err(|e| CliError::Usage(format!("optimizer state of step {step}: {e}")))?;
        let naming = self.hf.naming();
        let dir = burnish_checkpoint::save(&self.root, &info, &FsStorage, |w| {
            w.file("model.safetensors", |out| {
                write_module(model, naming, out).map(|_| ())
            })?;
            w.file("config.json", |out| {
                serde_json::to_writer_pretty(&mut *out, &hf_config).map_err(std::io::Error::other)
            })?;
            w.file("optimizer.safetensors", |out| out.write_all(&optim))?;
            w.file("trainer_state.json", |out| {
                serde_json::to_writer_pretty(&mut *out, &state).map_err(std::io::Error::other)
            })?;
            w.file("run_config.json", |out| {
                serde_json::to_writer_pretty(&mut *out, &self.config).map_err(std::io::Error::other)
            })
        })?;
        if best {
            self.best_step = Some(step);
        }
        self.parent = Some(burnish_checkpoint::dir_name(step));
        if let Some(keep) = self.keep_last {
            let protect: Vec<u64> = self.best_step.into_iter().collect();
            rotate(&self.root, keep, &protect, &FsStorage)?;
        }
        Ok(dir)
    }
}

/// A run id: the start time and process id, enough to tell runs apart in manifests.
pub(crate) fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}
