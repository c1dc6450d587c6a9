//! `cargo bench -p scalewise-cli --bench conv2d`: every conv2d kernel at a VQVAE-decoder shape (B1,
//! 160 -> 160 channels, 64 x 64, 3 x 3, bias) and what Auto runs there (the GEMM's full 128-row tile,
//! the last 32 channels on the direct kernel; on f16 with matrix units, the cooperative kernel), in
//! f32 and, where the device has it, f16. A kernel the device cannot run (the cooperative one in f32,
//! or without matrix units) is reported with the reason.

use scalewise::ops::conv2d::{Conv2dAlgorithm, Conv2dOptions, conv2d_with};
use scalewise::{DType, Device, DeviceOptions, Tensor};
use scalewise_cli::bench::{pseudo_random, time_dispatches};

fn main() -> anyhow::Result<()> {
    let device = Device::new(&DeviceOptions::from_env()?)?;
    let (c, h, w) = (160, 64, 64);
    println!("conv2d on {} ({}), 1x{c}x{h}x{w}, 3x3", device.info().adapter.name, device.info().adapter.backend);
    let dtypes: &[DType] = if device.caps().f16 { &[DType::F32, DType::F16] } else { &[DType::F32] };
    for &dtype in dtypes {
        let x = Tensor::from_f32(&device, &[1, c, h, w], &pseudo_random(c * h * w, 1), dtype)?;
        let weight = Tensor::from_f32(&device, &[c, c, 3, 3], &pseudo_random(c * c * 9, 2), dtype)?;
        let bias = Tensor::from_f32(&device, &[c], &pseudo_random(c, 3), dtype)?;
        let mut medians = Vec::new();
        for algorithm in Conv2dAlgorithm::KERNELS.into_iter().chain([Conv2dAlgorithm::Auto]) {
            let options = Conv2dOptions { bias: Some(&bias), algorithm };
            if let Err(e) = conv2d_with(&x, &weight, &options) {
                println!("  {dtype} {algorithm:?}: unavailable ({e})");
                continue;
            }
            let (median, min, source) =
                time_dispatches(&device, 1, 3, || conv2d_with(&x, &weight, &options).map(drop))?;
            let gflops = 2.0 * (c * c * 9 * h * w) as f64 / (median * 1e-3) / 1e9;
            println!(
                "  {dtype} {algorithm:?}: median {median:.2} ms, min {min:.2} ms ({source:?}), {gflops:.2} GFLOP/s"
            );
            medians.push((algorithm, median));
        }
        let of = |a| medians.iter().find(|&&(b, _)| b == a).map(|&(_, m)| m);
        let ratio = |over, under| match (of(over), of(under)) {
            (Some(o), Some(u)) => format!("{:.2}x", o / u),
            _ => "-".into(),
        };
        println!(
            "  {dtype}: tiled / implicit GEMM = {}, naive / tiled = {}, implicit GEMM / Auto = {}, implicit GEMM / cooperative = {}",
            ratio(Conv2dAlgorithm::Tiled, Conv2dAlgorithm::ImplicitGemm),
            ratio(Conv2dAlgorithm::Naive, Conv2dAlgorithm::Tiled),
            ratio(Conv2dAlgorithm::ImplicitGemm, Conv2dAlgorithm::Auto),
            ratio(Conv2dAlgorithm::ImplicitGemm, Conv2dAlgorithm::Cooperative),
        );
    }
    Ok(())
}
