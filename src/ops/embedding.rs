//! Embedding gather: rows of a (vocab, dim) table picked by u32 ids.

use super::{elements, float_dtype, index_u32, launch};
use crate::error::{Error, Result};
use crate::kernels::{Constants, EmbeddingParams, Family};
use crate::tensor::{DType, Tensor, check_same_device};

/// out[..., :] = table[ids[...], :]; shape ids.shape + [dim]. An id outside the table gives a NaN
/// row (ids usually come from the GPU, where no error can be raised without a readback).
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    gather("embedding", ids, table, false)
}

/// The rows of ids (B, n) as channels: out[b, c, t] = table[ids[b, t], c], shape (B, dim, n). The
/// VQVAE's token map in one kernel, where `embedding` would need a transpose after it.
pub fn embedding_channels_first(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    gather("embedding_channels_first", ids, table, true)
}

fn gather(op: &'static str, ids: &Tensor, table: &Tensor, channels_first: bool) -> Result<Tensor> {
    check_same_device(op, ids, table)?;
    if ids.dtype() != DType::U32 {
        return Err(Error::UnsupportedDType { op, dtype: ids.dtype(), expected: "u32 ids" });
    }
    let [vocab, dim] = table.dims(op, "the table (vocab, dim)")?;
    let dtype = float_dtype(op, table)?;
    let (shape, tokens) = if channels_first {
        let [batch, tokens] = ids.dims(op, "ids (B, n)")?;
        (vec![batch, dim, tokens], tokens)
    } else {
        let mut shape = ids.shape().to_vec();
        shape.push(dim);
        (shape, 1)
    };
    let out = Tensor::empty(table.device(), &shape, table.dtype())?;
    let params = EmbeddingParams {
        n: index_u32(op, "output elements", out.numel())?,
        dim: dim as u32,
        vocab: index_u32(op, "vocab", vocab)?,
        tokens: tokens.max(1) as u32,
    };
    launch(
        table,
        Family::Embedding,
        op,
        dtype,
        &Constants::new(Family::Embedding),
        &[ids.arg("ids"), table.arg("table"), out.arg_mut("out")],
        &params,
        elements(out.numel()),
    )?;
    Ok(out)
}

pub mod reference {
    /// NaN rows for ids outside the table, as the kernel does.
    pub fn embedding(ids: &[u32], table: &[f32], dim: usize) -> Vec<f64> {
        let vocab = table.len() / dim.max(1);
        ids.iter()
            .flat_map(|&id| {
                let id = id as usize;
                (0..dim).map(move |c| if id < vocab { table[id * dim + c] as f64 } else { f64::NAN })
            })
            .collect()
    }

    /// (B, dim, n) of ids (B, n).
    pub fn embedding_channels_first(ids: &[u32], tokens: usize, table: &[f32], dim: usize) -> Vec<f64> {
        let rows = embedding(ids, table, dim);
        let batch = ids.len() / tokens.max(1);
        let mut out = vec![0.0; rows.len()];
        for b in 0..batch {
            for t in 0..tokens {
                for c in 0..dim {
                    out[(b * dim + c) * tokens + t] = rows[(b * tokens + t) * dim + c];
                }
            }
        }
        out
    }
}
