#![doc = include_str!("../README.md")]

mod bench;
mod config;
mod error;
mod plot;
mod progress;

pub use bench::BenchArgs;
pub use config::{field_error, parse_config, read_config};
pub use error::CliError;
pub use plot::{Curves, plot_run};
pub use progress::Progress;
