//! Saving and loading a checkpoint of all-MiniLM-L6-v2's size: the model (22.7M f32
//! parameters, written as HF safetensors) and AdamW's two moments, with fsync, SHA-256 and
//! the atomic rename; loading verifies every file and reads it back.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use burn_ndarray::NdArray;
use burnish_checkpoint::{FsStorage, ManifestInfo, load, save};
use burnish_loader::{Naming, write_module};
use burnish_models::ModelConfig;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MINILM: &str = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
  "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
  "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu",
  "layer_norm_eps": 1e-12}"#;

fn checkpoint(c: &mut Criterion) {
    let ModelConfig::Bert(config) = ModelConfig::from_json(MINILM).expect("config") else {
        unreachable!("a BERT config")
    };
    let model = config
        .init::<NdArray>(true, &Default::default())
        .expect("model");
    let mut weights = Vec::new();
    write_module(&model, Naming::Bert, &mut weights).expect("in memory");
    // The moments are as large as the weights, twice over.
    let moments = vec![0x3fu8; 2 * weights.len()];
    let total = (weights.len() + moments.len()) as u64;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let info = ManifestInfo {
        step: 1,
        epoch: 0,
        run_id: "bench".into(),
        parent: None,
        config_hash: String::new(),
    };
    let write = || {
        save(dir.path(), &info, &FsStorage, |w| {
            w.file("model.safetensors", |out| {
                write_module(&model, Naming::Bert, out).map(|_| ())
            })?;
            w.file("optimizer.safetensors", |out| out.write_all(&moments))
        })
        .expect("save")
    };
    let mut group = c.benchmark_group("checkpoint_minilm");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(total));
    group.bench_function(format!("save_{}MB", total / 1_000_000), |b| b.iter(write));
    let saved = write();
    group.bench_function(format!("load_verify_{}MB", total / 1_000_000), |b| {
        b.iter(|| {
            let c = load(&saved).expect("valid");
            c.read("model.safetensors").expect("model").len()
                + c.read("optimizer.safetensors").expect("optimizer").len()
        })
    });
    group.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
