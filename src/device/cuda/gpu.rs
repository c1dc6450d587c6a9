//! The GPU executor: one CUDA context (the device's primary context) and one stream, modules
//! compiled by NVRTC for the device's exact architecture and cached in memory and on disk.

use std::ffi::{CString, c_void};

use cudarc::driver::result as cu;
use cudarc::driver::sys;

use super::compose::{self, ModuleKey, Target};
use super::nvrtc;
use crate::error::{Error, Result};

fn driver(what: impl Into<String>) -> impl FnOnce(cu::DriverError) -> Error {
    let what = what.into();
    move |source| Error::Cuda { what, source }
}

/// What `scalewise info` shows about the GPU.
#[derive(Debug, Clone)]
pub(super) struct GpuFacts {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: u64,
    pub driver_version: i32,
    pub nvrtc_version: (i32, i32),
    pub max_threads_per_block: u32,
    pub max_grid_x: u32,
    pub max_grid_y: u32,
}

pub(super) struct GpuContext {
    device: sys::CUdevice,
    context: sys::CUcontext,
    stream: sys::CUstream,
    pub facts: GpuFacts,
}

// SAFETY: a CUDA context and stream may be used from any thread once made current there, which
// `bind` does before every call.
unsafe impl Send for GpuContext {}
unsafe impl Sync for GpuContext {}

impl GpuContext {
    /// Opens GPU `ordinal` (0 unless `name_filter` picks another by name). Checks for the driver
    /// library before any cudarc call: without it every call panics.
    pub fn open(name_filter: Option<&str>) -> Result<Self> {
        // SAFETY: only tries to open the driver library by its candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::CudaUnavailable(format!(
                "the CUDA driver library ({}) was not found: this machine has no NVIDIA driver",
                if cfg!(windows) { "nvcuda.dll" } else { "libcuda.so" }
            )));
        }
        nvrtc::available().map_err(Error::CudaUnavailable)?;
        cu::init().map_err(driver("initialising the CUDA driver"))?;
        let count = cu::device::get_count().map_err(driver("counting CUDA devices"))?;
        if count == 0 {
            return Err(Error::CudaUnavailable("the CUDA driver sees no GPU".into()));
        }
        let mut chosen = None;
        for ordinal in 0..count {
            let device = cu::device::get(ordinal).map_err(driver("opening a CUDA device"))?;
            let name = cu::device::get_name(device).map_err(driver("reading the GPU's name"))?;
            let wanted = name_filter.is_none_or(|f| name.to_lowercase().contains(&f.to_lowercase()));
            if wanted {
                chosen = Some((device, name));
                break;
            }
        }
        let (device, name) = chosen.ok_or_else(|| {
            Error::CudaUnavailable(format!("no CUDA GPU matches the adapter name {:?}", name_filter.unwrap_or("")))
        })?;
        let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
            // SAFETY: `device` came from cuDeviceGet.
            unsafe { cu::device::get_attribute(device, a) }.map_err(driver("reading a device attribute"))
        };
        use sys::CUdevice_attribute as A;
        let compute_capability = (
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let max_threads_per_block = attr(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)? as u32;
        let max_grid_x = attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)? as u32;
        let max_grid_y = attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)? as u32;
        // SAFETY: `device` came from cuDeviceGet.
        let total_memory =
            unsafe { cu::device::total_mem(device) }.map_err(driver("reading the GPU's memory size"))? as u64;
        let mut driver_version = 0;
        // SAFETY: valid out-pointer.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(driver("reading the driver version"))?;
        // SAFETY: `device` came from cuDeviceGet; the context is released in Drop.
        let context = unsafe { cu::primary_ctx::retain(device) }.map_err(driver("creating the CUDA context"))?;
        // SAFETY: the context was just retained.
        unsafe { cu::ctx::set_current(context) }.map_err(driver("binding the CUDA context"))?;
        let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(driver("creating a stream"))?;
        let facts = GpuFacts {
            name,
            compute_capability,
            total_memory,
            driver_version,
            nvrtc_version: nvrtc::version()?,
            max_threads_per_block,
            max_grid_x,
            max_grid_y,
        };
        Ok(Self { device, context, stream, facts })
    }

    /// The architecture NVRTC compiles for: the device's exact sm_XY.
    pub fn arch(&self) -> u32 {
        (self.facts.compute_capability.0 * 10 + self.facts.compute_capability.1) as u32
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: the context lives as long as self.
        unsafe { cu::ctx::set_current(self.context) }.map_err(driver("binding the CUDA context"))
    }

    pub fn alloc(&self, bytes: u64, what: &str) -> Result<u64> {
        self.bind()?;
        // SAFETY: a plain allocation in the bound context.
        match unsafe { cu::malloc_sync(bytes.max(4) as usize) } {
            Ok(ptr) => Ok(ptr),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let free = cu::mem_get_info().map(|(free, _)| free as u64).unwrap_or(0);
                Err(Error::CudaOutOfMemory { what: what.into(), bytes, free })
            }
            Err(e) => Err(driver(format!("allocating {what}"))(e)),
        }
    }

    pub fn free(&self, ptr: u64) {
        if self.bind().is_ok() {
            // SAFETY: `ptr` came from alloc and is freed once (the buffer's Drop). Work that still uses
            // it was recorded on our stream; cuMemFree waits for the device as the docs promise.
            let _ = unsafe { cu::free_sync(ptr) };
        }
    }

    pub fn write(&self, dst: u64, bytes: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds at least `bytes.len()` bytes (checked by the caller); synchronous
        // copies are ordered after the stream's work by the synchronize.
        unsafe {
            cu::stream::synchronize(self.stream).map_err(driver("waiting for the GPU"))?;
            cu::memcpy_htod_sync(dst, bytes).map_err(driver("uploading"))
        }
    }

    pub fn fill(&self, dst: u64, value: u8, bytes: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds at least `bytes` bytes (checked by the caller).
        unsafe {
            cu::stream::synchronize(self.stream).map_err(driver("waiting for the GPU"))?;
            cu::memset_d8_sync(dst, value, bytes as usize).map_err(driver("filling a buffer"))
        }
    }

    pub fn read(&self, src: u64, bytes: u64) -> Result<Vec<u8>> {
        self.bind()?;
        let mut out = vec![0u8; bytes as usize];
        // SAFETY: `src` holds at least `bytes` bytes (checked by the caller).
        unsafe {
            cu::stream::synchronize(self.stream).map_err(driver("waiting for the GPU"))?;
            cu::memcpy_dtoh_sync(&mut out, src).map_err(driver("downloading"))?;
        }
        Ok(out)
    }

    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: our own stream.
        unsafe { cu::stream::synchronize(self.stream) }.map_err(driver("waiting for the GPU"))
    }

    /// Compiles (or finds on disk) and loads the module of `key`.
    pub fn load(&self, key: &ModuleKey) -> Result<GpuModule> {
        let label = key.label();
        let source = compose::compose(key, Target::Gpu).ok_or_else(|| Error::CudaCompile {
            kernel: label.clone(),
            log: "no CUDA source for this family".into(),
        })?;
        let arch = self.arch();
        let (major, minor) = self.facts.nvrtc_version;
        let options = nvrtc::options(arch).join(" ");
        let hash =
            compose::content_hash(&[source.as_bytes(), options.as_bytes(), format!("{major}.{minor}").as_bytes()]);
        let path =
            crate::device::disk_cache::dir("cuda").map(|d| d.join(format!("{}-sm{arch}-{hash}.cubin", key.family)));
        self.bind()?;
        // A module's cubin is a few hundred KiB; anything past 64 MiB is not one of ours. A file that
        // is not a whole ELF image (truncated by a crash or a full disk, or damaged) is compiled
        // afresh below and replaced, rather than handed to the driver, which takes no length and
        // would read past it (or, for an empty file, from a dangling pointer).
        if let Some(cubin) = path.as_ref().and_then(|p| crate::device::disk_cache::read(p, 64 << 20))
            && nvrtc::cubin_is_whole(&cubin)
        {
            // SAFETY: a whole ELF image NVRTC produced for this device's architecture in an earlier run
            // (the file name hashes the source, the options and the NVRTC version).
            let module = unsafe { cu::module::load_data(cubin.as_ptr().cast()) }
                .map_err(driver(format!("loading {label} from the cache")))?;
            return Ok(GpuModule { module, functions: Default::default() });
        }
        let cubin = nvrtc::compile(&source, &label, arch)?.cubin;
        if let Some(path) = &path {
            crate::device::disk_cache::write(path, &cubin);
        }
        // SAFETY: a cubin NVRTC produced for this device's architecture.
        let module =
            unsafe { cu::module::load_data(cubin.as_ptr().cast()) }.map_err(driver(format!("loading {label}")))?;
        Ok(GpuModule { module, functions: Default::default() })
    }

    /// The entry's function and declared block shape (the module's `<entry>_block` global), looked
    /// up once per module and entry: the lookup copies from the device, which must not happen per
    /// launch.
    pub fn function(&self, module: &GpuModule, entry: &str) -> Result<Option<(sys::CUfunction, [u32; 3])>> {
        let mut functions = module.functions.lock().map_err(crate::device::poisoned)?;
        if let Some(found) = functions.get(entry) {
            return Ok(found.map(|(f, block)| (f.0, block)));
        }
        let found = self.lookup(module, entry)?;
        functions.insert(entry.to_owned(), found.map(|(f, block)| (Function(f), block)));
        Ok(found)
    }

    fn lookup(&self, module: &GpuModule, entry: &str) -> Result<Option<(sys::CUfunction, [u32; 3])>> {
        self.bind()?;
        let name = CString::new(entry).map_err(|_| Error::InvalidArgument { op: "launch", msg: entry.into() })?;
        // SAFETY: a module loaded in this context.
        let Ok(function) = (unsafe { cu::module::get_function(module.module, name) }) else {
            return Ok(None);
        };
        let global = CString::new(format!("{entry}_block")).expect("no NUL");
        // SAFETY: as above; the global is three u32 values (SW_KERNEL).
        let (ptr, bytes) = unsafe { cu::module::get_global(module.module, global) }
            .map_err(driver(format!("reading {entry}'s block shape")))?;
        if bytes != 12 {
            return Err(Error::Gpu {
                what: format!("loading {entry}"),
                msg: format!("{entry}_block is {bytes} bytes"),
            });
        }
        let mut block = [0u32; 3];
        // SAFETY: 12 bytes at `ptr`.
        unsafe { cu::memcpy_dtoh_sync(&mut block, ptr) }.map_err(driver(format!("reading {entry}'s block shape")))?;
        Ok(Some((function, block)))
    }

    pub fn launch(
        &self,
        function: sys::CUfunction,
        grid: [u32; 3],
        block: [u32; 3],
        args: &mut [*mut c_void],
        label: &str,
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: `args` holds one pointer per kernel parameter, to values of the parameter types
        // (device pointers of live allocations, the params struct), as the kernel contract fixes.
        unsafe {
            cu::launch_kernel(
                function,
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                0,
                self.stream,
                args,
            )
        }
        .map_err(driver(format!("launching {label}")))
    }
}

impl Drop for GpuContext {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: our stream, destroyed once; then our retain of the primary context released.
            unsafe {
                let _ = cu::stream::synchronize(self.stream);
                let _ = cu::stream::destroy(self.stream);
                let _ = cu::primary_ctx::release(self.device);
            }
        }
    }
}

pub(super) struct GpuModule {
    module: sys::CUmodule,
    /// Entry name -> function and block shape (`None`: the module has no such entry).
    functions: std::sync::Mutex<std::collections::HashMap<String, Option<Entry>>>,
}

/// A kernel of a loaded module and its declared block shape.
type Entry = (Function, [u32; 3]);

#[derive(Clone, Copy)]
struct Function(sys::CUfunction);

// SAFETY: function handles are context-wide, usable from any thread with the context bound.
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

// SAFETY: module handles are context-wide, usable from any thread with the context bound.
unsafe impl Send for GpuModule {}
unsafe impl Sync for GpuModule {}
