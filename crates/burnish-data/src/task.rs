//! Rows of each task turned into token ids and labels.

use std::collections::HashMap;

use burnish_loader::{ChatTemplate, HfTokenizer, Message};
pub use burnish_models::ProblemType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DataError, IGNORE_INDEX, align_first_subword, label_id};

/// What a model is trained to do; names as in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// `{text, label}` rows, one label per example.
    SequenceClassification,
    /// `{tokens, tags}` rows, one tag per word.
    TokenClassification,
    /// `{prompt, response}`, `{messages}` (chat template) or `{text}` rows.
    CausalLm,
    /// `{question, context, answers: {text, answer_start}}` rows (SQuAD's layout), long
    /// contexts split into overlapping windows; the answer span is predicted.
    QuestionAnswering,
}

impl Task {
    /// The config spelling (`sequence-classification`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Task::SequenceClassification => "sequence-classification",
            Task::TokenClassification => "token-classification",
            Task::CausalLm => "causal-lm",
            Task::QuestionAnswering => "question-answering",
        }
    }
}

/// One example as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedExample {
    /// Token ids, special tokens included, truncated to the tokenizer's `max_length`.
    pub ids: Vec<u32>,
    /// Per-token labels (token classification: the word's tag on its first sub-word;
    /// causal LM: the token itself on response tokens), −100 where nothing is learned;
    /// empty for sequence classification.
    pub token_labels: Vec<i32>,
    /// Class id (sequence classification), −100 when the row has no label.
    pub label: i64,
    /// Float targets of the example (regression values, multi-label 0/1 indicators):
    /// exactly [`RowFormat::targets`] of them.
    pub targets: Vec<f32>,
    /// Index of the first token of the second segment (token type id 1, the second text
    /// of a BERT pair); 0 when every token is of segment 0.
    pub segment: u32,
    /// Whether the row had a second text (`text_pair`); a data set is all pairs or none.
    pub pair: bool,
    /// Answer end token ([`LabelLayout::Span`]), −100 otherwise.
    pub end_label: i64,
}

impl Default for TokenizedExample {
    /// No tokens, no labels (−100), no targets, one segment.
    fn default() -> Self {
        TokenizedExample {
            ids: Vec::new(),
            token_labels: Vec::new(),
            label: IGNORE_INDEX,
            targets: Vec::new(),
            segment: 0,
            pair: false,
            end_label: IGNORE_INDEX,
        }
    }
}

/// How a row kind's labels are laid out in the token cache, and which of them a loss
/// counts as items (what accumulation normalizes by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelLayout {
    /// One class id per example ([`TokenizedExample::label`]); an example counts when its
    /// label is ≥ 0 or it has float targets.
    Example,
    /// One label per token; a token counts when its label is ≥ 0.
    Token,
    /// One label per token, predicted from the token before (causal LM): the first
    /// token never counts.
    ShiftedToken,
    /// A start and an end token per example ([`TokenizedExample::label`] and
    /// [`TokenizedExample::end_label`], extractive QA); every example counts.
    Span,
}

/// A kind of JSON row and how it becomes token ids and labels: the open side of the data
/// crate. [`RowEncoder`] implements it for the built-in [`Task`]s; implement it for rows
/// of your own (a new label type travels as [`TokenizedExample::targets`]) and the
/// [`TokenCache`](crate::TokenCache) stores and batches them like any other.
pub trait RowFormat: Sync {
    /// A name for the kind of rows (`sequence-classification`, `my-scores`), kept in the
    /// cache's metadata.
    fn kind(&self) -> String;

    /// How labels are laid out and counted.
    fn layout(&self) -> LabelLayout;

    /// Float targets per example (0 unless the rows carry them).
    fn targets(&self) -> usize {
        0
    }

    /// The tokenizer (its file and settings are part of the cache fingerprint).
    fn tokenizer(&self) -> &HfTokenizer;

    /// Every other setting that changes the encoding, for the cache fingerprint.
    fn settings(&self) -> Value;

    /// Encodes a chunk of rows; each row gives its examples (one, or the windows of a
    /// long QA context) or the reason it cannot be used.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the tokenizer itself fails.
    fn encode(&self, rows: &[&Value]) -> Result<Vec<RowExamples>, DataError>;
}

/// The examples of one row, or why it cannot be used.
pub type RowExamples = Result<Vec<TokenizedExample>, String>;

impl RowFormat for RowEncoder<'_> {
    fn kind(&self) -> String {
        self.task.name().to_owned()
    }

    fn layout(&self) -> LabelLayout {
        match self.task {
            Task::SequenceClassification => LabelLayout::Example,
            Task::TokenClassification => LabelLayout::Token,
            Task::CausalLm => LabelLayout::ShiftedToken,
            Task::QuestionAnswering => LabelLayout::Span,
        }
    }

    fn targets(&self) -> usize {
        match (self.task, self.problem) {
            (Task::SequenceClassification, ProblemType::SingleLabelClassification) => 0,
            (Task::SequenceClassification, _) => self.labels.len(),
            _ => 0,
        }
    }

    fn tokenizer(&self) -> &HfTokenizer {
        self.tokenizer
    }

    fn settings(&self) -> Value {
        serde_json::json!({
            "task": self.task,
            "problem": self.problem,
            "labels": self.labels,
            "eos": self.eos_id,
            "require_labels": self.require_labels,
            "template": self.chat_template.map(|t| format!("{t:?}")),
            "doc_stride": self.doc_stride,
        })
    }

    fn encode(&self, rows: &[&Value]) -> Result<Vec<RowExamples>, DataError> {
        RowEncoder::encode(self, rows)
    }
}

/// Turns JSON rows into [`TokenizedExample`]s for one task.
#[derive(Debug, Clone)]
pub struct RowEncoder<'a> {
    /// The task.
    pub task: Task,
    /// How a sequence-classification row's label is read: a class (`label`), several
    /// classes (`labels`: names or ids; or `label`: a 0/1 list), or real values (`label`:
    /// a number or a list). Other tasks ignore it.
    pub problem: ProblemType,
    /// The tokenizer (its `max_length` truncates).
    pub tokenizer: &'a HfTokenizer,
    /// Class or tag names by id; labels in rows may be ids or these names. Empty accepts
    /// any non-negative integer class id (single-label classification only). Multi-label
    /// and regression have one output (target) per name.
    pub labels: &'a [String],
    /// Chat template for `{messages}` rows.
    pub chat_template: Option<&'a ChatTemplate>,
    /// Token appended after a response or a plain text (causal LM).
    pub eos_id: Option<u32>,
    /// Whether rows must carry labels (training, evaluation) or may not (prediction).
    pub require_labels: bool,
    /// Question answering: context tokens shared by consecutive windows of a long
    /// context (transformers' `stride`, run_qa's `doc_stride`).
    pub doc_stride: usize,
}

/// The context tokens consecutive QA windows share by default (transformers' run_qa).
pub const DEFAULT_DOC_STRIDE: usize = 128;

/// The label of a sequence row: a class id or float targets.
enum SequenceLabel {
    Class(i64),
    Targets(Vec<f32>),
}

enum Parsed {
    /// Text, second text of a pair, label.
    Text(String, Option<String>, SequenceLabel),
    Words(Vec<String>, Vec<i64>),
    /// Prompt (−100 labels), response (learned), and whether the prompt gets the
    /// tokenizer's special tokens (not when a chat template already wrote them).
    PromptResponse(String, String, bool),
    /// Question, context, and the first answer's character span (`None`: unanswerable
    /// or unlabeled).
    Question(QaRow),
}

/// A question-answering row as read from JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct QaRow {
    /// The question, leading whitespace removed (as transformers' run_qa does).
    pub question: String,
    /// The context the answer is taken from.
    pub context: String,
    /// Gold answers as (text, character start in the context); empty when the question
    /// has no answer (SQuAD v2) or the row is unlabeled.
    pub answers: Vec<(String, usize)>,
    /// The row's `id`, when it has one (copied into predictions).
    pub id: Option<Value>,
}

impl QaRow {
    /// Reads `{question, context, answers: {text: [...], answer_start: [...]}}`,
    /// checking that every answer is where it says in the context.
    ///
    /// # Errors
    /// The reason, naming the field.
    pub fn parse(v: &Value, require_answers: bool) -> Result<Self, String> {
        let question = string_field(v, "question")?.trim_start();
        if question.trim().is_empty() {
            return Err("empty `question`".into());
        }
        let context = string_field(v, "context")?;
        if context.trim().is_empty() {
            return Err("empty `context`".into());
        }
        let answers = match v.get("answers") {
            None | Some(Value::Null) if require_answers => {
                return Err("missing field `answers` ({text: [...], answer_start: [...]})".into());
            }
            None | Some(Value::Null) => Vec::new(),
            Some(a) => parse_answers(a, context)?,
        };
        Ok(QaRow {
            question: question.to_owned(),
            context: context.to_owned(),
            answers,
            id: v.get("id").cloned(),
        })
    }
}

/// SQuAD's `answers`: parallel lists of texts and character starts, each checked against
/// the context.
fn parse_answers(a: &Value, context: &str) -> Result<Vec<(String, usize)>, String> {
    let list = |field: &str| {
        a.get(field)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("`answers` needs a list `{field}`"))
    };
    let (texts, starts) = (list("text")?, list("answer_start")?);
    if texts.len() != starts.len() {
        return Err(format!(
            "`answers` has {} texts and {} answer_start values",
            texts.len(),
            starts.len()
        ));
    }
    let chars: Vec<char> = context.chars().collect();
    texts
        .iter()
        .zip(starts)
        .map(|(text, start)| {
            let text = text.as_str().ok_or("`answers.text` must hold strings")?;
            let start = start
                .as_u64()
                .ok_or("`answers.answer_start` must hold non-negative integers")?
                as usize;
            let len = text.chars().count();
            let found: Option<String> = chars.get(start..start + len).map(|c| c.iter().collect());
            if text.is_empty() || found.as_deref() != Some(text) {
                return Err(format!(
                    "answer {text:?} is not at character {start} of the context (found {:?})",
                    found.unwrap_or_default()
                ));
            }
            Ok((text.to_owned(), start))
        })
        .collect()
}

/// A `{text, label}` row: the text and the class id (−100 when the row has none and
/// labels are not required).
pub(crate) fn parse_text(
    v: &Value,
    labels: &[String],
    index: &HashMap<&str, i64>,
    require_labels: bool,
) -> Result<(String, i64), String> {
    let text = string_field(v, "text")?;
    if text.trim().is_empty() {
        return Err("empty `text`".into());
    }
    let label = match v.get("label") {
        Some(l) => label_id(l, labels, index)?,
        None if require_labels => return Err("missing field `label`".into()),
        None => IGNORE_INDEX,
    };
    Ok((text.to_owned(), label))
}

/// A `{tokens, tags}` row: the words and their tag ids (`None` when the row has no tags
/// and they are not required).
pub(crate) fn parse_words(
    v: &Value,
    labels: &[String],
    index: &HashMap<&str, i64>,
    require_labels: bool,
) -> Result<(Vec<String>, Option<Vec<i64>>), String> {
    let words: Vec<String> = v
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or("missing array field `tokens`")?
        .iter()
        .map(|t| t.as_str().map(str::to_owned).ok_or("non-string token"))
        .collect::<Result<_, _>>()?;
    if words.is_empty() {
        return Err("empty `tokens`".into());
    }
    let tags = match v.get("tags").and_then(Value::as_array) {
        Some(tags) => tags
            .iter()
            .map(|t| label_id(t, labels, index))
            .collect::<Result<Vec<_>, _>>()?,
        None if require_labels => return Err("missing array field `tags`".into()),
        None => return Ok((words, None)),
    };
    if tags.len() != words.len() {
        return Err(format!("{} tags for {} tokens", tags.len(), words.len()));
    }
    Ok((words, Some(tags)))
}

/// The first and last token of the character span `[start, end)` in a window whose
/// context tokens cover `offsets`, when the window holds the whole span. The tokens are
/// found among context tokens only (transformers' run_qa scans past the context into
/// the trailing special token when an answer starts in the window's last token).
pub fn answer_tokens(
    offsets: &[Option<(usize, usize)>],
    start: usize,
    end: usize,
) -> Option<(usize, usize)> {
    let context: Vec<(usize, (usize, usize))> = offsets
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.map(|o| (i, o)))
        .collect();
    let (first, last) = (context.first()?, context.last()?);
    if !(first.1.0 <= start && last.1.1 >= end) {
        return None;
    }
    let start_token = context.iter().rev().find(|(_, o)| o.0 <= start)?.0;
    let end_token = context.iter().find(|(_, o)| o.1 >= end)?.0;
    Some((start_token, end_token.max(start_token)))
}

/// The optional second text of a sentence-pair row.
fn text_pair(v: &Value) -> Result<Option<String>, String> {
    match v.get("text_pair") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err("empty `text_pair`".into()),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err("`text_pair` must be a string".into()),
    }
}

fn string_field<'v>(v: &'v Value, field: &str) -> Result<&'v str, String> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field `{field}`"))
}

impl RowEncoder<'_> {
    fn parse(&self, v: &Value, index: &HashMap<&str, i64>) -> Result<Parsed, String> {
        match self.task {
            Task::SequenceClassification => self.parse_sequence(v, index),
            Task::TokenClassification => {
                // Unlabeled rows (prediction) still mark each word's first sub-word.
                let (words, tags) = parse_words(v, self.labels, index, self.require_labels)?;
                let tags = tags.unwrap_or_else(|| vec![0; words.len()]);
                Ok(Parsed::Words(words, tags))
            }
            Task::CausalLm => self.parse_causal(v),
            Task::QuestionAnswering => Ok(Parsed::Question(QaRow::parse(v, self.require_labels)?)),
        }
    }

    fn parse_sequence(&self, v: &Value, index: &HashMap<&str, i64>) -> Result<Parsed, String> {
        let label = match self.problem {
            ProblemType::SingleLabelClassification => {
                let (text, label) = parse_text(v, self.labels, index, self.require_labels)?;
                return Ok(Parsed::Text(
                    text,
                    text_pair(v)?,
                    SequenceLabel::Class(label),
                ));
            }
            ProblemType::Regression => SequenceLabel::Targets(self.regression_targets(v)?),
            ProblemType::MultiLabelClassification => {
                SequenceLabel::Targets(self.multi_hot(v, index)?)
            }
        };
        let text = string_field(v, "text")?;
        if text.trim().is_empty() {
            return Err("empty `text`".into());
        }
        Ok(Parsed::Text(text.to_owned(), text_pair(v)?, label))
    }

    /// A regression row's `label`: a number (one output) or a list of one per output.
    fn regression_targets(&self, v: &Value) -> Result<Vec<f32>, String> {
        let k = self.labels.len();
        let number = |x: &Value| {
            x.as_f64()
                .filter(|f| f.is_finite() && f.abs() <= f64::from(f32::MAX))
                .map(|f| f as f32)
                .ok_or_else(|| format!("regression label must be a number, got {x}"))
        };
        match v.get("label") {
            None if self.require_labels => Err("missing field `label` (a number)".into()),
            None => Ok(vec![0.0; k]),
            Some(Value::Array(values)) if values.len() == k => values.iter().map(number).collect(),
            Some(Value::Array(values)) => Err(format!(
                "`label` has {} values, the model has {k} regression outputs",
                values.len()
            )),
            Some(x) if k == 1 => Ok(vec![number(x)?]),
            Some(_) => Err(format!(
                "`label` must be a list of {k} numbers (the model has {k} regression outputs)"
            )),
        }
    }

    /// A multi-label row's classes as 0/1 per output: `labels` (names or ids of the
    /// classes present) or `label` (a 0/1 list, one per class).
    fn multi_hot(&self, v: &Value, index: &HashMap<&str, i64>) -> Result<Vec<f32>, String> {
        let k = self.labels.len();
        let mut hot = vec![0.0; k];
        match (v.get("labels"), v.get("label")) {
            (Some(Value::Array(names)), _) => {
                for name in names {
                    hot[label_id(name, self.labels, index)? as usize] = 1.0;
                }
            }
            (Some(_), _) => return Err("`labels` must be a list of label names or ids".into()),
            (None, Some(Value::Array(flags))) if flags.len() == k => {
                for (h, f) in hot.iter_mut().zip(flags) {
                    *h = match f.as_f64() {
                        Some(x) if x == 0.0 || x == 1.0 => x as f32,
                        _ => return Err(format!("`label` must hold 0 or 1 per class, got {f}")),
                    };
                }
            }
            (None, Some(_)) => {
                return Err(format!(
                    "multi-label `label` must be a list of {k} 0/1 values (or give `labels`: \
                     the names of the row's classes)"
                ));
            }
            (None, None) if self.require_labels => {
                return Err(
                    "missing field `labels` (the names of the row's classes) or `label` (a 0/1 \
                     list)"
                        .into(),
                );
            }
            (None, None) => {}
        }
        Ok(hot)
    }

    fn parse_causal(&self, v: &Value) -> Result<Parsed, String> {
        if let Some(messages) = v.get("messages") {
            let messages: Vec<Message> = serde_json::from_value(messages.clone())
                .map_err(|e| format!("`messages` must be [{{role, content}}]: {e}"))?;
            let template = self
                .chat_template
                .ok_or("`messages` rows need a chat template; the model directory has none")?;
            // The prompt is everything before the last assistant turn, rendered with the
            // generation prompt; the response is what the full conversation adds to it.
            let last = messages
                .iter()
                .rposition(|m| m.role == "assistant")
                .ok_or("`messages` has no assistant turn to learn")?;
            let prompt = template
                .render(&messages[..last], true)
                .map_err(|e| e.to_string())?;
            let full = template
                .render(&messages[..=last], false)
                .map_err(|e| e.to_string())?;
            let response = full.strip_prefix(prompt.as_str()).ok_or(
                "the chat template's rendering of the prompt is not a prefix of the conversation",
            )?;
            return Ok(Parsed::PromptResponse(prompt, response.to_owned(), false));
        }
        if let Some(text) = v.get("text") {
            let text = text.as_str().ok_or("`text` must be a string")?;
            if text.trim().is_empty() {
                return Err("empty `text`".into());
            }
            return Ok(Parsed::PromptResponse(String::new(), text.to_owned(), true));
        }
        let prompt = string_field(v, "prompt")?;
        let response = match v.get("response") {
            Some(r) => r.as_str().ok_or("`response` must be a string")?,
            None if self.require_labels => return Err("missing string field `response`".into()),
            None => "",
        };
        Ok(Parsed::PromptResponse(
            prompt.to_owned(),
            response.to_owned(),
            true,
        ))
    }

    /// Encodes a chunk of rows (tokenized in parallel). Each row gives an example or the
    /// reason it cannot be used.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the tokenizer itself fails.
    pub fn encode(&self, rows: &[&Value]) -> Result<Vec<RowExamples>, DataError> {
        let index: HashMap<&str, i64> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as i64))
            .collect();
        let parsed: Vec<Result<Parsed, String>> =
            rows.iter().map(|v| self.parse(v, &index)).collect();
        let ok = || parsed.iter().filter_map(|p| p.as_ref().ok());
        let mut encoded = match self.task {
            Task::SequenceClassification => self.encode_sequences(ok().collect())?,
            Task::TokenClassification => {
                let words: Vec<Vec<&str>> = ok()
                    .map(|p| match p {
                        Parsed::Words(w, _) => w.iter().map(String::as_str).collect(),
                        _ => Vec::new(),
                    })
                    .collect();
                let encoded = self.tokenizer.encode_words_unpadded(&words)?;
                ok().zip(encoded)
                    .map(|(p, (ids, word_ids))| {
                        let tags = match p {
                            Parsed::Words(_, t) => t.as_slice(),
                            _ => &[],
                        };
                        TokenizedExample {
                            ids,
                            token_labels: align_first_subword(&word_ids, tags)
                                .into_iter()
                                .map(|l| l as i32)
                                .collect(),
                            ..TokenizedExample::default()
                        }
                    })
                    .collect()
            }
            Task::CausalLm => self.encode_causal(ok().collect())?,
            Task::QuestionAnswering => return self.encode_questions(parsed),
        };
        let mut out = Vec::with_capacity(rows.len());
        let mut encoded = encoded.drain(..);
        for p in parsed {
            out.push(match p {
                Ok(_) => encoded
                    .next()
                    .ok_or_else(|| "tokenizer returned fewer rows than given".to_owned())
                    .and_then(|e| self.check(e))
                    .map(|e| vec![e]),
                Err(reason) => Err(reason),
            });
        }
        Ok(out)
    }

    /// The windows of each question/context row, labeled with the first answer's start
    /// and end tokens where the window holds all of it, else with position 0 (`[CLS]`,
    /// `<s>`: no answer here).
    fn encode_questions(
        &self,
        parsed: Vec<Result<Parsed, String>>,
    ) -> Result<Vec<RowExamples>, DataError> {
        let rows: Vec<&QaRow> = parsed
            .iter()
            .filter_map(|p| match p {
                Ok(Parsed::Question(row)) => Some(row),
                _ => None,
            })
            .collect();
        let pairs: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.question.as_str(), r.context.as_str()))
            .collect();
        let mut windows = self
            .tokenizer
            .encode_qa_windows(&pairs, self.doc_stride)?
            .into_iter();
        let mut rows = rows.into_iter();
        let mut out = Vec::with_capacity(parsed.len());
        for p in &parsed {
            if let Err(reason) = p {
                out.push(Err(reason.clone()));
                continue;
            }
            let (Some(row), Some(encoded)) = (rows.next(), windows.next()) else {
                out.push(Err("tokenizer returned fewer rows than given".into()));
                continue;
            };
            let examples = match encoded {
                Ok(windows) => windows
                    .into_iter()
                    .map(|w| {
                        let (start, end) = row
                            .answers
                            .first()
                            .and_then(|(text, start)| {
                                answer_tokens(
                                    &w.context_offsets,
                                    *start,
                                    start + text.chars().count(),
                                )
                            })
                            .unwrap_or((0, 0));
                        Ok(TokenizedExample {
                            segment: self.segment_start(&w.type_ids)?,
                            ids: w.ids,
                            label: start as i64,
                            end_label: end as i64,
                            pair: true,
                            ..TokenizedExample::default()
                        })
                    })
                    .collect::<Result<Vec<_>, DataError>>()
                    .map(Ok)?,
                Err(reason) => Err(reason),
            };
            out.push(examples);
        }
        Ok(out)
    }

    /// The first token of segment 1 in a pair's segment (token type) ids, 0 when every
    /// token is of segment 0 (RoBERTa's template).
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] for a template whose segments are not 0s then 1s: the
    /// cache keeps one boundary per example.
    fn segment_start(&self, types: &[u32]) -> Result<u32, DataError> {
        let Some(start) = types.iter().position(|&t| t != 0) else {
            return Ok(0);
        };
        if types[start..].iter().any(|&t| t != 1) {
            return Err(burnish_loader::LoadError::Format {
                path: self.tokenizer.path().to_owned(),
                detail: format!("the pair template's segment ids {types:?} are not 0s then 1s"),
            }
            .into());
        }
        Ok(start as u32)
    }

    /// Single texts with the tokenizer's single template, pairs with its pair template.
    fn encode_sequences(&self, parsed: Vec<&Parsed>) -> Result<Vec<TokenizedExample>, DataError> {
        let mut singles = Vec::new();
        let mut pairs = Vec::new();
        for p in &parsed {
            match p {
                Parsed::Text(a, Some(b), _) => pairs.push((a.as_str(), b.as_str())),
                Parsed::Text(a, None, _) => singles.push(a.as_str()),
                _ => {}
            }
        }
        let mut singles = self.tokenizer.encode_unpadded(&singles, true)?.into_iter();
        let mut pairs = self.tokenizer.encode_pairs_unpadded(&pairs)?.into_iter();
        let mut out = Vec::with_capacity(parsed.len());
        for p in parsed {
            let Parsed::Text(_, second, label) = p else {
                continue;
            };
            let (ids, segment) = match second {
                Some(_) => {
                    let (ids, types) = pairs.next().unwrap_or_default();
                    (ids, self.segment_start(&types)?)
                }
                None => (singles.next().unwrap_or_default(), 0),
            };
            let (label, targets) = match label {
                SequenceLabel::Class(c) => (*c, Vec::new()),
                SequenceLabel::Targets(t) => (IGNORE_INDEX, t.clone()),
            };
            out.push(TokenizedExample {
                ids,
                label,
                targets,
                segment,
                pair: second.is_some(),
                ..TokenizedExample::default()
            });
        }
        Ok(out)
    }

    fn encode_causal(&self, parsed: Vec<&Parsed>) -> Result<Vec<TokenizedExample>, DataError> {
        let parts = |with_specials: bool| -> Vec<&str> {
            parsed
                .iter()
                .map(|p| match p {
                    Parsed::PromptResponse(prompt, _, s) if *s == with_specials => prompt.as_str(),
                    _ => "",
                })
                .collect()
        };
        // Prompts of plain rows get the tokenizer's special tokens (BOS); chat-rendered
        // prompts already hold them; responses never do.
        let plain = self.tokenizer.encode_unpadded(&parts(true), true)?;
        let chat = self.tokenizer.encode_unpadded(&parts(false), false)?;
        let responses: Vec<&str> = parsed
            .iter()
            .map(|p| match p {
                Parsed::PromptResponse(_, r, _) => r.as_str(),
                _ => "",
            })
            .collect();
        let responses = self.tokenizer.encode_unpadded(&responses, false)?;
        let max = self.tokenizer.config().max_length;
        let mut out = Vec::with_capacity(parsed.len());
        for (i, (p, response)) in parsed.iter().zip(responses).enumerate() {
            let specials = matches!(p, Parsed::PromptResponse(_, _, true));
            // A `{text}` row has an empty prompt: only its special tokens (BOS) remain.
            let prompt = if specials { &plain[i] } else { &chat[i] };
            let mut ids = prompt.to_vec();
            let mut labels = vec![IGNORE_INDEX as i32; ids.len()];
            // A chat template already closed the turn with the end-of-sequence token.
            let eos = self.eos_id.filter(|&e| response.last() != Some(&e));
            let learned = response.iter().copied().chain(eos);
            for id in learned {
                ids.push(id);
                labels.push(id as i32);
            }
            ids.truncate(max);
            labels.truncate(max);
            out.push(TokenizedExample {
                ids,
                token_labels: labels,
                ..TokenizedExample::default()
            });
        }
        Ok(out)
    }

    /// Refuses examples a loss could not use.
    fn check(&self, e: TokenizedExample) -> Result<TokenizedExample, String> {
        if e.ids.is_empty() {
            return Err("no token after tokenization".into());
        }
        if self.require_labels {
            let learned = match self.task {
                Task::SequenceClassification => 1,
                Task::TokenClassification => e.token_labels.iter().filter(|&&l| l >= 0).count(),
                // The first token is never a target after the causal shift.
                Task::CausalLm => e.token_labels.iter().skip(1).filter(|&&l| l >= 0).count(),
                Task::QuestionAnswering => 1,
            };
            if learned == 0 {
                return Err(format!(
                    "nothing to learn after truncation to {} tokens",
                    self.tokenizer.config().max_length
                ));
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use burnish_loader::{ChatTemplate, HfModelDir, TokenizerConfig};
    use serde_json::json;

    use super::*;

    fn assets(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/assets")
            .join(name)
    }

    #[test]
    fn prompts_are_masked_and_chat_turns_end_once() {
        let dir = HfModelDir::open(&assets("toy-llama")).unwrap();
        let tokenizer = dir.tokenizer(TokenizerConfig::default()).unwrap();
        let template = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        let eos = tokenizer.token_to_id("<|im_end|>");
        let encoder = RowEncoder {
            task: Task::CausalLm,
            problem: ProblemType::default(),
            doc_stride: DEFAULT_DOC_STRIDE,
            tokenizer: &tokenizer,
            labels: &[],
            chat_template: Some(&template),
            eos_id: eos,
            require_labels: true,
        };
        let pair = json!({"prompt": "what is the color of sky ?", "response": "blue"});
        let chat = json!({"messages": [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello there !"}]});
        let bad = json!({"messages": [{"role": "user", "content": "hi"}]});
        let out = encoder.encode(&[&pair, &chat, &bad]).unwrap();
        let pair = &out[0].as_ref().unwrap()[0];
        let blue = tokenizer.token_to_id("blue").unwrap() as i32;
        let eos = eos.unwrap() as i32;
        // Seven prompt words masked, then `blue` and the end token learned.
        assert_eq!(pair.ids.len(), 9);
        assert_eq!(pair.token_labels[..7], [-100; 7]);
        assert_eq!(pair.token_labels[7..], [blue, eos]);
        let chat = &out[1].as_ref().unwrap()[0];
        let learned: Vec<i32> = chat
            .token_labels
            .iter()
            .copied()
            .filter(|&l| l >= 0)
            .collect();
        let text = tokenizer
            .decode(&learned.iter().map(|&l| l as u32).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(text, "hello there !");
        assert_eq!(learned.last(), Some(&eos));
        assert_eq!(learned.iter().filter(|&&l| l == eos).count(), 1);
        assert!(out[2].as_ref().unwrap_err().contains("no assistant turn"));
    }

    #[test]
    fn rows_that_learn_nothing_are_refused() {
        let dir = HfModelDir::open(&assets("toy-llama")).unwrap();
        let config = TokenizerConfig {
            max_length: 4,
            ..TokenizerConfig::default()
        };
        let tokenizer = dir.tokenizer(config).unwrap();
        let encoder = RowEncoder {
            task: Task::CausalLm,
            problem: ProblemType::default(),
            doc_stride: DEFAULT_DOC_STRIDE,
            tokenizer: &tokenizer,
            labels: &[],
            chat_template: None,
            eos_id: None,
            require_labels: true,
        };
        let long = json!({"prompt": "what is the color of sky ?", "response": "blue"});
        let out = encoder.encode(&[&long]).unwrap();
        assert!(out[0].as_ref().unwrap_err().contains("truncation to 4"));
    }

    fn bert_tokenizer(max_length: usize) -> HfTokenizer {
        let dir = HfModelDir::open(&assets("toy-bert")).unwrap();
        let config = TokenizerConfig {
            max_length,
            ..TokenizerConfig::default()
        };
        dir.tokenizer(config).unwrap()
    }

    fn sequence<'a>(
        problem: ProblemType,
        tokenizer: &'a HfTokenizer,
        labels: &'a [String],
    ) -> RowEncoder<'a> {
        RowEncoder {
            task: Task::SequenceClassification,
            problem,
            tokenizer,
            labels,
            chat_template: None,
            eos_id: None,
            require_labels: true,
            doc_stride: DEFAULT_DOC_STRIDE,
        }
    }

    #[test]
    fn pairs_take_the_pair_template_and_a_second_segment() {
        let tokenizer = bert_tokenizer(32);
        let labels = ["no".to_owned(), "yes".to_owned()];
        let encoder = sequence(ProblemType::SingleLabelClassification, &tokenizer, &labels);
        let pair = json!({"text": "good film", "text_pair": "bad plot", "label": "yes"});
        let single = json!({"text": "good film", "label": 0});
        let out = encoder.encode(&[&pair, &single]).unwrap();
        let id = |t: &str| tokenizer.token_to_id(t).unwrap();
        let pair = &out[0].as_ref().unwrap()[0];
        let expected = ["[CLS]", "good", "film", "[SEP]", "bad", "plot", "[SEP]"].map(id);
        assert_eq!(pair.ids, expected);
        assert_eq!((pair.segment, pair.pair, pair.label), (4, true, 1));
        let single = &out[1].as_ref().unwrap()[0];
        assert_eq!(
            (single.segment, single.pair, single.ids.len()),
            (0, false, 4)
        );

        // longest_first: a pair over max_length keeps both texts, within the limit.
        let short = bert_tokenizer(7);
        let encoder = sequence(ProblemType::SingleLabelClassification, &short, &labels);
        let long =
            json!({"text": "a good film and a great story", "text_pair": "bad plot", "label": 0});
        let out = encoder.encode(&[&long]).unwrap();
        let e = &out[0].as_ref().unwrap()[0];
        assert_eq!(e.ids.len(), 7);
        assert_eq!(
            e.ids[e.segment as usize..],
            [id("bad"), id("plot"), id("[SEP]")]
        );

        for (row, reason) in [
            (
                json!({"text": "good", "text_pair": 3, "label": 0}),
                "`text_pair` must be a string",
            ),
            (
                json!({"text": "good", "text_pair": " ", "label": 0}),
                "empty `text_pair`",
            ),
        ] {
            let out = encoder.encode(&[&row]).unwrap();
            assert_eq!(out[0].as_ref().unwrap_err(), reason);
        }
    }

    #[test]
    fn regression_rows_carry_their_values() {
        let tokenizer = bert_tokenizer(32);
        let one = ["score".to_owned()];
        let encoder = sequence(ProblemType::Regression, &tokenizer, &one);
        assert_eq!(RowFormat::targets(&encoder), 1);
        let rows = [
            json!({"text": "good film", "label": 3.5}),
            json!({"text": "good film", "label": [-1]}),
            json!({"text": "good film", "label": "high"}),
            json!({"text": "good film", "label": [1, 2]}),
            json!({"text": "good film"}),
        ];
        let out = encoder.encode(&rows.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(out[0].as_ref().unwrap()[0].targets, [3.5]);
        assert_eq!(out[0].as_ref().unwrap()[0].label, IGNORE_INDEX);
        assert_eq!(out[1].as_ref().unwrap()[0].targets, [-1.0]);
        assert!(out[2].as_ref().unwrap_err().contains("must be a number"));
        assert!(
            out[3]
                .as_ref()
                .unwrap_err()
                .contains("2 values, the model has 1")
        );
        assert!(
            out[4]
                .as_ref()
                .unwrap_err()
                .contains("missing field `label`")
        );
        let two = ["a".to_owned(), "b".to_owned()];
        let encoder = sequence(ProblemType::Regression, &tokenizer, &two);
        let out = encoder.encode(&[&rows[3], &rows[0]]).unwrap();
        assert_eq!(out[0].as_ref().unwrap()[0].targets, [1.0, 2.0]);
        assert!(out[1].as_ref().unwrap_err().contains("list of 2 numbers"));
    }

    #[test]
    fn multi_label_rows_by_names_ids_or_flags() {
        let tokenizer = bert_tokenizer(32);
        let labels = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let encoder = sequence(ProblemType::MultiLabelClassification, &tokenizer, &labels);
        assert_eq!(RowFormat::targets(&encoder), 3);
        let rows = [
            json!({"text": "good", "labels": ["a", "c"]}),
            json!({"text": "good", "labels": [1]}),
            json!({"text": "good", "labels": []}),
            json!({"text": "good", "label": [0, 1, 1]}),
            json!({"text": "good", "labels": ["d"]}),
            json!({"text": "good", "label": [0, 2, 1]}),
            json!({"text": "good", "label": [0, 1]}),
            json!({"text": "good"}),
        ];
        let out = encoder.encode(&rows.iter().collect::<Vec<_>>()).unwrap();
        let hot = |i: usize| out[i].as_ref().unwrap()[0].targets.clone();
        assert_eq!(hot(0), [1.0, 0.0, 1.0]);
        assert_eq!(hot(1), [0.0, 1.0, 0.0]);
        assert_eq!(hot(2), [0.0, 0.0, 0.0]);
        assert_eq!(hot(3), [0.0, 1.0, 1.0]);
        assert!(out[4].as_ref().unwrap_err().contains("unknown label \"d\""));
        assert!(
            out[5]
                .as_ref()
                .unwrap_err()
                .contains("0 or 1 per class, got 2")
        );
        assert!(
            out[6]
                .as_ref()
                .unwrap_err()
                .contains("list of 3 0/1 values")
        );
        assert!(
            out[7]
                .as_ref()
                .unwrap_err()
                .contains("missing field `labels`")
        );
    }

    #[test]
    fn long_contexts_split_into_overlapping_windows_labeled_with_the_answer() {
        let tokenizer = bert_tokenizer(12);
        let encoder = RowEncoder {
            task: Task::QuestionAnswering,
            doc_stride: 2,
            ..sequence(ProblemType::default(), &tokenizer, &[])
        };
        let context = "bob met alice in paris . carol saw a good film in rome . dave left london .";
        let start = context.find("rome").unwrap();
        let row = json!({"question": "  who saw a film ?", "context": context,
            "answers": {"text": ["rome"], "answer_start": [start]}});
        let out = encoder.encode(&[&row]).unwrap();
        let windows = out[0].as_ref().unwrap();
        // 18 context tokens, 12 − [CLS] − 5 question tokens − 2 [SEP] = 4 per window,
        // each window 2 tokens on: 0..4, 2..6, ... 14..18.
        assert_eq!(windows.len(), 8);
        let rome = tokenizer.token_to_id("rome").unwrap();
        let context_of = |w: &TokenizedExample| w.ids[w.segment as usize..w.ids.len() - 1].to_vec();
        for (w, next) in windows.iter().zip(&windows[1..]) {
            assert!(w.ids.len() <= 12);
            assert_eq!(context_of(w)[2..], context_of(next)[..2], "stride 2");
        }
        for w in windows {
            assert_eq!(w.segment, 7, "[CLS] who saw a film ? [SEP]");
            match w.ids.iter().position(|&id| id == rome) {
                Some(at) => assert_eq!((w.label, w.end_label), (at as i64, at as i64)),
                None => assert_eq!((w.label, w.end_label), (0, 0)),
            }
        }
        assert_eq!(windows.iter().filter(|w| w.label > 0).count(), 2);

        let bad = [
            (
                json!({"question": "who ?", "context": context,
                "answers": {"text": ["rome"], "answer_start": [3]}}),
                "answer \"rome\" is not at character 3 of the context (found \" met\")",
            ),
            (
                json!({"question": "who ?", "context": context}),
                "missing field `answers`",
            ),
            (
                json!({"question": "who ?", "context": context, "answers": {"text": ["rome"]}}),
                "`answers` needs a list `answer_start`",
            ),
            (
                json!({"question": "who ?", "context": " "}),
                "empty `context`",
            ),
        ];
        for (row, reason) in bad {
            let out = encoder.encode(&[&row]).unwrap();
            assert!(out[0].as_ref().unwrap_err().contains(reason), "{out:?}");
        }
        // A question that leaves the context no room is that row's error, not the batch's.
        let long = json!({"question": "bob met alice in paris and carol saw a good film", "context": context,
            "answers": {"text": [], "answer_start": []}});
        let out = encoder.encode(&[&long, &row]).unwrap();
        assert!(out[0].is_err());
        assert_eq!(out[1].as_ref().unwrap().len(), 8);
    }

    #[test]
    fn answer_tokens_stay_inside_the_context() {
        let offsets = [None, Some((0, 3)), Some((4, 7)), Some((8, 12)), None];
        assert_eq!(answer_tokens(&offsets, 4, 7), Some((2, 2)));
        assert_eq!(answer_tokens(&offsets, 5, 12), Some((2, 3)));
        // Starting in the last context token: that token, not the [SEP] after it.
        assert_eq!(answer_tokens(&offsets, 8, 12), Some((3, 3)));
        assert_eq!(answer_tokens(&offsets, 8, 13), None);
        assert_eq!(answer_tokens(&[None, None], 0, 1), None);
    }
}
