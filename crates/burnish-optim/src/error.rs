use std::path::PathBuf;

/// Errors of burnish-optim: bad hyper-parameters, or a saved state that does not fit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptimError {
    /// A hyper-parameter is outside the range torch accepts.
    #[error("invalid AdamW {field}: {value}")]
    InvalidHyperParameter {
        /// The config field.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A saved state names a parameter the module does not have.
    #[error("optimizer state has moments for `{path}`, which the module does not have")]
    UnknownParameter {
        /// The parameter path in the state.
        path: String,
    },
    /// A saved moment's shape differs from the parameter's.
    #[error("optimizer state `{path}` has shape {found:?}, the parameter has {expected:?}")]
    ShapeMismatch {
        /// The tensor in the state.
        path: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The saved shape.
        found: Vec<usize>,
    },
    /// The state was saved with AMSGrad on and the config has it off, or the reverse.
    #[error("optimizer state for `{path}` does not match amsgrad = {amsgrad}")]
    AmsgradMismatch {
        /// The parameter path.
        path: String,
        /// The current config's setting.
        amsgrad: bool,
    },
    /// A state file is not valid.
    #[error("invalid optimizer state: {detail}")]
    Format {
        /// What was wrong.
        detail: String,
    },
    /// Reading or writing a state file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}
