//! `cargo bench -p scalewise --bench matmul`: every matmul kernel (and what `Auto` picks) on the
//! default adapter, f32 and f16, square sizes. Sizes can be set with SCALEWISE_BENCH_SIZES=256,512,1024.
//! Results also go to
//! bench-results/matmul.json.

use scalewise::{Device, DeviceOptions};
use scalewise_cli::bench::{self, MatmulBenchConfig};

fn main() -> anyhow::Result<()> {
    let device = Device::new(&DeviceOptions::from_env()?)?;
    let mut config = MatmulBenchConfig::default();
    if let Ok(sizes) = std::env::var("SCALEWISE_BENCH_SIZES") {
        let sizes: Vec<usize> = sizes.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
        config.shapes = sizes.into_iter().map(bench::MatmulShape::square).collect();
    }
    let rows = bench::matmul(&device, &config)?;
    println!("matmul on {} ({})", device.info().adapter.name, device.info().adapter.backend);
    for r in &rows {
        println!(
            "  {:>14} {} {:<6} ({:<6}) {:>10.3} ms {:>10.2} GFLOP/s",
            r.shape.label(),
            r.dtype,
            bench::algorithm_name(r.algorithm),
            bench::algorithm_name(r.kernel),
            r.median_ms,
            r.gflops
        );
    }
    std::fs::create_dir_all("bench-results")?;
    std::fs::write("bench-results/matmul.json", serde_json::to_string_pretty(&bench::matmul_json(&device, &rows))?)?;
    Ok(())
}
