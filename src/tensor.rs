//! Tensor = device storage + shape + dtype. Contiguous row-major; clones and reshapes share storage.
//! Floating tensors are f32, or f16 storage with f32 arithmetic inside every kernel.

use std::sync::Arc;

use crate::device::{Arg, Device, Grid, Launch, Readback, Storage};
pub use crate::dtype::{DType, Element};
use crate::dtype::{checked_numel, numel};
use crate::error::{Error, Result, index_u32};
use crate::kernels::{CastParams, Constants, CopyParams, Family, size};

#[derive(Clone)]
pub struct Tensor {
    device: Device,
    storage: Arc<Storage>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

impl Tensor {
    /// An uninitialised tensor (NaN-filled when the device poisons allocations).
    pub fn empty(device: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        if dtype == DType::F16 && !device.caps().f16 {
            return Err(Error::MissingFeature { what: "f16 tensor storage".into(), feature: "SHADER_F16" });
        }
        let bytes = checked_numel(shape)
            .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            .ok_or_else(|| Error::InvalidArgument { op: "Tensor::empty", msg: format!("shape {shape:?} overflows") })?;
        let storage = device.alloc(bytes as u64, &format!("a {dtype} tensor of shape {shape:?}"))?;
        Ok(Self { device: device.clone(), storage: Arc::new(storage), shape: shape.to_vec(), dtype })
    }

    pub fn zeros(device: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        let tensor = Self::empty(device, shape, dtype)?;
        device.zero(&tensor.storage, tensor.padded_bytes())?;
        Ok(tensor)
    }

    /// Uploads `data` as its own storage type (`f32` as F32, `half::f16` as F16, `u32` as U32).
    pub fn from_slice<T: Element>(device: &Device, shape: &[usize], data: &[T]) -> Result<Self> {
        Self::from_slice_as(device, shape, data, T::DTYPE)
    }

    /// Uploads `data` stored as `dtype`: floats convert between f32 and f16; indices stay u32.
    pub fn from_slice_as<T: Element>(device: &Device, shape: &[usize], data: &[T], dtype: DType) -> Result<Self> {
        const OP: &str = "Tensor::from_slice";
        if checked_numel(shape) != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: shape.to_vec(),
                rhs: vec![data.len()],
                detail: match checked_numel(shape) {
                    Some(n) => format!("the shape holds {n} elements but {} were given", data.len()),
                    None => format!("the shape's element count overflows; {} were given", data.len()),
                },
            });
        }
        let bytes = T::encode(data, dtype).ok_or_else(|| Error::UnsupportedDType {
            op: OP,
            dtype,
            expected: if T::DTYPE.is_float() { "f32 or f16 for float data" } else { "u32 for index data" },
        })?;
        let tensor = Self::empty(device, shape, dtype)?;
        device.write(&tensor.storage, &bytes)?;
        Ok(tensor)
    }

    /// Uploads f32 data, stored as `dtype` (F32 or F16).
    pub fn from_f32(device: &Device, shape: &[usize], data: &[f32], dtype: DType) -> Result<Self> {
        Self::from_slice_as(device, shape, data, dtype)
    }

    pub fn from_u32(device: &Device, shape: &[usize], data: &[u32]) -> Result<Self> {
        Self::from_slice(device, shape, data)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn size_in_bytes(&self) -> u64 {
        (self.numel() * self.dtype.size_in_bytes()) as u64
    }

    /// Size rounded up to whole 32-bit words, as bound and copied.
    fn padded_bytes(&self) -> u64 {
        self.size_in_bytes().div_ceil(4).max(1) * 4
    }

    /// This tensor as a kernel argument the kernel only reads.
    pub(crate) fn arg<'a>(&'a self, name: &'a str) -> Arg<'a> {
        Arg { storage: &self.storage, bytes: self.padded_bytes(), writable: false, name }
    }

    /// This tensor as a kernel argument the kernel writes.
    pub(crate) fn arg_mut<'a>(&'a self, name: &'a str) -> Arg<'a> {
        Arg { storage: &self.storage, bytes: self.padded_bytes(), writable: true, name }
    }

    /// Does `other` live on the same device?
    pub(crate) fn same_device(&self, other: &Tensor) -> bool {
        self.device.same(&other.device)
    }

    /// The shape as `N` dimensions, or an error naming `op`, what the tensor is (`"x (B, C, H, W)"`)
    /// and the shape it has.
    pub fn dims<const N: usize>(&self, op: &'static str, what: &str) -> Result<[usize; N]> {
        <[usize; N]>::try_from(self.shape.as_slice()).map_err(|_| Error::InvalidArgument {
            op,
            msg: format!("{what} must be {N}-D, got shape {:?}", self.shape),
        })
    }

    /// Same storage, new shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let Some(elements) = checked_numel(shape) else {
            return Err(Error::InvalidArgument { op: "reshape", msg: format!("shape {shape:?} overflows") });
        };
        if elements != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape.clone(),
                rhs: shape.to_vec(),
                detail: format!("{} elements cannot be viewed as {elements}", self.numel()),
            });
        }
        Ok(Self { shape: shape.to_vec(), ..self.clone() })
    }

    /// Blocking download as `T` (f16 widened to f32 and the reverse; indices only as u32).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.read_async()?.wait()
    }

    /// Blocking download as f32 (f16 widened).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.to_vec()
    }

    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.to_vec()
    }

    /// Starts copying the tensor to host memory; poll or wait on the returned handle.
    pub fn read_async(&self) -> Result<PendingRead> {
        let readback = self.device.read(&self.storage, self.padded_bytes())?;
        Ok(PendingRead { readback, len: self.numel(), dtype: self.dtype, device: self.device.clone() })
    }

    /// A copy of `range` along `dim`.
    pub fn slice(&self, dim: usize, range: std::ops::Range<usize>) -> Result<Self> {
        let len = self.dim_len("slice", dim)?;
        if range.start > range.end || range.end > len {
            return Err(Error::InvalidArgument {
                op: "slice",
                msg: format!(
                    "range {range:?} out of bounds for dimension {dim} of size {len} in shape {:?}",
                    self.shape
                ),
            });
        }
        let mut shape = self.shape.clone();
        shape[dim] = range.len();
        let out = Self::empty(&self.device, &shape, self.dtype)?;
        copy_block(self, &out, dim, range.start, 0, range.len())?;
        Ok(out)
    }

    /// Cuts `dim` into consecutive pieces of the given sizes, which must add up to its length (copies:
    /// tensors have no offsets).
    pub fn split<const N: usize>(&self, dim: usize, sizes: [usize; N]) -> Result<[Self; N]> {
        let len = self.dim_len("split", dim)?;
        // Checked: sizes that wrap past usize could add up to `len`.
        if sizes.iter().try_fold(0usize, |sum, &size| sum.checked_add(size)) != Some(len) {
            return Err(Error::InvalidArgument {
                op: "split",
                msg: format!("sizes {sizes:?} do not add up to dimension {dim} of shape {:?}", self.shape),
            });
        }
        let mut start = 0;
        let mut pieces = Vec::with_capacity(N);
        for size in sizes {
            pieces.push(self.slice(dim, start..start + size)?);
            start += size;
        }
        Ok(pieces.try_into().unwrap_or_else(|_| unreachable!("one piece per size")))
    }

    /// Joins tensors along `dim`; all other dimensions and the dtype must agree.
    pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Self> {
        let first =
            tensors.first().ok_or_else(|| Error::InvalidArgument { op: "concat", msg: "no tensors given".into() })?;
        first.dim_len("concat", dim)?;
        let mut shape = first.shape.clone();
        shape[dim] = 0;
        for t in tensors {
            check_same_device("concat", first, t)?;
            if t.dtype != first.dtype {
                return Err(Error::DTypeMismatch { op: "concat", lhs: first.dtype, rhs: t.dtype });
            }
            let compatible = t.shape.len() == first.shape.len()
                && t.shape.iter().zip(&first.shape).enumerate().all(|(d, (a, b))| d == dim || a == b);
            if !compatible {
                return Err(Error::ShapeMismatch {
                    op: "concat",
                    lhs: first.shape.clone(),
                    rhs: t.shape.clone(),
                    detail: format!("all dimensions but {dim} must agree"),
                });
            }
            shape[dim] = shape[dim].checked_add(t.shape[dim]).ok_or_else(|| Error::InvalidArgument {
                op: "concat",
                msg: format!("dimension {dim} of the joined tensors overflows"),
            })?;
        }
        let out = Self::empty(&first.device, &shape, first.dtype)?;
        let mut start = 0;
        for t in tensors {
            copy_block(t, &out, dim, 0, start, t.shape[dim])?;
            start += t.shape[dim];
        }
        Ok(out)
    }

    /// Writes `src` into this tensor at `start` along `dim`, in place (a KV cache append).
    pub fn write_slice(&self, dim: usize, start: usize, src: &Tensor) -> Result<()> {
        let len = self.dim_len("write_slice", dim)?;
        check_same_device("write_slice", self, src)?;
        if src.dtype != self.dtype {
            return Err(Error::DTypeMismatch { op: "write_slice", lhs: self.dtype, rhs: src.dtype });
        }
        let fits =
            src.shape.len() == self.shape.len()
                && src.shape.iter().zip(&self.shape).enumerate().all(|(d, (a, b))| {
                    if d == dim { start.checked_add(*a).is_some_and(|end| end <= len) } else { a == b }
                });
        if !fits {
            return Err(Error::ShapeMismatch {
                op: "write_slice",
                lhs: self.shape.clone(),
                rhs: src.shape.clone(),
                detail: format!("source must match all dimensions but {dim} and fit at offset {start}"),
            });
        }
        copy_block(src, self, dim, 0, start, src.shape[dim])
    }

    /// The same values stored as `dtype` (f32 <-> f16).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let (family, entry) = match (self.dtype, dtype) {
            (DType::F32, DType::F16) => (Family::CastToF16, "cast_f32_to_store"),
            (DType::F16, DType::F32) => (Family::CastToF32, "cast_store_to_f32"),
            (from, to) => {
                return Err(Error::InvalidArgument { op: "to_dtype", msg: format!("cannot convert {from} to {to}") });
            }
        };
        let out = Self::empty(&self.device, &self.shape, dtype)?;
        let n = index_u32("to_dtype", "elements", self.numel())?;
        let params = CastParams { n };
        self.device.launch(&Launch::new(
            family,
            entry,
            DType::F16,
            &Constants::new(family),
            &[self.arg("src"), out.arg_mut("dst")],
            &params,
            Grid::Linear(elements_grid(self.numel())),
        ))?;
        Ok(out)
    }

    /// Swaps the last two dimensions (a copy): (…, M, N) -> (…, N, M). The VQVAE moves between
    /// token maps (B, H * W, C) and images (B, C, H, W) with it.
    pub fn transpose_last2(&self) -> Result<Self> {
        let rank = self.shape.len();
        if rank < 2 {
            return Err(Error::InvalidArgument {
                op: "transpose_last2",
                msg: format!("needs at least 2 dimensions, got shape {:?}", self.shape),
            });
        }
        let (m, n) = (self.shape[rank - 2], self.shape[rank - 1]);
        let mut shape = self.shape.clone();
        shape[rank - 2] = n;
        shape[rank - 1] = m;
        let out = Self::empty(&self.device, &shape, self.dtype)?;
        if self.numel() == 0 {
            return Ok(out);
        }
        // The copy params in the transpose's reading: total elements, then M and N.
        let params = CopyParams {
            total: index_u32("transpose_last2", "elements", self.numel())?,
            count: m as u32,
            inner: n as u32,
            ..Default::default()
        };
        self.device.launch(&Launch::new(
            Family::Copy,
            "transpose_last2",
            self.dtype,
            &Constants::new(Family::Copy),
            &[self.arg("src"), out.arg_mut("dst")],
            &params,
            Grid::Linear(elements_grid(self.numel())),
        ))?;
        Ok(out)
    }

    fn dim_len(&self, op: &'static str, dim: usize) -> Result<usize> {
        self.shape.get(dim).copied().ok_or_else(|| Error::InvalidArgument {
            op,
            msg: format!("dimension {dim} out of range for shape {:?}", self.shape),
        })
    }
}

pub(crate) fn check_same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.same_device(b) {
        Ok(())
    } else {
        Err(Error::InvalidArgument { op, msg: "tensors live on different devices".into() })
    }
}

/// Workgroups of a one-thread-per-element kernel over `n` elements.
pub(crate) fn elements_grid(n: usize) -> u64 {
    (n as u64).div_ceil(size::THREADS_1D as u64)
}

/// dst[o, dst_start + j, i] = src[o, src_start + j, i] for j < count, viewing both tensors as
/// (outer, dim, inner) around `dim`.
fn copy_block(src: &Tensor, dst: &Tensor, dim: usize, src_start: usize, dst_start: usize, count: usize) -> Result<()> {
    let outer = numel(&src.shape[..dim]);
    let inner = numel(&src.shape[dim + 1..]);
    let total = outer * count * inner;
    let params = CopyParams {
        total: index_u32("copy", "elements", total)?,
        count: count as u32,
        inner: inner as u32,
        src_len: src.shape[dim] as u32,
        src_start: src_start as u32,
        dst_len: dst.shape[dim] as u32,
        dst_start: dst_start as u32,
    };
    src.device.launch(&Launch::new(
        Family::Copy,
        "copy_block",
        src.dtype,
        &Constants::new(Family::Copy),
        &[src.arg("src"), dst.arg_mut("dst")],
        &params,
        Grid::Linear(elements_grid(total)),
    ))
}

/// A download in flight.
pub struct PendingRead {
    readback: Readback,
    len: usize,
    dtype: DType,
    /// Keeps the device (and so the backend the readback polls) alive.
    device: Device,
}

impl PendingRead {
    /// Non-blocking: has the copy arrived?
    pub fn is_ready(&self) -> bool {
        self.readback.is_ready()
    }

    /// Waits and converts to `T`.
    pub fn wait<T: Element>(self) -> Result<Vec<T>> {
        // Work recorded since the read started goes to the GPU before the host blocks, so the GPU
        // has it queued behind the copy instead of idling until the host records more.
        self.device.flush()?;
        let (len, dtype) = (self.len, self.dtype);
        let bytes = self.readback.wait()?;
        T::decode(&bytes, len, dtype).ok_or(Error::UnsupportedDType {
            op: "to_vec",
            dtype,
            expected: if T::DTYPE.is_float() { "f32 or f16 for float data" } else { "u32 for index data" },
        })
    }

    pub fn wait_f32(self) -> Result<Vec<f32>> {
        self.wait()
    }

    pub fn wait_u32(self) -> Result<Vec<u32>> {
        self.wait()
    }
}
