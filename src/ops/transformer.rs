//! Transformer-block glue kernels of VAR: the fused qkv split with cosine normalisation that feeds a
//! KV cache (alone, or fused with the attention that follows it), and the AdaLN-gated residual add.

use super::attention::{
    AttentionAlgorithm, AttentionKernel, AttentionLayout, AttentionOptions, MAX_HEAD_DIM, attention,
};
use super::{check_operand, elements, float_dtype, index_u32, launch, rows as row_grid, shape_error};
use crate::device::{AttentionDesign, Grid};
use crate::error::{Error, Result};
use crate::kernels::{Constants, Family, QkvParams, ResidualParams};
use crate::tensor::{DType, Tensor, check_same_device};

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

/// The shape of one [`QkvHeads`] call, checked.
struct QkvShape {
    batch: usize,
    tokens: usize,
    dim: usize,
    cap: usize,
    dtype: DType,
}

impl QkvShape {
    fn check(op: &'static str, args: &QkvHeads) -> Result<Self> {
        let qkv = args.qkv;
        let dtype = float_dtype(op, qkv)?;
        let [batch, tokens, width3] = qkv.dims(op, "qkv (B, T, 3C)")?;
        let heads = args.heads;
        // width3 / 3, not 3 * heads: the heads are the caller's number and may be any usize.
        if heads == 0 || width3 == 0 || !width3.is_multiple_of(3) || !(width3 / 3).is_multiple_of(heads) {
            return Err(Error::InvalidArgument {
                op,
                msg: format!("qkv width {width3} is not 3 * heads ({heads}) * head_dim"),
            });
        }
        let dim = width3 / 3 / heads;
        if args.k_cache.shape() != args.v_cache.shape() {
            return Err(shape_error(
                op,
                args.k_cache,
                args.v_cache,
                "the key and value caches must have the same shape",
            ));
        }
        for cache in [args.k_cache, args.v_cache] {
            check_operand(op, qkv, cache)?;
            match cache.shape() {
                &[b, cap, h, d]
                    if b == batch
                        && h == heads
                        && d == dim
                        && args.start.checked_add(tokens).is_some_and(|end| end <= cap) => {}
                _ => {
                    return Err(shape_error(
                        op,
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
            return Err(shape_error(op, qkv, args.head_scale, format!("head_scale must be f32 [{heads}]")));
        }
        check_same_device(op, qkv, args.head_scale)?;
        index_u32(op, "cache elements", args.k_cache.numel())?;
        index_u32(op, "qkv elements", qkv.numel())?;
        Ok(Self { batch, tokens, dim, cap: args.k_cache.shape()[1], dtype })
    }

    fn params(&self, args: &QkvHeads, scale: f32) -> QkvParams {
        QkvParams {
            rows: (self.batch * self.tokens) as u32,
            tokens: self.tokens as u32,
            heads: args.heads as u32,
            dim: self.dim as u32,
            cap: self.cap as u32,
            start: args.start as u32,
            scale,
        }
    }
}

/// Returns q (B, T, H, D) and writes K and V into the caches at `start..start + T`.
pub fn qkv_heads(args: &QkvHeads) -> Result<Tensor> {
    const OP: &str = "qkv_heads";
    let shape = QkvShape::check(OP, args)?;
    let qkv = args.qkv;
    let q = Tensor::empty(qkv.device(), &[shape.batch, shape.tokens, args.heads, shape.dim], shape.dtype)?;
    let rows = shape.batch * shape.tokens;
    if rows == 0 {
        return Ok(q);
    }
    let constants = Constants::new(Family::QkvHeads).set("L2_NORM", args.l2_norm);
    let bindings = [
        qkv.arg("qkv"),
        args.head_scale.arg("head_scale"),
        q.arg_mut("q"),
        args.k_cache.arg_mut("k_cache"),
        args.v_cache.arg_mut("v_cache"),
    ];
    let params = shape.params(args, 1.0);
    launch(
        qkv,
        Family::QkvHeads,
        "qkv_heads",
        shape.dtype,
        &constants,
        &bindings,
        &params,
        row_grid(rows * args.heads),
    )?;
    Ok(q)
}

/// [`qkv_heads`] followed by the attention of the T new tokens over keys `0..start + T` of the
/// caches: returns softmax(`scale` * q k^T) v as (B, T, H, D) and writes K and V into the caches as
/// [`qkv_heads`] does. Cache rows before `start` must hold earlier calls' keys and values (already
/// normalised). `scale` is the softmax scale: 1 for cosine attention, whose temperature is in q.
///
/// On wgpu this is one kernel: the new keys are read from `qkv` and normalised in the attention
/// tile, so no workgroup waits for another's cache writes. With f16 storage and matrix units it runs
/// on them where [`AttentionAlgorithm::Auto`] would for a dense call of the same rows
/// ([`qkv_attention_with`]). On CUDA it is the two launches, which keeps f16 attention on the
/// tensor-core kernel.
pub fn qkv_attention(args: &QkvHeads, scale: f32) -> Result<Tensor> {
    qkv_attention_with(args, scale, AttentionAlgorithm::Auto)
}

/// [`qkv_attention`] on the kernel `algorithm` names: `Scalar` (attention_tile.wgsl's machinery),
/// `Cooperative` (16 x 16 f16 matrix units, attention_coop.wgsl's machinery: f16 only, a typed error
/// where the device has no units or the tiles do not fit), or `Auto`, which takes the units for f16
/// calls of at least [`super::COOP_MIN_ROWS`] new tokens on a device whose units are native and pass
/// their self-check.
pub fn qkv_attention_with(args: &QkvHeads, scale: f32, algorithm: AttentionAlgorithm) -> Result<Tensor> {
    const OP: &str = "qkv_attention";
    let shape = QkvShape::check(OP, args)?;
    if !scale.is_finite() {
        return Err(Error::InvalidArgument { op: OP, msg: format!("softmax scale {scale} is not finite") });
    }
    if shape.dim > MAX_HEAD_DIM {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("head_dim {} is outside the supported range 1..={MAX_HEAD_DIM}", shape.dim),
        });
    }
    let qkv = args.qkv;
    // Before anything runs: an algorithm the device cannot serve is refused with nothing written.
    let rows_and_keys = (shape.tokens, args.start + shape.tokens);
    let kernel = AttentionKernel::choose(qkv.device(), algorithm, shape.dtype, shape.dim, rows_and_keys)?;
    if qkv.device().caps().attention == AttentionDesign::ScoreTiles {
        let q = qkv_heads(args)?;
        let options = AttentionOptions {
            scale: Some(scale),
            kv_len: Some(args.start + shape.tokens),
            layout: AttentionLayout::TokensMajor,
            algorithm,
        };
        return attention(&q, args.k_cache, args.v_cache, &options);
    }
    let out = Tensor::empty(qkv.device(), &[shape.batch, shape.tokens, args.heads, shape.dim], shape.dtype)?;
    if shape.batch * shape.tokens == 0 {
        return Ok(out);
    }
    let (family, constants) = match kernel {
        AttentionKernel::Scalar(tiles) => (Family::QkvHeads, tiles.constants(Family::QkvHeads, shape.dim)),
        AttentionKernel::Cooperative(tiles) => {
            (Family::QkvAttentionCoop, tiles.constants(Family::QkvAttentionCoop, shape.dim))
        }
    };
    let constants = constants.set("L2_NORM", args.l2_norm);
    let bindings = [
        qkv.arg("qkv"),
        args.head_scale.arg("head_scale"),
        out.arg_mut("out"),
        args.k_cache.arg_mut("k_cache"),
        args.v_cache.arg_mut("v_cache"),
    ];
    let params = shape.params(args, scale);
    let grid = Grid::Batched {
        groups: shape.tokens.div_ceil(kernel.block_q()) as u64,
        batch: index_u32(OP, "batch * heads", shape.batch * args.heads)?,
    };
    launch(qkv, family, "qkv_attention", shape.dtype, &constants, &bindings, &params, grid)?;
    Ok(out)
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
