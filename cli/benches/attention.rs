//! `cargo bench -p scalewise --bench attention`: dense flash attention vs GRAT-B / GRAT-X on square 2D grids.
//! SCALEWISE_BENCH_GRIDS=32,64,128 sets the grid sides; results also go to
//! bench-results/attention.json.

use scalewise::{Device, DeviceOptions};
use scalewise_cli::bench::{self, AttentionBenchConfig, AttentionCase};

fn main() -> anyhow::Result<()> {
    let device = Device::new(&DeviceOptions::from_env()?)?;
    let mut config = AttentionBenchConfig::default();
    if let Ok(sides) = std::env::var("SCALEWISE_BENCH_GRIDS") {
        config.cases = sides
            .split(',')
            .map(|s| s.trim().parse().map(|side: usize| AttentionCase { grid: vec![side, side], text: 0 }))
            .collect::<Result<_, _>>()?;
    }
    let rows = bench::attention(&device, &config)?;
    println!("attention on {} ({})", device.info().adapter.name, device.info().adapter.backend);
    for r in &rows {
        println!(
            "  {:?} {} {:<6} {:>10.3} ms  speedup {:>6}  bound {:>6.1}",
            r.grid,
            r.dtype,
            r.kernel,
            r.median_ms,
            r.speedup_vs_dense.map_or("-".into(), |s| format!("{s:.2}x")),
            r.density_bound
        );
    }
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(
        "bench-results/attention.json",
        serde_json::to_string_pretty(&bench::attention_json(&device, &rows))?,
    )?;
    Ok(())
}
