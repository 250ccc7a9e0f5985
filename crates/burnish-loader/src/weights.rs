//! The weights of a model directory: one `model.safetensors`, or the shards listed by
//! `model.safetensors.index.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::LoadError;
use crate::safetensors_file::{SafetensorsFile, TensorEntry};

/// Every tensor of a checkpoint, across shards.
#[derive(Debug)]
pub struct Weights {
    files: Vec<SafetensorsFile>,
    index: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// Opens `dir/model.safetensors`, or the shards named by
    /// `dir/model.safetensors.index.json` (each validated).
    ///
    /// # Errors
    /// [`LoadError::MissingFile`] when neither exists; [`LoadError::Format`] for a bad index
    /// (unreadable, naming a missing shard, or disagreeing with the shards' contents).
    pub fn open_dir(dir: &Path) -> Result<Self, LoadError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::from_files(vec![SafetensorsFile::open(&single)?]);
        }
        if !index_path.is_file() {
            return Err(LoadError::MissingFile {
                path: dir.to_owned(),
                what: "model.safetensors or model.safetensors.index.json",
            });
        }
        let text = std::fs::read_to_string(&index_path).map_err(LoadError::io(&index_path))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| LoadError::format(&index_path, format!("not a shard index: {e}")))?;
        let mut shard_names: Vec<&String> = index.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut files = Vec::new();
        for name in shard_names {
            let shard: PathBuf = dir.join(name);
            if !shard.is_file() {
                return Err(LoadError::format(
                    &index_path,
                    format!("shard {name} does not exist"),
                ));
            }
            files.push(SafetensorsFile::open(&shard)?);
        }
        let weights = Self::from_files(files)?;
        for (tensor, shard) in &index.weight_map {
            let found = weights.index.get(tensor).map(|&i| weights.files[i].path());
            if found.and_then(Path::file_name) != Some(std::ffi::OsStr::new(shard)) {
                return Err(LoadError::format(
                    &index_path,
                    format!("maps `{tensor}` to {shard}, which does not hold it"),
                ));
            }
        }
        Ok(weights)
    }

    /// Weights from already opened files.
    ///
    /// # Errors
    /// [`LoadError::Format`] when two files hold a tensor of the same name.
    pub fn from_files(files: Vec<SafetensorsFile>) -> Result<Self, LoadError> {
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.tensors().keys() {
                if let Some(previous) = index.insert(name.clone(), i) {
                    return Err(LoadError::format(
                        file.path(),
                        format!(
                            "tensor `{name}` is also in {}",
                            files[previous].path().display()
                        ),
                    ));
                }
            }
        }
        Ok(Weights { files, index })
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The entry (dtype, shape) of a tensor.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.index
            .get(name)
            .and_then(|&i| self.files[i].tensors().get(name))
    }

    /// The file that holds a tensor.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].path())
    }

    /// Reads a tensor as f32.
    ///
    /// # Errors
    /// As [`SafetensorsFile::read_f32`].
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, LoadError> {
        match self.index.get(name) {
            Some(&i) => self.files[i].read_f32(name),
            None => Err(LoadError::format(
                self.files.first().map_or(Path::new("?"), |f| f.path()),
                format!("no tensor `{name}`"),
            )),
        }
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The files, in shard order.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }
}
