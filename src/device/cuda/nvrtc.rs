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

/// Whether `bytes` is a whole 64-bit little-endian ELF image, as NVRTC's cubins are: the header,
/// the program and section header tables and every section's data lie within it. The driver's
/// loader takes no length (it reads the image's extent from its header), so a cached cubin cut
/// short by a crash or a full disk must be caught before it is handed over.
pub fn cubin_is_whole(bytes: &[u8]) -> bool {
    const HEADER: usize = 64;
    if bytes.len() < HEADER || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as u64;
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |at: u64| {
        let at = usize::try_from(at).ok()?;
        bytes.get(at..at.checked_add(8)?).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let within = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|end| end <= bytes.len() as u64);
    let (Some(ph_offset), Some(sh_offset)) = (u64_at(0x20), u64_at(0x28)) else { return false };
    let (ph_size, ph_count) = (u16_at(0x36), u16_at(0x38));
    let (sh_size, sh_count) = (u16_at(0x3a), u16_at(0x3c));
    if !within(ph_offset, ph_size * ph_count) || !within(sh_offset, sh_size * sh_count) {
        return false;
    }
    // A section's data (NOBITS sections, type 8, have none in the file).
    const NOBITS: u32 = 8;
    (0..sh_count).all(|i| {
        let header = sh_offset + i * sh_size;
        let Ok(at) = usize::try_from(header) else { return false };
        match (u32_at(at + 4), u64_at(header + 0x18), u64_at(header + 0x20)) {
            (Some(NOBITS), Some(_), Some(_)) => true,
            (Some(_), Some(offset), Some(len)) => within(offset, len),
            _ => false,
        }
    })
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

#[cfg(test)]
mod tests {
    use super::cubin_is_whole;

    /// A minimal ELF64 image: the header, 16 bytes of section data, then two section headers (the
    /// null one and one PROGBITS section over the data).
    fn image() -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes.extend_from_slice(&[0xab; 16]);
        let sh_offset = bytes.len() as u64;
        bytes[0x28..0x30].copy_from_slice(&sh_offset.to_le_bytes());
        bytes[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        bytes[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        let mut section = [0u8; 64];
        section[4..8].copy_from_slice(&1u32.to_le_bytes());
        section[0x18..0x20].copy_from_slice(&64u64.to_le_bytes());
        section[0x20..0x28].copy_from_slice(&16u64.to_le_bytes());
        bytes.extend_from_slice(&section);
        bytes
    }

    #[test]
    fn whole_images_pass_and_cut_or_damaged_ones_do_not() {
        let whole = image();
        assert!(cubin_is_whole(&whole));
        for len in [0, 3, 63, 64, 79, 80, whole.len() - 1] {
            assert!(!cubin_is_whole(&whole[..len]), "cut to {len} bytes");
        }
        // A section whose data runs past the end, or whose offset wraps.
        let mut past = whole.clone();
        let size_at = 80 + 64 + 0x20;
        past[size_at..size_at + 8].copy_from_slice(&(whole.len() as u64 - 64 + 1).to_le_bytes());
        assert!(!cubin_is_whole(&past));
        let mut wraps = whole.clone();
        let offset_at = 80 + 64 + 0x18;
        wraps[offset_at..offset_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(!cubin_is_whole(&wraps));
        // NOBITS sections take no room in the file.
        let mut nobits = past.clone();
        nobits[80 + 64 + 4..80 + 64 + 8].copy_from_slice(&8u32.to_le_bytes());
        assert!(cubin_is_whole(&nobits));
        // Not ELF, 32-bit, big-endian.
        for (at, value) in [(0, 0u8), (4, 1), (5, 2)] {
            let mut other = whole.clone();
            other[at] = value;
            assert!(!cubin_is_whole(&other), "byte {at} = {value}");
        }
    }
}
