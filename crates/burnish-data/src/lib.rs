#![doc = include_str!("../README.md")]

mod cache;
pub mod jsonl;
mod sampler;
mod task;

pub use cache::{Batch, CacheMeta, Record, TokenCache};
pub use sampler::{grouped_order, sample_order};
pub use task::{
    DEFAULT_DOC_STRIDE, LabelLayout, ProblemType, QaRow, RowEncoder, RowExamples, RowFormat, Task,
    TokenizedExample, answer_tokens,
};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burnish_loader::{Encoded, HfTokenizer, LoadError};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// The label value ignored by losses.
pub const IGNORE_INDEX: i64 = -100;

/// What to do with a row that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRows {
    /// Stop with an error naming the file and line.
    Fail,
    /// Skip it and list it in the result.
    Skip,
}

/// A row that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
    }
}

/// Errors of burnish-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Reading the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bad row, with [`BadRows::Fail`].
    #[error("{0}")]
    BadRow(BadRow),
    /// The file has no usable row.
    #[error("{}: no usable example", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A token cache is incomplete, of another format, or inconsistent.
    #[error("{}: token cache: {detail}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] LoadError),
    /// Packing asked of a cache whose rows are not causal-LM rows.
    #[error(
        "{}: token cache of {kind} rows: only causal-LM rows (text or prompt/completion) can be packed",
        path.display()
    )]
    NotPackable {
        /// The cache directory.
        path: PathBuf,
        /// The kind of rows it holds ([`CacheMeta::kind`]).
        kind: String,
    },
}

/// One `{text, label}` example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextExample {
    /// The text.
    pub text: String,
    /// Class id.
    pub label: i64,
}

/// One `{tokens, tags}` example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedExample {
    /// Words.
    pub tokens: Vec<String>,
    /// Tag ids, one per word.
    pub tags: Vec<i64>,
}

/// Examples read from a file, with the rows that were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset<T> {
    /// Usable examples, in file order.
    pub examples: Vec<T>,
    /// Rows skipped under [`BadRows::Skip`].
    pub skipped: Vec<BadRow>,
    /// Label (or tag) names by id.
    pub labels: Vec<String>,
}

fn read_rows<T>(
    path: &Path,
    on_bad: BadRows,
    mut parse: impl FnMut(&Value) -> Result<T, String>,
) -> Result<(Vec<T>, Vec<BadRow>), DataError> {
    let mut examples = Vec::new();
    let mut skipped = Vec::new();
    for row in jsonl::JsonlRows::open(path)? {
        let row = row?;
        match row.value.and_then(|v| parse(&v)) {
            Ok(example) => examples.push(example),
            Err(reason) => {
                let bad = BadRow {
                    path: path.to_owned(),
                    line: row.line as usize,
                    reason,
                };
                match on_bad {
                    BadRows::Fail => return Err(DataError::BadRow(bad)),
                    BadRows::Skip => skipped.push(bad),
                }
            }
        }
    }
    if examples.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok((examples, skipped))
}

/// Maps a label value (an id, or a name from `names`) to its id.
pub(crate) fn label_id(
    value: &Value,
    names: &[String],
    index: &HashMap<&str, i64>,
) -> Result<i64, String> {
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(id) if id >= 0 && (names.is_empty() || (id as usize) < names.len()) => Ok(id),
            _ => Err(format!("label {n} is not an id in 0..{}", names.len())),
        },
        Value::String(s) => index
            .get(s.as_str())
            .copied()
            .ok_or_else(|| format!("unknown label {s:?}")),
        other => Err(format!("label must be an integer or a string, got {other}")),
    }
}

/// Reads `{text, label}` JSONL. `labels` names the classes (ids index into it); without
/// it, labels must be integer ids and the names become `LABEL_<id>`.
///
/// # Errors
/// [`DataError::Io`], [`DataError::BadRow`] (missing or empty `text`, missing or unknown
/// `label`, bad JSON) with [`BadRows::Fail`], [`DataError::Empty`].
pub fn read_classification(
    path: &Path,
    labels: Option<&[String]>,
    on_bad: BadRows,
) -> Result<Dataset<TextExample>, DataError> {
    let names: Vec<String> = labels.map(<[String]>::to_vec).unwrap_or_default();
    let index: HashMap<&str, i64> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as i64))
        .collect();
    let (examples, skipped) = read_rows(path, on_bad, |v| {
        let (text, label) = task::parse_text(v, &names, &index, true)?;
        Ok(TextExample { text, label })
    })?;
    let names = if names.is_empty() {
        let max = examples.iter().map(|e| e.label).max().unwrap_or(0);
        (0..=max).map(|i| format!("LABEL_{i}")).collect()
    } else {
        names
    };
    Ok(Dataset {
        examples,
        skipped,
        labels: names,
    })
}

/// Reads `{tokens, tags}` JSONL with tag names from `tags` (BIO, e.g. `O`, `B-person`).
///
/// # Errors
/// As [`read_classification`]; also a row whose `tags` length differs from `tokens`.
pub fn read_tagging(
    path: &Path,
    tags: &[String],
    on_bad: BadRows,
) -> Result<Dataset<TaggedExample>, DataError> {
    let index: HashMap<&str, i64> = tags
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as i64))
        .collect();
    let (examples, skipped) = read_rows(path, on_bad, |v| {
        let (tokens, tags) = task::parse_words(v, tags, &index, true)?;
        Ok(TaggedExample {
            tokens,
            tags: tags.unwrap_or_default(),
        })
    })?;
    Ok(Dataset {
        examples,
        skipped,
        labels: tags.to_vec(),
    })
}

/// Example order for one epoch: `0..n` shuffled with ChaCha8 seeded by `(seed, epoch)`,
/// or in order without `shuffle`. The same arguments always give the same order, so a run
/// resumes at a position by skipping batches.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch);
        order.shuffle(&mut rng);
    }
    order
}

/// A tokenized classification batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassificationBatch {
    /// Tokens, masks and segment ids.
    pub encoded: Encoded,
    /// Class ids.
    pub labels: Vec<i64>,
}

/// Tokenizes `examples[indices]` into one dynamically padded batch.
///
/// # Errors
/// [`DataError::Tokenizer`].
pub fn classification_batch(
    tokenizer: &HfTokenizer,
    examples: &[TextExample],
    indices: &[usize],
) -> Result<ClassificationBatch, DataError> {
    let texts: Vec<&str> = indices.iter().map(|&i| examples[i].text.as_str()).collect();
    Ok(ClassificationBatch {
        encoded: tokenizer.encode_batch(&texts)?,
        labels: indices.iter().map(|&i| examples[i].label).collect(),
    })
}

/// A tokenized token-classification batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggingBatch {
    /// Tokens, masks and segment ids.
    pub encoded: Encoded,
    /// Per sub-word tag ids `[batch, seq]`: the word's tag on its first sub-word, −100 on
    /// the other sub-words, special tokens and padding.
    pub labels: Vec<i64>,
}

/// Tokenizes `examples[indices]` word by word and aligns tags to first sub-words.
///
/// # Errors
/// [`DataError::Tokenizer`].
pub fn tagging_batch(
    tokenizer: &HfTokenizer,
    examples: &[TaggedExample],
    indices: &[usize],
) -> Result<TaggingBatch, DataError> {
    let sentences: Vec<Vec<&str>> = indices
        .iter()
        .map(|&i| examples[i].tokens.iter().map(String::as_str).collect())
        .collect();
    let (encoded, word_ids) = tokenizer.encode_words_batch(&sentences)?;
    let mut labels = Vec::with_capacity(encoded.input_ids.len());
    for (row, &i) in word_ids.iter().zip(indices) {
        labels.extend(align_first_subword(row, &examples[i].tags));
    }
    Ok(TaggingBatch { encoded, labels })
}

/// Word tags to sub-word labels: the tag on the first sub-word of each word, −100 on the
/// rest (continuation pieces, special tokens, padding).
pub fn align_first_subword(word_ids: &[Option<u32>], tags: &[i64]) -> Vec<i64> {
    let mut previous = None;
    word_ids
        .iter()
        .map(|&w| {
            let label = match w {
                Some(w) if Some(w) != previous => {
                    tags.get(w as usize).copied().unwrap_or(IGNORE_INDEX)
                }
                _ => IGNORE_INDEX,
            };
            previous = w;
            label
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(lines: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), lines).unwrap();
        f
    }

    #[test]
    fn labels_by_id_or_name_and_bad_rows_with_lines() {
        let f = file(
            "{\"text\": \"good\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": 0}\n\n{\"text\": \"\", \"label\": 1}\n{\"label\": 1}\n{\"text\": \"x\", \"label\": \"meh\"}\nnot json\n",
        );
        let names = vec!["neg".to_owned(), "pos".to_owned()];
        let err = read_classification(f.path(), Some(&names), BadRows::Fail).unwrap_err();
        assert!(err.to_string().ends_with(":4: empty `text`"), "{err}");
        let data = read_classification(f.path(), Some(&names), BadRows::Skip).unwrap();
        assert_eq!(
            data.examples,
            [
                TextExample {
                    text: "good".into(),
                    label: 1
                },
                TextExample {
                    text: "bad".into(),
                    label: 0
                }
            ]
        );
        let lines: Vec<usize> = data.skipped.iter().map(|b| b.line).collect();
        assert_eq!(lines, [4, 5, 6, 7]);
        assert!(data.skipped[2].reason.contains("unknown label \"meh\""));
    }

    #[test]
    fn tagging_rows_must_match_their_tokens() {
        let f = file(
            "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\", \"B-x\"]}\n{\"tokens\": [\"a\"], \"tags\": [\"O\", \"O\"]}\n",
        );
        let tags = vec!["O".to_owned(), "B-x".to_owned(), "I-x".to_owned()];
        let err = read_tagging(f.path(), &tags, BadRows::Fail).unwrap_err();
        assert!(err.to_string().contains(":2: 2 tags for 1 tokens"), "{err}");
    }

    #[test]
    fn first_subword_alignment() {
        let word_ids = [None, Some(0), Some(1), Some(1), Some(2), None, None];
        assert_eq!(
            align_first_subword(&word_ids, &[3, 1, 2]),
            [-100, 3, 1, -100, 2, -100, -100]
        );
    }

    #[test]
    fn shuffling_is_seeded_and_per_epoch() {
        let a = epoch_order(100, 7, 0, true);
        assert_eq!(a, epoch_order(100, 7, 0, true));
        assert_ne!(a, epoch_order(100, 7, 1, true));
        assert_ne!(a, epoch_order(100, 8, 0, true));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 7, 0, false), [0, 1, 2, 3, 4]);
    }
}
