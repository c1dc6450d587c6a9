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
    AttentionAlgorithm, AttentionLayout, AttentionOptions, AttentionTiles, CoopAttentionTiles, GratPattern,
    GroupedLayout, GroupedOptions, TokenOrder, attention, attention_tiles, attention_tiles_for,
    attention_units_verified, coop_attention_tiles_for, from_group_major, grouped_attention, grouped_attention_in,
    grouped_attention_with, to_group_major,
};
pub use conv2d::{Conv2dAlgorithm, conv_units_verified, conv2d, conv2d_with};
pub use elementwise::{add, add_repeat, gelu_tanh, mul, silu};
pub use embedding::{embedding, embedding_channels_first};
pub use matmul::{GatedResidual, MatmulAlgorithm, linear, linear_gated_residual, linear_gelu, matmul, matmul_with};
pub use norm::{adaln_layer_norm, gated_rms_norm, group_norm, layer_norm, modulate, rms_norm, softmax, softmax_scaled};
pub use resample::{downsample_area, upsample_bicubic, upsample_nearest2x};
pub use transformer::{QkvHeads, gated_residual, qkv_attention, qkv_attention_with, qkv_heads};

use crate::device::{Arg, Grid, Launch};
use crate::error::{Error, Result, index_u32};
use crate::kernels::{Constants, Family, KernelParams};
use crate::tensor::{DType, Tensor, check_same_device, elements_grid};

/// The storage type a float op on `x` runs its kernel for: x's own, which must be f32 or f16.
fn float_dtype(op: &'static str, x: &Tensor) -> Result<DType> {
    if !x.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: x.dtype(), expected: "f32 or f16" });
    }
    Ok(x.dtype())
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

/// One kernel of `family` on `on`'s device: every op's launches come through here.
#[allow(clippy::too_many_arguments)]
fn launch<P: KernelParams>(
    on: &Tensor,
    family: Family,
    entry: &'static str,
    dtype: DType,
    constants: &Constants,
    args: &[Arg],
    params: &P,
    grid: Grid,
) -> Result<()> {
    on.device().launch(&Launch::new(family, entry, dtype, constants, args, params, grid))
}

/// The grid of a one-thread-per-element kernel over `n` elements.
fn elements(n: usize) -> Grid {
    Grid::Linear(elements_grid(n))
}

/// The grid of a one-workgroup-per-row kernel.
fn rows(n: usize) -> Grid {
    Grid::Linear(n as u64)
}

/// The f32 values a tensor of `dtype` actually holds after upload (f16 rounds), for references.
pub fn reference_values(data: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => data.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => data.to_vec(),
    }
}

/// `count` inputs for the matrix units' self-checks: multiples of 1/8 in [-1, 1] (a pattern salted by
/// `salt`), so that every f16 input is exact and so are the f32 products and the partial sums of a
/// few hundred of them.
pub(crate) fn eighths(count: usize, salt: usize) -> Vec<f32> {
    (0..count).map(|i| ((i * 7 + salt) % 17) as f32 / 8.0 - 1.0).collect()
}
