//! The wgpu backend: WGSL kernels on Vulkan, Metal, DX12 and GL. All of scalewise's wgpu calls live
//! under this folder.

pub(crate) mod adapter;
mod launch;
mod pool;
mod prewarm;
mod profiler;
mod readback;
pub(crate) mod shaders;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use adapter::AdapterSummary;
pub(crate) use pool::GpuBuffer;
pub use pool::PoolStats;
pub use profiler::{DispatchTiming, TimingSource};
pub(crate) use readback::Readback;

use super::{AttentionDesign, BackendDevice, Caps, DeviceInfo, DeviceOptions, Launch, MatrixUnits, Storage, poisoned};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::Family;

/// The features scalewise asks for when they exist, minus the ones `options` disallows.
pub(crate) fn wanted_features(options: &DeviceOptions) -> wgpu::Features {
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
    // Vulkan: compiled pipelines kept on disk between runs (see PersistentPipelines).
    wanted | wgpu::Features::PIPELINE_CACHE
}

/// Whether matmul_coop's native flavour can run on `adapter` with `features`: the adapter lists 16 x
/// 16 x 16 f16 -> f32 cooperative matrices, the f16 kernels are on (the operands are f16 storage), and
/// the subgroups are 32 to COOP_THREADS wide, so a workgroup holds one, two or four of them (the
/// kernel shares its block's quarters out among them). Intel's 8-16 wide subgroups and Metal's 8 x 8
/// matrices keep the scalar kernels. Whatever passes here still has to pass the kernel's self-check
/// before `Auto` uses it (`ops::matmul::matrix_units_verified`).
fn cooperative_matrix_usable(adapter: &wgpu::Adapter, features: wgpu::Features) -> bool {
    let info = adapter.get_info();
    let sixteen = adapter.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    });
    adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && sixteen
        && features.contains(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP)
        && info.subgroup_min_size >= 32
        && info.subgroup_max_size <= crate::kernels::size::COOP_THREADS
}

/// Work counters of one device, for `Device::launch_stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) pipelines: AtomicU64,
    pub(crate) compile_nanos: AtomicU64,
    pub(crate) dispatches: AtomicU64,
    pub(crate) submits: AtomicU64,
    /// Blocking waits with nothing queued behind them: `synchronize`, timestamp reads, and readbacks
    /// that had to wait with no later submission.
    pub(crate) drains: AtomicU64,
    /// Readbacks that had to wait while later work was queued (the GPU kept busy).
    pub(crate) overlapped_waits: AtomicU64,
    /// Pipelines compiled ahead by `prewarm_one` (also counted in `pipelines`).
    pub(crate) prewarmed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> crate::device::LaunchStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::device::LaunchStats {
            pipelines_compiled: get(&self.pipelines),
            compile_ms: get(&self.compile_nanos) as f64 / 1e6,
            dispatches: get(&self.dispatches),
            submits: get(&self.submits),
            drains: get(&self.drains),
            overlapped_waits: get(&self.overlapped_waits),
            prewarmed: get(&self.prewarmed),
        }
    }
}

pub(crate) struct WgpuDevice {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    pool: Arc<pool::BufferPool>,
    pipelines: launch::PipelineCache,
    profiler: Mutex<Option<profiler::Profiler>>,
    /// Dispatches recorded but not yet submitted (see [`WgpuDevice::flush_pending`]).
    pending: Mutex<Option<launch::PendingCommands>>,
    /// Where the recorded dispatches' params live (one slot per dispatch of a submission).
    params: launch::ParamsRing,
    /// What the launch path has done since the device opened (see [`crate::device::LaunchStats`]).
    pub(crate) counters: Arc<Counters>,
    /// Set by wgpu's device-lost callback: every later operation fails with this message.
    lost: Arc<Mutex<Option<String>>>,
    /// The adapter as wgpu describes it (the pipeline manifests are kept per adapter and driver).
    adapter_info: wgpu::AdapterInfo,
    /// The manifest of the workload named by `prewarm_plan`: what to compile ahead, and where this
    /// process's pipelines are recorded when the device closes.
    manifest: Mutex<Option<prewarm::Manifest>>,
    /// Errors that escaped every error scope (recorded instead of wgpu's default panic).
    uncaptured: Arc<Mutex<Vec<wgpu::Error>>>,
    /// The driver's pipeline cache, loaded from and saved to disk (Vulkan).
    pub(crate) persistent: Option<PersistentPipelines>,
}

/// A Vulkan pipeline cache kept in the user's cache folder (`~/.cache/scalewise/wgpu`), one file per
/// adapter (wgpu's key: vendor and device id; wgpu and the driver check the rest, and data from
/// another driver version is dropped, not used). A process that compiled new pipelines writes the
/// cache back when its device closes, so the next process skips the driver's shader compiles.
pub(crate) struct PersistentPipelines {
    pub(crate) cache: wgpu::PipelineCache,
    path: std::path::PathBuf,
    /// Pipelines compiled since the file was read (0: nothing to write back).
    pub(crate) compiled: AtomicU64,
}

impl PersistentPipelines {
    /// Largest cache file read back (a hostile or corrupt file larger than this is ignored).
    const MAX_FILE_BYTES: u64 = 512 << 20;

    fn open(device: &wgpu::Device, adapter_info: &wgpu::AdapterInfo) -> Option<Self> {
        if !device.features().contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let key = wgpu::util::pipeline_cache_key(adapter_info)?;
        let path = super::disk_cache::dir("wgpu")?.join(key);
        let data = super::disk_cache::read(&path, Self::MAX_FILE_BYTES);
        // SAFETY: `data` is what `PipelineCache::get_data` returned in an earlier run (we write that
        // file only from it); wgpu checks its header against this adapter and driver, and with
        // `fallback` an unusable file yields an empty cache instead of an error.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("scalewise pipelines"),
                data: data.as_deref(),
                fallback: true,
            })
        };
        Some(Self { cache, path, compiled: AtomicU64::new(0) })
    }

    fn save(&self) {
        if self.compiled.load(Ordering::Relaxed) > 0
            && let Some(data) = self.cache.get_data()
        {
            super::disk_cache::write(&self.path, &data);
        }
    }
}

impl Drop for WgpuDevice {
    fn drop(&mut self) {
        if let Some(persistent) = &self.persistent {
            persistent.save();
        }
        if let Ok(Some(manifest)) = self.manifest.get_mut().map(|m| m.take()) {
            manifest.save(self.pipelines.compiled_keys());
        }
    }
}

impl WgpuDevice {
    pub async fn open(options: &DeviceOptions) -> Result<Self> {
        let adapter = adapter::select_adapter(options).await?;
        let adapter_info = adapter.get_info();
        let mut required_features = adapter.features() & wanted_features(options);
        let cooperative = options.allow_cooperative_matrix && cooperative_matrix_usable(&adapter, required_features);
        if cooperative {
            required_features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("scalewise"),
                required_features,
                // Everything the adapter offers: large buffers, large bindings, more workgroup memory.
                required_limits: adapter.limits(),
                // SAFETY: wgpu gates its experimental features behind this unsafe opt-in because their
                // API may change and their validation is incomplete. The only one requested is the
                // cooperative matrix, and only where the adapter lists the configuration the kernel
                // uses; the scalar kernels stay the default everywhere else.
                experimental_features: if cooperative {
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice { adapter: adapter_info.name.clone(), reason: e.to_string() })?;
        let mut imp = Self::from_wgpu(&adapter_info, device, queue, options.poison_allocations);
        imp.info.adapter.cooperative_matrices = adapter
            .cooperative_matrix_properties()
            .iter()
            .map(|p| {
                let ty = |t: wgpu::CooperativeScalarType| format!("{t:?}").to_lowercase();
                format!("{}x{}x{} {} -> {}", p.m_size, p.n_size, p.k_size, ty(p.ab_type), ty(p.cr_type))
            })
            .collect();
        imp.info.caps.matrix_units = match (cooperative, options.emulate_matrix_units) {
            (true, _) => MatrixUnits::Native,
            // The emulation reads f16 storage, as the units do.
            (false, true) if imp.info.caps.f16 => MatrixUnits::Emulated,
            (false, _) => MatrixUnits::None,
        };
        imp.info.caps.attention_key_split = options.allow_key_split;
        imp.info.caps.attention_staged_key_slices =
            options.allow_key_split && (!imp.info.caps.is_cpu || options.staged_key_slices_on_cpu);
        imp.info.caps.attention_staged_scores = options.allow_staged_scores;
        Ok(imp)
    }

    pub fn from_wgpu(
        adapter_info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        poison_allocations: bool,
    ) -> Self {
        let features = device.features();
        let limits = device.limits();
        let caps = Caps {
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_sizes: (adapter_info.subgroup_min_size, adapter_info.subgroup_max_size),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            shared_memory_bytes: limits.max_compute_workgroup_storage_size,
            max_threads_per_group: limits.max_compute_invocations_per_workgroup,
            max_groups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_storage_args: limits.max_storage_buffers_per_shader_stage,
            max_arg_bytes: limits.max_storage_buffer_binding_size,
            max_buffer_bytes: limits.max_buffer_size,
            is_cpu: adapter_info.device_type == wgpu::DeviceType::Cpu,
            // Set by `open`, which knows the adapter's configurations; a device made elsewhere (the
            // app's, by eframe) did not ask for the experimental feature.
            matrix_units: MatrixUnits::None,
            attention: AttentionDesign::RowsInRegisters,
            attention_key_split: true,
            attention_staged_scores: true,
            attention_staged_key_slices: adapter_info.device_type != wgpu::DeviceType::Cpu,
        };
        let info = DeviceInfo { adapter: AdapterSummary::from_info(adapter_info), caps, cuda: None };
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
                errors.push(error);
            }
        }));
        let params = launch::ParamsRing::new(&device);
        let persistent = PersistentPipelines::open(&device, adapter_info);
        Self {
            persistent,
            params,
            counters: Arc::default(),
            device,
            queue,
            info,
            pool: Arc::new(pool::BufferPool::new(poison_allocations)),
            pipelines: launch::PipelineCache::default(),
            profiler: Mutex::new(None),
            pending: Mutex::new(None),
            adapter_info: adapter_info.clone(),
            manifest: Mutex::new(None),
            lost,
            uncaptured,
        }
    }

    pub fn raw_device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn raw_queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Fails fast once wgpu has reported the device lost.
    fn check_alive(&self) -> Result<()> {
        match self.lost.lock().map_err(poisoned)?.as_ref() {
            Some(reason) => Err(Error::DeviceLost(reason.clone())),
            None => Ok(()),
        }
    }

    fn wait_idle(&self) -> Result<()> {
        self.flush_pending()?;
        self.check_alive()?;
        self.counters.drains.fetch_add(1, Ordering::Relaxed);
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| self.poll_error(e))?;
        Ok(())
    }

    fn poll_error(&self, error: wgpu::PollError) -> Error {
        match self.check_alive() {
            Err(lost) => lost,
            Ok(()) => Error::Gpu { what: "waiting for the GPU".into(), msg: error.to_string() },
        }
    }

    /// Runs `body` inside validation and out-of-memory error scopes and turns what they caught into
    /// typed errors naming `what`, keeping wgpu's error as the source. A lost device wins over what
    /// the scopes saw (a destroyed device shows up first as invalid resources).
    fn checked<T>(&self, what: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = body();
        let validation_error = pollster::block_on(validation.pop());
        let oom_error = pollster::block_on(oom.pop());
        if validation_error.is_some() || oom_error.is_some() {
            // Polling lets wgpu run the device-lost callback before we decide what to report.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        self.check_alive()?;
        if let Some(source) = oom_error {
            return Err(Error::OutOfMemory { what: what.to_string(), source });
        }
        if let Some(source) = validation_error.or_else(|| self.uncaptured.lock().ok()?.pop()) {
            return Err(Error::Wgpu { what: what.to_string(), source });
        }
        result
    }

    /// Submits one command buffer, counted; returns its index and its serial number (the submission
    /// count after it, which tells whether anything was submitted later).
    pub(crate) fn submit(&self, commands: wgpu::CommandBuffer) -> (wgpu::SubmissionIndex, u64) {
        let serial = self.counters.submits.fetch_add(1, Ordering::Relaxed) + 1;
        (self.queue.submit([commands]), serial)
    }

    /// Submits the recorded dispatches with `extra` recorded after them, as one command buffer (a
    /// readback's copy joins the kernels that produce its data instead of a submission of its own).
    pub(crate) fn submit_pending_with(
        &self,
        extra: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<(wgpu::SubmissionIndex, u64)> {
        let mut pending = self.pending.lock().map_err(poisoned)?;
        let mut encoder = match pending.take() {
            Some(commands) => commands.into_encoder(),
            None => self.device.create_command_encoder(&Default::default()),
        };
        extra(&mut encoder);
        Ok(self.submit(encoder.finish()))
    }

    /// Writes `bytes` (a multiple of 4) at the start of `target`, ordered after the dispatches
    /// recorded so far. queue.write_buffer lands at the start of the next submission, before those
    /// dispatches, and a pooled buffer may still be read by them; so with dispatches recorded, the
    /// bytes go to a fresh staging buffer whose copy into `target` is recorded after them: the
    /// upload joins their submission instead of forcing one.
    pub(crate) fn upload(&self, target: &wgpu::Buffer, bytes: &[u8]) -> Result<()> {
        let mut pending = self.pending.lock().map_err(poisoned)?;
        match pending.as_mut() {
            Some(commands) => {
                let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("upload"),
                    size: bytes.len() as u64,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.queue.write_buffer(&staging, 0, bytes);
                commands.encoder_mut().copy_buffer_to_buffer(&staging, 0, target, 0, bytes.len() as u64);
            }
            None => self.queue.write_buffer(target, 0, bytes),
        }
        Ok(())
    }

    /// Submits the recorded dispatches, if any.
    fn flush_pending(&self) -> Result<()> {
        // The lock is held until the submission: another thread's flush must not return (and submit
        // a readback or upload) while these commands are taken but not yet submitted.
        let mut pending = self.pending.lock().map_err(poisoned)?;
        if let Some(commands) = pending.take() {
            self.checked("submitting kernels", || {
                self.submit(commands.finish());
                Ok(())
            })?;
        }
        Ok(())
    }
}

impl Storage {
    /// The wgpu buffer; a tensor of another backend is refused (ops check devices first, so this
    /// guards the seam rather than user input).
    fn wgpu(&self) -> Result<&GpuBuffer> {
        match self {
            Storage::Wgpu(buffer) => Ok(buffer),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(Error::InvalidArgument {
                op: "wgpu",
                msg: "a tensor of the CUDA backend given to a wgpu device".into(),
            }),
        }
    }
}

impl BackendDevice for WgpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, bytes: u64, what: &str) -> Result<Storage> {
        Ok(Storage::Wgpu(self.pool.acquire(self, bytes, what)?))
    }

    fn write(&self, dst: &Storage, bytes: &[u8]) -> Result<()> {
        self.check_alive()?;
        let target = dst.wgpu()?.raw();
        // Buffer writes must be a multiple of 4 bytes (odd-length f16 data gets one pad element).
        let padded;
        let bytes = if bytes.len().is_multiple_of(4) {
            bytes
        } else {
            padded = [bytes, &[0u8; 3][..bytes.len().div_ceil(4) * 4 - bytes.len()]].concat();
            &padded[..]
        };
        self.checked("uploading a tensor", || self.upload(target, bytes))
    }

    fn zero(&self, dst: &Storage, bytes: u64) -> Result<()> {
        // Recorded after the pending dispatches (which may still read this pooled buffer), or first
        // in the next batch: the clear joins a submission instead of making its own.
        self.checked("clearing a tensor", || {
            let mut pending = self.pending.lock().map_err(poisoned)?;
            let commands = pending.get_or_insert_with(|| launch::PendingCommands::new(&self.device));
            commands.encoder_mut().clear_buffer(dst.wgpu()?.raw(), 0, Some(bytes.div_ceil(4) * 4));
            Ok(())
        })
    }

    fn read(&self, src: &Storage, bytes: u64) -> Result<super::Readback> {
        Ok(super::Readback::Wgpu(readback::Readback::start(self, src.wgpu()?.raw(), bytes)?))
    }

    fn supports(&self, family: Family, dtype: DType) -> bool {
        family.dtypes().contains(&dtype) && (dtype != DType::F16 || self.info.caps.f16)
    }

    fn launch(&self, launch: &Launch) -> Result<()> {
        self.dispatch(launch)
    }

    fn flush(&self) -> Result<()> {
        self.flush_pending()
    }

    fn prewarm_plan(&self, workload: &str) -> usize {
        let caps = &self.info.caps;
        let manifest = prewarm::Manifest::open(&self.adapter_info, workload, caps);
        let planned = manifest.as_ref().map_or(0, |m| m.keys.len());
        if let Ok(mut slot) = self.manifest.lock()
            && let Some(earlier) = std::mem::replace(&mut *slot, manifest)
        {
            // Another workload on the same device (the app loading another model): what compiled so
            // far is recorded under the earlier one.
            earlier.save(self.pipelines.compiled_keys());
        }
        planned
    }

    fn prewarm_one(&self, index: usize) -> Result<bool> {
        let key = self.manifest.lock().map_err(poisoned)?.as_ref().and_then(|m| m.keys.get(index).cloned());
        let Some(key) = key else { return Ok(false) };
        let (_, compiled) = self.pipelines.pipeline(self, &key, &launch::pipeline_label(&key))?;
        if compiled {
            self.counters.prewarmed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(compiled)
    }

    fn synchronize(&self) -> Result<()> {
        self.wait_idle()
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    fn launch_stats(&self) -> crate::device::LaunchStats {
        self.counters.snapshot()
    }

    fn trim_pool(&self) {
        self.pool.trim();
    }

    fn start_profiling(&self) -> Result<()> {
        let profiler = profiler::Profiler::new(self)?;
        *self.profiler.lock().map_err(poisoned)? = Some(profiler);
        Ok(())
    }

    fn profiled_dispatches(&self) -> Result<usize> {
        Ok(self.profiler.lock().map_err(poisoned)?.as_ref().map_or(0, profiler::Profiler::recorded))
    }

    fn finish_profiling(&self) -> Result<Vec<DispatchTiming>> {
        let profiler = self.profiler.lock().map_err(poisoned)?.take();
        match profiler {
            Some(profiler) => profiler.finish(self),
            None => Ok(Vec::new()),
        }
    }
}
