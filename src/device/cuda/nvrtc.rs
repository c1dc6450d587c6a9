//! NVRTC: CUDA source to cubin for one exact architecture, with ptxas's register, shared-memory and
//! spill report per kernel. Needs neither a GPU nor a driver, only the NVRTC library (the PyPI wheel
//! `nvidia-cuda-nvrtc`, found through `SCALEWISE_NVRTC_DIR` or the loader's search path).

use std::ffi::CString;
use std::sync::OnceLock;

use cudarc::nvrtc::{result as nvrtc, sys};

use crate::error::{Error, Result};

/// NVRTC 13's library, and the start of its builtins' name (13.0 ships `libnvrtc-builtins.so.13.0`
/// and `nvrtc-builtins64_130.dll`, 13.1 `...13.1` and `..._131.dll`), as this platform names them.
#[cfg(unix)]
const NVRTC_FILES: (&str, &str) = ("libnvrtc.so.13", "libnvrtc-builtins.so.13");
#[cfg(windows)]
const NVRTC_FILES: (&str, &str) = ("nvrtc64_130_0.dll", "nvrtc-builtins64_13");

/// Loads the NVRTC library once. `SCALEWISE_NVRTC_DIR` names the folder with the library and its
/// builtins (the wheel's `nvidia/cu13/lib` on Linux, which has no RUNPATH): both are opened by
/// absolute path first, the builtins whatever their minor version, so that cudarc's own lookup by
/// name finds them loaded. Every cudarc call panics without the library, so this check comes before
/// any of them.
pub(super) fn available() -> std::result::Result<(), String> {
    static STATE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("SCALEWISE_NVRTC_DIR").filter(|d| !d.is_empty()) {
                let dir = std::path::PathBuf::from(dir);
                let (library, builtins) = NVRTC_FILES;
                // The builtins first: the library loads them by name when it starts.
                let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
                    .map_err(|e| format!("SCALEWISE_NVRTC_DIR: cannot list {}: {e}", dir.display()))?
                    .flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(builtins)))
                    .map(|e| e.path())
                    .collect();
                found.sort();
                for path in found.iter().rev().take(1).chain([&dir.join(library)]) {
                    let lib = open_for_later_lookups(path)
                        .map_err(|e| format!("SCALEWISE_NVRTC_DIR: cannot load {}: {e}", path.display()))?;
                    std::mem::forget(lib);
                }
            }
            // SAFETY: only tries to open the library by its candidate names.
            if unsafe { sys::is_culib_present() } {
                Ok(())
            } else {
                Err(format!(
                    "the NVRTC library ({}) was not found: install the CUDA toolkit or `pip install --target DIR \
                     nvidia-cuda-nvrtc` and set SCALEWISE_NVRTC_DIR to the wheel's folder holding it \
                     (DIR/nvidia/cu13/lib on Linux)",
                    NVRTC_FILES.0
                ))
            }
        })
        .clone()
}

/// Opens the library at `path` so that later loads by its name (cudarc's, NVRTC's own of its
/// builtins) get this copy: RTLD_GLOBAL on Unix; Windows matches a loaded module by its name.
fn open_for_later_lookups(path: &std::path::Path) -> std::result::Result<libloading::Library, libloading::Error> {
    // SAFETY: NVIDIA's library; its initialisers have no preconditions.
    #[cfg(unix)]
    let lib = unsafe {
        libloading::os::unix::Library::open(
            Some(path),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
        .map(libloading::Library::from)
    };
    // SAFETY: as above.
    #[cfg(not(unix))]
    let lib = unsafe { libloading::Library::new(path) };
    lib
}

/// NVRTC's version, e.g. (13, 0).
pub fn version() -> Result<(i32, i32)> {
    available().map_err(Error::CudaUnavailable)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded (checked above); the two out-pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::CudaUnavailable(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// One compiled module.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// NVRTC's log (ptxas's per-kernel report among it).
    pub log: String,
}

/// The options every module is compiled with, for architecture `sm_XY` (e.g. 90).
pub(super) fn options(arch: u32) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".into(),
        "--fmad=true".into(),
        "--ptxas-options=-v".into(),
    ]
}

/// Compiles `source` (named `label` in errors) to a cubin for `sm_{arch}`.
pub fn compile(source: &str, label: &str, arch: u32) -> Result<Compiled> {
    available().map_err(Error::CudaUnavailable)?;
    let fail = |log: String| Error::CudaCompile { kernel: label.into(), log };
    let src = CString::new(source).map_err(|_| fail("the source contains a NUL byte".into()))?;
    let name = CString::new(format!("{label}.cu")).map_err(|_| fail("bad name".into()))?;
    let program = nvrtc::create_program(&src, Some(&name)).map_err(|e| fail(format!("nvrtcCreateProgram: {e:?}")))?;
    // SAFETY: `program` was created above and is destroyed once, at the end.
    let outcome = unsafe {
        let compiled = nvrtc::compile_program(program, &options(arch));
        let log = nvrtc::get_program_log(program)
            .map(|chars| {
                let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        match compiled {
            Err(e) => Err(fail(format!("{e:?}\n{log}"))),
            Ok(()) => {
                let mut size = 0usize;
                let cubin = sys::nvrtcGetCUBINSize(program, &mut size).result().and_then(|()| {
                    let mut cubin = vec![0u8; size];
                    sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()).result().map(|()| cubin)
                });
                cubin.map(|cubin| Compiled { cubin, log }).map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}")))
            }
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { nvrtc::destroy_program(program) };
    outcome
}

/// ptxas's report of one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// Parses ptxas's `-v` lines from an NVRTC log:
/// `Function properties for NAME` / `N bytes stack frame, N bytes spill stores, N bytes spill loads`
/// / `Used N registers, ... N bytes smem`.
pub fn kernel_reports(log: &str) -> Vec<KernelReport> {
    let number_before = |line: &str, unit: &str| -> u32 {
        line.find(unit).and_then(|end| line[..end].split_whitespace().last()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let mut reports: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            reports.push(KernelReport { name: rest.trim().to_owned(), ..Default::default() });
        } else if let Some(report) = reports.last_mut() {
            if line.contains("stack frame") {
                report.stack_bytes = number_before(line, "bytes stack frame");
                report.spill_stores = number_before(line, "bytes spill stores");
                report.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                report.registers = number_before(line, "registers");
                report.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    reports
}
