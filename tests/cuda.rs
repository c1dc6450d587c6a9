//! The CUDA backend without a GPU: every family's kernels compiled to cubin for sm_80 (A100) and
//! sm_90 (H100/H200) by NVRTC, with ptxas's report checked for spills and budgets; the typed errors
//! of a machine without CUDA and of a kernel that does not compile. (Execution is checked by the
//! `cuda_cpu` configuration of every op test, on the CPU shim.)
//!
//! NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc`, which scripts/test installs into
//! `.deps/nvrtc` (never committed); SCALEWISE_NVRTC_DIR may point elsewhere. Without it the compile
//! test reports a SKIP, except under CI=true, where it fails.
#![cfg(feature = "cuda")]

use std::path::PathBuf;

use scalewise::device::cuda_compile::{compile_all, cubin_is_whole, kernel_reports};
use scalewise::kernels::Family;
use scalewise::{BackendChoice, Device, DeviceOptions, Error};

/// Points SCALEWISE_NVRTC_DIR at the wheel scripts/test installs, unless it is set; `None` when
/// neither exists.
fn nvrtc_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SCALEWISE_NVRTC_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let wheel = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/nvrtc/nvidia/cu13/lib");
    if wheel.join("libnvrtc.so.13").exists() {
        // SAFETY: set before any thread of this test binary reads the environment (each test
        // calls this first; the value is the same for all of them).
        unsafe { std::env::set_var("SCALEWISE_NVRTC_DIR", &wheel) };
        return Some(wheel);
    }
    None
}

fn require_nvrtc(test: &str) -> bool {
    if nvrtc_dir().is_some() {
        return true;
    }
    let reason = "no NVRTC: run scripts/test (it installs the nvidia-cuda-nvrtc wheel into .deps/nvrtc) or set \
                  SCALEWISE_NVRTC_DIR";
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {reason}");
    eprintln!("SKIP {test}: {reason}");
    false
}

/// Registers per thread a kernel may use: above this, occupancy halves for the 256-thread blocks
/// most families launch (65536 registers per SM).
const REGISTER_BUDGET: u32 = 128;
/// Shared memory a block may declare statically.
const SHARED_BUDGET: u32 = 48 * 1024;

#[test]
fn every_family_compiles_to_cubin_for_sm80_and_sm90_without_spills() {
    if !require_nvrtc("every_family_compiles_to_cubin_for_sm80_and_sm90_without_spills") {
        return;
    }
    let mut failures = Vec::new();
    let mut families_seen = Vec::new();
    for arch in [80, 90] {
        let results = compile_all(arch);
        for (label, result) in results {
            let family = label.split('[').next().unwrap_or_default().to_owned();
            if !families_seen.contains(&family) {
                families_seen.push(family);
            }
            match result {
                Err(e) => failures.push(format!("sm_{arch} {label}: {e}")),
                Ok(compiled) => {
                    assert!(!compiled.cubin.is_empty(), "sm_{arch} {label}: empty cubin");
                    // What the disk cache's check takes for a whole image (a cached cubin failing it
                    // is compiled afresh): every cubin NVRTC makes, and none cut short.
                    let cubin = &compiled.cubin;
                    assert!(cubin_is_whole(cubin), "sm_{arch} {label}: not a whole ELF image");
                    for len in [cubin.len() / 2, cubin.len() - 1] {
                        assert!(!cubin_is_whole(&cubin[..len]), "sm_{arch} {label}: cut to {len} bytes passes");
                    }
                    let reports = kernel_reports(&compiled.log);
                    assert!(!reports.is_empty(), "sm_{arch} {label}: no ptxas report in the log:\n{}", compiled.log);
                    // The host reads each kernel's block shape from the `<entry>_block` global
                    // (SW_KERNEL) after loading the module: it must survive compilation.
                    for r in reports.iter().filter(|r| !r.name.starts_with("_Z")) {
                        let symbol = format!("{}_block\0", r.name);
                        if !compiled.cubin.windows(symbol.len()).any(|w| w == symbol.as_bytes()) {
                            failures.push(format!("sm_{arch} {label}: no {}_block symbol in the cubin", r.name));
                        }
                    }
                    for r in reports {
                        eprintln!(
                            "sm_{arch} {label:<60} {:<28} {:>3} regs {:>6} B smem {:>4} B stack {} spill",
                            r.name,
                            r.registers,
                            r.shared_bytes,
                            r.stack_bytes,
                            r.spill_stores + r.spill_loads
                        );
                        if r.spill_stores + r.spill_loads > 0 {
                            failures.push(format!("sm_{arch} {label} {}: spills ({r:?})", r.name));
                        }
                        if r.registers > REGISTER_BUDGET {
                            failures.push(format!(
                                "sm_{arch} {label} {}: {} registers > {REGISTER_BUDGET}",
                                r.name, r.registers
                            ));
                        }
                        if r.shared_bytes > SHARED_BUDGET {
                            failures.push(format!(
                                "sm_{arch} {label} {}: {} B shared > {SHARED_BUDGET}",
                                r.name, r.shared_bytes
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    let missing: Vec<&str> =
        Family::ALL.iter().map(|f| f.name()).filter(|name| !families_seen.iter().any(|s| s == name)).collect();
    assert!(missing.is_empty(), "families without CUDA kernels: {missing:?}");
}

#[test]
fn a_kernel_that_does_not_compile_names_its_module_and_the_log() {
    if !require_nvrtc("a_kernel_that_does_not_compile_names_its_module_and_the_log") {
        return;
    }
    let err = scalewise::device::cuda_compile::compile("__global__ void k() { undeclared = 1; }", "broken[f32]{}", 90)
        .expect_err("an undeclared identifier must not compile");
    let text = err.to_string();
    assert!(matches!(err, Error::CudaCompile { .. }), "{text}");
    assert!(text.contains("broken[f32]{}") && text.contains("undeclared"), "{text}");
}

#[test]
fn opening_cuda_without_a_gpu_is_a_typed_error_not_a_panic() {
    nvrtc_dir();
    let options = DeviceOptions { backend: BackendChoice::Cuda, ..DeviceOptions::default() };
    match Device::new(&options) {
        // A machine with an NVIDIA driver and GPU opens it; the op tests' `cuda` configuration runs there.
        Ok(device) => assert_eq!(device.info().adapter.backend, "CUDA"),
        Err(e) => assert!(matches!(e, Error::CudaUnavailable(_)), "{e}"),
    }
}

#[test]
fn the_cpu_shim_reports_itself_and_runs_cuda_sources() {
    let options = DeviceOptions { backend: BackendChoice::CudaCpu, ..DeviceOptions::default() };
    let device = Device::new(&options).expect("the CPU shim needs only a C++ compiler");
    let info = device.info();
    assert_eq!(info.adapter.backend, "CUDA");
    assert!(info.caps.is_cpu);
    let variants = info.kernel_variants();
    assert!(variants.iter().any(|(what, _)| *what == "compiled by"), "{variants:?}");
}
