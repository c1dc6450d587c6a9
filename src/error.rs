//! Typed errors of the library. Everything a user controls (shapes, files, options, the machine's GPU)
//! surfaces here as a value, never as a panic.

use crate::dtype::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no usable GPU adapter{filter}. Adapters seen: {found}. Install a GPU driver with Vulkan, Metal or DX12 \
         support, or software Vulkan (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)"
    )]
    NoAdapter { filter: String, found: String },

    #[error("could not open a device on adapter {adapter}: {reason}")]
    RequestDevice { adapter: String, reason: String },

    #[error("scalewise was not compiled with CUDA support: rebuild with `--features cuda`")]
    CudaNotCompiled,

    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),

    #[error("{op}: shape mismatch between {lhs:?} and {rhs:?}: {detail}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize>, detail: String },

    #[error("{op}: dtype mismatch: {lhs} vs {rhs}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },

    #[error("{op}: unsupported dtype {dtype} (expected {expected})")]
    UnsupportedDType { op: &'static str, dtype: DType, expected: &'static str },

    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    #[error("{what} needs {bytes} bytes, above this adapter's {limit_name} of {limit} bytes")]
    TooLarge { what: String, bytes: u64, limit: u64, limit_name: &'static str },

    #[error("{what} needs the GPU feature {feature}, which this adapter or device does not offer")]
    MissingFeature { what: String, feature: &'static str },

    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    #[error("the GPU is out of memory while {what}: {source}")]
    OutOfMemory {
        what: String,
        #[source]
        source: wgpu::Error,
    },

    #[error("shader {shader} failed to compile: {source}")]
    Shader {
        shader: String,
        #[source]
        source: wgpu::Error,
    },

    /// An error wgpu reported (validation, internal) while scalewise was doing `what`.
    #[error("GPU error while {what}: {source}")]
    Wgpu {
        what: String,
        #[source]
        source: wgpu::Error,
    },

    #[error("GPU error while {what}: {msg}")]
    Gpu { what: String, msg: String },

    /// The backend has no kernel for this family and storage type.
    #[error("the {backend} backend does not run {family} kernels on {dtype} storage")]
    Unsupported { family: &'static str, dtype: DType, backend: String },

    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),

    #[error("weights under {prefix:?} do not match the model:{}", describe_mismatch(missing, unexpected, misshaped))]
    Weights {
        prefix: String,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// (key, expected shape, shape found)
        misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    },

    /// A weights file that cannot be read: missing, truncated, corrupt, or not a format scalewise reads.
    /// `path` is `<memory>` for the `StateDict::from_*_bytes` constructors.
    #[error("weights file {}: {reason}", path.display())]
    WeightsFile { path: std::path::PathBuf, reason: String },

    /// A tensor whose element type scalewise does not convert (complex, float8, quantized, ...).
    #[error(
        "weights file {}: tensor {key:?} has dtype {dtype}; scalewise loads F32, F16, BF16 and F64 tensors \
         (as f32) and skips integer and bool buffers",
        path.display()
    )]
    WeightsDType { path: std::path::PathBuf, key: String, dtype: String },

    /// Writing an output file failed; nothing partial is left under `path`.
    #[error("cannot write {}: {reason}", path.display())]
    Output { path: std::path::PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A u32 view of a count, or a typed error when a shape outgrows the kernels' 32-bit indexing.
pub(crate) fn index_u32(op: &'static str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| Error::InvalidArgument { op, msg: format!("{what} = {value} exceeds the 32-bit index range") })
}

/// The detail of an [`Error::Weights`]: every missing, unexpected and mis-shaped key.
fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    misshaped: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut text = String::new();
    if !missing.is_empty() {
        text.push_str(&format!(" missing {}.", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        text.push_str(&format!(" unexpected {}.", unexpected.join(", ")));
    }
    for (key, want, got) in misshaped {
        text.push_str(&format!(" {key} has shape {got:?}, expected {want:?}."));
    }
    text
}
