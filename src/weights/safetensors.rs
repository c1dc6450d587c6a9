//! safetensors files: an 8-byte little-endian header length, a JSON header (dtype, shape, data_offsets
//! per tensor, optional `__metadata__`), then the tensors' bytes.

use std::collections::BTreeMap;
use std::path::Path;

use ::safetensors::Dtype;

use super::{
    Budget, ByteSource, Conversion, FloatType, HostTensor, LazyTensor, LoadOptions, SkippedTensor, StateDict,
    file_error,
};
use crate::error::{Error, Result};

/// The format's own limit on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The checked header: metadata, tensors in offset order, and where the data starts.
type Header = (BTreeMap<String, String>, Vec<Entry>, u64);

fn header(src: &mut dyn ByteSource, path: &Path) -> Result<Header> {
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
    let (metadata, entries) = parse_header(&header).map_err(fail)?;
    let data_start = 8 + header_len;
    let data_len = entries.last().map_or(0, |e| e.end);
    if data_start.checked_add(data_len) != Some(len) {
        return Err(fail(format!(
            "the safetensors header describes {data_len} bytes of tensor data but the file holds {} (truncated or \
             padded)",
            len - data_start
        )));
    }
    Ok((metadata, entries, data_start))
}

pub(super) fn read(src: &mut dyn ByteSource, path: &Path, options: &LoadOptions) -> Result<StateDict> {
    let fail = |reason: String| file_error(path, reason);
    let mut budget = Budget::new(options, src.len());
    let (metadata, entries, data_start) = header(src, path)?;
    let mut sd = StateDict::new();
    sd.metadata = metadata;
    for entry in entries {
        match entry.conversion {
            Conversion::Float(ty) => {
                // parse_header checked that the range is the shape's size and lies inside the data, itself
                // checked against the file's length.
                let bytes = usize::try_from(entry.end - entry.start).map_err(|e| fail(e.to_string()))?;
                budget.take(&entry.key, bytes / ty.size()).map_err(fail)?;
                let bytes = src.read_at(data_start + entry.start, bytes).map_err(fail)?;
                let data = ty.decode(&bytes);
                sd.tensors.insert(entry.key, HostTensor { shape: entry.shape, data });
            }
            Conversion::Skip(dtype) => {
                sd.skipped.insert(entry.key, SkippedTensor { dtype: dtype.into(), shape: entry.shape });
            }
            Conversion::Reject => {
                return Err(Error::WeightsDType { path: path.to_path_buf(), key: entry.key, dtype: entry.dtype });
            }
        }
    }
    Ok(sd)
}

/// The tensors' places in the file, checked with the same limits as [`read`], for a
/// [`super::WeightsFile`].
pub(super) fn index(src: &mut dyn ByteSource, path: &Path, options: &LoadOptions) -> Result<Index> {
    let mut budget = Budget::new(options, src.len());
    let (metadata, entries, data_start) = header(src, path)?;
    let mut tensors = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    for entry in entries {
        match entry.conversion {
            Conversion::Float(ty) => {
                let bytes = entry.end - entry.start;
                budget.take(&entry.key, (bytes / ty.size() as u64) as usize).map_err(|r| file_error(path, r))?;
                let lazy = LazyTensor {
                    shape: entry.shape,
                    ty,
                    byte_start: data_start + entry.start,
                    byte_len: bytes,
                    stride: None,
                };
                tensors.insert(entry.key, lazy);
            }
            Conversion::Skip(dtype) => {
                skipped.insert(entry.key, SkippedTensor { dtype: dtype.into(), shape: entry.shape });
            }
            Conversion::Reject => {
                return Err(Error::WeightsDType { path: path.to_path_buf(), key: entry.key, dtype: entry.dtype });
            }
        }
    }
    Ok((tensors, metadata, skipped))
}

/// A [`super::WeightsFile`]'s contents: tensors, metadata, skipped tensors.
pub(super) type Index = (BTreeMap<String, LazyTensor>, BTreeMap<String, String>, BTreeMap<String, SkippedTensor>);

/// One tensor of a safetensors header, checked.
struct Entry {
    key: String,
    dtype: String,
    conversion: Conversion,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// The header's metadata and tensors (sorted by their data offsets), each fault naming the tensor it
/// concerns: an unknown dtype, a shape whose size overflows, offsets that disagree with the shape,
/// gaps or overlaps between tensors.
fn parse_header(header: &[u8]) -> std::result::Result<(BTreeMap<String, String>, Vec<Entry>), String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("the safetensors header is not a JSON object: {e}"))?;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(object.len());
    for (key, value) in object {
        if key == "__metadata__" {
            let map = value.as_object().ok_or("the header's __metadata__ is not an object of strings")?;
            for (name, text) in map {
                let text = text.as_str().ok_or_else(|| {
                    format!("the header's __metadata__ entry {} is not a string", crate::error::shown(name))
                })?;
                metadata.insert(name.clone(), text.to_string());
            }
            continue;
        }
        let bad = |why: String| format!("tensor {}: {why}", crate::error::shown(&key));
        let info = value.as_object().ok_or_else(|| bad("its header entry is not an object".into()))?;
        let dtype = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype string".into()))?;
        let (conversion, size) = conversion_of(dtype);
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape list".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("the shape is not a list of sizes".into()))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|o| o.as_u64()).collect::<Option<Vec<_>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("data_offsets is not a pair of byte offsets".into()))?;
        let (start, end) = (offsets[0], offsets[1]);
        if end < start {
            return Err(bad(format!("data_offsets [{start}, {end}] end before they start")));
        }
        let need = shape
            .iter()
            .try_fold(size as u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("shape {shape:?} has more elements than any file can hold")))?;
        if size > 0 && end - start != need {
            return Err(bad(format!(
                "data_offsets [{start}, {end}] hold {} bytes but dtype {dtype} with shape {shape:?} needs {need}",
                end - start
            )));
        }
        entries.push(Entry { key, dtype: dtype.to_string(), conversion, shape, start, end });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut at = 0u64;
    let mut previous: Option<&str> = None;
    for e in &entries {
        if e.start != at {
            let after = previous.map(|p| format!(" after tensor {}", crate::error::shown(p))).unwrap_or_default();
            return Err(format!(
                "tensor {}: its data starts at byte {} where byte {at} was expected{after} (tensors overlap or \
                 leave gaps)",
                crate::error::shown(&e.key),
                e.start
            ));
        }
        at = e.end;
        previous = Some(&e.key);
    }
    Ok((metadata, entries))
}

/// What to do with a safetensors dtype, and its element size in bytes (0 where unknown: the tensor is
/// then rejected by name once the header has been read).
fn conversion_of(dtype: &str) -> (Conversion, usize) {
    match dtype {
        "F64" => (Conversion::Float(FloatType::F64), 8),
        "F32" => (Conversion::Float(FloatType::F32), 4),
        "F16" => (Conversion::Float(FloatType::F16), 2),
        "BF16" => (Conversion::Float(FloatType::BF16), 2),
        "BOOL" => (Conversion::Skip("BOOL"), 1),
        "U8" => (Conversion::Skip("U8"), 1),
        "I8" => (Conversion::Skip("I8"), 1),
        "I16" => (Conversion::Skip("I16"), 2),
        "U16" => (Conversion::Skip("U16"), 2),
        "I32" => (Conversion::Skip("I32"), 4),
        "U32" => (Conversion::Skip("U32"), 4),
        "I64" => (Conversion::Skip("I64"), 8),
        "U64" => (Conversion::Skip("U64"), 8),
        "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => (Conversion::Reject, 1),
        _ => (Conversion::Reject, 0),
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
    // A tensor with values beyond f16's range stays f32: as f16 they would be infinities, which the
    // loaders refuse (statistics buffers such as a VQVAE's code-hit counts may hold them).
    let wide: std::collections::HashSet<&str> =
        if dtype == DType::F16 { sd.beyond_f16().into_iter().collect() } else { Default::default() };
    let f32_bytes: Encode = |v| v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let data: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = sd
        .iter()
        .map(|(k, t)| match wide.contains(k) {
            true => (k.to_string(), Dtype::F32, f32_bytes(&t.data), t.shape.clone()),
            false => (k.to_string(), st_dtype, bytes_of(&t.data), t.shape.clone()),
        })
        .collect();
    let views = data
        .iter()
        .map(|(k, st_dtype, bytes, shape)| {
            ::safetensors::tensor::TensorView::new(*st_dtype, shape.clone(), bytes).map(|view| (k.as_str(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidArgument { op: "StateDict::to_safetensors", msg: e.to_string() })?;
    let metadata = (!sd.metadata.is_empty()).then(|| sd.metadata.clone().into_iter().collect());
    ::safetensors::tensor::serialize(views, metadata)
        .map_err(|e| Error::InvalidArgument { op: "StateDict::to_safetensors", msg: e.to_string() })
}
