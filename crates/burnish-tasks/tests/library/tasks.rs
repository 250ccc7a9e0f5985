//! The task set-ups beyond single-label classification, each fine-tuned end to end by
//! `fine_tune` on the toy BERT with synthetic data whose answer the data itself fixes:
//! sentence pairs with a regression target, multi-label classification, and extractive
//! QA with long contexts split into windows and unanswerable questions (SQuAD v2). Each
//! asserts that the metrics moved from chance to solved, then reads the exported model
//! back with `evaluate_dir` / `predict_dir`.

use std::collections::BTreeMap;
use std::path::Path;

use burnish_tasks::{EvalOptions, QaOptions, evaluate_dir, predict_dir};
use serde_json::{Value, json};

use super::{assets, fine_tune_with};

const PEOPLE: [&str; 4] = ["alice", "bob", "carol", "dave"];
const CITIES: [&str; 4] = ["london", "oslo", "paris", "rome"];
const GOOD: [&str; 4] = ["good", "great", "lovely", "superb"];
const BAD: [&str; 4] = ["bad", "awful", "dull", "boring"];
const OTHER: [&str; 4] = ["film", "plot", "story", "acting"];

/// A small deterministic generator (64-bit LCG), enough to vary synthetic rows.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }

    /// `n` words from the sentiment and filler lists.
    fn words(&mut self, n: usize) -> Vec<&'static str> {
        let lists = [&GOOD, &BAD, &OTHER, &PEOPLE];
        (0..n)
            .map(|_| {
                let list = lists[self.below(4)];
                self.pick(list)
            })
            .collect()
    }
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: Vec<String> = rows.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

/// A run of the toy BERT on `train`/`validation` under `dir`, with `model` and `data`
/// settings merged into the defaults.
fn train(dir: &Path, model: Value, data: Value, steps: u64, lr: f64) -> BTreeMap<String, Value> {
    let config = json!({
        "model": {"path": assets().join("toy-bert"), "dropout": 0.0},
        "data": {"train": dir.join("train.jsonl"), "validation": dir.join("validation.jsonl"),
                 "max_length": 32},
        "train": {"max_steps": steps, "batch_size": 16, "lr": lr, "warmup_ratio": 0.1,
                  "eval_every": steps, "output_dir": dir.join("run"), "seed": 7},
    });
    let outcome = fine_tune_with(config, [("model", model), ("data", data)]);
    let before = outcome.before.unwrap();
    let after = outcome.after.unwrap();
    eprintln!("before {before:?}\nafter {after:?}");
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in before {
        out.insert(format!("before_{k}"), json!(v));
    }
    for (k, v) in after {
        out.insert(k, json!(v));
    }
    out.insert("final".into(), json!(outcome.final_dir));
    out
}

fn metric(m: &BTreeMap<String, Value>, key: &str) -> f64 {
    m[key].as_f64().unwrap()
}

#[test]
fn sentence_pair_regression_learns_a_score_of_the_second_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(1);
    // The score is the number of positive words in the second text: learnable only
    // through the pair encoding, with segment ids telling the texts apart.
    let rows = |n: usize, rng: &mut Lcg| -> Vec<Value> {
        (0..n)
            .map(|_| {
                let (a, b) = (rng.words(4), rng.words(4));
                let score = b.iter().filter(|w| GOOD.contains(w)).count() as f64;
                json!({"text": a.join(" "), "text_pair": b.join(" "), "label": score})
            })
            .collect()
    };
    write_jsonl(&dir.path().join("train.jsonl"), &rows(512, &mut rng));
    write_jsonl(&dir.path().join("validation.jsonl"), &rows(96, &mut rng));
    let m = train(
        dir.path(),
        json!({"task": "sequence-classification", "problem_type": "regression"}),
        json!({}),
        160,
        2e-3,
    );
    assert!(metric(&m, "before_pearson").abs() < 0.5, "{m:?}");
    assert!(metric(&m, "pearson") > 0.9, "{m:?}");
    assert!(metric(&m, "mse") < 0.5 * metric(&m, "before_mse"), "{m:?}");

    let exported = Path::new(m["final"].as_str().unwrap());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["problem_type"], "regression");
    assert_eq!(config["num_labels"], 1);
    let again = evaluate_dir::<burn_flex::Flex<f32, i32>>(
        exported,
        &dir.path().join("validation.jsonl"),
        &EvalOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert!((again["pearson"] - metric(&m, "pearson")).abs() < 1e-6);
}

#[test]
fn multi_label_classification_predicts_every_class_present() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(2);
    let rows = |n: usize, rng: &mut Lcg| -> Vec<Value> {
        (0..n)
            .map(|_| {
                let words = rng.words(3);
                let mut labels = Vec::new();
                for (name, list) in [("positive", &GOOD), ("negative", &BAD), ("person", &PEOPLE)] {
                    if words.iter().any(|w| list.contains(w)) {
                        labels.push(name);
                    }
                }
                json!({"text": words.join(" "), "labels": labels})
            })
            .collect()
    };
    write_jsonl(&dir.path().join("train.jsonl"), &rows(512, &mut rng));
    write_jsonl(&dir.path().join("validation.jsonl"), &rows(96, &mut rng));
    let m = train(
        dir.path(),
        json!({"task": "sequence-classification", "problem_type": "multi_label_classification",
               "labels": ["positive", "negative", "person"]}),
        json!({}),
        320,
        3e-3,
    );
    assert!(metric(&m, "before_subset_accuracy") < 0.5, "{m:?}");
    assert!(metric(&m, "micro_f1") > 0.95, "{m:?}");
    assert!(metric(&m, "subset_accuracy") > 0.85, "{m:?}");

    let exported = Path::new(m["final"].as_str().unwrap());
    let output = dir.path().join("predictions.jsonl");
    let input = dir.path().join("input.jsonl");
    write_jsonl(
        &input,
        &[
            json!({"text": "alice good film"}),
            json!({"text": "dull plot"}),
        ],
    );
    predict_dir::<burn_flex::Flex<f32, i32>>(
        exported,
        &input,
        &output,
        &EvalOptions::default(),
        &Default::default(),
    )
    .unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["labels"], json!(["positive", "person"]));
    assert_eq!(lines[1]["labels"], json!(["negative"]));
    assert_eq!(lines[0]["logits"].as_array().unwrap().len(), 3);
}

/// `{question, context, answers}` rows: "P met Q in C ." somewhere among filler
/// sentences (the answer is C), or, for every fifth row, no such sentence (no answer).
fn qa_rows(n: usize, rng: &mut Lcg) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (p, q) = (rng.pick(&PEOPLE), rng.pick(&PEOPLE));
            let city = rng.pick(&CITIES);
            let mut sentences: Vec<String> = (0..2 + rng.below(3))
                .map(|_| format!("the {} was {} .", rng.pick(&OTHER), rng.pick(&GOOD)))
                .collect();
            let answerable = i % 5 != 0;
            let at = rng.below(sentences.len() + 1);
            if answerable {
                sentences.insert(at, format!("{p} met {q} in {city} ."));
            } else {
                sentences.insert(at, format!("{p} met {q} ."));
            }
            let context = sentences.join(" ");
            let answers = if answerable {
                let start = context.find(&format!(" in {city} .")).map_or(0, |s| s + 4);
                json!({"text": [city], "answer_start": [start]})
            } else {
                json!({"text": [], "answer_start": []})
            };
            json!({"id": format!("q{i}"), "question": format!("{p} met {q} in"),
                   "context": context, "answers": answers})
        })
        .collect()
}

#[test]
fn extractive_qa_finds_answers_across_windows_and_knows_when_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(3);
    write_jsonl(&dir.path().join("train.jsonl"), &qa_rows(320, &mut rng));
    let validation = qa_rows(60, &mut rng);
    write_jsonl(&dir.path().join("validation.jsonl"), &validation);
    // 24 tokens: 6 of question and specials, 18 of context, contexts of 16 to 30 tokens:
    // many split into two or three windows sharing 6 tokens.
    let data = json!({"max_length": 24, "doc_stride": 6, "version_2_with_negative": true});
    let m = train(
        dir.path(),
        json!({"task": "question-answering"}),
        data,
        200,
        2e-3,
    );
    assert!(metric(&m, "before_f1") < 40.0, "{m:?}");
    assert!(metric(&m, "f1") > 90.0, "{m:?}");
    assert!(metric(&m, "exact_match") > 90.0, "{m:?}");

    let exported = Path::new(m["final"].as_str().unwrap());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"], json!(["BertForQuestionAnswering"]));
    let options = EvalOptions {
        max_length: Some(24),
        qa: QaOptions {
            doc_stride: 6,
            version_2_with_negative: true,
            ..QaOptions::default()
        },
        ..EvalOptions::default()
    };
    let output = dir.path().join("answers.jsonl");
    let input = dir.path().join("validation.jsonl");
    let device = Default::default();
    let n = predict_dir::<burn_flex::Flex<f32, i32>>(exported, &input, &output, &options, &device)
        .unwrap();
    assert_eq!(n, validation.len());
    let text = std::fs::read_to_string(&output).unwrap();
    let mut right = 0;
    for (line, row) in text.lines().zip(&validation) {
        let p: Value = serde_json::from_str(line).unwrap();
        assert_eq!(p["id"], row["id"]);
        let answer = p["answer"].as_str().unwrap();
        match (p["start"].as_u64(), p["end"].as_u64()) {
            (Some(s), Some(e)) => {
                let context = row["context"].as_str().unwrap();
                let span: String = context
                    .chars()
                    .skip(s as usize)
                    .take((e - s) as usize)
                    .collect();
                assert_eq!(span, answer, "offsets point at the answer");
            }
            _ => assert_eq!(answer, ""),
        }
        let gold = row["answers"]["text"]
            .get(0)
            .and_then(Value::as_str)
            .unwrap_or("");
        right += usize::from(answer == gold);
        assert!((0.0..=1.0).contains(&p["score"].as_f64().unwrap()));
    }
    assert!(
        right * 10 > validation.len() * 9,
        "{right} of {}",
        validation.len()
    );
}
