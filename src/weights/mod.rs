//! Named host tensors (a state_dict) and the files they come from. Host-only: the models read a
//! state_dict onto a device through [`crate::nn::Loader`], which also validates its keys and shapes.
//!
//! [`StateDict::load`] reads, without Python:
//! - **safetensors** files: F32, F16, BF16 and F64 tensors are converted to f32; integer and bool tensors
//!   are recorded in [`StateDict::skipped`]; any other dtype is an [`Error::WeightsDType`] naming the key.
//!   The header's `__metadata__` lands in [`StateDict::metadata`].
//! - **PyTorch checkpoints** written by `torch.save` (the zip format, the default since torch 1.6; the
//!   official VAR and VQVAE `.pth` files): `<root>/data.pkl` is interpreted by a small pickle machine that
//!   knows only the objects state dicts are made of (no code runs), and tensors are gathered from the
//!   `<root>/data/<key>` storages honouring storage offsets and strides (non-contiguous views included).
//!   The top-level object must be a dict. If none of its values is a tensor and it has a `state_dict`,
//!   `model` or `module` entry holding a dict (checked in that order, repeatedly, so
//!   `{"model": {"module": sd}}` works too), that dict is the state_dict; training checkpoints such as
//!   `{"epoch": 3, "model": sd, "optimizer": ...}` therefore load their weights. Non-tensor values in the
//!   state_dict (`_extra_state`) are recorded as skipped with dtype `object`.
//!
//! Every read is bounds-checked against the file: a truncated, corrupt or foreign file yields
//! [`Error::WeightsFile`] naming the path, never a panic or an allocation larger than the file justifies.

mod pickle;
mod pth;
mod safetensors;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// A tensor in host memory, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A tensor present in a weights file but not loaded: an integer or bool buffer such as BatchNorm's
/// `num_batches_tracked`, or a non-tensor state_dict value (`dtype` is then `object`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedTensor {
    /// The stored element type in safetensors spelling (`I64`, `I32`, `I16`, `I8`, `U8`, `BOOL`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Limits and checks applied while a weights file is read and a model loads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The most bytes (as f32) the tensors of one file may occupy in host memory. Independently of it, a
    /// file never expands to more than [`EXPANSION_FACTOR`] times its own size, so a small hostile file
    /// cannot become a large allocation. Default [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
    /// Load NaN and infinite weights instead of refusing them (they make every image the same, or
    /// black). Default false.
    pub allow_non_finite: bool,
}

/// The default of [`LoadOptions::max_bytes`]: 64 GiB, four times the largest official checkpoint.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;

/// How many bytes of f32 tensors one byte of a file may become: f16 and bf16 double, a tensor saved
/// under two names (tied weights) counts twice, and a few broadcast (stride 0) views add a little.
pub const EXPANSION_FACTOR: u64 = 8;

/// Slack on the expansion bound, for tiny files whose few expanded views are legitimately larger than
/// eight times the file.
const EXPANSION_SLACK: u64 = 1 << 20;

impl Default for LoadOptions {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_MAX_BYTES, allow_non_finite: false }
    }
}

impl LoadOptions {
    /// The host bytes a file of `file_len` bytes may expand to.
    pub(crate) fn budget(&self, file_len: u64) -> u64 {
        file_len.saturating_mul(EXPANSION_FACTOR).saturating_add(EXPANSION_SLACK).min(self.max_bytes)
    }
}

/// Counts the host bytes a reader materialises against [`LoadOptions::budget`].
pub(crate) struct Budget {
    left: u64,
    total: u64,
    max_bytes: u64,
}

impl Budget {
    pub(crate) fn new(options: &LoadOptions, file_len: u64) -> Self {
        let total = options.budget(file_len);
        Self { left: total, total, max_bytes: options.max_bytes }
    }

    /// Reserves `elements` f32 values for tensor `key`, or says why the file may not grow that large.
    pub(crate) fn take(&mut self, key: &str, elements: usize) -> std::result::Result<(), String> {
        let bytes = (elements as u64).saturating_mul(4);
        if bytes > self.left {
            // Which bound was met decides what to say: the caller's own limit may simply be too low.
            return Err(if self.total == self.max_bytes {
                format!(
                    "tensor {} would bring the loaded tensors to more than the limit of {} bytes \
                     (LoadOptions::max_bytes, the CLI's --max-weights-mib): raise the limit to load this file",
                    crate::error::shown(key),
                    self.max_bytes
                )
            } else {
                format!(
                    "tensor {} would bring the loaded tensors to more than {} bytes, {EXPANSION_FACTOR} times the \
                     file's size: a file whose views expand far beyond its stored bytes",
                    crate::error::shown(key),
                    self.total
                )
            });
        }
        self.left -= bytes;
        Ok(())
    }
}

/// Parameters by their PyTorch state_dict names.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    tensors: BTreeMap<String, HostTensor>,
    /// Whether models may load NaN and infinite values from this state_dict (see
    /// [`LoadOptions::allow_non_finite`]); otherwise the model loaders refuse them, naming the tensor.
    pub allow_non_finite: bool,
    /// String metadata: a safetensors file's `__metadata__` (empty for `.pth` files).
    pub metadata: BTreeMap<String, String>,
    /// Tensors the file holds that were not loaded (see [`SkippedTensor`]). [`StateDict::check`] ignores
    /// them.
    pub skipped: BTreeMap<String, SkippedTensor>,
}

/// The file formats [`StateDict::load`] recognises by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightsFormat {
    Safetensors,
    /// torch.save's zip checkpoint (`.pth`, `.pt`, `.bin`, `.ckpt`).
    TorchZip,
}

/// The path reported by the constructors that read from memory.
const MEMORY: &str = "<memory>";

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a safetensors file or a torch.save zip checkpoint, whichever the content is (the extension
    /// does not matter).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// [`StateDict::load`] with explicit limits and checks.
    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let (file, len, format) = open_and_sniff(path)?;
        let mut sd = match format {
            WeightsFormat::Safetensors => safetensors::read(&mut FileSource { file, len }, path, options),
            WeightsFormat::TorchZip => pth::read(std::io::BufReader::new(file), len, path, options),
        }?;
        sd.allow_non_finite = options.allow_non_finite;
        Ok(sd)
    }

    /// Reads a safetensors file or a torch.save zip checkpoint held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with(bytes, &LoadOptions::default())
    }

    /// [`StateDict::from_bytes`] with explicit limits and checks.
    pub fn from_bytes_with(bytes: &[u8], options: &LoadOptions) -> Result<Self> {
        let mut sd = match sniff(bytes, bytes.len() as u64).map_err(|reason| file_error(Path::new(MEMORY), reason))? {
            WeightsFormat::Safetensors => safetensors::read(&mut SliceSource(bytes), Path::new(MEMORY), options),
            WeightsFormat::TorchZip => {
                pth::read(std::io::Cursor::new(bytes), bytes.len() as u64, Path::new(MEMORY), options)
            }
        }?;
        sd.allow_non_finite = options.allow_non_finite;
        Ok(sd)
    }

    /// Reads a safetensors file held in memory.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        safetensors::read(&mut SliceSource(bytes), Path::new(MEMORY), &LoadOptions::default())
    }

    /// Reads a torch.save zip checkpoint held in memory.
    pub fn from_pth_bytes(bytes: &[u8]) -> Result<Self> {
        pth::read(std::io::Cursor::new(bytes), bytes.len() as u64, Path::new(MEMORY), &LoadOptions::default())
    }

    /// The tensors and metadata as a safetensors file, stored as `dtype` (f32 or f16; with f16, a
    /// tensor holding values beyond its range stays f32: [`StateDict::beyond_f16`]).
    pub fn to_safetensors_bytes(&self, dtype: DType) -> Result<Vec<u8>> {
        safetensors::write(self, dtype)
    }

    /// Writes a safetensors file atomically (a temporary file renamed into place).
    pub fn save_safetensors(&self, path: impl AsRef<Path>, dtype: DType) -> Result<()> {
        crate::output::write_atomic(path.as_ref(), &self.to_safetensors_bytes(dtype)?)
    }

    /// An error naming every tensor that holds NaN or infinity, unless the file was loaded with
    /// [`LoadOptions::allow_non_finite`] (the model loaders check the keys they use; this checks all
    /// of them, for a caller such as a converter that uses none). An additive mask, a tensor of only
    /// 0 and -inf such as VAR's `attn_bias_for_masking`, is not a fault.
    pub fn check_finite(&self) -> Result<()> {
        if self.allow_non_finite {
            return Ok(());
        }
        let mask = |data: &[f32]| data.iter().all(|&v| v == 0.0 || v == f32::NEG_INFINITY);
        let tensors: Vec<(String, usize, usize)> = self
            .iter()
            .filter_map(|(key, t)| {
                let bad = t.data.iter().filter(|v| !v.is_finite()).count();
                (bad > 0 && !mask(&t.data)).then(|| (key.to_string(), bad, t.data.len()))
            })
            .collect();
        if tensors.is_empty() { Ok(()) } else { Err(Error::NonFiniteWeights { prefix: String::new(), tensors }) }
    }

    /// The keys holding finite values beyond f16's range (+-65504), in key order: written as f32 when
    /// [`StateDict::to_safetensors_bytes`] is asked for f16.
    pub fn beyond_f16(&self) -> Vec<&str> {
        let beyond = |v: &f32| v.is_finite() && !half::f16::from_f32(*v).is_finite();
        self.iter().filter(|(_, t)| t.data.iter().any(beyond)).map(|(key, _)| key).collect()
    }

    /// The number of loaded tensors (skipped ones not counted).
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The loaded tensors in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t))
    }

    /// Removes and returns a tensor (for builders that take ownership of large tables).
    pub fn remove(&mut self, key: &str) -> Option<HostTensor> {
        self.tensors.remove(key)
    }

    pub fn insert(&mut self, key: impl Into<String>, shape: &[usize], data: Vec<f32>) -> Result<()> {
        let key = key.into();
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::ShapeMismatch {
                op: "StateDict::insert",
                lhs: shape.to_vec(),
                rhs: vec![data.len()],
                detail: format!("{key}: the shape and the number of values disagree"),
            });
        }
        self.tensors.insert(key, HostTensor { shape: shape.to_vec(), data });
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Checks that the keys under `prefix` are exactly `expected` (name relative to the prefix, shape;
    /// `None` for an optional key) and reports every problem at once.
    pub fn check(&self, prefix: &str, expected: &[(&str, Vec<usize>, bool)]) -> Result<()> {
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        for (name, shape, required) in expected {
            let key = format!("{prefix}{name}");
            match self.tensors.get(&key) {
                None if *required => missing.push(key),
                None => {}
                Some(t) if &t.shape != shape => misshaped.push((key, shape.clone(), t.shape.clone())),
                Some(_) => {}
            }
        }
        // One set of full names, so the scan over the state_dict is linear in its keys.
        let known: std::collections::HashSet<String> =
            expected.iter().map(|(name, _, _)| format!("{prefix}{name}")).collect();
        let unexpected: Vec<String> = self
            .tensors
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .filter(|k| !known.contains(k.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
            return Ok(());
        }
        Err(Error::Weights { prefix: prefix.to_string(), missing, unexpected, misshaped })
    }

    /// The tensor under `key`, or a Weights error naming it.
    pub fn require(&self, prefix: &str, name: &str) -> Result<&HostTensor> {
        let key = format!("{prefix}{name}");
        self.tensors.get(&key).ok_or_else(|| Error::Weights {
            prefix: prefix.to_string(),
            missing: vec![key],
            unexpected: Vec::new(),
            misshaped: Vec::new(),
        })
    }
}

/// Named tensors a model loads from: a [`StateDict`] held in memory, or a [`WeightsFile`] that reads
/// each tensor from disk when it is asked for (so loading a checkpoint never holds more than one
/// tensor of it on the host). The model loaders and the configuration inference take `&dyn Weights`.
pub trait Weights {
    /// The shape of `key`, or None when the source has no such (float) tensor.
    fn shape(&self, key: &str) -> Option<&[usize]>;
    /// The values of `key` as f32, row-major: borrowed from memory, or read and converted now.
    fn read(&self, key: &str) -> Result<Cow<'_, [f32]>>;
    /// The float tensors' keys, in order.
    fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_>;
    /// The number of float tensors.
    fn len(&self) -> usize;
    /// String metadata (a safetensors file's `__metadata__`).
    fn metadata(&self) -> &BTreeMap<String, String>;
    /// Whether models may load NaN and infinite values from this source (see
    /// [`LoadOptions::allow_non_finite`]).
    fn allow_non_finite(&self) -> bool;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn contains(&self, key: &str) -> bool {
        self.shape(key).is_some()
    }

    /// The shape of `{prefix}{name}`, or a Weights error naming it as missing.
    fn require_shape(&self, prefix: &str, name: &str) -> Result<&[usize]> {
        self.shape(&format!("{prefix}{name}")).ok_or_else(|| Error::Weights {
            prefix: prefix.to_string(),
            missing: vec![format!("{prefix}{name}")],
            unexpected: Vec::new(),
            misshaped: Vec::new(),
        })
    }
}

impl Weights for StateDict {
    fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    fn read(&self, key: &str) -> Result<Cow<'_, [f32]>> {
        self.tensors.get(key).map(|t| Cow::Borrowed(t.data.as_slice())).ok_or_else(|| Error::Weights {
            prefix: String::new(),
            missing: vec![key.to_string()],
            unexpected: Vec::new(),
            misshaped: Vec::new(),
        })
    }

    fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.tensors.keys().map(String::as_str))
    }

    fn len(&self) -> usize {
        self.tensors.len()
    }

    fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn allow_non_finite(&self) -> bool {
        self.allow_non_finite
    }
}

/// Where a tensor's bytes lie in a [`WeightsFile`] and how to read them.
#[derive(Debug, Clone)]
pub(crate) struct LazyTensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) ty: FloatType,
    /// The first byte of the elements the tensor reads, and how many bytes from there.
    pub(crate) byte_start: u64,
    pub(crate) byte_len: u64,
    /// The view's strides (elements) relative to `byte_start`, for a torch view that is not simply
    /// contiguous; None: the bytes are the tensor, row-major.
    pub(crate) stride: Option<Vec<u64>>,
}

/// A weights file opened for streaming: its header (safetensors) or pickle (torch.save) is read and
/// every tensor's place in the file checked up front, with the same limits as [`StateDict::load_with`];
/// the values are read, converted and handed out one tensor at a time by [`Weights::read`]. A model
/// loaded from it uploads each tensor and drops the host copy, so peak host memory stays near the
/// largest tensor instead of the whole checkpoint (a 3.66B-parameter M-VAR d32 is 14.6 GB in f32).
///
/// Differences from [`StateDict::load`]: a torch.save record's CRC is not verified (that would read
/// the whole file twice); a damaged byte shows up as a wrong or non-finite value, and non-finite
/// values are refused by the model loaders unless allowed.
pub struct WeightsFile {
    path: std::path::PathBuf,
    file: std::sync::Mutex<FileSource>,
    index: BTreeMap<String, LazyTensor>,
    metadata: BTreeMap<String, String>,
    /// Tensors the file holds that are not read (see [`SkippedTensor`]).
    pub skipped: BTreeMap<String, SkippedTensor>,
    allow_non_finite: bool,
}

impl WeightsFile {
    /// Opens a safetensors file or torch.save zip checkpoint (by content) and indexes its tensors.
    pub fn open(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let fail = |reason: String| file_error(path, reason);
        let (file, len, format) = open_and_sniff(path)?;
        let (index, metadata, skipped) = match format {
            WeightsFormat::Safetensors => {
                let mut source = FileSource { file: file.try_clone().map_err(|e| fail(e.to_string()))?, len };
                safetensors::index(&mut source, path, options)?
            }
            WeightsFormat::TorchZip => {
                let reader = std::io::BufReader::new(file.try_clone().map_err(|e| fail(e.to_string()))?);
                let (index, skipped) = pth::index(reader, len, path, options)?;
                (index, BTreeMap::new(), skipped)
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            file: std::sync::Mutex::new(FileSource { file, len }),
            index,
            metadata,
            skipped,
            allow_non_finite: options.allow_non_finite,
        })
    }

    /// Reads every tensor into a [`StateDict`] (what [`StateDict::load_with`] gives, without the CRC
    /// checks).
    pub fn read_all(&self) -> Result<StateDict> {
        let mut sd = StateDict::new();
        for key in self.index.keys() {
            let data = self.read(key)?.into_owned();
            sd.tensors.insert(key.clone(), HostTensor { shape: self.index[key].shape.clone(), data });
        }
        sd.metadata = self.metadata.clone();
        sd.skipped = self.skipped.clone();
        sd.allow_non_finite = self.allow_non_finite;
        Ok(sd)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Weights for WeightsFile {
    fn shape(&self, key: &str) -> Option<&[usize]> {
        self.index.get(key).map(|t| t.shape.as_slice())
    }

    fn read(&self, key: &str) -> Result<Cow<'_, [f32]>> {
        let fail = |reason: String| file_error(&self.path, format!("tensor {}: {reason}", crate::error::shown(key)));
        let t = self.index.get(key).ok_or_else(|| fail("not in the file".into()))?;
        let len = usize::try_from(t.byte_len).map_err(|e| fail(e.to_string()))?;
        let mut file = self.file.lock().map_err(|_| fail("the file's lock was poisoned".into()))?;
        let bytes = file.read_at(t.byte_start, len).map_err(fail)?;
        let data = match &t.stride {
            None => t.ty.decode(&bytes),
            // The view was checked against its storage when the file was opened, and `bytes` is exactly
            // the span from its first to its last element.
            Some(stride) => materialise(&bytes, t.ty, 0, &t.shape, stride),
        };
        Ok(Cow::Owned(data))
    }

    fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.index.keys().map(String::as_str))
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn allow_non_finite(&self) -> bool {
        self.allow_non_finite
    }
}

/// Opens `path` and tells its format from the first bytes.
fn open_and_sniff(path: &Path) -> Result<(File, u64, WeightsFormat)> {
    let fail = |reason: String| file_error(path, reason);
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO for reading blocks until a writer comes, possibly forever (the app's load
    // never finished): non-blocking, the open returns at once and the check below refuses it.
    // Regular files ignore the flag.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let mut file = options.open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| fail(format!("cannot read its size: {e}")))?;
    if meta.is_dir() {
        return Err(fail("it is a directory, not a checkpoint file".into()));
    }
    if !meta.is_file() {
        return Err(fail("not a regular file (a FIFO, socket or device), so not a checkpoint".into()));
    }
    let len = meta.len();
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(format!("cannot read: {e}"))),
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| fail(format!("cannot seek: {e}")))?;
    let format = sniff(&head[..got], len).map_err(fail)?;
    Ok((file, len, format))
}

/// An [`Error::WeightsFile`].
pub(crate) fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::WeightsFile { path: path.to_path_buf(), reason: reason.into() }
}

/// Tells the format from the first bytes (`head`, up to 16) of a file of `len` bytes.
fn sniff(head: &[u8], len: u64) -> std::result::Result<WeightsFormat, String> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(WeightsFormat::TorchZip);
    }
    // Before the legacy check: a header length such as 0x280 starts with the bytes 80 02 too.
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(WeightsFormat::Safetensors);
    }
    if head.starts_with(b"PYTORCH1") {
        return Err("a TorchScript archive from torch's preview format, which scalewise does not read".into());
    }
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Err("a PyTorch checkpoint in the legacy (pre-1.6, non-zip) pickle format, which scalewise does \
                    not read; re-save it with torch >= 1.6 (`torch.save(torch.load(p), p)`) or convert it to \
                    safetensors"
            .into());
    }
    if head.len() < 9 {
        return Err(format!("the file is only {len} bytes long: too short to be a weights file"));
    }
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(format!("neither a safetensors file nor a torch.save zip checkpoint (first bytes {})", shown.join(" ")))
}

/// Random access to a weights file's bytes, in memory or on disk.
pub(crate) trait ByteSource {
    fn len(&self) -> u64;
    /// `len` bytes at `offset`; a range past the end is an error.
    fn read_at(&mut self, offset: u64, len: usize) -> std::result::Result<Cow<'_, [u8]>, String>;
}

struct SliceSource<'a>(&'a [u8]);

impl ByteSource for SliceSource<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, len: usize) -> std::result::Result<Cow<'_, [u8]>, String> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?))
            .and_then(|range| self.0.get(range))
            .map(Cow::Borrowed)
            .ok_or_else(|| format!("{len} bytes at offset {offset} lie past the end ({} bytes)", self.0.len()))
    }
}

struct FileSource {
    file: File,
    len: u64,
}

impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, len: usize) -> std::result::Result<Cow<'_, [u8]>, String> {
        if offset.checked_add(len as u64).is_none_or(|end| end > self.len) {
            return Err(format!("{len} bytes at offset {offset} lie past the end ({} bytes)", self.len));
        }
        let mut buf = vec![0u8; len];
        self.file.seek(SeekFrom::Start(offset)).map_err(|e| format!("seek to {offset} failed: {e}"))?;
        self.file.read_exact(&mut buf).map_err(|e| format!("reading {len} bytes at {offset} failed: {e}"))?;
        Ok(Cow::Owned(buf))
    }
}

/// The floating-point element types converted to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatType {
    F32,
    F16,
    BF16,
    F64,
}

impl FloatType {
    pub(crate) fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
            FloatType::F64 => 8,
        }
    }

    /// One little-endian element (`bytes.len() == self.size()`) as f32.
    fn decode_one(self, c: &[u8]) -> f32 {
        match self {
            FloatType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            FloatType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            FloatType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            FloatType::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
        }
    }

    /// Little-endian elements to f32 (`bytes.len()` a multiple of the element size). One loop per
    /// type with a fixed element size: this runs over every parameter of a checkpoint.
    pub(crate) fn decode(self, bytes: &[u8]) -> Vec<f32> {
        fn each<const N: usize>(bytes: &[u8], convert: impl Fn([u8; N]) -> f32) -> Vec<f32> {
            bytes.chunks_exact(N).map(|c| convert(c.try_into().expect("chunks of N bytes"))).collect()
        }
        match self {
            FloatType::F32 => each(bytes, f32::from_le_bytes),
            FloatType::F16 => each(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
            FloatType::BF16 => each(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
            FloatType::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        }
    }
}

/// What a loader does with a stored element type.
pub(crate) enum Conversion {
    Float(FloatType),
    /// Integer or bool: recorded in [`StateDict::skipped`] under this dtype name.
    Skip(&'static str),
    Reject,
}

/// How many times its storage's element count one view may hold (views with stride 0, expanded
/// tensors, repeat elements; views without overlap never exceed 1).
const VIEW_EXPANSION: u64 = 4;

/// Elements any view may hold whatever its storage: small broadcast buffers stay loadable.
const VIEW_EXPANSION_FLOOR: u64 = 4096;

/// Checks a strided view (`offset`, `shape`, `stride` in elements, as torch stores them) against a
/// storage of `available` elements: ranks agree, the element count is addressable, every element lies
/// inside the storage, and the view does not expand its storage beyond [`VIEW_EXPANSION`]. The index of
/// its last element, or None for an empty view.
pub(crate) fn check_view(
    available: u64,
    offset: u64,
    shape: &[usize],
    stride: &[u64],
) -> std::result::Result<Option<u64>, String> {
    if shape.len() != stride.len() {
        return Err(format!("shape {shape:?} and stride {stride:?} differ in rank"));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} has more elements than this machine can address"))?;
    if numel == 0 {
        return Ok(None);
    }
    let last = shape.iter().zip(stride).try_fold(offset, |acc, (&d, &s)| s.checked_mul(d as u64 - 1)?.checked_add(acc));
    let last = match last {
        Some(last) if last < available => last,
        _ => {
            return Err(format!(
                "a view with offset {offset}, shape {shape:?} and stride {stride:?} reaches past its storage of \
                 {available} elements"
            ));
        }
    };
    if numel as u64 > available.saturating_mul(VIEW_EXPANSION).max(VIEW_EXPANSION_FLOOR) {
        return Err(format!(
            "a view of shape {shape:?} has {numel} elements but its storage holds only {available} (an expanded \
             tensor more than {VIEW_EXPANSION} times its storage, which scalewise does not materialise)"
        ));
    }
    Ok(Some(last))
}

/// The elements of a strided view of a little-endian storage, converted to f32 in row-major order,
/// after [`check_view`].
pub(crate) fn gather(
    storage: &[u8],
    ty: FloatType,
    offset: u64,
    shape: &[usize],
    stride: &[u64],
) -> std::result::Result<Vec<f32>, String> {
    let available = (storage.len() / ty.size()) as u64;
    match check_view(available, offset, shape, stride)? {
        None => Ok(Vec::new()),
        Some(_) => Ok(materialise(storage, ty, offset, shape, stride)),
    }
}

/// [`gather`] without the checks: the caller has run [`check_view`] for a storage `storage` holds.
pub(crate) fn materialise(storage: &[u8], ty: FloatType, offset: u64, shape: &[usize], stride: &[u64]) -> Vec<f32> {
    let size = ty.size();
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Vec::new();
    }
    let contiguous = {
        let mut expected = 1u64;
        let mut ok = true;
        for (&d, &s) in shape.iter().zip(stride).rev() {
            if d != 1 && s != expected {
                ok = false;
                break;
            }
            expected = expected.saturating_mul(d as u64);
        }
        ok
    };
    // The last element's index lies inside the storage (check_view), which bounds every index below:
    // the conversions to usize cannot truncate and the slices stay inside `storage`.
    if contiguous {
        let start = offset as usize * size;
        return ty.decode(&storage[start..start + numel * size]);
    }
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; shape.len()];
    let mut at = offset;
    for _ in 0..numel {
        let byte = at as usize * size;
        out.push(ty.decode_one(&storage[byte..byte + size]));
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            at += stride[d];
            if index[d] < shape[d] {
                break;
            }
            at -= stride[d] * shape[d] as u64;
            index[d] = 0;
        }
    }
    out
}
