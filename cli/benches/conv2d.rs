//! `cargo bench -p scalewise-cli --bench conv2d`: tiled, implicit-GEMM and naive conv2d at a
//! VQVAE-decoder shape (B1, 160 -> 160 channels, 64 x 64, 3 x 3, bias), f32, and what Auto runs there
//! (the GEMM's full 128-row tile, the last 32 channels on the direct kernel).

use scalewise::ops::conv2d::{Conv2dAlgorithm, Conv2dOptions, conv2d_with};
use scalewise::{DType, Device, DeviceOptions, Tensor};
use scalewise_cli::bench::{pseudo_random, time_dispatches};

fn main() -> anyhow::Result<()> {
    let device = Device::new(&DeviceOptions::from_env()?)?;
    let (c, h, w) = (160, 64, 64);
    let x = Tensor::from_f32(&device, &[1, c, h, w], &pseudo_random(c * h * w, 1), DType::F32)?;
    let weight = Tensor::from_f32(&device, &[c, c, 3, 3], &pseudo_random(c * c * 9, 2), DType::F32)?;
    let bias = Tensor::from_f32(&device, &[c], &pseudo_random(c, 3), DType::F32)?;
    println!("conv2d on {} ({}), 1x{c}x{h}x{w}, 3x3", device.info().adapter.name, device.info().adapter.backend);
    let mut medians = Vec::new();
    for algorithm in Conv2dAlgorithm::KERNELS.into_iter().chain([Conv2dAlgorithm::Auto]) {
        let options = Conv2dOptions { bias: Some(&bias), algorithm };
        let (median, min, source) = time_dispatches(&device, 1, 3, || conv2d_with(&x, &weight, &options).map(drop))?;
        let gflops = 2.0 * (c * c * 9 * h * w) as f64 / (median * 1e-3) / 1e9;
        println!("  {algorithm:?}: median {median:.2} ms, min {min:.2} ms ({source:?}), {gflops:.2} GFLOP/s");
        medians.push(median);
    }
    println!(
        "  tiled / implicit GEMM = {:.2}x, naive / tiled = {:.2}x, implicit GEMM / Auto = {:.2}x",
        medians[0] / medians[1],
        medians[2] / medians[0],
        medians[1] / medians[3]
    );
    Ok(())
}
