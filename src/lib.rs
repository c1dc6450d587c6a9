//! scalewise: a cross-vendor GPU compute backend for next-scale (coarse-to-fine) image generators.
//!
//! Kernels are WGSL compute shaders dispatched through wgpu (Vulkan, Metal, DX12, GL), each with a
//! float64 CPU reference beside its launcher in [`ops`].
//!
//! Data flows one way: weights file -> [`weights`] (host bytes) -> [`nn::Loader`] -> models in [`nn`]
//! -> [`ops`] -> [`device`] -> a backend, and back as token maps and images ([`generate`], [`image`]).
//! [`dtype`] and [`error`] sit below everything. Each op describes its kernel launches as
//! `device::Launch` values against the contract in [`kernels`] (family, params struct, typed
//! constants, block sizes); [`Device`] is the one place that matches on the backend (wgpu now, CUDA
//! behind the `cuda` feature). The CLI, benchmark reports and synthetic checkpoints live in the
//! workspace's `cli/` and `support/` packages, not here.
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

pub use device::{AttentionDesign, BackendChoice, Caps, CudaSummary, Device, DeviceInfo, DeviceOptions, MatrixUnits};
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::Tensor;
