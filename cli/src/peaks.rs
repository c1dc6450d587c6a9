//! `scalewise bench peaks`: what the device itself reaches, so every kernel can be quoted as a
//! fraction of it: an FMA loop (f32 FMA peak), a vec4 copy kernel (the bandwidth kernels actually
//! get) and the gap between consecutive tiny dispatches (what each of a generation's ~1500 launches
//! costs the GPU at least). Written with wgpu directly, outside scalewise's runtime, so nothing of
//! ours is in the way: these are the ceilings our kernels are measured against. wgpu backends only;
//! on CUDA the torch peers (scripts/gpu/torch_peers.py) measure the same limits.

use std::time::Instant;

use scalewise::Device;

/// What each probe does; the defaults fit a big GPU (a few ms per probe) and stay bearable on
/// lavapipe with smaller numbers from the command line.
#[derive(Debug, Clone)]
pub struct PeaksConfig {
    /// FMA probe: workgroups of 256 threads, each thread `fma_iters` iterations of 32 FMAs.
    pub fma_workgroups: u32,
    pub fma_iters: u32,
    /// Fewer iterations where `fma_iters` would take over FMA_RUN_MS_MOST per run (a CPU adapter:
    /// lavapipe's 16384 x 256 threads x 4096 iterations took about 80 s a run, 16 minutes for the
    /// probe); false keeps `fma_iters` as given.
    pub fit_fma_iters: bool,
    /// Copy probe: bytes copied (read once, written once), capped by the adapter's binding limit.
    pub copy_bytes: u64,
    /// Dispatch-gap probe: empty one-thread dispatches recorded in one compute pass.
    pub dispatches: u32,
    pub warmup: usize,
    pub iterations: usize,
}

impl Default for PeaksConfig {
    fn default() -> Self {
        Self {
            fma_workgroups: 16384,
            fma_iters: 4096,
            fit_fma_iters: true,
            copy_bytes: 1 << 30,
            dispatches: 2000,
            warmup: 2,
            iterations: 10,
        }
    }
}

/// One probe's result: its median time and the rate it implies.
#[derive(Debug, Clone)]
pub struct Peak {
    pub probe: &'static str,
    pub median_ms: f64,
    pub min_ms: f64,
    /// TFLOP/s (fma), GB/s (copy) or microseconds per dispatch (gap).
    pub value: f64,
    pub unit: &'static str,
    pub detail: String,
}

const SHADER: &str = r#"
struct Params {
    n: u32,
    iters: u32,
    row: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> p: Params;

fn index(id: vec3<u32>) -> u32 {
    return id.y * p.row + id.x;
}

// 8 independent chains of vec4 FMAs (32 per iteration), so latency does not bound the loop. The
// values stay finite (a contraction towards 1) and land in dst, so nothing is optimised away.
@compute @workgroup_size(256)
fn fma_peak(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = index(id);
    let seed = f32(i % 1024u) * 1e-4;
    var a0 = vec4<f32>(seed, seed + 0.1, seed + 0.2, seed + 0.3);
    var a1 = a0 + 0.01;
    var a2 = a0 + 0.02;
    var a3 = a0 + 0.03;
    var a4 = a0 + 0.04;
    var a5 = a0 + 0.05;
    var a6 = a0 + 0.06;
    var a7 = a0 + 0.07;
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(0.001);
    for (var k = 0u; k < p.iters; k++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    if i < p.n {
        dst[i] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    }
}

@compute @workgroup_size(256)
fn copy_vec4(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = index(id);
    if i < p.n {
        dst[i] = src[i];
    }
}

@compute @workgroup_size(1)
fn empty() {}
"#;

/// Workgroups per grid row: the portable per-dimension limit.
const ROW_GROUPS: u32 = 65535;

struct Probe<'a> {
    device: &'a wgpu::Device,
    queue: &'a wgpu::Queue,
    module: wgpu::ShaderModule,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

impl<'a> Probe<'a> {
    fn new(device: &'a wgpu::Device, queue: &'a wgpu::Queue) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("peaks"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("peaks"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Storage { read_only: true }),
                entry(1, wgpu::BufferBindingType::Storage { read_only: false }),
                entry(2, wgpu::BufferBindingType::Uniform),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("peaks"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        Self { device, queue, module, layout, pipeline_layout }
    }

    fn pipeline(&self, entry: &str) -> wgpu::ComputePipeline {
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&self.pipeline_layout),
            module: &self.module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    }

    fn buffer(&self, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("peaks"),
            size: bytes.max(16),
            usage,
            mapped_at_creation: false,
        })
    }

    fn bind_group(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, n: u32, iters: u32, row: u32) -> wgpu::BindGroup {
        let params = self.buffer(16, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let words = [n, iters, row, 0];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.queue.write_buffer(&params, 0, &bytes);
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("peaks"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: src.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: dst.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: params.as_entire_binding() },
            ],
        })
    }

    /// Median and minimum milliseconds from submit to completion of `record`'s commands, after
    /// `warmup` untimed runs.
    fn time(
        &self,
        warmup: usize,
        iterations: usize,
        record: impl Fn(&mut wgpu::ComputePass<'_>),
    ) -> anyhow::Result<(f64, f64)> {
        let mut times = Vec::new();
        for run in 0..warmup + iterations.max(1) {
            let mut encoder =
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("peaks") });
            {
                let mut pass = encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("peaks"), timestamp_writes: None });
                record(&mut pass);
            }
            let commands = encoder.finish();
            self.device.poll(wgpu::PollType::wait_indefinitely())?;
            let start = Instant::now();
            self.queue.submit([commands]);
            self.device.poll(wgpu::PollType::wait_indefinitely())?;
            if run >= warmup {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], times[0]))
    }
}

impl Probe<'_> {
    /// Times one dispatch of `entry` over `groups` workgroups of 256 threads (rows of ROW_GROUPS).
    fn time_kernel(
        &self,
        entry: &str,
        (src, dst): (&wgpu::Buffer, &wgpu::Buffer),
        n: u32,
        iters: u32,
        groups: u32,
        config: &PeaksConfig,
    ) -> anyhow::Result<(f64, f64)> {
        let (gx, gy) = grid(groups);
        let bind = self.bind_group(src, dst, n, iters, gx * 256);
        let pipeline = self.pipeline(entry);
        self.time(config.warmup, config.iterations, |pass| {
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(gx, gy, 1);
        })
    }
}

/// The longest an FMA probe run may take before its iterations are cut ([`PeaksConfig::fit_fma_iters`]):
/// a GPU's run of the default size takes milliseconds (an H100-class one about 20), so only a CPU
/// adapter or a very small GPU is cut.
const FMA_RUN_MS_MOST: f64 = 500.0;

/// `config.fma_iters`, or fewer where a run of them would take over FMA_RUN_MS_MOST: timed on one
/// run of a 64th of them (at least 1), scaled to FMA_RUN_MS_MOST / 4.
fn fitted_fma_iters(
    probe: &Probe<'_>,
    buffers: (&wgpu::Buffer, &wgpu::Buffer),
    threads: u64,
    config: &PeaksConfig,
) -> anyhow::Result<u32> {
    let sample = (config.fma_iters / 64).max(1);
    let once = PeaksConfig { warmup: 1, iterations: 1, ..config.clone() };
    let (ms, _) = probe.time_kernel("fma_peak", buffers, threads as u32, sample, config.fma_workgroups, &once)?;
    let projected = ms * f64::from(config.fma_iters) / f64::from(sample);
    if projected <= FMA_RUN_MS_MOST {
        return Ok(config.fma_iters);
    }
    let fitted = f64::from(config.fma_iters) * FMA_RUN_MS_MOST / 4.0 / projected;
    Ok((fitted as u32).clamp(1, config.fma_iters))
}

/// A grid of `groups` workgroups, wrapped into rows of at most ROW_GROUPS.
fn grid(groups: u32) -> (u32, u32) {
    (groups.min(ROW_GROUPS), groups.div_ceil(ROW_GROUPS))
}

/// Runs the three probes on `device`'s wgpu device.
pub fn peaks(device: &Device, config: &PeaksConfig) -> anyhow::Result<Vec<Peak>> {
    let Some((raw, queue)) = device.wgpu() else {
        anyhow::bail!(
            "bench peaks measures a wgpu device (Vulkan, Metal, DX12, GL); on CUDA, scripts/gpu/torch_peers.py measures the same limits"
        );
    };
    anyhow::ensure!(config.fma_workgroups > 0 && config.fma_iters > 0, "the FMA probe needs work");
    anyhow::ensure!(config.dispatches > 0, "the dispatch probe needs at least one dispatch");
    // Whatever scalewise has queued runs first, outside the measurements.
    device.synchronize()?;
    let probe = Probe::new(raw, queue);
    let storage = wgpu::BufferUsages::STORAGE;
    let mut out = Vec::new();

    // FMA: 32 FMAs (64 FLOPs) per iteration per thread.
    let threads = u64::from(config.fma_workgroups) * 256;
    let fma_bytes = threads * 16;
    let limit = raw.limits().max_storage_buffer_binding_size;
    anyhow::ensure!(
        fma_bytes <= limit,
        "{} FMA workgroups write {fma_bytes} bytes, over the binding limit of {limit}",
        config.fma_workgroups
    );
    let dst = probe.buffer(fma_bytes, storage);
    let src = probe.buffer(16, storage);
    let fma_iters =
        if config.fit_fma_iters { fitted_fma_iters(&probe, (&src, &dst), threads, config)? } else { config.fma_iters };
    let (median, min) =
        probe.time_kernel("fma_peak", (&src, &dst), threads as u32, fma_iters, config.fma_workgroups, config)?;
    let flops = threads as f64 * f64::from(fma_iters) * 64.0;
    out.push(Peak {
        probe: "fma",
        median_ms: median,
        min_ms: min,
        value: flops / (min * 1e-3) / 1e12,
        unit: "TFLOP/s",
        detail: format!("{threads} threads x {fma_iters} iterations x 32 f32 FMAs"),
    });
    drop((dst, src));

    // Copy: vec4 loads and stores, one pass; bytes moved = read + write.
    let copy_bytes = (config.copy_bytes.min(limit) / 16 * 16).max(16);
    let vecs = copy_bytes / 16;
    let src = probe.buffer(copy_bytes, storage);
    let dst = probe.buffer(copy_bytes, storage);
    let groups = u32::try_from(vecs.div_ceil(256)).map_err(|_| anyhow::anyhow!("copy probe too large"))?;
    let (median, min) = probe.time_kernel("copy_vec4", (&src, &dst), vecs as u32, 0, groups, config)?;
    out.push(Peak {
        probe: "copy",
        median_ms: median,
        min_ms: min,
        value: 2.0 * copy_bytes as f64 / (min * 1e-3) / 1e9,
        unit: "GB/s",
        detail: format!("{} MiB read and written", copy_bytes >> 20),
    });
    drop((src, dst));

    // Dispatch gap: empty one-thread dispatches back to back in one pass, each with its bind group
    // set again (as every scalewise launch does). Per dispatch = (total - one dispatch) / (n - 1).
    let src = probe.buffer(16, storage);
    let dst = probe.buffer(16, storage);
    let bind = probe.bind_group(&src, &dst, 0, 0, 1);
    let pipeline = probe.pipeline("empty");
    let (pipeline, bind) = (&pipeline, &bind);
    let record = |count: u32| {
        move |pass: &mut wgpu::ComputePass<'_>| {
            pass.set_pipeline(pipeline);
            for _ in 0..count {
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
    };
    let (one, _) = probe.time(config.warmup, config.iterations, record(1))?;
    let (median, min) = probe.time(config.warmup, config.iterations, record(config.dispatches))?;
    let per_dispatch_us = (median - one).max(0.0) * 1e3 / f64::from(config.dispatches.max(2) - 1);
    out.push(Peak {
        probe: "dispatch gap",
        median_ms: median,
        min_ms: min,
        value: per_dispatch_us,
        unit: "us per dispatch",
        detail: format!("{} empty dispatches in one pass and one submission; one alone {one:.3} ms", config.dispatches),
    });
    Ok(out)
}

pub fn peaks_json(device: &Device, config: &PeaksConfig, peaks: &[Peak]) -> serde_json::Value {
    let info = device.info();
    serde_json::json!({
        "adapter": info.adapter.name,
        "backend": info.adapter.backend,
        "config": {
            "fma_workgroups": config.fma_workgroups,
            "fma_iters": config.fma_iters,
            "fit_fma_iters": config.fit_fma_iters,
            "copy_bytes": config.copy_bytes,
            "dispatches": config.dispatches,
            "iterations": config.iterations,
        },
        "peaks": peaks.iter().map(|p| serde_json::json!({
            "probe": p.probe,
            "median_ms": p.median_ms,
            "min_ms": p.min_ms,
            "value": p.value,
            "unit": p.unit,
            "detail": p.detail,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_report_positive_rates_on_a_small_configuration() {
        let device = match scalewise::DeviceOptions::from_env().and_then(|o| Device::new(&o)) {
            Ok(device) => device,
            Err(e) => {
                // Past libtest's capture, so the skip shows in a passing run.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIP peaks: no wgpu device: {e}");
                return;
            }
        };
        let config = PeaksConfig {
            fma_workgroups: 8,
            fma_iters: 16,
            // The fitting's sample run happens; 16 iterations are far below its cut anywhere.
            fit_fma_iters: true,
            copy_bytes: 1 << 16,
            dispatches: 20,
            warmup: 1,
            iterations: 2,
        };
        let peaks = peaks(&device, &config).expect("the probes run");
        let probes: Vec<&str> = peaks.iter().map(|p| p.probe).collect();
        assert_eq!(probes, ["fma", "copy", "dispatch gap"]);
        assert_eq!(peaks[0].detail, "2048 threads x 16 iterations x 32 f32 FMAs");
        for p in &peaks {
            assert!(p.value.is_finite() && p.value >= 0.0 && p.min_ms <= p.median_ms, "{p:?}");
        }
        let json = peaks_json(&device, &config, &peaks);
        assert_eq!(json["peaks"].as_array().map(Vec::len), Some(3));
    }
}
