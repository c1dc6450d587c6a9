//! safetensors files: an 8-byte little-endian header length, a JSON header (dtype, shape, data_offsets
//! per tensor, optional `__metadata__`), then the tensors' bytes.

use std::path::Path;

use ::safetensors::Dtype;
use ::safetensors::tensor::Metadata;

use super::{ByteSource, Conversion, FloatType, HostTensor, SkippedTensor, StateDict, file_error};
use crate::error::{Error, Result};

/// The format's own limit on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

pub(super) fn read(src: &mut dyn ByteSource, path: &Path) -> Result<StateDict> {
    let fail = |reason: String| file_error(path, reason);
    let len = src.len();
    let header_len = {
        let bytes = src.read_at(0, 8).map_err(|e| fail(format!("too short for a safetensors header: {e}")))?;
        u64::from_le_bytes(bytes[..8].try_into().map_err(|_| fail("short read".into()))?)
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(fail(format!("a safetensors header of {header_len} bytes, above the format's 100 MB limit")));
    }
    if 8 + header_len > len {
        return Err(fail(format!(
            "the safetensors header claims {header_len} bytes but the file has only {} after its length field \
             (truncated?)",
            len - 8
        )));
    }
    let header = src.read_at(8, header_len as usize).map_err(fail)?;
    let meta: Metadata =
        serde_json::from_slice(&header).map_err(|e| fail(format!("invalid safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = meta.data_len() as u64;
    if data_start + data_len != len {
        return Err(fail(format!(
            "the safetensors header describes {data_len} bytes of tensor data but the file holds {} (truncated or \
             padded)",
            len - data_start
        )));
    }

    let mut sd = StateDict::new();
    if let Some(metadata) = meta.metadata() {
        sd.metadata = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for key in meta.offset_keys() {
        let Some(info) = meta.info(&key) else { continue };
        match conversion(info.dtype) {
            Conversion::Float(ty) => {
                let (start, end) = info.data_offsets;
                // The header was validated: offsets are contiguous, match dtype * shape, and end within
                // `data_len`, itself checked against the file's length.
                let bytes = src.read_at(data_start + start as u64, end - start).map_err(fail)?;
                let data = ty.decode(&bytes);
                sd.tensors.insert(key, HostTensor { shape: info.shape.clone(), data });
            }
            Conversion::Skip(dtype) => {
                sd.skipped.insert(key, SkippedTensor { dtype: dtype.into(), shape: info.shape.clone() });
            }
            Conversion::Reject => {
                return Err(Error::WeightsDType { path: path.to_path_buf(), key, dtype: format!("{:?}", info.dtype) });
            }
        }
    }
    Ok(sd)
}

fn conversion(dtype: Dtype) -> Conversion {
    match dtype {
        Dtype::F32 => Conversion::Float(FloatType::F32),
        Dtype::F16 => Conversion::Float(FloatType::F16),
        Dtype::BF16 => Conversion::Float(FloatType::BF16),
        Dtype::F64 => Conversion::Float(FloatType::F64),
        Dtype::BOOL => Conversion::Skip("BOOL"),
        Dtype::U8 => Conversion::Skip("U8"),
        Dtype::I8 => Conversion::Skip("I8"),
        Dtype::I16 => Conversion::Skip("I16"),
        Dtype::U16 => Conversion::Skip("U16"),
        Dtype::I32 => Conversion::Skip("I32"),
        Dtype::U32 => Conversion::Skip("U32"),
        Dtype::I64 => Conversion::Skip("I64"),
        Dtype::U64 => Conversion::Skip("U64"),
        _ => Conversion::Reject,
    }
}

/// The state_dict as safetensors bytes, every tensor stored as `dtype` (F32 or F16), with its metadata.
pub(super) fn write(sd: &StateDict, dtype: crate::dtype::DType) -> Result<Vec<u8>> {
    use crate::dtype::DType;
    type Encode = fn(&[f32]) -> Vec<u8>;
    let (st_dtype, bytes_of): (Dtype, Encode) = match dtype {
        DType::F32 => (Dtype::F32, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::F16 => (Dtype::F16, |v| v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()),
        other => {
            return Err(Error::InvalidArgument {
                op: "StateDict::to_safetensors",
                msg: format!("tensors are written as f32 or f16, not {other}"),
            });
        }
    };
    let data: Vec<(String, Vec<u8>, Vec<usize>)> =
        sd.iter().map(|(k, t)| (k.to_string(), bytes_of(&t.data), t.shape.clone())).collect();
    let views = data
        .iter()
        .map(|(k, bytes, shape)| {
            ::safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes).map(|view| (k.as_str(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidArgument { op: "StateDict::to_safetensors", msg: e.to_string() })?;
    let metadata = (!sd.metadata.is_empty()).then(|| sd.metadata.clone().into_iter().collect());
    ::safetensors::tensor::serialize(views, metadata)
        .map_err(|e| Error::InvalidArgument { op: "StateDict::to_safetensors", msg: e.to_string() })
}
