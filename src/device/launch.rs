//! Kernel launching: WGSL composition per variant, the pipeline cache keyed by
//! (shader, variant, entry point, override constants), and the checked dispatch every op goes through.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use super::pool::GpuBuffer;
use super::{GpuContext, poisoned};
use crate::error::{Error, Result};
use crate::shaders::{ShaderFamily, Variant};

/// One storage buffer argument of a kernel, in binding order.
pub(crate) struct Binding<'a> {
    pub buffer: &'a GpuBuffer,
    /// Bytes the kernel may touch (the tensor's size, not the pooled buffer's).
    pub bytes: u64,
    pub writable: bool,
    /// Names the argument in errors.
    pub name: &'a str,
}

/// What to run: a family's entry point in one variant, specialised by override constants.
pub(crate) struct Kernel<'a> {
    pub family: &'static ShaderFamily,
    pub entry: &'static str,
    pub variant: Variant,
    pub constants: &'a [(&'static str, f64)],
}

#[derive(Hash, PartialEq, Eq)]
struct PipelineKey {
    family: &'static str,
    variant: Variant,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
    writable: Vec<bool>,
}

struct CachedPipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(&'static str, Variant), Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<CachedPipeline>>>,
}

impl PipelineCache {
    fn module(
        &self,
        ctx: &GpuContext,
        family: &'static ShaderFamily,
        variant: Variant,
    ) -> Result<Arc<wgpu::ShaderModule>> {
        if let Some(module) = self.modules.lock().map_err(poisoned)?.get(&(family.name, variant)) {
            return Ok(Arc::clone(module));
        }
        let source = family.compose(variant);
        let label = format!("{}{}", family.name, variant.suffix());
        let module = ctx
            .checked(&format!("compiling shader {label}"), || {
                Ok(ctx.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                }))
            })
            .map_err(|e| Error::Shader { shader: label.clone(), msg: e.to_string() })?;
        let module = Arc::new(module);
        self.modules.lock().map_err(poisoned)?.insert((family.name, variant), Arc::clone(&module));
        Ok(module)
    }

    fn pipeline(&self, ctx: &GpuContext, kernel: &Kernel, bindings: &[Binding]) -> Result<Arc<CachedPipeline>> {
        let key = PipelineKey {
            family: kernel.family.name,
            variant: kernel.variant,
            entry: kernel.entry,
            constants: kernel.constants.iter().map(|&(name, value)| (name, value.to_bits())).collect(),
            writable: bindings.iter().map(|b| b.writable).collect(),
        };
        if let Some(cached) = self.pipelines.lock().map_err(poisoned)?.get(&key) {
            return Ok(Arc::clone(cached));
        }
        let module = self.module(ctx, kernel.family, kernel.variant)?;
        let label = format!("{}{}::{}", kernel.family.name, kernel.variant.suffix(), kernel.entry);
        let cached = ctx.checked(&format!("building pipeline {label}"), || {
            let mut entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: !b.writable },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: bindings.len() as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
            let layout = ctx
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
            let pipeline_layout = ctx.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: kernel.constants,
                    // Every kernel initialises the workgroup memory it reads; zeroing it costs time.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            Ok(CachedPipeline { pipeline, layout })
        })?;
        let cached = Arc::new(cached);
        self.pipelines.lock().map_err(poisoned)?.insert(key, Arc::clone(&cached));
        Ok(cached)
    }
}

/// Dispatches recorded into one command encoder, submitted together by [`GpuContext::flush`].
pub(crate) struct PendingCommands {
    encoder: wgpu::CommandEncoder,
    dispatches: u32,
}

/// Recorded dispatches per submission: enough to amortise the submit, few enough that the GPU starts
/// early.
const DISPATCHES_PER_SUBMIT: u32 = 64;

/// Splits `groups` workgroups over x and y so that neither exceeds the per-dimension limit.
/// Kernels recover the flat index with `grid_workgroup` (shaders/wgsl/grid.wgsl) and skip indices past
/// the end.
pub(crate) fn grid(ctx: &GpuContext, groups: u64, what: &str) -> Result<[u32; 3]> {
    let max = ctx.info.max_compute_workgroups_per_dimension as u64;
    if groups == 0 {
        return Ok([0, 1, 1]);
    }
    let x = groups.min(max);
    let y = groups.div_ceil(x);
    if y > max {
        return Err(Error::TooLarge {
            what: format!("{what} ({groups} workgroups)"),
            bytes: groups,
            limit: max * max,
            limit_name: "max_compute_workgroups_per_dimension squared (counted in workgroups, not bytes)",
        });
    }
    Ok([x as u32, y as u32, 1])
}

impl GpuContext {
    /// Submits the recorded dispatches, if any.
    pub(crate) fn flush(&self) -> Result<()> {
        // The lock is held until the submission: another thread's flush must not return (and submit
        // a readback or upload) while these commands are taken but not yet submitted.
        let mut pending = self.pending.lock().map_err(poisoned)?;
        if let Some(commands) = pending.take() {
            self.checked("submitting kernels", || {
                self.queue.submit([commands.encoder.finish()]);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Runs one kernel: checks sizes against the adapter's limits, binds, dispatches, submits.
    /// `params` fill the uniform buffer that follows the storage bindings.
    pub(crate) fn dispatch(
        &self,
        kernel: &Kernel,
        bindings: &[Binding],
        params: &[u32],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let label = format!("{}{}::{}", kernel.family.name, kernel.variant.suffix(), kernel.entry);
        let binding_limit = self.info.max_storage_buffer_binding_size;
        for binding in bindings {
            if binding.bytes > binding_limit {
                return Err(Error::TooLarge {
                    what: format!("argument {} of {label}", binding.name),
                    bytes: binding.bytes,
                    limit: binding_limit,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
        }
        let max_groups = self.info.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&g| g > max_groups) {
            return Err(Error::InvalidArgument {
                op: "dispatch",
                msg: format!("{label}: {workgroups:?} workgroups exceed the per-dimension limit {max_groups}"),
            });
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let cached = self.pipelines.pipeline(self, kernel, bindings)?;
        let mut profiler = self.profiler.lock().map_err(poisoned)?;
        let timestamp_slot = match profiler.as_mut() {
            Some(p) => p.timestamp_slot(self, &label)?,
            None => None,
        };
        let wall_start = match (&*profiler, timestamp_slot) {
            (Some(_), None) => {
                self.wait_idle()?;
                Some(std::time::Instant::now())
            }
            _ => None,
        };
        self.checked(&format!("running {label}"), || {
            // Uniform buffers are at least 16 bytes and a multiple of 16.
            let mut words = params.to_vec();
            words.resize(params.len().div_ceil(4).max(1) * 4, 0);
            // Not create_buffer_init: it maps at creation and panics on a lost device.
            let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: words.len() as u64 * 4,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.queue.write_buffer(&uniform, 0, bytemuck::cast_slice(&words));
            let mut entries: Vec<wgpu::BindGroupEntry> = bindings
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b.buffer.raw(),
                        offset: 0,
                        size: NonZeroU64::new(b.bytes.div_ceil(4).max(1) * 4),
                    }),
                })
                .collect();
            entries
                .push(wgpu::BindGroupEntry { binding: bindings.len() as u32, resource: uniform.as_entire_binding() });
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &cached.layout,
                entries: &entries,
            });
            // Wall-clock profiling (no timestamp queries) times each dispatch alone, so it must submit
            // at once; timestamped dispatches stay batched (their queries resolve after a flush).
            let wall_clock = wall_start.is_some();
            let mut pending = self.pending.lock().map_err(poisoned)?;
            let mut commands = pending.take().unwrap_or_else(|| PendingCommands {
                encoder: self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kernels") }),
                dispatches: 0,
            });
            {
                let timestamp_writes = match (profiler.as_ref(), timestamp_slot) {
                    (Some(p), Some(slot)) => p.timestamp_writes(slot),
                    _ => None,
                };
                let mut pass = commands
                    .encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&label), timestamp_writes });
                pass.set_pipeline(&cached.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
            }
            commands.dispatches += 1;
            if wall_clock || commands.dispatches >= DISPATCHES_PER_SUBMIT {
                self.queue.submit([commands.encoder.finish()]);
            } else {
                *pending = Some(commands);
            }
            Ok(())
        })?;
        if let (Some(start), Some(p)) = (wall_start, profiler.as_mut()) {
            self.wait_idle()?;
            p.record_wall_clock(&label, start.elapsed());
        }
        Ok(())
    }
}
