//! The saveable optimizer state, and its safetensors file format.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{DType, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::OptimError;

/// Format tag written in the file's metadata; bumped on any incompatible change.
const FORMAT: &str = "burnish-adamw-v1";
const FORMAT_KEY: &str = "format";
const STEPS_KEY: &str = "steps";

/// Moments and step count of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamMoments {
    /// Number of updates this parameter has received (torch's per-parameter `step`).
    pub step: u64,
    /// First moment `m`, shaped like the parameter.
    pub exp_avg: TensorData,
    /// Second moment `v`, shaped like the parameter.
    pub exp_avg_sq: TensorData,
    /// Running maximum of `v` (AMSGrad only).
    pub max_exp_avg_sq: Option<TensorData>,
}

/// Everything [`AdamW`](crate::AdamW) needs to continue bit-identically, keyed by
/// parameter path. Hyper-parameters are configuration, not state, and are not included.
///
/// Stored as safetensors: tensors `<path>.exp_avg`, `<path>.exp_avg_sq`,
/// `<path>.max_exp_avg_sq`, and the step counts as JSON in the metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdamWState {
    /// State of every parameter updated at least once.
    pub params: BTreeMap<String, ParamMoments>,
}

fn to_safetensors_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        _ => return None,
    })
}

fn from_safetensors_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        _ => return None,
    })
}

impl AdamWState {
    /// Serializes the state to safetensors bytes.
    ///
    /// # Errors
    /// [`OptimError::Format`] when a moment has a dtype safetensors cannot hold.
    pub fn to_bytes(&self) -> Result<Vec<u8>, OptimError> {
        let mut views = Vec::new();
        for (path, m) in &self.params {
            let tensors = [
                ("exp_avg", Some(&m.exp_avg)),
                ("exp_avg_sq", Some(&m.exp_avg_sq)),
                ("max_exp_avg_sq", m.max_exp_avg_sq.as_ref()),
            ];
            for (what, data) in tensors {
                let Some(data) = data else { continue };
                let name = format!("{path}.{what}");
                let dtype = to_safetensors_dtype(data.dtype).ok_or_else(|| OptimError::Format {
                    detail: format!("{name}: unsupported dtype {:?}", data.dtype),
                })?;
                let view =
                    TensorView::new(dtype, data.shape.to_vec(), data.as_bytes()).map_err(|e| {
                        OptimError::Format {
                            detail: format!("{name}: {e}"),
                        }
                    })?;
                views.push((name, view));
            }
        }
        let steps: BTreeMap<&str, u64> = self
            .params
            .iter()
            .map(|(path, m)| (path.as_str(), m.step))
            .collect();
        let steps = serde_json::to_string(&steps).map_err(|e| OptimError::Format {
            detail: e.to_string(),
        })?;
        let metadata = HashMap::from([
            (FORMAT_KEY.to_owned(), FORMAT.to_owned()),
            (STEPS_KEY.to_owned(), steps),
        ]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| OptimError::Format {
            detail: e.to_string(),
        })
    }

    /// Parses bytes written by [`AdamWState::to_bytes`].
    ///
    /// # Errors
    /// [`OptimError::Format`] when the bytes are not safetensors, lack the burnish format
    /// tag or step counts, or name a tensor the step table does not know.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OptimError> {
        let format_err = |detail: String| OptimError::Format { detail };
        let st = SafeTensors::deserialize(bytes).map_err(|e| format_err(e.to_string()))?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| format_err(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get(FORMAT_KEY) {
            Some(f) if f == FORMAT => {}
            other => {
                return Err(format_err(format!(
                    "expected format {FORMAT:?}, found {other:?}"
                )));
            }
        }
        let steps: BTreeMap<String, u64> = meta
            .get(STEPS_KEY)
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| format_err(format!("step table: {e}")))?
            .ok_or_else(|| format_err("no step table in the metadata".to_owned()))?;
        let tensor = |name: String| -> Result<Option<TensorData>, OptimError> {
            let view = match st.tensor(&name) {
                Ok(view) => view,
                Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
                Err(e) => return Err(format_err(format!("{name}: {e}"))),
            };
            let dtype = from_safetensors_dtype(view.dtype())
                .ok_or_else(|| format_err(format!("{name}: unsupported dtype {}", view.dtype())))?;
            Ok(Some(TensorData::from_bytes_vec(
                view.data().to_vec(),
                view.shape().to_vec(),
                dtype,
            )))
        };
        let mut params = BTreeMap::new();
        for (path, step) in steps {
            let required = |what: &str| {
                let name = format!("{path}.{what}");
                tensor(name.clone())?.ok_or_else(|| format_err(format!("missing tensor {name}")))
            };
            let moments = ParamMoments {
                step,
                exp_avg: required("exp_avg")?,
                exp_avg_sq: required("exp_avg_sq")?,
                max_exp_avg_sq: tensor(format!("{path}.max_exp_avg_sq"))?,
            };
            params.insert(path, moments);
        }
        let expected: usize = params
            .values()
            .map(|m| 2 + usize::from(m.max_exp_avg_sq.is_some()))
            .sum();
        if st.len() != expected {
            return Err(format_err(format!(
                "{} tensors in the file, {expected} described by the step table",
                st.len()
            )));
        }
        Ok(AdamWState { params })
    }

    /// Writes the state to a safetensors file.
    ///
    /// # Errors
    /// [`OptimError::Io`] naming the file, or [`OptimError::Format`].
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| OptimError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a state file written by [`AdamWState::save`].
    ///
    /// # Errors
    /// [`OptimError::Io`] naming the file, or [`OptimError::Format`] prefixed with it.
    pub fn load(path: &Path) -> Result<Self, OptimError> {
        let bytes = std::fs::read(path).map_err(|source| OptimError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            OptimError::Format { detail } => OptimError::Format {
                detail: format!("{}: {detail}", path.display()),
            },
            other => other,
        })
    }
}
