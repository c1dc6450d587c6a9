//! Tensor = device storage + shape + dtype. Contiguous row-major; clones and reshapes share storage.
//! Floating tensors are f32, or f16 storage with f32 arithmetic inside every kernel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use half::f16;

use crate::device::launch::{Binding, Kernel};
use crate::device::{Device, GpuBuffer, GpuContext, launch, poisoned};
use crate::error::{Error, Result};
use crate::shaders::{self, Variant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// Half-precision storage; kernels accumulate in f32. Needs SHADER_F16.
    F16,
    /// Indices (token ids, class labels).
    U32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        })
    }
}

#[derive(Clone)]
pub struct Tensor {
    device: Device,
    buffer: Arc<GpuBuffer>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// An uninitialised tensor (NaN-filled when the device poisons allocations).
    pub fn empty(device: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        if dtype == DType::F16 && !device.features().shader_f16 {
            return Err(Error::MissingFeature { what: "f16 tensor storage".into(), feature: "SHADER_F16" });
        }
        let bytes = numel(shape)
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::InvalidArgument { op: "Tensor::empty", msg: format!("shape {shape:?} overflows") })?;
        let what = format!("a {dtype} tensor of shape {shape:?}");
        let buffer = device.ctx.pool.acquire(&device.ctx, bytes as u64, &what)?;
        Ok(Self { device: device.clone(), buffer: Arc::new(buffer), shape: shape.to_vec(), dtype })
    }

    pub fn zeros(device: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        let tensor = Self::empty(device, shape, dtype)?;
        let bytes = tensor.padded_bytes();
        // The pooled buffer may still be read by recorded kernels: they must run first.
        device.ctx.flush()?;
        device.ctx.checked("clearing a tensor", || {
            let mut encoder = device.ctx.device.create_command_encoder(&Default::default());
            encoder.clear_buffer(tensor.buffer.raw(), 0, Some(bytes));
            device.ctx.queue.submit([encoder.finish()]);
            Ok(())
        })?;
        Ok(tensor)
    }

    /// Uploads f32 data, stored as `dtype` (F32 or F16).
    pub fn from_f32(device: &Device, shape: &[usize], data: &[f32], dtype: DType) -> Result<Self> {
        check_len("Tensor::from_f32", shape, data.len())?;
        match dtype {
            DType::F32 => Self::from_bytes(device, shape, dtype, bytemuck::cast_slice(data)),
            DType::F16 => {
                let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                Self::from_bytes(device, shape, dtype, bytemuck::cast_slice(&halves))
            }
            DType::U32 => Err(Error::UnsupportedDType { op: "Tensor::from_f32", dtype, expected: "f32 or f16" }),
        }
    }

    pub fn from_u32(device: &Device, shape: &[usize], data: &[u32]) -> Result<Self> {
        check_len("Tensor::from_u32", shape, data.len())?;
        Self::from_bytes(device, shape, DType::U32, bytemuck::cast_slice(data))
    }

    fn from_bytes(device: &Device, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Self> {
        let tensor = Self::empty(device, shape, dtype)?;
        // queue.write_buffer lands before commands submitted later, and the pooled buffer may still be
        // read by recorded kernels: submit them first.
        device.ctx.flush()?;
        device.ctx.check_alive()?;
        // Buffer writes must be a multiple of 4 bytes (odd-length f16 data gets one pad element).
        if bytes.len().is_multiple_of(4) {
            device.ctx.queue.write_buffer(tensor.buffer.raw(), 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            device.ctx.queue.write_buffer(tensor.buffer.raw(), 0, &padded);
        }
        Ok(tensor)
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

    pub(crate) fn ctx(&self) -> &GpuContext {
        &self.device.ctx
    }

    pub(crate) fn bind<'a>(&'a self, name: &'a str, writable: bool) -> Binding<'a> {
        Binding { buffer: &self.buffer, bytes: self.padded_bytes(), writable, name }
    }

    /// Does `other` live on the same device?
    pub(crate) fn same_device(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.device.ctx, &other.device.ctx)
    }

    /// Same storage, new shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape.clone(),
                rhs: shape.to_vec(),
                detail: format!("{} elements cannot be viewed as {}", self.numel(), numel(shape)),
            });
        }
        Ok(Self { shape: shape.to_vec(), ..self.clone() })
    }

    /// Blocking download as f32 (f16 widened).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        self.read_async()?.wait_f32()
    }

    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.read_async()?.wait_u32()
    }

    /// Starts copying the tensor to host memory; poll or wait on the returned handle.
    pub fn read_async(&self) -> Result<PendingRead> {
        let ctx = self.ctx();
        let bytes = self.padded_bytes();
        ctx.flush()?;
        let staging = ctx.checked("starting a readback", || {
            let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(self.buffer.raw(), 0, &staging, 0, bytes);
            ctx.queue.submit([encoder.finish()]);
            Ok(staging)
        })?;
        let mapped = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Mutex::new(None));
        let (flag, slot) = (Arc::clone(&mapped), Arc::clone(&outcome));
        staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(result.map_err(|e| e.to_string()));
            }
            flag.store(true, Ordering::Release);
        });
        Ok(PendingRead { device: self.device.clone(), staging, mapped, outcome, len: self.numel(), dtype: self.dtype })
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
        if sizes.iter().sum::<usize>() != len {
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
            shape[dim] += t.shape[dim];
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
        let fits = src.shape.len() == self.shape.len()
            && src
                .shape
                .iter()
                .zip(&self.shape)
                .enumerate()
                .all(|(d, (a, b))| if d == dim { start + a <= len } else { a == b });
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
            (DType::F32, DType::F16) => (&shaders::CAST_TO_F16, "cast_f32_to_store"),
            (DType::F16, DType::F32) => (&shaders::CAST_TO_F32, "cast_store_to_f32"),
            (from, to) => {
                return Err(Error::InvalidArgument { op: "to_dtype", msg: format!("cannot convert {from} to {to}") });
            }
        };
        let out = Self::empty(&self.device, &self.shape, dtype)?;
        let n = self.numel() as u64;
        let ctx = self.ctx();
        let kernel = Kernel { family, entry, variant: Variant { dtype: DType::F16, subgroups: false }, constants: &[] };
        ctx.dispatch(
            &kernel,
            &[self.bind("src", false), out.bind("dst", true)],
            &[n as u32],
            launch::grid(ctx, n.div_ceil(256), "to_dtype")?,
        )?;
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
        let total = self.numel() as u64;
        if total == 0 {
            return Ok(out);
        }
        let total32 = u32::try_from(total).map_err(|_| Error::InvalidArgument {
            op: "transpose_last2",
            msg: format!("{total} elements exceed the 32-bit index range"),
        })?;
        let ctx = self.ctx();
        let kernel = Kernel {
            family: &shaders::COPY,
            entry: "transpose_last2",
            variant: Variant { dtype: self.dtype, subgroups: false },
            constants: &[],
        };
        ctx.dispatch(
            &kernel,
            &[self.bind("src", false), out.bind("dst", true)],
            &[total32, m as u32, n as u32, 0, 0, 0, 0],
            launch::grid(ctx, total.div_ceil(256), "transpose_last2")?,
        )?;
        Ok(out)
    }

    fn dim_len(&self, op: &'static str, dim: usize) -> Result<usize> {
        self.shape.get(dim).copied().ok_or_else(|| Error::InvalidArgument {
            op,
            msg: format!("dimension {dim} out of range for shape {:?}", self.shape),
        })
    }
}

fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    if numel(shape) != len {
        return Err(Error::ShapeMismatch {
            op,
            lhs: shape.to_vec(),
            rhs: vec![len],
            detail: format!("the shape holds {} elements but {len} were given", numel(shape)),
        });
    }
    Ok(())
}

pub(crate) fn check_same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.same_device(b) {
        Ok(())
    } else {
        Err(Error::InvalidArgument { op, msg: "tensors live on different devices".into() })
    }
}

/// dst[o, dst_start + j, i] = src[o, src_start + j, i] for j < count, viewing both tensors as
/// (outer, dim, inner) around `dim`.
fn copy_block(src: &Tensor, dst: &Tensor, dim: usize, src_start: usize, dst_start: usize, count: usize) -> Result<()> {
    let outer = numel(&src.shape[..dim]);
    let inner = numel(&src.shape[dim + 1..]);
    let total = (outer * count * inner) as u64;
    let ctx = src.ctx();
    let kernel = Kernel {
        family: &shaders::COPY,
        entry: "copy_block",
        variant: Variant { dtype: src.dtype, subgroups: false },
        constants: &[],
    };
    let params = [
        total as u32,
        count as u32,
        inner as u32,
        src.shape[dim] as u32,
        src_start as u32,
        dst.shape[dim] as u32,
        dst_start as u32,
    ];
    ctx.dispatch(
        &kernel,
        &[src.bind("src", false), dst.bind("dst", true)],
        &params,
        launch::grid(ctx, total.div_ceil(256), "copy")?,
    )
}

/// A download in flight.
pub struct PendingRead {
    device: Device,
    staging: wgpu::Buffer,
    mapped: Arc<AtomicBool>,
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
    len: usize,
    dtype: DType,
}

impl PendingRead {
    /// Non-blocking: has the copy arrived?
    pub fn is_ready(&self) -> bool {
        let _ = self.device.ctx.device.poll(wgpu::PollType::Poll);
        self.mapped.load(Ordering::Acquire)
    }

    fn wait_bytes(self) -> Result<Vec<u8>> {
        let ctx = &self.device.ctx;
        while !self.mapped.load(Ordering::Acquire) {
            ctx.wait_idle()?;
        }
        if let Some(Err(e)) = self.outcome.lock().map_err(poisoned)?.take() {
            return Err(Error::Readback(e));
        }
        let bytes = {
            let view = self.staging.slice(..).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
            view.to_vec()
        };
        self.staging.unmap();
        Ok(bytes)
    }

    pub fn wait_f32(self) -> Result<Vec<f32>> {
        let (len, dtype) = (self.len, self.dtype);
        let bytes = self.wait_bytes()?;
        match dtype {
            DType::F32 => Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..len * 4])),
            DType::F16 => {
                Ok(bytemuck::pod_collect_to_vec::<u8, f16>(&bytes[..len * 2]).iter().map(|h| h.to_f32()).collect())
            }
            DType::U32 => Err(Error::UnsupportedDType { op: "to_vec_f32", dtype, expected: "f32 or f16" }),
        }
    }

    pub fn wait_u32(self) -> Result<Vec<u32>> {
        let (len, dtype) = (self.len, self.dtype);
        if dtype != DType::U32 {
            return Err(Error::UnsupportedDType { op: "to_vec_u32", dtype, expected: "u32" });
        }
        let bytes = self.wait_bytes()?;
        Ok(bytemuck::pod_collect_to_vec::<u8, u32>(&bytes[..len * 4]))
    }
}

/// Maps a MAP_READ buffer that already holds the data and copies `bytes` of it out.
pub(crate) fn map_and_read(ctx: &GpuContext, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    staging.slice(..bytes).map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    ctx.wait_idle()?;
    receiver.recv().map_err(|e| Error::Readback(e.to_string()))?.map_err(|e| Error::Readback(e.to_string()))?;
    let data = staging.slice(..bytes).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?.to_vec();
    staging.unmap();
    Ok(data)
}
