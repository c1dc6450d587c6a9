//! The CUDA backend's entry point. The `cuda` feature is declared so that callers can select the
//! backend today; its NVRTC kernels are not part of this build yet, so opening it returns a typed
//! error (never a panic), and the wgpu backend (Vulkan on NVIDIA) serves NVIDIA GPUs meanwhile.

use crate::error::Error;

#[cfg(not(feature = "cuda"))]
pub(crate) fn open_cuda_device() -> Error {
    Error::CudaNotCompiled
}

#[cfg(feature = "cuda")]
pub(crate) fn open_cuda_device() -> Error {
    Error::CudaUnavailable(
        "this build declares the cuda feature, but the NVRTC kernels are not implemented yet; \
         use the Vulkan backend on NVIDIA GPUs"
            .into(),
    )
}
