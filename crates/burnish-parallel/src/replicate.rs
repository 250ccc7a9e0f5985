//! Model copies for the other devices of a node.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

/// Copies of `model`, one on each of `devices`, equal to it bit for bit.
///
/// burn initializes a parameter lazily, and a clone of a parameter that was never read
/// draws its own values: a new head cloned before its first use would differ on every
/// worker. Every parameter of `model` is read first, so the copies share its values.
/// (`fork` keeps autodiff's gradient tracking.)
pub fn replicate<B: Backend, M: Module<B>>(model: &M, devices: &[B::Device]) -> Vec<M> {
    model.visit(&mut Materialize);
    devices
        .iter()
        .map(|device| model.clone().fork(device))
        .collect()
}

struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        let _ = param.val();
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
        let _ = param.val();
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn_ndarray::NdArray;

    use super::*;

    #[test]
    fn copies_of_a_lazy_module_hold_its_values() {
        let device = Default::default();
        let model: Linear<NdArray> = LinearConfig::new(3, 2).init(&device);
        let copies = replicate(&model, &[device, device]);
        let weight = model.weight.val().into_data();
        for copy in copies {
            assert_eq!(copy.weight.val().into_data(), weight);
        }
    }
}
