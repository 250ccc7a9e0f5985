//! AdamW with decoupled weight decay, computed as `torch.optim.AdamW` computes it.

use std::collections::{BTreeMap, HashMap};

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
use serde::{Deserialize, Serialize};

use crate::OptimError;
use burnish_params::{ParamInfo, PathStack, named_params};

use crate::groups::{GroupAssignment, ParamGroups};
use crate::state::{AdamWState, ParamMoments};

/// Hyper-parameters of [`AdamW`]; the defaults are `torch.optim.AdamW`'s.
///
/// burn's own `AdamWConfig` defaults to ε = 1e-5 and weight decay 1e-4, which change
/// results visibly; these are torch's 1e-8 and 1e-2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Exponential decay of the first moment (torch's `betas[0]`).
    pub beta1: f64,
    /// Exponential decay of the second moment (torch's `betas[1]`).
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)`.
    pub epsilon: f64,
    /// Decoupled weight decay λ: `θ ← θ·(1 − lr·λ)` before the moment update.
    pub weight_decay: f64,
    /// Use the maximum of past second moments (AMSGrad).
    pub amsgrad: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges torch checks: `0 ≤ β < 1`, `ε ≥ 0`, `λ ≥ 0`, all finite.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] naming the field.
    pub fn validate(&self) -> Result<(), OptimError> {
        let check = |field: &'static str, value: f64, ok: bool| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(OptimError::InvalidHyperParameter { field, value })
            }
        };
        check("beta1", self.beta1, (0.0..1.0).contains(&self.beta1))?;
        check("beta2", self.beta2, (0.0..1.0).contains(&self.beta2))?;
        // ε = 0 divides by zero where a parameter has had no gradient yet.
        check("epsilon", self.epsilon, self.epsilon > 0.0)?;
        check("weight_decay", self.weight_decay, self.weight_decay >= 0.0)
    }
}

pub(crate) type Primitive<B> = burn::tensor::ops::FloatTensor<B>;

/// Moments of one parameter, kept rank-less (as backend primitives) so that parameters of
/// any rank share one map without reshaping: on burn-ndarray a reshape copies.
#[derive(Debug, Clone)]
pub(crate) struct Moments<B: Backend> {
    pub(crate) step: u64,
    pub(crate) exp_avg: Primitive<B>,
    pub(crate) exp_avg_sq: Primitive<B>,
    pub(crate) max_exp_avg_sq: Option<Primitive<B>>,
}

/// The scalars of one parameter's update at its step `t`: the same numbers whether the
/// update is composed of tensor operations or fused.
pub(crate) struct StepScalars {
    /// `1 − lr·λ`, `None` without weight decay (no multiplication at all, as torch).
    pub(crate) decay: Option<f64>,
    /// `1 − β1`, the weight of torch's `lerp_`.
    pub(crate) w1: f64,
    pub(crate) beta2: f64,
    /// `1 − β2`.
    pub(crate) w2: f64,
    /// `√(1 − β2^t)`.
    pub(crate) bias_correction2_sqrt: f64,
    pub(crate) epsilon: f64,
    /// `−lr / (1 − β1^t)`.
    pub(crate) neg_step_size: f64,
    pub(crate) amsgrad: bool,
}

impl StepScalars {
    fn new(config: &AdamWConfig, weight_decay: f64, lr: f64, step: u64) -> Self {
        // Python float arithmetic: `beta ** step` is C pow(), hence powf, not powi.
        let bias_correction1 = 1.0 - config.beta1.powf(step as f64);
        let bias_correction2 = 1.0 - config.beta2.powf(step as f64);
        StepScalars {
            decay: (weight_decay != 0.0).then_some(1.0 - lr * weight_decay),
            w1: 1.0 - config.beta1,
            beta2: config.beta2,
            w2: 1.0 - config.beta2,
            bias_correction2_sqrt: bias_correction2.powf(0.5),
            epsilon: config.epsilon,
            neg_step_size: -(lr / bias_correction1),
            amsgrad: config.amsgrad,
        }
    }
}

fn tensor<B: Backend, const D: usize>(p: Primitive<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> Primitive<B> {
    t.into_primitive().tensor()
}

/// Reads a rank-less primitive back as data of its own shape.
fn to_data<B: Backend>(p: &Primitive<B>) -> TensorData {
    macro_rules! by_rank {
        ($($d:literal),*) => {
            match p.shape().num_dims() {
                $($d => tensor::<B, $d>(p.clone()).into_data(),)*
                _ => unreachable!("parameters of rank > 6 are rejected at the first step"),
            }
        };
    }
    by_rank!(1, 2, 3, 4, 5, 6)
}

/// Uploads data of rank 1 to 6 as a rank-less primitive.
fn from_data<B: Backend>(data: TensorData, device: &B::Device) -> Option<Primitive<B>> {
    macro_rules! by_rank {
        ($($d:literal),*) => {
            match data.shape.num_dims() {
                $($d => Some(primitive(Tensor::<B, $d>::from_data(data, device))),)*
                _ => None,
            }
        };
    }
    by_rank!(1, 2, 3, 4, 5, 6)
}

/// AdamW over every float parameter of a burn module, keyed by parameter path.
///
/// State is keyed by the dotted parameter path (`encoder.layers.0.attention.query.weight`),
/// not by burn's `ParamId`, which is random in each process unless restored: a state saved
/// with [`AdamW::state`] re-attaches to a freshly built or freshly loaded model.
///
/// Each step follows `torch.optim.AdamW` (single-tensor path), with `t` the parameter's own
/// step count and `lr` the group's learning rate:
/// ```text
/// θ ← θ·(1 − lr·λ)
/// m ← m + (1 − β1)·(g − m)
/// v ← β2·v + (1 − β2)·g²
/// θ ← θ − (lr / (1 − β1^t))·m / (sqrt(v) / sqrt(1 − β2^t) + ε)
/// ```
/// Parameters without a gradient in a step are left untouched (no decay either), as torch
/// skips parameters whose `.grad` is `None`.
///
/// ```
/// use burn::backend::Autodiff;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::GradientsParams;
/// use burn::tensor::Tensor;
/// use burn_ndarray::NdArray;
/// use burnish_optim::{AdamW, AdamWConfig, ParamGroups};
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model: Linear<B> = LinearConfig::new(4, 2).init(&device);
/// let mut optim = AdamW::new(AdamWConfig::default(), ParamGroups::default())?;
/// let x = Tensor::<B, 2>::ones([3, 4], &device);
/// let loss = model.forward(x).sum();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let model = optim.step(1e-3, model, grads);
/// assert_eq!(optim.state().params["weight"].step, 1);
/// // The bias sits in transformers' no-decay group.
/// assert_eq!(optim.assignments(&model)["bias"].weight_decay, 0.0);
/// # Ok::<(), burnish_optim::OptimError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AdamW<B: AutodiffBackend> {
    config: AdamWConfig,
    groups: ParamGroups,
    moments: BTreeMap<String, Moments<B::InnerBackend>>,
}

impl<B: AutodiffBackend> AdamW<B> {
    /// A new optimizer with empty state.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] when the config or a group rule is out of
    /// range.
    pub fn new(config: AdamWConfig, groups: ParamGroups) -> Result<Self, OptimError> {
        config.validate()?;
        groups.validate()?;
        Ok(AdamW {
            config,
            groups,
            moments: BTreeMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The parameter-group rules.
    pub fn groups(&self) -> &ParamGroups {
        &self.groups
    }

    /// The group, weight decay and lr scale of every parameter of `module`, by path.
    pub fn assignments<M: AutodiffModule<B>>(
        &self,
        module: &M,
    ) -> BTreeMap<String, GroupAssignment> {
        named_params(module)
            .into_iter()
            .map(|info| {
                let assignment = self.groups.assign(&info, self.config.weight_decay);
                (info.path, assignment)
            })
            .collect()
    }

    /// Checks that every float parameter of `module` can be trained and saved: ranks 1
    /// to 6 (what state files hold). [`step`](Self::step) leaves any other parameter as
    /// it is, so call this once before training (the trainer does).
    ///
    /// # Errors
    /// [`OptimError::Format`] naming the first parameter of another rank.
    pub fn check_module<M: AutodiffModule<B>>(&self, module: &M) -> Result<(), OptimError> {
        match named_params(module)
            .into_iter()
            .find(|info| !(1..=6).contains(&info.shape.len()))
        {
            Some(info) => Err(OptimError::Format {
                detail: format!(
                    "{}: a parameter of rank {}; AdamW trains ranks 1 to 6",
                    info.path,
                    info.shape.len()
                ),
            }),
            None => Ok(()),
        }
    }

    /// Performs one optimizer update with learning rate `lr` (before group scaling) and
    /// returns the updated module. Gradients are those of the *inner* backend, as
    /// `GradientsParams::from_grads` produces them. Parameters of rank above 6 are left
    /// as they are ([`check_module`](Self::check_module) refuses them).
    ///
    /// # Panics
    /// When `lr` is negative or not finite: a schedule never produces one, so this is a
    /// caller bug, not a data condition.
    pub fn step<M: AutodiffModule<B>>(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        assert!(
            lr.is_finite() && lr >= 0.0,
            "AdamW::step: lr must be finite and >= 0, got {lr}"
        );
        let mut mapper = StepMapper {
            optim: self,
            grads,
            lr,
            stack: PathStack::default(),
        };
        module.map(&mut mapper)
    }

    /// Copies the optimizer state out: moments and step count of every parameter that has
    /// been updated at least once, by path.
    pub fn state(&self) -> AdamWState {
        let params = self
            .moments
            .iter()
            .map(|(path, m)| {
                let moments = ParamMoments {
                    step: m.step,
                    exp_avg: to_data::<B::InnerBackend>(&m.exp_avg),
                    exp_avg_sq: to_data::<B::InnerBackend>(&m.exp_avg_sq),
                    max_exp_avg_sq: m.max_exp_avg_sq.as_ref().map(to_data::<B::InnerBackend>),
                };
                (path.clone(), moments)
            })
            .collect();
        AdamWState { params }
    }

    /// Restores a state saved by [`AdamW::state`], checked against `module`: every saved
    /// path must name a parameter of the module with the same shape. Parameters with no
    /// saved state (a new head, say) start fresh, as torch's would.
    ///
    /// # Errors
    /// [`OptimError::UnknownParameter`], [`OptimError::ShapeMismatch`], or
    /// [`OptimError::AmsgradMismatch`] when the state lacks (or has) AMSGrad maxima the
    /// config does not expect.
    pub fn load_state<M: AutodiffModule<B>>(
        &mut self,
        state: AdamWState,
        module: &M,
    ) -> Result<(), OptimError> {
        let infos: HashMap<String, ParamInfo> = named_params(module)
            .into_iter()
            .map(|info| (info.path.clone(), info))
            .collect();
        let device = module.devices().into_iter().next().unwrap_or_default();
        let mut moments = BTreeMap::new();
        for (path, saved) in state.params {
            let info = infos
                .get(&path)
                .ok_or_else(|| OptimError::UnknownParameter { path: path.clone() })?;
            for (what, data) in [
                ("exp_avg", Some(&saved.exp_avg)),
                ("exp_avg_sq", Some(&saved.exp_avg_sq)),
                ("max_exp_avg_sq", saved.max_exp_avg_sq.as_ref()),
            ] {
                if let Some(data) = data
                    && data.shape.as_slice() != info.shape.as_slice()
                {
                    return Err(OptimError::ShapeMismatch {
                        path: format!("{path}.{what}"),
                        expected: info.shape.clone(),
                        found: data.shape.to_vec(),
                    });
                }
            }
            if saved.max_exp_avg_sq.is_some() != self.config.amsgrad {
                return Err(OptimError::AmsgradMismatch {
                    path,
                    amsgrad: self.config.amsgrad,
                });
            }
            let upload = |data: TensorData| {
                from_data::<B::InnerBackend>(data, &device).ok_or_else(|| OptimError::Format {
                    detail: format!("{path}: parameters of rank > 6 are not supported"),
                })
            };
            let restored = Moments {
                step: saved.step,
                exp_avg: upload(saved.exp_avg)?,
                exp_avg_sq: upload(saved.exp_avg_sq)?,
                max_exp_avg_sq: saved.max_exp_avg_sq.map(upload).transpose()?,
            };
            moments.insert(path, restored);
        }
        self.moments = moments;
        Ok(())
    }

    /// One AdamW update of a parameter: fused into one pass on burn-flex (feature `flex`),
    /// composed of tensor operations elsewhere, with the same float32 results.
    fn update<const D: usize>(
        &mut self,
        path: String,
        group: &GroupAssignment,
        lr: f64,
        param: Tensor<B::InnerBackend, D>,
        grad: Tensor<B::InnerBackend, D>,
    ) -> Tensor<B::InnerBackend, D> {
        let lr = lr * group.lr_scale;
        let moments = self.moments.remove(&path);
        let step = moments.as_ref().map_or(0, |m| m.step) + 1;
        let scalars = StepScalars::new(&self.config, group.weight_decay, lr, step);
        let args = (primitive(param), primitive(grad), moments);
        #[cfg(feature = "flex")]
        let args = match crate::fused::step(args, step, &scalars) {
            Ok((param, moments)) => {
                self.moments.insert(path, moments);
                return tensor(param);
            }
            Err(args) => args,
        };
        let (param, moments) = composed::<B::InnerBackend, D>(args, step, &scalars);
        self.moments.insert(path, moments);
        tensor(param)
    }
}

/// [`AdamW::update`] as tensor operations, following torch's single-tensor AdamW.
fn composed<B: Backend, const D: usize>(
    (param, grad, moments): (Primitive<B>, Primitive<B>, Option<Moments<B>>),
    step: u64,
    s: &StepScalars,
) -> (Primitive<B>, Moments<B>) {
    let (param, grad) = (tensor::<B, D>(param), tensor::<B, D>(grad));
    let (exp_avg, exp_avg_sq, max_exp_avg_sq) = match moments {
        Some(m) => (
            tensor(m.exp_avg),
            tensor(m.exp_avg_sq),
            m.max_exp_avg_sq.map(tensor),
        ),
        None => (
            grad.zeros_like(),
            grad.zeros_like(),
            s.amsgrad.then(|| grad.zeros_like()),
        ),
    };
    let param = match s.decay {
        Some(decay) => param.mul_scalar(decay),
        None => param,
    };
    // torch: exp_avg.lerp_(grad, 1 − β1), i.e. m + w·(g − m) for w < 0.5.
    let exp_avg = exp_avg
        .clone()
        .add(grad.clone().sub(exp_avg).mul_scalar(s.w1));
    // torch: exp_avg_sq.mul_(β2).addcmul_(g, g, value = 1 − β2).
    let exp_avg_sq = exp_avg_sq
        .mul_scalar(s.beta2)
        .add(grad.clone().mul_scalar(s.w2).mul(grad));
    let max_exp_avg_sq = max_exp_avg_sq.map(|max| max.max_pair(exp_avg_sq.clone()));
    let second = max_exp_avg_sq.as_ref().unwrap_or(&exp_avg_sq).clone();
    let denom = second
        .sqrt()
        .div_scalar(s.bias_correction2_sqrt)
        .add_scalar(s.epsilon);
    // torch: param.addcdiv_(exp_avg, denom, value = −step_size).
    let param = param.add(exp_avg.clone().mul_scalar(s.neg_step_size).div(denom));
    let moments = Moments {
        step,
        exp_avg: primitive(exp_avg),
        exp_avg_sq: primitive(exp_avg_sq),
        max_exp_avg_sq: max_exp_avg_sq.map(primitive),
    };
    (primitive(param), moments)
}

struct StepMapper<'a, B: AutodiffBackend> {
    optim: &'a mut AdamW<B>,
    grads: GradientsParams,
    lr: f64,
    stack: PathStack,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims = tensor.dims();
        if D > 6 {
            // State files hold ranks 1-6 only; leave such a parameter untouched rather than
            // train it with state that could not be saved.
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let info = self.stack.info(dims.to_vec());
        let group = self
            .optim
            .groups
            .assign(&info, self.optim.config.weight_decay);
        let require_grad = tensor.is_require_grad();
        let updated = self
            .optim
            .update(info.path, &group, self.lr, tensor.inner(), grad);
        let mut tensor = Tensor::from_inner(updated);
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}
