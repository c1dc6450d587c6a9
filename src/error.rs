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

    /// A CUDA kernel module (family and variant) that NVRTC or the CPU shim's compiler refused, with
    /// the compiler's log.
    #[error("CUDA kernel {kernel} failed to compile:\n{log}")]
    CudaCompile { kernel: String, log: String },

    /// An error the CUDA driver returned while scalewise was doing `what`.
    #[cfg(feature = "cuda")]
    #[error("CUDA error while {what}: {source}")]
    Cuda {
        what: String,
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// A CUDA allocation beyond the device's free memory.
    #[error("the CUDA device is out of memory while {what}: {bytes} bytes asked, {free} bytes free")]
    CudaOutOfMemory { what: String, bytes: u64, free: u64 },

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

    /// Weights holding NaN or infinities (refused unless the state_dict allows them:
    /// [`crate::weights::LoadOptions::allow_non_finite`], the CLI's `--allow-non-finite`).
    #[error(
        "weights under {prefix:?} hold non-finite values (NaN or infinity), which would make every image the \
         same or black:{} (--allow-non-finite / LoadOptions::allow_non_finite loads them anyway)",
        describe_non_finite(tensors)
    )]
    NonFiniteWeights {
        prefix: String,
        /// (key, non-finite values, values)
        tensors: Vec<(String, usize, usize)>,
    },

    /// A weights file that cannot be read: missing, truncated, corrupt, or not a format scalewise reads.
    /// `path` is `<memory>` for the `StateDict::from_*_bytes` constructors.
    #[error("weights file {}: {reason}", shown_path(path))]
    WeightsFile { path: std::path::PathBuf, reason: String },

    /// A tensor whose element type scalewise does not convert (complex, float8, quantized, ...).
    #[error(
        "weights file {}: tensor {key:?} has dtype {dtype}; scalewise loads F32, F16, BF16 and F64 tensors \
         (as f32) and skips integer and bool buffers",
        shown_path(path)
    )]
    WeightsDType { path: std::path::PathBuf, key: String, dtype: String },

    /// Writing an output file failed; nothing partial is left under `path`.
    #[error("cannot write {}: {reason}", shown_path(path))]
    Output { path: std::path::PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A u32 view of a count, or a typed error when a shape outgrows the kernels' 32-bit indexing.
pub(crate) fn index_u32(op: &'static str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| Error::InvalidArgument { op, msg: format!("{what} = {value} exceeds the 32-bit index range") })
}

/// How many names an error lists before it only counts the rest: a hostile file may hold 100k keys.
const LISTED: usize = 12;

/// `names` joined with ", ", at most [`LISTED`] of them, each [`shown`], then how many were left out.
fn listed<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    let mut text: Vec<String> = names.take(LISTED).map(|n| shown(n).into_owned()).collect();
    if total > LISTED {
        text.push(format!("and {} more", total - LISTED));
    }
    text.join(", ")
}

/// The detail of an [`Error::Weights`]: the missing, unexpected and mis-shaped keys (the first few of
/// each, and counts).
fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    misshaped: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut text = String::new();
    if !missing.is_empty() {
        text.push_str(&format!(" missing {}.", listed(missing.iter().map(String::as_str))));
    }
    if !unexpected.is_empty() {
        text.push_str(&format!(" unexpected {}.", listed(unexpected.iter().map(String::as_str))));
    }
    for (key, want, got) in misshaped.iter().take(LISTED) {
        text.push_str(&format!(" {} has shape {got:?}, expected {want:?}.", shown(key)));
    }
    if misshaped.len() > LISTED {
        text.push_str(&format!(" {} more keys have the wrong shape.", misshaped.len() - LISTED));
    }
    text
}

fn describe_non_finite(tensors: &[(String, usize, usize)]) -> String {
    let mut text: Vec<String> =
        tensors.iter().take(LISTED).map(|(key, bad, all)| format!(" {} ({bad} of {all} values)", shown(key))).collect();
    if tensors.len() > LISTED {
        text.push(format!(" and {} more tensors", tensors.len() - LISTED));
    }
    text.join(",")
}

/// A name read from a file (a key, a class name, metadata), made safe to print: control characters
/// and other invisible code points are escaped (no terminal escape sequences or line breaks reach the
/// terminal), and very long names are cut.
pub fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    escaped(name, 160)
}

/// A path made safe to print in a message, as [`shown`] does for names: a file name may hold line
/// breaks and terminal escapes as well as a key can. Paths are cut later than names (4096 bytes,
/// Linux's PATH_MAX), since the whole path is what the user needs to find the file; bytes that are
/// not UTF-8 show as U+FFFD.
pub fn shown_path(path: &std::path::Path) -> String {
    escaped(&path.to_string_lossy(), 4096).into_owned()
}

/// `text` with control characters and invisible code points escaped, cut after `longest` bytes.
fn escaped(text: &str, longest: usize) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| {
        !c.is_control()
            && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if text.len() <= longest && text.chars().all(plain) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= longest {
            out.push_str(&format!("... ({} bytes in all)", text.len()));
            break;
        }
        if plain(c) { out.push(c) } else { out.extend(c.escape_unicode()) }
    }
    std::borrow::Cow::Owned(out)
}
