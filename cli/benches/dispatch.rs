//! `cargo bench -p scalewise --bench dispatch`: the CPU cost of recording one kernel launch
//! (pipeline lookup, output tensor from the pool, uniform buffer, bind group, error scopes, compute
//! pass), timed over 60 launches between submissions so the GPU's (or lavapipe's) execution is not
//! in the measurement. A d16 VAR generation is about 2000 launches.

use scalewise::{DType, Device, DeviceOptions, Tensor, ops};

const LAUNCHES: usize = 60; // below the runtime's 64 launches per submission

fn main() -> anyhow::Result<()> {
    let device = Device::new(&DeviceOptions::from_env()?)?;
    println!("kernel launch recording on {} ({})", device.info().adapter.name, device.info().adapter.backend);
    let a = Tensor::from_f32(&device, &[64], &[1.0; 64], DType::F32)?;
    let b = Tensor::from_f32(&device, &[64], &[2.0; 64], DType::F32)?;
    let mut per_launch_us = Vec::new();
    for round in 0..110 {
        device.synchronize()?;
        let start = std::time::Instant::now();
        let outputs = (0..LAUNCHES).map(|_| ops::add(&a, &b)).collect::<scalewise::Result<Vec<_>>>()?;
        let elapsed = start.elapsed();
        drop(outputs);
        if round >= 10 {
            per_launch_us.push(elapsed.as_secs_f64() * 1e6 / LAUNCHES as f64);
        }
    }
    per_launch_us.sort_by(f64::total_cmp);
    let at = |q: f64| per_launch_us[((per_launch_us.len() - 1) as f64 * q) as usize];
    println!("  per launch: median {:.1} us, p10 {:.1} us, p90 {:.1} us", at(0.5), at(0.1), at(0.9));
    println!("  2000 launches (about one d16 generation): {:.1} ms of CPU", at(0.5) * 2000.0 / 1000.0);
    Ok(())
}
