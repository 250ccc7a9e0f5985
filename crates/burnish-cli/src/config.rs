//! Reading the run configuration (`burnish train --config FILE.toml`) into the library's
//! [`RunConfig`].
//!
//! Relative paths in the file are relative to the file's own directory, so a config and
//! its data can move together. Unknown keys, wrong types, missing required keys and bad
//! values are refused with one line naming the file, line, section and key.

use std::path::{Path, PathBuf};

use burnish_tasks::{RunConfig, TaskError};

use crate::CliError;

/// The `[section]` header in force at byte `at` of `text`, and the key on that line.
fn locate(text: &str, at: usize) -> (usize, Option<String>, Option<String>) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let section = before.lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .map(str::to_owned)
    });
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.starts_with('['));
    (line, section, key)
}

/// The line where `key` is set in `[section]`, if it is written in the file.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == section && t.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

/// Reads, checks and resolves a config file: relative paths become relative to the
/// file's directory.
///
/// # Errors
/// [`CliError::Config`] with one line naming the file, line, section and key.
pub fn read_config(path: &Path) -> Result<RunConfig, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::Config {
        location: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    // Editors on Windows start files with a byte-order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        CliError::Config {
            location: format!("{}:{line}", path.display()),
            message: "not UTF-8 text".into(),
        }
    })?;
    let mut config = parse_config(&text, path)?;
    resolve(&mut config, path.parent().unwrap_or(Path::new(".")));
    config.validate().map_err(|e| match e {
        TaskError::Invalid { field, message } => field_error(path, &text, &field, &message),
        other => other.into(),
    })?;
    Ok(config)
}

/// A bad value of the config key `field` (`train.lr`) as one line naming the file and
/// the line where the key is set (`text` is the file's text).
pub fn field_error(path: &Path, text: &str, field: &str, message: &str) -> CliError {
    let (section, key) = field.split_once('.').unwrap_or(("", field));
    CliError::Config {
        location: match line_of(text, section, key) {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        },
        message: format!("[{section}] {key}: {message}"),
    }
}

/// Parses TOML text; `path` only names the source in errors. Paths stay as written.
///
/// # Errors
/// [`CliError::Config`].
pub fn parse_config(text: &str, path: &Path) -> Result<RunConfig, CliError> {
    toml::from_str(text).map_err(|e| {
        let (line, section, key) = e
            .span()
            .map(|s| locate(text, s.start))
            .unwrap_or((0, None, None));
        let mut message = e.message().trim().replace('\n', " ");
        let place = match (section, key) {
            (Some(s), Some(k)) if !message.contains(&format!("`{k}`")) => format!("[{s}] {k}: "),
            (Some(s), _) => format!("[{s}] "),
            (None, Some(k)) => format!("{k}: "),
            (None, None) => String::new(),
        };
        message.insert_str(0, &place);
        CliError::Config {
            location: if line > 0 {
                format!("{}:{line}", path.display())
            } else {
                path.display().to_string()
            },
            message,
        }
    })
}

/// Makes relative paths relative to the config file's directory `base`.
fn resolve(config: &mut RunConfig, base: &Path) {
    let fix = |p: &mut PathBuf| {
        // An empty path stays empty, for validation to name it.
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = tidy(&base.join(&*p));
        }
    };
    fix(&mut config.model.path);
    fix(&mut config.data.train);
    for p in [
        &mut config.data.validation,
        &mut config.data.test,
        &mut config.data.cache_dir,
        &mut config.train.output_dir,
    ]
    .into_iter()
    .flatten()
    {
        fix(p);
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (printed paths stay readable;
/// like Python's `os.path.normpath`, a symlinked `b` is not followed);
/// a `..` that would climb above the start is kept.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use burnish_amp::Precision;
    use burnish_schedule::ScheduleKind;
    use burnish_tasks::TrainSection;

    fn parse(text: &str) -> Result<RunConfig, String> {
        parse_config(text, Path::new("run.toml")).map_err(|e| e.to_string())
    }

    const MINIMAL: &str =
        "[model]\npath = \"m\"\ntask = \"sequence-classification\"\n[data]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn defaults_and_schedule_forms() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.train, TrainSection::default());
        assert_eq!(c.data.max_length, 128);
        let c = parse(&format!("{MINIMAL}[train]\nschedule = \"cosine\"\n")).unwrap();
        assert!(matches!(c.train.schedule.0, ScheduleKind::Cosine { .. }));
        let c = parse(&format!(
            "{MINIMAL}[train]\nschedule = {{ type = \"polynomial\", power = 2.0 }}\n"
        ))
        .unwrap();
        assert!(
            matches!(c.train.schedule.0, ScheduleKind::Polynomial { power, .. } if power == 2.0)
        );
    }

    #[test]
    fn errors_name_line_section_and_key() {
        let e = parse(&format!("{MINIMAL}[train]\nlr = \"fast\"\n")).unwrap_err();
        assert!(e.starts_with("run.toml:7: [train] lr: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse(&format!("{MINIMAL}[train]\nlearning_rate = 1e-3\n")).unwrap_err();
        assert!(e.starts_with("run.toml:7: [train] "), "{e}");
        assert!(e.contains("unknown field `learning_rate`"), "{e}");
        let e = parse("[model]\ntask = \"causal-lm\"\n[data]\ntrain = \"x\"\n").unwrap_err();
        assert!(e.contains("missing field `path`"), "{e}");
        let e = parse(&MINIMAL.replace("sequence-classification", "regression")).unwrap_err();
        assert!(e.starts_with("run.toml:3: [model] task: "), "{e}");
        let e = parse(&format!("{MINIMAL}[train]\nschedule = \"cosinus\"\n")).unwrap_err();
        assert!(
            e.contains("[train] schedule") && e.contains("cosine,"),
            "{e}"
        );
    }

    #[test]
    fn values_are_checked_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("t.jsonl"), "").unwrap();
        let file = dir.path().join("run.toml");
        let check = |extra: &str| {
            std::fs::write(&file, format!("{MINIMAL}{extra}")).unwrap();
            read_config(&file).map_err(|e| e.to_string())
        };
        let c = check("").unwrap();
        assert_eq!(c.model.path, model, "relative to the config file");
        assert_eq!(
            tidy(Path::new("examples/configs/../../runs/x")),
            Path::new("runs/x")
        );
        assert_eq!(tidy(Path::new("../a/./b/..")), Path::new("../a"));
        assert_eq!(tidy(Path::new("a/..")), Path::new("."));
        let e = check("[train]\nepochs = 2\nlr = -1.0\n").unwrap_err();
        assert!(
            e.ends_with("run.toml:8: [train] lr: must be positive, got -1"),
            "{e}"
        );
        let e = check("[train]\nwarmup_steps = 10\nwarmup_ratio = 0.1\n").unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let c = check("[train]\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(c.train.precision, Precision::Bf16);
        let e = check("[train]\nprecision = \"fp8\"\n").unwrap_err();
        assert!(e.contains("[train] precision"), "{e}");
        std::fs::write(&file, MINIMAL.replace("t.jsonl", "missing.jsonl")).unwrap();
        let e = read_config(&file).unwrap_err().to_string();
        assert!(e.contains("[data] train: no file"), "{e}");
    }
}
