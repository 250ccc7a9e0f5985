//! Extractive question answering after the model: the start/end logits of every window
//! of a question's context turned into the best answer span (transformers'
//! `postprocess_qa_predictions`), and SQuAD exact match and F1 over a labeled set.

use std::collections::BTreeMap;

use burnish_data::jsonl::JsonlRows;
use burnish_data::{Batch, QaRow, TokenCache};
use burnish_trainer::metrics::{squad_exact, squad_f1};
use serde::{Deserialize, Serialize};

use crate::{Metrics, TaskError, TaskSetup};

/// How question-answering rows are windowed and answers chosen; defaults are transformers'
/// run_qa's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QaOptions {
    /// Context tokens consecutive windows share (transformers' `stride`).
    pub doc_stride: usize,
    /// Start and end candidates per window (the `n_best_size` highest logits each).
    pub n_best: usize,
    /// Longest answer, in tokens.
    pub max_answer_length: usize,
    /// SQuAD v2: a question may have no answer, predicted when the best span scores
    /// below the no-answer score (`[CLS]` start + end) by more than
    /// `null_score_diff_threshold`.
    pub version_2_with_negative: bool,
    /// How much the no-answer score may exceed the best span's before "no answer" wins.
    pub null_score_diff_threshold: f64,
}

impl Default for QaOptions {
    fn default() -> Self {
        QaOptions {
            doc_stride: burnish_data::DEFAULT_DOC_STRIDE,
            n_best: 20,
            max_answer_length: 30,
            version_2_with_negative: false,
            null_score_diff_threshold: 0.0,
        }
    }
}

impl QaOptions {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), TaskError> {
        let err = |field: &str, message: &str| {
            Err(TaskError::Invalid {
                field: field.into(),
                message: message.into(),
            })
        };
        if self.n_best == 0 {
            return err("n_best", "must be at least 1");
        }
        if self.max_answer_length == 0 {
            return err("max_answer_length", "must be at least 1");
        }
        if !self.null_score_diff_threshold.is_finite() {
            return err("null_score_diff_threshold", "must be a finite number");
        }
        Ok(())
    }
}

/// A predicted answer: its text and character span in the context (`None` when the
/// model says the question has no answer), and its probability among the n-best spans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The answer text (empty: no answer).
    pub answer: String,
    /// First character in the context.
    pub start: Option<usize>,
    /// One past the last character.
    pub end: Option<usize>,
    /// Softmax of the span's score over the n-best candidates.
    pub score: f64,
}

/// Rows tokenized together when the windows are rebuilt.
const CHUNK: usize = 256;

/// A window's place: its row and each token's character span in the context.
#[derive(Debug)]
struct Window {
    row: usize,
    offsets: Vec<Option<(usize, usize)>>,
    logits: Option<(Vec<f32>, Vec<f32>)>,
}

/// Start/end logits of every window of a cached QA data set, gathered batch by batch,
/// then turned into one [`Answer`] per row.
#[derive(Debug)]
pub struct QaPostProcessor {
    options: QaOptions,
    rows: Vec<QaRow>,
    /// By cache index.
    windows: Vec<Window>,
}

impl QaPostProcessor {
    /// Re-reads the rows of `cache` (built by `setup`'s encoder) and their windows'
    /// character offsets.
    ///
    /// # Errors
    /// [`TaskError::Data`] when the cache or its source cannot be read;
    /// [`TaskError::Invalid`] when the source no longer gives the cached windows.
    pub fn new(setup: &TaskSetup, cache: &TokenCache) -> Result<Self, TaskError> {
        setup.qa.validate()?;
        let mut lines: Vec<(u64, usize)> = Vec::new();
        for i in 0..cache.len() {
            let line = u64::from(cache.record(i)?.line);
            match lines.last_mut() {
                Some((l, n)) if *l == line => *n += 1,
                _ => lines.push((line, 1)),
            }
        }
        let source = &cache.meta().source;
        let mut wanted = lines.iter().peekable();
        let mut rows = Vec::with_capacity(lines.len());
        for row in JsonlRows::open(source)? {
            let row = row?;
            let Some(&&(line, _)) = wanted.peek() else {
                break;
            };
            if row.line != line {
                continue;
            }
            wanted.next();
            let value = row.value.map_err(|reason| changed(source, line, &reason))?;
            rows.push(QaRow::parse(&value, false).map_err(|r| changed(source, line, &r))?);
        }
        if let Some(&&(line, _)) = wanted.peek() {
            return Err(changed(source, line, "the line is gone"));
        }
        let mut windows = Vec::with_capacity(cache.len());
        for (first, (chunk, counts)) in rows.chunks(CHUNK).zip(lines.chunks(CHUNK)).enumerate() {
            let pairs: Vec<(&str, &str)> = chunk
                .iter()
                .map(|r| (r.question.as_str(), r.context.as_str()))
                .collect();
            let encoded = setup
                .tokenizer
                .encode_qa_windows(&pairs, setup.qa.doc_stride)?;
            for (k, (row_windows, &(line, count))) in encoded.into_iter().zip(counts).enumerate() {
                let row_windows = row_windows.map_err(|r| changed(source, line, &r))?;
                if row_windows.len() != count {
                    let what = format!("{} windows, the cache has {count}", row_windows.len());
                    return Err(changed(source, line, &what));
                }
                windows.extend(row_windows.into_iter().map(|w| Window {
                    row: first * CHUNK + k,
                    offsets: w.context_offsets,
                    logits: None,
                }));
            }
        }
        Ok(QaPostProcessor {
            options: setup.qa,
            rows,
            windows,
        })
    }

    /// Takes the span logits of one batch (`[batch, seq, 2]` row-major) of the cache.
    pub fn add(&mut self, logits: &[f32], [_, seq, outputs]: [usize; 3], batch: &Batch) {
        if outputs != 2 {
            return;
        }
        for (row, &index) in batch.indices.iter().enumerate() {
            let Some(window) = self.windows.get_mut(index) else {
                continue;
            };
            let Some(values) = logits.get(row * seq * 2..(row + 1) * seq * 2) else {
                continue;
            };
            let start = values.iter().step_by(2).copied().collect();
            let end = values.iter().skip(1).step_by(2).copied().collect();
            window.logits = Some((start, end));
        }
    }

    /// The rows read back, in cache order.
    pub fn rows(&self) -> &[QaRow] {
        &self.rows
    }

    /// The best answer of every row, from the logits of its windows (rows none of whose
    /// windows was seen get no answer).
    pub fn answers(&self) -> Vec<Answer> {
        let mut by_row: Vec<Vec<&Window>> = vec![Vec::new(); self.rows.len()];
        for w in &self.windows {
            if let Some(list) = by_row.get_mut(w.row) {
                list.push(w);
            }
        }
        by_row
            .iter()
            .zip(&self.rows)
            .map(|(windows, row)| self.best(windows, &row.context))
            .collect()
    }

    /// transformers' `postprocess_qa_predictions` for one row.
    fn best(&self, windows: &[&Window], context: &str) -> Answer {
        let o = &self.options;
        // (score, start char, end char); the no-answer candidate has no span.
        let mut candidates: Vec<(f64, Option<(usize, usize)>)> = Vec::new();
        let mut null: Option<f64> = None;
        for w in windows {
            let Some((start, end)) = &w.logits else {
                continue;
            };
            let null_score = f64::from(start[0]) + f64::from(end[0]);
            null = Some(null.map_or(null_score, |n: f64| n.min(null_score)));
            for s in top(start, o.n_best) {
                for e in top(end, o.n_best) {
                    let (Some(Some(first)), Some(Some(last))) =
                        (w.offsets.get(s), w.offsets.get(e))
                    else {
                        continue;
                    };
                    if e < s || e - s + 1 > o.max_answer_length {
                        continue;
                    }
                    let score = f64::from(start[s]) + f64::from(end[e]);
                    candidates.push((score, Some((first.0, last.1))));
                }
            }
        }
        if o.version_2_with_negative
            && let Some(n) = null
        {
            candidates.push((n, None));
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        candidates.truncate(o.n_best);
        if o.version_2_with_negative
            && let Some(n) = null
            && candidates.iter().all(|c| c.1.is_some())
        {
            candidates.push((n, None));
        }
        let max = candidates.first().map_or(0.0, |c| c.0);
        let total: f64 = candidates.iter().map(|c| (c.0 - max).exp()).sum();
        let probability = |score: f64| (score - max).exp() / total;
        let span = |c: &(f64, Option<(usize, usize)>)| {
            let (start, end) = c.1?;
            Some(Answer {
                answer: context.chars().skip(start).take(end - start).collect(),
                start: Some(start),
                end: Some(end),
                score: probability(c.0),
            })
        };
        let none = |score: f64| Answer {
            answer: String::new(),
            start: None,
            end: None,
            score,
        };
        let best = candidates.iter().find(|c| c.1.is_some());
        match (best, null) {
            (Some(best), _) if !o.version_2_with_negative => span(best).unwrap_or(none(0.0)),
            (Some(best), Some(null)) if null - best.0 <= o.null_score_diff_threshold => {
                span(best).unwrap_or(none(0.0))
            }
            (_, Some(null)) if o.version_2_with_negative => none(probability(null)),
            _ => none(0.0),
        }
    }
}

/// Indices of the `n` largest values, largest first (ties: the later index first, as
/// numpy's `argsort()[-1:-n-1:-1]`).
fn top(values: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]).then(a.cmp(&b)));
    order.into_iter().rev().take(n).collect()
}

fn changed(source: &std::path::Path, line: u64, what: &str) -> TaskError {
    TaskError::Invalid {
        field: "data".into(),
        message: format!(
            "{}:{line}: {what}: the file changed since it was cached",
            source.display()
        ),
    }
}

/// SQuAD `exact_match` and `f1` (in percent, as the official script reports them) of the
/// answers [`QaPostProcessor`] picks, against each row's gold answers.
#[derive(Debug)]
pub struct QaMetrics(pub QaPostProcessor);

impl Metrics for QaMetrics {
    fn update(&mut self, logits: &[f32], shape: [usize; 3], batch: &Batch) {
        self.0.add(logits, shape, batch);
    }

    fn finish(&mut self, eval_loss: f64) -> BTreeMap<String, f64> {
        let answers = self.0.answers();
        let n = answers.len().max(1) as f64;
        let (mut exact, mut f1) = (0.0, 0.0);
        for (a, row) in answers.iter().zip(self.0.rows()) {
            let golds: Vec<&str> = row.answers.iter().map(|(t, _)| t.as_str()).collect();
            exact += squad_exact(&a.answer, &golds);
            f1 += squad_f1(&a.answer, &golds);
        }
        BTreeMap::from([
            ("eval_loss".into(), eval_loss),
            ("exact_match".into(), 100.0 * exact / n),
            ("f1".into(), 100.0 * f1 / n),
        ])
    }
}
