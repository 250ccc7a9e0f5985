//! Errors of the `burnish` command, each printed as one line.

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
    /// A library call failed (model, data, checkpoint, training).
    #[error(transparent)]
    Task(#[from] burnish_tasks::TaskError),
    /// A picture could not be drawn or written.
    #[error("plot: {0}")]
    Plot(String),
}

impl CliError {
    /// The exit status: 1 for a failure while training, 2 for anything the user gave
    /// (settings the trainer refuses before the first step included).
    pub fn exit_code(&self) -> u8 {
        use burnish_trainer::TrainError as T;
        match self {
            CliError::Task(burnish_tasks::TaskError::Train(
                T::Invalid { .. }
                | T::ZeroSchedule { .. }
                | T::Precision { .. }
                | T::Schedule(_)
                | T::Optim(_)
                | T::Config(_),
            )) => 2,
            CliError::Task(burnish_tasks::TaskError::Train(_)) => 1,
            _ => 2,
        }
    }
}
