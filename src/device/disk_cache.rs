//! Compiled kernels kept on disk between runs: wgpu's Vulkan pipeline cache and the CUDA backend's
//! cubins and CPU-shim modules. A cache is only ever a speed-up: every failure to read or write one
//! is ignored (the work is redone), and nothing is written outside the cache folder.

use std::path::{Path, PathBuf};

/// The folder `kind` under `SCALEWISE_CACHE_DIR`, else `$XDG_CACHE_HOME/scalewise`, else
/// `~/.cache/scalewise`; created if missing. `None` when none can be named or created (then nothing
/// is cached), or when `SCALEWISE_CACHE_DIR` is set to `off`.
pub(crate) fn dir(kind: &str) -> Option<PathBuf> {
    let named = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = match named("SCALEWISE_CACHE_DIR") {
        Some(dir) if dir.as_os_str() == "off" => return None,
        Some(dir) => dir,
        None => named("XDG_CACHE_HOME")
            .map(|d| d.join("scalewise"))
            .or_else(|| named("HOME").map(|h| h.join(".cache/scalewise")))?,
    };
    let dir = base.join(kind);
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// Writes `bytes` to `path` through a temporary beside it and a rename, so a concurrent reader
/// never sees half a file.
pub(crate) fn write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The file's bytes when it exists and is at most `max_bytes` long.
pub(crate) fn read(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    let len = std::fs::metadata(path).ok()?.len();
    if len > max_bytes {
        return None;
    }
    std::fs::read(path).ok()
}
