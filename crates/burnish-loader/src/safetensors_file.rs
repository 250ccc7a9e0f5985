//! One safetensors file, read tensor by tensor.
//!
//! The header is parsed and checked against the file's size up front; each tensor is then
//! read with one positioned read into a buffer of its own size and converted to f32. At no
//! time is the whole file in memory, so loading peaks near one copy of the weights (the
//! model's) plus the largest tensor, and no `unsafe` memory mapping is needed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde::Deserialize;

use crate::LoadError;

/// Largest header accepted (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Element types a checkpoint may store floats in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
    /// float64.
    F64,
}

impl FloatDtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => FloatDtype::F32,
            "F16" => FloatDtype::F16,
            "BF16" => FloatDtype::BF16,
            "F64" => FloatDtype::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F16 | FloatDtype::BF16 => 2,
            FloatDtype::F32 => 4,
            FloatDtype::F64 => 8,
        }
    }

    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "F32",
            FloatDtype::F16 => "F16",
            FloatDtype::BF16 => "BF16",
            FloatDtype::F64 => "F64",
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// dtype as written in the header.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// An opened, validated safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    data_start: u64,
    tensors: BTreeMap<String, TensorEntry>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Opens a file and validates its header: JSON, offsets inside the file, sizes that
    /// match dtype × shape, no overlaps, and a file exactly as long as the header says.
    ///
    /// # Errors
    /// [`LoadError::Io`] or [`LoadError::Format`] naming the file.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let mut file = File::open(path).map_err(LoadError::io(path))?;
        let file_len = file.metadata().map_err(LoadError::io(path))?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| {
            LoadError::format(
                path,
                format!("file of {file_len} bytes is too short for a safetensors header"),
            )
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || header_len + 8 > file_len {
            return Err(LoadError::format(
                path,
                format!("header length {header_len} does not fit in a file of {file_len} bytes"),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(LoadError::io(path))?;
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| LoadError::format(path, format!("header is not a JSON object: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                metadata = serde_json::from_value(value).map_err(|e| {
                    LoadError::format(path, format!("__metadata__ is not a string map: {e}"))
                })?;
                continue;
            }
            let entry: RawEntry = serde_json::from_value(value)
                .map_err(|e| LoadError::format(path, format!("tensor `{name}`: {e}")))?;
            let [start, end] = entry.data_offsets;
            if start > end || end > data_len {
                return Err(LoadError::format(
                    path,
                    format!(
                        "tensor `{name}`: offsets {start}..{end} outside the {data_len} data bytes (truncated file?)"
                    ),
                ));
            }
            let numel = entry
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let bytes = FloatDtype::parse(&entry.dtype)
                .map(|d| d.size() as u64)
                .or_else(|| other_dtype_size(&entry.dtype));
            match (numel, bytes) {
                (Some(n), Some(size)) if n.checked_mul(size) == Some(end - start) => {}
                (_, None) => {
                    return Err(LoadError::format(
                        path,
                        format!("tensor `{name}`: unknown dtype {}", entry.dtype),
                    ));
                }
                _ => {
                    return Err(LoadError::format(
                        path,
                        format!(
                            "tensor `{name}`: {} bytes for shape {:?} of {}",
                            end - start,
                            entry.shape,
                            entry.dtype
                        ),
                    ));
                }
            }
            tensors.insert(
                name,
                TensorEntry {
                    dtype: entry.dtype,
                    shape: entry.shape,
                    start,
                    end,
                },
            );
        }
        let mut spans: Vec<(u64, u64, &str)> = tensors
            .iter()
            .map(|(n, e)| (e.start, e.end, n.as_str()))
            .collect();
        spans.sort();
        let mut cursor = 0;
        for (start, end, name) in spans {
            if start != cursor {
                return Err(LoadError::format(
                    path,
                    format!(
                        "tensor `{name}` starts at byte {start}, expected {cursor} (overlap or gap)"
                    ),
                ));
            }
            cursor = end;
        }
        if cursor != data_len {
            return Err(LoadError::format(
                path,
                format!("header describes {cursor} data bytes, the file has {data_len}"),
            ));
        }
        Ok(SafetensorsFile {
            path: path.to_owned(),
            data_start,
            tensors,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names and entries.
    pub fn tensors(&self) -> &BTreeMap<String, TensorEntry> {
        &self.tensors
    }

    /// The `__metadata__` string map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Reads one tensor as f32 values (converted from F16/BF16/F64 when stored so).
    ///
    /// # Errors
    /// [`LoadError::UnsupportedDtype`] for non-float tensors, [`LoadError::Io`] on a read
    /// error, [`LoadError::Format`] for an unknown name.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, LoadError> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::format(&self.path, format!("no tensor `{name}`")))?;
        let dtype = FloatDtype::parse(&entry.dtype).ok_or_else(|| LoadError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: name.to_owned(),
            dtype: entry.dtype.clone(),
        })?;
        let mut file = File::open(&self.path).map_err(LoadError::io(&self.path))?;
        file.seek(SeekFrom::Start(self.data_start + entry.start))
            .map_err(LoadError::io(&self.path))?;
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        file.read_exact(&mut bytes)
            .map_err(LoadError::io(&self.path))?;
        Ok(decode(&bytes, dtype))
    }
}

/// Sizes of the non-float dtypes safetensors knows, so their headers still validate.
fn other_dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" => 2,
        "I32" | "U32" => 4,
        "I64" | "U64" => 8,
        _ => return None,
    })
}

fn decode(bytes: &[u8], dtype: FloatDtype) -> Vec<f32> {
    match dtype {
        FloatDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        FloatDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        FloatDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        FloatDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
    }
}
