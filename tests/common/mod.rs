//! Shared test support: the backend configurations every op test runs on ([`backend_tests!`]),
//! reported skips ([`skip`]), seeded random inputs ([`Rng`]), and the
//! |got - want| <= atol + rtol * |want| comparison against float64 references.
//!
//! Random inputs come from a fixed default seed (a constant mixed with a hash of the name the test
//! gives [`Seeded::for_test`]), so every run draws the same inputs and different tests draw different ones.
//! Each test prints `{name}: SCALEWISE_TEST_SEED=N` (shown by `cargo test` when it fails, or always
//! with `-- --nocapture`); setting SCALEWISE_TEST_SEED=N replays that test's inputs, or explores new
//! ones.
#![allow(dead_code)]

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;

use scalewise::{BackendChoice, DType, Device, DeviceOptions};

/// The configurations an op test runs on; the names end each generated test's path
/// (`matmul_matches_reference::wgpu_portable`) and are passed to its body for assertion messages.
pub const WGPU_FULL: &str = "wgpu_full";
pub const WGPU_PORTABLE: &str = "wgpu_portable";
pub const WGPU_GL: &str = "wgpu_gl";
pub const CUDA: &str = "cuda";
pub const CUDA_CPU: &str = "cuda_cpu";

/// One test per backend configuration for each function listed:
///
/// ```ignore
/// backend_tests! {
///     fn matmul_matches_reference(device: &Device, config: &str) { ... }
/// }
/// ```
///
/// keeps the function as written and adds `mod matmul_matches_reference` with five tests:
///
/// - `wgpu_full`: the wgpu adapter with every optional feature it has ([`full_device`]);
/// - `wgpu_portable`: the same adapter with f16, subgroups and timestamps off ([`portable_device`]);
/// - `wgpu_gl`: wgpu's OpenGL backend ([`gl_device`]): the kernels as naga writes them in GLSL and a
///   GL driver compiles them (Mesa's llvmpipe here), what machines without Vulkan, Metal or DX12 run
///   (virtual machines with GL-only graphics, old GPUs). Where no GL adapter opens it is a [`skip`],
///   except under `SCALEWISE_TEST_GL=require` (scripts/test sets it on Linux CI), where it fails.
/// - `cuda`: the CUDA backend ([`cuda_device`]). Without the `cuda` cargo feature there is nothing to
///   run, and the test is `#[ignore]`d with that reason, so libtest lists it as ignored rather than
///   passed. With the feature, a CUDA device that cannot be opened (no driver or GPU, or, until the
///   NVRTC kernels land, always) is a [`skip`]: the test prints `SKIP <test>: <error>` past the
///   output capture and returns. libtest has no runtime skip, so it still counts as passed; the
///   SKIP line is what says it did not run.
/// - `cuda_cpu`: the same CUDA sources compiled for the CPU by the host C++ compiler and run one
///   fiber per thread ([`cuda_cpu_device`]), so the CUDA kernels are checked on machines without a
///   GPU. Ignored without the `cuda` feature; with it, a missing C++ compiler fails the test.
///
/// A failure names its configuration twice: in the test's path, and in the messages the body
/// builds from `config`. Devices are opened once per test binary and shared by its tests.
#[macro_export]
macro_rules! backend_tests {
    ($(
        $(#[$meta:meta])*
        fn $name:ident($device:ident: $device_ty:ty, $config:ident: $config_ty:ty) $body:block
    )*) => {$(
        $(#[$meta])*
        fn $name($device: $device_ty, $config: $config_ty) $body

        mod $name {
            #[test]
            fn wgpu_full() {
                super::$name($crate::common::full_device(), $crate::common::WGPU_FULL)
            }

            #[test]
            fn wgpu_portable() {
                super::$name($crate::common::portable_device(), $crate::common::WGPU_PORTABLE)
            }

            #[test]
            fn wgpu_gl() {
                match $crate::common::gl_device() {
                    Ok(device) => super::$name(device, $crate::common::WGPU_GL),
                    Err(reason) => $crate::common::skip(concat!(module_path!(), "::wgpu_gl"), reason),
                }
            }

            #[test]
            #[cfg_attr(not(feature = "cuda"), ignore = "scalewise built without the cuda feature")]
            fn cuda() {
                match $crate::common::cuda_device() {
                    Ok(device) => super::$name(device, $crate::common::CUDA),
                    Err(reason) => $crate::common::skip(concat!(module_path!(), "::cuda"), reason),
                }
            }

            #[test]
            #[cfg_attr(not(feature = "cuda"), ignore = "scalewise built without the cuda feature")]
            fn cuda_cpu() {
                super::$name($crate::common::cuda_cpu_device(), $crate::common::CUDA_CPU)
            }
        }
    )*};
}

/// The environment's device options (WGPU_BACKEND, WGPU_ADAPTER_NAME, SCALEWISE_DISABLE) on a wgpu
/// backend, with outputs NaN-poisoned at allocation.
pub fn wgpu_options() -> DeviceOptions {
    let mut options =
        DeviceOptions { poison_allocations: true, ..DeviceOptions::from_env().expect("valid environment") };
    if matches!(options.backend, BackendChoice::Cuda | BackendChoice::CudaCpu) {
        options.backend = BackendChoice::Auto;
    }
    options
}

/// The wgpu adapter with every optional feature it has, and the matrix units' emulation where it has
/// none (`wgpu_full`). A machine without one fails
/// here: the suite needs a wgpu adapter, software Vulkan at least.
pub fn full_device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        // The cooperative matmul runs on the adapter's matrix units, or else on their emulation, so
        // that its tiling is checked everywhere (Auto never picks the emulation).
        let options = DeviceOptions { emulate_matrix_units: true, ..wgpu_options() };
        Device::new(&options).expect("a GPU adapter (install mesa-vulkan-drivers for software Vulkan)")
    })
}

/// The same adapter with f16, subgroups and timestamps switched off: the portable path
/// (`wgpu_portable`). Its staged attention scores split their keys in two as on a GPU, where
/// `wgpu_full` (on a CPU adapter) keeps them whole.
pub fn portable_device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let options = DeviceOptions {
            allow_f16: false,
            allow_subgroups: false,
            allow_timestamps: false,
            staged_key_slices_on_cpu: true,
            ..wgpu_options()
        };
        Device::new(&options).expect("a portable device")
    })
}

/// wgpu's GL backend with every optional feature it has (`wgpu_gl`), or why it cannot be opened here;
/// its staged attention scores split their keys as on a GPU (as `wgpu_portable`'s).
/// Under `SCALEWISE_TEST_GL=require` a GL adapter must open: the test fails instead of skipping.
pub fn gl_device() -> Result<&'static Device, &'static str> {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    let device = DEVICE
        .get_or_init(|| {
            let options =
                DeviceOptions { backend: BackendChoice::Gl, staged_key_slices_on_cpu: true, ..wgpu_options() };
            Device::new(&options).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(String::as_str);
    if let Err(reason) = device
        && std::env::var("SCALEWISE_TEST_GL").is_ok_and(|v| v == "require")
    {
        panic!("SCALEWISE_TEST_GL=require, but no GL adapter opened: {reason}");
    }
    device
}

/// The CUDA device, or why it cannot be opened here (the typed error, as text).
pub fn cuda_device() -> Result<&'static Device, &'static str> {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let options = DeviceOptions {
                backend: BackendChoice::Cuda,
                poison_allocations: true,
                ..DeviceOptions::from_env().expect("valid environment")
            };
            Device::new(&options).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The CUDA kernels on the CPU shim (`cuda_cpu`). It needs only a C++ compiler, which every machine
/// that builds scalewise has, so failing to open it fails the test instead of skipping it.
pub fn cuda_cpu_device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let options = DeviceOptions {
            backend: BackendChoice::CudaCpu,
            poison_allocations: true,
            ..DeviceOptions::from_env().expect("valid environment")
        };
        Device::new(&options).expect("the CUDA CPU shim (needs g++ or $CXX)")
    })
}

/// Reports that `test`, or the part of it named there, did not run here, and why. The line goes
/// straight to the process's stderr, past libtest's output capture, so `cargo test` shows it even
/// though the test passes (libtest has no runtime skip).
pub fn skip(test: &str, reason: impl Display) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// The dtypes a device supports.
pub fn dtypes(device: &Device) -> Vec<DType> {
    if device.caps().f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

/// The default seed's constant part; [`Seeded::for_test`] mixes in a hash of the test's name.
pub const DEFAULT_SEED: u64 = 0x5CA1_E5EED;

pub use scalewise_support::Rng;

/// The tests' seeding of the one generator (`scalewise_support::Rng`): a fixed default seed per test
/// name, or SCALEWISE_TEST_SEED when set; the seed is printed so a failure can be replayed.
pub trait Seeded {
    fn for_test(test: &str) -> Self;

    /// The stream of one configuration of a [`backend_tests!`] test (`{test}::{config}`): each
    /// configuration draws its own inputs, as the device loops did.
    fn for_config(test: &str, config: &str) -> Self;
}

impl Seeded for Rng {
    fn for_test(test: &str) -> Self {
        let seed = match std::env::var("SCALEWISE_TEST_SEED") {
            Ok(s) if !s.trim().is_empty() => {
                s.trim().parse().unwrap_or_else(|_| panic!("SCALEWISE_TEST_SEED={s:?} is not an unsigned integer"))
            }
            _ => DEFAULT_SEED ^ fnv1a(test),
        };
        eprintln!("{test}: SCALEWISE_TEST_SEED={seed}");
        Rng::new(seed)
    }

    fn for_config(test: &str, config: &str) -> Self {
        Self::for_test(&format!("{test}::{config}"))
    }
}

/// FNV-1a: a stable hash of a test's name (std's hashers may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

/// Uploads `data` as `dtype`, panicking with a clear message if the device refuses.
pub fn upload(device: &Device, shape: &[usize], data: &[f32], dtype: DType) -> scalewise::Tensor {
    scalewise::Tensor::from_f32(device, shape, data, dtype).expect("upload")
}

/// Tolerance for a result stored as `dtype`.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

impl Tol {
    /// f32 near 1e-5 relative; f16 storage near 1e-3 (one f16 rounding of the output is 4.9e-4).
    pub fn for_dtype(dtype: DType, magnitude: f64) -> Self {
        match dtype {
            DType::F16 => Tol { atol: 1e-3 * magnitude, rtol: 2e-3 },
            _ => Tol { atol: 1e-5 * magnitude, rtol: 1e-5 },
        }
    }
}

/// Fails on NaN (a poisoned element never written) and on values outside tolerance.
pub fn assert_close(got: &[f32], want: &[f64], tol: Tol, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} should be NaN, got {g}");
            continue;
        }
        assert!(g.is_finite(), "{what}: element {i} is {g} (want {w}): unwritten or overflowed");
        let err = (g as f64 - w).abs();
        let excess = err - (tol.atol + tol.rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} got {} want {} (|err| {:.3e}, {tol:?})",
            got[i],
            want[i],
            (got[i] as f64 - want[i]).abs()
        );
    }
}

/// (B, D, L) channels-major host data as (B, L, D).
pub fn to_tokens_major(x: &[f32], batch: usize, d: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for c in 0..d {
            for t in 0..l {
                out[(b * l + t) * d + c] = x[(b * d + c) * l + t];
            }
        }
    }
    out
}

pub fn from_tokens_major(x: &[f32], batch: usize, d: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for c in 0..d {
            for t in 0..l {
                out[(b * d + c) * l + t] = x[(b * l + t) * d + c];
            }
        }
    }
    out
}

/// Asserts that `err` is one `Error::Weights` listing exactly these missing, unexpected and
/// mis-shaped keys (name, expected shape, found shape), and that its message names every key and
/// both shapes of each mis-shaped one. Returns the message for further checks.
pub fn assert_weights_error(
    err: scalewise::Error,
    missing: &[&str],
    unexpected: &[&str],
    misshaped: &[(&str, &[usize], &[usize])],
) -> String {
    let text = err.to_string();
    let scalewise::Error::Weights {
        missing: got_missing, unexpected: got_unexpected, misshaped: got_misshaped, ..
    } = err
    else {
        panic!("not a Weights error: {text}")
    };
    assert_eq!(got_missing, missing, "{text}");
    assert_eq!(got_unexpected, unexpected, "{text}");
    let want: Vec<(String, Vec<usize>, Vec<usize>)> =
        misshaped.iter().map(|(k, want, got)| (k.to_string(), want.to_vec(), got.to_vec())).collect();
    assert_eq!(got_misshaped, want, "{text}");
    let shapes = misshaped.iter().flat_map(|(_, want, got)| [format!("{want:?}"), format!("{got:?}")]);
    for needle in missing
        .iter()
        .chain(unexpected)
        .map(|k| k.to_string())
        .chain(misshaped.iter().map(|m| m.0.to_string()))
        .chain(shapes)
    {
        assert!(text.contains(&needle), "{text} should mention {needle}");
    }
    text
}
