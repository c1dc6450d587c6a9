//! Embedding gather: rows of a (vocab, dim) table picked by u32 ids.

use super::{elements, float_dtype, index_u32, launch};
use crate::error::{Error, Result};
use crate::kernels::{Constants, EmbeddingParams, Family};
use crate::tensor::{DType, Tensor, check_same_device};

/// out[..., :] = table[ids[...], :]; shape ids.shape + [dim]. An id outside the table gives a NaN
/// row (ids usually come from the GPU, where no error can be raised without a readback).
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    check_same_device(OP, ids, table)?;
    if ids.dtype() != DType::U32 {
        return Err(Error::UnsupportedDType { op: OP, dtype: ids.dtype(), expected: "u32 ids" });
    }
    let [vocab, dim] = table.dims(OP, "the table (vocab, dim)")?;
    let dtype = float_dtype(OP, table)?;
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    let out = Tensor::empty(table.device(), &shape, table.dtype())?;
    let params = EmbeddingParams {
        n: index_u32(OP, "output elements", out.numel())?,
        dim: dim as u32,
        vocab: index_u32(OP, "vocab", vocab)?,
    };
    launch(
        table,
        Family::Embedding,
        "embedding",
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
}
