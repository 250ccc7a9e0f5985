#![doc = include_str!("../README.md")]

mod collective;
mod launch;
mod link;
mod replicate;
mod topology;

pub use collective::{CollectiveSync, reset_local_group};
pub use launch::{Abort, run_workers};
pub use replicate::replicate;
pub use topology::{DEFAULT_TIMEOUT, Topology, shard_range};

/// Errors of burnish-parallel's setup (the run's own failures are [`SyncError`]s).
///
/// [`SyncError`]: burnish_grad::SyncError
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParallelError {
    /// A setting is unusable; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The setting.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}
