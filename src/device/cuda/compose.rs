//! The CUDA sources, one file per kernel family under `shaders/cuda/`, and how one module is composed
//! from them: the same text goes to NVRTC for the GPU and to the host C++ compiler for the CPU shim
//! (with `cpu_shim.h` in front). A module is one family compiled for one storage type and one set of
//! specialisation constants (the constants become macros, so every branch on them folds away).

use std::fmt::Write as _;

use crate::dtype::DType;
use crate::kernels::{ConstValue, Family, size};

/// Where a module will run: decides only whether the CPU shim goes in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Target {
    Gpu,
    Cpu,
}

/// One compiled module: a family, its storage type and its constants (sorted by name, so the order
/// an op set them in does not make a second module).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ModuleKey {
    pub family: Family,
    pub dtype: DType,
    pub constants: Vec<(&'static str, ConstValue)>,
}

impl ModuleKey {
    pub fn new(family: Family, dtype: DType, constants: &[(&'static str, ConstValue)]) -> Self {
        let mut constants = constants.to_vec();
        constants.sort_by_key(|&(name, _)| name);
        Self { family, dtype, constants }
    }

    /// `matmul[f16]{B_TRANSPOSED=1,HAS_BIAS=0}`: the module in errors and profiles.
    pub fn label(&self) -> String {
        let constants: Vec<String> = self
            .constants
            .iter()
            .map(|&(name, value)| match value {
                ConstValue::Bool(b) => format!("{name}={}", b as u32),
                ConstValue::U32(v) => format!("{name}={v}"),
            })
            .collect();
        format!("{}[{}]{{{}}}", self.family, self.dtype, constants.join(","))
    }
}

macro_rules! cuda {
    ($name:literal) => {
        include_str!(concat!("../../../shaders/cuda/", $name))
    };
}

const PRELUDE: &str = cuda!("prelude.cuh");
const CPU_SHIM: &str = cuda!("cpu_shim.h");

/// The family's file name and the shared snippets it needs after the constants.
fn files(family: Family) -> (&'static str, &'static [&'static str]) {
    match family {
        // matmul_coop is matmul.cu's tensor-core kernel, under the family's own name.
        Family::Matmul | Family::MatmulCoop => {
            ("matmul.cu", &["tensor_core.cuh", "gemm_tc.cuh", "gemm_wide.cuh", "block_exchange.cuh"])
        }
        // ops::attention launches the attention family on CUDA for either algorithm (its f16 kernel
        // is on the tensor cores); attention_coop is named here so that every family has a source.
        Family::Attention | Family::AttentionCoop => ("attention.cu", &["tensor_core.cuh"]),
        Family::Scan => ("scan.cu", &["sequence.cuh"]),
        Family::Ssd => ("ssd.cu", &["sequence.cuh", "block_exchange.cuh"]),
        Family::Norm => ("norm.cu", &[]),
        Family::ScanCarry => ("scan_carry.cu", &[]),
        Family::Conv1d => ("conv1d.cu", &[]),
        Family::Elementwise => ("elementwise.cu", &[]),
        Family::Embedding => ("embedding.cu", &[]),
        Family::Copy => ("copy.cu", &[]),
        Family::CastToF16 => ("cast_to_f16.cu", &[]),
        Family::CastToF32 => ("cast_to_f32.cu", &[]),
        Family::Resample => ("resample.cu", &[]),
        Family::Conv2d => ("conv2d.cu", &["gemm_wide.cuh"]),
        // conv2d.cu's tensor-core entry (matmul_coop), the only one this family's module has (the
        // block is gemm_tc.cuh's; its presence leaves the scalar entries out).
        Family::Conv2dCoop => ("conv2d.cu", &["tensor_core.cuh", "gemm_tc.cuh"]),
        Family::Sample => ("sample.cu", &[]),
        // ops::qkv_attention runs qkv_heads then attention on CUDA; qkv_attention_coop is named here
        // so that every family has a source.
        Family::QkvHeads | Family::QkvAttentionCoop => ("qkv_heads.cu", &[]),
        Family::Residual => ("residual.cu", &[]),
    }
}

/// The sources built into the library. `SCALEWISE_CUDA_SOURCES=<dir>` reads them from that folder
/// instead (kernel development without rebuilding: the test binaries pick up an edited .cu).
fn embedded(file: &str) -> Option<&'static str> {
    Some(match file {
        "prelude.cuh" => PRELUDE,
        "cpu_shim.h" => CPU_SHIM,
        "matmul.cu" => cuda!("matmul.cu"),
        "norm.cu" => cuda!("norm.cu"),
        "attention.cu" => cuda!("attention.cu"),
        "scan.cu" => cuda!("scan.cu"),
        "ssd.cu" => cuda!("ssd.cu"),
        "scan_carry.cu" => cuda!("scan_carry.cu"),
        "conv1d.cu" => cuda!("conv1d.cu"),
        "elementwise.cu" => cuda!("elementwise.cu"),
        "embedding.cu" => cuda!("embedding.cu"),
        "copy.cu" => cuda!("copy.cu"),
        "cast_to_f16.cu" => cuda!("cast_to_f16.cu"),
        "cast_to_f32.cu" => cuda!("cast_to_f32.cu"),
        "resample.cu" => cuda!("resample.cu"),
        "conv2d.cu" => cuda!("conv2d.cu"),
        "sample.cu" => cuda!("sample.cu"),
        "qkv_heads.cu" => cuda!("qkv_heads.cu"),
        "residual.cu" => cuda!("residual.cu"),
        "tensor_core.cuh" => cuda!("tensor_core.cuh"),
        "sequence.cuh" => cuda!("sequence.cuh"),
        "gemm_wide.cuh" => cuda!("gemm_wide.cuh"),
        "gemm_tc.cuh" => cuda!("gemm_tc.cuh"),
        "block_exchange.cuh" => cuda!("block_exchange.cuh"),
        _ => return None,
    })
}

/// One source file's text: from `SCALEWISE_CUDA_SOURCES` when set, else built in; `None` when the
/// family has no CUDA kernels yet.
pub(super) fn read(file: &str) -> Option<String> {
    match std::env::var_os("SCALEWISE_CUDA_SOURCES") {
        Some(dir) if !dir.is_empty() => std::fs::read_to_string(std::path::Path::new(&dir).join(file)).ok(),
        _ => embedded(file).map(str::to_owned),
    }
}

/// Whether `family` has CUDA kernels.
pub(super) fn has_family(family: Family) -> bool {
    read(files(family).0).is_some_and(|s| !s.trim().is_empty())
}

/// The block sizes of [`crate::kernels::size`] as macros (the same values the WGSL modules see).
fn block_sizes() -> String {
    size::ALL.iter().map(|(name, value)| format!("#define {name} {value}u\n")).collect()
}

/// Every family's params struct in C, from the Rust definitions (one source for both).
fn params_structs() -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for family in Family::ALL {
        let layout = family.params_layout();
        if seen.contains(&layout.struct_name) {
            continue;
        }
        seen.push(layout.struct_name);
        let _ = writeln!(out, "struct {} {{", layout.struct_name);
        for (&(field, _), &ty) in layout.fields.iter().zip(layout.field_types) {
            let _ = writeln!(out, "    {};", c_field(field, ty));
        }
        out.push_str("};\n");
    }
    out
}

/// `u32 m`, `float eps`, `u32 counter_base[4]`.
fn c_field(field: &str, rust_type: &str) -> String {
    let scalar = |t: &str| match t.trim() {
        "u32" => "u32",
        "i32" => "i32",
        "f32" => "float",
        other => unreachable!("params field type {other} has no C twin"),
    };
    match rust_type.trim().strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(array) => {
            let (ty, len) = array.split_once(';').expect("array type [T; N]");
            format!("{} {field}[{}]", scalar(ty), len.trim())
        }
        None => format!("{} {field}", scalar(rust_type)),
    }
}

/// The complete source of one module, or `None` when the family has no CUDA kernels.
pub(super) fn compose(key: &ModuleKey, target: Target) -> Option<String> {
    let (file, snippets) = files(key.family);
    let own = read(file)?;
    let mut out = String::new();
    if target == Target::Cpu {
        out.push_str(&read("cpu_shim.h")?);
    }
    out.push_str(match key.dtype {
        DType::F32 => "#define SW_STORE_F32 1\n",
        DType::F16 => "#define SW_STORE_F16 1\n",
        DType::U32 => "#define SW_STORE_U32 1\n",
    });
    out.push_str(&block_sizes());
    out.push_str(&read("prelude.cuh")?);
    out.push_str(&params_structs());
    for &(name, value) in &key.constants {
        let _ = match value {
            ConstValue::Bool(b) => writeln!(out, "#define {name} {}", b as u32),
            ConstValue::U32(v) => writeln!(out, "#define {name} {v}u"),
        };
    }
    for snippet in snippets {
        if let Some(text) = read(snippet) {
            out.push_str(&text);
        }
    }
    out.push_str(&own);
    Some(out)
}

/// A 128-bit content hash (two FNV-1a streams) naming cached binaries: stable across Rust releases,
/// unlike std's hashers.
pub(super) fn content_hash(parts: &[&[u8]]) -> String {
    let mut a: u64 = 0xCBF2_9CE4_8422_2325;
    let mut b: u64 = 0x6C62_272E_07BB_0142;
    for part in parts {
        for &byte in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
            a = (a ^ byte as u64).wrapping_mul(0x0000_0100_0000_01B3);
            b = (b ^ byte as u64).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(5);
        }
    }
    format!("{a:016x}{b:016x}")
}
