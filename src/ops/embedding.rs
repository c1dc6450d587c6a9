//! Embedding gather: rows of a (vocab, dim) table picked by u32 ids.

use super::{dispatch_elements, index_u32, variant_for};
use crate::device::launch::Kernel;
use crate::error::{Error, Result};
use crate::shaders::EMBEDDING;
use crate::tensor::{DType, Tensor, check_same_device};

/// out[..., :] = table[ids[...], :]; shape ids.shape + [dim]. An id outside the table gives a NaN
/// row (ids usually come from the GPU, where no error can be raised without a readback).
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    check_same_device(OP, ids, table)?;
    if ids.dtype() != DType::U32 {
        return Err(Error::UnsupportedDType { op: OP, dtype: ids.dtype(), expected: "u32 ids" });
    }
    let &[vocab, dim] = table.shape() else {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("the table must be 2-D (vocab, dim), got shape {:?}", table.shape()),
        });
    };
    let variant = variant_for(table, &EMBEDDING, OP)?;
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    let out = Tensor::empty(table.device(), &shape, table.dtype())?;
    let n = index_u32(OP, "output elements", out.numel())?;
    let kernel = Kernel { family: &EMBEDDING, entry: "embedding", variant, constants: &[] };
    dispatch_elements(
        table,
        &kernel,
        &[ids.bind("ids", false), table.bind("table", false), out.bind("out", true)],
        &[n, dim as u32, index_u32(OP, "vocab", vocab)?],
        out.numel(),
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
