//! The CUDA backend behind the seam: the kernels of `shaders/cuda/<family>.cu`, one module per
//! (family, storage type, constants), run by one of two executors:
//! - the GPU: NVRTC compiles each module to a cubin for the device's exact architecture (cached in
//!   memory and on disk), launched on one stream of the primary context (`--backend cuda`);
//! - the CPU shim: the host C++ compiler builds the same sources with `cpu_shim.h` in front, and
//!   each block runs with one fiber per thread (`--backend cuda-cpu`): slow, for testing the CUDA
//!   sources on machines without a GPU.
//!
//! Without the `cuda` feature a stand-in answers "not compiled with CUDA support".

#[cfg(not(feature = "cuda"))]
pub(super) fn open(_options: &super::DeviceOptions) -> crate::error::Result<super::Backend> {
    Err(crate::error::Error::CudaNotCompiled)
}

#[cfg(feature = "cuda")]
mod compose;
#[cfg(feature = "cuda")]
mod cpu;
#[cfg(feature = "cuda")]
mod gpu;
#[cfg(feature = "cuda")]
pub mod nvrtc;

#[cfg(feature = "cuda")]
pub(super) use enabled::*;

/// Compiles every family's CUDA kernels for `sm_{arch}` through NVRTC without a GPU (the compile-all
/// test and `scalewise info`): per module, its label and NVRTC's result.
#[cfg(feature = "cuda")]
pub fn compile_all(arch: u32) -> Vec<(String, crate::error::Result<nvrtc::Compiled>)> {
    enabled::representative_modules()
        .into_iter()
        .map(|key| {
            let label = key.label();
            let result = match compose::compose(&key, compose::Target::Gpu) {
                Some(source) => nvrtc::compile(&source, &label, arch),
                None => Err(crate::error::Error::CudaCompile { kernel: label.clone(), log: "no CUDA source".into() }),
            };
            (label, result)
        })
        .collect()
}

#[cfg(feature = "cuda")]
mod enabled {
    use std::collections::HashMap;
    use std::ffi::c_void;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Instant;

    use super::compose::{self, ModuleKey};
    use super::cpu::{self, CpuModule};
    use super::gpu::{GpuContext, GpuModule};
    use crate::device::{
        AdapterSummary, AttentionDesign, Backend, BackendChoice, BackendDevice, Caps, CudaSummary, DeviceInfo,
        DeviceOptions, DispatchTiming, Grid, Launch, LaunchStats, MatrixUnits, PoolStats, Readback, Storage,
        TimingSource, poisoned,
    };
    use crate::dtype::DType;
    use crate::error::{Error, Result};
    use crate::kernels::{ConstType, ConstValue, Family};

    /// Where the kernels run.
    enum Executor {
        Gpu(GpuContext),
        Cpu,
    }

    /// Device memory: a CUDA allocation, or 8-byte-aligned host memory for the CPU shim.
    pub(crate) struct CudaBuffer {
        ptr: u64,
        bytes: u64,
        memory: Memory,
        device: Arc<Shared>,
    }

    enum Memory {
        Device,
        Host(#[allow(dead_code, reason = "owns the memory `ptr` points into")] Box<[u64]>),
    }

    impl Drop for CudaBuffer {
        fn drop(&mut self) {
            if let (Memory::Device, Executor::Gpu(gpu)) = (&self.memory, &self.device.executor) {
                gpu.free(self.ptr);
            }
            self.device.live_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }

    enum Module {
        Gpu(GpuModule),
        Cpu(CpuModule),
    }

    type ModuleSlot = Arc<OnceLock<std::result::Result<Arc<Module>, String>>>;

    /// State the buffers share with the device (they free through it).
    struct Shared {
        executor: Executor,
        live_bytes: AtomicU64,
        peak_bytes: AtomicU64,
        created: AtomicU64,
    }

    pub(crate) struct CudaDevice {
        info: DeviceInfo,
        shared: Arc<Shared>,
        poison: bool,
        modules: Mutex<HashMap<ModuleKey, ModuleSlot>>,
        stats: Mutex<LaunchStats>,
        profile: Mutex<Option<Vec<DispatchTiming>>>,
    }

    pub(in crate::device) fn open(options: &DeviceOptions) -> Result<Backend> {
        Ok(Backend::Cuda(CudaDevice::open(options)?))
    }

    /// Shared memory a block may declare statically (every CUDA GPU since Kepler).
    const STATIC_SHARED_BYTES: u32 = 48 * 1024;

    impl CudaDevice {
        fn open(options: &DeviceOptions) -> Result<Self> {
            let (executor, adapter, summary, caps) = match options.backend {
                BackendChoice::CudaCpu => {
                    let version = cpu::compiler_version().map_err(Error::CudaUnavailable)?;
                    let adapter = AdapterSummary {
                        name: "CUDA CPU shim".into(),
                        backend: "CUDA".into(),
                        device_type: "Cpu".into(),
                        driver: version.into(),
                        driver_info: "the CUDA kernels compiled for the CPU, one fiber per thread".into(),
                        vendor_id: 0,
                        device_id: 0,
                        cooperative_matrices: Vec::new(),
                    };
                    let summary = CudaSummary {
                        executor: "CPU shim (host C++ compiler)".into(),
                        compute_capability: None,
                        nvrtc_version: None,
                        total_memory: None,
                        tensor_cores: true,
                    };
                    let caps = caps(options, 1024, 65535, u64::from(u32::MAX), true, summary.tensor_cores);
                    (Executor::Cpu, adapter, summary, caps)
                }
                _ => {
                    let gpu = GpuContext::open(options.adapter_name.as_deref())?;
                    let f = gpu.facts.clone();
                    let adapter = AdapterSummary {
                        name: f.name.clone(),
                        backend: "CUDA".into(),
                        device_type: "DiscreteGpu".into(),
                        driver: format!("CUDA driver {}.{}", f.driver_version / 1000, f.driver_version % 1000 / 10),
                        driver_info: format!("sm_{}, NVRTC {}.{}", gpu.arch(), f.nvrtc_version.0, f.nvrtc_version.1),
                        vendor_id: 0x10de,
                        device_id: 0,
                        cooperative_matrices: Vec::new(),
                    };
                    let summary = CudaSummary {
                        executor: "GPU".into(),
                        compute_capability: Some(f.compute_capability),
                        nvrtc_version: Some(f.nvrtc_version),
                        total_memory: Some(f.total_memory),
                        tensor_cores: f.compute_capability.0 >= 8,
                    };
                    // One allocation may span the whole GPU, but kernels index with u32 elements.
                    let caps = caps(
                        options,
                        f.max_threads_per_block,
                        f.max_grid_y.min(f.max_grid_x),
                        f.total_memory.min(u64::from(u32::MAX) * 2),
                        false,
                        summary.tensor_cores,
                    );
                    (Executor::Gpu(gpu), adapter, summary, caps)
                }
            };
            Ok(Self {
                info: DeviceInfo { adapter, caps, cuda: Some(summary) },
                shared: Arc::new(Shared {
                    executor,
                    live_bytes: AtomicU64::new(0),
                    peak_bytes: AtomicU64::new(0),
                    created: AtomicU64::new(0),
                }),
                poison: options.poison_allocations,
                modules: Mutex::new(HashMap::new()),
                stats: Mutex::new(LaunchStats::default()),
                profile: Mutex::new(None),
            })
        }

        fn buffer<'a>(&self, storage: &'a Storage) -> Result<&'a CudaBuffer> {
            match storage {
                Storage::Cuda(buffer) if Arc::ptr_eq(&buffer.device, &self.shared) => Ok(buffer),
                _ => Err(Error::InvalidArgument { op: "launch", msg: "a tensor of another device".into() }),
            }
        }

        fn module(&self, key: &ModuleKey) -> Result<Arc<Module>> {
            let slot = {
                let mut modules = self.modules.lock().map_err(poisoned)?;
                Arc::clone(modules.entry(key.clone()).or_default())
            };
            let mut compiled_here = None;
            let result = slot.get_or_init(|| {
                let start = Instant::now();
                let module = match &self.shared.executor {
                    Executor::Gpu(gpu) => gpu.load(key).map(Module::Gpu),
                    Executor::Cpu => cpu::load(key).map(Module::Cpu),
                };
                compiled_here = Some(start.elapsed().as_secs_f64() * 1e3);
                module.map(Arc::new).map_err(|e| e.to_string())
            });
            if let Some(ms) = compiled_here {
                let mut stats = self.stats.lock().map_err(poisoned)?;
                stats.pipelines_compiled += 1;
                stats.compile_ms += ms;
            }
            result.clone().map_err(|log| Error::CudaCompile { kernel: key.label(), log })
        }

        /// The constants of `launch` with the defaults of unset ones left to the source (#ifndef).
        fn key(launch: &Launch) -> ModuleKey {
            ModuleKey::new(launch.family, launch.dtype, launch.constants.values())
        }

        fn grid(&self, grid: Grid, label: &str) -> Result<[u32; 3]> {
            let max = self.info.caps.max_groups_per_dim as u64;
            match grid {
                Grid::Groups(groups) => {
                    if groups.iter().any(|&g| u64::from(g) > max) {
                        return Err(Error::InvalidArgument {
                            op: "launch",
                            msg: format!("{label}: {groups:?} blocks exceed the per-dimension limit {max}"),
                        });
                    }
                    Ok(groups)
                }
                Grid::Linear(groups) => self.grid(Grid::Batched { groups, batch: 1 }, label),
                Grid::Batched { groups: 0, .. } => Ok([0, 1, 1]),
                Grid::Batched { groups, batch } => {
                    let x = groups.min(max);
                    let y = groups.div_ceil(x);
                    if y > max {
                        return Err(Error::TooLarge {
                            what: format!("{label} ({groups} blocks)"),
                            bytes: groups,
                            limit: max * max,
                            limit_name: "CUDA grid dimensions squared (counted in blocks, not bytes)",
                        });
                    }
                    Ok([x as u32, y as u32, batch])
                }
            }
        }
    }

    /// The limits the ops read. Shared memory is the static 48 KiB every CUDA GPU gives a block.
    fn caps(
        options: &DeviceOptions,
        threads: u32,
        groups: u32,
        max_bytes: u64,
        is_cpu: bool,
        tensor_cores: bool,
    ) -> Caps {
        Caps {
            f16: options.allow_f16,
            subgroups: options.allow_subgroups,
            subgroup_sizes: (32, 32),
            timestamps: false,
            shared_memory_bytes: STATIC_SHARED_BYTES,
            max_threads_per_group: threads,
            max_groups_per_dim: groups,
            max_storage_args: 16,
            max_arg_bytes: max_bytes,
            max_buffer_bytes: max_bytes,
            is_cpu,
            // matmul_coop is the tensor-core kernel (mma.sync), which the CPU shim models; f16 only.
            matrix_units: if tensor_cores && options.allow_f16 { MatrixUnits::Native } else { MatrixUnits::None },
            attention: AttentionDesign::ScoreTiles,
            // The tensor-core kernels split keys among their warps; the scalar ones take no slices.
            attention_key_split: false,
            // Its blocks hold a score per thread (AttentionDesign::ScoreTiles).
            attention_staged_scores: false,
            attention_staged_key_slices: false,
        }
    }

    /// Modules the compile-all check builds: per family and storage type, the source's defaults and
    /// every boolean constant switched on (the branches the defaults fold away).
    pub(super) fn representative_modules() -> Vec<ModuleKey> {
        let mut keys = Vec::new();
        for &family in Family::ALL {
            if !compose::has_family(family) {
                continue;
            }
            let on: Vec<(&'static str, ConstValue)> = family
                .constants()
                .iter()
                .filter(|(_, ty)| *ty == ConstType::Bool)
                .map(|&(name, _)| (name, ConstValue::Bool(true)))
                .collect();
            for &dtype in family.dtypes() {
                keys.push(ModuleKey::new(family, dtype, &[]));
                if !on.is_empty() {
                    keys.push(ModuleKey::new(family, dtype, &on));
                }
            }
        }
        keys
    }

    impl BackendDevice for CudaDevice {
        fn info(&self) -> &DeviceInfo {
            &self.info
        }

        fn alloc(&self, bytes: u64, what: &str) -> Result<Storage> {
            // Kernels see whole 32-bit words (an odd-length f16 tensor's arguments span a padded
            // last word), as wgpu's buffers do.
            let bytes = bytes.div_ceil(4).max(1) * 4;
            let (ptr, memory) = match &self.shared.executor {
                Executor::Gpu(gpu) => (gpu.alloc(bytes, what)?, Memory::Device),
                Executor::Cpu => {
                    let words = usize::try_from(bytes.div_ceil(8).max(1)).map_err(|_| Error::CudaOutOfMemory {
                        what: what.into(),
                        bytes,
                        free: 0,
                    })?;
                    let mut host = Vec::new();
                    host.try_reserve_exact(words).map_err(|_| Error::CudaOutOfMemory {
                        what: what.into(),
                        bytes,
                        free: 0,
                    })?;
                    host.resize(words, 0u64);
                    let mut host = host.into_boxed_slice();
                    (host.as_mut_ptr() as u64, Memory::Host(host))
                }
            };
            let live = self.shared.live_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            self.shared.peak_bytes.fetch_max(live, Ordering::Relaxed);
            self.shared.created.fetch_add(1, Ordering::Relaxed);
            let buffer = CudaBuffer { ptr, bytes, memory, device: Arc::clone(&self.shared) };
            if self.poison {
                self.fill(&buffer, 0xFF, bytes)?;
            }
            Ok(Storage::Cuda(buffer))
        }

        fn write(&self, dst: &Storage, bytes: &[u8]) -> Result<()> {
            let dst = self.buffer(dst)?;
            check_span(dst, bytes.len() as u64)?;
            match &self.shared.executor {
                Executor::Gpu(gpu) => gpu.write(dst.ptr, bytes),
                Executor::Cpu => {
                    // SAFETY: the allocation holds at least `bytes.len()` bytes (checked above) and
                    // no kernel runs concurrently (the shim runs launches synchronously).
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.ptr as *mut u8, bytes.len()) };
                    Ok(())
                }
            }
        }

        fn zero(&self, dst: &Storage, bytes: u64) -> Result<()> {
            let dst = self.buffer(dst)?;
            self.fill(dst, 0, bytes)
        }

        fn read(&self, src: &Storage, bytes: u64) -> Result<Readback> {
            let src = self.buffer(src)?;
            check_span(src, bytes)?;
            let data = match &self.shared.executor {
                Executor::Gpu(gpu) => {
                    self.stats.lock().map_err(poisoned)?.drains += 1;
                    gpu.read(src.ptr, bytes)?
                }
                Executor::Cpu => {
                    // SAFETY: the allocation holds at least `bytes` bytes (checked above).
                    unsafe { std::slice::from_raw_parts(src.ptr as *const u8, bytes as usize) }.to_vec()
                }
            };
            Ok(Readback::Ready(data))
        }

        fn supports(&self, family: Family, dtype: DType) -> bool {
            family.dtypes().contains(&dtype)
                && (dtype != DType::F16 || self.info.caps.f16)
                && compose::has_family(family)
        }

        fn launch(&self, launch: &Launch) -> Result<()> {
            let key = Self::key(launch);
            let label = key.label();
            let grid = self.grid(launch.grid, &label)?;
            // Arguments as cuLaunchKernel takes them: a pointer to each parameter's value, the
            // buffers' device addresses first (binding order), then the params struct.
            let mut pointers = Vec::with_capacity(launch.args.len());
            for arg in launch.args {
                let buffer = self.buffer(arg.storage)?;
                check_span(buffer, arg.bytes)?;
                pointers.push(buffer.ptr);
            }
            let mut params = vec![0u64; launch.params.len().div_ceil(8).max(1)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut params)[..launch.params.len()].copy_from_slice(launch.params);
            let mut args: Vec<*mut c_void> = pointers.iter_mut().map(|p| p as *mut u64 as *mut c_void).collect();
            args.push(params.as_mut_ptr().cast());
            let module = self.module(&key)?;
            // The tensor-core twin of an entry, where the module has one and the device the units.
            let tc_entry = format!("{}_tc", launch.entry);
            let use_tc = launch.dtype == DType::F16 && self.info.cuda.as_ref().is_some_and(|c| c.tensor_cores);
            let start = Instant::now();
            if grid.iter().all(|&g| g > 0) {
                match (&*module, &self.shared.executor) {
                    (Module::Gpu(m), Executor::Gpu(gpu)) => {
                        let found = match use_tc.then(|| gpu.function(m, &tc_entry)).transpose()?.flatten() {
                            Some(f) => Some(f),
                            None => gpu.function(m, launch.entry)?,
                        };
                        let (function, block) = found.ok_or_else(|| missing_entry(&label, launch.entry))?;
                        gpu.launch(function, grid, block, &mut args, &label)?;
                    }
                    (Module::Cpu(m), Executor::Cpu) => {
                        let entry =
                            if use_tc && m.block(&tc_entry).is_some() { tc_entry.as_str() } else { launch.entry };
                        if m.block(entry).is_none() {
                            return Err(missing_entry(&label, launch.entry));
                        }
                        m.launch(entry, grid, &mut args, &label)?;
                    }
                    _ => unreachable!("modules are loaded by their device's executor"),
                }
            }
            let mut stats = self.stats.lock().map_err(poisoned)?;
            stats.dispatches += 1;
            stats.submits += 1;
            drop(stats);
            if let Some(profile) = self.profile.lock().map_err(poisoned)?.as_mut() {
                if let Executor::Gpu(gpu) = &self.shared.executor {
                    gpu.synchronize()?;
                }
                profile.push(DispatchTiming {
                    label: format!("{label}::{}", launch.entry),
                    nanoseconds: start.elapsed().as_secs_f64() * 1e9,
                    source: TimingSource::WallClock,
                });
            }
            Ok(())
        }

        fn flush(&self) -> Result<()> {
            Ok(())
        }

        fn synchronize(&self) -> Result<()> {
            if let Executor::Gpu(gpu) = &self.shared.executor {
                self.stats.lock().map_err(poisoned)?.drains += 1;
                gpu.synchronize()?;
            }
            Ok(())
        }

        fn pool_stats(&self) -> PoolStats {
            PoolStats {
                live_bytes: self.shared.live_bytes.load(Ordering::Relaxed),
                cached_bytes: 0,
                peak_live_bytes: self.shared.peak_bytes.load(Ordering::Relaxed),
                created: self.shared.created.load(Ordering::Relaxed),
                reused: 0,
            }
        }

        fn launch_stats(&self) -> LaunchStats {
            self.stats.lock().map(|s| *s).unwrap_or_default()
        }

        fn trim_pool(&self) {}

        fn start_profiling(&self) -> Result<()> {
            self.synchronize()?;
            *self.profile.lock().map_err(poisoned)? = Some(Vec::new());
            Ok(())
        }

        fn profiled_dispatches(&self) -> Result<usize> {
            Ok(self.profile.lock().map_err(poisoned)?.as_ref().map_or(0, Vec::len))
        }

        fn finish_profiling(&self) -> Result<Vec<DispatchTiming>> {
            Ok(self.profile.lock().map_err(poisoned)?.take().unwrap_or_default())
        }
    }

    impl CudaDevice {
        fn fill(&self, dst: &CudaBuffer, value: u8, bytes: u64) -> Result<()> {
            check_span(dst, bytes)?;
            match &self.shared.executor {
                Executor::Gpu(gpu) => gpu.fill(dst.ptr, value, bytes),
                Executor::Cpu => {
                    // SAFETY: the allocation holds at least `bytes` bytes (checked above).
                    unsafe { std::ptr::write_bytes(dst.ptr as *mut u8, value, bytes as usize) };
                    Ok(())
                }
            }
        }
    }

    fn check_span(buffer: &CudaBuffer, bytes: u64) -> Result<()> {
        if bytes > buffer.bytes {
            return Err(Error::InvalidArgument {
                op: "cuda",
                msg: format!("{bytes} bytes asked of a {}-byte buffer", buffer.bytes),
            });
        }
        Ok(())
    }

    fn missing_entry(label: &str, entry: &str) -> Error {
        Error::CudaCompile { kernel: label.into(), log: format!("the module has no kernel {entry}") }
    }
}
