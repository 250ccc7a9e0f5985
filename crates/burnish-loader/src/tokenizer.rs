//! `tokenizer.json` through the `tokenizers` crate, with padding and truncation set by the
//! caller, never left to whatever the file says (all-MiniLM-L6-v2's file, for one, pads
//! every batch to 128 tokens).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::{
    EncodeInput, InputSequence, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::LoadError;

/// How batches are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// To the longest sequence of the batch (dynamic padding).
    Longest,
    /// Always to `max_length`.
    MaxLength,
}

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// After the tokens (encoders, training).
    Right,
    /// Before the tokens (batched generation with decoders).
    Left,
}

/// Tokenization settings; the defaults are dynamic right padding and truncation to 512.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Longest sequence, special tokens included; longer inputs are truncated.
    pub max_length: usize,
    /// Padding strategy.
    pub padding: Padding,
    /// Padding side.
    pub padding_side: Side,
    /// Add the model's special tokens (`[CLS]`/`[SEP]`, BOS, ...).
    pub add_special_tokens: bool,
    /// Padding token; `None` looks for the file's own, then `[PAD]`, `<pad>`,
    /// `<|endoftext|>`, `</s>`.
    pub pad_token: Option<String>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            max_length: 512,
            padding: Padding::Longest,
            padding_side: Side::Right,
            add_special_tokens: true,
            pad_token: None,
        }
    }
}

/// For each token of a row, the index of the word it came from (`None` for special
/// tokens and padding).
pub type WordIds = Vec<Option<u32>>;

/// A tokenized batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `[batch, seq]`.
    pub shape: [usize; 2],
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Segment ids (0 for single sentences).
    pub token_type_ids: Vec<i64>,
}

/// A text pair's token ids and their segment (token type) ids.
pub type PairIds = (Vec<u32>, Vec<u32>);

/// One window of a question/context pair ([`HfTokenizer::encode_qa_windows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaWindow {
    /// Token ids: the question, then this window's part of the context, with the pair
    /// template's special tokens.
    pub ids: Vec<u32>,
    /// Segment (token type) ids.
    pub type_ids: Vec<u32>,
    /// Character span `[start, end)` in the context of each context token; `None` for
    /// question and special tokens.
    pub context_offsets: Vec<Option<(usize, usize)>>,
}

/// A Hugging Face tokenizer with burnish's padding and truncation.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    inner: Tokenizer,
    config: TokenizerConfig,
    pad_id: u32,
    path: PathBuf,
}

impl HfTokenizer {
    /// Loads `tokenizer.json` and applies `config`.
    ///
    /// # Errors
    /// [`LoadError::MissingFile`], [`LoadError::Format`] for an unreadable file or when no
    /// padding token can be found.
    pub fn from_file(path: &Path, config: TokenizerConfig) -> Result<Self, LoadError> {
        if !path.is_file() {
            return Err(LoadError::MissingFile {
                path: path.to_owned(),
                what: "tokenizer.json",
            });
        }
        let mut inner =
            Tokenizer::from_file(path).map_err(|e| LoadError::format(path, e.to_string()))?;
        let file_pad = inner.get_padding().map(|p| p.pad_token.clone());
        let candidates = config
            .pad_token
            .iter()
            .cloned()
            .chain(file_pad)
            .chain(["[PAD]", "<pad>", "<|endoftext|>", "</s>"].map(String::from));
        let (pad_token, pad_id) = candidates
            .filter_map(|t| inner.token_to_id(&t).map(|id| (t, id)))
            .next()
            .ok_or_else(|| {
                LoadError::format(
                    path,
                    "no padding token found: set TokenizerConfig::pad_token",
                )
            })?;
        if config.max_length == 0 {
            return Err(LoadError::format(path, "max_length must be at least 1"));
        }
        inner
            .with_truncation(Some(TruncationParams {
                max_length: config.max_length,
                ..Default::default()
            }))
            .map_err(|e| LoadError::format(path, e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: match config.padding {
                Padding::Longest => PaddingStrategy::BatchLongest,
                Padding::MaxLength => PaddingStrategy::Fixed(config.max_length),
            },
            direction: match config.padding_side {
                Side::Right => PaddingDirection::Right,
                Side::Left => PaddingDirection::Left,
            },
            pad_id,
            pad_token,
            ..Default::default()
        }));
        Ok(HfTokenizer {
            inner,
            config,
            pad_id,
            path: path.to_owned(),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The padding token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Tokenizes a batch of texts (in parallel), truncated and padded per the config.
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the tokenizer file when the tokenizer fails.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Encoded, LoadError> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), self.config.add_special_tokens)
            .map_err(|e| LoadError::format(&self.path, e.to_string()))?;
        Ok(collect(&encodings))
    }

    /// Tokenizes pre-split words (token classification) and returns, per row and token,
    /// the index of the word it came from (`None` for special tokens and padding).
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the tokenizer file when the tokenizer fails.
    pub fn encode_words_batch(
        &self,
        sentences: &[Vec<&str>],
    ) -> Result<(Encoded, Vec<WordIds>), LoadError> {
        let encodings = self.encode_words(sentences)?;
        let word_ids = encodings
            .iter()
            .map(|e| e.get_word_ids().to_vec())
            .collect();
        Ok((collect(&encodings), word_ids))
    }

    /// Tokenizes texts (in parallel) without padding: one id list per text, truncated to
    /// `max_length`. `add_special_tokens` overrides the config (a response appended to a
    /// prompt must not get a second `[CLS]` or BOS).
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the tokenizer file when the tokenizer fails.
    pub fn encode_unpadded(
        &self,
        texts: &[&str],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>, LoadError> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), add_special_tokens)
            .map_err(|e| LoadError::format(&self.path, e.to_string()))?;
        Ok(encodings
            .iter()
            .map(|e| unpadded(e, e.get_ids()).0)
            .collect())
    }

    /// Tokenizes text pairs (in parallel) with the tokenizer's pair template (BERT
    /// `[CLS] a [SEP] b [SEP]`, RoBERTa `<s> a </s></s> b </s>`) and no padding: per pair,
    /// the ids and their segment (token type) ids. Pairs longer than `max_length` are cut
    /// `longest_first`, as transformers does by default: one token at a time from the
    /// longer of the two texts.
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the tokenizer file when the tokenizer fails.
    pub fn encode_pairs_unpadded(&self, pairs: &[(&str, &str)]) -> Result<Vec<PairIds>, LoadError> {
        let inputs: Vec<EncodeInput> = pairs
            .iter()
            .map(|&(a, b)| EncodeInput::Dual(a.into(), b.into()))
            .collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| LoadError::format(&self.path, e.to_string()))?;
        Ok(encodings
            .iter()
            .map(|e| unpadded(e, e.get_type_ids()))
            .collect())
    }

    /// Tokenizes question/context pairs for extractive QA as transformers' fast
    /// tokenizer does with `truncation="only_second"`, `return_overflowing_tokens=True`,
    /// `return_offsets_mapping=True` and `stride`: a context too long for `max_length` is
    /// split into overlapping windows, consecutive windows sharing `stride` context
    /// tokens; the question is never cut. Per pair, its windows in order, or why it
    /// cannot be split (a question that leaves no room for the context, a stride as long
    /// as the room).
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the tokenizer file when its truncation settings are
    /// refused.
    pub fn encode_qa_windows(
        &self,
        pairs: &[(&str, &str)],
        stride: usize,
    ) -> Result<Vec<Result<Vec<QaWindow>, String>>, LoadError> {
        let mut windowed = self.inner.clone();
        windowed
            .with_truncation(Some(TruncationParams {
                max_length: self.config.max_length,
                strategy: TruncationStrategy::OnlySecond,
                stride,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| LoadError::format(&self.path, e.to_string()))?;
        windowed.with_padding(None);
        fn input<'s>(&(q, c): &(&'s str, &'s str)) -> EncodeInput<'s> {
            EncodeInput::Dual(q.into(), c.into())
        }
        let windows = |e: tokenizers::Encoding| {
            let mut e = e;
            let rest = e.take_overflowing();
            std::iter::once(e).chain(rest).map(qa_window).collect()
        };
        // tokenizers panics (an assertion, not an error) when a context must be split but
        // the question leaves no more room than the stride: such pairs are refused first.
        let refused = self.stride_refusals(&windowed, pairs, stride)?;
        let kept: Vec<&(&str, &str)> = pairs
            .iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_none())
            .map(|(p, _)| p)
            .collect();
        let mut encoded = match windowed
            .encode_batch_char_offsets(kept.iter().map(|p| input(p)).collect(), true)
        {
            Ok(encodings) => encodings.into_iter().map(|e| Ok(windows(e))).collect(),
            // One pair the truncation refuses fails the batch: find which, one at a time.
            Err(_) => kept
                .iter()
                .map(|p| {
                    windowed
                        .encode_char_offsets(input(p), true)
                        .map(windows)
                        .map_err(|e| e.to_string())
                })
                .collect::<Vec<_>>(),
        }
        .into_iter();
        Ok(refused
            .into_iter()
            .map(|r| match r {
                Some(why) => Err(why),
                None => encoded
                    .next()
                    .unwrap_or_else(|| Err("not encoded".to_owned())),
            })
            .collect())
    }

    /// For each pair, why it cannot be windowed with `stride` (its context needs
    /// splitting and the question leaves at most `stride` tokens for it), or `None`.
    fn stride_refusals(
        &self,
        windowed: &tokenizers::Tokenizer,
        pairs: &[(&str, &str)],
        stride: usize,
    ) -> Result<Vec<Option<String>>, LoadError> {
        let mut plain = windowed.clone();
        plain
            .with_truncation(None)
            .map_err(|e| LoadError::format(&self.path, e.to_string()))?;
        let specials = plain
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));
        let count = |texts: Vec<&str>| -> Result<Vec<usize>, LoadError> {
            let inputs = texts.into_iter().map(EncodeInput::from).collect();
            Ok(plain
                .encode_batch(inputs, false)
                .map_err(|e| LoadError::format(&self.path, e.to_string()))?
                .iter()
                .map(tokenizers::Encoding::len)
                .collect())
        };
        let max_length = self.config.max_length;
        let questions = count(pairs.iter().map(|(q, _)| *q).collect())?;
        let room = |q: usize| max_length.saturating_sub(q + specials);
        let tight: Vec<&str> = pairs
            .iter()
            .zip(&questions)
            .filter(|(_, q)| room(**q) <= stride)
            .map(|((_, c), _)| *c)
            .collect();
        let mut contexts = count(tight)?.into_iter();
        Ok(questions
            .iter()
            .map(|&q| {
                if room(q) > stride {
                    return None;
                }
                let c = contexts.next().unwrap_or(0);
                (q + c + specials > max_length).then(|| {
                    format!(
                        "the question takes {q} of max_length {max_length} tokens, leaving {} for \
                         the context, not more than doc_stride {stride}: the context of {c} \
                         tokens cannot be split into windows",
                        room(q)
                    )
                })
            })
            .collect())
    }

    /// Tokenizes pre-split words without padding: per sentence, the ids and the word
    /// index of each id (`None` for special tokens).
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the tokenizer file when the tokenizer fails.
    pub fn encode_words_unpadded(
        &self,
        sentences: &[Vec<&str>],
    ) -> Result<Vec<(Vec<u32>, WordIds)>, LoadError> {
        Ok(self
            .encode_words(sentences)?
            .iter()
            .map(|e| unpadded(e, e.get_word_ids()))
            .collect())
    }

    /// Pre-split sentences through the tokenizer, in parallel, padded per the config.
    fn encode_words(
        &self,
        sentences: &[Vec<&str>],
    ) -> Result<Vec<tokenizers::Encoding>, LoadError> {
        let inputs: Vec<EncodeInput> = sentences
            .iter()
            .map(|words| EncodeInput::Single(InputSequence::from(words.clone())))
            .collect();
        self.inner
            .encode_batch(inputs, self.config.add_special_tokens)
            .map_err(|e| LoadError::format(&self.path, e.to_string()))
    }

    /// The path of `tokenizer.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns ids back into text, without special tokens.
    ///
    /// # Errors
    /// [`LoadError::Format`] naming the tokenizer file.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LoadError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LoadError::format(&self.path, e.to_string()))
    }
}

/// A window of an unpadded question/context encoding.
fn qa_window(e: tokenizers::Encoding) -> QaWindow {
    let context_offsets = e
        .get_sequence_ids()
        .iter()
        .zip(e.get_offsets())
        .map(|(sequence, &offsets)| (*sequence == Some(1)).then_some(offsets))
        .collect();
    QaWindow {
        ids: e.get_ids().to_vec(),
        type_ids: e.get_type_ids().to_vec(),
        context_offsets,
    }
}

/// The ids of the real tokens of a padded encoding (the padding parameters set in
/// `from_file` pad every batch), with the same tokens of one of its per-token `column`s
/// (word ids, segment ids).
fn unpadded<T: Copy>(e: &tokenizers::Encoding, column: &[T]) -> (Vec<u32>, Vec<T>) {
    e.get_ids()
        .iter()
        .zip(column)
        .zip(e.get_attention_mask())
        .filter(|(_, mask)| **mask == 1)
        .map(|((&id, &value), _)| (id, value))
        .unzip()
}

/// Stacks padded encodings into one row-major batch.
fn collect(encodings: &[tokenizers::Encoding]) -> Encoded {
    let seq = encodings.first().map_or(0, |e| e.get_ids().len());
    let mut out = Encoded {
        shape: [encodings.len(), seq],
        input_ids: Vec::with_capacity(encodings.len() * seq),
        attention_mask: Vec::with_capacity(encodings.len() * seq),
        token_type_ids: Vec::with_capacity(encodings.len() * seq),
    };
    for e in encodings {
        out.input_ids
            .extend(e.get_ids().iter().map(|&v| i64::from(v)));
        out.attention_mask
            .extend(e.get_attention_mask().iter().map(|&v| i64::from(v)));
        out.token_type_ids
            .extend(e.get_type_ids().iter().map(|&v| i64::from(v)));
    }
    out
}
