//! The bad-input corpus (`tests/bad-input/cases.toml`) against the `burnish` binary: every
//! careless or hostile input gets one line on stderr naming the file and line, the config
//! key or the flag, with exit status 2; nothing panics or hangs, and no file that existed
//! before the command is changed or lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    class: String,
    name: String,
    #[serde(default)]
    setup: Vec<toml::Table>,
    args: String,
    #[serde(default = "two")]
    status: i32,
    #[serde(default)]
    expect: Vec<String>,
    /// A directory the command may change (its own run).
    changes: Option<String>,
}

fn two() -> i32 {
    2
}

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets")
}

const RUN: &str = r#"[model]
path = "bert"
task = "sequence-classification"
labels = ["negative", "positive"]

[data]
train = "train.jsonl"
validation = "valid.jsonl"
max_length = 16

[train]
max_steps = 2
batch_size = 8
lr = 1e-3
eval_at_start = false
output_dir = "out"
"#;

const NER: &str = r#"[model]
path = "bert"
task = "token-classification"
labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

[data]
train = "ner.jsonl"
max_length = 16

[train]
max_steps = 2
batch_size = 8
output_dir = "out"
"#;

const CAUSAL: &str = r#"[model]
path = "llama"
task = "causal-lm"

[data]
train = "sft.jsonl"
max_length = 32

[train]
max_steps = 2
batch_size = 4
output_dir = "out"
"#;

/// The valid starting point of every case.
fn workspace(dir: &Path) {
    let a = assets();
    for model in ["toy-bert", "toy-llama"] {
        let to = dir.join(model.trim_start_matches("toy-"));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(a.join(model)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    for (from, to) in [
        ("data/toy-sentiment/train.jsonl", "train.jsonl"),
        ("data/toy-sentiment/validation.jsonl", "valid.jsonl"),
        ("data/toy-ner/train.jsonl", "ner.jsonl"),
        ("data/toy-sft/train.jsonl", "sft.jsonl"),
    ] {
        std::fs::copy(a.join(from), dir.join(to)).unwrap();
    }
    for (name, text) in [
        ("run.toml", RUN),
        ("ner.toml", NER),
        ("causal.toml", CAUSAL),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn burnish(dir: &Path, args: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burnish"));
    c.args(args.split_whitespace()).current_dir(dir);
    c
}

/// Runs with a deadline: a hang is a failure too.
fn run(dir: &Path, args: &str) -> Result<(i32, String), String> {
    let mut child = burnish(dir, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).map(|_| text)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            return Err("hung: killed after 180 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap().unwrap_or_default();
    Ok((status.code().unwrap_or(-1), text))
}

fn str_of<'a>(op: &'a toml::Table, key: &str) -> &'a str {
    op.get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("`{key}` in {op}"))
}

/// Sets (`to`) or removes a `section.key` line of a TOML file, as a person would edit it.
fn edit_toml(path: &Path, field: &str, to: Option<&str>) {
    let (section, key) = field.split_once('.').unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header = lines
        .iter()
        .position(|l| l.trim() == format!("[{section}]"))
        .unwrap();
    let end = lines[header + 1..]
        .iter()
        .position(|l| l.starts_with('['))
        .map_or(lines.len(), |i| header + 1 + i);
    let at = (header + 1..end).find(|&i| lines[i].split('=').next().unwrap().trim() == key);
    match (at, to) {
        (Some(i), Some(v)) => lines[i] = format!("{key} = {v}"),
        (None, Some(v)) => lines.insert(header + 1, format!("{key} = {v}")),
        (Some(i), None) => {
            lines.remove(i);
        }
        (None, None) => panic!("no {field} in {}", path.display()),
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn bytes_of(op: &toml::Table, key: &str) -> Vec<u8> {
    op[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_integer().unwrap() as u8)
        .collect()
}

fn apply(dir: &Path, op: &toml::Table) -> Result<(), String> {
    let path = |key: &str| dir.join(str_of(op, key));
    if op.contains_key("toml") {
        let to = op.get("to").map(|v| v.as_str().unwrap());
        let field = op.get("set").or(op.get("unset")).unwrap().as_str().unwrap();
        edit_toml(&path("toml"), field, to);
    } else if op.contains_key("json") {
        let file = path("json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let value = serde_json::to_value(&op["to"]).unwrap();
        json[str_of(op, "set")] = value;
        std::fs::write(&file, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    } else if op.contains_key("write") {
        std::fs::write(path("write"), str_of(op, "text")).unwrap();
    } else if op.contains_key("bytes") {
        let file = path("bytes");
        let mut bytes = std::fs::read(&file).unwrap();
        if op.contains_key("prepend") {
            bytes.splice(0..0, bytes_of(op, "prepend"));
        }
        if op.contains_key("append") {
            bytes.extend(bytes_of(op, "append"));
        }
        std::fs::write(&file, bytes).unwrap();
    } else if op.contains_key("append") {
        let mut bytes = std::fs::read(path("append")).unwrap();
        bytes.extend_from_slice(str_of(op, "text").as_bytes());
        std::fs::write(path("append"), bytes).unwrap();
    } else if op.contains_key("truncate") {
        let len = op["len"].as_integer().unwrap() as u64;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path("truncate"))
            .unwrap();
        file.set_len(len).unwrap();
    } else if op.contains_key("poke") {
        let file = path("poke");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[op["at"].as_integer().unwrap() as usize] = op["byte"].as_integer().unwrap() as u8;
        std::fs::write(&file, bytes).unwrap();
    } else if op.contains_key("delete") {
        std::fs::remove_file(path("delete")).unwrap();
    } else if op.contains_key("copy") {
        std::fs::copy(path("copy"), path("to")).unwrap();
    } else if op.contains_key("mkdir") {
        std::fs::create_dir_all(path("mkdir")).unwrap();
    } else if op.contains_key("touch") {
        let file = std::fs::File::options()
            .append(true)
            .open(path("touch"))
            .unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
    } else if op.contains_key("run") {
        let (status, stderr) = run(dir, str_of(op, "run"))?;
        if status != 0 {
            return Err(format!("setup `{}` failed: {stderr}", str_of(op, "run")));
        }
    } else {
        panic!("unknown operation {op}");
    }
    Ok(())
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.insert(
                    p.strip_prefix(dir).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    files
}

/// What is wrong with the outcome of `case`, if anything.
fn check(case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    workspace(dir);
    for op in &case.setup {
        apply(dir, op)?;
    }
    let before = snapshot(dir);
    let (status, stderr) = run(dir, &case.args)?;
    let mut problems = Vec::new();
    if stderr.contains("panicked") || status == 101 {
        problems.push("panicked".to_owned());
    }
    if status != case.status {
        problems.push(format!("exit status {status}, expected {}", case.status));
    }
    if case.status != 0 {
        let lines: Vec<&str> = stderr.trim().lines().collect();
        if lines.len() != 1 {
            problems.push(format!("{} lines on stderr", lines.len()));
        }
        for want in &case.expect {
            if !stderr.contains(want.as_str()) {
                problems.push(format!("no `{want}` in the message"));
            }
        }
    }
    let after = snapshot(dir);
    let free = case.changes.as_deref().map(Path::new);
    for (path, bytes) in &before {
        if free.is_some_and(|f| path.starts_with(f)) {
            continue;
        }
        match after.get(path) {
            None => problems.push(format!("{} was removed", path.display())),
            Some(now) if now != bytes => problems.push(format!("{} changed", path.display())),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}; stderr: {}",
            problems.join(", "),
            stderr.trim()
        ))
    }
}

#[test]
fn every_bad_input_gets_one_clear_line_and_loses_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-input/cases.toml");
    let corpus: Corpus = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(case) = corpus.case.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(why) = check(case) {
                        let line = format!("[{}] {}: {why}", case.class, case.name);
                        failures.lock().unwrap().push(line);
                    }
                }
            });
        }
    });
    let classes: BTreeSet<&str> = corpus.case.iter().map(|c| c.class.as_str()).collect();
    println!("{} cases in {} classes", corpus.case.len(), classes.len());
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        corpus.case.len(),
        failures.join("\n")
    );
}
