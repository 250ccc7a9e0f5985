#![doc = include_str!("../README.md")]

pub use burnish_amp as amp;
pub use burnish_checkpoint as checkpoint;
pub use burnish_data as data;
pub use burnish_grad as grad;
pub use burnish_heads as heads;
pub use burnish_loader as loader;
pub use burnish_models as models;
pub use burnish_optim as optim;
pub use burnish_parallel as parallel;
pub use burnish_params as params;
pub use burnish_schedule as schedule;
pub use burnish_tasks as tasks;
pub use burnish_trainer as trainer;

/// Backends: every burnish library is generic over `B: Backend`; these are the concrete
/// ones a program picks from.
pub mod backend {
    pub use burn::backend::Autodiff;

    /// The CPU reference backend (burn-ndarray, f32), the one the tests run on.
    #[cfg(feature = "ndarray")]
    pub type Cpu = burn_ndarray::NdArray<f32>;

    /// [`Cpu`] with automatic differentiation, for training.
    #[cfg(feature = "ndarray")]
    pub type CpuTrain = Autodiff<Cpu>;

    /// burn-flex (f32 compute, f16/bf16 supported), a pure-Rust CPU backend.
    #[cfg(feature = "flex")]
    pub type Flex = burn_flex::Flex<f32, i32>;

    /// [`Flex`] with automatic differentiation, for training.
    #[cfg(feature = "flex")]
    pub type FlexTrain = Autodiff<Flex>;

    /// [`FlexTrain`] with activation checkpointing: memory-bound operations are recomputed
    /// in the backward pass instead of kept.
    #[cfg(feature = "flex")]
    pub type FlexTrainCheckpointed = Autodiff<Flex, BalancedCheckpointing>;

    /// burn's activation-checkpointing strategy (recompute memory-bound operations).
    pub use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;

    /// The CUDA backend (burn-cuda, f32); needs the CUDA driver at run time only.
    #[cfg(feature = "cuda")]
    pub type Cuda = burn_cuda::Cuda<f32, i32>;

    /// [`Cuda`] with automatic differentiation, for training.
    #[cfg(feature = "cuda")]
    pub type CudaTrain = Autodiff<Cuda>;

    /// [`CudaTrain`] with activation checkpointing.
    #[cfg(feature = "cuda")]
    pub type CudaTrainCheckpointed = Autodiff<Cuda, BalancedCheckpointing>;

    /// A CUDA device by index (`CudaDevice::new(0)`).
    #[cfg(feature = "cuda")]
    pub use burn_cuda::CudaDevice;

    /// burn-wgpu (f32, i32 integers): burn's CubeCL + fusion stack over the system's
    /// Vulkan/Metal/DX12 driver; Mesa's lavapipe runs it on the CPU.
    #[cfg(feature = "wgpu")]
    pub type Wgpu = burn_wgpu::Wgpu<f32, i32>;

    /// [`Wgpu`] with automatic differentiation, for training.
    #[cfg(feature = "wgpu")]
    pub type WgpuTrain = Autodiff<Wgpu>;

    /// [`WgpuTrain`] with activation checkpointing.
    #[cfg(feature = "wgpu")]
    pub type WgpuTrainCheckpointed = Autodiff<Wgpu, BalancedCheckpointing>;

    /// A wgpu device (`WgpuDevice::DefaultDevice`: the first adapter the driver offers).
    #[cfg(feature = "wgpu")]
    pub use burn_wgpu::WgpuDevice;

    /// A GPU device that cannot be used, named as on the command line (`cuda:1`, `wgpu`),
    /// with the backend's reason and what usually fixes it.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("{device}: {reason}")]
    pub struct DeviceError {
        /// The device (`cuda:0`, `wgpu`).
        pub device: String,
        /// Why it cannot be used.
        pub reason: String,
    }

    /// The CUDA devices with these indices, each [`probe`]d, so a missing driver or GPU is
    /// an error here rather than a panic in the first training step.
    ///
    /// # Errors
    /// [`DeviceError`] naming the first device that does not answer.
    #[cfg(feature = "cuda")]
    pub fn cuda_devices(
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<CudaDevice>, DeviceError> {
        indices
            .into_iter()
            .map(|index| {
                let device = CudaDevice::new(index);
                probe::<Cuda>(&device).map_err(|reason| DeviceError {
                    device: format!("cuda:{index}"),
                    reason: format!(
                        "the CUDA device cannot be used (is the NVIDIA driver installed, and \
                         is there a GPU {index}?): {reason}"
                    ),
                })?;
                Ok(device)
            })
            .collect()
    }

    /// burn-wgpu's default adapter, [`probe`]d.
    ///
    /// # Errors
    /// [`DeviceError`] when no adapter answers (no Vulkan, Metal or DX12 driver).
    #[cfg(feature = "wgpu")]
    pub fn wgpu_device() -> Result<WgpuDevice, DeviceError> {
        let device = WgpuDevice::DefaultDevice;
        probe::<Wgpu>(&device).map_err(|reason| DeviceError {
            device: "wgpu".into(),
            reason: format!(
                "no usable wgpu adapter (is a Vulkan driver installed? Mesa's lavapipe, \
                 package mesa-vulkan-drivers, runs on the CPU): {reason}"
            ),
        })?;
        Ok(device)
    }

    /// Runs one tiny operation on `device`: `Err(reason)` instead of the panic burn raises
    /// when a GPU backend has no driver or no such device.
    ///
    /// ```
    /// # #[cfg(feature = "ndarray")]
    /// assert!(burnish::backend::probe::<burnish::backend::Cpu>(&Default::default()).is_ok());
    /// ```
    ///
    /// # Errors
    /// The panic's message.
    pub fn probe<B: burn::tensor::backend::Backend>(device: &B::Device) -> Result<(), String> {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            burn::tensor::Tensor::<B, 1>::ones([1], device)
                .sum()
                .into_scalar()
        }));
        std::panic::set_hook(quiet);
        outcome.map(|_| ()).map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error")
                .to_owned()
        })
    }
}
