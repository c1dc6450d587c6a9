//! Compiled kernels kept on disk between runs: wgpu's Vulkan pipeline cache and the CUDA backend's
//! cubins and CPU-shim modules. A cache is only ever a speed-up: every failure to read or write one
//! is ignored (the work is redone), and nothing is written outside the cache folder.
//!
//! The folders stay bounded: a file is "used" whenever it is read or found (its modification time is
//! moved forward, at most once a day), and once a day per folder the first process to open it
//! removes the entries unused for [`UNUSED_FOR`], the temporaries a killed writer left behind, and,
//! while the folder still holds more than [`MAX_FOLDER_BYTES`], the least recently used entries.
//! Without this a folder would keep every kernel of every earlier version and driver for good. Only
//! files whose names this module's callers write are ever removed: a cache folder pointed at a
//! folder of the user's loses nothing else.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Entries not used for this long are removed (a later run recompiles them, if it needs them).
pub(crate) const UNUSED_FOR: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// A temporary this old was left by a writer that died (a write takes seconds at most).
const ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);
/// The most one folder keeps; past it the least recently used entries go, down to this.
pub(crate) const MAX_FOLDER_BYTES: u64 = 1 << 30;
/// The file whose modification time says when the folder was last pruned.
const PRUNE_MARKER: &str = ".last-pruned";

/// The folder `kind` under `SCALEWISE_CACHE_DIR`, else `$XDG_CACHE_HOME/scalewise`, else
/// `%LOCALAPPDATA%\scalewise\cache` on Windows (where `HOME` is rarely set) and `~/.cache/scalewise`
/// elsewhere; created if missing, and pruned if a day has passed since it last was. `None` when none
/// can be named or created (then nothing is cached), or when `SCALEWISE_CACHE_DIR` is set to `off`.
pub(crate) fn dir(kind: &str) -> Option<PathBuf> {
    let base = cache_base(|var| std::env::var_os(var), cfg!(windows))?;
    let dir = base.join(kind);
    std::fs::create_dir_all(&dir).ok()?;
    prune_once_per_process(&dir);
    Some(dir)
}

/// The cache folder named by the environment `var` reads (see [`dir`]).
fn cache_base(var: impl Fn(&str) -> Option<std::ffi::OsString>, windows: bool) -> Option<PathBuf> {
    let named = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    match named("SCALEWISE_CACHE_DIR") {
        Some(dir) if dir.as_os_str() == "off" => None,
        Some(dir) => Some(dir),
        None => named("XDG_CACHE_HOME").map(|d| d.join("scalewise")).or_else(|| {
            if windows {
                named("LOCALAPPDATA").map(|d| d.join("scalewise").join("cache"))
            } else {
                named("HOME").map(|h| h.join(".cache/scalewise"))
            }
        }),
    }
}

/// Writes `bytes` to `path` through a temporary beside it and a rename, so a concurrent reader
/// never sees half a file.
pub(crate) fn write(path: &Path, bytes: &[u8]) {
    write_through(path, bytes, &temporary(path, ""));
}

/// [`write`] through the temporary `tmp`.
fn write_through(path: &Path, bytes: &[u8], tmp: &Path) {
    use std::io::Write;
    // The name is predictable (the pruning recognises it), so it is created with O_EXCL, which never
    // opens an existing file or follows a planted link. One found there (a killed writer's, whose pid
    // was reused, or a planted link) is removed, the link itself and not its target, and the
    // creation tried once more.
    let create = || std::fs::OpenOptions::new().write(true).create_new(true).open(tmp);
    let file = create().or_else(|e| {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        std::fs::remove_file(tmp)?;
        create()
    });
    let Ok(mut file) = file else { return };
    if file.write_all(bytes).is_err() || std::fs::rename(tmp, path).is_err() {
        let _ = std::fs::remove_file(tmp);
    }
}

/// A temporary name beside `path` for one write of it: `<stem>.tmp<pid>-<n><suffix>`, `n` counting
/// this process's temporaries from a start drawn from the clock, so that two threads writing one
/// entry at once (two devices of one adapter, a module compiled on first use while the background
/// compile builds it too), or two processes of one pid in containers sharing the folder, never share
/// a temporary, which one of them would remove or rename half-written.
pub(crate) fn temporary(path: &Path, suffix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        // The clock's nanoseconds within the hour, times 1024: processes of one pid collide only
        // when started in the same nanosecond of an hour and 1024 writes apart at most.
        (now.as_nanos() % 3_600_000_000_000) as u64 * 1024
    });
    let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    path.with_extension(format!("tmp{}-{n}{suffix}", std::process::id()))
}

/// The file's bytes when it exists and is at most `max_bytes` long; the file counts as used.
pub(crate) fn read(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    let len = std::fs::metadata(path).ok()?.len();
    if len > max_bytes {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    mark_used(path);
    Some(bytes)
}

/// Whether the file exists; if it does, it counts as used (for entries that are loaded, not read:
/// the CUDA CPU shim's modules, hence unused without the `cuda` feature).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn find(path: &Path) -> bool {
    let found = path.is_file();
    if found {
        mark_used(path);
    }
    found
}

/// Moves the file's modification time to now, unless it moved within the last day: the pruning's
/// "last used". A read-only file keeps its time, so it goes 30 days after it was written however
/// often it is read (a cache entry is only a speed-up); a read-only folder is never pruned (its
/// marker cannot be written).
fn mark_used(path: &Path) {
    let now = SystemTime::now();
    if !modified_within_a_day(path, now)
        && let Ok(file) = std::fs::OpenOptions::new().append(true).open(path)
    {
        let _ = file.set_modified(now);
    }
}

/// Whether `path` exists and was modified within the day before `now` (a time after `now`, a clock
/// set back, does not count).
fn modified_within_a_day(path: &Path, now: SystemTime) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    modified.is_ok_and(|at| now.duration_since(at).is_ok_and(|age| age < DAY))
}

/// What a cache file name is: an entry one of this module's callers writes, a temporary of
/// [`write`] (`<entry stem>.tmp<pid>-<n>`, or `.tmp<pid>` from earlier versions) or of the CPU shim's
/// compile (the same with `.so` after it), or
/// anything else (never removed). Entries are recognised by their exact formats, not by extension
/// alone, so that a cache folder pointed at a folder of the user's never loses a `.so` of theirs:
/// - `<backend>-<hex>-<hex>-<16 hex>.pipelines` (prewarm manifests),
/// - `wgpu_pipeline_cache_<backend>_<digits>_<digits>` (wgpu's Vulkan pipeline cache),
/// - `<family>-sm<digits>-<32 hex>.cubin` (cubins) and `<family>-<32 hex>.so` (CPU-shim modules),
///   `<family>` one of the kernel families.
#[derive(Debug, PartialEq, Eq)]
enum CacheFile {
    Entry,
    Temporary,
    Foreign,
}

fn classify(name: &str) -> CacheFile {
    let temporary = name.strip_suffix(".so").unwrap_or(name).rsplit_once(".tmp").filter(|(stem, counters)| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let counted = match counters.split_once('-') {
            Some((pid, n)) => digits(pid) && digits(n),
            None => digits(counters),
        };
        counted && entry_stem(stem).is_some()
    });
    if temporary.is_some() {
        return CacheFile::Temporary;
    }
    let entry = match name.rsplit_once('.') {
        Some((stem, ext @ ("pipelines" | "cubin" | "so"))) => entry_stem(stem) == Some(ext),
        _ => entry_stem(name) == Some(""),
    };
    if entry { CacheFile::Entry } else { CacheFile::Foreign }
}

/// The extension an entry named `stem` carries ("" for wgpu's pipeline cache), if `stem` is one.
fn entry_stem(stem: &str) -> Option<&'static str> {
    let hex = |s: &str, len: Option<usize>| {
        !s.is_empty() && len.is_none_or(|l| s.len() == l) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let lower = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if let Some(rest) = stem.strip_prefix("wgpu_pipeline_cache_") {
        let parts: Vec<&str> = rest.split('_').collect();
        return (parts.len() == 3 && lower(parts[0]) && digits(parts[1]) && digits(parts[2])).then_some("");
    }
    let parts: Vec<&str> = stem.split('-').collect();
    let family = |s: &str| crate::kernels::Family::ALL.iter().any(|f| f.name() == s);
    match parts.as_slice() {
        [backend, vendor, device, hash]
            if lower(backend) && hex(vendor, None) && hex(device, None) && hex(hash, Some(16)) =>
        {
            Some("pipelines")
        }
        [f, arch, hash] if family(f) && arch.strip_prefix("sm").is_some_and(digits) && hex(hash, Some(32)) => {
            Some("cubin")
        }
        [f, hash] if family(f) && hex(hash, Some(32)) => Some("so"),
        _ => None,
    }
}

/// Prunes `dir` once in this process, and then only if no process pruned it within the last day.
fn prune_once_per_process(dir: &Path) {
    static SEEN: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let first = SEEN.lock().is_ok_and(|mut seen| seen.get_or_insert_with(HashSet::new).insert(dir.to_path_buf()));
    if !first {
        return;
    }
    prune_if_due(dir, SystemTime::now(), MAX_FOLDER_BYTES);
}

/// Prunes `dir` (see [`prune`]) unless its marker says a process did within the day before `now`;
/// `None` when it was not due.
fn prune_if_due(dir: &Path, now: SystemTime, max_bytes: u64) -> Option<Vec<PathBuf>> {
    let marker = dir.join(PRUNE_MARKER);
    if modified_within_a_day(&marker, now) {
        return None;
    }
    // The marker first: a second process opening the folder meanwhile skips the listing. A folder
    // that cannot take it (read-only) is not pruned either.
    let marked = touch_marker(&marker, now);
    marked.is_ok().then(|| prune(dir, now, max_bytes))
}

/// Creates or dates the prune marker without ever opening what a link there points to (a planted
/// `.last-pruned -> precious` used to be truncated): a marker that is not a regular file is removed
/// (a link's target is left alone), and the file is opened without truncation and, on Unix, with
/// O_NOFOLLOW, so a link planted after the check fails the open instead.
fn touch_marker(marker: &Path, now: SystemTime) -> std::io::Result<()> {
    if std::fs::symlink_metadata(marker).is_ok_and(|m| !m.is_file()) {
        std::fs::remove_file(marker)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    options.open(marker)?.set_modified(now)
}

/// Removes from `dir`, as of `now`: entries last used more than [`UNUSED_FOR`] ago, temporaries
/// older than [`ABANDONED_AFTER`], then the least recently used entries while the remaining ones
/// hold more than `max_bytes`. Returns the files removed. Links, folders and foreign names stay.
fn prune(dir: &Path, now: SystemTime, max_bytes: u64) -> Vec<PathBuf> {
    let Ok(listing) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for item in listing.flatten() {
        let Ok(meta) = item.metadata() else { continue };
        let name = item.file_name();
        let (Some(name), true) = (name.to_str(), meta.file_type().is_file()) else { continue };
        // A time in the future (a clock set back) counts as now.
        let age = meta.modified().ok().and_then(|at| now.duration_since(at).ok()).unwrap_or_default();
        let class = classify(name);
        let expired = match class {
            CacheFile::Foreign => continue,
            CacheFile::Temporary => age > ABANDONED_AFTER,
            CacheFile::Entry => age > UNUSED_FOR,
        };
        if expired {
            if std::fs::remove_file(item.path()).is_ok() {
                removed.push(item.path());
            }
        } else if class == CacheFile::Entry {
            kept.push((age, meta.len(), item.path()));
        }
    }
    let mut total: u64 = kept.iter().map(|&(_, len, _)| len).sum();
    // The oldest first.
    kept.sort_by_key(|&(age, _, _)| std::cmp::Reverse(age));
    for (_, len, path) in kept {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scalewise-disk-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A file of `len` bytes last modified `age` before `now`.
    fn file(dir: &Path, name: &str, len: usize, now: SystemTime, age: Duration) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; len]).unwrap();
        std::fs::File::options().append(true).open(&path).unwrap().set_modified(now - age).unwrap();
        path
    }

    #[test]
    fn the_cache_folder_follows_the_environment_and_the_platform() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| std::ffi::OsString::from(v))
        };
        const ALL: &[(&str, &str)] =
            &[("SCALEWISE_CACHE_DIR", "/c"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h"), ("LOCALAPPDATA", "/l")];
        let base = |pairs: &'static [(&'static str, &'static str)], windows| cache_base(env(pairs), windows);
        assert_eq!(base(ALL, false), Some(PathBuf::from("/c")));
        assert_eq!(base(&[("SCALEWISE_CACHE_DIR", "off"), ("HOME", "/h")], false), None);
        assert_eq!(
            base(&[("SCALEWISE_CACHE_DIR", ""), ("XDG_CACHE_HOME", "/x")], true),
            Some(PathBuf::from("/x/scalewise"))
        );
        assert_eq!(base(&[("HOME", "/h"), ("LOCALAPPDATA", "/l")], false), Some(PathBuf::from("/h/.cache/scalewise")));
        assert_eq!(
            base(&[("HOME", "/h"), ("LOCALAPPDATA", "/l")], true),
            Some(PathBuf::from("/l").join("scalewise").join("cache"))
        );
        assert_eq!(base(&[("HOME", "/h")], true), None, "Windows without LOCALAPPDATA caches nothing");
        assert_eq!(base(&[], false), None);
    }

    const HASH: &str = "00ca979b3808ea80b5f8ceee12484761";

    #[test]
    fn names_are_told_apart() {
        let cubin = format!("attention-sm90-{HASH}.cubin");
        let module = format!("matmul-{HASH}.so");
        for entry in
            ["vulkan-10005-0000-002c65b0a9b20aa7.pipelines", "wgpu_pipeline_cache_vulkan_65541_0", &cubin, &module]
        {
            assert_eq!(classify(entry), CacheFile::Entry, "{entry}");
        }
        let cubin_tmp = format!("attention-sm90-{HASH}.tmp12");
        let module_tmp = format!("matmul-{HASH}.tmp99.so");
        let counted_cubin_tmp = format!("attention-sm90-{HASH}.tmp12-0");
        let counted_module_tmp = format!("matmul-{HASH}.tmp99-31.so");
        for temporary in [
            "vulkan-10005-0000-002c65b0a9b20aa7.tmp4242",
            "vulkan-10005-0000-002c65b0a9b20aa7.tmp4242-7",
            "wgpu_pipeline_cache_vulkan_65541_0.tmp7",
            &cubin_tmp,
            &module_tmp,
            &counted_cubin_tmp,
            &counted_module_tmp,
        ] {
            assert_eq!(classify(temporary), CacheFile::Temporary, "{temporary}");
        }
        // A user's files in a folder SCALEWISE_CACHE_DIR names: the extensions alone are not enough.
        let not_a_family = format!("libfoo-{HASH}.so");
        let short_hash = "attention-sm90-00ca.cubin";
        for foreign in [
            "notes.txt",
            "libcuda.so",
            "libnvrtc.so.13",
            "kernel.cubin",
            "my.pipelines",
            &not_a_family,
            short_hash,
            "wgpu_pipeline_cache_vulkan_65541",
            ".last-pruned",
            "x.tmp",
            "x.tmp12",
            "x.tmp12-3",
            "photo.tmp12.so",
            "vulkan-10005-0000-002c65b0a9b20aa7.tmp4242-",
            "vulkan-10005-0000-002c65b0a9b20aa7.tmp-7",
            "vulkan-10005-0000-002c65b0a9b20aa7.tmp1-2-3",
            ".so",
            "cubin",
        ] {
            assert_eq!(classify(foreign), CacheFile::Foreign, "{foreign}");
        }
    }

    #[test]
    fn prunes_stale_entries_and_abandoned_temporaries_only() {
        let dir = folder("age");
        let now = SystemTime::now();
        let old = UNUSED_FOR + DAY;
        let stale = file(&dir, "vulkan-10005-0000-0000000000000001.pipelines", 10, now, old);
        let stale_cubin = file(&dir, &format!("matmul-sm90-{HASH}.cubin"), 10, now, old);
        let fresh = file(&dir, "vulkan-10005-0000-0000000000000003.pipelines", 10, now, UNUSED_FOR - DAY);
        let abandoned = file(&dir, &format!("matmul-{HASH}.tmp321.so"), 10, now, 2 * ABANDONED_AFTER);
        let writing = file(&dir, "vulkan-10005-0000-0000000000000005.tmp322", 10, now, Duration::from_secs(5));
        let foreign = file(&dir, "holiday.png", 10, now, 10 * old);
        std::fs::create_dir(dir.join("sub.cubin")).unwrap();
        let mut removed = prune(&dir, now, MAX_FOLDER_BYTES);
        removed.sort();
        let mut expected = vec![stale, stale_cubin, abandoned];
        expected.sort();
        assert_eq!(removed, expected);
        for path in &expected {
            assert!(!path.exists(), "{}", path.display());
        }
        for path in [&fresh, &writing, &foreign] {
            assert!(path.exists(), "{}", path.display());
        }
        assert!(dir.join("sub.cubin").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_folder_loses_its_least_recently_used_entries() {
        let dir = folder("size");
        let now = SystemTime::now();
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let oldest = file(&dir, &format!("attention-{HASH}.so"), 400, now, hours(30));
        let older = file(&dir, &format!("matmul-{HASH}.so"), 300, now, hours(20));
        let newer = file(&dir, &format!("conv2d-sm80-{HASH}.cubin"), 200, now, hours(10));
        let newest = file(&dir, "vulkan-10005-0000-0000000000000004.pipelines", 100, now, hours(1));
        let foreign = file(&dir, "readme.txt", 5000, now, hours(40));
        // 1000 bytes of entries against 450: the two oldest go (600 -> 300 left).
        let removed = prune(&dir, now, 450);
        assert_eq!(removed, vec![oldest.clone(), older.clone()]);
        assert!(!oldest.exists() && !older.exists());
        assert!(newer.exists() && newest.exists() && foreign.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg(unix)]
    fn planted_links_are_never_followed() {
        let dir = folder("links");
        let victim = dir.join("precious");
        std::fs::write(&victim, b"precious").unwrap();
        // Old enough that the marker (followed to it) says pruning is due: it used to be truncated.
        let old = SystemTime::now() - 2 * DAY;
        std::fs::File::options().write(true).open(&victim).unwrap().set_modified(old).unwrap();
        let marker = dir.join(PRUNE_MARKER);
        std::os::unix::fs::symlink(&victim, &marker).unwrap();
        assert!(prune_if_due(&dir, SystemTime::now(), MAX_FOLDER_BYTES).is_some());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&marker).unwrap().is_file(), "the link was not replaced by a marker");
        // The same for the predictable temporary of a write.
        let entry = dir.join("vulkan-10005-0000-0000000000000001.pipelines");
        let tmp = temporary(&entry, "");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write_through(&entry, b"entry", &tmp);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&entry).unwrap(), b"entry");
        assert!(std::fs::symlink_metadata(&tmp).is_err(), "the temporary is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_is_pruned_at_most_once_a_day() {
        let dir = folder("daily");
        let now = SystemTime::now();
        let stale = || file(&dir, "vulkan-10005-0000-0000000000000001.pipelines", 10, now, UNUSED_FOR + DAY);
        let path = stale();
        assert_eq!(prune_if_due(&dir, now, MAX_FOLDER_BYTES), Some(vec![path.clone()]));
        assert!(dir.join(PRUNE_MARKER).is_file());
        stale();
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(prune_if_due(&dir, now + hours(23), MAX_FOLDER_BYTES), None, "pruned within the day");
        assert!(path.exists());
        assert_eq!(prune_if_due(&dir, now + hours(25), MAX_FOLDER_BYTES), Some(vec![path.clone()]));
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reading_or_finding_an_entry_marks_it_used() {
        let dir = folder("used");
        let now = SystemTime::now();
        let old = UNUSED_FOR + DAY;
        let read_one = file(&dir, "vulkan-10005-0000-0000000000000001.pipelines", 10, now, old);
        let found_one = file(&dir, &format!("matmul-{HASH}.so"), 10, now, old);
        let left = file(&dir, &format!("conv2d-sm80-{HASH}.cubin"), 10, now, old);
        assert_eq!(read(&read_one, 1 << 20).as_deref(), Some(&[7u8; 10][..]));
        assert!(find(&found_one));
        assert!(!find(&dir.join("missing.so")));
        assert_eq!(read(&left, 5), None, "a file over the limit is not read");
        assert_eq!(prune(&dir, SystemTime::now(), MAX_FOLDER_BYTES), vec![left]);
        assert!(read_one.exists() && found_one.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
