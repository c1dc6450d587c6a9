//! Buffer pool. Creating a buffer (and binding it the first time) is expensive in wgpu, and a model
//! step allocates the same sizes again and again, so freed buffers are kept per size class and reused.
//! Reuse is safe because every op submits its own command buffer on the one queue: work reading a
//! buffer is always submitted before any later write to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::WgpuDevice;
use crate::device::poisoned;
use crate::error::{Error, Result};

/// Past this many cached (unused) bytes, freed buffers go back to the driver instead of the pool.
const MAX_CACHED_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes held by live tensors.
    pub live_bytes: u64,
    /// Bytes kept for reuse.
    pub cached_bytes: u64,
    /// Largest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Buffers created from the driver.
    pub created: u64,
    /// Allocations served from the pool.
    pub reused: u64,
}

pub(crate) struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    stats: Mutex<PoolStats>,
    poison: bool,
}

/// A storage buffer owned by the pool; dropping it hands it back.
pub(crate) struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    pool: Arc<BufferPool>,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("a GpuBuffer holds its buffer until dropped")
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.release(buffer, self.class);
        }
    }
}

/// Size classes: multiples of 256 bytes up to 4 KiB, then four steps per power of two (at most 25%
/// waste), so a pool hit needs only a similar size, not the exact one.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.div_ceil(256) * 256;
    }
    let top = 63 - bytes.leading_zeros() as u64; // 2^top <= bytes < 2^(top+1)
    let step = 1u64 << (top - 2);
    bytes.div_ceil(step) * step
}

impl BufferPool {
    pub fn new(poison: bool) -> Self {
        Self { free: Mutex::new(HashMap::new()), stats: Mutex::new(PoolStats::default()), poison }
    }

    pub fn stats(&self) -> PoolStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    pub fn trim(&self) {
        if let (Ok(mut free), Ok(mut stats)) = (self.free.lock(), self.stats.lock()) {
            free.clear();
            stats.cached_bytes = 0;
        }
    }

    /// A storage buffer of at least `bytes` bytes; `what` names the tensor in errors.
    pub fn acquire(self: &Arc<Self>, ctx: &WgpuDevice, bytes: u64, what: &str) -> Result<GpuBuffer> {
        let limit = ctx.info.caps.max_buffer_bytes;
        if bytes > limit {
            return Err(Error::TooLarge { what: what.to_string(), bytes, limit, limit_name: "max_buffer_size" });
        }
        // Never round past the limit: a buffer of exactly the limit is still allowed.
        let class = size_class(bytes).min(limit / 4 * 4).max(bytes.div_ceil(4) * 4);
        let cached = self.free.lock().map_err(poisoned)?.get_mut(&class).and_then(Vec::pop);
        let reused = cached.is_some();
        let buffer = match cached {
            Some(buffer) => buffer,
            None => ctx.checked(&format!("allocating {bytes} bytes for {what}"), || {
                Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(what),
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }))
            })?,
        };
        if self.poison {
            // Recorded kernels may still use a reused buffer; the poison lands after them.
            ctx.upload(&buffer, &vec![0xFF; class as usize])?;
        }
        {
            let mut stats = self.stats.lock().map_err(poisoned)?;
            if reused {
                stats.reused += 1;
                stats.cached_bytes -= class;
            } else {
                stats.created += 1;
            }
            stats.live_bytes += class;
            stats.peak_live_bytes = stats.peak_live_bytes.max(stats.live_bytes);
        }
        Ok(GpuBuffer { buffer: Some(buffer), class, pool: Arc::clone(self) })
    }

    fn release(&self, buffer: wgpu::Buffer, class: u64) {
        let (Ok(mut free), Ok(mut stats)) = (self.free.lock(), self.stats.lock()) else {
            return;
        };
        stats.live_bytes = stats.live_bytes.saturating_sub(class);
        if stats.cached_bytes + class <= MAX_CACHED_BYTES {
            stats.cached_bytes += class;
            free.entry(class).or_default().push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_bounded_waste() {
        for bytes in [1u64, 4, 255, 256, 257, 4095, 4096, 4097, 5000, 65_537, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let class = size_class(bytes);
            assert!(class >= bytes, "{bytes} -> {class}");
            assert_eq!(class % 4, 0);
            if bytes > 4096 {
                assert!(class as f64 <= bytes as f64 * 1.25 + 1.0, "{bytes} -> {class}");
            }
        }
        assert_eq!(size_class(5000), size_class(5100));
    }
}
