//! Transformer-block glue kernels of VAR: the fused qkv split with cosine normalisation that feeds a
//! KV cache, and the AdaLN-gated residual add.

use super::{check_operand, elements, float_dtype, index_u32, launch, rows as row_grid, shape_error};
use crate::error::{Error, Result};
use crate::kernels::{Constants, Family, QkvParams, ResidualParams};
use crate::tensor::{DType, Tensor};

/// The attention inputs of one step: `qkv` (B, T, 3 * H * D) from the fused projection (its bias
/// already added), `head_scale` (H) f32 temperatures, and the caches (B, cap, H, D) that receive the
/// keys and values of the T new tokens at token `start`.
pub struct QkvHeads<'a> {
    pub qkv: &'a Tensor,
    pub heads: usize,
    /// Cosine attention: q and k L2-normalised per head, q times `head_scale[h]`.
    pub l2_norm: bool,
    pub head_scale: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub start: usize,
}

/// Returns q (B, T, H, D) and writes K and V into the caches at `start..start + T`.
pub fn qkv_heads(args: &QkvHeads) -> Result<Tensor> {
    const OP: &str = "qkv_heads";
    let qkv = args.qkv;
    let dtype = float_dtype(OP, qkv)?;
    let [batch, tokens, width3] = qkv.dims(OP, "qkv (B, T, 3C)")?;
    let heads = args.heads;
    if heads == 0 || !width3.is_multiple_of(3 * heads) || width3 == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("qkv width {width3} is not 3 * heads ({heads}) * head_dim"),
        });
    }
    let dim = width3 / 3 / heads;
    if args.k_cache.shape() != args.v_cache.shape() {
        return Err(shape_error(OP, args.k_cache, args.v_cache, "the key and value caches must have the same shape"));
    }
    for cache in [args.k_cache, args.v_cache] {
        check_operand(OP, qkv, cache)?;
        match cache.shape() {
            &[b, cap, h, d] if b == batch && h == heads && d == dim && args.start + tokens <= cap => {}
            _ => {
                return Err(shape_error(
                    OP,
                    qkv,
                    cache,
                    format!(
                        "the cache must be ({batch}, cap, {heads}, {dim}) with room for {tokens} tokens at {}",
                        args.start
                    ),
                ));
            }
        }
    }
    if args.head_scale.dtype() != DType::F32 || args.head_scale.shape() != [heads] {
        return Err(shape_error(OP, qkv, args.head_scale, format!("head_scale must be f32 [{heads}]")));
    }
    let q = Tensor::empty(qkv.device(), &[batch, tokens, heads, dim], qkv.dtype())?;
    index_u32(OP, "cache elements", args.k_cache.numel())?;
    let rows = batch * tokens;
    if rows == 0 {
        return Ok(q);
    }
    let cap = args.k_cache.shape()[1];
    let constants = Constants::new(Family::QkvHeads).set("L2_NORM", args.l2_norm);
    let params = QkvParams {
        rows: rows as u32,
        tokens: tokens as u32,
        heads: heads as u32,
        dim: dim as u32,
        cap: cap as u32,
        start: args.start as u32,
    };
    let bindings = [
        qkv.arg("qkv"),
        args.head_scale.arg("head_scale"),
        q.arg_mut("q"),
        args.k_cache.arg_mut("k_cache"),
        args.v_cache.arg_mut("v_cache"),
    ];
    launch(qkv, Family::QkvHeads, "qkv_heads", dtype, &constants, &bindings, &params, row_grid(rows * heads))?;
    Ok(q)
}

/// x + y * gate\[b\] for x, y (B, …, C) and gate (B, C).
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    const OP: &str = "gated_residual";
    check_operand(OP, x, y)?;
    check_operand(OP, x, gate)?;
    if x.shape() != y.shape() {
        return Err(shape_error(OP, x, y, "x and y must have the same shape"));
    }
    let ok = x.shape().len() >= 2
        && gate.shape().len() == 2
        && gate.shape()[0] == x.shape()[0]
        && Some(&gate.shape()[1]) == x.shape().last();
    if !ok {
        return Err(shape_error(OP, x, gate, "x must be (B, …, C) with gate (B, C)"));
    }
    let dtype = float_dtype(OP, x)?;
    let out = Tensor::empty(x.device(), x.shape(), x.dtype())?;
    let n = index_u32(OP, "elements", x.numel())?;
    if n == 0 {
        return Ok(out);
    }
    let channels = gate.shape()[1];
    let per_batch = x.numel() / x.shape()[0];
    let params = ResidualParams { n, per_batch: per_batch as u32, channels: channels as u32 };
    launch(
        x,
        Family::Residual,
        "gated_residual",
        dtype,
        &Constants::new(Family::Residual),
        &[x.arg("x"), y.arg("y"), gate.arg("gate"), out.arg_mut("out")],
        &params,
        elements(x.numel()),
    )?;
    Ok(out)
}

/// Float64 references.
pub mod reference {
    /// q (R, H, D), k and v (R, H, D) of qkv (R, 3, H, D) with the cosine normalisation.
    pub fn qkv_heads(
        qkv: &[f32],
        rows: usize,
        heads: usize,
        dim: usize,
        l2_norm: bool,
        head_scale: &[f32],
    ) -> [Vec<f64>; 3] {
        let width = heads * dim;
        let mut out = [vec![0.0; rows * width], vec![0.0; rows * width], vec![0.0; rows * width]];
        for r in 0..rows {
            for h in 0..heads {
                for (part, o) in out.iter_mut().enumerate() {
                    let base = r * 3 * width + part * width + h * dim;
                    let v: Vec<f64> = qkv[base..base + dim].iter().map(|&x| x as f64).collect();
                    let scale = match (l2_norm, part) {
                        (true, 0) => head_scale[h] as f64 / v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12),
                        (true, 1) => 1.0 / v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12),
                        _ => 1.0,
                    };
                    for d in 0..dim {
                        o[(r * heads + h) * dim + d] = v[d] * scale;
                    }
                }
            }
        }
        out
    }
}
