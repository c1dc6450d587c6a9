//! Hand-made torch.save checkpoints: protocol-2 pickle fragments as Python's pickler writes them, and
//! the zip layout torch.save stores them in. Tests, the bad-input corpus and the fuzzer's seeds build
//! exact (and exactly broken) `.pth` files with them, without Python.

use std::io::{Cursor, Write};

/// A zip in torch.save's layout (STORED records under `archive/`) holding `data.pkl` and `storages`.
pub fn torch_archive(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let mut record = |name: &str, bytes: &[u8]| {
        w.start_file(name, options).expect("a zip record in memory");
        w.write_all(bytes).expect("writing to memory");
    };
    record("archive/data.pkl", pkl);
    record("archive/byteorder", b"little");
    for (key, bytes) in storages {
        record(&format!("archive/data/{key}"), bytes);
    }
    record("archive/version", b"3\n");
    w.finish().expect("a zip in memory").into_inner()
}

pub fn str(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

pub fn int(i: i32) -> Vec<u8> {
    let mut out = vec![b'J'];
    out.extend_from_slice(&i.to_le_bytes());
    out
}

pub fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

pub fn tuple(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![b'('];
    for item in items {
        out.extend_from_slice(item);
    }
    out.push(b't');
    out
}

pub fn ordered_dict() -> Vec<u8> {
    let mut out = global("collections", "OrderedDict");
    out.extend_from_slice(b")R");
    out
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
pub fn tensor(class: &str, key: &str, numel: i32, offset: i32, size: &[i32], stride: &[i32]) -> Vec<u8> {
    let mut out = global("torch._utils", "_rebuild_tensor_v2");
    let mut storage = tuple(&[str("storage"), global("torch", class), str(key), str("cpu"), int(numel)]);
    storage.push(b'Q');
    let size = tuple(&size.iter().map(|&d| int(d)).collect::<Vec<_>>());
    let stride = tuple(&stride.iter().map(|&d| int(d)).collect::<Vec<_>>());
    out.extend_from_slice(&tuple(&[storage, int(offset), size, stride, vec![0x89], ordered_dict()]));
    out.push(b'R');
    out
}

/// `{key: value, ...}` as a whole pickle.
pub fn dict(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x80, 2, b'}', b'('];
    for (k, v) in entries {
        out.extend_from_slice(&str(k));
        out.extend_from_slice(v);
    }
    out.extend_from_slice(b"u.");
    out
}

/// Little-endian f32 storage bytes.
pub fn f32_storage(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

pub use zip::ZipWriter;
pub use zip::result::ZipError;

/// torch.save's record options: stored, uncompressed, zip64 where an archive needs it.
pub fn stored_options() -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)
}
