//! What the user sees while training: a progress bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// Progress of a run, written to stderr.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    total: u64,
}

impl Progress {
    /// Plain lines on stderr until [`start`](Self::start); nothing with `quiet`.
    pub(crate) fn new(quiet: bool) -> Self {
        Progress {
            bar: None,
            quiet,
            total: 0,
        }
    }

    /// From now on, a bar over `total` steps when stderr is a terminal.
    pub(crate) fn start(&mut self, total: u64) {
        self.total = total;
        self.bar = (!self.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise}<{eta_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
    }

    /// A line above the bar (or on stderr).
    pub(crate) fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if !self.quiet => eprintln!("{text}"),
            None => {}
        }
    }

    /// The bar follows the step; the message shows the last loss and lr.
    pub(crate) fn step(&self, step: u64, loss: f64, lr: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        }
    }

    /// Prints a `metrics.jsonl` event: every evaluation; training events only without a
    /// bar (the bar shows them).
    pub(crate) fn event(&self, event: &Value) {
        let f = |k: &str| event.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        match event.get("event").and_then(Value::as_str) {
            Some("train") if self.bar.is_none() => self.line(&format!(
                "step {}/{} epoch {} loss {:.4} lr {:.3e} grad_norm {:.3} {:.1} items/s",
                event["step"],
                self.total,
                event["epoch"],
                f("loss"),
                f("lr"),
                f("grad_norm"),
                f("items_per_second")
            )),
            Some("eval") => {
                let metrics = event["metrics"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(f64::NAN)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let best = if event["is_best"] == true {
                    " (best)"
                } else {
                    ""
                };
                self.line(&format!(
                    "eval at step {}: {metrics}; train loss {:.4}{best}",
                    event["step"],
                    f("train_loss")
                ));
            }
            _ => {}
        }
    }

    /// Removes the bar; later lines are plain again.
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
