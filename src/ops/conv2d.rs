//! 2-D convolution with stride 1 and "same" zero padding, the convolutions of the VQVAE decoder.

use super::{check_operand, elements, float_dtype, index_u32, launch, shape_error};
use crate::device::{Device, Grid, MatrixUnits};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::{Constants, Conv2dParams, Family, size};
use crate::tensor::Tensor;

/// Widest kernel supported.
pub const MAX_KERNEL: usize = 7;

// The tiled kernel's geometry (see shaders/wgsl/conv2d.wgsl).
const TILE_W: usize = size::CONV_TILE_W as usize;
const TILE_H: usize = size::CONV_TILE_H as usize;
const COUT_BLOCK: usize = size::CONV_COUT_BLOCK as usize;
const PATCH_CAP: usize = size::CONV_PATCH_CAP as usize;
const WEIGHT_CAP: usize = size::CONV_WEIGHT_CAP as usize;
const MAX_CIN_CHUNK: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Conv2dAlgorithm {
    /// Where both channel counts are at least [`GEMM_MIN_CHANNELS`], the implicit GEMM: on the matrix
    /// units for f16 where the device has them and they passed their self-check
    /// ([`Conv2dAlgorithm::Cooperative`]), else on the wide tile, whose last output channels, where
    /// they would fill at most a quarter of its last 128-row tile, go to the direct kernel
    /// ([`Conv2dAlgorithm::gemm_rows`]). The direct tiled kernel for narrower layers.
    #[default]
    Auto,
    /// 16 x 8 pixels x 32 output channels per workgroup, input patch and weights through workgroup
    /// memory.
    Tiled,
    /// Per image, y (Cout x H*W) = weight (Cout x Cin*k*k) @ im2col(x) on the wide matmul's
    /// 128 x 128 tile, the im2col matrix read from x where the tile fetches it (never stored).
    ImplicitGemm,
    /// One thread per output, straight from global memory: the benchmark baseline.
    Naive,
    /// The implicit GEMM on 16 x 16 x 16 f16 matrix units with f32 sums (wgpu's cooperative
    /// matrices or their emulation on request; CUDA's tensor cores): the cooperative matmul's 64 x 64
    /// block with the weight as A and im2col(x) as B. f16 storage only.
    Cooperative,
}

/// Below this many input or output channels the 128 x 128 GEMM tile is mostly padding (a 3-channel
/// image, a 32-channel layer), and the direct kernel's 32-channel blocks fit better.
pub const GEMM_MIN_CHANNELS: usize = 64;

impl Conv2dAlgorithm {
    /// Every kernel, for tests and benchmarks.
    pub const KERNELS: [Conv2dAlgorithm; 4] =
        [Conv2dAlgorithm::Tiled, Conv2dAlgorithm::ImplicitGemm, Conv2dAlgorithm::Naive, Conv2dAlgorithm::Cooperative];

    /// The kernel [`Conv2dAlgorithm::Auto`] runs on `device` for `dtype` storage, `cin` input and
    /// `cout` output channels and `pixels` (H x W) per image. The first call that could take the
    /// matrix units runs their self-check ([`conv_units_verified`]: a few dispatches and a readback,
    /// once per device).
    pub fn choose(device: &Device, dtype: DType, cin: usize, cout: usize, pixels: usize) -> Self {
        if cin < GEMM_MIN_CHANNELS || cout < GEMM_MIN_CHANNELS {
            return Conv2dAlgorithm::Tiled;
        }
        // Its 64-pixel blocks make twice the implicit GEMM's workgroups along x: an image past the
        // grid's limit there keeps the GEMM.
        let tile = size::COOP_TILE as usize;
        let limit = device.caps().max_groups_per_dim as usize;
        if dtype == DType::F16
            && device.caps().matrix_units == MatrixUnits::Native
            && pixels.div_ceil(tile) <= limit
            && cout.div_ceil(tile) <= limit
            && conv_units_verified(device).is_ok()
        {
            return Conv2dAlgorithm::Cooperative;
        }
        Conv2dAlgorithm::ImplicitGemm
    }

    /// The output channels [`Conv2dAlgorithm::Auto`]'s implicit GEMM computes of `cout`: all of
    /// them, or only its full 128-row tiles where the rest would fit one of the direct kernel's
    /// 32-channel blocks, which then computes them (a second launch). The official VQVAE's widest
    /// levels have 160 channels: two 128-row tiles spent 37.5% of their FMAs on padding rows. Past
    /// 32 rows the GEMM keeps them: on lavapipe the direct kernel took 3x the GEMM's time per FMA
    /// it did (at 160 -> 160 channels), so 64 rows of it cost more than a half-empty tile.
    pub fn gemm_rows(cout: usize) -> usize {
        let (wide, tail) = (size::WIDE_TILE as usize, cout % size::WIDE_TILE as usize);
        if cout > wide && tail > 0 && tail <= COUT_BLOCK { cout - tail } else { cout }
    }
}

/// Whether `device`'s matrix units compute convolutions as they should, checked once per device:
/// the cooperative kernel on a 3 x 3 convolution of 72 to 72 channels over 9 x 13 pixels with a bias
/// (two 64-row blocks, two 64-pixel blocks, 648 = 72 * 9 not a multiple of the 32-deep K step but of
/// 8, so that CUDA stages the weight with 16-byte copies as it does for the real layers), against
/// the float64 reference. Inputs are multiples of 1/8 in [-1, 1], so every product and partial sum is
/// exact in f32 and only the f16 output rounds. The error says what failed; `Auto` then keeps f16
/// convolutions on the implicit GEMM's scalar tile.
pub fn conv_units_verified(device: &Device) -> std::result::Result<(), String> {
    if device.caps().matrix_units == MatrixUnits::None {
        return Err("the device has no matrix units".into());
    }
    device.check_conv_units(|| {
        let (channels, height, width, k) = (72, 9, 13, 3);
        let (x, w, bias) = (
            super::eighths(channels * height * width, 1),
            super::eighths(channels * channels * k * k, 5),
            super::eighths(channels, 11),
        );
        let fail = |e: Error| format!("the cooperative convolution failed to run: {e}");
        let up = |v: &[f32], shape: &[usize]| Tensor::from_f32(device, shape, v, DType::F16).map_err(fail);
        let options = Conv2dOptions { bias: Some(&up(&bias, &[channels])?), algorithm: Conv2dAlgorithm::Cooperative };
        let got = conv2d_with(&up(&x, &[1, channels, height, width])?, &up(&w, &[channels, channels, k, k])?, &options)
            .and_then(|y| y.to_vec_f32())
            .map_err(fail)?;
        let want = reference::conv2d(&x, &w, Some(&bias), 1, channels, height, width, k);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            // f16 rounding of the output: half an ulp is 2^-11 relative. NaN fails too.
            if g.is_nan() || (g as f64 - w).abs() > 1e-3 * w.abs().max(1.0) {
                return Err(format!(
                    "the cooperative convolution computed {g} for element {i} of a {channels} -> {channels} \
                     channel {k}x{k} convolution over {height}x{width} pixels, not {w}"
                ));
            }
        }
        Ok(())
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Conv2dOptions<'a> {
    /// (Cout)
    pub bias: Option<&'a Tensor>,
    pub algorithm: Conv2dAlgorithm,
}

/// PyTorch `Conv2d(Cin, Cout, k, stride=1, padding=(k - 1) / 2)` for odd k <= 7:
/// x (B, Cin, H, W), weight (Cout, Cin, k, k), bias (Cout) -> (B, Cout, H, W).
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    conv2d_with(x, weight, &Conv2dOptions { bias, ..Default::default() })
}

/// Input channels per staging step of the tiled kernel for kernel size `k`.
fn cin_chunk(k: usize, cin: usize) -> usize {
    let patch = (TILE_H + k - 1) * (TILE_W + k - 1);
    (PATCH_CAP / patch).min(WEIGHT_CAP / (COUT_BLOCK * k * k)).min(MAX_CIN_CHUNK).min(cin).max(1)
}

pub fn conv2d_with(x: &Tensor, weight: &Tensor, options: &Conv2dOptions) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let [batch, cin, height, width] = x.dims(OP, "x (B, Cin, H, W)")?;
    let &[cout, w_cin, kh, kw] = weight.shape() else {
        return Err(shape_error(OP, x, weight, format!("the weight must be 4-D (Cout, {cin}, k, k)")));
    };
    if w_cin != cin {
        return Err(shape_error(
            OP,
            x,
            weight,
            format!("x has {cin} input channels but the weight expects {w_cin} (weight is (Cout, Cin, k, k))"),
        ));
    }
    if kh != kw {
        return Err(shape_error(OP, x, weight, format!("the kernel must be square, got {kh} x {kw}")));
    }
    let k = kh;
    if k % 2 == 0 || k > MAX_KERNEL {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("kernel size {k} (weight {:?}) must be odd and at most {MAX_KERNEL}", weight.shape()),
        });
    }
    check_operand(OP, x, weight)?;
    if let Some(bias) = options.bias {
        check_operand(OP, x, bias)?;
        if bias.shape() != [cout] {
            return Err(shape_error(OP, weight, bias, format!("the bias must have shape [{cout}]")));
        }
    }
    let dtype = float_dtype(OP, x)?;
    let out = Tensor::empty(x.device(), &[batch, cout, height, width], x.dtype())?;
    index_u32(OP, "elements of x", x.numel())?;
    index_u32(OP, "elements of the weight", weight.numel())?;
    index_u32(OP, "elements of the output", out.numel())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let (tiles_x, tiles_y) = (width.div_ceil(TILE_W), height.div_ceil(TILE_H));
    let params = Conv2dParams {
        batch: batch as u32,
        cin: cin as u32,
        cout: cout as u32,
        height: height as u32,
        width: width as u32,
        tiles_x: tiles_x as u32,
        tiles: index_u32(OP, "tiles", tiles_x * tiles_y)?,
        cout_blocks: cout.div_ceil(COUT_BLOCK) as u32,
        cout_start: 0,
    };
    let algorithm = match options.algorithm {
        Conv2dAlgorithm::Auto => Conv2dAlgorithm::choose(x.device(), dtype, cin, cout, height * width),
        Conv2dAlgorithm::Cooperative if dtype != DType::F16 => {
            return Err(Error::UnsupportedDType { op: OP, dtype, expected: "f16 (the matrix units multiply f16)" });
        }
        Conv2dAlgorithm::Cooperative if x.device().caps().matrix_units == MatrixUnits::None => {
            return Err(Error::MissingFeature {
                what: "conv2d's cooperative kernel".into(),
                feature: "16 x 16 f16 matrix units (cooperative matrices or tensor cores)",
            });
        }
        chosen => chosen,
    };
    // The GEMM's rows under Auto (its full tiles, the rest on the direct kernel); every row where the
    // GEMM was asked for by name, so that its own tail is what runs.
    let gemm_rows = match (options.algorithm, algorithm) {
        (Conv2dAlgorithm::Auto, Conv2dAlgorithm::ImplicitGemm) => Conv2dAlgorithm::gemm_rows(cout),
        _ => cout,
    };
    index_u32(OP, "weights per output channel", cin * k * k)?;
    let constants = |chunk: usize| {
        Constants::new(Family::Conv2d)
            .set("KSIZE", k as u32)
            .set("HAS_BIAS", options.bias.is_some())
            .set("CIN_CHUNK", chunk as u32)
    };
    let bindings = [x.arg("x"), weight.arg("weight"), options.bias.unwrap_or(weight).arg("bias"), out.arg_mut("y")];
    // The direct kernel's blocks over output channels [start, cout); only it stages input channels, so
    // the others share one pipeline for every Cin (CIN_CHUNK 1).
    let direct = |start: usize| {
        let blocks = (cout - start).div_ceil(COUT_BLOCK);
        let params = Conv2dParams { cout_start: start as u32, cout_blocks: blocks as u32, ..params };
        let grid = Grid::Linear((tiles_x * tiles_y * blocks * batch) as u64);
        launch(x, Family::Conv2d, "conv2d_tiled", dtype, &constants(cin_chunk(k, cin)), &bindings, &params, grid)
    };
    match algorithm {
        Conv2dAlgorithm::Tiled | Conv2dAlgorithm::Auto => direct(0)?,
        Conv2dAlgorithm::ImplicitGemm => {
            let wide = size::WIDE_TILE as usize;
            let groups = [(height * width).div_ceil(wide) as u32, gemm_rows.div_ceil(wide) as u32, batch as u32];
            launch(x, Family::Conv2d, "conv2d_gemm", dtype, &constants(1), &bindings, &params, Grid::Groups(groups))?;
            if gemm_rows < cout {
                direct(gemm_rows)?;
            }
        }
        Conv2dAlgorithm::Cooperative => {
            let tile = size::COOP_TILE as usize;
            let groups = [(height * width).div_ceil(tile) as u32, cout.div_ceil(tile) as u32, batch as u32];
            let constants =
                Constants::new(Family::Conv2dCoop).set("KSIZE", k as u32).set("HAS_BIAS", options.bias.is_some());
            launch(x, Family::Conv2dCoop, "matmul_coop", dtype, &constants, &bindings, &params, Grid::Groups(groups))?
        }
        Conv2dAlgorithm::Naive => {
            launch(x, Family::Conv2d, "conv2d_naive", dtype, &constants(1), &bindings, &params, elements(out.numel()))?
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Conv2dAlgorithm;

    #[test]
    fn the_gemm_keeps_its_full_tiles_and_a_tail_beyond_one_direct_block() {
        let rows: Vec<usize> = [64, 100, 128, 129, 131, 160, 161, 192, 288, 320, 640]
            .into_iter()
            .map(Conv2dAlgorithm::gemm_rows)
            .collect();
        assert_eq!(rows, [64, 100, 128, 128, 128, 128, 161, 192, 256, 320, 640]);
    }
}

pub mod reference {
    /// x (B, Cin, H, W), weight (Cout, Cin, k, k), bias (Cout) -> (B, Cout, H, W): the direct sum over
    /// in-bounds taps with padding (k - 1) / 2.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        batch: usize,
        cin: usize,
        height: usize,
        width: usize,
        k: usize,
    ) -> Vec<f64> {
        let cout = weight.len() / (cin * k * k);
        let pad = (k - 1) as isize / 2;
        let mut out = vec![0.0; batch * cout * height * width];
        for b in 0..batch {
            for o in 0..cout {
                for r in 0..height {
                    for c in 0..width {
                        let mut acc = bias.map_or(0.0, |bias| bias[o] as f64);
                        for i in 0..cin {
                            for ky in 0..k {
                                let iy = r as isize + ky as isize - pad;
                                if iy < 0 || iy >= height as isize {
                                    continue;
                                }
                                for kx in 0..k {
                                    let ix = c as isize + kx as isize - pad;
                                    if ix < 0 || ix >= width as isize {
                                        continue;
                                    }
                                    let xv = x[((b * cin + i) * height + iy as usize) * width + ix as usize];
                                    acc += weight[((o * cin + i) * k + ky) * k + kx] as f64 * xv as f64;
                                }
                            }
                        }
                        out[((b * cout + o) * height + r) * width + c] = acc;
                    }
                }
            }
        }
        out
    }
}
