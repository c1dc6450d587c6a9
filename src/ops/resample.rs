//! Spatial resampling of (B, C, H, W) tensors for the multi-scale VQVAE: bicubic upsampling and area
//! (adaptive average) downsampling between token-map scales, and the decoder's nearest x2 upsampling.

use super::{elements, float_dtype, index_u32, launch};
use crate::error::{Error, Result};
use crate::kernels::{Constants, Family, ResampleParams};
use crate::tensor::Tensor;

/// (B, C, H, W) of a 4-D input with a non-empty plane.
fn planes(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let [b, c, h, w] = x.dims(op, "x (B, C, H, W)")?;
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument { op, msg: format!("x of shape {:?} has an empty plane", x.shape()) });
    }
    Ok((b, c, h, w))
}

fn resample(op: &'static str, entry: &'static str, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (batch, channels, in_h, in_w) = planes(op, x)?;
    if out_h == 0 || out_w == 0 {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("output size {out_h} x {out_w} must be positive (input {:?})", x.shape()),
        });
    }
    let dtype = float_dtype(op, x)?;
    let out = Tensor::empty(x.device(), &[batch, channels, out_h, out_w], x.dtype())?;
    index_u32(op, "elements of x", x.numel())?;
    let n = index_u32(op, "elements of the output", out.numel())?;
    // The area windows are computed as (i + 1) * in + out - 1 in 32 bits.
    let window_end = |inp: usize, out: usize| inp.checked_add(1).and_then(|n| n.checked_mul(out)).unwrap_or(usize::MAX);
    index_u32(op, "in_h * out_h + out_h", window_end(in_h, out_h))?;
    index_u32(op, "in_w * out_w + out_w", window_end(in_w, out_w))?;
    // PyTorch's scale for an explicit output size: in / out, rounded to f32.
    let scale = |i: usize, o: usize| i as f32 / o as f32;
    let params = ResampleParams {
        planes: (batch * channels) as u32,
        in_h: in_h as u32,
        in_w: in_w as u32,
        out_h: out_h as u32,
        out_w: out_w as u32,
        scale_h: scale(in_h, out_h),
        scale_w: scale(in_w, out_w),
    };
    let args = [x.arg("x"), out.arg_mut("y")];
    launch(x, Family::Resample, entry, dtype, &Constants::new(Family::Resample), &args, &params, elements(n as usize))?;
    Ok(out)
}

/// PyTorch `F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False)` (no
/// antialias, so it also samples when the output is smaller): (B, C, H, W) -> (B, C, out_h, out_w).
pub fn upsample_bicubic(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    resample("upsample_bicubic", "upsample_bicubic", x, out_h, out_w)
}

/// PyTorch `F.interpolate(x, size=(out_h, out_w), mode="area")` = `adaptive_avg_pool2d`:
/// (B, C, H, W) -> (B, C, out_h, out_w).
pub fn downsample_area(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    resample("downsample_area", "downsample_area", x, out_h, out_w)
}

/// Nearest-neighbour x2 upsampling (the decoder's `Upsample` before its conv):
/// (B, C, H, W) -> (B, C, 2H, 2W).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "upsample_nearest2x";
    let (_, _, h, w) = planes(OP, x)?;
    let (out_h, out_w) = (
        h.checked_mul(2).ok_or_else(|| Error::InvalidArgument { op: OP, msg: format!("H = {h} overflows") })?,
        w.checked_mul(2).ok_or_else(|| Error::InvalidArgument { op: OP, msg: format!("W = {w} overflows") })?,
    );
    resample(OP, "upsample_nearest2x", x, out_h, out_w)
}

/// Float64 references, written from the definitions. `x` holds `planes` = B * C planes of
/// in_h x in_w, row-major; the result holds the same planes at the output size.
pub mod reference {
    /// Keys' cubic convolution kernel with a = -0.75 (PyTorch's), as a function of the distance.
    pub fn keys_cubic(d: f64) -> f64 {
        const A: f64 = -0.75;
        let d = d.abs();
        if d <= 1.0 {
            (A + 2.0) * d.powi(3) - (A + 3.0) * d.powi(2) + 1.0
        } else if d < 2.0 {
            A * d.powi(3) - 5.0 * A * d.powi(2) + 8.0 * A * d - 4.0 * A
        } else {
            0.0
        }
    }

    /// The 4 taps (clamped to 0..n) and their weights for output index `dst` of `n_in` -> `n_out`
    /// (half-pixel centres, align_corners = false).
    fn bicubic_taps(dst: usize, n_in: usize, n_out: usize) -> [(usize, f64); 4] {
        let src = (dst as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5;
        let base = src.floor();
        std::array::from_fn(|k| {
            let tap = base + k as f64 - 1.0;
            (tap.clamp(0.0, n_in as f64 - 1.0) as usize, keys_cubic(src - tap))
        })
    }

    /// The 2-D 4 x 4 weighted sum of bicubic interpolation.
    pub fn upsample_bicubic(
        x: &[f32],
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(planes * out_h * out_w);
        for plane in x.chunks(in_h * in_w).take(planes) {
            for oy in 0..out_h {
                let rows = bicubic_taps(oy, in_h, out_h);
                for ox in 0..out_w {
                    let cols = bicubic_taps(ox, in_w, out_w);
                    let mut acc = 0.0;
                    for &(r, wy) in &rows {
                        for &(c, wx) in &cols {
                            acc += wy * wx * plane[r * in_w + c] as f64;
                        }
                    }
                    out.push(acc);
                }
            }
        }
        out
    }

    /// Adaptive average pooling: cell i covers [floor(i in / out), ceil((i + 1) in / out)).
    pub fn downsample_area(x: &[f32], planes: usize, in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Vec<f64> {
        let window = |i: usize, n_in: usize, n_out: usize| {
            let start = (i as f64 * n_in as f64 / n_out as f64).floor() as usize;
            let end = ((i + 1) as f64 * n_in as f64 / n_out as f64).ceil() as usize;
            start..end
        };
        let mut out = Vec::with_capacity(planes * out_h * out_w);
        for plane in x.chunks(in_h * in_w).take(planes) {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let (rows, cols) = (window(oy, in_h, out_h), window(ox, in_w, out_w));
                    let count = (rows.len() * cols.len()) as f64;
                    let sum: f64 = rows
                        .flat_map(|r| cols.clone().map(move |c| (r, c)))
                        .map(|(r, c)| plane[r * in_w + c] as f64)
                        .sum();
                    out.push(sum / count);
                }
            }
        }
        out
    }

    pub fn upsample_nearest2x(x: &[f32], planes: usize, in_h: usize, in_w: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(planes * 4 * in_h * in_w);
        for plane in x.chunks(in_h * in_w).take(planes) {
            for oy in 0..2 * in_h {
                for ox in 0..2 * in_w {
                    out.push(plane[(oy / 2) * in_w + ox / 2] as f64);
                }
            }
        }
        out
    }
}
