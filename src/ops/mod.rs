//! Core ops. Each family has a WGSL kernel under `shaders/wgsl/` and a launcher here with its float64
//! CPU reference beside it (`reference` submodules), which the tests compare against.

pub mod attention;
pub mod conv1d;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod norm;
pub mod resample;
pub mod sample;
pub mod scan;
pub mod transformer;

pub use attention::{
    AttentionLayout, AttentionOptions, GratPattern, GroupedLayout, TokenOrder, attention, from_group_major,
    grouped_attention, grouped_attention_in, to_group_major,
};
pub use conv2d::{Conv2dAlgorithm, conv2d, conv2d_with};
pub use elementwise::{add, gelu_tanh, mul, silu};
pub use embedding::embedding;
pub use matmul::{MatmulAlgorithm, linear, matmul, matmul_with};
pub use norm::{adaln_layer_norm, group_norm, layer_norm, modulate, rms_norm, softmax, softmax_scaled};
pub use resample::{downsample_area, upsample_bicubic, upsample_nearest2x};
pub use transformer::{QkvHeads, gated_residual, qkv_heads};

use crate::device::launch::{self, Binding, Kernel};
use crate::error::{Error, Result};
use crate::shaders::{ShaderFamily, Variant};
use crate::tensor::{DType, Tensor, check_same_device};

/// The variant of `family` a float op on `dtype` runs on this device.
fn variant_for(x: &Tensor, family: &ShaderFamily, op: &'static str) -> Result<Variant> {
    if !x.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: x.dtype(), expected: "f32 or f16" });
    }
    Ok(Variant { dtype: x.dtype(), subgroups: family.has_subgroup_variant() && x.device().features().subgroups })
}

/// Same device and dtype as `x`.
fn check_operand(op: &'static str, x: &Tensor, other: &Tensor) -> Result<()> {
    check_same_device(op, x, other)?;
    if other.dtype() != x.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: x.dtype(), rhs: other.dtype() });
    }
    Ok(())
}

fn shape_error(op: &'static str, lhs: &Tensor, rhs: &Tensor, detail: impl Into<String>) -> Error {
    Error::ShapeMismatch { op, lhs: lhs.shape().to_vec(), rhs: rhs.shape().to_vec(), detail: detail.into() }
}

/// A u32 view of a count, or a typed error when a shape outgrows the kernels' 32-bit indexing.
fn index_u32(op: &'static str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| Error::InvalidArgument { op, msg: format!("{what} = {value} exceeds the 32-bit index range") })
}

/// Launches a one-thread-per-element kernel over `n` elements (256 per workgroup) on `x`'s device.
fn dispatch_elements(x: &Tensor, kernel: &Kernel, bindings: &[Binding], params: &[u32], n: usize) -> Result<()> {
    let ctx = x.ctx();
    ctx.dispatch(kernel, bindings, params, launch::grid(ctx, n.div_ceil(256) as u64, kernel.entry)?)
}

/// Launches one workgroup per row.
fn dispatch_rows(x: &Tensor, kernel: &Kernel, bindings: &[Binding], params: &[u32], rows: usize) -> Result<()> {
    let ctx = x.ctx();
    ctx.dispatch(kernel, bindings, params, launch::grid(ctx, rows as u64, kernel.entry)?)
}

/// The f32 values a tensor of `dtype` actually holds after upload (f16 rounds), for references.
pub fn reference_values(data: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => data.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => data.to_vec(),
    }
}
