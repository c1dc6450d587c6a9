//! Launching on wgpu: the pipeline cache keyed by (family, variant, entry point, constants, argument
//! access), and the checked dispatch every [`Launch`] goes through.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::WgpuDevice;
use super::shaders::{self, Variant};
use crate::device::{Arg, Grid, Launch, poisoned};
use crate::error::{Error, Result};
use crate::kernels::{ConstValue, Family};

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
pub(crate) struct PipelineKey {
    pub(crate) family: Family,
    pub(crate) variant: Variant,
    pub(crate) entry: &'static str,
    pub(crate) constants: Vec<(&'static str, ConstValue)>,
    pub(crate) writable: Vec<bool>,
}

pub(crate) struct CachedPipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// One cache entry, locked while it compiles: a second thread that needs the same pipeline waits
/// for it instead of compiling it again, while other pipelines compile in parallel (wgpu's error
/// scopes are per thread, so concurrent compilations do not see each other's errors).
type Slot<T> = Arc<Mutex<Option<Arc<T>>>>;

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(Family, Variant), Slot<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipelineKey, Slot<CachedPipeline>>>,
}

/// The entry for `key`, created empty on a miss (the key is cloned only then).
fn slot<K: std::hash::Hash + Eq + Clone, T>(map: &Mutex<HashMap<K, Slot<T>>>, key: &K) -> Result<Slot<T>> {
    let mut map = map.lock().map_err(poisoned)?;
    if let Some(slot) = map.get(key) {
        return Ok(Arc::clone(slot));
    }
    let slot = Slot::default();
    map.insert(key.clone(), Arc::clone(&slot));
    Ok(slot)
}

impl PipelineCache {
    fn module(&self, ctx: &WgpuDevice, family: Family, variant: Variant) -> Result<Arc<wgpu::ShaderModule>> {
        let slot = slot(&self.modules, &(family, variant))?;
        let mut entry = slot.lock().map_err(poisoned)?;
        if let Some(module) = &*entry {
            return Ok(Arc::clone(module));
        }
        let source = shaders::compose(family, variant);
        let label = format!("{family}{}", variant.suffix());
        let module = ctx
            .checked(&format!("compiling shader {label}"), || {
                Ok(ctx.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                }))
            })
            .map_err(|e| match e {
                // Only a validation error is the shader's fault; a lost device or exhausted memory
                // stays what it is.
                Error::Wgpu { source, .. } => Error::Shader { shader: label.clone(), source },
                other => other,
            })?;
        let module = Arc::new(module);
        *entry = Some(Arc::clone(&module));
        Ok(module)
    }

    /// The pipeline for `key`, compiled on a miss; the flag says whether this call compiled it.
    pub(crate) fn pipeline(
        &self,
        ctx: &WgpuDevice,
        key: &PipelineKey,
        label: &str,
    ) -> Result<(Arc<CachedPipeline>, bool)> {
        let slot = slot(&self.pipelines, key)?;
        let mut entry = slot.lock().map_err(poisoned)?;
        if let Some(cached) = &*entry {
            return Ok((Arc::clone(cached), false));
        }
        let started = std::time::Instant::now();
        let module = self.module(ctx, key.family, key.variant)?;
        // Only a miss needs wgpu's (name, f64) form of the constants.
        let constants: Vec<(&str, f64)> = key.constants.iter().map(|&(name, value)| (name, value.as_f64())).collect();
        let cached = ctx.checked(&format!("building pipeline {label}"), || {
            let storage =
                key.writable.iter().map(|&writable| wgpu::BufferBindingType::Storage { read_only: !writable });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = storage
                .chain([wgpu::BufferBindingType::Uniform])
                .enumerate()
                .map(|(i, ty)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty,
                        // The params slot moves through the ring buffer (ParamsRing).
                        has_dynamic_offset: ty == wgpu::BufferBindingType::Uniform,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let layout = ctx
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(label), entries: &entries });
            let pipeline_layout = ctx.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Every kernel initialises the workgroup memory it reads; zeroing it costs time.
                    zero_initialize_workgroup_memory: false,
                },
                cache: ctx.persistent.as_ref().map(|p| &p.cache),
            });
            Ok(CachedPipeline { pipeline, layout })
        })?;
        let cached = Arc::new(cached);
        ctx.counters.pipelines.fetch_add(1, Ordering::Relaxed);
        if let Some(persistent) = &ctx.persistent {
            persistent.compiled.fetch_add(1, Ordering::Relaxed);
        }
        ctx.counters.compile_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        *entry = Some(Arc::clone(&cached));
        Ok((cached, true))
    }

    /// The keys of every pipeline compiled so far.
    pub(crate) fn compiled_keys(&self) -> Vec<PipelineKey> {
        let Ok(map) = self.pipelines.lock() else { return Vec::new() };
        map.iter()
            .filter(|(_, slot)| slot.lock().is_ok_and(|entry| entry.is_some()))
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// The label of a pipeline in errors and profiles: `family[variant]::entry`.
pub(crate) fn pipeline_label(key: &PipelineKey) -> String {
    format!("{}{}::{}", key.family, key.variant.suffix(), key.entry)
}

/// Dispatches recorded into one command encoder, submitted together by `flush_pending`.
pub(crate) struct PendingCommands {
    encoder: wgpu::CommandEncoder,
    dispatches: u32,
}

impl PendingCommands {
    pub fn finish(self) -> wgpu::CommandBuffer {
        self.encoder.finish()
    }

    /// The encoder, to record more after the dispatches.
    pub fn into_encoder(self) -> wgpu::CommandEncoder {
        self.encoder
    }

    /// The encoder, to record a copy or a clear after the dispatches without submitting.
    pub fn encoder_mut(&mut self) -> &mut wgpu::CommandEncoder {
        &mut self.encoder
    }

    /// Commands with nothing recorded yet, for work that should join the next dispatches.
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            encoder: device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kernels") }),
            dispatches: 0,
        }
    }
}

/// Recorded dispatches per submission: enough to amortise the submit, few enough that the GPU starts
/// early.
const DISPATCHES_PER_SUBMIT: u32 = 64;

/// The params of one submission's dispatches, each in its own slot of a single uniform buffer bound
/// with a dynamic offset, so no buffer is created per dispatch. The ring is reused by the next
/// submission: `queue.write_buffer` takes effect at the start of the next submit, after the reads of
/// the submissions before it in queue order (the usual pattern of a per-frame uniform in wgpu).
pub(crate) struct ParamsRing {
    buffer: wgpu::Buffer,
    /// Bytes per slot: a multiple of the adapter's uniform offset alignment, at least 256.
    slot: u64,
}

impl ParamsRing {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let align = u64::from(device.limits().min_uniform_buffer_offset_alignment).max(16);
        let slot = 256u64.div_ceil(align) * align;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params ring"),
            size: slot * u64::from(DISPATCHES_PER_SUBMIT),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self { buffer, slot }
    }
}

impl WgpuDevice {
    /// The workgroup counts of `grid`: a linear grid is split over x and y so that neither exceeds the
    /// per-dimension limit (kernels recover the flat index with `grid_workgroup`).
    fn workgroups(&self, grid: Grid, label: &str) -> Result<[u32; 3]> {
        let max = self.info.caps.max_groups_per_dim;
        match grid {
            Grid::Groups(groups) => {
                if groups.iter().any(|&g| g > max) {
                    return Err(Error::InvalidArgument {
                        op: "dispatch",
                        msg: format!("{label}: {groups:?} workgroups exceed the per-dimension limit {max}"),
                    });
                }
                Ok(groups)
            }
            Grid::Linear(groups) => self.workgroups(Grid::Batched { groups, batch: 1 }, label),
            Grid::Batched { groups: 0, .. } => Ok([0, 1, 1]),
            Grid::Batched { groups, batch } => {
                let max = max as u64;
                let x = groups.min(max);
                let y = groups.div_ceil(x);
                if y > max {
                    return Err(Error::TooLarge {
                        what: format!("{label} ({groups} workgroups)"),
                        bytes: groups,
                        limit: max * max,
                        limit_name: "max_compute_workgroups_per_dimension squared (counted in workgroups, not bytes)",
                    });
                }
                if batch > max as u32 {
                    return Err(Error::InvalidArgument {
                        op: "dispatch",
                        msg: format!("{label}: a batch of {batch} exceeds the per-dimension limit {max}"),
                    });
                }
                Ok([x as u32, y as u32, batch])
            }
        }
    }

    fn check_args(&self, args: &[Arg], label: &str) -> Result<()> {
        let binding_limit = self.info.caps.max_arg_bytes;
        for arg in args {
            if arg.bytes > binding_limit {
                return Err(Error::TooLarge {
                    what: format!("argument {} of {label}", arg.name),
                    bytes: arg.bytes,
                    limit: binding_limit,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
        }
        Ok(())
    }

    /// Records one kernel: checks sizes against the adapter's limits, binds, dispatches, and submits
    /// every [`DISPATCHES_PER_SUBMIT`] dispatches. The params fill the uniform buffer that follows the
    /// storage bindings.
    pub(crate) fn dispatch(&self, launch: &Launch) -> Result<()> {
        let variant = shaders::variant(launch.family, launch.dtype, &self.info.caps);
        let key = PipelineKey {
            family: launch.family,
            variant,
            entry: launch.entry,
            constants: launch.constants.values().to_vec(),
            writable: launch.args.iter().map(|a| a.writable).collect(),
        };
        let label = pipeline_label(&key);
        self.check_args(launch.args, &label)?;
        let workgroups = self.workgroups(launch.grid, &label)?;
        if workgroups.contains(&0) {
            return Ok(());
        }
        let (cached, _) = self.pipelines.pipeline(self, &key, &label)?;
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
        // Starting a new batch, let wgpu run its device-lost callback (a non-blocking poll, once per
        // submission): recording alone creates nothing that would notice a lost device, so without it
        // a destroyed device would only show at the next submission.
        if self.pending.lock().map_err(poisoned)?.is_none() {
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        self.checked(&format!("running {label}"), || {
            // Uniform bindings are at least 16 bytes and a multiple of 16.
            let mut bytes = launch.params.to_vec();
            bytes.resize(launch.params.len().div_ceil(16).max(1) * 16, 0);
            let mut pending = self.pending.lock().map_err(poisoned)?;
            let index = pending.as_ref().map_or(0, |p| p.dispatches);
            // The params' slot in the ring; a params block larger than a slot (none today) gets a buffer
            // of its own, bound at offset 0. Not create_buffer_init: it maps at creation and panics on a
            // lost device.
            let own;
            let (uniform_buffer, offset) = if bytes.len() as u64 <= self.params.slot {
                (&self.params.buffer, u64::from(index) * self.params.slot)
            } else {
                own = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: bytes.len() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                (&own, 0)
            };
            self.queue.write_buffer(uniform_buffer, offset, &bytes);
            let mut entries: Vec<wgpu::BindGroupEntry> = launch
                .args
                .iter()
                .enumerate()
                .map(|(i, arg)| {
                    Ok(wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: arg.storage.wgpu()?.raw(),
                            offset: 0,
                            size: NonZeroU64::new(arg.bytes.div_ceil(4).max(1) * 4),
                        }),
                    })
                })
                .collect::<Result<_>>()?;
            entries.push(wgpu::BindGroupEntry {
                binding: launch.args.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: uniform_buffer,
                    offset: 0,
                    size: NonZeroU64::new(bytes.len() as u64),
                }),
            });
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &cached.layout,
                entries: &entries,
            });
            // Wall-clock profiling (no timestamp queries) times each dispatch alone, so it must submit
            // at once; timestamped dispatches stay batched (their queries resolve after a flush).
            let wall_clock = wall_start.is_some();
            let mut commands = pending.take().unwrap_or_else(|| PendingCommands::new(&self.device));
            {
                let timestamp_writes = match (profiler.as_ref(), timestamp_slot) {
                    (Some(p), Some(slot)) => p.timestamp_writes(slot),
                    _ => None,
                };
                let mut pass = commands
                    .encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&label), timestamp_writes });
                pass.set_pipeline(&cached.pipeline);
                pass.set_bind_group(0, &bind_group, &[offset as u32]);
                pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
            }
            commands.dispatches += 1;
            self.counters.dispatches.fetch_add(1, Ordering::Relaxed);
            if wall_clock || commands.dispatches >= DISPATCHES_PER_SUBMIT {
                self.submit(commands.encoder.finish());
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
