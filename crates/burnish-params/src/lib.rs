#![doc = include_str!("../README.md")]

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::Backend};

/// Module types whose parameters are normalization weights.
const NORM_TYPES: [&str; 4] = ["LayerNorm", "RmsNorm", "GroupNorm", "BatchNorm"];

/// A float parameter as seen during a walk: its path, owner and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Dotted module path, e.g. `encoder.layers.3.attention.query.weight`.
    pub path: String,
    /// Name of the struct that directly holds the parameter, e.g. `LayerNorm` or `Linear`.
    pub owner: String,
    /// Shape of the parameter.
    pub shape: Vec<usize>,
}

impl ParamInfo {
    /// Whether the direct owner is a normalization layer (`LayerNorm`, `RmsNorm`, ...).
    pub fn in_norm_module(&self) -> bool {
        NORM_TYPES.contains(&self.owner.as_str())
    }

    /// The last path component (`weight`, `bias`, `gamma`, ...).
    pub fn leaf(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }
}

/// The path being walked; feed it from `enter_module`/`exit_module`.
#[derive(Debug, Default, Clone)]
pub struct PathStack {
    names: Vec<String>,
    owners: Vec<String>,
}

impl PathStack {
    /// An empty path (the module root).
    pub fn new() -> Self {
        Self::default()
    }

    /// Call from `enter_module(name, container_type)`.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        self.names.push(name.to_owned());
        let owner = container_type
            .strip_prefix("Struct:")
            .or_else(|| container_type.strip_prefix("Enum:"))
            .unwrap_or(container_type);
        self.owners.push(owner.to_owned());
    }

    /// Call from `exit_module`.
    pub fn exit(&mut self) {
        self.names.pop();
        self.owners.pop();
    }

    /// The current dotted path.
    pub fn path(&self) -> String {
        self.names.join(".")
    }

    /// The current parameter, given its shape.
    pub fn info(&self, shape: Vec<usize>) -> ParamInfo {
        ParamInfo {
            path: self.path(),
            owner: self.owners.last().cloned().unwrap_or_default(),
            shape,
        }
    }
}

struct Collector {
    stack: PathStack,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // `lazy_shape` does not materialize a lazily initialized parameter.
        self.out.push(self.stack.info(param.lazy_shape().to_vec()));
    }
}

/// Every float parameter of a module with its dotted path, in visiting order.
pub fn named_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut collector = Collector {
        stack: PathStack::new(),
        out: Vec::new(),
    };
    module.visit(&mut collector);
    collector.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
    use burn_ndarray::NdArray;

    #[derive(Module, Debug)]
    struct Block<B: Backend> {
        proj: Linear<B>,
        norm: LayerNorm<B>,
    }

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        layers: Vec<Block<B>>,
        head: Option<Linear<B>>,
    }

    #[test]
    fn paths_owners_and_shapes() {
        let d = Default::default();
        let block = || Block::<NdArray> {
            proj: LinearConfig::new(2, 3).init(&d),
            norm: LayerNormConfig::new(3).init(&d),
        };
        let net = Net {
            layers: vec![block(), block()],
            head: Some(LinearConfig::new(3, 1).with_bias(false).init(&d)),
        };
        let params = named_params(&net);
        let paths: Vec<&str> = params.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "layers.0.proj.weight",
                "layers.0.proj.bias",
                "layers.0.norm.gamma",
                "layers.0.norm.beta",
                "layers.1.proj.weight",
                "layers.1.proj.bias",
                "layers.1.norm.gamma",
                "layers.1.norm.beta",
                "head.weight",
            ]
        );
        assert_eq!(params[2].owner, "LayerNorm");
        assert!(params[2].in_norm_module());
        assert!(!params[0].in_norm_module());
        assert_eq!(params[0].shape, [2, 3]);
        assert_eq!(params[2].leaf(), "gamma");
    }
}
