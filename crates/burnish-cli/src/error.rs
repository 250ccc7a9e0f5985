//! Errors of the `burnish` command, each printed as one line.

use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The config file is unreadable or invalid.
    #[error("{location}: {message}")]
    Config {
        /// `file:line`, or the file.
        location: String,
        /// What is wrong, naming the section and key.
        message: String,
    },
    /// A command-line argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// The model directory cannot be loaded or written.
    #[error(transparent)]
    Load(#[from] burnish_loader::LoadError),
    /// The data cannot be read.
    #[error(transparent)]
    Data(#[from] burnish_data::DataError),
    /// The model does not fit the task.
    #[error("{path}: {source}", path = path.display())]
    Model {
        /// The model directory.
        path: PathBuf,
        /// What does not fit.
        source: burnish_models::ModelError,
    },
    /// A checkpoint could not be written or trusted.
    #[error(transparent)]
    Checkpoint(#[from] burnish_checkpoint::CheckpointError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] burnish_trainer::TrainError),
    /// A picture could not be drawn or written.
    #[error("plot: {0}")]
    Plot(String),
    /// Writing an output failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl CliError {
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> CliError + '_ {
        move |source| CliError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
