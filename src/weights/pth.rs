//! torch.save's zip checkpoints: `<root>/data.pkl` (the pickled object), `<root>/data/<key>` (raw
//! little-endian storages), optionally `<root>/byteorder`, `<root>/version` and torch's other bookkeeping
//! records (ignored).

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

use zip::{CompressionMethod, ZipArchive};

use super::pickle::{self, TensorRef, Unpickled, Value, describe};
use super::{
    Budget, Conversion, FloatType, HostTensor, LazyTensor, LoadOptions, SkippedTensor, StateDict, check_view,
    file_error, gather,
};
use crate::error::{Error, Result};

/// A state_dict entry to gather from a storage: key, element type, view.
type StorageView = (String, FloatType, Rc<TensorRef>);

/// data.pkl holds only structure (tensor data lives in the storages): real state dicts pickle to a few
/// hundred KB. The cap bounds the pickle machine's memory on a hostile file: each one-byte opcode can
/// make a value of 24 bytes and a container of as many again, so 64 MiB of `]` or `N` took 3-5 GB;
/// 8 MiB takes at most about 700 MB.
const MAX_PICKLE_BYTES: u64 = 8 << 20;

/// Entries that hold the state_dict inside a training checkpoint, in the order they are tried.
const STATE_DICT_ENTRIES: [&str; 3] = ["state_dict", "model", "module"];

/// What data.pkl says: the root folder, the float tensors grouped by storage, and the tensors skipped.
struct Parsed {
    root: String,
    by_storage: BTreeMap<Rc<str>, Vec<StorageView>>,
    skipped: BTreeMap<String, SkippedTensor>,
}

fn open<R: Read + Seek>(reader: R, path: &Path) -> Result<ZipArchive<R>> {
    ZipArchive::new(reader)
        .map_err(|e| file_error(path, format!("not a readable zip archive (truncated or damaged?): {e}")))
}

fn parse<R: Read + Seek>(archive: &mut ZipArchive<R>, file_len: u64, path: &Path) -> Result<Parsed> {
    let fail = |reason: String| file_error(path, reason);
    let root = archive
        .file_names()
        .filter_map(|name| name.ok())
        .find_map(|name| name.strip_suffix("/data.pkl").filter(|root| !root.contains('/')).map(str::to_string))
        .ok_or_else(|| fail("a zip archive without <root>/data.pkl: not a torch.save checkpoint".into()))?;
    if archive.index_for_name(&format!("{root}/constants.pkl")).is_some() {
        return Err(fail(
            "a TorchScript archive (torch.jit.save); save the model's state_dict with torch.save instead".into(),
        ));
    }
    let byteorder = format!("{root}/byteorder");
    if archive.index_for_name(&byteorder).is_some() {
        let order = read_record(archive, &byteorder, 64).map_err(fail)?;
        if order.trim_ascii() != b"little" {
            return Err(fail(format!(
                "storages are {:?}-endian; scalewise reads little-endian checkpoints",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let pkl_name = format!("{root}/data.pkl");
    if let Ok(record) = archive.by_name(&pkl_name)
        && record.size() > MAX_PICKLE_BYTES
    {
        return Err(fail(format!(
            "{pkl_name} is {} bytes of pickle; a state_dict's is a few hundred KB and scalewise reads at most {} MiB \
             (the tensors themselves live in the storage records)",
            record.size(),
            MAX_PICKLE_BYTES >> 20
        )));
    }
    let pkl = read_record(archive, &pkl_name, MAX_PICKLE_BYTES.min(file_len)).map_err(fail)?;
    let unpickled = pickle::unpickle(&pkl).map_err(|e| fail(format!("{pkl_name}: {e}")))?;
    let items = state_dict_entries(&unpickled).map_err(|e| fail(format!("{pkl_name}: {e}")))?;

    // Later duplicates win, as in a Python dict.
    let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
    for (key, value) in items {
        let Value::Str(key) = key else {
            return Err(fail(format!("{pkl_name}: a state_dict key is a {}", describe(key))));
        };
        latest.insert(key.to_string(), value);
    }

    let mut skipped = BTreeMap::new();
    let mut by_storage: BTreeMap<Rc<str>, Vec<StorageView>> = BTreeMap::new();
    for (key, value) in latest {
        match value {
            Value::Tensor(t) => match conversion(&t.storage.class) {
                Conversion::Float(ty) => {
                    by_storage.entry(t.storage.key.clone()).or_default().push((key, ty, t.clone()))
                }
                Conversion::Skip(dtype) => {
                    skipped.insert(key, SkippedTensor { dtype: dtype.into(), shape: t.shape.clone() });
                }
                Conversion::Reject => {
                    return Err(Error::WeightsDType { path: path.to_path_buf(), key, dtype: t.storage.class.clone() });
                }
            },
            Value::Object(name) if name.starts_with("torch._utils._rebuild") || name.starts_with("torch._tensor.") => {
                return Err(fail(format!(
                    "tensor {key:?} is stored through {name} (a quantized, sparse, nested or meta tensor), which \
                     scalewise does not read"
                )));
            }
            _ => {
                skipped.insert(key, SkippedTensor { dtype: "object".into(), shape: Vec::new() });
            }
        }
    }
    Ok(Parsed { root, by_storage, skipped })
}

fn elements(shape: &[usize]) -> usize {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
}

pub(super) fn read<R: Read + Seek>(reader: R, file_len: u64, path: &Path, options: &LoadOptions) -> Result<StateDict> {
    let fail = |reason: String| file_error(path, reason);
    let mut budget = Budget::new(options, file_len);
    let mut archive = open(reader, path)?;
    let Parsed { root, by_storage, skipped } = parse(&mut archive, file_len, path)?;
    let mut sd = StateDict::new();
    sd.skipped = skipped;
    // Each storage is read once, however many tensors view it.
    for (storage_key, tensors) in by_storage {
        let name = format!("{root}/data/{storage_key}");
        let bytes = read_record(&mut archive, &name, file_len).map_err(fail)?;
        for (key, ty, t) in tensors {
            budget.take(&key, elements(&t.shape)).map_err(fail)?;
            let data = gather(&bytes, ty, t.offset, &t.shape, &t.stride)
                .map_err(|e| fail(format!("tensor {key:?} (storage {name}): {e}")))?;
            sd.tensors.insert(key, HostTensor { shape: t.shape.clone(), data });
        }
    }
    Ok(sd)
}

/// Every float tensor's place in the file, checked (storages stored uncompressed, views inside their
/// storage, the expansion limits), without reading the storages: for a [`super::WeightsFile`].
pub(super) fn index<R: Read + Seek>(
    reader: R,
    file_len: u64,
    path: &Path,
    options: &LoadOptions,
) -> Result<(BTreeMap<String, LazyTensor>, BTreeMap<String, SkippedTensor>)> {
    let fail = |reason: String| file_error(path, reason);
    let mut budget = Budget::new(options, file_len);
    let mut archive = open(reader, path)?;
    let Parsed { root, by_storage, skipped } = parse(&mut archive, file_len, path)?;
    let mut index = BTreeMap::new();
    for (storage_key, tensors) in by_storage {
        let name = format!("{root}/data/{storage_key}");
        let (size, data_start) = {
            let record = archive.by_name(&name).map_err(|e| fail(format!("record {name}: {e}")))?;
            if record.compression() != CompressionMethod::Stored {
                return Err(fail(format!(
                    "record {name} is compressed ({}); torch.save stores records uncompressed",
                    record.compression()
                )));
            }
            let start = record.data_start().ok_or_else(|| fail(format!("record {name}: no data offset")))?;
            (record.size(), start)
        };
        if data_start.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(fail(format!("record {name} claims {size} bytes at {data_start}, past the end of the file")));
        }
        for (key, ty, t) in tensors {
            budget.take(&key, elements(&t.shape)).map_err(fail)?;
            let available = size / ty.size() as u64;
            let last = check_view(available, t.offset, &t.shape, &t.stride)
                .map_err(|e| fail(format!("tensor {key:?} (storage {name}): {e}")))?;
            let elem = ty.size() as u64;
            // Strides are non-negative, so the view's first element is at its offset.
            let (byte_start, byte_len) = match last {
                Some(last) => (data_start + t.offset * elem, (last - t.offset + 1) * elem),
                None => (data_start, 0),
            };
            let lazy = LazyTensor { shape: t.shape.clone(), ty, byte_start, byte_len, stride: Some(t.stride.clone()) };
            index.insert(key, lazy);
        }
    }
    Ok((index, skipped))
}

/// The entries of the state_dict: the top-level dict itself, or the dict under `state_dict`, `model` or
/// `module` when the top level holds no tensors (repeatedly, for wrappers of wrappers).
fn state_dict_entries(unpickled: &Unpickled) -> std::result::Result<&[(Value, Value)], String> {
    let mut items = unpickled
        .dict(&unpickled.root)
        .ok_or_else(|| format!("the pickled object is a {}, not a dict of tensors", describe(&unpickled.root)))?;
    let has_tensors = |items: &[(Value, Value)]| items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    for _ in 0..8 {
        if has_tensors(items) {
            return Ok(items);
        }
        let inner = STATE_DICT_ENTRIES.iter().find_map(|want| {
            let (_, value) = items.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == *want))?;
            unpickled.dict(value)
        });
        match inner {
            Some(inner) => items = inner,
            None => break,
        }
    }
    if items.is_empty() || has_tensors(items) {
        return Ok(items);
    }
    let keys: Vec<String> = items
        .iter()
        .take(12)
        .map(|(k, v)| match k {
            Value::Str(s) => format!("{s:?} ({})", describe(v)),
            other => describe(other),
        })
        .collect();
    Err(format!(
        "found no tensors: the dict holds {}{}, and no {} entry holds a dict of tensors",
        keys.join(", "),
        if items.len() > keys.len() { ", ..." } else { "" },
        STATE_DICT_ENTRIES.join("/"),
    ))
}

/// What the loader does with a torch storage type.
fn conversion(class: &str) -> Conversion {
    match class {
        "FloatStorage" => Conversion::Float(FloatType::F32),
        "HalfStorage" => Conversion::Float(FloatType::F16),
        "BFloat16Storage" => Conversion::Float(FloatType::BF16),
        "DoubleStorage" => Conversion::Float(FloatType::F64),
        "LongStorage" => Conversion::Skip("I64"),
        "IntStorage" => Conversion::Skip("I32"),
        "ShortStorage" => Conversion::Skip("I16"),
        "CharStorage" => Conversion::Skip("I8"),
        "ByteStorage" => Conversion::Skip("U8"),
        "BoolStorage" => Conversion::Skip("BOOL"),
        _ => Conversion::Reject,
    }
}

/// The whole record `name`, at most `limit` bytes, with its CRC checked by the zip reader.
fn read_record<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let mut file = archive.by_name(name).map_err(|e| format!("record {name}: {e}"))?;
    if file.compression() != CompressionMethod::Stored {
        return Err(format!(
            "record {name} is compressed ({}); torch.save stores records uncompressed",
            file.compression()
        ));
    }
    let size = file.size();
    if size > limit {
        return Err(format!("record {name} claims {size} bytes, more than the {limit} this file can hold"));
    }
    // `size <= limit <= the file's length`, so the allocation is bounded by the file.
    let mut buf = Vec::with_capacity(size as usize);
    file.by_ref().take(size + 1).read_to_end(&mut buf).map_err(|e| format!("record {name}: {e}"))?;
    if buf.len() as u64 != size {
        return Err(format!("record {name} holds {} bytes, not the {size} its directory entry says", buf.len()));
    }
    Ok(buf)
}
