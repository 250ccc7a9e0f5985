use std::path::PathBuf;

/// Why a model directory could not be read or written. Every variant names the file and,
/// where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file the directory must have is not there.
    #[error("{}: no {what} found", path.display())]
    MissingFile {
        /// Where it was looked for.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// `config.json` cannot be used.
    #[error("{}: {source}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        source: burnish_models::ModelError,
    },
    /// A safetensors file or index is malformed, truncated, or its header lies.
    #[error("{}: {detail}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A tensor has a dtype that cannot be converted to float.
    #[error("{}: tensor `{tensor}` has dtype {dtype}; expected F32, F16, BF16 or F64", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor's shape differs from the parameter's.
    #[error("{}: tensor `{tensor}` has shape {found:?}, the model expects {expected:?}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor, HF name.
        tensor: String,
        /// Shape the module needs (in HF layout).
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// Strict loading found module parameters with no tensor in the checkpoint.
    #[error("{}: {} parameter(s) missing from the checkpoint: {}", path.display(), names.len(), names.join(", "))]
    MissingTensors {
        /// The model directory.
        path: PathBuf,
        /// HF names that were looked for.
        names: Vec<String>,
    },
    /// Tensors with NaN or infinite values.
    #[error("{}: non-finite values in {}", path.display(), tensors.join(", "))]
    NonFinite {
        /// The model directory.
        path: PathBuf,
        /// Tensors with their count of non-finite values, `name (n)`.
        tensors: Vec<String>,
    },
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LoadError {
        let path = path.into();
        move |source| LoadError::Io { path, source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> LoadError {
        LoadError::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
