//! Every kernel family against its float64 reference (one module per `src/ops/` file), on every
//! backend configuration through `backend_tests!`: random shapes that are not multiples of the tile
//! sizes, seeded random inputs, NaN-poisoned outputs, f32 and f16, with and without subgroups.
//! One test binary: one link, and its tests share the devices.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod attention;
mod conv2d;
mod elementwise;
mod embedding;
mod matmul;
mod norm;
mod resample;
mod sample;
mod scan;
