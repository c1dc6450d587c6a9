//! Support shared by scalewise's tests, benchmarks and CLI benchmarks, kept out of the library: the
//! random generator and synthetic checkpoints with the official key names and shapes.

pub mod rng;
pub mod synthetic;
pub mod torch_file;

pub use rng::Rng;
