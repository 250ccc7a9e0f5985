//! Checkpoints and resume, proven on real processes: a run resumed after a stop is
//! byte-identical to an uninterrupted one, and so is a run SIGKILLed at random moments
//! (many during saves) and resumed each time. Accumulation, clipping, warmup, dropout,
//! shuffling, evaluation and early-stopping state are all in play. Data parallel over two
//! processes trains like one worker, and a killed node ends the run, which resumes exactly.
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

/// Safetensors of `path`: every tensor's f32 values, by name.
fn tensors(bytes: &[u8]) -> Vec<(String, Vec<f32>)> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = &bytes[8 + header_len..];
    let mut out: Vec<_> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, info)| {
            let offsets = &info["data_offsets"];
            let (start, end) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
            let values = data[start as usize..end as usize]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name.clone(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Both nodes of a two-process data-parallel run, started together.
fn two_nodes(config: &Path, out: &Path, extra: &[&str]) -> [std::process::Child; 2] {
    ["0", "1"].map(|node| {
        let mut args = vec!["--node-rank", node];
        args.extend_from_slice(extra);
        burnish(config, out, &args).spawn().unwrap()
    })
}

/// Waits for both nodes and fails the test with their stderr unless both succeed.
fn both_succeed(nodes: [std::process::Child; 2]) {
    for node in nodes {
        let output = node.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn two_processes_train_like_one_and_a_killed_node_ends_the_run_which_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // Dropout off: two workers draw other masks than one. 20 epochs of 8 steps.
    let base = std::fs::read_to_string(config(dir.path()))
        .unwrap()
        .replace("dropout = 0.1", "dropout = 0.0");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let distributed = format!(
        "\n[distributed]\ndevices = [\"cpu\", \"cpu\"]\nnodes = 2\ncoordinator = \"127.0.0.1:{port}\"\ntimeout_secs = 60\n"
    );
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    // 10 steps for the comparison (rounding differences grow with the steps, as between
    // any two summation orders), 160 for the kill.
    let short = base.replace("epochs = 4", "max_steps = 10");
    let one = write("one.toml", short.clone());
    let two_short = write("two-short.toml", short + &distributed);
    let two = write(
        "two.toml",
        base.replace("epochs = 4", "epochs = 20") + &distributed,
    );

    // 2 processes × 2 workers against 1 worker.
    succeed(&mut burnish(&one, &dir.path().join("one"), &[]));
    let reference = std::fs::read(dir.path().join("one/final/model.safetensors")).unwrap();
    let parallel = dir.path().join("two-short");
    both_succeed(two_nodes(&two_short, &parallel, &[]));
    let model = std::fs::read(parallel.join("final/model.safetensors")).unwrap();
    // Element-wise |a − b| ≤ 1e-5·|a| + 1e-6, as `torch.testing.assert_close` with rtol
    // 1e-5 and an atol 10× below its float32 default: parameters that start at 0 (biases)
    // have moved by ~lr after 10 steps, and Adam turns the rounding noise of their near-0
    // gradient components into steps of that size, so a bound relative to them alone
    // would measure noise.
    let mut worst = (0.0f32, String::new());
    for ((name, a), (_, b)) in tensors(&reference).iter().zip(tensors(&model)) {
        for (x, y) in a.iter().zip(&b) {
            let excess = (x - y).abs() - 1e-5 * x.abs();
            if excess > worst.0 {
                worst = (excess, name.clone());
            }
        }
    }
    eprintln!(
        "2 processes × 2 workers vs 1, 10 steps: largest |a − b| − 1e-5·|a| = {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 <= 1e-6, "{} is off by {:.2e}", worst.1, worst.0);
    assert_eq!(
        losses(&parallel).len(),
        losses(&dir.path().join("one")).len()
    );

    let straight = dir.path().join("two");
    both_succeed(two_nodes(&two, &straight, &[]));
    let model = std::fs::read(straight.join("final/model.safetensors")).unwrap();
    let log = losses(&straight);

    // Node 1 is killed once a checkpoint exists: node 0 stops with an error naming the
    // broken connection, long before the timeout.
    let out = dir.path().join("killed");
    let [node0, mut node1] = two_nodes(&two, &out, &[]);
    let started = Instant::now();
    while !out.join("checkpoint-6").is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint-6"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    node1.kill().unwrap();
    let killed = Instant::now();
    let output = node0.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "node 0 ended {waited:?} after node 1 was killed: {}",
        stderr.trim()
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connection with node 1 broke"), "{stderr}");
    assert!(waited < Duration::from_secs(30));
    let _ = node1.wait();
    // Both nodes resume from node 0's last checkpoint and end as the uninterrupted run.
    both_succeed(two_nodes(&two, &out, &["--resume"]));
    assert_same_run(&out, &model, &log);
}
