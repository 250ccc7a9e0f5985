#![doc = include_str!("../README.md")]

mod adamw;
mod error;
#[cfg(feature = "flex")]
mod fused;
mod groups;
mod lr;
mod state;

pub use adamw::{AdamW, AdamWConfig};
pub use burnish_params::{ParamInfo, named_params};
pub use error::OptimError;
pub use groups::{GroupAssignment, GroupRule, Matcher, ParamGroups};
pub use lr::BurnLrScheduler;
pub use state::{AdamWState, ParamMoments};
