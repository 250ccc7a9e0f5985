//! Bad input never panics: every broken directory is a typed error naming what is wrong.
// Helpers outside #[test] functions unwrap too: a broken fixture should fail loudly.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn_ndarray::NdArray;
use burnish_loader::{HfModelDir, LoadError, LoadOptions};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

type B = NdArray;

fn bert_tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/models/bert-tiny")
}

/// A copy of bert-tiny in a temp dir, with `edit` applied to (name, dtype, shape, bytes).
fn variant(edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        bert_tiny().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(bert_tiny().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load(dir: &Path) -> Result<(), LoadError> {
    let hf = HfModelDir::open(dir)?;
    hf.load_bert::<B>(&Default::default(), &LoadOptions::default())
        .map(|_| ())
}

fn err_text(dir: &Path) -> String {
    load(dir).unwrap_err().to_string()
}

#[test]
fn the_unmodified_copy_loads() {
    load(variant(|_| {}).path()).unwrap();
}

#[test]
fn missing_files() {
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        load(empty.path()),
        Err(LoadError::MissingFile {
            what: "config.json",
            ..
        })
    ));
    std::fs::copy(
        bert_tiny().join("config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    let err = load(empty.path()).unwrap_err();
    assert!(matches!(err, LoadError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn bad_configs_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{"model_type": "gpt2"}"#, "model_type"),
        (r#"{"hidden_size": 32}"#, "model_type"),
        ("not json", "config.json"),
        (
            r#"{"model_type": "bert", "vocab_size": 9, "hidden_size": 30, "num_hidden_layers": 1,
               "num_attention_heads": 4, "intermediate_size": 8, "max_position_embeddings": 8}"#,
            "not divisible",
        ),
        (
            r#"{"model_type": "bert", "vocab_size": 9, "hidden_size": 32, "num_hidden_layers": 1,
               "num_attention_heads": 4, "intermediate_size": 8, "max_position_embeddings": 8,
               "hidden_act": "swiglu3"}"#,
            "hidden_act",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        let err = HfModelDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::Config { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(needle) && msg.contains("config.json"), "{msg}");
    }
}

#[test]
fn truncated_and_garbage_files() {
    let dir = variant(|_| {});
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let msg = err_text(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    std::fs::write(&file, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    assert!(err_text(dir.path()).contains("not a JSON object"));

    std::fs::write(&file, b"abc").unwrap();
    assert!(err_text(dir.path()).contains("too short"));

    std::fs::write(&file, u64::MAX.to_le_bytes()).unwrap();
    assert!(err_text(dir.path()).contains("does not fit"));
}

#[test]
fn a_header_that_lies_about_sizes() {
    let dir = variant(|_| {});
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Claim pooler.dense.bias has 33 elements instead of 32: same byte count in the header.
    let lied = header.replacen(
        "\"pooler.dense.bias\":{\"dtype\":\"F32\",\"shape\":[32]",
        "\"pooler.dense.bias\":{\"dtype\":\"F32\",\"shape\":[33]",
        1,
    );
    assert_ne!(lied, header, "fixture layout changed");
    let mut out = bytes[..8].to_vec();
    out.extend(lied.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(&file, out).unwrap();
    let msg = err_text(dir.path());
    assert!(
        msg.contains("pooler.dense.bias") && msg.contains("bytes for shape [33]"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let dir = variant(|t| {
        let e = t.iter_mut().find(|e| e.0 == "pooler.dense.bias").unwrap();
        e.1 = Dtype::I32;
    });
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(err, LoadError::UnsupportedDtype { ref tensor, .. } if tensor == "pooler.dense.bias"),
        "{err}"
    );
}

#[test]
fn non_finite_weights_are_reported() {
    let dir = variant(|t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "embeddings.LayerNorm.weight")
            .unwrap();
        e.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        e.3[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
    });
    let msg = err_text(dir.path());
    assert!(msg.contains("embeddings.LayerNorm.weight (2)"), "{msg}");
    let hf = HfModelDir::open(dir.path()).unwrap();
    let options = LoadOptions {
        allow_non_finite: true,
        ..Default::default()
    };
    let (_, report) = hf.load_bert::<B>(&Default::default(), &options).unwrap();
    assert_eq!(
        report.non_finite,
        [("embeddings.LayerNorm.weight".to_owned(), 2)]
    );
}

#[test]
fn missing_tensors_are_listed_unless_allowed() {
    let dir = variant(|t| t.retain(|e| !e.0.starts_with("encoder.layer.1.intermediate")));
    let err = load(dir.path()).unwrap_err();
    match &err {
        LoadError::MissingTensors { names, .. } => assert_eq!(
            names,
            &[
                "encoder.layer.1.intermediate.dense.weight",
                "encoder.layer.1.intermediate.dense.bias"
            ]
        ),
        other => panic!("{other}"),
    }
    let hf = HfModelDir::open(dir.path()).unwrap();
    let options = LoadOptions {
        allow_missing: vec!["encoder.layer.1.intermediate".into()],
        ..Default::default()
    };
    let (_, report) = hf.load_bert::<B>(&Default::default(), &options).unwrap();
    assert_eq!(report.missing.len(), 2);
}

#[test]
fn a_config_that_does_not_match_the_weights() {
    let dir = variant(|_| {});
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 37", "\"intermediate_size\": 40"),
    )
    .unwrap();
    let err = load(dir.path()).unwrap_err();
    match &err {
        LoadError::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert_eq!(tensor, "encoder.layer.0.intermediate.dense.weight");
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                ([40, 32].as_slice(), [37, 32].as_slice())
            );
        }
        other => panic!("{other}"),
    }
}

/// A question that leaves the context no more room than the stride: tokenizers would panic
/// splitting it; burnish refuses that pair by name and windows the others.
#[test]
fn qa_windows_refuse_a_stride_the_question_leaves_no_room_for() {
    use burnish_loader::{HfTokenizer, TokenizerConfig};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/assets/toy-bert/tokenizer.json");
    let config = TokenizerConfig {
        max_length: 16,
        ..TokenizerConfig::default()
    };
    let tokenizer = HfTokenizer::from_file(&path, config).unwrap();
    let context = "alice met bob in paris and carol saw the movie in rome . it was great";
    let long_question = "alice met bob in paris and carol saw the";
    let pairs = [
        ("who met bob", context),
        (long_question, context),
        (long_question, "alice"),
    ];
    let windows = tokenizer.encode_qa_windows(&pairs, 4).unwrap();
    assert!(
        windows[0].as_ref().is_ok_and(|w| w.len() > 1),
        "{:?}",
        windows[0]
    );
    let refused = windows[1].as_ref().unwrap_err();
    assert!(
        refused.contains("doc_stride 4") && refused.contains("leaving 4"),
        "{refused}"
    );
    // A context that fits needs no splitting, whatever the stride.
    assert!(
        windows[2].as_ref().is_ok_and(|w| w.len() == 1),
        "{:?}",
        windows[2]
    );
}
