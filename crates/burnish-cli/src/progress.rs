//! What the user sees while training: a progress bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use burnish_tasks::RunObserver;
use burnish_trainer::StepReport;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// Progress of a run, written to stderr.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    total: u64,
}

impl Progress {
    /// Plain lines on stderr until [`start`](Self::start); nothing with `quiet`.
    pub fn new(quiet: bool) -> Self {
        Progress {
            bar: None,
            quiet,
            total: 0,
        }
    }

    /// A line above the bar (or on stderr).
    fn print(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if !self.quiet => eprintln!("{text}"),
            None => {}
        }
    }
}

impl RunObserver for Progress {
    /// From now on, a bar over `total` steps when stderr is a terminal.
    fn start(&mut self, total: u64) {
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

    fn line(&mut self, text: &str) {
        self.print(text);
    }

    /// The bar follows the step; the message shows the last loss and lr.
    fn step(&mut self, report: &StepReport) {
        if let Some(bar) = &self.bar {
            bar.set_position(report.step);
            bar.set_message(format!("loss {:.4} lr {:.2e}", report.loss, report.lr));
        }
    }

    /// Prints a `metrics.jsonl` event: every evaluation; training events only without a
    /// bar (the bar shows them).
    fn event(&mut self, event: &Value) {
        let f = |k: &str| event.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        match event.get("event").and_then(Value::as_str) {
            Some("train") if self.bar.is_none() => self.print(&format!(
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
                self.print(&format!(
                    "eval at step {}: {metrics}; train loss {:.4}{best}",
                    event["step"],
                    f("train_loss")
                ));
            }
            _ => {}
        }
    }

    /// Removes the bar; later lines are plain again.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
