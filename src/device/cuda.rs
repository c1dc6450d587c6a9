//! The CUDA backend's place behind the seam. Without the `cuda` feature, opening it answers "not
//! compiled with CUDA support". With the feature, the NVRTC kernels are not written yet (issue 14),
//! so opening answers "CUDA unavailable"; [`CudaDevice`] and [`CudaBuffer`] already take their place
//! in `Backend` and `Storage`, so every match on the backend is compiled (`cargo clippy --features
//! cuda` in CI) and the backend lands by filling them in, not by threading a new type through.

#[cfg(not(feature = "cuda"))]
pub(super) fn open(_options: &super::DeviceOptions) -> crate::error::Result<super::Backend> {
    Err(crate::error::Error::CudaNotCompiled)
}

#[cfg(feature = "cuda")]
pub(super) use enabled::*;

#[cfg(feature = "cuda")]
mod enabled {
    use super::super::{
        Backend, BackendDevice, DeviceInfo, DeviceOptions, DispatchTiming, Launch, PoolStats, Readback, Storage,
    };
    use crate::dtype::DType;
    use crate::error::{Error, Result};
    use crate::kernels::Family;

    /// A CUDA context with its module cache; no value exists until the NVRTC kernels land.
    pub(crate) enum CudaDevice {}

    /// Device memory owned by a CUDA context; no value exists until the backend lands.
    pub(crate) enum CudaBuffer {}

    pub(in crate::device) fn open(_options: &DeviceOptions) -> Result<Backend> {
        Err(Error::CudaUnavailable(
            "this build has the cuda feature, but the NVRTC kernels are not implemented yet; use the Vulkan \
             backend on NVIDIA GPUs"
                .into(),
        ))
    }

    impl BackendDevice for CudaDevice {
        fn info(&self) -> &DeviceInfo {
            match *self {}
        }
        fn alloc(&self, _bytes: u64, _what: &str) -> Result<Storage> {
            match *self {}
        }
        fn write(&self, _dst: &Storage, _bytes: &[u8]) -> Result<()> {
            match *self {}
        }
        fn zero(&self, _dst: &Storage, _bytes: u64) -> Result<()> {
            match *self {}
        }
        fn read(&self, _src: &Storage, _bytes: u64) -> Result<Readback> {
            match *self {}
        }
        fn supports(&self, _family: Family, _dtype: DType) -> bool {
            match *self {}
        }
        fn launch(&self, _launch: &Launch) -> Result<()> {
            match *self {}
        }
        fn flush(&self) -> Result<()> {
            match *self {}
        }
        fn synchronize(&self) -> Result<()> {
            match *self {}
        }
        fn pool_stats(&self) -> PoolStats {
            match *self {}
        }
        fn launch_stats(&self) -> crate::device::LaunchStats {
            match *self {}
        }
        fn trim_pool(&self) {
            match *self {}
        }
        fn start_profiling(&self) -> Result<()> {
            match *self {}
        }
        fn profiled_dispatches(&self) -> Result<usize> {
            match *self {}
        }
        fn finish_profiling(&self) -> Result<Vec<DispatchTiming>> {
            match *self {}
        }
    }
}
