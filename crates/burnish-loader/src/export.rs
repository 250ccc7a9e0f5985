//! Writing a module back as a Hugging Face checkpoint.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burnish_params::{PathStack, named_params};
use serde_json::{Map, Value, json};

use crate::{LoadError, Naming};

/// Tokenizer and vocabulary files copied by [`export_dir`] when the source has them.
pub const TOKENIZER_FILES: [&str; 8] = [
    "tokenizer.json",
    "chat_template.jinja",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

struct Writer<'a> {
    out: &'a mut dyn Write,
    naming: Naming,
    stack: PathStack,
    error: Option<std::io::Error>,
}

impl<B: Backend> ModuleVisitor<B> for Writer<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.error.is_some() {
            return;
        }
        let info = self.stack.info(param.lazy_shape().to_vec());
        let tensor = param.val();
        let tensor = if D == 2 && self.naming.transposed(&info) {
            tensor.transpose()
        } else {
            tensor
        };
        let data = tensor.into_data().convert::<f32>();
        let bytes: Vec<u8> = match data.as_slice::<f32>() {
            Ok(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Err(e) => {
                self.error = Some(std::io::Error::other(format!("{}: {e:?}", info.path)));
                return;
            }
        };
        if let Err(e) = self.out.write_all(&bytes) {
            self.error = Some(e);
        }
    }
}

/// Writes every float parameter of `module` as float32 to a safetensors file, under its HF
/// name (transposing Linear weights back to `[out, in]`), one tensor at a time so no second
/// copy of the model is held. The file is written next to `path` and renamed into place.
/// Returns the names written.
///
/// # Errors
/// [`LoadError::Io`] naming the file.
pub fn save_module<B: Backend, M: Module<B>>(
    module: &M,
    naming: Naming,
    path: &Path,
) -> Result<Vec<String>, LoadError> {
    let tmp: PathBuf = path.with_extension("safetensors.tmp");
    let file = File::create(&tmp).map_err(LoadError::io(&tmp))?;
    let mut out = BufWriter::new(file);
    let names = write_module(module, naming, &mut out).map_err(LoadError::io(&tmp))?;
    let file = out.into_inner().map_err(|e| LoadError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(LoadError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(LoadError::io(path))?;
    Ok(names)
}

/// [`save_module`] into any writer (a checkpoint file, a hash): the same bytes.
///
/// # Errors
/// The writer's error.
pub fn write_module<B: Backend, M: Module<B>>(
    module: &M,
    naming: Naming,
    out: &mut dyn Write,
) -> std::io::Result<Vec<String>> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    let mut names = Vec::new();
    for info in named_params(module) {
        let mut shape = info.shape.clone();
        if shape.len() == 2 && naming.transposed(&info) {
            shape.reverse();
        }
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        let name = naming.hf_name(&info);
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        names.push(name);
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    // The data section starts 8-byte aligned, as safetensors' own writer does.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut writer = Writer {
        out,
        naming,
        stack: PathStack::new(),
        error: None,
    };
    module.visit(&mut writer);
    match writer.error {
        Some(e) => Err(e),
        None => Ok(names),
    }
}

/// Writes a complete HF model directory: `model.safetensors`, `config.json` (the given
/// JSON, e.g. the source config with task fields such as `num_labels`, `id2label` and
/// `architectures` set by the caller; its `dtype`/`torch_dtype` is set to `float32`, the
/// dtype written), and the tokenizer files of `tokenizer_from` when present.
///
/// The directory is written beside its place, synced, and swapped in
/// ([`burnish_checkpoint::replace_dir`]): an existing `out_dir` (the previous best model,
/// say) stays whole until the new one is complete, and is put back if the swap fails.
///
/// # Errors
/// [`LoadError::Io`] naming the file.
pub fn export_dir<B: Backend, M: Module<B>>(
    out_dir: &Path,
    module: &M,
    naming: Naming,
    config: &Value,
    tokenizer_from: Option<&Path>,
) -> Result<(), LoadError> {
    burnish_checkpoint::replace_dir(out_dir, &burnish_checkpoint::FsStorage, |staging| {
        write_dir(staging, module, naming, config, tokenizer_from)
    })
    .map_err(|e| match e {
        burnish_checkpoint::ReplaceError::Fill(e) => e,
        burnish_checkpoint::ReplaceError::Io { path, source } => LoadError::Io { path, source },
    })
}

fn write_dir<B: Backend, M: Module<B>>(
    out_dir: &Path,
    module: &M,
    naming: Naming,
    config: &Value,
    tokenizer_from: Option<&Path>,
) -> Result<(), LoadError> {
    save_module(module, naming, &out_dir.join("model.safetensors"))?;
    let config_path = out_dir.join("config.json");
    // The weights are written as float32: a `dtype: bfloat16` carried over from the source
    // would make transformers compute in bfloat16.
    let mut config = config.clone();
    if let Some(fields) = config.as_object_mut() {
        for key in ["dtype", "torch_dtype"] {
            if fields.contains_key(key) {
                fields.insert(key.to_owned(), Value::from("float32"));
            }
        }
    }
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| LoadError::format(&config_path, e.to_string()))?;
    std::fs::write(&config_path, text + "\n").map_err(LoadError::io(&config_path))?;
    if let Some(src) = tokenizer_from {
        for name in TOKENIZER_FILES {
            let from = src.join(name);
            if from.is_file() {
                let to = out_dir.join(name);
                std::fs::copy(&from, &to).map_err(LoadError::io(&to))?;
            }
        }
    }
    Ok(())
}
