//! The models built from the ops (one module per model of `src/nn/`): VAR and its VQVAE against
//! synthetic checkpoints and the PyTorch parity fixtures, the Mamba blocks, M-VAR against its parity
//! fixtures, and the embedded demo model end to end. One test binary: one link, and its tests share the devices.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

#[cfg(feature = "demo")]
mod demo;
mod mamba;
mod mvar;
mod var;
mod var_parity;
