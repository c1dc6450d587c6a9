//! The WGSL sources, one file per kernel family under `shaders/wgsl/`, and how each is specialised.
//!
//! A family is written once against two aliases and is compiled per [`Variant`]:
//! - `store_t`: the element type of its storage arrays (`f32`, `f16` or `u32`); arithmetic is f32;
//! - for families with row reductions, `Lane` (the entry point's invocation builtins) and
//!   `workgroup_sum` / `workgroup_max`: a subgroup version and a workgroup-memory tree version, so
//!   every kernel has a path without subgroups and none assumes a subgroup size.

use crate::tensor::DType;

#[derive(Debug)]
pub struct ShaderFamily {
    pub name: &'static str,
    source: &'static str,
    /// Prepends `Lane` and the workgroup reduction helpers.
    uses_reductions: bool,
    /// Plain WGSL shared between families (functions only), prepended after the preludes.
    snippets: &'static [&'static str],
    /// The storage types the family is compiled for.
    pub dtypes: &'static [DType],
}

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
const REDUCE_WORKGROUP: &str = include_str!("../shaders/wgsl/reduce_workgroup.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../shaders/wgsl/reduce_subgroup.wgsl");
/// The launch::grid contract, in every module.
const GRID: &str = include_str!("../shaders/wgsl/grid.wgsl");
const SEQUENCE: &str = include_str!("../shaders/wgsl/sequence.wgsl");

impl ShaderFamily {
    pub fn has_subgroup_variant(&self) -> bool {
        self.uses_reductions
    }

    /// The complete WGSL module of one variant.
    pub fn compose(&self, variant: Variant) -> String {
        let store = match variant.dtype {
            DType::F32 => STORE_F32,
            DType::F16 => STORE_F16,
            DType::U32 => STORE_U32,
        };
        let reduce = match (self.uses_reductions, variant.subgroups) {
            (false, _) => "",
            (true, false) => REDUCE_WORKGROUP,
            (true, true) => REDUCE_SUBGROUP,
        };
        format!("{store}{GRID}{reduce}{}{}", self.snippets.concat(), self.source)
    }

    /// Every variant the library may compile, for validation without a GPU.
    pub fn variants(&self) -> Vec<Variant> {
        let flavours: &[bool] = if self.uses_reductions { &[false, true] } else { &[false] };
        self.dtypes
            .iter()
            .flat_map(|&dtype| flavours.iter().map(move |&subgroups| Variant { dtype, subgroups }))
            .collect()
    }
}

const FLOATS: &[DType] = &[DType::F32, DType::F16];

pub static MATMUL: ShaderFamily = ShaderFamily {
    name: "matmul",
    source: include_str!("../shaders/wgsl/matmul.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: FLOATS,
};

pub static NORM: ShaderFamily = ShaderFamily {
    name: "norm",
    source: include_str!("../shaders/wgsl/norm.wgsl"),
    uses_reductions: true,
    snippets: &[],
    dtypes: FLOATS,
};

pub static ELEMENTWISE: ShaderFamily = ShaderFamily {
    name: "elementwise",
    source: include_str!("../shaders/wgsl/elementwise.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: FLOATS,
};

pub static EMBEDDING: ShaderFamily = ShaderFamily {
    name: "embedding",
    source: include_str!("../shaders/wgsl/embedding.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: FLOATS,
};

pub static COPY: ShaderFamily = ShaderFamily {
    name: "copy",
    source: include_str!("../shaders/wgsl/copy.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: &[DType::F32, DType::F16, DType::U32],
};

pub static ATTENTION: ShaderFamily = ShaderFamily {
    name: "attention",
    source: include_str!("../shaders/wgsl/attention.wgsl"),
    uses_reductions: true,
    snippets: &[],
    dtypes: FLOATS,
};

pub static SCAN: ShaderFamily = ShaderFamily {
    name: "scan",
    source: include_str!("../shaders/wgsl/scan.wgsl"),
    uses_reductions: false,
    snippets: &[SEQUENCE],
    dtypes: FLOATS,
};

pub static CONV1D: ShaderFamily = ShaderFamily {
    name: "conv1d",
    source: include_str!("../shaders/wgsl/conv1d.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: FLOATS,
};

/// Bicubic, area and nearest x2 resampling of NCHW planes (the multi-scale VQVAE).
pub static RESAMPLE: ShaderFamily = ShaderFamily {
    name: "resample",
    source: include_str!("../shaders/wgsl/resample.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: FLOATS,
};

/// 2-D convolution, stride 1, same padding (the VQVAE decoder).
pub static CONV2D: ShaderFamily = ShaderFamily {
    name: "conv2d",
    source: include_str!("../shaders/wgsl/conv2d.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: FLOATS,
};

/// SSD in the chunked matrix form.
pub static SSD: ShaderFamily = ShaderFamily {
    name: "ssd",
    source: include_str!("../shaders/wgsl/ssd.wgsl"),
    uses_reductions: false,
    snippets: &[SEQUENCE],
    dtypes: FLOATS,
};

/// The serial carry pass of the chunked scan (states are always f32).
pub static SCAN_CARRY: ShaderFamily = ShaderFamily {
    name: "scan_carry",
    source: include_str!("../shaders/wgsl/scan_carry.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: &[DType::F32],
};

/// The two directions of the f32 <-> f16 conversion are two modules because their bindings differ.
pub static CAST_TO_F16: ShaderFamily = ShaderFamily {
    name: "cast_to_f16",
    source: include_str!("../shaders/wgsl/cast_to_f16.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: &[DType::F16],
};

pub static CAST_TO_F32: ShaderFamily = ShaderFamily {
    name: "cast_to_f32",
    source: include_str!("../shaders/wgsl/cast_to_f32.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: &[DType::F16],
};

/// The VAR sampler step: CFG, top-k, top-p and the Philox multinomial draw (logits are always f32).
pub static SAMPLE: ShaderFamily = ShaderFamily {
    name: "sample",
    source: include_str!("../shaders/wgsl/sample.wgsl"),
    uses_reductions: true,
    snippets: &[],
    dtypes: &[DType::F32],
};

/// VAR attention input: split the fused qkv into heads, cosine-normalise, append K/V to the caches.
pub static QKV_HEADS: ShaderFamily = ShaderFamily {
    name: "qkv_heads",
    source: include_str!("../shaders/wgsl/qkv_heads.wgsl"),
    uses_reductions: true,
    snippets: &[],
    dtypes: FLOATS,
};

/// The AdaLN-gated residual add of a VAR block.
pub static RESIDUAL: ShaderFamily = ShaderFamily {
    name: "residual",
    source: include_str!("../shaders/wgsl/residual.wgsl"),
    uses_reductions: false,
    snippets: &[],
    dtypes: FLOATS,
};

/// Every family, for `scalewise info` and the naga validation test.
pub static ALL_FAMILIES: &[&ShaderFamily] = &[
    &MATMUL,
    &NORM,
    &ATTENTION,
    &SCAN,
    &SSD,
    &SCAN_CARRY,
    &CONV1D,
    &ELEMENTWISE,
    &EMBEDDING,
    &COPY,
    &CAST_TO_F16,
    &CAST_TO_F32,
    &RESAMPLE,
    &CONV2D,
    &SAMPLE,
    &QKV_HEADS,
    &RESIDUAL,
];
