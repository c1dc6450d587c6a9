//! The demo model built into scalewise: a small VAR + multi-scale VQVAE of the official architecture,
//! trained on procedural images (scripts/train_demo.py), so generation works without downloading the
//! official checkpoints. Its class names, schedule and image size are in the files' metadata.

use crate::device::Device;
use crate::error::Result;
use crate::generate::Pipeline;
use crate::nn::{VarModel, VqVae};
use crate::tensor::DType;
use crate::weights::StateDict;

/// The transformer's weights (f16 safetensors with the official key names).
pub const VAR_SAFETENSORS: &[u8] = include_bytes!("../assets/demo/var.safetensors");
/// The VQVAE's weights (decoder, codebook, Phi; no encoder).
pub const VAE_SAFETENSORS: &[u8] = include_bytes!("../assets/demo/vae.safetensors");

/// The demo's transformer as a state_dict.
pub fn var_state_dict() -> Result<StateDict> {
    StateDict::from_safetensors_bytes(VAR_SAFETENSORS)
}

/// The demo's VQVAE as a state_dict.
pub fn vae_state_dict() -> Result<StateDict> {
    StateDict::from_safetensors_bytes(VAE_SAFETENSORS)
}

/// The demo pipeline on `device`; `dtype` defaults to f16 where the device has SHADER_F16.
pub fn pipeline(device: &Device, dtype: Option<DType>) -> Result<Pipeline> {
    let dtype = dtype.unwrap_or(device.preferred_float());
    let vae = VqVae::from_state_dict(device, &vae_state_dict()?, dtype)?;
    let var = VarModel::from_state_dict(device, &var_state_dict()?, dtype)?;
    Pipeline::new(var, vae)
}
