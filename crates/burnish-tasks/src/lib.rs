#![doc = include_str!("../README.md")]

mod batch;
pub mod bench;
mod config;
mod data;
mod error;
mod eval;
mod infer;
mod load;
mod model;
mod qa;
mod resume;
mod run;
mod setup;

pub use batch::DeviceBatch;
pub use config::{
    DataSection, DeviceName, DistributedSection, ModelSection, RunConfig, Schedule, TrainSection,
};
pub use data::CacheData;
pub use error::TaskError;
pub use eval::{
    ClassificationMetrics, LanguageModelMetrics, Metrics, MultiLabelMetrics, RegressionMetrics,
    TaggingMetrics, evaluate, generate_rows, metric_names, metrics_for, predict,
};
pub use infer::{EvalOptions, evaluate_dir, predict_dir};
pub use load::{
    HeadReport, HeadSpec, UseModel, UseTrainModel, encoder_config, load_causal, load_pretrained,
    with_model, with_train_model,
};
pub use model::{TaskModel, with_precision};
pub use qa::{Answer, QaMetrics, QaOptions, QaPostProcessor};
pub use resume::{Checkpointer, Resumed, RunFingerprint, RunState, new_run_id};
pub use run::{
    FREE_KEYS, RUN_OUTPUTS, Resume, RunObserver, RunOptions, RunOutcome, Silent, export, fine_tune,
    fine_tune_on, format_metrics,
};
pub use setup::{TaskSetup, label_names, labels_of, problem_of, task_of};
