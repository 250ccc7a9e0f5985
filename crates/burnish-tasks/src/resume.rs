//! Checkpoints of a whole run and exact resumption.
//!
//! A checkpoint (`<root>/checkpoint-<step>/`, written through `burnish-checkpoint`, so
//! atomic and verified) holds:
//! - `model.safetensors` and `config.json`: the model in Hugging Face format
//!   (transformers loads a checkpoint directory as it is);
//! - `optimizer.safetensors`: the optimizer's state ([`Optimizer::state_bytes`]);
//! - `trainer_state.json`: a [`RunState`]: steps done (the schedule position and the
//!   dropout seed of the next step), the fp16 loss scaler, the loop's position (epoch,
//!   batches done: the data order is a function of the seed and the epoch), the best
//!   metric, the early-stopping count, the metrics history, and the training data's
//!   fingerprint;
//! - `run_config.json`: the run's configuration, compared on resume ([`RunFingerprint`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use burnish_checkpoint::{
    Checkpoint, FsStorage, ManifestInfo, clean_partials, latest_valid, rotate,
};
use burnish_heads::LabelNames;
use burnish_loader::{HfModelDir, LoadOptions, Naming, Weights, load_module, write_module};
use burnish_trainer::{BoxError, FitState, Hooks, Optimizer, Trainer, TrainerState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{TaskError, TaskModel};

/// `trainer_state.json` of a checkpoint: everything besides model and optimizer that an
/// exact resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Steps done and the fp16 loss scaler.
    #[serde(flatten)]
    pub trainer: TrainerState,
    /// The loop's position, best metric, early-stopping count, history.
    pub fit: FitState,
    /// The run this checkpoint belongs to.
    pub run_id: String,
    /// The training data's fingerprint ([`CacheMeta::fingerprint`](burnish_data::CacheMeta)).
    pub data_fingerprint: String,
    /// Validation metrics before training, kept for the final report.
    #[serde(default)]
    pub before: Option<BTreeMap<String, f64>>,
}

/// A run's configuration as compared on resume: a JSON object of sections
/// (`{"train": {"lr": ...}, ...}`); every `section.key` counts except the free ones
/// (paths and intervals that do not change what the run computes).
#[derive(Debug, Clone, PartialEq)]
pub struct RunFingerprint {
    config: Value,
    free: Vec<String>,
}

impl RunFingerprint {
    /// The fingerprint of `config`, every key counting.
    pub fn new(config: Value) -> Self {
        RunFingerprint {
            config,
            free: Vec::new(),
        }
    }

    /// Keys (`section.key`) that may change across a resume.
    #[must_use]
    pub fn ignoring(mut self, keys: &[&str]) -> Self {
        self.free.extend(keys.iter().map(|k| (*k).to_owned()));
        self
    }

    /// The configuration as written to `run_config.json`.
    pub fn config(&self) -> &Value {
        &self.config
    }

    fn keys(&self, config: &Value) -> Vec<(String, Value)> {
        let mut keys: Vec<(String, Value)> = config
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(section, table)| match table.as_object() {
                Some(t) => t
                    .iter()
                    .map(|(k, v)| (format!("{section}.{k}"), v.clone()))
                    .collect(),
                None => vec![(section.clone(), table.clone())],
            })
            .filter(|(k, _)| !self.free.contains(k))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    /// Hex SHA-256 of the keys that decide what the run computes (the manifest's
    /// `config_hash`).
    pub fn hash(&self) -> String {
        let text = serde_json::to_string(&self.keys(&self.config)).unwrap_or_default();
        hex(&Sha256::digest(text.as_bytes()))
    }

    /// The first key whose value differs between `saved` and this configuration, said as
    /// `[section] key: old in the checkpoint, new now`.
    pub fn first_difference(&self, saved: &Value) -> Option<String> {
        let (a, b) = (self.keys(saved), self.keys(&self.config));
        let get = |list: &[(String, Value)], key: &str| {
            list.iter()
                .find(|(k, _)| k == key)
                .map_or(Value::Null, |(_, v)| v.clone())
        };
        let mut names: Vec<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
        names.sort();
        names.dedup();
        names.into_iter().find_map(|k| {
            let (old, new) = (get(&a, k), get(&b, k));
            (old != new).then(|| {
                let (section, key) = k.split_once('.').unwrap_or(("", k));
                format!("[{section}] {key}: {old} in the checkpoint, {new} now")
            })
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A run id: the start time and process id, enough to tell runs apart in manifests.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

/// Saves the complete training state of a run as checkpoints under a root directory and
/// rotates them, never deleting the best. As [`Hooks`], it saves whenever the loop says a
/// save is due ([`FitConfig::save_every`](burnish_trainer::FitConfig), a new best, or a
/// hook's [`Control::SAVE`](burnish_trainer::Control)).
#[derive(Debug)]
pub struct Checkpointer {
    root: PathBuf,
    keep_last: Option<usize>,
    naming: Naming,
    hf_config: Value,
    labels: LabelNames,
    run: RunFingerprint,
    run_id: String,
    parent: Option<String>,
    best_step: Option<u64>,
    data_fingerprint: String,
    before: Option<BTreeMap<String, f64>>,
}

impl Checkpointer {
    /// Checkpoints under `root` of a model loaded from `hf` (its parameter naming and
    /// `config.json`), for the run `run` over training data `data_fingerprint`.
    pub fn new(
        root: &Path,
        hf: &HfModelDir,
        labels: LabelNames,
        run: RunFingerprint,
        data_fingerprint: &str,
    ) -> Self {
        Checkpointer {
            root: root.to_owned(),
            keep_last: None,
            naming: hf.naming(),
            hf_config: hf.config_json().clone(),
            labels,
            run,
            run_id: new_run_id(),
            parent: None,
            best_step: None,
            data_fingerprint: data_fingerprint.to_owned(),
            before: None,
        }
    }

    /// Keeps the newest `n` checkpoints (and the best) after each save.
    #[must_use]
    pub fn keep_last(mut self, n: Option<usize>) -> Self {
        self.keep_last = n;
        self
    }

    /// Metrics before training, saved with every checkpoint for the final report.
    #[must_use]
    pub fn with_before(mut self, before: Option<BTreeMap<String, f64>>) -> Self {
        self.before = before;
        self
    }

    /// Continues the run of `resumed`: its run id, its checkpoint as parent, its best.
    #[must_use]
    pub fn continuing(mut self, resumed: &Resumed) -> Self {
        self.run_id.clone_from(&resumed.state.run_id);
        self.parent = Some(burnish_checkpoint::dir_name(
            resumed.state.trainer.steps_done,
        ));
        self.best_step = resumed.state.fit.best.map(|b| b.1);
        self.before.clone_from(&resumed.state.before);
        self
    }

    /// Saves `checkpoint-<step>` of `trainer` at loop state `fit`; with `best`, this step is
    /// the best so far and rotation keeps it.
    ///
    /// # Errors
    /// [`TaskError::Checkpoint`] (the earlier checkpoints are left as they were);
    /// [`TaskError::Train`] when the optimizer state cannot be serialized.
    pub fn save<B, M, O>(
        &mut self,
        trainer: &Trainer<B, M, O>,
        fit: &FitState,
        best: bool,
    ) -> Result<PathBuf, TaskError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + TaskModel<B>,
        O: Optimizer<B, M>,
    {
        let step = trainer.steps_done();
        let state = RunState {
            trainer: trainer.state(),
            fit: fit.clone(),
            run_id: self.run_id.clone(),
            data_fingerprint: self.data_fingerprint.clone(),
            before: self.before.clone(),
        };
        let info = ManifestInfo {
            step,
            epoch: fit.epoch as u64,
            run_id: self.run_id.clone(),
            parent: self.parent.clone(),
            config_hash: self.run.hash(),
        };
        let model = trainer.model();
        let optim = trainer.optimizer_state_bytes()?;
        // A checkpoint of a diverged run would pass verification and, through rotation,
        // push out the last good one.
        if let Some(what) = non_finite(&model.valid(), &optim) {
            return Err(TaskError::NonFinite { step, what });
        }
        let hf_config = model.export_config(&self.hf_config, &self.labels);
        let naming = self.naming;
        let json = |out: &mut dyn std::io::Write, value: &dyn erased::Json| value.write(out);
        let dir = burnish_checkpoint::save(&self.root, &info, &FsStorage, |w| {
            w.file("model.safetensors", |out| {
                write_module(model, naming, out).map(|_| ())
            })?;
            w.file("config.json", |out| json(out, &hf_config))?;
            w.file("optimizer.safetensors", |out| out.write_all(&optim))?;
            w.file("trainer_state.json", |out| json(out, &state))?;
            w.file("run_config.json", |out| json(out, self.run.config()))
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

/// 1 for a float parameter with a NaN or an infinity.
struct NonFiniteFlags<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for NonFiniteFlags<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .push(param.val().is_finite().bool_not().any().float());
    }
}

/// What is not finite: the model's parameters (one device read for all of them) or, when
/// the optimizer state is safetensors of f32/f64 tensors, a tensor of it.
fn non_finite<B: Backend, M: Module<B>>(model: &M, optim: &[u8]) -> Option<String> {
    let mut flags = NonFiniteFlags::<B>(Vec::new());
    model.visit(&mut flags);
    if !flags.0.is_empty() && Tensor::cat(flags.0, 0).sum().into_scalar().elem::<f64>() > 0.0 {
        return Some("the model's parameters".into());
    }
    let tensors = safetensors::SafeTensors::deserialize(optim).ok()?;
    tensors.iter().find_map(|(name, view)| {
        let finite = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            safetensors::Dtype::F64 => view.data().chunks_exact(8).all(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).is_finite()
            }),
            _ => true,
        };
        (!finite).then(|| format!("the optimizer state `{name}`"))
    })
}

/// Pretty JSON of any serializable value into a writer.
mod erased {
    pub(super) trait Json {
        fn write(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            serde_json::to_writer_pretty(out, self).map_err(std::io::Error::other)
        }
    }
}

impl<B, M, O> Hooks<B, M, O> for Checkpointer
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + TaskModel<B>,
    O: Optimizer<B, M>,
{
    fn save(
        &mut self,
        trainer: &Trainer<B, M, O>,
        state: &FitState,
        best: bool,
    ) -> Result<Option<PathBuf>, BoxError> {
        Ok(Some(Checkpointer::save(self, trainer, state, best)?))
    }
}

/// A verified checkpoint to resume from, with its run state.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The checkpoint (verified against its manifest).
    pub checkpoint: Checkpoint,
    /// Its `trainer_state.json`.
    pub state: RunState,
    config: Value,
}

fn json_of<T: serde::de::DeserializeOwned>(c: &Checkpoint, name: &str) -> Result<T, TaskError> {
    let bytes = c.read(name)?;
    serde_json::from_slice(&bytes).map_err(|e| TaskError::BadState {
        path: c.path(name),
        detail: e.to_string(),
    })
}

impl Resumed {
    /// Opens and verifies the checkpoint `dir` and reads its state.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] (field `resume`) when `dir` is not a directory;
    /// [`TaskError::Checkpoint`] for a damaged checkpoint; [`TaskError::BadState`] when its
    /// state files are unreadable or disagree with its manifest.
    pub fn open(dir: &Path) -> Result<Self, TaskError> {
        if !dir.is_dir() {
            return Err(TaskError::Invalid {
                field: "resume".into(),
                message: format!("{} is not a checkpoint directory", dir.display()),
            });
        }
        Self::from_checkpoint(burnish_checkpoint::load(dir)?)
    }

    fn from_checkpoint(checkpoint: Checkpoint) -> Result<Self, TaskError> {
        let state: RunState = json_of(&checkpoint, "trainer_state.json")?;
        let config = json_of(&checkpoint, "run_config.json")?;
        let manifest_step = checkpoint.manifest().step;
        if state.trainer.steps_done != manifest_step {
            return Err(TaskError::BadState {
                path: checkpoint.path("trainer_state.json"),
                detail: format!(
                    "{} steps done, but the manifest is of step {manifest_step}",
                    state.trainer.steps_done
                ),
            });
        }
        Ok(Resumed {
            checkpoint,
            state,
            config,
        })
    }

    /// The newest valid checkpoint under `root` (damaged ones are skipped and reported to
    /// `say`, partial saves removed); `None` when there is none.
    ///
    /// # Errors
    /// [`TaskError::Checkpoint`] for an unreadable root; as [`open`](Self::open).
    pub fn latest(root: &Path, say: &mut dyn FnMut(&str)) -> Result<Option<Self>, TaskError> {
        let removed = clean_partials(root, &FsStorage)?;
        if removed > 0 {
            say(&format!(
                "removed {removed} partial checkpoint(s) left by an interrupted run"
            ));
        }
        let latest = latest_valid(root)?;
        for refused in &latest.refused {
            say(&format!("skipping a damaged checkpoint: {refused}"));
        }
        latest.checkpoint.map(Self::from_checkpoint).transpose()
    }

    /// Steps done at the checkpoint.
    pub fn step(&self) -> u64 {
        self.state.trainer.steps_done
    }

    /// Refuses a checkpoint of another configuration or other training data.
    ///
    /// # Errors
    /// [`TaskError::Inconsistent`] naming the first difference.
    pub fn check(&self, run: &RunFingerprint, data_fingerprint: &str) -> Result<(), TaskError> {
        let dir = self.checkpoint.dir().to_owned();
        if let Some(detail) = run.first_difference(&self.config) {
            return Err(TaskError::Inconsistent { dir, detail });
        }
        if self.state.data_fingerprint != data_fingerprint {
            return Err(TaskError::Inconsistent {
                dir,
                detail: "the training data or its tokenization changed".into(),
            });
        }
        Ok(())
    }

    /// Loads the checkpoint's weights into `model` (built as for the original run);
    /// every parameter must be there.
    ///
    /// # Errors
    /// [`TaskError::Load`].
    pub fn load_model<B: Backend, M: Module<B>>(
        &self,
        model: M,
        naming: Naming,
    ) -> Result<M, TaskError> {
        let dir = self.checkpoint.dir();
        let weights = Weights::open_dir(dir)?;
        Ok(load_module(model, &weights, naming, &LoadOptions::default(), dir)?.0)
    }

    /// Puts `trainer` (holding the model from [`load_model`](Self::load_model)) back at
    /// the checkpoint: optimizer state, steps done, loss scaler. Returns the loop state to
    /// continue from with [`Trainer::fit_from`].
    ///
    /// # Errors
    /// [`TaskError::Train`] when the optimizer or scaler state does not fit the trainer.
    pub fn restore<B, M, O>(&self, trainer: &mut Trainer<B, M, O>) -> Result<FitState, TaskError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<B, M>,
    {
        let bytes = self.checkpoint.read("optimizer.safetensors")?;
        trainer.restore(&bytes, self.state.trainer.clone())?;
        Ok(self.state.fit.clone())
    }
}
