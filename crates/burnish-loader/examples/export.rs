//! Loads a Hugging Face model directory and exports it again; prints the load report and
//! timings. `cargo run --release -p burnish-loader --example export -- SRC [OUT]`
//! (without OUT only loads, which is how peak memory is measured with `/usr/bin/time -v`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn_ndarray::NdArray;
use burnish_loader::{HfModelDir, LoadError, LoadOptions, LoadReport, export_dir};
use burnish_models::ModelConfig;

type B = NdArray;

fn main() -> Result<(), LoadError> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let Some(src) = args.next() else {
        eprintln!("usage: export SRC [OUT]");
        std::process::exit(2);
    };
    let out = args.next();
    let dir = HfModelDir::open(&src)?;
    let device = Default::default();
    let start = Instant::now();
    match dir.config() {
        ModelConfig::Bert(_) => {
            let (model, report) = dir.load_bert::<B>(&device, &LoadOptions::default())?;
            finish(&dir, &model, &report, start, out.as_deref())
        }
        ModelConfig::Deberta(_) => {
            let (model, report) = dir.load_deberta::<B>(&device, &LoadOptions::default())?;
            finish(&dir, &model, &report, start, out.as_deref())
        }
        ModelConfig::ModernBert(_) => {
            let (model, report) = dir.load_modernbert::<B>(&device, &LoadOptions::default())?;
            finish(&dir, &model, &report, start, out.as_deref())
        }
        ModelConfig::Llama(_) => {
            let (model, report) = dir.load_llama::<B>(&device, &LoadOptions::default())?;
            finish(&dir, &model, &report, start, out.as_deref())
        }
    }
}

fn finish<M: Module<B>>(
    dir: &HfModelDir,
    model: &M,
    report: &LoadReport,
    start: Instant,
    out: Option<&Path>,
) -> Result<(), LoadError> {
    println!(
        "loaded {} tensors in {:.2?}; unused: {:?}",
        report.loaded.len(),
        start.elapsed(),
        report.unexpected
    );
    match out {
        Some(out) => export_dir(
            out,
            model,
            dir.naming(),
            dir.config_json(),
            Some(dir.path()),
        ),
        None => Ok(()),
    }
}
