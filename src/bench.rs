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

/// One attention shape: a 2D [H, W] or 3D [T, H, W] token grid plus text tokens.
#[derive(Debug, Clone)]
pub struct AttentionCase {
    pub grid: Vec<usize>,
    pub text: usize,
}

#[derive(Debug, Clone)]
pub struct AttentionBenchConfig {
    pub cases: Vec<AttentionCase>,
    pub heads: usize,
    pub head_dim: usize,
    pub dtypes: Vec<DType>,
    /// The dense baseline is skipped above this many tokens (its cost grows with L^2).
    pub dense_max_tokens: usize,
    pub warmup: usize,
    pub iterations: usize,
}

impl Default for AttentionBenchConfig {
    fn default() -> Self {
        Self {
            cases: [32, 64].iter().map(|&s| AttentionCase { grid: vec![s, s], text: 0 }).collect(),
            heads: 1,
            head_dim: 64,
            dtypes: vec![DType::F32],
            dense_max_tokens: 1 << 20,
            warmup: 1,
            iterations: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttentionBenchRow {
    pub grid: Vec<usize>,
    pub text: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    /// "dense", "grat-b", "grat-x", or "grat-b-unfused" / "grat-x-unfused" (separate permutations).
    pub kernel: &'static str,
    pub median_ms: f64,
    /// Effective TFLOP/s counted over attended (query, key) pairs only: 4 * head_dim per pair.
    pub tflops: f64,
    /// 1 / density of the pattern (1 for dense).
    pub density_bound: f64,
    /// Dense time / this kernel's time, measured in the same run.
    pub speedup_vs_dense: Option<f64>,
    pub timing: TimingSource,
}

impl AttentionBenchRow {
    /// Measured speedup as a fraction of the density bound.
    pub fn bound_fraction(&self) -> Option<f64> {
        self.speedup_vs_dense.map(|s| s / self.density_bound)
    }
}

pub fn attention(device: &Device, config: &AttentionBenchConfig) -> Result<Vec<AttentionBenchRow>> {
    use crate::ops::{AttentionOptions, GratPattern, GroupedLayout};
    let mut rows = Vec::new();
    for case in &config.cases {
        let base = match case.grid.as_slice() {
            &[h, w] => GroupedLayout::image(h, w),
            &[t, h, w] => GroupedLayout::video(t, h, w),
            other => {
                return Err(Error::InvalidArgument {
                    op: "bench attention",
                    msg: format!("grid {other:?} must be HxW or TxHxW"),
                });
            }
        }
        .with_text(case.text, case.text);
        let len = base.seq_len();
        for &dtype in &config.dtypes {
            if dtype == DType::F16 && !device.features().shader_f16 {
                continue;
            }
            let shape = [1, config.heads, len, config.head_dim];
            let n = shape.iter().product();
            let q = Tensor::from_f32(device, &shape, &pseudo_random(n, 3), dtype)?;
            let k = Tensor::from_f32(device, &shape, &pseudo_random(n, 4), dtype)?;
            let v = Tensor::from_f32(device, &shape, &pseudo_random(n, 5), dtype)?;
            let per_pair = 4.0 * config.head_dim as f64 * config.heads as f64;
            let mut dense_ms = None;
            if len <= config.dense_max_tokens {
                let (median_ms, _, timing) = time_dispatches(device, config.warmup, config.iterations, || {
                    ops::attention(&q, &k, &v, &AttentionOptions::default()).map(drop)
                })?;
                dense_ms = Some(median_ms);
                rows.push(AttentionBenchRow {
                    grid: case.grid.clone(),
                    text: case.text,
                    heads: config.heads,
                    head_dim: config.head_dim,
                    dtype,
                    kernel: "dense",
                    median_ms,
                    tflops: (len as f64).powi(2) * per_pair / (median_ms * 1e-3) / 1e12,
                    density_bound: 1.0,
                    speedup_vs_dense: Some(1.0),
                    timing,
                });
            }
            let patterns = [("grat-b", GratPattern::Block { radius: 1 }), ("grat-x", GratPattern::CrissCross)];
            for ((kernel, pattern), fused) in patterns.into_iter().flat_map(|p| [(p, true), (p, false)]) {
                let layout = base.clone().with_pattern(pattern);
                // Fused: the kernel gathers raster tokens. Unfused: permute q, k, v to group-major,
                // run the group-major kernel, permute the output back (all four timed).
                let (median_ms, _, timing) = time_dispatches(device, config.warmup, config.iterations, || {
                    if fused {
                        return ops::grouped_attention(&q, &k, &v, &layout, None).map(drop);
                    }
                    let [gq, gk, gv] = [&q, &k, &v].map(|t| ops::to_group_major(t, &layout));
                    let out = ops::grouped_attention_in(&gq?, &gk?, &gv?, &layout, None, ops::TokenOrder::GroupMajor)?;
                    ops::from_group_major(&out, &layout).map(drop)
                })?;
                let kernel = match (kernel, fused) {
                    ("grat-b", true) => "grat-b",
                    ("grat-b", false) => "grat-b-unfused",
                    (_, true) => "grat-x",
                    _ => "grat-x-unfused",
                };
                rows.push(AttentionBenchRow {
                    grid: case.grid.clone(),
                    text: case.text,
                    heads: config.heads,
                    head_dim: config.head_dim,
                    dtype,
                    kernel,
                    median_ms,
                    tflops: layout.attended_pairs() as f64 * per_pair / (median_ms * 1e-3) / 1e12,
                    density_bound: 1.0 / layout.density(),
                    speedup_vs_dense: dense_ms.map(|d| d / median_ms),
                    timing,
                });
            }
        }
    }
    Ok(rows)
}

pub fn attention_json(device: &Device, rows: &[AttentionBenchRow]) -> serde_json::Value {
    let info = device.info();
    serde_json::json!({
        "benchmark": "attention",
        "adapter": info.adapter.name,
        "backend": info.adapter.backend,
        "driver": format!("{} {}", info.adapter.driver, info.adapter.driver_info),
        "flops_counted": "4 * head_dim * heads per attended (query, key) pair",
        "results": rows.iter().map(|r| serde_json::json!({
            "grid": r.grid, "text": r.text, "heads": r.heads, "head_dim": r.head_dim,
            "dtype": r.dtype.to_string(), "kernel": r.kernel,
            "median_ms": r.median_ms, "tflops": r.tflops,
            "density_bound": r.density_bound,
            "speedup_vs_dense": r.speedup_vs_dense,
            "fraction_of_bound": r.bound_fraction(),
            "timing": format!("{:?}", r.timing),
        })).collect::<Vec<_>>(),
    })
}
