//! Normalisations and softmax (one workgroup per row, subgroup or workgroup-tree reductions), and
//! the AdaLN modulation x * (1 + scale) + shift.

use super::{check_operand, elements, float_dtype, index_u32, launch, rows as row_grid, shape_error};
use crate::error::{Error, Result};
use crate::kernels::{Constants, Family, NormParams};
use crate::tensor::Tensor;

/// What the `weight` and `bias` operands of a norm kernel are.
struct Affine<'a> {
    weight: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
    /// Multiply by (1 + weight) (AdaLN) rather than by weight.
    modulate: bool,
    /// Consecutive rows sharing one weight/bias row.
    rows_per_affine: usize,
    /// gated_rms_norm's gate z, bound in the bias slot (the entry has no bias).
    gate: Option<&'a Tensor>,
}

/// The sizes of one norm launch, before they become [`NormParams`].
#[derive(Default)]
struct NormSizes {
    rows: usize,
    cols: usize,
    eps: f32,
    channels_per_group: usize,
    spatial: usize,
    scale: f32,
}

fn run(op: &'static str, entry: &'static str, x: &Tensor, affine: &Affine, p: NormSizes) -> Result<Tensor> {
    let dtype = float_dtype(op, x)?;
    for operand in [affine.weight, affine.bias, affine.gate].into_iter().flatten() {
        check_operand(op, x, operand)?;
    }
    if !p.eps.is_finite() || p.eps < 0.0 || !p.scale.is_finite() {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("eps must be finite and >= 0 (got {}), scale finite (got {})", p.eps, p.scale),
        });
    }
    let out = Tensor::empty(x.device(), x.shape(), x.dtype())?;
    index_u32(op, "elements", x.numel())?;
    let constants = Constants::new(Family::Norm)
        .set("HAS_WEIGHT", affine.weight.is_some())
        .set("HAS_BIAS", affine.bias.is_some())
        .set("MODULATE", affine.modulate);
    let params = NormParams {
        rows: p.rows as u32,
        cols: p.cols as u32,
        rows_per_affine: affine.rows_per_affine.max(1) as u32,
        eps: p.eps,
        channels_per_group: p.channels_per_group as u32,
        spatial: p.spatial as u32,
        scale: p.scale,
    };
    let args = [
        x.arg("x"),
        affine.weight.unwrap_or(x).arg("weight"),
        affine.bias.or(affine.gate).unwrap_or(x).arg("bias"),
        out.arg_mut("out"),
    ];
    // modulate is elementwise; the others reduce one row per workgroup.
    let grid = if entry == "modulate" { elements(x.numel()) } else { row_grid(p.rows) };
    launch(x, Family::Norm, entry, dtype, &constants, &args, &params, grid)?;
    Ok(out)
}

fn last_dim(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape().last() {
        Some(&cols) if cols > 0 => Ok((x.numel() / cols, cols)),
        _ => Err(Error::InvalidArgument {
            op,
            msg: format!("needs a non-empty last dimension, got shape {:?}", x.shape()),
        }),
    }
}

fn check_channel_vector(op: &'static str, x: &Tensor, v: Option<&Tensor>, channels: usize) -> Result<()> {
    match v {
        Some(v) if v.shape() != [channels] => {
            Err(shape_error(op, x, v, format!("weight and bias must have shape [{channels}]")))
        }
        _ => Ok(()),
    }
}

/// LayerNorm over the last dimension, with optional per-channel weight and bias.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let (rows, cols) = last_dim(OP, x)?;
    check_channel_vector(OP, x, weight, cols)?;
    check_channel_vector(OP, x, bias, cols)?;
    let affine = Affine { weight, bias, modulate: false, rows_per_affine: rows, gate: None };
    run(OP, "layer_norm", x, &affine, NormSizes { rows, cols, eps, ..Default::default() })
}

/// Checks that scale and shift are (B, C) for x (B, L, C) and returns (B, rows per batch entry).
fn check_modulation(op: &'static str, x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<usize> {
    let (rows, cols) = last_dim(op, x)?;
    for v in [scale, shift] {
        let ok = v.shape().len() == 2 && v.shape()[1] == cols && v.shape()[0] > 0 && x.shape()[0] == v.shape()[0];
        if x.shape().len() < 2 || !ok {
            return Err(shape_error(op, x, v, "x must be (B, …, C) with scale and shift (B, C)"));
        }
    }
    Ok(rows / scale.shape()[0])
}

/// AdaLN: LayerNorm (no affine) then x * (1 + scale[b]) + shift[b], fused; x (B, …, C), scale/shift (B, C).
pub fn adaln_layer_norm(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "adaln_layer_norm";
    let rows_per_affine = check_modulation(OP, x, scale, shift)?;
    let (rows, cols) = last_dim(OP, x)?;
    let affine = Affine { weight: Some(scale), bias: Some(shift), modulate: true, rows_per_affine, gate: None };
    run(OP, "layer_norm", x, &affine, NormSizes { rows, cols, eps, ..Default::default() })
}

/// x * (1 + scale[b]) + shift[b] for x (B, …, C) and scale/shift (B, C).
pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    const OP: &str = "modulate";
    let rows_per_affine = check_modulation(OP, x, scale, shift)?;
    let (rows, cols) = last_dim(OP, x)?;
    let affine = Affine { weight: Some(scale), bias: Some(shift), modulate: true, rows_per_affine, gate: None };
    run(OP, "modulate", x, &affine, NormSizes { rows, cols, ..Default::default() })
}

/// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let (rows, cols) = last_dim(OP, x)?;
    check_channel_vector(OP, x, weight, cols)?;
    let affine = Affine { weight, bias: None, modulate: false, rows_per_affine: rows, gate: None };
    run(OP, "rms_norm", x, &affine, NormSizes { rows, cols, eps, ..Default::default() })
}

/// Mamba-2's gated RMSNorm (norm_before_gate=False): rms_norm(x * silu(z)) over the last dimension,
/// times `weight`, in one kernel. The gated value is rounded to the storage type as the silu and mul
/// kernels would store it, so it equals `rms_norm(&mul(x, &silu(z)?)?, weight, eps)` exactly.
pub fn gated_rms_norm(x: &Tensor, z: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    const OP: &str = "gated_rms_norm";
    if z.shape() != x.shape() {
        return Err(shape_error(OP, x, z, "the gate z must have x's shape"));
    }
    let (rows, cols) = last_dim(OP, x)?;
    check_channel_vector(OP, x, weight, cols)?;
    let affine = Affine { weight, bias: None, modulate: false, rows_per_affine: rows, gate: Some(z) };
    run(OP, "gated_rms_norm", x, &affine, NormSizes { rows, cols, eps, ..Default::default() })
}

/// GroupNorm over x (N, C, …spatial) with `groups` dividing C and optional per-channel affine.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "group_norm";
    let shape = x.shape();
    if shape.len() < 2 || shape[1] == 0 {
        return Err(Error::InvalidArgument { op: OP, msg: format!("x must be (N, C, …) with C > 0, got {shape:?}") });
    }
    let channels = shape[1];
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("{groups} groups do not divide {channels} channels"),
        });
    }
    check_channel_vector(OP, x, weight, channels)?;
    check_channel_vector(OP, x, bias, channels)?;
    let spatial: usize = shape[2..].iter().product();
    let affine = Affine { weight, bias, modulate: false, rows_per_affine: usize::MAX, gate: None };
    let params = NormSizes {
        rows: shape[0] * groups,
        cols: channels,
        eps,
        channels_per_group: channels / groups,
        spatial,
        ..Default::default()
    };
    run(OP, "group_norm", x, &affine, params)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    softmax_scaled(x, 1.0)
}

/// softmax(scale * x) over the last dimension.
pub fn softmax_scaled(x: &Tensor, scale: f32) -> Result<Tensor> {
    const OP: &str = "softmax";
    let (rows, cols) = last_dim(OP, x)?;
    let affine = Affine { weight: None, bias: None, modulate: false, rows_per_affine: rows, gate: None };
    run(OP, "softmax", x, &affine, NormSizes { rows, cols, scale, ..Default::default() })
}

pub mod reference {
    fn mean_var(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    /// x: rows x cols; weight/bias: cols.
    pub fn layer_norm(x: &[f32], cols: usize, weight: Option<&[f32]>, bias: Option<&[f32]>, eps: f64) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|row| {
                let (mean, var) = mean_var(row);
                let rstd = 1.0 / (var + eps).sqrt();
                row.iter().enumerate().map(move |(c, &v)| {
                    let y = (v as f64 - mean) * rstd;
                    let y = weight.map_or(y, |w| y * w[c] as f64);
                    bias.map_or(y, |b| y + b[c] as f64)
                })
            })
            .collect()
    }

    /// x: (B, rows_per_batch, C); scale/shift: (B, C). `normalize` = fused LayerNorm first.
    pub fn modulate(
        x: &[f32],
        cols: usize,
        scale: &[f32],
        shift: &[f32],
        batches: usize,
        normalize: Option<f64>,
    ) -> Vec<f64> {
        let per_batch = x.len() / batches;
        let normed: Vec<f64> = match normalize {
            Some(eps) => layer_norm(x, cols, None, None, eps),
            None => x.iter().map(|&v| v as f64).collect(),
        };
        normed
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (b, c) = (i / per_batch, i % cols);
                v * (1.0 + scale[b * cols + c] as f64) + shift[b * cols + c] as f64
            })
            .collect()
    }

    /// rms_norm(x * silu(z)) with the gated value as it is stored (`gated`, already rounded).
    pub fn gated_rms_norm(gated: &[f32], cols: usize, weight: Option<&[f32]>, eps: f64) -> Vec<f64> {
        rms_norm(gated, cols, weight, eps)
    }

    pub fn rms_norm(x: &[f32], cols: usize, weight: Option<&[f32]>, eps: f64) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|row| {
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
                let r = 1.0 / (ms + eps).sqrt();
                row.iter().enumerate().map(move |(c, &v)| v as f64 * r * weight.map_or(1.0, |w| w[c] as f64))
            })
            .collect()
    }

    /// x: (N, C, spatial).
    pub fn group_norm(
        x: &[f32],
        channels: usize,
        spatial: usize,
        groups: usize,
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        eps: f64,
    ) -> Vec<f64> {
        let per_group = channels / groups * spatial;
        x.chunks(per_group)
            .enumerate()
            .flat_map(|(gi, chunk)| {
                let (mean, var) = mean_var(chunk);
                let rstd = 1.0 / (var + eps).sqrt();
                let first_channel = (gi % groups) * (channels / groups);
                chunk.iter().enumerate().map(move |(i, &v)| {
                    let c = first_channel + i / spatial;
                    let y = (v as f64 - mean) * rstd;
                    let y = weight.map_or(y, |w| y * w[c] as f64);
                    bias.map_or(y, |b| y + b[c] as f64)
                })
            })
            .collect()
    }

    pub fn softmax(x: &[f32], cols: usize, scale: f64) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|row| {
                let max = row.iter().map(|&v| scale * v as f64).fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = row.iter().map(|&v| (scale * v as f64 - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                exps.into_iter().map(move |e| e / sum)
            })
            .collect()
    }
}
