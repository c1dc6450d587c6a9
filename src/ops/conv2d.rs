//! 2-D convolution with stride 1 and "same" zero padding, the convolutions of the VQVAE decoder.

use super::{check_operand, elements, float_dtype, index_u32, launch, shape_error};
use crate::device::Grid;
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
    /// The implicit GEMM where both channel counts are at least [`GEMM_MIN_CHANNELS`], the direct
    /// tiled kernel for narrower layers; a GEMM's last output channels, where they would fill at most
    /// a quarter of its last 128-row tile, go to the direct kernel ([`Conv2dAlgorithm::gemm_rows`]).
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
}

/// Below this many input or output channels the 128 x 128 GEMM tile is mostly padding (a 3-channel
/// image, a 32-channel layer), and the direct kernel's 32-channel blocks fit better.
pub const GEMM_MIN_CHANNELS: usize = 64;

impl Conv2dAlgorithm {
    /// Every kernel, for tests and benchmarks.
    pub const KERNELS: [Conv2dAlgorithm; 3] =
        [Conv2dAlgorithm::Tiled, Conv2dAlgorithm::ImplicitGemm, Conv2dAlgorithm::Naive];

    /// The kernel [`Conv2dAlgorithm::Auto`] runs for `cin` input and `cout` output channels.
    pub fn choose(cin: usize, cout: usize) -> Self {
        if cin >= GEMM_MIN_CHANNELS && cout >= GEMM_MIN_CHANNELS {
            Conv2dAlgorithm::ImplicitGemm
        } else {
            Conv2dAlgorithm::Tiled
        }
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
        Conv2dAlgorithm::Auto => Conv2dAlgorithm::choose(cin, cout),
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
