//! What a task needs of a model directory besides the weights: tokenizer, chat template,
//! end-of-sequence id, label names.

use burnish_data::{ProblemType, RowEncoder, Task};
use burnish_loader::{ChatTemplate, HfModelDir, HfTokenizer, TokenizerConfig};
use serde_json::Value;

use crate::TaskError;

/// Tokenizer, template and labels of a model directory for a task.
#[derive(Debug)]
pub struct TaskSetup {
    /// The tokenizer, truncating to the run's `max_length`.
    pub tokenizer: HfTokenizer,
    /// The chat template (`tokenizer_config.json`), when the model has one.
    pub template: Option<ChatTemplate>,
    /// The end-of-sequence id appended to causal-LM responses.
    pub eos_id: Option<u32>,
    /// Class or tag names by id (empty for causal LM).
    pub labels: Vec<String>,
    /// The task.
    pub task: Task,
    /// Sequence classification's problem type: how labels are read and which loss and
    /// metrics apply.
    pub problem: ProblemType,
    /// Multi-label classification predicts the labels whose probability is above this.
    pub threshold: f64,
    /// Question answering: windowing and answer selection.
    pub qa: crate::QaOptions,
}

impl TaskSetup {
    /// Reads what `task` needs from `hf`, truncating to `max_length` tokens. The
    /// tokenizer must fit the model: every id it can produce is a row of the embedding
    /// table, and `max_length` is within the model's positions.
    ///
    /// # Errors
    /// [`TaskError::Load`] for an unreadable tokenizer or template, or a tokenizer with
    /// ids beyond the model's `vocab_size`; [`TaskError::Invalid`] (field `max_length`)
    /// for a length beyond the position table.
    pub fn new(
        hf: &HfModelDir,
        task: Task,
        max_length: usize,
        labels: Vec<String>,
    ) -> Result<Self, TaskError> {
        if let Some(positions) = hf.config().max_positions()
            && max_length > positions
        {
            return Err(TaskError::Invalid {
                field: "max_length".into(),
                message: format!(
                    "{max_length} tokens, but the model in {} has {positions} positions",
                    hf.path().display()
                ),
            });
        }
        let tokenizer = hf.tokenizer(TokenizerConfig {
            max_length,
            ..TokenizerConfig::default()
        })?;
        let vocab_size = hf.config().vocab_size();
        if let Some((token, id)) = tokenizer
            .inner()
            .get_vocab(true)
            .into_iter()
            .max_by_key(|(_, id)| *id)
            .filter(|(_, id)| *id as usize >= vocab_size)
        {
            return Err(burnish_loader::LoadError::Format {
                path: hf.path().join("tokenizer.json"),
                detail: format!(
                    "token {token:?} has id {id}, beyond the model's vocab_size {vocab_size} \
                     (config.json): the tokenizer belongs to another model"
                ),
            }
            .into());
        }
        let template = ChatTemplate::from_dir(hf.path())?;
        let eos_id = match task {
            Task::CausalLm => eos_id(hf, template.as_ref(), &tokenizer),
            _ => None,
        };
        Ok(TaskSetup {
            tokenizer,
            template,
            eos_id,
            labels,
            task,
            problem: problem_of(hf),
            threshold: 0.5,
            qa: crate::QaOptions::default(),
        })
    }

    /// The same setup with sequence-classification problem type `problem`.
    pub fn with_problem(mut self, problem: ProblemType) -> Self {
        self.problem = problem;
        self
    }

    /// The same setup predicting multi-label classes above probability `threshold`.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] (field `threshold`) unless `0 < threshold < 1`.
    pub fn with_threshold(mut self, threshold: f64) -> Result<Self, TaskError> {
        check_threshold(threshold)?;
        self.threshold = threshold;
        Ok(self)
    }

    /// The row encoder of this task (`require_labels`: training and evaluation rows must
    /// carry labels; prediction rows need not).
    pub fn encoder(&self, require_labels: bool) -> RowEncoder<'_> {
        RowEncoder {
            task: self.task,
            problem: self.problem,
            tokenizer: &self.tokenizer,
            labels: &self.labels,
            chat_template: self.template.as_ref(),
            eos_id: self.eos_id,
            require_labels,
            doc_stride: self.qa.doc_stride,
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

/// Checks a multi-label decision threshold: a probability strictly between 0 and 1.
pub(crate) fn check_threshold(threshold: f64) -> Result<(), TaskError> {
    if threshold > 0.0 && threshold < 1.0 {
        return Ok(());
    }
    Err(TaskError::Invalid {
        field: "threshold".into(),
        message: format!("{threshold} is not a probability strictly between 0 and 1"),
    })
}

/// The problem type of a checkpoint's sequence classifier, as transformers decides it:
/// `problem_type` of config.json, else regression for one label, else single-label.
pub fn problem_of(hf: &HfModelDir) -> ProblemType {
    let json = hf.config_json();
    if let Some(problem) = json
        .get("problem_type")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
    {
        return problem;
    }
    let labels = json
        .get("id2label")
        .and_then(Value::as_object)
        .map(serde_json::Map::len)
        .or_else(|| {
            json.get("num_labels")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
        });
    if labels == Some(1) {
        ProblemType::Regression
    } else {
        ProblemType::SingleLabelClassification
    }
}

/// Label names of a fine-tuned directory (`id2label`), in id order.
pub fn labels_of(hf: &HfModelDir) -> Vec<String> {
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

/// The label names of a run: `names`, else `LABEL_<i>` for `num_labels`, else the
/// checkpoint's own `id2label` (a model fine-tuned before), else one output for
/// regression; none for causal LM.
///
/// # Errors
/// [`TaskError::Labels`] when a classification task has none of them.
pub fn label_names(
    hf: &HfModelDir,
    task: Task,
    problem: ProblemType,
    names: Option<&[String]>,
    num_labels: Option<usize>,
) -> Result<Vec<String>, TaskError> {
    match task {
        Task::CausalLm => return Ok(Vec::new()),
        // `qa_outputs` has two outputs, start and end, named as transformers names them.
        Task::QuestionAnswering => return Ok(burnish_heads::LabelNames::generic(2).0),
        _ => {}
    }
    if let Some(names) = names {
        return Ok(names.to_vec());
    }
    if let Some(n) = num_labels {
        return Ok(burnish_heads::LabelNames::generic(n).0);
    }
    let own = labels_of(hf);
    if own.is_empty() && problem == ProblemType::Regression {
        return Ok(burnish_heads::LabelNames::generic(1).0);
    }
    if own.is_empty() {
        return Err(TaskError::Labels {
            path: hf.path().to_owned(),
            detail: "labels (or num_labels) are required: config.json has no id2label".into(),
        });
    }
    Ok(own)
}

/// The task an exported model was trained for, from `architectures`.
///
/// # Errors
/// [`TaskError::Labels`] naming the architecture when it tells no task.
pub fn task_of(hf: &HfModelDir) -> Result<Task, TaskError> {
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
    } else if arch.ends_with("ForQuestionAnswering") {
        Ok(Task::QuestionAnswering)
    } else {
        Err(TaskError::Invalid {
            field: "task".into(),
            message: format!(
                "{}: cannot tell the task from architectures {arch:?}; name the task",
                hf.path().display()
            ),
        })
    }
}
