//! Layers built from ops, loaded from PyTorch state_dict names.

pub mod mamba;

pub use mamba::{Mamba1Block, Mamba2Block, MambaState};
