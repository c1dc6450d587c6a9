//! [`Loader`]: how the models read a [`StateDict`], in the manner of candle-nn's VarBuilder. The loading
//! code names every key and its shape once, where it reads it; the loader records what was asked for,
//! and [`Loader::finish`] reports every missing, unexpected and mis-shaped key in one
//! [`Error::Weights`].
//!
//! A missing or mis-shaped key does not stop the loading code: [`Loader::host`] hands back zeros of the
//! expected size and the upload methods a cheap empty placeholder, so the code runs on to the end and
//! `finish` can list every problem at once. The placeholders never reach a model: `finish` fails.
//!
//! ```ignore
//! let lp = Loader::new(device, sd, DType::F16);
//! let attn = lp.pp("blocks").pp(0).pp("attn");
//! let w = attn.tensor("proj.weight", &[c, c])?; // blocks.0.attn.proj.weight
//! lp.finish()?;
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::rc::Rc;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// A key predicate of [`Loader::accept_if`], with the prefix its names are relative to.
type Acceptor<'a> = (String, Box<dyn Fn(&str) -> bool + 'a>);

/// What the loaders of one tree have asked for and found wrong.
struct Record<'a> {
    /// The prefix of the root loader: [`Loader::finish`] reports the unrequested keys under it.
    root: String,
    /// Full keys requested or accepted.
    requested: BTreeSet<String>,
    missing: Vec<String>,
    /// (key, expected shape, shape found)
    misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// (key, non-finite values, values) of tensors read with NaN or infinities.
    non_finite: Vec<(String, usize, usize)>,
    /// The first tensor a streaming source failed to read (I/O or a damaged file).
    unreadable: Option<Error>,
    acceptors: Vec<Acceptor<'a>>,
}

impl Record<'_> {
    fn has_problems(&self) -> bool {
        !self.missing.is_empty()
            || !self.misshaped.is_empty()
            || !self.non_finite.is_empty()
            || self.unreadable.is_some()
    }
}

/// Reads a model's weights from a [`StateDict`] under a key prefix, uploading them as `dtype`. Child
/// loaders ([`Loader::pp`], [`Loader::with_dtype`]) share one record of the keys asked for, which
/// [`Loader::finish`] checks against the state_dict.
#[derive(Clone)]
pub struct Loader<'a> {
    device: &'a Device,
    sd: &'a dyn Weights,
    dtype: DType,
    /// Empty, or ending in '.'.
    prefix: String,
    record: Rc<RefCell<Record<'a>>>,
}

impl<'a> Loader<'a> {
    /// A root loader over every key of `sd`.
    pub fn new(device: &'a Device, sd: &'a dyn Weights, dtype: DType) -> Self {
        Self::new_with_prefix(device, sd, "", dtype)
    }

    /// A root loader over the keys starting with `prefix` (used verbatim: give the trailing '.', as in
    /// `"blocks.0.mixer."`). [`Loader::finish`] reports the unrequested keys under `prefix` only, and
    /// the error names `prefix`.
    pub fn new_with_prefix(device: &'a Device, sd: &'a dyn Weights, prefix: &str, dtype: DType) -> Self {
        Self {
            device,
            sd,
            dtype,
            prefix: prefix.to_string(),
            record: Rc::new(RefCell::new(Record {
                root: prefix.to_string(),
                requested: BTreeSet::new(),
                missing: Vec::new(),
                misshaped: Vec::new(),
                non_finite: Vec::new(),
                unreadable: None,
                acceptors: Vec::new(),
            })),
        }
    }

    /// A child loader for the keys under `name.`, sharing this loader's record.
    pub fn pp(&self, name: impl Display) -> Self {
        Self { prefix: format!("{}{name}.", self.prefix), ..self.clone() }
    }

    /// The same keys uploaded as `dtype` (the VAR head and the SSM parameters run in f32).
    pub fn with_dtype(&self, dtype: DType) -> Self {
        Self { dtype, ..self.clone() }
    }

    pub fn device(&self) -> &'a Device {
        self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// This loader's prefix: empty or ending in '.'.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full key of `name`.
    pub fn key(&self, name: impl Display) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether the state_dict holds `name` (for optional parts such as a shortcut conv). Records
    /// nothing: a key found this way still has to be read or accepted.
    pub fn has(&self, name: impl Display) -> bool {
        self.sd.contains(&self.key(name))
    }

    /// Whether a key read so far was missing or mis-shaped (the uploads then hand back placeholders).
    pub fn has_problems(&self) -> bool {
        self.record.borrow().has_problems()
    }

    /// The values of `name`, which must have `shape` and (unless the state_dict allows them) hold no
    /// NaN or infinity. A missing, mis-shaped or non-finite key is recorded for [`Loader::finish`] and
    /// reads as zeros of `shape`'s size, so the loading code can carry on. A `shape` above the
    /// adapter's per-binding limit is an error before anything is read or allocated: the shape comes
    /// from other keys' shapes, so a file of a few hundred bytes could otherwise ask for terabytes of
    /// zeros.
    pub fn host(&self, name: impl Display, shape: &[usize]) -> Result<Cow<'a, [f32]>> {
        let key = self.key(name);
        self.check_fits(&key, shape)?;
        let found = self.sd.shape(&key).map(<[usize]>::to_vec);
        // Read outside the record's borrow: a streaming source reads the file here.
        let data = match &found {
            Some(found) if found == shape => Some(self.sd.read(&key)),
            _ => None,
        };
        let mut record = self.record.borrow_mut();
        record.requested.insert(key.clone());
        match (found, data) {
            (Some(_), Some(Ok(data))) if self.sd.allow_non_finite() || data.iter().all(|v| v.is_finite()) => {
                return Ok(data);
            }
            (Some(_), Some(Ok(data))) => {
                let bad = data.iter().filter(|v| !v.is_finite()).count();
                record.non_finite.push((key, bad, data.len()));
            }
            (Some(_), Some(Err(error))) => {
                record.unreadable.get_or_insert(error);
            }
            (Some(found), None) => record.misshaped.push((key, shape.to_vec(), found)),
            (None, _) => record.missing.push(key),
        }
        Ok(Cow::Owned(vec![0.0; shape.iter().product()]))
    }

    /// `name`, which must have `shape`, uploaded as this loader's dtype. After any problem (see
    /// [`Loader::host`]) nothing is uploaded: the result is an empty placeholder.
    pub fn tensor(&self, name: impl Display, shape: &[usize]) -> Result<Tensor> {
        self.tensor_as(name, shape, shape)
    }

    /// `name`, stored with `shape`, uploaded with `as_shape` (the same number of elements), as
    /// [`Loader::tensor`] does.
    pub fn tensor_as(&self, name: impl Display, shape: &[usize], as_shape: &[usize]) -> Result<Tensor> {
        let data = self.host(name, shape)?;
        self.upload(as_shape, &data)
    }

    /// Refuses, before it is read, a weight above the adapter's per-binding limit in this loader's
    /// dtype (M-VAR d32's ada_lin is 151 MB in f32, above lavapipe's 128 MiB; in f16 it fits).
    fn check_fits(&self, key: &str, shape: &[usize]) -> Result<()> {
        let caps = self.device.caps();
        let limit = caps.max_arg_bytes.min(caps.max_buffer_bytes);
        let bytes = shape.iter().try_fold(self.dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64));
        match bytes {
            Some(bytes) if bytes <= limit => Ok(()),
            bytes => Err(Error::TooLarge {
                what: format!(
                    "weight {} {shape:?} as {}{}",
                    crate::error::shown(key),
                    self.dtype,
                    if self.dtype == DType::F32 { " (load the model with f16 weights: it then fits)" } else { "" }
                ),
                bytes: bytes.unwrap_or(u64::MAX),
                limit,
                limit_name: "per-buffer binding limit",
            }),
        }
    }

    /// `name` when the state_dict holds it (checked against `shape` and uploaded as
    /// [`Loader::tensor`] does), else `None`.
    pub fn optional(&self, name: impl Display, shape: &[usize]) -> Result<Option<Tensor>> {
        let key = self.key(&name);
        if self.sd.contains(&key) { self.tensor(name, shape).map(Some) } else { Ok(None) }
    }

    /// Values computed from the weights uploaded as this loader's dtype, or the empty placeholder once
    /// a problem was recorded.
    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        if self.has_problems() {
            Tensor::empty(self.device, &[0], self.dtype)
        } else {
            Tensor::from_f32(self.device, shape, data, self.dtype)
        }
    }

    /// An optional key the model does not use (a buffer such as an attention mask): absent is fine,
    /// present it must have `shape`.
    pub fn accept(&self, name: impl Display, shape: &[usize]) {
        let key = self.key(name);
        let mut record = self.record.borrow_mut();
        if let Some(found) = self.sd.shape(&key)
            && found != shape
        {
            record.misshaped.push((key.clone(), shape.to_vec(), found.to_vec()));
        }
        record.requested.insert(key);
    }

    /// Accepts, whatever their shape, the keys under this loader's prefix whose name (relative to the
    /// prefix) satisfies `predicate`: parts of a checkpoint the model ignores.
    pub fn accept_if(&self, predicate: impl Fn(&str) -> bool + 'a) {
        self.record.borrow_mut().acceptors.push((self.prefix.clone(), Box::new(predicate)));
    }

    /// Ends the loading: one [`Error::Weights`] naming every missing and mis-shaped key read through
    /// this loader's tree and every key under the root prefix that was neither read nor accepted.
    pub fn finish(self) -> Result<()> {
        if let Some(error) = self.record.borrow_mut().unreadable.take() {
            return Err(error);
        }
        let record = self.record.borrow();
        let accepted = |key: &str| {
            record.requested.contains(key)
                || record.acceptors.iter().any(|(prefix, accept)| key.strip_prefix(prefix.as_str()).is_some_and(accept))
        };
        let unexpected: Vec<String> = self
            .sd
            .keys()
            .filter(|k| k.starts_with(record.root.as_str()) && !accepted(k))
            .map(str::to_string)
            .collect();
        let mut missing = record.missing.clone();
        missing.sort();
        missing.dedup();
        let mut misshaped = record.misshaped.clone();
        misshaped.sort();
        misshaped.dedup();
        if !missing.is_empty() || !unexpected.is_empty() || !misshaped.is_empty() {
            return Err(Error::Weights { prefix: record.root.clone(), missing, unexpected, misshaped });
        }
        if !record.non_finite.is_empty() {
            let mut tensors = record.non_finite.clone();
            tensors.sort();
            return Err(Error::NonFiniteWeights { prefix: record.root.clone(), tensors });
        }
        Ok(())
    }
}
