//! AdamW for full-parameter fine-tuning on burn, exactly as `torch.optim.AdamW` computes it,
//! with transformers' weight-decay groups chosen by parameter name.
//!
//! - [`AdamW`]: the optimizer, generic over `B: AutodiffBackend`, state keyed by parameter
//!   path so that it survives a process restart ([`AdamWState`], saved as safetensors).
//! - [`ParamGroups`]: ordered [`GroupRule`]s giving parameters their weight decay and lr
//!   multiplier; the default is the Hugging Face Trainer's no-decay rule for biases and
//!   normalization weights. [`AdamW::assignments`] lists who is in which group.
//! - [`named_params`]: the dotted path of every parameter of a module (from
//!   `burnish-params`).
//! - [`BurnLrScheduler`]: a `burnish-schedule` schedule as burn's `LrScheduler`.

mod adamw;
mod error;
mod groups;
mod lr;
mod state;

pub use adamw::{AdamW, AdamWConfig};
pub use burnish_params::{ParamInfo, named_params};
pub use error::OptimError;
pub use groups::{GroupAssignment, GroupRule, Matcher, ParamGroups};
pub use lr::BurnLrScheduler;
pub use state::{AdamWState, ParamMoments};
