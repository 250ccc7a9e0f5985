//! Evaluation and prediction: metrics of a model on labeled JSONL, outputs on any JSONL.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use burnish_data::jsonl::{JsonlRows, read_row_at};
use burnish_data::{BadRows, RowEncoder, Task, TokenCache};
use burnish_heads::{GenerationConfig, generate};
use burnish_loader::{ChatTemplate, HfModelDir, HfTokenizer, Message, TokenizerConfig};
use burnish_trainer::metrics::{accuracy, entity_scores, macro_f1, perplexity};
use serde_json::{Value, json};

use crate::CliError;
use crate::task::{DeviceBatch, TaskModel, load_causal, with_task_model};

/// Tokenizer, template and labels of a model directory for a task.
pub(crate) struct Setup {
    pub(crate) tokenizer: HfTokenizer,
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) eos_id: Option<u32>,
    pub(crate) labels: Vec<String>,
    pub(crate) task: Task,
}

impl Setup {
    pub(crate) fn new(
        hf: &HfModelDir,
        task: Task,
        max_length: usize,
        labels: Vec<String>,
    ) -> Result<Self, CliError> {
        let tokenizer = hf.tokenizer(TokenizerConfig {
            max_length,
            ..TokenizerConfig::default()
        })?;
        let template = ChatTemplate::from_dir(hf.path())?;
        let eos_id = match task {
            Task::CausalLm => eos_id(hf, template.as_ref(), &tokenizer),
            _ => None,
        };
        Ok(Setup {
            tokenizer,
            template,
            eos_id,
            labels,
            task,
        })
    }

    pub(crate) fn encoder(&self, require_labels: bool) -> RowEncoder<'_> {
        RowEncoder {
            task: self.task,
            tokenizer: &self.tokenizer,
            labels: &self.labels,
            chat_template: self.template.as_ref(),
            eos_id: self.eos_id,
            require_labels,
        }
    }
}

/// The end-of-sequence id: `eos_token_id` of config.json (the first, when a list), else
/// the tokenizer config's `eos_token`.
fn eos_id(
    hf: &HfModelDir,
    template: Option<&ChatTemplate>,
    tokenizer: &HfTokenizer,
) -> Option<u32> {
    let from_config = match hf.config_json().get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::Array(a)) => a.first().and_then(Value::as_u64),
        _ => None,
    };
    from_config
        .and_then(|id| u32::try_from(id).ok())
        .or_else(|| template.and_then(|t| tokenizer.token_to_id(t.eos_token())))
}

/// Label names of a fine-tuned directory (`id2label`), in id order.
pub(crate) fn labels_of(hf: &HfModelDir) -> Vec<String> {
    let Some(map) = hf.config_json().get("id2label").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut pairs: Vec<(usize, String)> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned())))
        .collect();
    pairs.sort();
    pairs.into_iter().map(|(_, v)| v).collect()
}

/// Metrics of `model` on a cached labeled set, with dropout off (an inference model):
/// `eval_loss` always; `accuracy` and `macro_f1` for sequence classification; entity
/// `precision`, `recall`, `f1` (seqeval) and token `accuracy` for token classification;
/// `perplexity` for causal LM.
pub(crate) fn cache_metrics<B: Backend, M: TaskModel<B>>(
    model: &M,
    cache: &TokenCache,
    setup: &Setup,
    batch_size: usize,
    device: &B::Device,
) -> Result<BTreeMap<String, f64>, CliError> {
    let (mut loss, mut items) = (0.0, 0u64);
    let (mut preds, mut gold) = (Vec::new(), Vec::new());
    let (mut pred_tags, mut gold_tags) = (Vec::new(), Vec::new());
    let indices: Vec<usize> = (0..cache.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = cache.batch(chunk, setup.tokenizer.pad_id())?;
        let db = DeviceBatch::<B>::new(&batch, device);
        let logits = model.logits(&db);
        let parts = model.loss(logits.clone(), &batch.labels);
        loss += parts.sum.into_scalar().elem::<f64>();
        items += parts.count;
        if setup.task == Task::CausalLm {
            continue;
        }
        let argmax: Vec<i64> = logits
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        if setup.task == Task::SequenceClassification {
            preds.extend(argmax);
            gold.extend(&batch.labels);
            continue;
        }
        let name = |i: i64| {
            setup
                .labels
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| "O".into())
        };
        let seq = batch.encoded.shape[1];
        for (p_row, g_row) in argmax.chunks(seq).zip(batch.labels.chunks(seq)) {
            let kept: Vec<(i64, i64)> = p_row
                .iter()
                .zip(g_row)
                .filter(|(_, g)| **g >= 0)
                .map(|(p, g)| (*p, *g))
                .collect();
            preds.extend(kept.iter().map(|k| k.0));
            gold.extend(kept.iter().map(|k| k.1));
            pred_tags.push(kept.iter().map(|k| name(k.0)).collect::<Vec<_>>());
            gold_tags.push(kept.iter().map(|k| name(k.1)).collect::<Vec<_>>());
        }
    }
    let eval_loss = loss / items.max(1) as f64;
    let mut out = BTreeMap::from([("eval_loss".to_owned(), eval_loss)]);
    match setup.task {
        Task::SequenceClassification => {
            out.insert("accuracy".into(), accuracy(&preds, &gold));
            out.insert(
                "macro_f1".into(),
                macro_f1(&preds, &gold, setup.labels.len()),
            );
        }
        Task::TokenClassification => {
            let scores = entity_scores(&as_strs(&pred_tags), &as_strs(&gold_tags));
            out.insert("precision".into(), scores.precision);
            out.insert("recall".into(), scores.recall);
            out.insert("f1".into(), scores.f1);
            out.insert("accuracy".into(), accuracy(&preds, &gold));
        }
        Task::CausalLm => {
            out.insert("perplexity".into(), perplexity(eval_loss));
        }
    }
    Ok(out)
}

fn as_strs(rows: &[Vec<String>]) -> Vec<Vec<&str>> {
    rows.iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect()
}

/// Settings of [`evaluate`] and [`predict`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The task; `None` reads it from the model's `architectures`.
    pub task: Option<Task>,
    /// Longest sequence in tokens.
    pub max_length: usize,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Skip unusable rows instead of failing.
    pub skip_bad_rows: bool,
    /// Tokens generated per prompt (causal LM prediction).
    pub max_new_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            task: None,
            max_length: 512,
            batch_size: 32,
            skip_bad_rows: false,
            max_new_tokens: 64,
        }
    }
}

/// The task an exported model was trained for, from `architectures`.
fn task_of(hf: &HfModelDir) -> Result<Task, CliError> {
    let arch = hf
        .config_json()
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    if arch.ends_with("ForSequenceClassification") {
        Ok(Task::SequenceClassification)
    } else if arch.ends_with("ForTokenClassification") {
        Ok(Task::TokenClassification)
    } else if arch.ends_with("ForCausalLM") {
        Ok(Task::CausalLm)
    } else {
        Err(CliError::Usage(format!(
            "{}: cannot tell the task from architectures {arch:?}; pass --task",
            hf.path().display()
        )))
    }
}

fn open_for(model_dir: &Path, options: &EvalOptions) -> Result<(HfModelDir, Setup), CliError> {
    let hf = HfModelDir::open(model_dir)?;
    let task = match options.task {
        Some(t) => t,
        None => task_of(&hf)?,
    };
    let labels = labels_of(&hf);
    if task != Task::CausalLm && labels.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: config.json has no id2label; is this a fine-tuned {} model?",
            model_dir.display(),
            task.name()
        )));
    }
    let setup = Setup::new(&hf, task, options.max_length, labels)?;
    Ok((hf, setup))
}

fn bad_rows(skip: bool) -> BadRows {
    if skip { BadRows::Skip } else { BadRows::Fail }
}

/// Metrics of the model in `model_dir` on the labeled JSONL `data` (see the metric list of
/// `burnish eval`).
///
/// # Errors
/// [`CliError`] for an unusable model directory or data file.
pub fn evaluate<B: Backend>(
    model_dir: &Path,
    data: &Path,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<BTreeMap<String, f64>, CliError> {
    let (hf, setup) = open_for(model_dir, options)?;
    let scratch = tempfile::tempdir().map_err(CliError::io(Path::new(".")))?;
    let (cache, _) = TokenCache::open_or_build(
        data,
        &setup.encoder(true),
        bad_rows(options.skip_bad_rows),
        scratch.path(),
    )?;
    // A fine-tuned directory holds its head: loaded strictly.
    with_task_model!(
        B,
        &hf,
        setup.task,
        setup.labels.len(),
        None,
        true,
        device,
        |loaded| cache_metrics::<B, _>(&loaded.0, &cache, &setup, options.batch_size, device)
    )
}

/// Writes one JSON line per row of `input` to `output`: `label` and `logits` (sequence
/// classification), `tokens`, `tags` and per-word `logits` (token classification), or the
/// generated `text` (causal LM, greedy). Returns the number of lines written.
///
/// # Errors
/// [`CliError`] for an unusable model, input, or output file.
pub fn predict<B: Backend>(
    model_dir: &Path,
    input: &Path,
    output: &Path,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<usize, CliError> {
    let (hf, setup) = open_for(model_dir, options)?;
    let file = std::fs::File::create(output).map_err(CliError::io(output))?;
    let mut out = BufWriter::new(file);
    let mut emit = |line: Value| writeln!(out, "{line}").map_err(CliError::io(output));
    let written = if setup.task == Task::CausalLm {
        let (model, _) = load_causal::<B>(&hf, device)?;
        generate_all(&model, &setup, input, options, &mut emit)?
    } else {
        with_task_model!(
            B,
            &hf,
            setup.task,
            setup.labels.len(),
            None,
            true,
            device,
            |loaded| predict_with::<B, _>(&loaded.0, &setup, input, options, device, &mut emit)
        )?
    };
    out.flush().map_err(CliError::io(output))?;
    Ok(written)
}

fn predict_with<B: Backend, M: TaskModel<B>>(
    model: &M,
    setup: &Setup,
    input: &Path,
    options: &EvalOptions,
    device: &B::Device,
    emit: &mut dyn FnMut(Value) -> Result<(), CliError>,
) -> Result<usize, CliError> {
    let scratch = tempfile::tempdir().map_err(CliError::io(Path::new(".")))?;
    let (cache, _) = TokenCache::open_or_build(
        input,
        &setup.encoder(false),
        bad_rows(options.skip_bad_rows),
        scratch.path(),
    )?;
    let indices: Vec<usize> = (0..cache.len()).collect();
    let mut written = 0;
    for chunk in indices.chunks(options.batch_size.max(1)) {
        let batch = cache.batch(chunk, setup.tokenizer.pad_id())?;
        let logits = model.logits(&DeviceBatch::<B>::new(&batch, device));
        let [b, positions, k] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        for (row, &index) in chunk.iter().enumerate().take(b) {
            let record = cache.record(index)?;
            let source = read_row_at(input, record.offset, u64::from(record.line))?;
            let row_logits = &values[row * positions * k..(row + 1) * positions * k];
            let line = match setup.task {
                Task::SequenceClassification => {
                    let best = argmax(row_logits);
                    let mut line = json!({"label": setup.labels.get(best), "logits": row_logits});
                    if let Some(text) = source.get("text") {
                        line["text"] = text.clone();
                    }
                    line
                }
                _ => {
                    let words = source.get("tokens").cloned().unwrap_or(Value::Null);
                    let n_words = words.as_array().map_or(0, Vec::len);
                    let labels = &batch.labels[row * positions..(row + 1) * positions];
                    let firsts: Vec<&[f32]> = labels
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| **l >= 0)
                        .map(|(p, _)| &row_logits[p * k..(p + 1) * k])
                        .collect();
                    let mut tags: Vec<&str> = firsts
                        .iter()
                        .map(|l| setup.labels.get(argmax(l)).map_or("O", String::as_str))
                        .collect();
                    let truncated = tags.len() < n_words;
                    tags.resize(n_words, "O");
                    json!({"tokens": words, "tags": tags, "logits": firsts, "truncated": truncated})
                }
            };
            emit(line)?;
            written += 1;
        }
    }
    Ok(written)
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

/// Greedy continuation of every prompt (`{prompt}`, `{messages}` rendered with the chat
/// template's generation prompt, or `{text}`).
fn generate_all<B: Backend>(
    model: &burnish_models::LlamaForCausalLm<B>,
    setup: &Setup,
    input: &Path,
    options: &EvalOptions,
    emit: &mut dyn FnMut(Value) -> Result<(), CliError>,
) -> Result<usize, CliError> {
    let config = GenerationConfig {
        max_new_tokens: options.max_new_tokens,
        eos_token_id: setup.eos_id.map(i64::from),
        ..GenerationConfig::default()
    };
    let mut written = 0;
    for row in JsonlRows::open(input)? {
        let row = row?;
        let bad = |reason: String| {
            CliError::Data(burnish_data::DataError::BadRow(burnish_data::BadRow {
                path: input.to_owned(),
                line: row.line as usize,
                reason,
            }))
        };
        let value = row.value.clone().map_err(bad)?;
        let (prompt, specials) = if let Some(messages) = value.get("messages") {
            let mut messages: Vec<Message> = serde_json::from_value(messages.clone())
                .map_err(|e| bad(format!("`messages`: {e}")))?;
            // A conversation that ends with the answer is asked again without it.
            if messages.last().is_some_and(|m| m.role == "assistant") {
                messages.pop();
            }
            let template = setup
                .template
                .as_ref()
                .ok_or_else(|| bad("the model has no chat template".into()))?;
            (template.render(&messages, true)?, false)
        } else if let Some(p) = value.get("prompt").or_else(|| value.get("text")) {
            (
                p.as_str()
                    .ok_or_else(|| bad("prompt must be a string".into()))?
                    .to_owned(),
                true,
            )
        } else {
            return Err(bad("needs `prompt`, `messages` or `text`".into()));
        };
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
