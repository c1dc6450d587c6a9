//! scalewise: a cross-vendor GPU compute backend for next-scale (coarse-to-fine) image generators.
//!
//! Kernels are WGSL compute shaders dispatched through wgpu (Vulkan, Metal, DX12, GL), each with a
//! float64 CPU reference beside its launcher in [`ops`].
//!
//! ```no_run
//! use scalewise::{Device, DeviceOptions, DType, Tensor, ops};
//! let device = Device::new(&DeviceOptions::default())?;
//! let x = Tensor::from_f32(&device, &[2, 3], &[1., 2., 3., 4., 5., 6.], DType::F32)?;
//! let w = Tensor::from_f32(&device, &[4, 3], &[0.5; 12], DType::F32)?; // a PyTorch Linear weight
//! let y = ops::linear(&x, &w, None)?; // x @ w^T: shape [2, 4]
//! println!("{:?}", y.to_vec_f32()?);
//! # Ok::<(), scalewise::Error>(())
//! ```

pub mod bench;
pub mod demo;
pub mod device;
pub mod dtype;
pub mod error;
pub mod generate;
pub mod image;
pub mod kernels;
pub mod labels;
pub mod nn;
pub mod ops;
pub mod output;
pub mod tensor;
pub mod weights;

pub use device::{BackendChoice, Caps, Device, DeviceInfo, DeviceOptions};
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::Tensor;
