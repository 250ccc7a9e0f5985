//! Loss curves of a run: `metrics.jsonl` (and `results.json` for the metrics before
//! training) drawn as `curves.svg` and `curves.png`: train and validation loss over the
//! steps on the left, the validation metric on the right.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::CliError;

/// The bundled font (DejaVu Sans Mono, Bitstream Vera licence, see `assets/`): text needs
/// glyph metrics and a fresh machine may have no fonts installed.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1280, 480);

/// The curves of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// `(step, loss)` of each logged training event.
    pub train_loss: Vec<(f64, f64)>,
    /// `(step, eval_loss)` of each evaluation (step 0: before training).
    pub eval_loss: Vec<(f64, f64)>,
    /// The validation metric's name and `(step, value)` points.
    pub metric: Option<(String, Vec<(f64, f64)>)>,
}

impl Curves {
    /// Reads `metrics.jsonl` of the run directory `dir`, and `results.json` when present
    /// (the metrics before training, and which metric picked the best model).
    ///
    /// # Errors
    /// [`CliError::Usage`] when `metrics.jsonl` is missing, malformed or has no training
    /// event.
    pub fn read(dir: &Path) -> Result<Self, CliError> {
        let log = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&log).map_err(|e| {
            CliError::Usage(format!("{}: {e} (not a run directory?)", log.display()))
        })?;
        let results: Value = std::fs::read_to_string(dir.join("results.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let after_step = results["steps"].as_f64();
        let name = results["metric_for_best"]
            .as_str()
            .filter(|m| *m != "eval_loss")
            .map(str::to_owned);
        let mut curves = Curves::default();
        let mut metric = Vec::new();
        let add_eval = |curves: &mut Curves, metric: &mut Vec<_>, step: f64, metrics: &Value| {
            if let Some(p) = point(step, metrics["eval_loss"].as_f64()) {
                curves.eval_loss.push(p);
            }
            if let Some(p) = point(step, name.as_deref().and_then(|n| metrics[n].as_f64())) {
                metric.push(p);
            }
        };
        add_eval(&mut curves, &mut metric, 0.0, &results["validation_before"]);
        let mut train_loss = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let event: Value = serde_json::from_str(line)
                .map_err(|e| CliError::Usage(format!("{}:{}: {e}", log.display(), i + 1)))?;
            let Some(step) = event["step"].as_f64() else {
                continue;
            };
            match event["event"].as_str() {
                Some("train") => {
                    if let Some(p) = point(step, event["loss"].as_f64()) {
                        train_loss.push(p);
                    }
                }
                Some("eval") => add_eval(&mut curves, &mut metric, step, &event["metrics"]),
                _ => {}
            }
        }
        // The metrics after training, at the last step, unless an evaluation ran there.
        if let Some(step) = after_step
            && curves.eval_loss.last().is_none_or(|p| p.0 < step)
        {
            add_eval(&mut curves, &mut metric, step, &results["validation_after"]);
        }
        if train_loss.is_empty() {
            return Err(CliError::Usage(format!(
                "{}: no training event to plot",
                log.display()
            )));
        }
        curves.train_loss = train_loss;
        curves.metric = name.filter(|_| !metric.is_empty()).map(|n| (n, metric));
        Ok(curves)
    }
}

/// Draws the curves of the run in `dir` into `dir/curves.svg` and `dir/curves.png` and
/// returns the two paths.
///
/// # Errors
/// [`CliError::Usage`] for a directory without a usable `metrics.jsonl`;
/// [`CliError::Plot`] when a picture cannot be drawn or written.
pub fn plot_run(dir: &Path) -> Result<[PathBuf; 2], CliError> {
    let curves = Curves::read(dir)?;
    let svg = dir.join("curves.svg");
    let png = dir.join("curves.png");
    // Both backends lay text out with the registered font.
    register_font();
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), &curves)
        .map_err(|e| CliError::Plot(format!("{}: {e}", svg.display())))?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), &curves)
        .map_err(|e| CliError::Plot(format!("{}: {e}", png.display())))?;
    Ok([svg, png])
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is known to parse; a failure would only lose the labels.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// A point that can be drawn: a diverged loss (NaN, infinite, or beyond any useful
/// axis, such as 1e308) is left out rather than stretching the axes past f64.
fn point(step: f64, value: Option<f64>) -> Option<(f64, f64)> {
    const LIMIT: f64 = 1e12;
    value
        .filter(|v| v.abs() <= LIMIT && step.abs() <= LIMIT)
        .map(|v| (step, v))
}

/// `lo..hi` around the values, with a margin, never empty.
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// The running mean of each point with up to `n − 1` points before it.
fn smooth(points: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let window = &points[i.saturating_sub(n - 1)..=i];
            (
                x,
                window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64,
            )
        })
        .collect()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Curves) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let last_step = c
        .train_loss
        .iter()
        .chain(&c.eval_loss)
        .map(|p| p.0)
        .fold(1.0, f64::max);
    draw_losses(&left, c, last_step)?;
    if let Some((name, points)) = &c.metric {
        draw_metric(&right, name, points, last_step)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The left panel: train and validation loss.
fn draw_losses<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &Curves,
    last_step: f64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let losses = range(c.train_loss.iter().chain(&c.eval_loss).map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption("loss", (FAMILY, 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..last_step, losses)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("loss")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(err)?;
    // Logged losses are single steps: drawn faint, with a running mean over 5 on top.
    chart
        .draw_series(LineSeries::new(c.train_loss.iter().copied(), BLUE.mix(0.3)))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            smooth(&c.train_loss, 5),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?
        .label("train (mean of 5 logs)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if !c.eval_loss.is_empty() {
        chart
            .draw_series(LineSeries::new(
                c.eval_loss.iter().copied(),
                RED.stroke_width(2),
            ))
            .map_err(err)?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .draw_series(c.eval_loss.iter().map(|&p| Circle::new(p, 4, RED.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// The right panel: the validation metric that picks the best model.
fn draw_metric<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    points: &[(f64, f64)],
    last_step: f64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let values = range(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("validation {name}"), (FAMILY, 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..last_step, values)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(name)
        .label_style((FAMILY, 14))
        .draw()
        .map_err(err)?;
    let green = RGBColor(0, 140, 70);
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            green.stroke_width(2),
        ))
        .map_err(err)?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 4, green.filled())))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_log_and_draws_both_pictures() {
        let dir = tempfile::tempdir().unwrap();
        let log = [
            r#"{"event":"train","step":1,"loss":0.7}"#,
            r#"{"event":"train","step":2,"loss":0.5}"#,
            r#"{"event":"eval","step":2,"metrics":{"accuracy":0.75,"eval_loss":0.55}}"#,
            r#"{"event":"train","step":3,"loss":0.3}"#,
        ]
        .join("\n");
        std::fs::write(dir.path().join("metrics.jsonl"), log).unwrap();
        std::fs::write(
            dir.path().join("results.json"),
            r#"{"metric_for_best":"accuracy","steps":4,"validation_before":{"accuracy":0.5,"eval_loss":0.69},
                "validation_after":{"accuracy":0.8,"eval_loss":0.4}}"#,
        )
        .unwrap();
        let curves = Curves::read(dir.path()).unwrap();
        assert_eq!(curves.train_loss, vec![(1.0, 0.7), (2.0, 0.5), (3.0, 0.3)]);
        assert_eq!(curves.eval_loss, vec![(0.0, 0.69), (2.0, 0.55), (4.0, 0.4)]);
        assert_eq!(
            curves.metric,
            Some((
                "accuracy".to_owned(),
                vec![(0.0, 0.5), (2.0, 0.75), (4.0, 0.8)]
            ))
        );
        assert_eq!(
            smooth(&curves.train_loss, 2),
            vec![(1.0, 0.7), (2.0, 0.6), (3.0, 0.4)]
        );
        let [svg, png] = plot_run(dir.path()).unwrap();
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("validation accuracy"));
        let png = std::fs::read(png).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn a_directory_without_a_log_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = plot_run(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("metrics.jsonl") && e.contains("not a run directory"),
            "{e}"
        );
    }
}
