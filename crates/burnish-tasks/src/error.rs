//! Errors of burnish-tasks, each naming the file, field or checkpoint concerned.

use std::path::PathBuf;

/// Why a task model could not be built, fed, evaluated, saved or resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The model directory cannot be read or written.
    #[error(transparent)]
    Load(#[from] burnish_loader::LoadError),
    /// The data cannot be read.
    #[error(transparent)]
    Data(#[from] burnish_data::DataError),
    /// The model does not fit the head (no pooler, zero labels, ...).
    #[error("{path}: {source}", path = path.display())]
    Model {
        /// The model directory.
        path: PathBuf,
        /// What does not fit.
        source: burnish_models::ModelError,
    },
    /// A batch the model cannot take (an id or a length beyond its tables).
    #[error("examples {examples:?} of the data: {source}")]
    Input {
        /// The data's example indices (0-based, in file order) in the batch.
        examples: Vec<usize>,
        /// What is out of range.
        source: burnish_models::ModelError,
    },
    /// A batch whose labels do not fit the model's output.
    #[error("bad batch: {0}")]
    Batch(#[from] burnish_models::ModelError),
    /// The model directory is of a family the task cannot use.
    #[error("{path}: task {task} needs {needs}", path = path.display())]
    WrongFamily {
        /// The model directory.
        path: PathBuf,
        /// The task asked for.
        task: String,
        /// The families it takes.
        needs: &'static str,
    },
    /// A classification task without label names.
    #[error("{path}: {detail}", path = path.display())]
    Labels {
        /// The model directory.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// A setting the task cannot honour (dropout on a decoder, say).
    #[error("{field}: {message}")]
    Invalid {
        /// The setting.
        field: String,
        /// Why.
        message: String,
    },
    /// Half precision was asked of a model that does not compute in it.
    #[error(
        "{model} does not implement half-precision compute (burnish_models::Autocast), so \
         it cannot train in {dtype:?}; train it in fp32 or implement \
         TaskModel::with_compute_dtype"
    )]
    NoAutocast {
        /// The model's type.
        model: &'static str,
        /// The dtype asked for.
        dtype: burn::tensor::FloatDType,
    },
    /// A checkpoint cannot be written or trusted.
    #[error(transparent)]
    Checkpoint(#[from] burnish_checkpoint::CheckpointError),
    /// The state to checkpoint has NaN or infinite values: nothing was written, the
    /// earlier checkpoints stay.
    #[error(
        "step {step}: NaN or infinite values in {what} (the run diverged: lower the \
         learning rate); no checkpoint was written, the earlier ones are kept"
    )]
    NonFinite {
        /// The step of the refused checkpoint.
        step: u64,
        /// What is not finite.
        what: String,
    },
    /// A checkpoint does not belong to this run (refused unless forced).
    #[error("cannot resume {} exactly: {detail} (force the resume to accept it)", dir.display())]
    Inconsistent {
        /// The checkpoint.
        dir: PathBuf,
        /// The first difference (`[train] lr: 5e-5 in the checkpoint, 1e-4 now`).
        detail: String,
    },
    /// A checkpoint file holds something else than its format.
    #[error("{}: {detail}", path.display())]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Training failed.
    #[error(transparent)]
    Train(#[from] burnish_trainer::TrainError),
    /// Data-parallel workers could not form their group or stay in step.
    #[error(transparent)]
    Sync(#[from] burnish_trainer::SyncError),
    /// The data-parallel settings are unusable.
    #[error(transparent)]
    Parallel(#[from] burnish_parallel::ParallelError),
    /// Writing an output failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl TaskError {
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> TaskError + '_ {
        move |source| TaskError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
