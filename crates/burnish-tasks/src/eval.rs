//! Evaluation and prediction of any task model on a token cache.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use burnish_data::jsonl::{JsonlRows, read_row_at};
use burnish_data::{Batch, ProblemType, Task, TokenCache};
use burnish_heads::{GenerationConfig, generate};
use burnish_loader::Message;
use burnish_trainer::metrics::{
    accuracy, entity_scores, macro_f1, mse, multi_label_scores, pearson, perplexity, spearman,
};
use serde_json::{Value, json};

use crate::{DeviceBatch, TaskError, TaskModel, TaskSetup};

/// Metrics computed from a model's logits over an evaluation set, batch by batch. The
/// built-in tasks have theirs ([`metrics_for`]); implement it for a task of your own.
pub trait Metrics {
    /// Whether [`update`](Self::update) needs the logits (reading them back from the
    /// device costs time; a language model's perplexity needs only the loss).
    fn needs_logits(&self) -> bool {
        true
    }

    /// Takes one batch: its logits `[batch, positions, outputs]` row-major (empty when
    /// [`needs_logits`](Self::needs_logits) is false) and the batch itself.
    fn update(&mut self, logits: &[f32], shape: [usize; 3], batch: &Batch);

    /// The metrics of everything seen, given the mean loss (`eval_loss`).
    fn finish(&mut self, eval_loss: f64) -> BTreeMap<String, f64>;
}

/// `accuracy` and `macro_f1` of single-label classification.
#[derive(Debug, Clone, Default)]
pub struct ClassificationMetrics {
    /// Number of classes.
    pub num_labels: usize,
    preds: Vec<i64>,
    gold: Vec<i64>,
}

impl ClassificationMetrics {
    /// Metrics over `num_labels` classes.
    pub fn new(num_labels: usize) -> Self {
        ClassificationMetrics {
            num_labels,
            ..Self::default()
        }
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

impl Metrics for ClassificationMetrics {
    fn update(&mut self, logits: &[f32], [_, _, k]: [usize; 3], batch: &Batch) {
        for (row, &gold) in logits.chunks(k.max(1)).zip(&batch.labels) {
            if gold >= 0 {
                self.preds.push(argmax(row) as i64);
                self.gold.push(gold);
            }
        }
    }

    fn finish(&mut self, eval_loss: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("eval_loss".into(), eval_loss),
            ("accuracy".into(), accuracy(&self.preds, &self.gold)),
            (
                "macro_f1".into(),
                macro_f1(&self.preds, &self.gold, self.num_labels),
            ),
        ])
    }
}

/// Entity `precision`, `recall`, `f1` (seqeval's rules) and token `accuracy` of BIO tagging.
#[derive(Debug, Clone, Default)]
pub struct TaggingMetrics {
    /// Tag names by id.
    pub labels: Vec<String>,
    preds: Vec<i64>,
    gold: Vec<i64>,
    pred_tags: Vec<Vec<String>>,
    gold_tags: Vec<Vec<String>>,
}

impl TaggingMetrics {
    /// Metrics over the tags `labels`.
    pub fn new(labels: Vec<String>) -> Self {
        TaggingMetrics {
            labels,
            ..Self::default()
        }
    }
}

impl Metrics for TaggingMetrics {
    fn update(&mut self, logits: &[f32], [_, positions, k]: [usize; 3], batch: &Batch) {
        let name = |i: i64| {
            self.labels
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| "O".into())
        };
        let rows = logits
            .chunks((positions * k).max(1))
            .zip(batch.labels.chunks(positions.max(1)));
        for (p_row, g_row) in rows {
            let kept: Vec<(i64, i64)> = p_row
                .chunks(k.max(1))
                .zip(g_row)
                .filter(|(_, g)| **g >= 0)
                .map(|(p, g)| (argmax(p) as i64, *g))
                .collect();
            self.preds.extend(kept.iter().map(|k| k.0));
            self.gold.extend(kept.iter().map(|k| k.1));
            self.pred_tags
                .push(kept.iter().map(|k| name(k.0)).collect());
            self.gold_tags
                .push(kept.iter().map(|k| name(k.1)).collect());
        }
    }

    fn finish(&mut self, eval_loss: f64) -> BTreeMap<String, f64> {
        let scores = entity_scores(&as_strs(&self.pred_tags), &as_strs(&self.gold_tags));
        BTreeMap::from([
            ("eval_loss".into(), eval_loss),
            ("precision".into(), scores.precision),
            ("recall".into(), scores.recall),
            ("f1".into(), scores.f1),
            ("accuracy".into(), accuracy(&self.preds, &self.gold)),
        ])
    }
}

fn as_strs(rows: &[Vec<String>]) -> Vec<Vec<&str>> {
    rows.iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect()
}

/// `mse`, `pearson` and `spearman` of regression (transformers' STS-B metrics): the
/// sequence head's outputs `[batch, 1, k]` against the batch's float targets `[batch, k]`;
/// with several targets, each score is the mean over the targets.
#[derive(Debug, Clone, Default)]
pub struct RegressionMetrics {
    predictions: Vec<Vec<f64>>,
    targets: Vec<Vec<f64>>,
}

impl Metrics for RegressionMetrics {
    fn update(&mut self, logits: &[f32], [_, _, k]: [usize; 3], batch: &Batch) {
        let k = k.max(1);
        if self.predictions.len() < k {
            self.predictions.resize(k, Vec::new());
            self.targets.resize(k, Vec::new());
        }
        for (row, target) in logits.chunks(k).zip(batch.targets.chunks(k)) {
            for (j, (&p, &t)) in row.iter().zip(target).enumerate() {
                self.predictions[j].push(f64::from(p));
                self.targets[j].push(f64::from(t));
            }
        }
    }

    fn finish(&mut self, eval_loss: f64) -> BTreeMap<String, f64> {
        let n = self.predictions.len().max(1) as f64;
        let mean = |f: fn(&[f64], &[f64]) -> f64| {
            self.predictions
                .iter()
                .zip(&self.targets)
                .map(|(p, t)| f(p, t))
                .sum::<f64>()
                / n
        };
        BTreeMap::from([
            ("eval_loss".into(), eval_loss),
            ("mse".into(), mean(mse)),
            ("pearson".into(), mean(pearson)),
            ("spearman".into(), mean(spearman)),
        ])
    }
}

/// `micro_f1`, `macro_f1` and `subset_accuracy` of multi-label classification: a label is
/// predicted when its sigmoid is above `threshold` (0.5 by default), against the batch's
/// 0/1 targets `[batch, num_labels]`.
#[derive(Debug, Clone)]
pub struct MultiLabelMetrics {
    /// The probability above which a label is predicted.
    pub threshold: f64,
    predicted: Vec<bool>,
    gold: Vec<bool>,
    num_labels: usize,
}

impl MultiLabelMetrics {
    /// Metrics at `threshold` (a probability in (0, 1)).
    pub fn new(threshold: f64) -> Self {
        MultiLabelMetrics {
            threshold,
            predicted: Vec::new(),
            gold: Vec::new(),
            num_labels: 0,
        }
    }
}

/// The logit above which a probability exceeds `threshold`: sigmoid(x) > t ⇔
/// x > ln(t / (1 − t)), without computing a sigmoid per logit.
fn threshold_logit(threshold: f64) -> f64 {
    (threshold / (1.0 - threshold)).ln()
}

impl Default for MultiLabelMetrics {
    fn default() -> Self {
        Self::new(0.5)
    }
}

impl Metrics for MultiLabelMetrics {
    fn update(&mut self, logits: &[f32], [_, _, k]: [usize; 3], batch: &Batch) {
        self.num_labels = k;
        let cut = threshold_logit(self.threshold);
        let rows = logits.len().min(batch.targets.len());
        self.predicted
            .extend(logits[..rows].iter().map(|&x| f64::from(x) > cut));
        self.gold
            .extend(batch.targets[..rows].iter().map(|&t| t >= 0.5));
    }

    fn finish(&mut self, eval_loss: f64) -> BTreeMap<String, f64> {
        let s = multi_label_scores(&self.predicted, &self.gold, self.num_labels);
        BTreeMap::from([
            ("eval_loss".into(), eval_loss),
            ("micro_f1".into(), s.micro_f1),
            ("macro_f1".into(), s.macro_f1),
            ("subset_accuracy".into(), s.subset_accuracy),
        ])
    }
}

/// `perplexity` of a language model (from the loss alone).
#[derive(Debug, Clone, Copy, Default)]
pub struct LanguageModelMetrics;

impl Metrics for LanguageModelMetrics {
    fn needs_logits(&self) -> bool {
        false
    }

    fn update(&mut self, _: &[f32], _: [usize; 3], _: &Batch) {}

    fn finish(&mut self, eval_loss: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("eval_loss".into(), eval_loss),
            ("perplexity".into(), perplexity(eval_loss)),
        ])
    }
}

/// The names of the metrics [`metrics_for`] reports for `task` (and, for sequence
/// classification, `problem`).
pub fn metric_names(task: Task, problem: ProblemType) -> &'static [&'static str] {
    match (task, problem) {
        (Task::SequenceClassification, ProblemType::SingleLabelClassification) => {
            &["eval_loss", "accuracy", "macro_f1"]
        }
        (Task::SequenceClassification, ProblemType::Regression) => {
            &["eval_loss", "mse", "pearson", "spearman"]
        }
        (Task::SequenceClassification, ProblemType::MultiLabelClassification) => {
            &["eval_loss", "micro_f1", "macro_f1", "subset_accuracy"]
        }
        (Task::TokenClassification, _) => &["eval_loss", "precision", "recall", "f1", "accuracy"],
        (Task::CausalLm, _) => &["eval_loss", "perplexity"],
        (Task::QuestionAnswering, _) => &["eval_loss", "exact_match", "f1"],
    }
}

/// The metrics of a built-in task as `setup` describes it (task, problem type, labels,
/// multi-label threshold) on `cache` (built by `setup`'s encoder).
///
/// # Errors
/// Question answering re-reads the cached rows: [`TaskError::Data`] when they cannot be.
pub fn metrics_for(setup: &TaskSetup, cache: &TokenCache) -> Result<Box<dyn Metrics>, TaskError> {
    Ok(match (setup.task, setup.problem) {
        (Task::SequenceClassification, ProblemType::SingleLabelClassification) => {
            Box::new(ClassificationMetrics::new(setup.labels.len()))
        }
        (Task::SequenceClassification, ProblemType::Regression) => {
            Box::new(RegressionMetrics::default())
        }
        (Task::SequenceClassification, ProblemType::MultiLabelClassification) => {
            Box::new(MultiLabelMetrics::new(setup.threshold))
        }
        (Task::TokenClassification, _) => Box::new(TaggingMetrics::new(setup.labels.to_vec())),
        (Task::CausalLm, _) => Box::new(LanguageModelMetrics),
        (Task::QuestionAnswering, _) => {
            Box::new(crate::QaMetrics(crate::QaPostProcessor::new(setup, cache)?))
        }
    })
}

/// Metrics of `model` on every example of `cache` (in order, `batch_size` at a time,
/// padded with `pad_id`): `eval_loss`, the mean loss over all items, and what `metrics`
/// adds. Give it an inference model (dropout off): `trainer.model().valid()`.
///
/// # Errors
/// [`TaskError::Data`] when the cache cannot be read.
pub fn evaluate<B: Backend, M: TaskModel<B>>(
    model: &M,
    cache: &TokenCache,
    pad_id: u32,
    batch_size: usize,
    metrics: &mut dyn Metrics,
    device: &B::Device,
) -> Result<BTreeMap<String, f64>, TaskError> {
    let (mut loss, mut items) = (0.0, 0u64);
    let indices: Vec<usize> = (0..cache.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = cache.batch(chunk, pad_id)?;
        let db = DeviceBatch::<B>::checked(&batch, model.input_limits(), device)?;
        let logits = model.logits(&db);
        let shape = logits.dims();
        let parts = model.loss(logits.clone(), &db)?;
        loss += parts.sum.into_scalar().elem::<f64>();
        items += parts.count;
        let values = if metrics.needs_logits() {
            logits
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        metrics.update(&values, shape, &batch);
    }
    Ok(metrics.finish(loss / items.max(1) as f64))
}

/// One JSON line per example of `cache` (built from `input` without labels required):
/// `label` and `logits` (sequence classification), `tokens`, `tags` and per-word
/// `logits` (token classification). Returns the number of lines given to `emit`.
///
/// # Errors
/// [`TaskError::Data`] for the cache or the input file; `emit`'s error.
pub fn predict<B: Backend, M: TaskModel<B>>(
    model: &M,
    setup: &TaskSetup,
    cache: &TokenCache,
    input: &Path,
    batch_size: usize,
    device: &B::Device,
    emit: &mut dyn FnMut(Value) -> Result<(), TaskError>,
) -> Result<usize, TaskError> {
    if setup.task == Task::QuestionAnswering {
        return predict_answers(model, setup, cache, batch_size, device, emit);
    }
    let indices: Vec<usize> = (0..cache.len()).collect();
    let mut written = 0;
    for chunk in indices.chunks(batch_size.max(1)) {
        let (batch, values, [b, positions, k]) = host_logits(model, setup, cache, chunk, device)?;
        for (row, &index) in chunk.iter().enumerate().take(b) {
            let record = cache.record(index)?;
            let source = read_row_at(input, record.offset, u64::from(record.line))?;
            let row_logits = &values[row * positions * k..(row + 1) * positions * k];
            let labels = &batch.labels[row * positions..(row + 1) * positions];
            emit(prediction_line(setup, &source, row_logits, labels, k))?;
            written += 1;
        }
    }
    Ok(written)
}

/// Examples `chunk` of `cache` as a batch, and the model's logits of it read back to the
/// host (row-major, with their shape).
fn host_logits<B: Backend, M: TaskModel<B>>(
    model: &M,
    setup: &TaskSetup,
    cache: &TokenCache,
    chunk: &[usize],
    device: &B::Device,
) -> Result<(Batch, Vec<f32>, [usize; 3]), TaskError> {
    let batch = cache.batch(chunk, setup.tokenizer.pad_id())?;
    let logits = model.logits(&DeviceBatch::<B>::checked(
        &batch,
        model.input_limits(),
        device,
    )?);
    let shape = logits.dims();
    let values = logits
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    Ok((batch, values, shape))
}

/// [`predict`] for question answering: one `{id, answer, start, end, score}` line per
/// row (character offsets into the context; `answer` empty and offsets null for "no
/// answer").
fn predict_answers<B: Backend, M: TaskModel<B>>(
    model: &M,
    setup: &TaskSetup,
    cache: &TokenCache,
    batch_size: usize,
    device: &B::Device,
    emit: &mut dyn FnMut(Value) -> Result<(), TaskError>,
) -> Result<usize, TaskError> {
    let mut spans = crate::QaPostProcessor::new(setup, cache)?;
    let indices: Vec<usize> = (0..cache.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (batch, values, shape) = host_logits(model, setup, cache, chunk, device)?;
        spans.add(&values, shape, &batch);
    }
    let answers = spans.answers();
    for (answer, row) in answers.iter().zip(spans.rows()) {
        let mut line = serde_json::to_value(answer).unwrap_or(Value::Null);
        if let Some(id) = &row.id {
            line["id"] = id.clone();
        }
        emit(line)?;
    }
    Ok(answers.len())
}

/// The output line of one example.
fn prediction_line(
    setup: &TaskSetup,
    source: &Value,
    logits: &[f32],
    labels: &[i64],
    k: usize,
) -> Value {
    if setup.task == Task::SequenceClassification {
        let mut line = match setup.problem {
            ProblemType::SingleLabelClassification => {
                json!({"label": setup.labels.get(argmax(logits)), "logits": logits})
            }
            ProblemType::MultiLabelClassification => {
                let cut = threshold_logit(setup.threshold);
                let on: Vec<&String> = setup
                    .labels
                    .iter()
                    .zip(logits)
                    .filter(|(_, x)| f64::from(**x) > cut)
                    .map(|(name, _)| name)
                    .collect();
                json!({"labels": on, "logits": logits})
            }
            ProblemType::Regression if logits.len() == 1 => json!({"score": logits[0]}),
            ProblemType::Regression => json!({"scores": logits}),
        };
        for field in ["text", "text_pair"] {
            if let Some(text) = source.get(field) {
                line[field] = text.clone();
            }
        }
        return line;
    }
    let words = source.get("tokens").cloned().unwrap_or(Value::Null);
    let n_words = words.as_array().map_or(0, Vec::len);
    let firsts: Vec<&[f32]> = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(p, _)| &logits[p * k..(p + 1) * k])
        .collect();
    let mut tags: Vec<&str> = firsts
        .iter()
        .map(|l| setup.labels.get(argmax(l)).map_or("O", String::as_str))
        .collect();
    let truncated = tags.len() < n_words;
    tags.resize(n_words, "O");
    json!({"tokens": words, "tags": tags, "logits": firsts, "truncated": truncated})
}

/// Greedy continuation of every prompt of `input` (`{prompt}`, `{messages}` rendered with
/// the chat template's generation prompt, or `{text}`), one line each to `emit`.
/// Returns the number of lines.
///
/// # Errors
/// [`TaskError::Data`] naming the line of a row without a usable prompt.
pub fn generate_rows<B: Backend>(
    model: &burnish_models::LlamaForCausalLm<B>,
    setup: &TaskSetup,
    input: &Path,
    max_new_tokens: usize,
    emit: &mut dyn FnMut(Value) -> Result<(), TaskError>,
) -> Result<usize, TaskError> {
    let config = GenerationConfig {
        max_new_tokens,
        eos_token_id: setup.eos_id.map(i64::from),
        ..GenerationConfig::default()
    };
    let mut written = 0;
    for row in JsonlRows::open(input)? {
        let row = row?;
        let bad = |reason: String| {
            TaskError::Data(burnish_data::DataError::BadRow(burnish_data::BadRow {
                path: input.to_owned(),
                line: row.line as usize,
                reason,
            }))
        };
        let value = row.value.clone().map_err(bad)?;
        let (prompt, specials) = prompt_of(setup, &value).map_err(bad)?;
        let ids = setup.tokenizer.encode_unpadded(&[&prompt], specials)?;
        let ids: Vec<i64> = ids
            .first()
            .map(|v| v.iter().map(|&i| i64::from(i)).collect())
            .unwrap_or_default();
        let new = generate(model, &ids, &config);
        let new_u32: Vec<u32> = new.iter().map(|&i| i as u32).collect();
        let text = setup.tokenizer.decode(&new_u32)?;
        emit(json!({"prompt": prompt, "text": text, "tokens": new}))?;
        written += 1;
    }
    Ok(written)
}

/// The prompt of a generation row and whether it gets the tokenizer's special tokens.
fn prompt_of(setup: &TaskSetup, value: &Value) -> Result<(String, bool), String> {
    if let Some(messages) = value.get("messages") {
        let mut messages: Vec<Message> =
            serde_json::from_value(messages.clone()).map_err(|e| format!("`messages`: {e}"))?;
        // A conversation that ends with the answer is asked again without it.
        if messages.last().is_some_and(|m| m.role == "assistant") {
            messages.pop();
        }
        let template = setup
            .template
            .as_ref()
            .ok_or("the model has no chat template")?;
        let prompt = template
            .render(&messages, true)
            .map_err(|e| e.to_string())?;
        return Ok((prompt, false));
    }
    match value.get("prompt").or_else(|| value.get("text")) {
        Some(p) => Ok((
            p.as_str().ok_or("prompt must be a string")?.to_owned(),
            true,
        )),
        None => Err("needs `prompt`, `messages` or `text`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_loader::Encoded;

    fn batch(targets: Vec<f32>, rows: usize) -> Batch {
        Batch {
            encoded: Encoded {
                shape: [rows, 1],
                input_ids: vec![0; rows],
                attention_mask: vec![1; rows],
                token_type_ids: vec![0; rows],
            },
            labels: Vec::new(),
            targets,
            items: rows as u64,
            indices: (0..rows).collect(),
            position_ids: Vec::new(),
        }
    }

    #[test]
    fn regression_metrics_over_batches() {
        let mut m = RegressionMetrics::default();
        // Two batches of the pairs (1, 2), (2, 4), (3, 5) | (4, 4), (5, 5).
        m.update(&[1.0, 2.0, 3.0], [3, 1, 1], &batch(vec![2.0, 4.0, 5.0], 3));
        m.update(&[4.0, 5.0], [2, 1, 1], &batch(vec![4.0, 5.0], 2));
        let out = m.finish(0.25);
        assert_eq!(out["eval_loss"], 0.25);
        assert!((out["pearson"] - 6.0 / 60f64.sqrt()).abs() < 1e-12);
        assert!((out["spearman"] - 7.0 / 90f64.sqrt()).abs() < 1e-12);
        assert!((out["mse"] - 9.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn multi_label_metrics_threshold_the_sigmoid() {
        // Logits 0.3 → p 0.574, −0.3 → p 0.426: predicted at 0.5, not at 0.6.
        let logits = [0.3, -2.0, 0.3, -0.3, 2.0, 1.0];
        let targets = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let mut half = MultiLabelMetrics::default();
        half.update(&logits, [2, 1, 3], &batch(targets.clone(), 2));
        let out = half.finish(0.0);
        // Row 0 exact; row 1 predicts labels 1 and 2 for gold {1}: tp 3, fp 1, fn 0.
        assert_eq!(out["subset_accuracy"], 0.5);
        assert!((out["micro_f1"] - 6.0 / 7.0).abs() < 1e-12);
        let mut strict = MultiLabelMetrics::new(0.6);
        strict.update(&logits, [2, 1, 3], &batch(targets, 2));
        // Now row 0 predicts nothing (fn 2); row 1 still tp 1, fp 1.
        assert!((strict.finish(0.0)["micro_f1"] - 2.0 / 5.0).abs() < 1e-12);
    }
}
