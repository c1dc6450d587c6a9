//! The demo models built into scalewise: a small VAR and a small M-VAR of the official
//! architectures, with the multi-scale VQVAE they share, trained on procedural images
//! (scripts/train_demo.py and scripts/train_demo_mvar.py), so generation works without downloading
//! the official checkpoints. Their class names, schedule and image size are in the files' metadata.
//!
//! Their names ([`DemoModel`]) are always here; the weights, and what loads them, come with the
//! `demo` cargo feature (on by default), so a program built without it can still take and name a
//! demo model and say that this build lacks it.

use std::fmt;
use std::str::FromStr;

#[cfg(feature = "demo")]
use crate::device::Device;
use crate::error::{Error, Result};
#[cfg(feature = "demo")]
use crate::generate::{Pipeline, Transformer};
#[cfg(feature = "demo")]
use crate::nn::VqVae;
use crate::tensor::DType;
#[cfg(feature = "demo")]
use crate::weights::StateDict;

/// The VAR transformer's weights (f16 safetensors with the official key names).
#[cfg(feature = "demo")]
pub const VAR_SAFETENSORS: &[u8] = include_bytes!("../assets/demo/var.safetensors");
/// The M-VAR transformer's weights (f16 safetensors with the official key names): attention inside
/// each scale, Mamba-2 across scales.
#[cfg(feature = "demo")]
pub const MVAR_SAFETENSORS: &[u8] = include_bytes!("../assets/demo/mvar.safetensors");
/// The VQVAE's weights (decoder, codebook, Phi; no encoder), shared by both transformers.
#[cfg(feature = "demo")]
pub const VAE_SAFETENSORS: &[u8] = include_bytes!("../assets/demo/vae.safetensors");

/// Which built-in transformer to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DemoModel {
    /// VAR: KV-cached attention over every earlier scale.
    #[default]
    Var,
    /// M-VAR: attention inside the current scale, a Mamba-2 state carried across scales.
    Mvar,
}

impl DemoModel {
    /// Every built-in transformer, VAR first.
    pub const ALL: [DemoModel; 2] = [DemoModel::Var, DemoModel::Mvar];

    /// The name the CLI takes (`--demo var`, `--demo mvar`).
    pub fn name(self) -> &'static str {
        match self {
            DemoModel::Var => "var",
            DemoModel::Mvar => "mvar",
        }
    }

    /// The model family as written in the papers: "VAR" or "M-VAR".
    pub fn family(self) -> &'static str {
        match self {
            DemoModel::Var => "VAR",
            DemoModel::Mvar => "M-VAR",
        }
    }

    /// The transformer's embedded safetensors file.
    #[cfg(feature = "demo")]
    pub fn transformer_safetensors(self) -> &'static [u8] {
        match self {
            DemoModel::Var => VAR_SAFETENSORS,
            DemoModel::Mvar => MVAR_SAFETENSORS,
        }
    }

    /// The transformer as a state_dict.
    #[cfg(feature = "demo")]
    pub fn transformer_state_dict(self) -> Result<StateDict> {
        StateDict::from_safetensors_bytes(self.transformer_safetensors())
    }

    /// The name its pipelines are recorded under ([`Device::prewarm_pipelines`]) for `dtype`.
    pub fn workload(self, dtype: DType) -> String {
        format!("demo-{self} {dtype}")
    }

    /// This demo's pipeline on `device`; `dtype` defaults to f16 where the device has SHADER_F16.
    #[cfg(feature = "demo")]
    pub fn pipeline(self, device: &Device, dtype: Option<DType>) -> Result<Pipeline> {
        let dtype = dtype.unwrap_or(device.preferred_float());
        let vae = VqVae::from_state_dict(device, &vae_state_dict()?, dtype)?;
        let transformer = Transformer::from_state_dict(device, &self.transformer_state_dict()?, dtype)?;
        Pipeline::new(transformer, vae)
    }
}

impl fmt::Display for DemoModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DemoModel {
    type Err = Error;

    /// "var" or "mvar" (also "m-var"; any case).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "var" => Ok(DemoModel::Var),
            "mvar" | "m-var" => Ok(DemoModel::Mvar),
            _ => Err(Error::InvalidArgument {
                op: "demo",
                msg: format!("unknown model {}: the built-in ones are var and mvar", crate::error::shown(s)),
            }),
        }
    }
}

/// The VAR demo's transformer as a state_dict.
#[cfg(feature = "demo")]
pub fn var_state_dict() -> Result<StateDict> {
    DemoModel::Var.transformer_state_dict()
}

/// The demos' VQVAE as a state_dict.
#[cfg(feature = "demo")]
pub fn vae_state_dict() -> Result<StateDict> {
    StateDict::from_safetensors_bytes(VAE_SAFETENSORS)
}

/// The VAR demo pipeline on `device`; `dtype` defaults to f16 where the device has SHADER_F16.
#[cfg(feature = "demo")]
pub fn pipeline(device: &Device, dtype: Option<DType>) -> Result<Pipeline> {
    DemoModel::Var.pipeline(device, dtype)
}
