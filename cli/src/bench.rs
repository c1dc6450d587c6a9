//! Shader benchmarks shared by `scalewise bench` and `cargo bench`: each kernel timed per dispatch
//! (GPU timestamps where the adapter has them), median of several runs after a warm-up.

use scalewise::demo::DemoModel;
use scalewise::device::{Device, LaunchStats, TimingSource};
use scalewise::ops::{self, MatmulAlgorithm, matmul::MatmulOptions};
use scalewise::{DType, Error, MatrixUnits, Result, Tensor};

/// One benchmarked product: (m x k) @ (k x n), or (m x k) @ (n x k)^T for a Linear-like shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub transpose_b: bool,
}

impl MatmulShape {
    pub fn square(size: usize) -> Self {
        Self { m: size, k: size, n: size, transpose_b: false }
    }

    /// `MxKxN`, with a trailing `t` for a transposed b (x @ W^T).
    pub fn label(&self) -> String {
        format!("{}x{}x{}{}", self.m, self.k, self.n, if self.transpose_b { "t" } else { "" })
    }
}

#[derive(Debug, Clone)]
pub struct MatmulBenchConfig {
    pub shapes: Vec<MatmulShape>,
    pub dtypes: Vec<DType>,
    /// Kernels to time; the skinny kernel only runs on shapes of at most its rows.
    pub algorithms: Vec<MatmulAlgorithm>,
    /// The naive kernel is skipped above this many multiply-adds to the cube root (it is only a
    /// baseline, and slow).
    pub naive_max_size: usize,
    pub warmup: usize,
    pub iterations: usize,
}

impl Default for MatmulBenchConfig {
    fn default() -> Self {
        Self {
            shapes: [128, 256, 512].into_iter().map(MatmulShape::square).collect(),
            dtypes: vec![DType::F32, DType::F16],
            algorithms: MatmulAlgorithm::KERNELS.into_iter().chain([MatmulAlgorithm::Auto]).collect(),
            naive_max_size: 1024,
            warmup: 2,
            iterations: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MatmulBenchRow {
    pub shape: MatmulShape,
    pub dtype: DType,
    pub algorithm: MatmulAlgorithm,
    /// The kernel that ran (what `Auto` chose, or `algorithm` itself).
    pub kernel: MatmulAlgorithm,
    pub median_ms: f64,
    pub min_ms: f64,
    pub gflops: f64,
    pub timing: TimingSource,
}

/// A kernel's name as the benchmarks print it.
pub fn algorithm_name(algorithm: MatmulAlgorithm) -> String {
    format!("{algorithm:?}").to_lowercase()
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

/// A tensor of pseudo-random values in [offset - 0.5, offset + 0.5).
fn upload_pattern(device: &Device, shape: &[usize], seed: u64, offset: f32, dtype: DType) -> Result<Tensor> {
    let values: Vec<f32> = pseudo_random(shape.iter().product(), seed).iter().map(|v| v * 0.5 + offset).collect();
    Tensor::from_f32(device, shape, &values, dtype)
}

/// Deterministic pseudo-random values in [-1, 1) (benchmarks need no fresh seed, tests do).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    scalewise_support::Rng::new(seed).vec(n, 1.0)
}

/// Refuses, before anything is allocated on the host or the GPU, a buffer of `dims` elements of `dtype`
/// above the adapter's per-binding limit (checked arithmetic: a size from the command line may be
/// anything).
pub fn check_fits(device: &Device, what: &str, dims: &[usize], dtype: DType) -> Result<()> {
    let limit = device.caps().max_arg_bytes.min(device.caps().max_buffer_bytes);
    let bytes = dims.iter().try_fold(dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64));
    match bytes {
        Some(bytes) if bytes <= limit => Ok(()),
        _ => Err(Error::TooLarge {
            what: format!("{what} {dims:?} ({dtype})"),
            bytes: bytes.unwrap_or(u64::MAX),
            limit,
            limit_name: "per-buffer binding limit",
        }),
    }
}

pub fn matmul(device: &Device, config: &MatmulBenchConfig) -> Result<Vec<MatmulBenchRow>> {
    for shape in &config.shapes {
        for &dtype in &config.dtypes {
            check_fits(device, "a matmul operand", &[shape.m, shape.k], dtype)?;
            check_fits(device, "a matmul operand", &[shape.k, shape.n], dtype)?;
            check_fits(device, "a matmul output", &[shape.m, shape.n], dtype)?;
        }
    }
    let mut rows = Vec::new();
    for shape in &config.shapes {
        let &MatmulShape { m, k, n, transpose_b } = shape;
        for &dtype in &config.dtypes {
            if dtype == DType::F16 && !device.caps().f16 {
                continue;
            }
            let a = Tensor::from_f32(device, &[m, k], &pseudo_random(m * k, 1), dtype)?;
            let b_shape = if transpose_b { [n, k] } else { [k, n] };
            let b = Tensor::from_f32(device, &b_shape, &pseudo_random(k * n, 2), dtype)?;
            for &algorithm in &config.algorithms {
                let cube = ((m as f64) * (k as f64) * (n as f64)).cbrt();
                if algorithm == MatmulAlgorithm::Naive && cube > config.naive_max_size as f64 {
                    continue;
                }
                if algorithm == MatmulAlgorithm::Skinny && m > scalewise::kernels::size::SKINNY_ROWS as usize {
                    continue;
                }
                // The matrix units multiply f16, and only where the device has them (the emulation is a
                // test device's, not a kernel to time).
                if algorithm == MatmulAlgorithm::Cooperative
                    && (dtype != DType::F16 || device.caps().matrix_units != MatrixUnits::Native)
                {
                    continue;
                }
                let kernel = match algorithm {
                    MatmulAlgorithm::Auto => MatmulAlgorithm::choose(device, dtype, 1, m, n, transpose_b),
                    chosen => chosen,
                };
                let options = MatmulOptions { algorithm, transpose_b, ..Default::default() };
                let (median_ms, min_ms, timing) = time_dispatches(device, config.warmup, config.iterations, || {
                    ops::matmul_with(&a, &b, &options).map(drop)
                })?;
                let flops = 2.0 * m as f64 * k as f64 * n as f64;
                rows.push(MatmulBenchRow {
                    shape: *shape,
                    dtype,
                    algorithm,
                    kernel,
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
            "m": r.shape.m, "n": r.shape.n, "k": r.shape.k,
            "transpose_b": r.shape.transpose_b,
            "dtype": r.dtype.to_string(),
            "algorithm": algorithm_name(r.algorithm),
            "kernel": algorithm_name(r.kernel),
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
    /// "dense", "grat-b", "grat-x", or "grat-b-unfused" / "grat-x-unfused" (separate permutations),
    /// all on the scalar kernel; "dense-coop", "grat-b-coop", "grat-x-coop" on the matrix units (f16
    /// where the adapter has them natively).
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
    use scalewise::ops::{AttentionAlgorithm, AttentionOptions, GratPattern, GroupedLayout, GroupedOptions};
    let mut rows = Vec::new();
    let scalar = AttentionOptions { algorithm: AttentionAlgorithm::Scalar, ..Default::default() };
    let scalar_grouped = GroupedOptions { algorithm: AttentionAlgorithm::Scalar, ..Default::default() };
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
        // The kernels count tokens in u32 (the grid alone was checked when the flag was read).
        if u32::try_from(len).is_err() {
            return Err(Error::InvalidArgument {
                op: "bench attention",
                msg: format!(
                    "{} image and {} text tokens pass the kernels' u32 token count",
                    base.image_tokens(),
                    case.text
                ),
            });
        }
        for &dtype in &config.dtypes {
            check_fits(device, "attention's q, k and v", &[config.heads, len, config.head_dim], dtype)?;
        }
        for &dtype in &config.dtypes {
            if dtype == DType::F16 && !device.caps().f16 {
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
                    ops::attention(&q, &k, &v, &scalar).map(drop)
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
                        return ops::grouped_attention_with(&q, &k, &v, &layout, &scalar_grouped).map(drop);
                    }
                    let [gq, gk, gv] = [&q, &k, &v].map(|t| ops::to_group_major(t, &layout));
                    let options = GroupedOptions { order: ops::TokenOrder::GroupMajor, ..scalar_grouped };
                    let out = ops::grouped_attention_with(&gq?, &gk?, &gv?, &layout, &options)?;
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
                    tflops: layout.attended_pairs()? as f64 * per_pair / (median_ms * 1e-3) / 1e12,
                    density_bound: 1.0 / layout.density()?,
                    speedup_vs_dense: dense_ms.map(|d| d / median_ms),
                    timing,
                });
            }
            // The matrix units, where the adapter has them (not their emulation) and the tiles fit.
            let units = device.caps().matrix_units == scalewise::MatrixUnits::Native
                && ops::coop_attention_tiles_for(&device.caps(), config.head_dim, 64).is_some();
            if dtype != DType::F16 || !units {
                continue;
            }
            let coop = AttentionOptions { algorithm: AttentionAlgorithm::Cooperative, ..Default::default() };
            let coop_grouped = GroupedOptions { algorithm: AttentionAlgorithm::Cooperative, ..Default::default() };
            let cases = [("dense-coop", None), ("grat-b-coop", Some(GratPattern::Block { radius: 1 }))];
            let cases = cases.into_iter().chain([("grat-x-coop", Some(GratPattern::CrissCross))]);
            for (kernel, pattern) in cases {
                if pattern.is_none() && len > config.dense_max_tokens {
                    continue;
                }
                let layout = pattern.map(|p| base.clone().with_pattern(p));
                let (median_ms, _, timing) =
                    time_dispatches(device, config.warmup, config.iterations, || match &layout {
                        None => ops::attention(&q, &k, &v, &coop).map(drop),
                        Some(layout) => ops::grouped_attention_with(&q, &k, &v, layout, &coop_grouped).map(drop),
                    })?;
                let (pairs, density) = match &layout {
                    None => ((len as f64).powi(2), 1.0),
                    Some(layout) => (layout.attended_pairs()? as f64, layout.density()?),
                };
                rows.push(AttentionBenchRow {
                    grid: case.grid.clone(),
                    text: case.text,
                    heads: config.heads,
                    head_dim: config.head_dim,
                    dtype,
                    kernel,
                    median_ms,
                    tflops: pairs * per_pair / (median_ms * 1e-3) / 1e12,
                    density_bound: 1.0 / density,
                    speedup_vs_dense: dense_ms.map(|d| d / median_ms),
                    timing,
                });
            }
        }
    }
    Ok(rows)
}

/// One KV-cache attention step: `rows` new queries per (batch, head) over `keys` cached keys.
#[derive(Debug, Clone)]
pub struct KvStepRow {
    pub rows: usize,
    pub keys: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    /// The device's tiles (`key_slices` > 1: the block splits its keys), or one slice.
    pub key_slices: usize,
    pub block_q: usize,
    pub median_ms: f64,
    /// One-slice time / this row's time, measured in the same run (1 for the one-slice row).
    pub speedup_vs_one_slice: f64,
    pub timing: TimingSource,
}

/// Whether every KV-cache step's queries and keys fit the adapter's buffers, checked before anything
/// is allocated: `--kv-steps 4294967296x1` asked for a terabyte of host memory for its queries (an
/// abort) when only the keys were checked.
pub fn kv_steps_fit(device: &Device, steps: &[(usize, usize)], config: &AttentionBenchConfig) -> Result<()> {
    for &(rows, keys) in steps {
        for &dtype in &config.dtypes {
            check_fits(device, "the queries", &[config.heads, rows, config.head_dim], dtype)?;
            check_fits(device, "the key cache", &[config.heads, keys, config.head_dim], dtype)?;
        }
    }
    Ok(())
}

/// KV-cache attention steps (dense attention of few rows over many keys, as VAR's scales attend
/// their cache) on `device`, beside the same steps on `one_slice`, a device of the same adapter whose
/// blocks do not split their keys (`DeviceOptions::allow_key_split` off).
pub fn kv_steps(
    device: &Device,
    one_slice: &Device,
    steps: &[(usize, usize)],
    config: &AttentionBenchConfig,
) -> Result<Vec<KvStepRow>> {
    use scalewise::ops::{AttentionAlgorithm, AttentionOptions, attention_tiles};
    kv_steps_fit(device, steps, config)?;
    let mut out = Vec::new();
    for &(rows, keys) in steps {
        for &dtype in &config.dtypes {
            if dtype == DType::F16 && !device.caps().f16 {
                continue;
            }
            let mut timed = Vec::new();
            for on in [device, one_slice] {
                let q_shape = [1, config.heads, rows, config.head_dim];
                let kv_shape = [1, config.heads, keys, config.head_dim];
                let q = Tensor::from_f32(on, &q_shape, &pseudo_random(q_shape.iter().product(), 3), dtype)?;
                let k = Tensor::from_f32(on, &kv_shape, &pseudo_random(kv_shape.iter().product(), 4), dtype)?;
                let v = Tensor::from_f32(on, &kv_shape, &pseudo_random(kv_shape.iter().product(), 5), dtype)?;
                let tiles = attention_tiles(on, config.head_dim, rows, keys)?;
                // The scalar kernel, whose tiles these are (`Auto` may take the matrix units for the
                // larger steps).
                let scalar = AttentionOptions { algorithm: AttentionAlgorithm::Scalar, ..Default::default() };
                let (median_ms, _, timing) = time_dispatches(on, config.warmup, config.iterations, || {
                    ops::attention(&q, &k, &v, &scalar).map(drop)
                })?;
                timed.push((tiles, median_ms, timing));
            }
            let one_slice_ms = timed[1].1;
            for (tiles, median_ms, timing) in timed {
                out.push(KvStepRow {
                    rows,
                    keys,
                    heads: config.heads,
                    head_dim: config.head_dim,
                    dtype,
                    key_slices: tiles.key_slices,
                    block_q: tiles.block_q,
                    median_ms,
                    speedup_vs_one_slice: one_slice_ms / median_ms,
                    timing,
                });
            }
        }
    }
    Ok(out)
}

pub fn kv_steps_json(rows: &[KvStepRow]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "rows": r.rows, "keys": r.keys, "heads": r.heads, "head_dim": r.head_dim,
                "dtype": r.dtype.to_string(), "key_slices": r.key_slices, "block_q": r.block_q,
                "median_ms": r.median_ms, "speedup_vs_one_slice": r.speedup_vs_one_slice,
                "timing": format!("{:?}", r.timing),
            })
        })
        .collect()
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

#[derive(Debug, Clone)]
pub struct ScanBenchConfig {
    /// (B, D, N, L) with G = 1, as mamba_ssm's selective_scan_fn takes them (channels-major).
    pub shapes: Vec<[usize; 4]>,
    pub dtypes: Vec<DType>,
    /// The per-step baseline (one dispatch per time step) runs only up to this L.
    pub naive_max_length: usize,
    pub warmup: usize,
    pub iterations: usize,
}

impl Default for ScanBenchConfig {
    fn default() -> Self {
        Self {
            shapes: vec![[1, 1536, 16, 2048], [8, 2048, 16, 4096], [2, 2048, 64, 680]],
            dtypes: vec![DType::F32, DType::F16],
            naive_max_length: 2048,
            warmup: 1,
            iterations: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanBenchRow {
    pub shape: [usize; 4],
    pub dtype: DType,
    /// "chunked" (ours) or "per-step" (one dispatch per time step).
    pub kernel: &'static str,
    pub median_ms: f64,
    /// Bytes the fused scan must move: s * (4D + 2GN) per token (u, delta, z, B, C in; y out).
    pub model_bytes: f64,
    pub gbps: f64,
    pub timing: TimingSource,
    /// Why the shape was not run (e.g. beyond the adapter's binding limit).
    pub skipped: Option<String>,
}

pub fn scan(device: &Device, config: &ScanBenchConfig) -> Result<Vec<ScanBenchRow>> {
    use scalewise::ops::scan::{SelectiveScan, SequenceLayout, selective_scan_checked};
    for &[batch, d, n, l] in &config.shapes {
        for &dtype in &config.dtypes {
            check_fits(device, "the scan's (B, D, L) inputs", &[batch, d, l], dtype)?;
            check_fits(device, "the scan's (B, N, L) inputs", &[batch, n, l], dtype)?;
            check_fits(device, "the scan's (B, D, N) state", &[batch, d, n], DType::F32)?;
        }
    }
    let mut rows = Vec::new();
    for &shape in &config.shapes {
        let [batch, d, n, l] = shape;
        for &dtype in &config.dtypes {
            if dtype == DType::F16 && !device.caps().f16 {
                continue;
            }
            let model_bytes = (dtype.size_in_bytes() * (4 * d + 2 * n) * batch * l) as f64;
            let row = |kernel, median_ms: f64, timing, skipped| ScanBenchRow {
                shape,
                dtype,
                kernel,
                median_ms,
                model_bytes,
                gbps: model_bytes / (median_ms * 1e-3) / 1e9,
                timing,
                skipped,
            };
            let seq = [batch, d, l];
            let up = |shape: &[usize], seed, offset, dtype| upload_pattern(device, shape, seed, offset, dtype);
            let inputs = (|| -> Result<_> {
                Ok((
                    up(&seq, 11, 0.0, dtype)?,
                    up(&seq, 12, -1.0, dtype)?,
                    up(&seq, 13, 0.0, dtype)?,
                    up(&[batch, 1, n, l], 14, 0.0, dtype)?,
                    up(&[batch, 1, n, l], 15, 0.0, dtype)?,
                    up(&[d, n], 16, -1.0, DType::F32)?,
                    up(&[d], 17, 1.0, DType::F32)?,
                    up(&[d], 18, 0.0, DType::F32)?,
                ))
            })();
            let (u, delta, z, b, c, a, d_skip, delta_bias) = match inputs {
                Ok(t) => t,
                Err(e @ Error::TooLarge { .. }) => {
                    rows.push(row("chunked", f64::NAN, TimingSource::WallClock, Some(e.to_string())));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let whole = SelectiveScan {
                u: &u,
                delta: &delta,
                a: &a,
                b: &b,
                c: &c,
                d_skip: Some(&d_skip),
                z: Some(&z),
                delta_bias: Some(&delta_bias),
                delta_softplus: true,
                initial_state: None,
                reverse: false,
                layout: SequenceLayout::ChannelsMajor,
                chunk_len: None,
            };
            let timed = time_dispatches(device, config.warmup, config.iterations, || {
                selective_scan_checked(&whole, false).map(drop)
            });
            let (median_ms, _, timing) = match timed {
                Ok(t) => t,
                // A tensor beyond the adapter's binding limit: say so in the results and go on.
                Err(e @ Error::TooLarge { .. }) => {
                    rows.push(row("chunked", f64::NAN, TimingSource::WallClock, Some(e.to_string())));
                    continue;
                }
                Err(e) => return Err(e),
            };
            rows.push(row("chunked", median_ms, timing, None));
            if l <= config.naive_max_length {
                // The steps are sliced before timing: the baseline pays for its dispatches, not copies.
                let steps: Vec<[Tensor; 5]> = (0..l)
                    .map(|t| {
                        Ok([
                            u.slice(2, t..t + 1)?,
                            delta.slice(2, t..t + 1)?,
                            z.slice(2, t..t + 1)?,
                            b.slice(3, t..t + 1)?,
                            c.slice(3, t..t + 1)?,
                        ])
                    })
                    .collect::<Result<_>>()?;
                let (median_ms, _, timing) = time_dispatches(device, 0, 1, || {
                    let mut state: Option<Tensor> = None;
                    for [u, delta, z, b, c] in &steps {
                        let step = SelectiveScan { u, delta, z: Some(z), b, c, initial_state: state.as_ref(), ..whole };
                        let out = selective_scan_checked(&step, false)?;
                        state = Some(out.final_state);
                    }
                    Ok(())
                })?;
                rows.push(row("per-step", median_ms, timing, None));
            }
        }
    }
    Ok(rows)
}

pub fn scan_json(device: &Device, rows: &[ScanBenchRow]) -> serde_json::Value {
    let info = device.info();
    serde_json::json!({
        "benchmark": "selective_scan",
        "adapter": info.adapter.name,
        "backend": info.adapter.backend,
        "bytes_model": "s * (4D + 2GN) per token, G = 1",
        "results": rows.iter().map(|r| serde_json::json!({
            "batch": r.shape[0], "d": r.shape[1], "n": r.shape[2], "l": r.shape[3],
            "dtype": r.dtype.to_string(), "kernel": r.kernel,
            "median_ms": if r.median_ms.is_nan() { None } else { Some(r.median_ms) },
            "model_bytes": r.model_bytes,
            "gbps": if r.gbps.is_nan() { None } else { Some(r.gbps) },
            "timing": format!("{:?}", r.timing),
            "skipped": r.skipped,
        })).collect::<Vec<_>>(),
    })
}

/// SSD's two forms side by side at one shape.
#[derive(Debug, Clone)]
pub struct SsdFormComparison {
    /// (B, L, nheads, headdim, d_state)
    pub shape: [usize; 5],
    pub dtype: DType,
    pub recurrent_ms: f64,
    /// (chunk Q, ms) of the chunked matrix form.
    pub matrix_ms: Vec<(usize, f64)>,
    /// With Q = 256: only the two products any matrix form must compute, C B^T (Q x N x Q per chunk,
    /// ngroups 1) and (Q x Q) @ x (per chunk and head), through the tiled matmul, full chunks only.
    pub matrix_products_lower_bound_ms: f64,
}

/// M-VAR d16's Mamba-2 (d_inner 2048 = 32 heads x 64, d_state 64) over the 680 tokens of the 256px
/// schedule with the CFG batch of 2: recurrent vs chunked matrix form with chunks of 64 and 256.
pub fn ssd_forms(device: &Device, dtype: DType, warmup: usize, iterations: usize) -> Result<SsdFormComparison> {
    use scalewise::ops::scan::{SequenceLayout, SsdForm, SsdScan, ssd_scan_checked};
    let (batch, length, heads, head_dim, n) = (2, 680, 32, 64, 64);
    let d_inner = heads * head_dim;
    let up = |shape: &[usize], seed, offset, dtype| upload_pattern(device, shape, seed, offset, dtype);
    let x = up(&[batch, length, d_inner], 21, 0.0, dtype)?;
    let dt = up(&[batch, length, heads], 22, -1.0, dtype)?;
    let b = up(&[batch, length, 1, n], 23, 0.0, dtype)?;
    let c = up(&[batch, length, 1, n], 24, 0.0, dtype)?;
    let a = up(&[heads], 25, -1.0, DType::F32)?;
    let d_skip = up(&[heads], 26, 1.0, DType::F32)?;
    let dt_bias = up(&[heads], 27, 0.0, DType::F32)?;
    let scan = SsdScan {
        x: &x,
        dt: &dt,
        a: &a,
        b: &b,
        c: &c,
        d_skip: Some(&d_skip),
        dt_bias: Some(&dt_bias),
        dt_softplus: true,
        initial_state: None,
        reverse: false,
        layout: SequenceLayout::TokensMajor,
        chunk_len: None,
        form: SsdForm::Recurrent,
    };
    let (recurrent_ms, _, _) =
        time_dispatches(device, warmup, iterations, || ssd_scan_checked(&scan, false).map(drop))?;
    let mut matrix_ms = Vec::new();
    for q in [64, 256] {
        let matrix = SsdScan { form: SsdForm::ChunkedMatrix, chunk_len: Some(q), ..scan };
        let (ms, _, _) = time_dispatches(device, warmup, iterations, || ssd_scan_checked(&matrix, false).map(drop))?;
        matrix_ms.push((q, ms));
    }
    let (q, chunks) = (256, batch * (length / 256));
    let cb_left = up(&[chunks, q, n], 28, 0.0, dtype)?;
    let cb_right = up(&[chunks, q, n], 29, 0.0, dtype)?;
    let scores = up(&[chunks * heads, q, q], 30, 0.0, dtype)?;
    let values = up(&[chunks * heads, q, head_dim], 31, 0.0, dtype)?;
    let transposed = ops::matmul::MatmulOptions { transpose_b: true, ..Default::default() };
    let (matrix_products_lower_bound_ms, _, _) = time_dispatches(device, warmup, iterations, || {
        ops::matmul_with(&cb_left, &cb_right, &transposed)?;
        ops::matmul(&scores, &values).map(drop)
    })?;
    Ok(SsdFormComparison {
        shape: [batch, length, heads, head_dim, n],
        dtype,
        recurrent_ms,
        matrix_ms,
        matrix_products_lower_bound_ms,
    })
}

/// `scalewise bench generate`: one whole VAR or M-VAR generation with random weights of an official
/// shape.
#[derive(Debug, Clone)]
pub struct GenerateBenchConfig {
    pub transformer: BenchTransformer,
    pub vae: scalewise_support::synthetic::VaeShape,
    pub batch: usize,
    pub cfg: f32,
    pub dtype: DType,
    pub warmup: usize,
    pub iterations: usize,
}

/// The random transformer a generation benchmark runs.
#[derive(Debug, Clone)]
pub enum BenchTransformer {
    Var(scalewise_support::synthetic::VarShape),
    /// Measured twice in one run, the Mamba-2 state carried and the prefix recomputed.
    Mvar(scalewise_support::synthetic::MvarShape),
}

impl BenchTransformer {
    pub fn depth(&self) -> usize {
        match self {
            Self::Var(shape) => shape.depth,
            Self::Mvar(shape) => shape.depth,
        }
    }

    pub fn width(&self) -> usize {
        match self {
            Self::Var(shape) => shape.width,
            Self::Mvar(shape) => shape.width,
        }
    }
}

/// One way of running the generation, timed.
#[derive(Debug, Clone)]
pub struct GenerateBenchRun {
    /// M-VAR: how the Mamba-2 layers saw the earlier scales (None for VAR).
    pub history: Option<scalewise::nn::ScaleHistory>,
    /// Per scale: side and GPU stage times of the profiled run.
    pub scales: Vec<(usize, scalewise::generate::StageTimes)>,
    /// End-to-end wall clock (sampling to final image read back), median and minimum of the unprofiled runs.
    pub median_ms: f64,
    pub min_ms: f64,
    /// M-VAR: the tokens each Mamba-2 layer stepped through in one generation, as the model counted
    /// them.
    pub mamba_token_steps: Option<usize>,
    /// The first generation of this way in the process (the first image: its pipelines compiled on
    /// first use, in milliseconds of wall clock) and its launch counts.
    pub first_ms: f64,
    pub first_launch: LaunchStats,
    /// One steady-state generation's launch counts (the last timed run): dispatches, submissions,
    /// drains of the GPU and waits that left work queued.
    pub steady_launch: LaunchStats,
}

impl GenerateBenchRun {
    /// The stage times summed over the scales.
    pub fn totals(&self) -> scalewise::generate::StageTimes {
        let mut total = scalewise::generate::StageTimes::default();
        for (_, times) in &self.scales {
            total += *times;
        }
        total
    }
}

#[derive(Debug, Clone)]
pub struct GenerateBenchResult {
    /// The transformer's learned values.
    pub parameters: usize,
    pub image_size: usize,
    /// VAR: one run. M-VAR: the carried state, then the recomputed prefix.
    pub runs: Vec<GenerateBenchRun>,
    /// Final decode of the first run's profiled generation.
    pub decode_ms: f64,
    /// Largest GPU memory held by live tensors during the runs.
    pub peak_bytes: u64,
    pub timing: TimingSource,
}

pub fn generate(device: &Device, config: &GenerateBenchConfig) -> Result<GenerateBenchResult> {
    use scalewise::generate::{GenerateOptions, Pipeline, Transformer};
    use scalewise::nn::{MvarModel, ScaleHistory, VarModel, VqVae};
    use scalewise_support::synthetic;
    let vae = VqVae::from_state_dict(device, &synthetic::vae_state_dict(&config.vae, 2)?, config.dtype)?;
    let (transformer, histories): (Transformer, Vec<Option<ScaleHistory>>) = match &config.transformer {
        BenchTransformer::Var(shape) => {
            check_host_fits(&format!("a random VAR of width {}", shape.width), synthetic::var_parameters(shape)?)?;
            let sd = synthetic::var_state_dict(shape, 1)?;
            (VarModel::from_state_dict(device, &sd, config.dtype)?.into(), vec![None])
        }
        BenchTransformer::Mvar(shape) => {
            check_host_fits(&format!("a random M-VAR of width {}", shape.width), synthetic::mvar_parameters(shape)?)?;
            let sd = synthetic::mvar_state_dict(shape, 1)?;
            let histories = vec![Some(ScaleHistory::CarryState), Some(ScaleHistory::RecomputePrefix)];
            (MvarModel::from_state_dict(device, &sd, config.dtype)?.into(), histories)
        }
    };
    let pipeline = Pipeline::new(transformer, vae)?;
    let (classes, vocab) = (pipeline.config().num_classes, pipeline.config().vocab);
    let labels: Vec<usize> = (0..config.batch).map(|i| (7 + 31 * i) % classes).collect();
    let options = |seed: u64, profile_stages: bool, history: Option<ScaleHistory>| GenerateOptions {
        labels: labels.clone(),
        seed,
        cfg: config.cfg,
        top_k: 900.min(vocab),
        top_p: 0.96,
        profile_stages,
        scale_history: history.unwrap_or_default(),
        ..GenerateOptions::default()
    };
    let base = device.pool_stats().live_bytes;
    let mut walls = vec![Vec::new(); histories.len()];
    let mut firsts = vec![(0.0, LaunchStats::default()); histories.len()];
    let mut steadies = vec![LaunchStats::default(); histories.len()];
    // The histories alternate within each iteration, so a drift of the machine (clocks, other
    // load) weighs on both alike.
    for i in 0..config.warmup + config.iterations.max(1) {
        for (way, &history) in histories.iter().enumerate() {
            device.synchronize()?;
            let launched = device.launch_stats();
            let start = std::time::Instant::now();
            let mut generation = pipeline.start(&options(i as u64, false, history))?;
            for step in generation.by_ref() {
                step?;
            }
            generation.decode()?;
            let wall = start.elapsed().as_secs_f64() * 1e3;
            let counts = device.launch_stats() - launched;
            if i == 0 {
                firsts[way] = (wall, counts);
            }
            if i >= config.warmup {
                walls[way].push(wall);
                steadies[way] = counts;
            }
        }
    }
    let mut runs = Vec::new();
    let mut decode_ms = 0.0;
    for (way, (&history, mut walls)) in histories.iter().zip(walls).enumerate() {
        walls.sort_by(f64::total_cmp);
        let mut generation = pipeline.start(&options(0, true, history))?;
        let mut scales = Vec::new();
        for step in generation.by_ref() {
            let step = step?;
            scales.push((step.side, step.times));
        }
        if runs.is_empty() {
            let mut clock = scalewise::generate::StageClock::start(device, true)?;
            clock.stage(|| generation.decode())?;
            decode_ms = clock.finish()?[0];
        }
        runs.push(GenerateBenchRun {
            history,
            scales,
            median_ms: walls[walls.len() / 2],
            min_ms: walls[0],
            mamba_token_steps: generation.mamba_token_steps(),
            first_ms: firsts[way].0,
            first_launch: firsts[way].1,
            steady_launch: steadies[way],
        });
    }
    let timing = if device.caps().timestamps { TimingSource::GpuTimestamps } else { TimingSource::WallClock };
    Ok(GenerateBenchResult {
        parameters: pipeline.config().parameters,
        image_size: pipeline.image_size(),
        runs,
        decode_ms,
        peak_bytes: device.pool_stats().peak_live_bytes.saturating_sub(base),
        timing,
    })
}

fn launch_json(stats: &LaunchStats) -> serde_json::Value {
    serde_json::json!({
        "pipelines_compiled": stats.pipelines_compiled,
        "compile_ms": stats.compile_ms,
        "dispatches": stats.dispatches,
        "submits": stats.submits,
        "drains": stats.drains,
        "overlapped_waits": stats.overlapped_waits,
    })
}

fn run_json(run: &GenerateBenchRun) -> serde_json::Value {
    let totals = run.totals();
    serde_json::json!({
        "history": run.history.map(|h| format!("{h:?}")),
        "median_ms": run.median_ms,
        "min_ms": run.min_ms,
        "transformer_ms": totals.transformer_ms,
        "mamba_ms": totals.mamba_ms,
        "sampling_ms": totals.sampling_ms,
        "accumulate_ms": totals.accumulate_ms,
        "mamba_token_steps_per_layer": run.mamba_token_steps,
        "first_image_ms": run.first_ms,
        "first_image": launch_json(&run.first_launch),
        "steady_state": launch_json(&run.steady_launch),
        "scales": run.scales.iter().map(|(side, t)| serde_json::json!({
            "side": side,
            "transformer_ms": t.transformer_ms,
            "mamba_ms": t.mamba_ms,
            "sampling_ms": t.sampling_ms,
            "accumulate_ms": t.accumulate_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The results file: the first run's figures at the top level (VAR's only run; M-VAR's carried
/// state), every run under "runs", and for M-VAR the recomputed prefix's end-to-end time over the
/// carried state's.
pub fn generate_json(device: &Device, config: &GenerateBenchConfig, r: &GenerateBenchResult) -> serde_json::Value {
    let mut json = serde_json::json!({
        "adapter": device.info().adapter.name,
        "backend": device.info().adapter.backend.to_string(),
        "model": match config.transformer { BenchTransformer::Var(_) => "var", BenchTransformer::Mvar(_) => "mvar" },
        "depth": config.transformer.depth(),
        "width": config.transformer.width(),
        "parameters": r.parameters,
        "image_size": r.image_size,
        "batch": config.batch,
        "cfg": config.cfg,
        "dtype": config.dtype.to_string(),
        "timing": format!("{:?}", r.timing),
        "decode_ms": r.decode_ms,
        "peak_bytes": r.peak_bytes,
        "runs": r.runs.iter().map(run_json).collect::<Vec<_>>(),
    });
    if let BenchTransformer::Mvar(shape) = &config.transformer {
        json["cosine_attention"] = shape.cosine_attention.into();
    }
    if let Some(first) = r.runs.first()
        && let serde_json::Value::Object(fields) = run_json(first)
    {
        for (key, value) in fields {
            json[key] = value;
        }
    }
    if let [carried, recomputed] = r.runs.as_slice() {
        json["recompute_over_carried"] = (recomputed.median_ms / carried.median_ms).into();
    }
    json
}

/// `scalewise bench soak`: many generations in one process on the demo model, watching memory and
/// determinism.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub generations: usize,
    /// Distinct (seed, class) pairs cycled through: each repeats generations / distinct times.
    pub distinct: usize,
    /// Generations before the memory baseline is taken (caches and pools fill first).
    pub warmup: usize,
    pub dtype: Option<DType>,
}

/// One sample of a soak run.
#[derive(Debug, Clone, Copy)]
pub struct SoakSample {
    pub generation: usize,
    /// Resident set size of the process (None where /proc is unavailable).
    pub rss_bytes: Option<u64>,
    /// GPU bytes held by live tensors and kept for reuse by the buffer pool.
    pub pool_live_bytes: u64,
    pub pool_cached_bytes: u64,
    pub wall_ms: f64,
}

#[derive(Debug, Clone)]
pub struct SoakResult {
    pub samples: Vec<SoakSample>,
    /// Generations whose image differed from the first one of the same seed and class.
    pub mismatches: Vec<usize>,
    /// Generations compared with an earlier one of the same seed and class.
    pub compared: usize,
}

impl SoakResult {
    /// RSS growth from the end of the warm-up to the end of the run, in bytes (None without /proc).
    pub fn rss_growth(&self, warmup: usize) -> Option<i64> {
        let base = self.samples.iter().find(|s| s.generation + 1 >= warmup)?.rss_bytes?;
        let last = self.samples.last()?.rss_bytes?;
        Some(last as i64 - base as i64)
    }

    /// Pool growth (live + cached) over the same span.
    pub fn pool_growth(&self, warmup: usize) -> Option<i64> {
        let base = self.samples.iter().find(|s| s.generation + 1 >= warmup)?;
        let last = self.samples.last()?;
        let total = |s: &SoakSample| (s.pool_live_bytes + s.pool_cached_bytes) as i64;
        Some(total(last) - total(base))
    }
}

/// Memory the kernel could give this process without swapping (Linux: MemAvailable in /proc/meminfo),
/// else None.
pub fn available_host_bytes() -> Option<u64> {
    proc_kib_field("/proc/meminfo", "MemAvailable:")
}

/// The `key` line of a /proc file that counts in kB (`VmRSS:   1234 kB`), in bytes; None off Linux.
fn proc_kib_field(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a random model of `parameters` f32 values that would not fit in the host memory available
/// (it is drawn whole before it is uploaded): a typed error instead of the allocator's abort.
fn check_host_fits(what: &str, parameters: u64) -> Result<()> {
    let bytes = parameters.saturating_mul(4);
    let gib = |b: u64| b as f64 / f64::from(1 << 30);
    match available_host_bytes() {
        Some(available) if bytes > available => Err(Error::InvalidArgument {
            op: "bench generate",
            msg: format!(
                "{what} needs {:.1} GiB of host memory to draw its f32 weights; {:.1} GiB is available",
                gib(bytes),
                gib(available)
            ),
        }),
        _ => Ok(()),
    }
}

/// The process's resident set size from /proc/self/status (Linux), else None.
pub fn resident_bytes() -> Option<u64> {
    proc_kib_field("/proc/self/status", "VmRSS:")
}

pub fn soak(device: &Device, config: &SoakConfig, mut progress: impl FnMut(&SoakSample)) -> Result<SoakResult> {
    use scalewise::generate::GenerateOptions;
    let pipeline = crate::demo::pipeline(DemoModel::Var, device, config.dtype)?;
    let classes = pipeline.config().num_classes;
    let distinct = config.distinct.max(1);
    let mut first_hash: Vec<Option<u64>> = vec![None; distinct];
    let (mut samples, mut mismatches, mut compared) = (Vec::new(), Vec::new(), 0);
    for generation in 0..config.generations {
        let pair = generation % distinct;
        let options = GenerateOptions {
            labels: vec![pair % classes],
            seed: 1000 + pair as u64,
            profile_stages: false,
            ..GenerateOptions::default()
        };
        let started = std::time::Instant::now();
        let (images, _) = pipeline.generate(&options)?;
        let wall_ms = started.elapsed().as_secs_f64() * 1e3;
        let hash = images
            .iter()
            .flat_map(|image| image.rgb.iter())
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        match first_hash[pair] {
            None => first_hash[pair] = Some(hash),
            Some(first) => {
                compared += 1;
                if first != hash {
                    mismatches.push(generation);
                }
            }
        }
        let pool = device.pool_stats();
        let sample = SoakSample {
            generation,
            rss_bytes: resident_bytes(),
            pool_live_bytes: pool.live_bytes,
            pool_cached_bytes: pool.cached_bytes,
            wall_ms,
        };
        progress(&sample);
        samples.push(sample);
    }
    Ok(SoakResult { samples, mismatches, compared })
}

/// `scalewise bench precision`: the demo model with f32 and with f16 weights, same seeds and classes,
/// compared token for token per scale and image for image.
#[derive(Debug, Clone)]
pub struct PrecisionResult {
    /// Generations per precision (classes x seeds).
    pub runs: usize,
    /// Per scale: side, tokens equal in both precisions, tokens compared.
    pub scales: Vec<(usize, usize, usize)>,
    /// Runs whose whole token sequence agreed, and whose final images were bit-identical.
    pub identical_tokens: usize,
    pub identical_images: usize,
}

pub fn precision(device: &Device, seeds: &[u64]) -> Result<PrecisionResult> {
    use scalewise::generate::GenerateOptions;
    if !device.caps().f16 {
        return Err(Error::MissingFeature { what: "comparing f16 with f32 weights".into(), feature: "SHADER_F16" });
    }
    let f32_pipeline = crate::demo::pipeline(DemoModel::Var, device, Some(DType::F32))?;
    let f16_pipeline = crate::demo::pipeline(DemoModel::Var, device, Some(DType::F16))?;
    let config = f32_pipeline.config();
    let mut scales: Vec<(usize, usize, usize)> = config.patch_nums.iter().map(|&s| (s, 0, 0)).collect();
    let (mut runs, mut identical_tokens, mut identical_images) = (0, 0, 0);
    for class in 0..config.num_classes {
        for &seed in seeds {
            let options =
                GenerateOptions { labels: vec![class], seed, profile_stages: false, ..GenerateOptions::default() };
            let (image_a, steps_a) = f32_pipeline.generate(&options)?;
            let (image_b, steps_b) = f16_pipeline.generate(&options)?;
            let mut all_equal = true;
            for ((a, b), row) in steps_a.iter().zip(&steps_b).zip(scales.iter_mut()) {
                let equal = a.tokens.iter().zip(&b.tokens).filter(|(x, y)| x == y).count();
                all_equal &= equal == a.tokens.len();
                row.1 += equal;
                row.2 += a.tokens.len();
            }
            runs += 1;
            identical_tokens += usize::from(all_equal);
            identical_images += usize::from(image_a == image_b);
        }
    }
    Ok(PrecisionResult { runs, scales, identical_tokens, identical_images })
}

/// Which transformer a synthetic checkpoint has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchModel {
    Var,
    Mvar,
}

/// `scalewise bench load`: peak host memory while loading a synthetic checkpoint of an official shape,
/// streamed ([`scalewise::weights::WeightsFile`]) and, optionally, read whole first (the old way).
#[derive(Debug, Clone)]
pub struct LoadBenchConfig {
    pub model: BenchModel,
    pub depth: usize,
    pub dtype: DType,
    /// The .pth file to write (and remove afterwards unless `keep`).
    pub file: std::path::PathBuf,
    pub keep: bool,
    pub eager: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadMeasure {
    pub seconds: f64,
    /// Peak resident set size during the load, above the resident size before it.
    pub peak_rss_growth: Option<u64>,
    /// GPU bytes the loaded model holds (on a CPU adapter, part of the resident set too).
    pub gpu_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LoadBenchResult {
    pub file_bytes: u64,
    pub tensors: usize,
    pub parameters: u64,
    /// The largest tensor's size as f32.
    pub largest_tensor_bytes: u64,
    pub streamed: LoadMeasure,
    pub eager: Option<LoadMeasure>,
}

/// Peak resident set size (VmHWM), Linux only.
fn peak_resident_bytes() -> Option<u64> {
    proc_kib_field("/proc/self/status", "VmHWM:")
}

/// Resets the peak resident set size to the current one (Linux: `5` into /proc/self/clear_refs).
fn reset_peak_resident() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Writes a synthetic torch.save checkpoint of `depth` blocks, one tensor at a time: the top-level
/// tensors and one block are drawn at random, and that block's tensors are written under every block
/// index (the values do not matter for loading, their number and sizes do). Returns the file's size,
/// the tensor count, the parameter count and the largest tensor's f32 bytes.
pub fn write_synthetic_pth(path: &std::path::Path, model: BenchModel, depth: usize) -> Result<(u64, usize, u64, u64)> {
    let (partial, written) = write_synthetic(path, model, depth)?;
    partial.keep();
    Ok(written)
}

/// [`write_synthetic_pth`], with the file still partial: removed when the guard is dropped, or when
/// the process is interrupted, until the caller keeps it.
fn write_synthetic(
    path: &std::path::Path,
    model: BenchModel,
    depth: usize,
) -> Result<(PartialFile, (u64, usize, u64, u64))> {
    use scalewise_support::synthetic::{MvarShape, VarShape, mvar_state_dict, var_state_dict};
    use scalewise_support::torch_file as p;
    use std::io::Write;
    let one_block = match model {
        BenchModel::Var => var_state_dict(&VarShape { depth: 1, ..VarShape::official(depth) }, 1)?,
        BenchModel::Mvar => mvar_state_dict(&MvarShape { depth: 1, ..MvarShape::official(depth) }, 1)?,
    };
    let io = |e: std::io::Error| Error::Output { path: path.to_path_buf(), reason: e.to_string() };
    let zip_error =
        |e: scalewise_support::torch_file::ZipError| Error::Output { path: path.to_path_buf(), reason: e.to_string() };
    // A new file only (O_EXCL): the benchmark never replaces anything. The file is ours from here: a
    // failed write (a full disk, with tens of GB written) or a signal removes it. Declared before the
    // writer, so the writer is dropped (and its file closed) first.
    let (partial, file) = PartialFile::create(path).map_err(io)?;
    let mut zip = p::ZipWriter::new(std::io::BufWriter::new(file));
    let options = p::stored_options();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut tensors, mut parameters, mut largest) = (0usize, 0u64, 0u64);
    let mut write_tensor = |zip: &mut p::ZipWriter<std::io::BufWriter<std::fs::File>>,
                            key: String,
                            t: &scalewise::weights::HostTensor|
     -> Result<()> {
        let storage = tensors.to_string();
        zip.start_file(format!("archive/data/{storage}"), options).map_err(zip_error)?;
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        zip.write_all(&bytes).map_err(io)?;
        let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
        let mut stride = vec![1i32; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        entries.push((key, p::tensor("FloatStorage", &storage, t.data.len() as i32, 0, &shape, &stride)));
        tensors += 1;
        parameters += t.data.len() as u64;
        largest = largest.max(4 * t.data.len() as u64);
        Ok(())
    };
    for (key, t) in one_block.iter().filter(|(k, _)| !k.starts_with("blocks.")) {
        write_tensor(&mut zip, key.to_string(), t)?;
    }
    for i in 0..depth {
        for (key, t) in one_block.iter() {
            if let Some(rest) = key.strip_prefix("blocks.0.") {
                write_tensor(&mut zip, format!("blocks.{i}.{rest}"), t)?;
            }
        }
    }
    let entries: Vec<(&str, Vec<u8>)> = entries.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    zip.start_file("archive/data.pkl", options).map_err(zip_error)?;
    zip.write_all(&p::dict(&entries)).map_err(io)?;
    zip.start_file("archive/byteorder", options).map_err(zip_error)?;
    zip.write_all(b"little").map_err(io)?;
    let mut writer = zip.finish().map_err(zip_error)?;
    writer.flush().map_err(io)?;
    writer.get_ref().sync_all().map_err(io)?;
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    Ok((partial, (bytes, tensors, parameters, largest)))
}

/// A file this process created and has not finished with: removed when dropped, and registered
/// with [`scalewise::output::create_partial`] so that an interrupted run removes it too (the CLI's
/// signal thread), unless [`PartialFile::keep`] was called.
struct PartialFile(Option<std::path::PathBuf>);

impl PartialFile {
    /// Creates `path`, which must not exist, for writing.
    fn create(path: &std::path::Path) -> std::io::Result<(Self, std::fs::File)> {
        let file = scalewise::output::create_partial(path, std::fs::OpenOptions::new().write(true).create_new(true))?;
        Ok((Self(Some(path.to_path_buf())), file))
    }

    /// The file is complete and stays.
    fn keep(mut self) {
        if let Some(path) = self.0.take() {
            scalewise::output::keep_partial(&path);
        }
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            scalewise::output::discard_partial(&path);
        }
    }
}

fn measure_load(
    device: &Device,
    dtype: DType,
    load: impl FnOnce() -> Result<Box<dyn scalewise::weights::Weights>>,
) -> Result<LoadMeasure> {
    device.trim_pool();
    let before = resident_bytes();
    let reset = reset_peak_resident();
    let started = std::time::Instant::now();
    let gpu_before = device.pool_stats().live_bytes;
    let weights = load()?;
    // The transformer the file holds (VAR or M-VAR), told by its keys as Pipeline::load does.
    let model = scalewise::generate::Transformer::from_state_dict(device, weights.as_ref(), dtype)?;
    drop(weights);
    let gpu_bytes = device.pool_stats().live_bytes - gpu_before;
    drop(model);
    let seconds = started.elapsed().as_secs_f64();
    let peak = if reset { peak_resident_bytes() } else { None };
    device.trim_pool();
    Ok(LoadMeasure { seconds, peak_rss_growth: peak.zip(before).map(|(p, b)| p.saturating_sub(b)), gpu_bytes })
}

pub fn load(device: &Device, config: &LoadBenchConfig) -> Result<LoadBenchResult> {
    use scalewise::weights::{LoadOptions, StateDict, WeightsFile};
    // The file stays registered as partial while it is measured: an interrupted run removes it.
    let (partial, (file_bytes, tensors, parameters, largest_tensor_bytes)) =
        write_synthetic(&config.file, config.model, config.depth)?;
    let path = config.file.clone();
    let run = || -> Result<(LoadMeasure, Option<LoadMeasure>)> {
        let streamed =
            measure_load(device, config.dtype, || Ok(Box::new(WeightsFile::open(&path, &LoadOptions::default())?)))?;
        let eager = if config.eager {
            Some(measure_load(device, config.dtype, || Ok(Box::new(StateDict::load(&path)?)))?)
        } else {
            None
        };
        Ok((streamed, eager))
    };
    let outcome = run();
    if config.keep {
        partial.keep();
    } else {
        drop(partial);
    }
    let (streamed, eager) = outcome?;
    Ok(LoadBenchResult { file_bytes, tensors, parameters, largest_tensor_bytes, streamed, eager })
}
