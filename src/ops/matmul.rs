//! Batched matmul, including x @ W^T for PyTorch Linear weights, with an optional bias.

use super::{check_operand, float_dtype, index_u32, launch, shape_error};
use crate::device::{Device, Grid, MatrixUnits};
use crate::dtype::{DType, numel};
use crate::error::{Error, Result};
use crate::kernels::{Constants, Family, MatmulParams, size};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulAlgorithm {
    /// Chosen per call from the shape and the device ([`MatmulAlgorithm::choose`]).
    #[default]
    Auto,
    /// 64 x 64 output tiles, 8 x 8 outputs per thread, four teams of threads splitting K (and adding
    /// their blocks up at the end), K double-buffered: for grids too small for the wide kernel.
    Tiled,
    /// 128 x 128 output tiles, 8 x 8 outputs per thread, K double-buffered: for large products.
    Wide,
    /// At most [`size::SKINNY_ROWS`] rows of `a`, K split across threads: for few rows against a
    /// Linear weight (the conditioning, the first scales), where reading `b` once is the bound.
    Skinny,
    /// One thread per output, straight from global memory: the benchmark baseline.
    Naive,
    /// 16 x 16 x 16 f16 matrix units with f32 accumulation, 64 x 64 output tiles: wgpu's cooperative
    /// matrices, CUDA's tensor cores ([`crate::MatrixUnits`]). f16 storage only; refused with a typed
    /// error on a device without the units.
    Cooperative,
}

/// The wide kernel only when its grid has at least this many workgroups: below it, a GPU with 100+
/// compute units would leave most of them idle, and the 64 x 64 kernel gives 4 times as many
/// workgroups. A design choice from the units' count (GPU.md), to be checked on a GPU when one is lent.
pub const WIDE_MIN_GROUPS: u64 = 64;

impl MatmulAlgorithm {
    /// Every kernel, for tests and benchmarks ([`MatmulAlgorithm::Auto`] is not one: it picks one).
    pub const KERNELS: [MatmulAlgorithm; 5] = [
        MatmulAlgorithm::Tiled,
        MatmulAlgorithm::Wide,
        MatmulAlgorithm::Skinny,
        MatmulAlgorithm::Naive,
        MatmulAlgorithm::Cooperative,
    ];

    /// The kernel [`MatmulAlgorithm::Auto`] runs for `batch` products of `rows` x `k` by `k` x `n`:
    /// skinny for at most [`size::SKINNY_ROWS`] rows of a transposed `b` (a weight read along its
    /// rows), the matrix units for f16 where the device has them ([`crate::MatrixUnits::Native`]) and
    /// they pass their self-check ([`matrix_units_verified`]), wide
    /// where its grid fills the GPU ([`WIDE_MIN_GROUPS`]; on a CPU adapter wherever its tile is half
    /// used), the 64 x 64 kernel otherwise.
    pub fn choose(device: &Device, dtype: DType, batch: usize, rows: usize, n: usize, transpose_b: bool) -> Self {
        if transpose_b && rows <= size::SKINNY_ROWS as usize {
            return MatmulAlgorithm::Skinny;
        }
        if dtype == DType::F16
            && device.caps().matrix_units == MatrixUnits::Native
            && matrix_units_verified(device).is_ok()
        {
            return MatmulAlgorithm::Cooperative;
        }
        let wide = size::WIDE_TILE as u64;
        let groups = (rows as u64).div_ceil(wide) * (n as u64).div_ceil(wide) * batch as u64;
        // A CPU adapter (lavapipe) runs a few workgroups at a time on its cores, so there are no idle
        // units to fill: the wide tile wins wherever it is at least half used (4.4x at 512^3).
        let fills = if device.caps().is_cpu {
            rows as u64 >= wide / 2 && n as u64 >= wide / 2
        } else {
            groups >= WIDE_MIN_GROUPS
        };
        if fills { MatmulAlgorithm::Wide } else { MatmulAlgorithm::Tiled }
    }
}

/// Whether `device`'s matrix units compute what they should, checked once per device: the
/// cooperative kernel on a product of three ragged 64-wide column blocks, b in both layouts, with a
/// bias, against a float64 reference. Inputs are multiples of 1/8 in [-1, 1], so every product and
/// partial sum is exact in f32 and only the f16 output rounds. The error says what failed (the
/// pipeline, or the first wrong element); `Auto` then keeps f16 matmuls on the scalar kernels.
pub fn matrix_units_verified(device: &Device) -> std::result::Result<(), String> {
    if device.caps().matrix_units == MatrixUnits::None {
        return Err("the device has no matrix units".into());
    }
    device.check_matrix_units(|| {
        let (m, k, n) = (70, 90, 150);
        let (a, b, bias) = (super::eighths(m * k, 1), super::eighths(k * n, 5), super::eighths(n, 11));
        let fail = |e: Error| format!("the cooperative kernel failed to run: {e}");
        let ta = Tensor::from_f32(device, &[m, k], &a, DType::F16).map_err(fail)?;
        let tbias = Tensor::from_f32(device, &[n], &bias, DType::F16).map_err(fail)?;
        for transpose_b in [false, true] {
            let b_shape = if transpose_b { [n, k] } else { [k, n] };
            let tb = Tensor::from_f32(device, &b_shape, &b, DType::F16).map_err(fail)?;
            let options = MatmulOptions {
                transpose_b,
                bias: Some(&tbias),
                algorithm: MatmulAlgorithm::Cooperative,
                ..Default::default()
            };
            let got = matmul_with(&ta, &tb, &options).and_then(|c| c.to_vec_f32()).map_err(fail)?;
            // The same values as K x N or as N x K; the reference reads them in the same layout.
            let want = reference::matmul(&a, &b, Some(&bias), 1, m, k, n, transpose_b, true);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                // f16 rounding of the output: half an ulp is 2^-11 relative. NaN fails too.
                if g.is_nan() || (g as f64 - w).abs() > 1e-3 * w.abs().max(1.0) {
                    return Err(format!(
                        "the cooperative kernel computed {g} for element {i} of a {m}x{k}x{n} product \
                         (transposed b: {transpose_b}), not {w}"
                    ));
                }
            }
        }
        Ok(())
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MatmulOptions<'a> {
    /// `b` is stored (…, N, K) and used transposed (a PyTorch Linear weight).
    pub transpose_b: bool,
    /// Added to every row of the output; shape (N).
    pub bias: Option<&'a Tensor>,
    pub algorithm: MatmulAlgorithm,
    /// GELU (tanh approximation) on every output, after the bias: a Linear and its activation in
    /// one kernel, as [`crate::ops::gelu_tanh`] would compute it on an f32 result.
    pub gelu: bool,
    /// out = x + gate\[g\] * (a @ op(b) + bias), the AdaLN-gated residual of a transformer block
    /// fused into the Linear before it ([`crate::ops::gated_residual`] in the same kernel).
    pub gated_residual: Option<GatedResidual<'a>>,
}

/// The residual stream `x` (the output's shape) and its gate (G, N): the output's rows, counted
/// across the batch, split into G equal runs, run g gated by gate row g (one per image of a batch).
#[derive(Debug, Clone, Copy)]
pub struct GatedResidual<'a> {
    pub x: &'a Tensor,
    pub gate: &'a Tensor,
}

/// a (…, M, K) @ b (…, K, N) -> (…, M, N). A 2-D `b` is shared by the whole batch.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_with(a, b, &MatmulOptions::default())
}

/// PyTorch `Linear`: x (…, K) @ weight (N, K)^T + bias (N) -> (…, N).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_with(x, weight, &MatmulOptions { bias, ..Default::default() })
}

/// `gelu_tanh(linear(x, weight, bias))` in one kernel (the MLP's first layer).
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_with(x, weight, &MatmulOptions { bias, gelu: true, ..Default::default() })
}

/// `gated_residual(x, linear(h, weight, bias), gate)` in one kernel: x + gate\[b\] * (h @ weight^T +
/// bias), for h and x (B, …, C) and gate (B, C).
pub fn linear_gated_residual(
    h: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    x: &Tensor,
    gate: &Tensor,
) -> Result<Tensor> {
    linear_with(
        h,
        weight,
        &MatmulOptions { bias, gated_residual: Some(GatedResidual { x, gate }), ..Default::default() },
    )
}

/// [`linear`] with the other options of [`matmul_with`] (`transpose_b` is implied).
fn linear_with(x: &Tensor, weight: &Tensor, options: &MatmulOptions) -> Result<Tensor> {
    let Some((&k, leading)) = x.shape().split_last() else {
        return Err(Error::InvalidArgument { op: "linear", msg: "the input must have at least one dimension".into() });
    };
    if weight.shape().len() != 2 {
        return Err(shape_error("linear", x, weight, "the weight must be 2-D (out_features, in_features)"));
    }
    // The leading dimensions' product, not numel / k: with k = 0 that reads 0 rows for any shape.
    let rows = leading.iter().try_fold(1usize, |rows, &d| rows.checked_mul(d)).ok_or_else(|| {
        Error::InvalidArgument { op: "linear", msg: format!("the leading dimensions of {:?} overflow", x.shape()) }
    })?;
    let x2 = x.reshape(&[rows, k])?;
    let y = matmul_with(&x2, weight, &MatmulOptions { transpose_b: true, ..*options })?;
    let mut shape = leading.to_vec();
    shape.push(weight.shape()[0]);
    y.reshape(&shape)
}

pub fn matmul_with(a: &Tensor, b: &Tensor, options: &MatmulOptions) -> Result<Tensor> {
    const OP: &str = "matmul";
    check_operand(OP, a, b)?;
    let (ar, br) = (a.shape().len(), b.shape().len());
    if ar < 2 || br < 2 {
        return Err(shape_error(OP, a, b, "both operands need at least 2 dimensions"));
    }
    let (m, k) = (a.shape()[ar - 2], a.shape()[ar - 1]);
    let (kb, n) = if options.transpose_b {
        (b.shape()[br - 1], b.shape()[br - 2])
    } else {
        (b.shape()[br - 2], b.shape()[br - 1])
    };
    if kb != k {
        let which = if options.transpose_b { "b's last" } else { "b's second-to-last" };
        return Err(shape_error(OP, a, b, format!("a's last dimension ({k}) must equal {which} dimension ({kb})")));
    }
    let batch_dims = &a.shape()[..ar - 2];
    // A shared 2-D b folds a's batch into M: one large matmul instead of many small ones.
    let (batch, rows, b_batch_stride) = if br == 2 {
        (1, numel(batch_dims) * m, 0)
    } else if &b.shape()[..br - 2] == batch_dims {
        (numel(batch_dims), m, k * n)
    } else {
        return Err(shape_error(OP, a, b, "batch dimensions must match (or b must be 2-D)"));
    };
    if let Some(bias) = options.bias {
        check_operand(OP, a, bias)?;
        if bias.shape() != [n] {
            return Err(shape_error(OP, a, bias, format!("the bias must have shape [{n}]")));
        }
    }
    let dtype = float_dtype(OP, a)?;
    let mut out_shape = batch_dims.to_vec();
    out_shape.extend([m, n]);
    let total_rows = numel(batch_dims) * m;
    let gate_rows = match options.gated_residual {
        None => 1,
        Some(GatedResidual { x, gate }) => {
            check_operand(OP, a, x)?;
            check_operand(OP, a, gate)?;
            if numel(x.shape()) != total_rows * n || x.shape().last() != Some(&n) {
                return Err(shape_error(OP, a, x, format!("the residual must have the output's shape {out_shape:?}")));
            }
            let groups = if gate.shape().len() == 2 && gate.shape()[1] == n { gate.shape()[0] } else { 0 };
            if groups == 0 || !total_rows.is_multiple_of(groups) {
                return Err(shape_error(
                    OP,
                    x,
                    gate,
                    format!("the gate must be (G, {n}) with G dividing the output's {total_rows} rows"),
                ));
            }
            total_rows / groups
        }
    };
    let out = Tensor::empty(a.device(), &out_shape, a.dtype())?;
    index_u32(OP, "elements of a", a.numel())?;
    index_u32(OP, "elements of b", b.numel())?;
    index_u32(OP, "elements of the output", out.numel())?;
    let algorithm = match options.algorithm {
        MatmulAlgorithm::Auto => MatmulAlgorithm::choose(a.device(), a.dtype(), batch, rows, n, options.transpose_b),
        MatmulAlgorithm::Skinny if rows > size::SKINNY_ROWS as usize => {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("the skinny kernel takes at most {} rows of a, not {rows}", size::SKINNY_ROWS),
            });
        }
        MatmulAlgorithm::Cooperative if a.device().caps().matrix_units == MatrixUnits::None => {
            return Err(Error::MissingFeature {
                what: "matmul's cooperative kernel".into(),
                feature: "16 x 16 f16 matrix units (cooperative matrices or tensor cores)",
            });
        }
        MatmulAlgorithm::Cooperative if dtype != DType::F16 => {
            return Err(Error::UnsupportedDType { op: OP, dtype, expected: "f16 (the matrix units multiply f16)" });
        }
        chosen => chosen,
    };
    let (family, entry, tile_m, tile_n) = match algorithm {
        MatmulAlgorithm::Tiled | MatmulAlgorithm::Auto => (Family::Matmul, "matmul_tiled", size::TILE_M, size::TILE_N),
        MatmulAlgorithm::Wide => (Family::Matmul, "matmul_wide", size::WIDE_TILE, size::WIDE_TILE),
        MatmulAlgorithm::Skinny => (Family::Matmul, "matmul_skinny", size::SKINNY_ROWS, size::SKINNY_COLS),
        MatmulAlgorithm::Naive => (Family::Matmul, "matmul_naive", size::MATMUL_SIDE, size::MATMUL_SIDE),
        MatmulAlgorithm::Cooperative => (Family::MatmulCoop, "matmul_coop", size::COOP_TILE, size::COOP_TILE),
    };
    let constants = Constants::new(family)
        .set("B_TRANSPOSED", options.transpose_b)
        .set("HAS_BIAS", options.bias.is_some())
        .set("GELU", options.gelu)
        .set("GATED_RESIDUAL", options.gated_residual.is_some());
    // Operands a launch does not use are bound to b (the layout is the same for every launch).
    let bias = options.bias.unwrap_or(b);
    let (residual, gate) = options.gated_residual.map_or((b, b), |g| (g.x, g.gate));
    let params = MatmulParams {
        m: rows as u32,
        n: n as u32,
        k: k as u32,
        a_batch_stride: (rows * k) as u32,
        b_batch_stride: b_batch_stride as u32,
        c_batch_stride: (rows * n) as u32,
        gate_rows: gate_rows.max(1) as u32,
    };
    let groups = [(n as u32).div_ceil(tile_n), (rows as u32).div_ceil(tile_m), batch as u32];
    if rows == 0 || n == 0 {
        return Ok(out);
    }
    launch(
        a,
        family,
        entry,
        dtype,
        &constants,
        &[a.arg("a"), b.arg("b"), bias.arg("bias"), residual.arg("residual"), gate.arg("gate"), out.arg_mut("out")],
        &params,
        Grid::Groups(groups),
    )?;
    Ok(out)
}

pub mod reference {
    /// x + gate\[r / gate_rows\] * y for y (rows, n) and the output row r: the fused gated residual.
    pub fn gated_residual(y: &[f64], x: &[f32], gate: &[f32], n: usize, gate_rows: usize) -> Vec<f64> {
        y.iter().enumerate().map(|(i, &v)| x[i] as f64 + v * gate[(i / n / gate_rows) * n + i % n] as f64).collect()
    }

    /// a: batch x m x k, b: (batch or 1) x k x n (or n x k when `transpose_b`), bias: n.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        transpose_b: bool,
        b_shared: bool,
    ) -> Vec<f64> {
        let mut out = vec![0.0; batch * m * n];
        for bi in 0..batch {
            let a_off = bi * m * k;
            let b_off = if b_shared { 0 } else { bi * k * n };
            for i in 0..m {
                for j in 0..n {
                    let mut acc = bias.map_or(0.0, |bias| bias[j] as f64);
                    for kk in 0..k {
                        let bv = if transpose_b { b[b_off + j * k + kk] } else { b[b_off + kk * n + j] };
                        acc += a[a_off + i * k + kk] as f64 * bv as f64;
                    }
                    out[bi * m * n + i * n + j] = acc;
                }
            }
        }
        out
    }
}
