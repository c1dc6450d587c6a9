//! The WGSL sources, one file per kernel family under `shaders/wgsl/`, and how each is composed.
//!
//! A family is written once against two aliases and is compiled per [`Variant`]:
//! - `store_t`: the element type of its storage arrays (`f32`, `f16` or `u32`); arithmetic is f32;
//! - for families with row reductions, `Lane` (the entry point's invocation builtins) and
//!   `workgroup_sum` / `workgroup_max`: a subgroup version and a workgroup-memory tree version, so
//!   every kernel has a path without subgroups and none assumes a subgroup size.
//!
//! - for the scalar attention machinery (`Family::uses_attention_lanes`), `TileInvocation`,
//!   `tile_thread` and `lanes_sum`: a row's partial scores summed through subgroup shuffles, or (the
//!   variant without subgroups) a never-called placeholder beside the workgroup-memory exchange.
//!
//! The matrix-unit families (`Family::uses_matrix_units`: `matmul_coop`, `conv2d_coop`,
//! `attention_coop`, `qkv_attention_coop`) have two flavours instead: their fragment operations on wgpu's cooperative
//! matrices (the "subgroups" flavour, since a fragment lives across a subgroup), or the plain-WGSL
//! emulation.
//!
//! Every module starts with the block sizes of [`crate::kernels::size`] as WGSL constants.

use crate::device::{Caps, MatrixUnits};
use crate::dtype::DType;
use crate::kernels::{Family, size};

/// Storage type and reduction flavour a family is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    pub dtype: DType,
    pub subgroups: bool,
}

impl Variant {
    /// `[f16]`, `[f32,subgroups]`: how the variant appears in labels and profiles.
    pub fn suffix(&self) -> String {
        if self.subgroups { format!("[{},subgroups]", self.dtype) } else { format!("[{}]", self.dtype) }
    }
}

const STORE_F32: &str = "alias store_t = f32;\n";
const STORE_F16: &str = "enable f16;\nalias store_t = f16;\n";
const STORE_U32: &str = "alias store_t = u32;\n";
const REDUCE_WORKGROUP: &str = include_str!("../../../shaders/wgsl/reduce_workgroup.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../../../shaders/wgsl/reduce_subgroup.wgsl");
/// The `Grid::Linear` contract, in every module.
const GRID: &str = include_str!("../../../shaders/wgsl/grid.wgsl");
const SEQUENCE: &str = include_str!("../../../shaders/wgsl/sequence.wgsl");
const ACTIVATION: &str = include_str!("../../../shaders/wgsl/activation.wgsl");
const GEMM_WIDE: &str = include_str!("../../../shaders/wgsl/gemm_wide.wgsl");
const BLOCK_EXCHANGE: &str = include_str!("../../../shaders/wgsl/block_exchange.wgsl");
const ATTENTION_COMMON: &str = include_str!("../../../shaders/wgsl/attention_common.wgsl");
const ATTENTION_TILE: &str = include_str!("../../../shaders/wgsl/attention_tile.wgsl");
const ATTENTION_LANES_WORKGROUP: &str = include_str!("../../../shaders/wgsl/attention_lanes_workgroup.wgsl");
const ATTENTION_LANES_SUBGROUP: &str = include_str!("../../../shaders/wgsl/attention_lanes_subgroup.wgsl");
const MATMUL_IO: &str = include_str!("../../../shaders/wgsl/matmul_io.wgsl");
const COOP_NATIVE: &str = include_str!("../../../shaders/wgsl/coop_native.wgsl");
const COOP_EMULATED: &str = include_str!("../../../shaders/wgsl/coop_emulated.wgsl");
const ATTENTION_COOP: &str = include_str!("../../../shaders/wgsl/attention_coop.wgsl");
const ATTENTION_COOP_NATIVE: &str = include_str!("../../../shaders/wgsl/attention_coop_native.wgsl");
const ATTENTION_COOP_EMULATED: &str = include_str!("../../../shaders/wgsl/attention_coop_emulated.wgsl");
const QKV_IO: &str = include_str!("../../../shaders/wgsl/qkv_io.wgsl");
const QKV_ATTENTION: &str = include_str!("../../../shaders/wgsl/qkv_attention.wgsl");
const CONV2D_IO: &str = include_str!("../../../shaders/wgsl/conv2d_io.wgsl");

macro_rules! wgsl {
    ($name:literal) => {
        include_str!(concat!("../../../shaders/wgsl/", $name, ".wgsl"))
    };
}

/// The family's own source and the shared snippets (plain WGSL functions) it needs.
fn source(family: Family) -> (&'static str, &'static [&'static str]) {
    match family {
        Family::Matmul => (wgsl!("matmul"), &[ACTIVATION, MATMUL_IO, GEMM_WIDE, BLOCK_EXCHANGE]),
        // The fragment operations (COOP_NATIVE or COOP_EMULATED) are added by `compose`.
        Family::MatmulCoop => (wgsl!("matmul_coop"), &[ACTIVATION, MATMUL_IO]),
        Family::Norm => (wgsl!("norm"), &[]),
        Family::Attention => (wgsl!("attention"), &[ATTENTION_COMMON, ATTENTION_TILE]),
        // The same entries on the matrix-unit machinery; its fragment operations are added by `compose`.
        Family::AttentionCoop => (wgsl!("attention"), &[ATTENTION_COMMON, ATTENTION_COOP]),
        Family::Scan => (wgsl!("scan"), &[SEQUENCE]),
        Family::Ssd => (wgsl!("ssd"), &[SEQUENCE, BLOCK_EXCHANGE]),
        Family::ScanCarry => (wgsl!("scan_carry"), &[]),
        Family::Conv1d => (wgsl!("conv1d"), &[]),
        Family::Elementwise => (wgsl!("elementwise"), &[ACTIVATION]),
        Family::Embedding => (wgsl!("embedding"), &[]),
        Family::Copy => (wgsl!("copy"), &[]),
        Family::CastToF16 => (wgsl!("cast_to_f16"), &[]),
        Family::CastToF32 => (wgsl!("cast_to_f32"), &[]),
        Family::Resample => (wgsl!("resample"), &[]),
        Family::Conv2d => (wgsl!("conv2d"), &[CONV2D_IO, GEMM_WIDE]),
        // matmul_coop.wgsl's block on conv2d's operands; its fragment operations are added by `compose`.
        Family::Conv2dCoop => (wgsl!("matmul_coop"), &[CONV2D_IO, wgsl!("conv2d_coop")]),
        Family::Sample => (wgsl!("sample"), &[]),
        Family::QkvHeads => (wgsl!("qkv_heads"), &[QKV_IO, ATTENTION_COMMON, ATTENTION_TILE, QKV_ATTENTION]),
        // The fused entry alone, on the matrix-unit machinery (fragment operations added by `compose`).
        Family::QkvAttentionCoop => (wgsl!("qkv_attention"), &[QKV_IO, ATTENTION_COMMON, ATTENTION_COOP]),
        Family::Residual => (wgsl!("residual"), &[]),
    }
}

/// `const NAME: u32 = V;` for every block size, so host and kernels share one definition.
fn block_sizes() -> String {
    size::ALL.iter().map(|(name, value)| format!("const {name}: u32 = {value}u;\n")).collect()
}

/// The variant of `family` that runs `dtype` on a device with `caps`.
pub fn variant(family: Family, dtype: DType, caps: &Caps) -> Variant {
    let subgroups = if family.uses_matrix_units() {
        caps.matrix_units == MatrixUnits::Native
    } else {
        caps.subgroups && (family.uses_reductions() || family.uses_attention_lanes())
    };
    Variant { dtype, subgroups }
}

/// The complete WGSL module of one variant.
pub fn compose(family: Family, variant: Variant) -> String {
    let store = match variant.dtype {
        DType::F32 => STORE_F32,
        DType::F16 => STORE_F16,
        DType::U32 => STORE_U32,
    };
    let reduce = match (family.uses_reductions(), variant.subgroups) {
        (false, _) => "",
        (true, false) => REDUCE_WORKGROUP,
        (true, true) => REDUCE_SUBGROUP,
    };
    // Enable directives come before every declaration.
    let (enable, fragments) = match (family, variant.subgroups) {
        (Family::MatmulCoop | Family::Conv2dCoop, true) => ("enable wgpu_cooperative_matrix;\n", COOP_NATIVE),
        (Family::MatmulCoop | Family::Conv2dCoop, false) => ("", COOP_EMULATED),
        (Family::AttentionCoop | Family::QkvAttentionCoop, true) => {
            ("enable wgpu_cooperative_matrix;\n", ATTENTION_COOP_NATIVE)
        }
        (Family::AttentionCoop | Family::QkvAttentionCoop, false) => ("", ATTENTION_COOP_EMULATED),
        // The scalar attention machinery's lanes: subgroup shuffles, or workgroup memory only.
        (Family::Attention | Family::QkvHeads, true) => ("", ATTENTION_LANES_SUBGROUP),
        (Family::Attention | Family::QkvHeads, false) => ("", ATTENTION_LANES_WORKGROUP),
        _ => ("", ""),
    };
    let (own, snippets) = source(family);
    format!("{enable}{store}{}{GRID}{reduce}{}{fragments}{own}", block_sizes(), snippets.concat())
}

/// Every variant the library may compile, for validation without a GPU.
pub fn variants(family: Family) -> Vec<Variant> {
    let two = family.uses_reductions() || family.uses_matrix_units() || family.uses_attention_lanes();
    let flavours: &[bool] = if two { &[false, true] } else { &[false] };
    family
        .dtypes()
        .iter()
        .flat_map(|&dtype| flavours.iter().map(move |&subgroups| Variant { dtype, subgroups }))
        .collect()
}
