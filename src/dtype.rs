//! Element types of device tensors and the host element types that move in and out of them. Imported
//! by every layer; imports nothing of the crate.

use half::f16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// Half-precision storage; kernels accumulate in f32. Needs the device's f16 capability.
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

/// A host element type a tensor can be built from and read back as (`Tensor::from_slice::<T>`,
/// `Tensor::to_vec::<T>`).
pub trait Element: bytemuck::Pod + Send + 'static {
    /// The storage type this element uploads as by default.
    const DTYPE: DType;

    /// Converts to the storage bytes of `dtype`; `None` when the conversion is not an exact-kind one
    /// (floats into u32 storage, indices into float storage).
    fn encode(values: &[Self], dtype: DType) -> Option<Vec<u8>>;

    /// Reads `len` elements of `dtype` storage; `None` for the same kind mismatch as `encode`.
    fn decode(bytes: &[u8], len: usize, dtype: DType) -> Option<Vec<Self>>;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;

    fn encode(values: &[Self], dtype: DType) -> Option<Vec<u8>> {
        match dtype {
            DType::F32 => Some(bytemuck::cast_slice(values).to_vec()),
            DType::F16 => {
                let halves: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                Some(bytemuck::cast_slice(&halves).to_vec())
            }
            DType::U32 => None,
        }
    }

    fn decode(bytes: &[u8], len: usize, dtype: DType) -> Option<Vec<Self>> {
        match dtype {
            DType::F32 => Some(bytemuck::pod_collect_to_vec(&bytes[..len * 4])),
            DType::F16 => {
                Some(bytemuck::pod_collect_to_vec::<u8, f16>(&bytes[..len * 2]).iter().map(|h| h.to_f32()).collect())
            }
            DType::U32 => None,
        }
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;

    fn encode(values: &[Self], dtype: DType) -> Option<Vec<u8>> {
        match dtype {
            DType::F16 => Some(bytemuck::cast_slice(values).to_vec()),
            DType::F32 => {
                let floats: Vec<f32> = values.iter().map(|h| h.to_f32()).collect();
                Some(bytemuck::cast_slice(&floats).to_vec())
            }
            DType::U32 => None,
        }
    }

    fn decode(bytes: &[u8], len: usize, dtype: DType) -> Option<Vec<Self>> {
        match dtype {
            DType::F16 => Some(bytemuck::pod_collect_to_vec(&bytes[..len * 2])),
            DType::F32 => Some(
                bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..len * 4]).iter().map(|&x| f16::from_f32(x)).collect(),
            ),
            DType::U32 => None,
        }
    }
}

impl Element for u32 {
    const DTYPE: DType = DType::U32;

    fn encode(values: &[Self], dtype: DType) -> Option<Vec<u8>> {
        (dtype == DType::U32).then(|| bytemuck::cast_slice(values).to_vec())
    }

    fn decode(bytes: &[u8], len: usize, dtype: DType) -> Option<Vec<Self>> {
        (dtype == DType::U32).then(|| bytemuck::pod_collect_to_vec(&bytes[..len * 4]))
    }
}

/// The number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The number of elements of a shape whose dimensions, an empty one counted as 1, multiply within
/// `usize`; `None` otherwise. Every tensor's shape passes, so the element count of any part of it
/// (the dimensions before or after one, say) cannot overflow either, even in an empty tensor such
/// as (0, 2^40, 2^40).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))?;
    Some(numel(shape))
}
