//! Loading checkpoint tensors into a module, by name, with a report.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burnish_params::PathStack;

use crate::{LoadError, Naming, Weights};

/// How strict loading is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadOptions {
    /// Module path prefixes whose parameters may be absent from the checkpoint (a new task
    /// head, say: `classifier`). Everything else must be present: loading is strict.
    pub allow_missing: Vec<String>,
    /// Accept NaN/inf values (they are still listed in the report).
    pub allow_non_finite: bool,
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadReport {
    /// Checkpoint tensors that were loaded, by HF name.
    pub loaded: Vec<String>,
    /// Module parameters left at their initialization (allowed by
    /// [`LoadOptions::allow_missing`]), by module path.
    pub missing: Vec<String>,
    /// Checkpoint tensors no parameter used (an MLM head, `position_ids` buffers, ...).
    pub unexpected: Vec<String>,
    /// Tensors with NaN or infinite values, with their count.
    pub non_finite: Vec<(String, usize)>,
    /// Stored dtype → number of tensors loaded from it (all converted to the module's
    /// float type).
    pub dtypes: BTreeMap<String, usize>,
}

struct Loader<'a> {
    weights: &'a Weights,
    naming: Naming,
    options: &'a LoadOptions,
    stack: PathStack,
    report: LoadReport,
    used: HashSet<String>,
    missing_strict: Vec<String>,
    error: Option<LoadError>,
}

impl Loader<'_> {
    /// The checkpoint tensor for `param`, or `None` when it may stay as initialized.
    fn fetch<B: Backend, const D: usize>(
        &mut self,
        param: &Param<Tensor<B, D>>,
    ) -> Result<Option<Tensor<B, D>>, LoadError> {
        let info = self.stack.info(param.lazy_shape().to_vec());
        let candidates = self.naming.candidates(&info);
        let Some(name) = candidates
            .iter()
            .find(|c| self.weights.contains(c))
            .cloned()
        else {
            if self
                .options
                .allow_missing
                .iter()
                .any(|p| info.path.starts_with(p.as_str()))
            {
                self.report.missing.push(info.path);
            } else {
                self.missing_strict.push(self.naming.hf_name(&info));
            }
            return Ok(None);
        };
        let file: PathBuf = self
            .weights
            .file_of(&name)
            .map(Path::to_owned)
            .unwrap_or_default();
        let entry = self
            .weights
            .entry(&name)
            .cloned()
            .ok_or_else(|| LoadError::format(&file, format!("no tensor `{name}`")))?;
        let transposed = D == 2 && self.naming.transposed(&info);
        let mut expected = info.shape.clone();
        if transposed {
            expected.reverse();
        }
        if entry.shape != expected {
            return Err(LoadError::ShapeMismatch {
                path: file,
                tensor: name,
                expected,
                found: entry.shape,
            });
        }
        let values = self.weights.read_f32(&name)?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            self.report.non_finite.push((name.clone(), bad));
        }
        *self.report.dtypes.entry(entry.dtype.clone()).or_default() += 1;
        // Transposed here rather than with `Tensor::transpose`: a strided view would make
        // the first steps' matmuls run on another memory layout than a resumed run's (and
        // burn-flex's results depend on the layout in the last bits).
        let values = if transposed {
            transpose(&values, entry.shape[0], entry.shape[1])
        } else {
            values
        };
        let tensor =
            Tensor::<B, D>::from_data(TensorData::new(values, info.shape), &param.lazy_device());
        self.used.insert(name.clone());
        self.report.loaded.push(name);
        Ok(Some(tensor))
    }
}

/// The `[cols, rows]` transpose of a row-major `[rows, cols]` matrix.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        // A mapper cannot return an error: keep the first one and stop loading.
        match self.fetch(&param) {
            Ok(Some(tensor)) => {
                let id = param.id;
                param.transform_for_load(tensor, id)
            }
            Ok(None) => param,
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// Loads every float parameter of `module` from `weights`, by name.
///
/// Parameters keep their `ParamId`s; Linear weights are transposed from torch's
/// `[out, in]`; F16/BF16/F64 tensors are converted. A parameter with no tensor is an error
/// unless its path starts with one of `options.allow_missing`. Tensors nothing used are
/// listed in [`LoadReport::unexpected`].
///
/// # Errors
/// [`LoadError::ShapeMismatch`] naming the tensor and both shapes,
/// [`LoadError::MissingTensors`] listing every missing name, [`LoadError::NonFinite`],
/// and read errors naming the file. Nothing is partially returned on error.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    weights: &Weights,
    naming: Naming,
    options: &LoadOptions,
    dir: &Path,
) -> Result<(M, LoadReport), LoadError> {
    let mut loader = Loader {
        weights,
        naming,
        options,
        stack: PathStack::new(),
        report: LoadReport::default(),
        used: HashSet::new(),
        missing_strict: Vec::new(),
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    if !loader.missing_strict.is_empty() {
        return Err(LoadError::MissingTensors {
            path: dir.to_owned(),
            names: loader.missing_strict,
        });
    }
    let mut report = loader.report;
    if !report.non_finite.is_empty() && !options.allow_non_finite {
        return Err(LoadError::NonFinite {
            path: dir.to_owned(),
            tensors: report
                .non_finite
                .iter()
                .map(|(n, c)| format!("{n} ({c})"))
                .collect(),
        });
    }
    report.unexpected = weights
        .names()
        .into_iter()
        .filter(|n| !loader.used.contains(*n))
        .map(str::to_owned)
        .collect();
    Ok((module, report))
}
