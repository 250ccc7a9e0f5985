//! Random bytes and random mutations of valid files, fed to the readers of a model
//! directory: every outcome is a value or a typed error, never a panic.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burnish_loader::{HfTokenizer, SafetensorsFile, TokenizerConfig};
use burnish_models::ModelConfig;
use proptest::prelude::*;

fn toy_bert() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets/toy-bert")
}

/// One mutation of a file: bytes overwritten at positions, a cut, or bytes inserted.
#[derive(Debug, Clone)]
enum Mutation {
    Poke(Vec<(usize, u8)>),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Poke),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
    ]
}

/// Mutations near the start hit headers and keys: positions are drawn within `focus`
/// bytes of the start half of the time.
fn mutate(mut bytes: Vec<u8>, m: &Mutation, focus: usize) -> Vec<u8> {
    let len = bytes.len().max(1);
    let at = |p: usize| {
        if p.is_multiple_of(2) {
            p % focus.min(len)
        } else {
            p % len
        }
    };
    match m {
        Mutation::Poke(pokes) => {
            for &(p, b) in pokes {
                let i = at(p);
                if i < bytes.len() {
                    bytes[i] = b;
                }
            }
        }
        Mutation::Cut(p) => bytes.truncate(at(*p)),
        Mutation::Insert(p, b) => {
            let i = at(*p).min(bytes.len());
            bytes.splice(i..i, b.iter().copied());
        }
    }
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A safetensors file that opens is readable tensor by tensor without a panic.
fn open_and_read(path: &Path) {
    if let Ok(file) = SafetensorsFile::open(path) {
        for name in file.tensors().keys() {
            let _ = file.read_f32(name);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn safetensors_reader_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        open_and_read(&write(dir.path(), "model.safetensors", &bytes));
    }

    #[test]
    fn safetensors_reader_survives_mutations(m in mutation()) {
        let valid = std::fs::read(toy_bert().join("model.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        let dir = tempfile::tempdir().unwrap();
        open_and_read(&write(dir.path(), "model.safetensors", &mutate(valid, &m, header)));
    }

    #[test]
    fn config_reader_survives_random_text(text in ".{0,200}") {
        let _ = ModelConfig::from_json(&text);
    }

    #[test]
    fn config_reader_survives_mutations(m in mutation()) {
        let valid = std::fs::read(toy_bert().join("config.json")).unwrap();
        let bytes = mutate(valid, &m, usize::MAX);
        if let Ok(config) = ModelConfig::from_json(&String::from_utf8_lossy(&bytes)) {
            // Whatever parsed is usable: sizes are checked and their products saturate.
            config.validate().unwrap();
            let _ = config.min_parameters();
        }
    }

    #[test]
    fn config_reader_survives_any_sizes(
        sizes in prop::collection::vec(any::<u64>(), 6),
        eps in any::<f64>(),
    ) {
        let text = format!(
            r#"{{"model_type": "bert", "vocab_size": {}, "hidden_size": {}, "num_hidden_layers": {},
               "num_attention_heads": {}, "intermediate_size": {}, "max_position_embeddings": {},
               "layer_norm_eps": {eps:e}}}"#,
            sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
        );
        if let Ok(config) = ModelConfig::from_json(&text) {
            let _ = (config.min_parameters(), config.max_positions(), config.vocab_size());
        }
    }

    #[test]
    fn tokenizer_reader_survives_mutations(m in mutation()) {
        let valid = std::fs::read(toy_bert().join("tokenizer.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "tokenizer.json", &mutate(valid, &m, usize::MAX));
        if let Ok(tokenizer) = HfTokenizer::from_file(&path, TokenizerConfig::default()) {
            let _ = tokenizer.vocab_size();
        }
    }
}
