//! The device runtime: adapter choice, optional features, limits, the buffer pool, the pipeline cache
//! and the per-dispatch profiler. Models and ops talk to [`Device`]; only this module (and the op
//! launchers through [`launch`]) touches wgpu.

mod adapter;
mod cuda;
pub(crate) mod launch;
mod pool;
mod profiler;

use std::sync::{Arc, Mutex};

pub use adapter::AdapterSummary;
pub use pool::PoolStats;
pub use profiler::{DispatchTiming, TimingSource};

pub(crate) use pool::GpuBuffer;

use crate::error::{Error, Result};

/// Which compute backend to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Any wgpu backend, best adapter first (discrete GPU, then integrated, then software).
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
    /// CUDA kernels compiled by NVRTC (the `cuda` cargo feature).
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "vulkan" | "vk" => Ok(Self::Vulkan),
            "metal" | "mtl" => Ok(Self::Metal),
            "dx12" | "d3d12" => Ok(Self::Dx12),
            "gl" | "gles" | "opengl" => Ok(Self::Gl),
            "cuda" => Ok(Self::Cuda),
            other => Err(Error::InvalidArgument {
                op: "backend",
                msg: format!("unknown backend {other:?}; expected auto, vulkan, metal, dx12, gl or cuda"),
            }),
        }
    }
}

/// How to open a [`Device`]. `Default` asks for every optional feature the adapter has.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub backend: BackendChoice,
    /// Case-insensitive substring of the adapter name (e.g. "llvmpipe", "RTX", "Radeon").
    pub adapter_name: Option<String>,
    /// Use f16 storage kernels when the adapter has SHADER_F16.
    pub allow_f16: bool,
    /// Use subgroup kernel variants when the adapter has SUBGROUP.
    pub allow_subgroups: bool,
    /// Use GPU timestamps for profiling when the adapter has TIMESTAMP_QUERY.
    pub allow_timestamps: bool,
    /// Fill every freshly handed-out buffer with NaN bytes (0xFF), so a kernel that forgets to write
    /// an element is caught by the tests instead of reading stale data.
    pub poison_allocations: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            adapter_name: None,
            allow_f16: true,
            allow_subgroups: true,
            allow_timestamps: true,
            poison_allocations: false,
        }
    }
}

impl DeviceOptions {
    /// Defaults overridden by the environment: `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, and
    /// `SCALEWISE_DISABLE` (comma list of `f16`, `subgroups`, `timestamps`).
    pub fn from_env() -> Result<Self> {
        let mut options = Self::default();
        if let Ok(backend) = std::env::var("WGPU_BACKEND") {
            options.backend = backend.parse()?;
        }
        if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME")
            && !name.trim().is_empty()
        {
            options.adapter_name = Some(name);
        }
        if let Ok(disabled) = std::env::var("SCALEWISE_DISABLE") {
            for item in disabled.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item.to_ascii_lowercase().as_str() {
                    "f16" => options.allow_f16 = false,
                    "subgroups" => options.allow_subgroups = false,
                    "timestamps" => options.allow_timestamps = false,
                    other => {
                        return Err(Error::InvalidArgument {
                            op: "SCALEWISE_DISABLE",
                            msg: format!("unknown item {other:?}; expected f16, subgroups or timestamps"),
                        });
                    }
                }
            }
        }
        Ok(options)
    }
}

/// The optional GPU features this device actually enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveFeatures {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
}

/// Everything `scalewise info` shows.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub adapter: AdapterSummary,
    pub features: ActiveFeatures,
    pub subgroup_size_range: (u32, u32),
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
}

impl DeviceInfo {
    /// Which kernel variants ops will pick on this device, one line per family choice.
    pub fn kernel_variants(&self) -> Vec<(&'static str, String)> {
        let f = self.features;
        vec![
            (
                "storage",
                if f.shader_f16 { "f32 and f16 (f32 accumulation)".into() } else { "f32 only (no SHADER_F16)".into() },
            ),
            (
                "row reductions (softmax, norms)",
                if f.subgroups {
                    format!("subgroup (size {}..{})", self.subgroup_size_range.0, self.subgroup_size_range.1)
                } else {
                    "workgroup tree (no subgroups)".into()
                },
            ),
            ("matmul", "tiled 64x64x16, 4x4 per thread".into()),
            (
                "attention softmax statistics",
                if f.subgroups { "subgroup teams".into() } else { "one thread per row".into() },
            ),
            ("attention tiles", "from head_dim and workgroup memory (16x16 .. 4x4)".into()),
            (
                "selective scan",
                "chunked (chunk totals, carry, recompute), chunks sized for the adapter; no subgroups".into(),
            ),
            ("ssd", "recurrent form (chunked matrix form on request)".into()),
            (
                "profiling",
                if f.timestamps { "GPU timestamps per dispatch".into() } else { "wall clock per dispatch".into() },
            ),
        ]
    }
}

/// A compute device. Cheap to clone: clones share the wgpu device, the pools and the caches.
#[derive(Clone)]
pub struct Device {
    pub(crate) ctx: Arc<GpuContext>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("adapter", &self.ctx.info.adapter.name).finish()
    }
}

pub(crate) struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: DeviceInfo,
    pub pool: Arc<pool::BufferPool>,
    pub pipelines: launch::PipelineCache,
    pub profiler: Mutex<Option<profiler::Profiler>>,
    /// Dispatches recorded but not yet submitted (see [`GpuContext::flush`]).
    pub(crate) pending: Mutex<Option<launch::PendingCommands>>,
    /// Set by wgpu's device-lost callback: every later operation fails with this message.
    lost: Arc<Mutex<Option<String>>>,
    /// Errors that escaped every error scope (recorded instead of wgpu's default panic).
    uncaptured: Arc<Mutex<Vec<String>>>,
}

impl Device {
    /// Opens the best adapter allowed by `options` (blocking).
    pub fn new(options: &DeviceOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    /// Opens a device with [`DeviceOptions::from_env`].
    pub fn from_env() -> Result<Self> {
        Self::new(&DeviceOptions::from_env()?)
    }

    pub async fn new_async(options: &DeviceOptions) -> Result<Self> {
        if options.backend == BackendChoice::Cuda {
            return Err(cuda::open_cuda_device());
        }
        let adapter = adapter::select_adapter(options).await?;
        let wanted = Self::wanted_features(options);
        let required_features = adapter.features() & wanted;
        let adapter_info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("scalewise"),
                required_features,
                // Everything the adapter offers: large buffers, large bindings, more workgroup memory.
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice { adapter: adapter_info.name.clone(), reason: e.to_string() })?;
        Ok(Self::from_wgpu(&adapter_info, device, queue, options.poison_allocations))
    }

    /// The features scalewise asks for when they exist, minus the ones `options` disallows.
    pub fn wanted_features(options: &DeviceOptions) -> wgpu::Features {
        let mut wanted = wgpu::Features::empty();
        if options.allow_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if options.allow_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        if options.allow_timestamps {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        wanted
    }

    /// Wraps a device somebody else opened (eframe's, say), so the compute backend and the UI share it.
    /// The kernel variants follow the features that device was created with.
    pub fn from_wgpu(
        adapter_info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        poison_allocations: bool,
    ) -> Self {
        let features = device.features();
        let limits = device.limits();
        let active = ActiveFeatures {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        };
        let info = DeviceInfo {
            adapter: AdapterSummary::from_info(adapter_info),
            features: active,
            subgroup_size_range: (adapter_info.subgroup_min_size, adapter_info.subgroup_max_size),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        };
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = lost_flag.lock() {
                *slot = Some(format!("{reason:?}: {message}"));
            }
        });
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            if let Ok(mut errors) = sink.lock() {
                errors.push(error.to_string());
            }
        }));
        let pool = Arc::new(pool::BufferPool::new(poison_allocations));
        Self {
            ctx: Arc::new(GpuContext {
                device,
                queue,
                info,
                pool,
                pipelines: launch::PipelineCache::default(),
                profiler: Mutex::new(None),
                pending: Mutex::new(None),
                lost,
                uncaptured,
            }),
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.ctx.info
    }

    pub fn features(&self) -> ActiveFeatures {
        self.ctx.info.features
    }

    /// The storage type models use by default here: f16 where SHADER_F16 is active, else f32.
    pub fn preferred_float(&self) -> crate::tensor::DType {
        if self.features().shader_f16 { crate::tensor::DType::F16 } else { crate::tensor::DType::F32 }
    }

    /// The underlying wgpu device and queue, for engineers mixing scalewise kernels into their own code.
    pub fn wgpu_device(&self) -> &wgpu::Device {
        &self.ctx.device
    }

    pub fn wgpu_queue(&self) -> &wgpu::Queue {
        &self.ctx.queue
    }

    /// Blocks until every submitted command has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.wait_idle()
    }

    /// Submits the kernels recorded so far. scalewise records consecutive dispatches into one command
    /// buffer and submits it before any upload, readback or wait, so callers only need this before
    /// using the queue themselves (`wgpu_queue`) for work that must follow scalewise's.
    pub fn flush(&self) -> Result<()> {
        self.ctx.flush()
    }

    /// Allocation statistics of the buffer pool (live, cached and peak bytes).
    pub fn pool_stats(&self) -> PoolStats {
        self.ctx.pool.stats()
    }

    /// Releases every cached (unused) buffer back to the driver.
    pub fn trim_pool(&self) {
        self.ctx.pool.trim();
    }

    /// Starts recording the duration of every dispatch (GPU timestamps where available).
    pub fn start_profiling(&self) -> Result<()> {
        let profiler = profiler::Profiler::new(&self.ctx)?;
        *self.ctx.profiler.lock().map_err(poisoned)? = Some(profiler);
        Ok(())
    }

    /// Dispatches recorded since [`Device::start_profiling`] (0 when not profiling): the index the
    /// next dispatch's entry will have in [`Device::finish_profiling`]'s list.
    pub fn profiled_dispatches(&self) -> Result<usize> {
        Ok(self.ctx.profiler.lock().map_err(poisoned)?.as_ref().map_or(0, profiler::Profiler::recorded))
    }

    /// Stops recording and returns one entry per dispatch since [`Device::start_profiling`].
    pub fn finish_profiling(&self) -> Result<Vec<DispatchTiming>> {
        let profiler = self.ctx.profiler.lock().map_err(poisoned)?.take();
        match profiler {
            Some(profiler) => profiler.finish(&self.ctx),
            None => Ok(Vec::new()),
        }
    }
}

pub(crate) fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Gpu { what: "locking device state".into(), msg: "a thread panicked while holding the lock".into() }
}

impl GpuContext {
    /// Fails fast once wgpu has reported the device lost.
    pub fn check_alive(&self) -> Result<()> {
        match self.lost.lock().map_err(poisoned)?.as_ref() {
            Some(reason) => Err(Error::DeviceLost(reason.clone())),
            None => Ok(()),
        }
    }

    pub fn wait_idle(&self) -> Result<()> {
        self.flush()?;
        self.check_alive()?;
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| self.poll_error(e))?;
        Ok(())
    }

    pub fn poll_error(&self, error: wgpu::PollError) -> Error {
        match self.check_alive() {
            Err(lost) => lost,
            Ok(()) => Error::Gpu { what: "waiting for the GPU".into(), msg: error.to_string() },
        }
    }

    /// Runs `body` inside validation and out-of-memory error scopes and turns what they caught
    /// into typed errors naming `what`.
    pub fn checked<T>(&self, what: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = body();
        let validation_error = pollster::block_on(validation.pop());
        let oom_error = pollster::block_on(oom.pop());
        if validation_error.is_some() || oom_error.is_some() {
            // A destroyed or lost device shows up first as invalid resources; polling lets wgpu run
            // the device-lost callback, so the caller gets DeviceLost rather than a validation error.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        self.check_alive()?;
        if let Some(error) = oom_error {
            return Err(Error::OutOfMemory(format!("{what}: {error}")));
        }
        if let Some(error) = validation_error {
            return Err(Error::Gpu { what: what.to_string(), msg: error.to_string() });
        }
        if let Some(message) = self.uncaptured.lock().map_err(poisoned)?.pop() {
            return Err(Error::Gpu { what: what.to_string(), msg: message });
        }
        result
    }
}
