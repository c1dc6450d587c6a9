//! Pipelines compiled ahead of their first dispatch. A process that names its workload
//! ([`crate::Device::prewarm_pipelines`]: the CLI names the model and the storage type) records the
//! keys of the pipelines it compiled in a small manifest in the user's cache folder, one file per
//! adapter, driver and workload; the next process with that workload compiles them on background
//! threads, in parallel, while it loads the weights, so its first generation does not wait for
//! compiles. Like the other disk caches this is only a speed-up: an unreadable, foreign or stale
//! line is skipped, and a pipeline the manifest missed compiles on first use as before.

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;

use super::launch::PipelineKey;
use super::shaders::{self, Variant};
use crate::device::Caps;
use crate::dtype::DType;
use crate::kernels::{ConstType, ConstValue, Family};

/// First line of every manifest; a file without it is ignored.
const HEADER: &str = "scalewise pipeline manifest 1";
/// Pipelines kept per manifest (the most recently compiled first).
const MAX_KEYS: usize = 1024;
/// Largest manifest read back.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The pipelines a workload used before, and where this process records its own.
pub(crate) struct Manifest {
    path: PathBuf,
    /// The keys read from the file (valid for this device), in file order.
    pub(crate) keys: Vec<PipelineKey>,
}

impl Manifest {
    /// The manifest of `workload` on this adapter and driver; `None` when there is no cache folder.
    /// Keys of another flavour than the device's (recorded by a device opened with subgroups off,
    /// say) or of f16 on a device without it are skipped.
    pub(crate) fn open(info: &wgpu::AdapterInfo, workload: &str, caps: &Caps) -> Option<Self> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&info.name, &info.driver, &info.driver_info, env!("CARGO_PKG_VERSION"), workload).hash(&mut hasher);
        let file = format!(
            "{}-{:04x}-{:04x}-{:016x}.pipelines",
            format!("{:?}", info.backend).to_lowercase(),
            info.vendor,
            info.device,
            hasher.finish()
        );
        let path = crate::device::disk_cache::dir("wgpu")?.join(file);
        let text = crate::device::disk_cache::read(&path, MAX_FILE_BYTES)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        let mut lines = text.lines();
        let keys = if lines.next() == Some(HEADER) {
            let mut seen = HashSet::new();
            lines
                .filter_map(parse)
                .filter(|key| key.variant == shaders::variant(key.family, key.variant.dtype, caps))
                .filter(|key| caps.f16 || key.variant.dtype != DType::F16)
                .filter(|key| seen.insert(key.clone()))
                .take(MAX_KEYS)
                .collect()
        } else {
            Vec::new()
        };
        Some(Self { path, keys })
    }

    /// Writes `compiled` (this process's pipelines) followed by the keys read at open that it did
    /// not compile, unless that adds nothing to the file.
    pub(crate) fn save(&self, compiled: Vec<PipelineKey>) {
        let known: HashSet<&PipelineKey> = self.keys.iter().collect();
        if compiled.iter().all(|key| known.contains(key)) {
            return;
        }
        let fresh: HashSet<&PipelineKey> = compiled.iter().collect();
        let kept = self.keys.iter().filter(|key| !fresh.contains(key));
        let mut text = format!("{HEADER}\n");
        for key in compiled.iter().chain(kept).take(MAX_KEYS) {
            text.push_str(&format_key(key));
            text.push('\n');
        }
        crate::device::disk_cache::write(&self.path, text.as_bytes());
    }
}

/// `family dtype subgroups entry access NAME=value...`, e.g.
/// `attention f16 0 flash_attention rrrw HEAD_DIM=64 GROUP_MAJOR=false`.
fn format_key(key: &PipelineKey) -> String {
    let access: String = key.writable.iter().map(|&w| if w { 'w' } else { 'r' }).collect();
    let mut line = format!(
        "{} {} {} {} {}",
        key.family.name(),
        key.variant.dtype,
        u8::from(key.variant.subgroups),
        key.entry,
        if access.is_empty() { "-".into() } else { access }
    );
    for (name, value) in &key.constants {
        match value {
            ConstValue::Bool(b) => line.push_str(&format!(" {name}={b}")),
            ConstValue::U32(v) => line.push_str(&format!(" {name}={v}")),
        }
    }
    line
}

/// The key a manifest line names, or `None` for anything this build does not know.
fn parse(line: &str) -> Option<PipelineKey> {
    let mut words = line.split_ascii_whitespace();
    let (family, dtype) = (words.next()?, words.next()?);
    let family = *Family::ALL.iter().find(|f| f.name() == family)?;
    let dtype = [DType::F32, DType::F16, DType::U32].into_iter().find(|d| d.to_string() == dtype)?;
    if !family.dtypes().contains(&dtype) {
        return None;
    }
    let subgroups = match words.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let entry = words.next()?;
    if entry.is_empty() || entry.len() > 64 || !entry.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let writable = match words.next()? {
        "-" => Vec::new(),
        access if access.len() <= 32 => {
            access.chars().map(|c| matches!(c, 'w' | 'r').then_some(c == 'w')).collect::<Option<Vec<_>>>()?
        }
        _ => return None,
    };
    let mut constants = Vec::new();
    for word in words {
        let (name, value) = word.split_once('=')?;
        let &(name, ty) = family.constants().iter().find(|(n, _)| *n == name)?;
        let value = match ty {
            ConstType::Bool => ConstValue::Bool(value.parse().ok()?),
            ConstType::U32 => ConstValue::U32(value.parse().ok()?),
        };
        constants.push((name, value));
    }
    Some(PipelineKey { family, variant: Variant { dtype, subgroups }, entry: intern(entry), constants, writable })
}

/// Entry names live as long as the pipelines keyed by them; each distinct name is stored once.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let Ok(mut names) = NAMES.lock() else { return Box::leak(name.into()) };
    if let Some(&known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_the_manifest_format() {
        let key = PipelineKey {
            family: Family::Attention,
            variant: Variant { dtype: DType::F16, subgroups: true },
            entry: "flash_attention",
            constants: vec![("HEAD_DIM", ConstValue::U32(64)), ("GROUP_MAJOR", ConstValue::Bool(false))],
            writable: vec![false, false, false, true],
        };
        let line = format_key(&key);
        assert_eq!(line, "attention f16 1 flash_attention rrrw HEAD_DIM=64 GROUP_MAJOR=false");
        assert_eq!(parse(&line), Some(key));
    }

    #[test]
    fn unknown_or_malformed_lines_are_skipped() {
        for line in [
            "",
            "nosuchfamily f32 0 main rw",
            "attention u32 0 flash_attention rrrw",
            "attention f32 2 flash_attention rrrw",
            "attention f32 0 flash-attention rrrw",
            "attention f32 0 flash_attention rrxw",
            "attention f32 0 flash_attention rrrw NO_SUCH=1",
            "attention f32 0 flash_attention rrrw HEAD_DIM=true",
            "attention f32 0 flash_attention rrrw HEAD_DIM",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }
}
