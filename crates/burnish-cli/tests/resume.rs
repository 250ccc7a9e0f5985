//! Checkpoints and resume, proven on real processes: a run resumed after a stop is
//! byte-identical to an uninterrupted one, and so is a run SIGKILLed at random moments
//! (many during saves) and resumed each time. Accumulation, clipping, warmup, dropout,
//! shuffling, evaluation and early-stopping state are all in play.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/assets")
}

/// The toy sentiment run with checkpoints every 2 steps, accumulation 2, early stopping.
fn config(dir: &Path) -> PathBuf {
    config_with(dir, "")
}

/// [`config`] with more `[train]` lines.
fn config_with(dir: &Path, train: &str) -> PathBuf {
    let text = std::fs::read_to_string(assets().join("configs/toy-sentiment.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{}/", assets().display()))
        .replace(
            "log_every = 4",
            &format!("log_every = 1\nsave_every = 2\nkeep_last = 2\ngrad_accum = 2\nearly_stopping_patience = 20\n{train}"),
        );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn burnish(config: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burnish"));
    c.args([
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

fn losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["event"], e["step"], e["loss"], e["metrics"]
            )
        })
        .collect()
}

/// Runs `command` and fails the test with its stderr if it fails.
fn succeed(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The run in `out` ended with the reference's weights, byte for byte, and its log.
fn assert_same_run(out: &Path, model: &[u8], log: &[String]) {
    assert_eq!(
        std::fs::read(out.join("final/model.safetensors")).unwrap(),
        model
    );
    assert_eq!(losses(out), log);
}

/// The uninterrupted run: final weights, log, time to its first step, total time.
fn reference(dir: &Path, config: &Path) -> (Vec<u8>, Vec<String>, Duration, Duration) {
    let out = dir.join("straight");
    let start = Instant::now();
    let mut child = burnish(config, &out, &[]).spawn().unwrap();
    let log = out.join("metrics.jsonl");
    let mut first_step = None;
    let status = loop {
        if first_step.is_none() && std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            first_step = Some(start.elapsed());
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(status.success());
    let model = std::fs::read(out.join("final/model.safetensors")).unwrap();
    let took = start.elapsed();
    (model, losses(&out), first_step.unwrap_or(took), took)
}

#[test]
fn a_stopped_run_resumes_byte_identical_and_changed_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (model, log, _, _) = reference(dir.path(), &config);
    let out = dir.path().join("stopped");
    // --resume with no checkpoint yet starts from the beginning.
    let first = burnish(
        &config,
        &out,
        &["--resume", "--stop-after", "13", "--quiet"],
    )
    .output()
    .unwrap();
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stderr).is_empty(), "quiet");
    assert!(out.join("checkpoint-12").is_dir());
    succeed(&mut burnish(&config, &out, &["--resume"]));
    assert_same_run(&out, &model, &log);

    // A changed batch size would not reproduce the run: refused, naming the key.
    let changed = dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("batch_size = 16", "batch_size = 8"),
    )
    .unwrap();
    let refused = burnish(&changed, &out, &["--resume", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("[train] batch_size: 16 in the checkpoint, 8 now"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let forced = burnish(&changed, &out, &["--resume", "--force"])
        .status()
        .unwrap();
    assert!(forced.success());

    // An explicit checkpoint directory that is damaged is refused, naming the file.
    let ckpt = out.join("checkpoint-32");
    let weights = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let damaged = burnish(
        &config,
        &out,
        &["--quiet", "--resume", ckpt.to_str().unwrap()],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    assert_eq!(damaged.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("checkpoint-32/model.safetensors") && stderr.contains("SHA-256"),
        "{stderr}"
    );
}

#[test]
fn an_fp16_run_resumes_byte_identical_with_its_loss_scaler() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "precision = \"fp16\"");
    let (model, log, _, _) = reference(dir.path(), &config);
    let straight = std::fs::read_to_string(dir.path().join("straight/metrics.jsonl")).unwrap();
    assert!(straight.contains("\"loss_scale\""), "fp16 logs its scale");
    let out = dir.path().join("stopped");
    let first = burnish(&config, &out, &["--stop-after", "13", "--quiet"])
        .output()
        .unwrap();
    assert!(first.status.success());
    let state = std::fs::read_to_string(out.join("checkpoint-12/trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(state["scaler"]["scale"].as_f64().unwrap() > 0.0, "{state}");
    succeed(&mut burnish(&config, &out, &["--resume"]));
    assert_same_run(&out, &model, &log);
}

#[test]
fn gradient_checkpointing_changes_memory_not_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (model, log, _, _) = reference(dir.path(), &config(dir.path()));
    let out = dir.path().join("checkpointed");
    let config = config_with(dir.path(), "gradient_checkpointing = true");
    succeed(&mut burnish(&config, &out, &["--quiet"]));
    assert_same_run(&out, &model, &log);
}

#[test]
fn sigkill_at_random_moments_then_resume_is_byte_identical() {
    let kills: usize = std::env::var("BURNISH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (model, log, startup, took) = reference(dir.path(), &config);
    let out = dir.path().join("killed");
    // Each kill lands after the start-up, at a moment drawn so that the kills together
    // cover about two runs' worth of training (seeded, so a failure can be replayed); each
    // run restarts from its last checkpoint.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let training = took.saturating_sub(startup).as_micros() as u64;
    let window = (2 * training / kills as u64).max(1000);
    let (mut killed, mut partials, mut laps) = (0, 0, 0);
    let check = |out: &Path| assert_same_run(out, &model, &log);
    while killed < kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = startup + Duration::from_micros(seed % window);
        let mut child = burnish(&config, &out, &["--resume"]).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap();
            killed += 1;
        }
        let output = child.wait_with_output().unwrap();
        partials += usize::from(String::from_utf8_lossy(&output.stderr).contains("partial"));
        if finished {
            // The interrupted run made it to the end: check it and start another lap.
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            check(&out);
            laps += 1;
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    let last = burnish(&config, &out, &["--resume"]).output().unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    partials += usize::from(String::from_utf8_lossy(&last.stderr).contains("partial"));
    check(&out);
    eprintln!(
        "{killed} SIGKILLs over {} complete runs (uninterrupted: start-up {startup:?}, total {took:?}); {partials} left a partial checkpoint behind",
        laps + 1
    );
}
