//! Shader benchmarks shared by `scalewise bench` and `cargo bench`: each kernel timed per dispatch
//! (GPU timestamps where the adapter has them), median of several runs after a warm-up.

use crate::device::{Device, TimingSource};
use crate::error::{Error, Result};
use crate::ops::{self, MatmulAlgorithm, matmul::MatmulOptions};
use crate::tensor::{DType, Tensor};

#[derive(Debug, Clone)]
pub struct MatmulBenchConfig {
    /// Square sizes n: an n x n x n product each.
    pub sizes: Vec<usize>,
    pub dtypes: Vec<DType>,
    pub algorithms: Vec<MatmulAlgorithm>,
    /// The naive kernel is skipped above this size (it is only a baseline, and slow).
    pub naive_max_size: usize,
    pub warmup: usize,
    pub iterations: usize,
}

impl Default for MatmulBenchConfig {
    fn default() -> Self {
        Self {
            sizes: vec![128, 256, 512],
            dtypes: vec![DType::F32, DType::F16],
            algorithms: vec![MatmulAlgorithm::Tiled, MatmulAlgorithm::Naive],
            naive_max_size: 1024,
            warmup: 2,
            iterations: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MatmulBenchRow {
    pub size: usize,
    pub dtype: DType,
    pub algorithm: MatmulAlgorithm,
    pub median_ms: f64,
    pub min_ms: f64,
    pub gflops: f64,
    pub timing: TimingSource,
}

/// Median of the per-dispatch times of `iterations` runs of `run`, after `warmup` untimed runs.
pub fn time_dispatches(
    device: &Device,
    warmup: usize,
    iterations: usize,
    mut run: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, TimingSource)> {
    for _ in 0..warmup {
        run()?;
    }
    device.synchronize()?;
    device.start_profiling()?;
    let outcome = (0..iterations.max(1)).try_for_each(|_| run());
    let timings = device.finish_profiling()?;
    outcome?;
    let source = timings.first().map_or(TimingSource::WallClock, |t| t.source);
    // Several dispatches per run are summed per run.
    let per_run = timings.len() / iterations.max(1);
    if per_run == 0 {
        return Err(Error::InvalidArgument { op: "bench", msg: "the benchmarked code dispatched nothing".into() });
    }
    let mut runs: Vec<f64> =
        timings.chunks(per_run).map(|c| c.iter().map(|t| t.nanoseconds).sum::<f64>() * 1e-6).collect();
    runs.sort_by(f64::total_cmp);
    Ok((runs[runs.len() / 2], runs[0], source))
}

/// Deterministic pseudo-random values in [-1, 1) (benchmarks need no fresh seed, tests do).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn matmul(device: &Device, config: &MatmulBenchConfig) -> Result<Vec<MatmulBenchRow>> {
    let mut rows = Vec::new();
    for &size in &config.sizes {
        for &dtype in &config.dtypes {
            if dtype == DType::F16 && !device.features().shader_f16 {
                continue;
            }
            let a = Tensor::from_f32(device, &[size, size], &pseudo_random(size * size, 1), dtype)?;
            let b = Tensor::from_f32(device, &[size, size], &pseudo_random(size * size, 2), dtype)?;
            for &algorithm in &config.algorithms {
                if algorithm == MatmulAlgorithm::Naive && size > config.naive_max_size {
                    continue;
                }
                let options = MatmulOptions { algorithm, ..Default::default() };
                let (median_ms, min_ms, timing) = time_dispatches(device, config.warmup, config.iterations, || {
                    ops::matmul_with(&a, &b, &options).map(drop)
                })?;
                let flops = 2.0 * (size as f64).powi(3);
                rows.push(MatmulBenchRow {
                    size,
                    dtype,
                    algorithm,
                    median_ms,
                    min_ms,
                    gflops: flops / (median_ms * 1e-3) / 1e9,
                    timing,
                });
            }
        }
    }
    Ok(rows)
}

/// The rows as JSON, with the device they ran on.
pub fn matmul_json(device: &Device, rows: &[MatmulBenchRow]) -> serde_json::Value {
    let info = device.info();
    serde_json::json!({
        "benchmark": "matmul",
        "adapter": info.adapter.name,
        "backend": info.adapter.backend,
        "driver": format!("{} {}", info.adapter.driver, info.adapter.driver_info),
        "results": rows.iter().map(|r| serde_json::json!({
            "m": r.size, "n": r.size, "k": r.size,
            "dtype": r.dtype.to_string(),
            "algorithm": format!("{:?}", r.algorithm).to_lowercase(),
            "median_ms": r.median_ms,
            "min_ms": r.min_ms,
            "gflops": r.gflops,
            "timing": format!("{:?}", r.timing),
        })).collect::<Vec<_>>(),
    })
}
