//! Layers built from ops, loaded from PyTorch state_dict names.

pub mod loader;
pub mod mamba;
pub mod mvar;
pub mod var;
pub mod vqvae;

pub use loader::Loader;
pub use mamba::{Mamba1Block, Mamba2Block, Mamba2Dims, MambaState};
pub use mvar::{MvarConfig, MvarModel, ScaleHistory};
pub use var::{VarConfig, VarModel};
pub use vqvae::{VqVae, VqVaeConfig};
