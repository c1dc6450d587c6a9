//! The device layer: [`Device`] is an enum over backends and the one place that matches on it. Ops
//! describe each kernel launch as a `Launch` value (family, entry, dtype, typed constants, arguments,
//! params bytes, grid) and read what the hardware offers from [`Caps`]; they never see wgpu or CUDA.
//!
//! - `wgpu/`: adapter choice, buffer pool, WGSL composition and the pipeline cache, launches,
//!   profiling, staging readback.
//! - `cuda`: the CUDA backend's place; without the `cuda` feature a stand-in that answers "not
//!   compiled with CUDA support".

mod cuda;
mod disk_cache;
mod wgpu;

/// NVRTC without a GPU: compile every family's CUDA kernels for an architecture and read ptxas's
/// report (the compile-all test, `scalewise info --backend cuda`).
#[cfg(feature = "cuda")]
pub mod cuda_compile {
    pub use super::cuda::compile_all;
    pub use super::cuda::nvrtc::{Compiled, KernelReport, compile, cubin_is_whole, kernel_reports, version};
}

use std::sync::Arc;

pub use self::wgpu::{AdapterSummary, DispatchTiming, PoolStats, TimingSource};

/// The WGSL modules the wgpu backend compiles, for validating them without a GPU (tests/kernels.rs,
/// `scalewise info`).
pub mod wgsl {
    pub use super::wgpu::shaders::{Variant, compose, variants};
}

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::{Constants, Family, KernelParams};

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
    /// The same CUDA kernels compiled for the CPU by the host C++ compiler and run one fiber per
    /// thread: slow, for testing the CUDA sources without a GPU (the `cuda` cargo feature).
    CudaCpu,
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
            "cuda-cpu" => Ok(Self::CudaCpu),
            other => Err(Error::InvalidArgument {
                op: "backend",
                msg: format!("unknown backend {other:?}; expected auto, vulkan, metal, dx12, gl, cuda or cuda-cpu"),
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
    /// Use the adapter's 16 x 16 f16 matrix units through wgpu's experimental cooperative matrices
    /// ([`MatrixUnits::Native`]) when it lists them; `Auto` then sends f16 matmuls there once they
    /// pass their self-check ([`Device::check_matrix_units`]). CUDA's tensor cores do not depend on
    /// it.
    pub allow_cooperative_matrix: bool,
    /// Where the adapter has no matrix units, run the cooperative kernels
    /// ([`crate::ops::MatmulAlgorithm::Cooperative`], the attention's and conv2d's) on a plain-WGSL
    /// emulation of them ([`MatrixUnits::Emulated`]). Far slower than every other kernel
    /// and never chosen by `Auto`: it exists so that the cooperative kernel's tiling, edges and
    /// epilogue are tested on adapters without the units (the test suite's `wgpu_full` device).
    pub emulate_matrix_units: bool,
    /// Let wgpu attention blocks of few query rows split their keys between copies of their row
    /// layout (flash-decoding inside the workgroup; [`Caps::attention_key_split`]), and blocks of
    /// staged scores split theirs in two on GPUs ([`Caps::attention_staged_key_slices`]).
    pub allow_key_split: bool,
    /// Split staged scores' keys in two on a CPU adapter too, as on a GPU (slower there): so that
    /// the tests run that layout on lavapipe (the test suite's `wgpu_portable` and `wgpu_gl`
    /// devices).
    pub staged_key_slices_on_cpu: bool,
    /// Let wgpu attention blocks without subgroup shuffles put four query rows on each thread and
    /// stage their scores in workgroup memory ([`Caps::attention_staged_scores`]); off, such blocks
    /// keep one row per thread.
    pub allow_staged_scores: bool,
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
            allow_cooperative_matrix: true,
            emulate_matrix_units: false,
            allow_key_split: true,
            staged_key_slices_on_cpu: false,
            allow_staged_scores: true,
            poison_allocations: false,
        }
    }
}

impl DeviceOptions {
    /// Defaults overridden by the environment: `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, and
    /// `SCALEWISE_DISABLE` (comma list of `f16`, `subgroups`, `timestamps`, `coop`, `key-split`,
    /// `staged-scores`).
    pub fn from_env() -> Result<Self> {
        let mut options = Self::default();
        if let Some(backend) = env_utf8("WGPU_BACKEND", "auto, vulkan, metal, dx12, gl, cuda or cuda-cpu")? {
            options.backend = backend.parse()?;
        }
        if let Some(name) = env_utf8("WGPU_ADAPTER_NAME", "a part of an adapter's name")?
            && !name.trim().is_empty()
        {
            options.adapter_name = Some(name);
        }
        let expected = "a comma list of f16, subgroups, timestamps, coop, key-split, staged-scores";
        if let Some(disabled) = env_utf8("SCALEWISE_DISABLE", expected)? {
            for item in disabled.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item.to_ascii_lowercase().as_str() {
                    "f16" => options.allow_f16 = false,
                    "subgroups" => options.allow_subgroups = false,
                    "timestamps" => options.allow_timestamps = false,
                    "coop" => options.allow_cooperative_matrix = false,
                    "key-split" => options.allow_key_split = false,
                    "staged-scores" => options.allow_staged_scores = false,
                    other => {
                        return Err(Error::InvalidArgument {
                            op: "SCALEWISE_DISABLE",
                            msg: format!(
                                "unknown item {other:?}; expected f16, subgroups, timestamps, coop, key-split or \
                                 staged-scores"
                            ),
                        });
                    }
                }
            }
        }
        Ok(options)
    }
}

/// The environment variable `name`, `None` when unset; a value that is not UTF-8 is refused (naming
/// what was `expected`) rather than ignored, which would silently run on another adapter or backend
/// than the one asked for.
fn env_utf8(name: &'static str, expected: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => {
            Err(Error::InvalidArgument { op: name, msg: format!("{value:?} is not UTF-8; expected {expected}") })
        }
    }
}

/// What a device offers the ops: the optional features it enabled and the limits kernels must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// f16 storage kernels.
    pub f16: bool,
    /// Subgroup (warp, wave) reductions; `subgroup_sizes` is the range the hardware may use.
    pub subgroups: bool,
    pub subgroup_sizes: (u32, u32),
    /// GPU timestamps for profiling.
    pub timestamps: bool,
    /// Workgroup (shared) memory per workgroup, bytes.
    pub shared_memory_bytes: u32,
    /// Threads per workgroup.
    pub max_threads_per_group: u32,
    /// Workgroups per grid dimension.
    pub max_groups_per_dim: u32,
    /// Storage buffers one kernel may bind.
    pub max_storage_args: u32,
    /// Bytes one kernel argument may span.
    pub max_arg_bytes: u64,
    /// Bytes of one allocation.
    pub max_buffer_bytes: u64,
    /// A software rasteriser on the CPU (lavapipe, llvmpipe, WARP): few, wide "cores".
    pub is_cpu: bool,
    /// 16 x 16 x 16 f16 -> f32 matrix units for [`crate::ops::MatmulAlgorithm::Cooperative`].
    pub matrix_units: MatrixUnits,
    /// How the backend's attention kernels are tiled, which the ops size the tiles for.
    pub attention: AttentionDesign,
    /// [`AttentionDesign::RowsInRegisters`]: a block of few query rows splits its keys between
    /// copies of its row layout ([`crate::ops::AttentionTiles::key_slices`]), and so does a block of
    /// staged scores, in two.
    pub attention_key_split: bool,
    /// [`AttentionDesign::RowsInRegisters`]: a block of many query rows whose partial scores cannot
    /// meet through subgroup shuffles puts four rows on each thread and stages its scores
    /// ([`crate::ops::AttentionTiles::staged_scores`]).
    pub attention_staged_scores: bool,
    /// [`AttentionDesign::RowsInRegisters`]: a block of staged scores splits each tile's keys between
    /// two copies of its row layout ([`crate::ops::AttentionTiles::key_slices`]): twice the
    /// invocations on the same workgroup memory, for more waves per SIMD on a GPU. Off on CPU
    /// adapters (lavapipe and llvmpipe GL ran dense attention 1.2-1.6x slower split) unless
    /// [`DeviceOptions::staged_key_slices_on_cpu`], and wherever `allow_key_split` is off.
    pub attention_staged_key_slices: bool,
}

/// The design of a backend's attention kernels (the attention family and `qkv_attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionDesign {
    /// attention_tile.wgsl: each query row in the registers of ceil(head_dim / 32) threads, K and V
    /// tiles in workgroup memory; `qkv_attention` is one fused kernel. The wgpu backend.
    RowsInRegisters,
    /// attention.cu: BLOCK_Q x BLOCK_KV threads, one score each, the query tile in shared memory too,
    /// f16 on tensor cores; `qkv_attention` is `qkv_heads` then attention. The CUDA backend.
    ScoreTiles,
}

/// How a device runs the 16 x 16 x 16 f16 -> f32 matrix products of the cooperative matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixUnits {
    /// None: the cooperative matmul is refused with a typed error.
    None,
    /// Hardware units: wgpu's cooperative matrices where the adapter lists the configuration (Vulkan
    /// on NVIDIA and AMD RDNA3) and its subgroups are at least 32 wide, or CUDA's tensor cores
    /// (sm_80 and later, and the CPU shim's model of them). `Auto` uses them for f16 matmuls.
    Native,
    /// The plain-WGSL emulation ([`DeviceOptions::emulate_matrix_units`]): for tests, never `Auto`.
    Emulated,
}

/// Everything `scalewise info` shows.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub adapter: AdapterSummary,
    pub caps: Caps,
    /// The CUDA backend's facts; `None` on wgpu.
    pub cuda: Option<CudaSummary>,
}

/// What the CUDA backend runs on.
#[derive(Debug, Clone)]
pub struct CudaSummary {
    /// "GPU" or the CPU shim.
    pub executor: String,
    /// (major, minor): 9.0 on an H100/H200; `None` on the CPU shim.
    pub compute_capability: Option<(i32, i32)>,
    pub nvrtc_version: Option<(i32, i32)>,
    pub total_memory: Option<u64>,
    /// Tensor-core (mma.sync) variants are used for f16 where a family has them.
    pub tensor_cores: bool,
}

impl DeviceInfo {
    /// Which kernel variants ops will pick on this device, one line per family choice.
    pub fn kernel_variants(&self) -> Vec<(&'static str, String)> {
        let c = self.caps;
        if let Some(cuda) = &self.cuda {
            let arch = match cuda.compute_capability {
                Some((major, minor)) => format!("cubin for sm_{major}{minor}, cached in memory and on disk"),
                None => "the host C++ compiler (CPU shim), cached on disk".into(),
            };
            return vec![
                ("compiled by", arch),
                ("storage", if c.f16 { "f32 and f16 (f32 accumulation)".into() } else { "f32 only".into() }),
                (
                    "matmul",
                    if cuda.tensor_cores {
                        "skinny (<= 8 rows), wide 128x128, tiled 64x64; f16 on tensor cores (matmul_coop: \
                         mma.sync m16n8k16)"
                            .into()
                    } else {
                        "skinny (<= 8 rows), wide 128x128, tiled 64x64; scalar (no tensor cores below sm_80)".into()
                    },
                ),
                (
                    "conv2d",
                    if cuda.tensor_cores {
                        "direct 32-channel blocks, implicit GEMM for 64+ channels; f16 on tensor cores (conv2d_coop: \
                         mma.sync m16n8k16)"
                            .into()
                    } else {
                        "direct 32-channel blocks, implicit GEMM on the wide tile for 64+ channels".into()
                    },
                ),
                ("row reductions", "warp shuffles (32 lanes) and shared memory".into()),
                ("profiling", "wall clock per dispatch (synchronised)".into()),
            ];
        }
        use crate::kernels::size::{SKINNY_ROWS, TILE_K, TILE_M, WIDE_K, WIDE_TILE};
        vec![
            ("storage", if c.f16 { "f32 and f16 (f32 accumulation)".into() } else { "f32 only (no f16)".into() }),
            (
                "row reductions (softmax, norms)",
                if c.subgroups {
                    format!("subgroup (size {}..{})", c.subgroup_sizes.0, c.subgroup_sizes.1)
                } else {
                    "workgroup tree (no subgroups)".into()
                },
            ),
            (
                "matmul",
                format!(
                    "skinny (<= {SKINNY_ROWS} rows), wide {WIDE_TILE}x{WIDE_TILE}x{WIDE_K} 8x8 per thread \
                     double-buffered, tiled {TILE_M}x{TILE_M}x{TILE_K} 4x4 per thread; by shape{}",
                    match c.matrix_units {
                        MatrixUnits::Native => "; f16 on cooperative matrices (16x16x16, 64x64 tiles)",
                        MatrixUnits::Emulated => "; cooperative kernel emulated on request (tests)",
                        MatrixUnits::None => "",
                    }
                ),
            ),
            (
                "attention",
                format!(
                    "query rows in registers ({}{}{}, which keep their max and sum); \
                     8..64 rows x 4..32 keys per tile from head_dim and workgroup memory{}",
                    if c.subgroups {
                        "four rows per ceil(head_dim / 8) threads (at least 4), taking keys one at a time, or else two \
                         per ceil(head_dim / 16), where those threads fit a subgroup and the block is whole subgroups, \
                         their partial scores summed by shuffles; else "
                    } else {
                        ""
                    },
                    if c.attention_staged_scores && c.attention_staged_key_slices {
                        "four rows per ceil(head_dim / 8) threads (at least 4), their scores computed whole from the \
                         block's queries staged in workgroup memory, in two key slices where 256 invocations may run, \
                         where those stages fit; else ceil(head_dim / 32) threads per row"
                    } else if c.attention_staged_scores {
                        "four rows per ceil(head_dim / 8) threads (at least 4), their scores computed whole from the \
                         block's queries staged in workgroup memory, where those stages fit; else ceil(head_dim / 32) \
                         threads per row"
                    } else {
                        "ceil(head_dim / 32) threads per row"
                    },
                    if c.subgroups {
                        ", partial scores summed by shuffles where they fit, else in workgroup memory"
                    } else {
                        ", partial scores summed in workgroup memory"
                    },
                    match c.matrix_units {
                        MatrixUnits::Native => "; f16 blocks of 32+ rows on cooperative matrices (64 or 32 x 32 tiles)",
                        MatrixUnits::Emulated => "; cooperative kernel emulated on request (tests)",
                        MatrixUnits::None => "",
                    }
                ),
            ),
            (
                "conv2d",
                format!(
                    "direct 32-channel blocks; implicit GEMM for 64+ channels on the wide tile{}",
                    match c.matrix_units {
                        MatrixUnits::Native => ", f16 on cooperative matrices (64x64 tiles)",
                        MatrixUnits::Emulated => "; cooperative kernel emulated on request (tests)",
                        MatrixUnits::None => "",
                    }
                ),
            ),
            (
                "selective scan",
                "chunked (chunk totals, carry, recompute), chunks sized for the adapter; no subgroups".into(),
            ),
            ("ssd", "recurrent form (chunked matrix form on request)".into()),
            (
                "profiling",
                if c.timestamps { "GPU timestamps per dispatch".into() } else { "wall clock per dispatch".into() },
            ),
        ]
    }
}

/// Device memory of one tensor, on whichever backend allocated it.
pub(crate) enum Storage {
    Wgpu(self::wgpu::GpuBuffer),
    #[cfg(feature = "cuda")]
    Cuda(cuda::CudaBuffer),
}

/// One kernel argument: a tensor's storage, the bytes the kernel may touch (the tensor's size, not the
/// allocation's), whether it writes them, and a name for errors.
pub(crate) struct Arg<'a> {
    pub storage: &'a Storage,
    pub bytes: u64,
    pub writable: bool,
    pub name: &'a str,
}

/// How many workgroups (thread blocks) a launch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// Exactly these counts per dimension.
    Groups([u32; 3]),
    /// This many workgroups in one flat range; the backend spreads them over its grid dimensions and
    /// the kernel recovers the flat index (`grid_workgroup` in WGSL) and skips indices past the end.
    Linear(u64),
    /// A flat range as in `Linear`, repeated `batch` times along z (the kernel reads z as the batch).
    Batched { groups: u64, batch: u32 },
}

/// One kernel launch, as every op describes it and every backend receives it.
pub(crate) struct Launch<'a> {
    pub family: Family,
    pub entry: &'static str,
    /// The storage type the kernel is compiled for.
    pub dtype: DType,
    pub constants: &'a Constants,
    /// Storage arguments in binding order.
    pub args: &'a [Arg<'a>],
    /// The family's params struct as bytes, and that struct's name (checked against the family).
    pub params: &'a [u8],
    pub params_struct: &'static str,
    pub grid: Grid,
}

impl<'a> Launch<'a> {
    pub fn new<P: KernelParams>(
        family: Family,
        entry: &'static str,
        dtype: DType,
        constants: &'a Constants,
        args: &'a [Arg<'a>],
        params: &'a P,
        grid: Grid,
    ) -> Self {
        Self {
            family,
            entry,
            dtype,
            constants,
            args,
            params: bytemuck::bytes_of(params),
            params_struct: P::LAYOUT.struct_name,
            grid,
        }
    }

    /// The contract checks every backend relies on: params of the family's struct, constants the
    /// family declares, a dtype it is compiled for.
    pub fn check(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::InvalidArgument { op: "launch", msg });
        if self.params_struct != self.family.params_layout().struct_name {
            return fail(format!(
                "{} takes {}, got {}",
                self.family,
                self.family.params_layout().struct_name,
                self.params_struct
            ));
        }
        if self.constants.family() != self.family {
            return fail(format!("constants of {} given to {}", self.constants.family(), self.family));
        }
        self.constants.check().or_else(fail)?;
        if !self.family.dtypes().contains(&self.dtype) {
            return Err(Error::UnsupportedDType {
                op: self.family.name(),
                dtype: self.dtype,
                expected: "a dtype the family is compiled for",
            });
        }
        // A buffer a kernel writes may be bound nowhere else in the launch (a clone or a reshape of
        // a caller's tensor shares its storage): wgpu would refuse the dispatch only when the batch
        // is submitted, failing an unrelated later readback, and a kernel reading what it overwrites
        // computes garbage. Every dispatch passes here, copies (write_slice) included.
        for (i, written) in self.args.iter().enumerate().filter(|(_, a)| a.writable) {
            if let Some((_, other)) =
                self.args.iter().enumerate().find(|&(j, a)| j != i && std::ptr::eq(a.storage, written.storage))
            {
                return Err(Error::InvalidArgument {
                    op: self.entry,
                    msg: format!(
                        "{} and {} share storage (a clone or reshape of one tensor), and {} is written: pass \
                         distinct tensors",
                        written.name, other.name, written.name
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A download in flight: poll it or wait for the bytes.
pub(crate) enum Readback {
    Wgpu(self::wgpu::Readback),
    /// Already copied (the CUDA backend reads synchronously).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code, reason = "only the CUDA backend reads synchronously"))]
    Ready(Vec<u8>),
}

impl Readback {
    pub fn is_ready(&self) -> bool {
        match self {
            Readback::Wgpu(r) => r.is_ready(),
            Readback::Ready(_) => true,
        }
    }

    pub fn wait(self) -> Result<Vec<u8>> {
        match self {
            Readback::Wgpu(r) => r.wait(),
            Readback::Ready(bytes) => Ok(bytes),
        }
    }
}

/// Pipelines compiling on background threads ([`Device::prewarm_pipelines`]). Dropping it lets them
/// finish on their own; [`Prewarm::join`] waits and reports.
pub struct Prewarm {
    threads: Vec<std::thread::JoinHandle<(usize, usize, std::time::Instant)>>,
    planned: usize,
    started: std::time::Instant,
}

/// What a [`Prewarm`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrewarmReport {
    /// Pipelines the manifest named.
    pub planned: usize,
    /// Compiled by the background threads (the rest were compiled already, or by a dispatch first).
    pub compiled: usize,
    /// Could not be compiled (a stale manifest line); they compile on first use if ever needed.
    pub failed: usize,
    /// From the start of the prewarm to the last thread's end.
    pub wall_ms: f64,
}

impl Prewarm {
    /// Pipelines the manifest named (0: nothing to do; the first run of a workload).
    pub fn planned(&self) -> usize {
        self.planned
    }

    /// Waits for the background compiles.
    pub fn join(self) -> PrewarmReport {
        let mut report = PrewarmReport { planned: self.planned, ..Default::default() };
        for thread in self.threads {
            if let Ok((compiled, failed, ended)) = thread.join() {
                report.compiled += compiled;
                report.failed += failed;
                report.wall_ms = report.wall_ms.max((ended - self.started).as_secs_f64() * 1e3);
            }
        }
        report
    }
}

/// Counters of a device's launch path (see [`Device::launch_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaunchStats {
    pub pipelines_compiled: u64,
    /// Wall time spent creating shader modules and pipelines.
    pub compile_ms: f64,
    pub dispatches: u64,
    pub submits: u64,
    /// Blocking waits that left the GPU with nothing queued behind them (synchronize, timestamp
    /// reads, readbacks with no later work submitted): each one idles the GPU until the host
    /// records more.
    pub drains: u64,
    /// Blocking waits for a readback while later work was already queued (a token map read a scale
    /// late): the host waits, the GPU stays busy.
    pub overlapped_waits: u64,
    /// Pipelines compiled ahead on background threads ([`Device::prewarm_pipelines`]); also counted
    /// in `pipelines_compiled`, and a counted pipeline may have been compiled after a dispatch
    /// needed it first.
    pub prewarmed: u64,
}

impl std::ops::Sub for LaunchStats {
    type Output = LaunchStats;
    fn sub(self, earlier: LaunchStats) -> LaunchStats {
        LaunchStats {
            pipelines_compiled: self.pipelines_compiled - earlier.pipelines_compiled,
            compile_ms: self.compile_ms - earlier.compile_ms,
            dispatches: self.dispatches - earlier.dispatches,
            submits: self.submits - earlier.submits,
            drains: self.drains - earlier.drains,
            overlapped_waits: self.overlapped_waits - earlier.overlapped_waits,
            prewarmed: self.prewarmed - earlier.prewarmed,
        }
    }
}

/// What every backend implements. Ops never call it directly: they go through [`Device`].
pub(crate) trait BackendDevice: Send + Sync {
    fn info(&self) -> &DeviceInfo;
    fn alloc(&self, bytes: u64, what: &str) -> Result<Storage>;
    /// Copies `bytes` to the start of `dst`, after every kernel recorded so far.
    fn write(&self, dst: &Storage, bytes: &[u8]) -> Result<()>;
    /// Zeroes the first `bytes` of `dst`, after every kernel recorded so far.
    fn zero(&self, dst: &Storage, bytes: u64) -> Result<()>;
    fn read(&self, src: &Storage, bytes: u64) -> Result<Readback>;
    fn supports(&self, family: Family, dtype: DType) -> bool;
    fn launch(&self, launch: &Launch) -> Result<()>;
    fn flush(&self) -> Result<()>;
    /// Reads the pipeline manifest of `workload` (see [`Device::prewarm_pipelines`]) and returns
    /// how many pipelines it names; 0 where the backend keeps none.
    fn prewarm_plan(&self, _workload: &str) -> usize {
        0
    }
    /// Compiles the manifest's pipeline `index` unless it is compiled already; true when it compiled.
    fn prewarm_one(&self, _index: usize) -> Result<bool> {
        Ok(false)
    }
    fn synchronize(&self) -> Result<()>;
    fn pool_stats(&self) -> PoolStats;
    fn launch_stats(&self) -> LaunchStats;
    fn trim_pool(&self);
    fn start_profiling(&self) -> Result<()>;
    fn profiled_dispatches(&self) -> Result<usize>;
    fn finish_profiling(&self) -> Result<Vec<DispatchTiming>>;
}

#[allow(clippy::large_enum_variant, reason = "one per device, behind an Arc")]
enum Backend {
    Wgpu(self::wgpu::WgpuDevice),
    #[cfg(feature = "cuda")]
    Cuda(cuda::CudaDevice),
}

/// A compute device. Cheap to clone: clones share the backend device, the pools and the caches.
#[derive(Clone)]
pub struct Device {
    backend: Arc<Backend>,
    /// The outcome of [`Device::check_matrix_units`], once run.
    matrix_units_check: Arc<std::sync::OnceLock<std::result::Result<(), String>>>,
    /// The outcome of [`Device::check_attention_units`], once run.
    attention_units_check: Arc<std::sync::OnceLock<std::result::Result<(), String>>>,
    /// The outcome of [`Device::check_conv_units`], once run.
    conv_units_check: Arc<std::sync::OnceLock<std::result::Result<(), String>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("adapter", &self.info().adapter.name).finish()
    }
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
        let backend = if matches!(options.backend, BackendChoice::Cuda | BackendChoice::CudaCpu) {
            cuda::open(options)?
        } else {
            Backend::Wgpu(self::wgpu::WgpuDevice::open(options).await?)
        };
        Ok(Self {
            backend: Arc::new(backend),
            matrix_units_check: Arc::default(),
            attention_units_check: Arc::default(),
            conv_units_check: Arc::default(),
        })
    }

    /// The wgpu features scalewise asks for when they exist, minus the ones `options` disallows.
    pub fn wanted_features(options: &DeviceOptions) -> ::wgpu::Features {
        self::wgpu::wanted_features(options)
    }

    /// Which of `adapters` [`Device::new`] would open under `options` (its index; `None` for an empty
    /// list), for code that opens the wgpu device itself and shares it ([`Device::from_wgpu`]): the
    /// desktop app hands eframe this choice, so that the UI and `scalewise info` name one adapter.
    pub fn best_adapter(adapters: &[::wgpu::Adapter], options: &DeviceOptions) -> Option<usize> {
        self::wgpu::adapter::best_adapter(adapters, options)
    }

    /// Wraps a wgpu device somebody else opened (eframe's, say), so the compute backend and the UI
    /// share it. The kernel variants follow the features that device was created with.
    pub fn from_wgpu(
        adapter_info: &::wgpu::AdapterInfo,
        device: ::wgpu::Device,
        queue: ::wgpu::Queue,
        poison_allocations: bool,
    ) -> Self {
        let inner = self::wgpu::WgpuDevice::from_wgpu(adapter_info, device, queue, poison_allocations);
        Self {
            backend: Arc::new(Backend::Wgpu(inner)),
            matrix_units_check: Arc::default(),
            attention_units_check: Arc::default(),
            conv_units_check: Arc::default(),
        }
    }

    /// The backend behind this device: the one `match` on it.
    fn imp(&self) -> &dyn BackendDevice {
        match &*self.backend {
            Backend::Wgpu(d) => d,
            #[cfg(feature = "cuda")]
            Backend::Cuda(d) => d,
        }
    }

    /// The underlying wgpu device and queue (for engineers mixing scalewise kernels into their own
    /// wgpu code); `None` on another backend.
    pub fn wgpu(&self) -> Option<(&::wgpu::Device, &::wgpu::Queue)> {
        match &*self.backend {
            Backend::Wgpu(d) => Some((d.raw_device(), d.raw_queue())),
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => None,
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        self.imp().info()
    }

    pub fn caps(&self) -> Caps {
        self.info().caps
    }

    /// Runs `check` the first time it is asked (by any clone of this device) and keeps its outcome:
    /// whether the matrix units compute what they should here. The matmul supplies the check
    /// (`ops::matmul::matrix_units_verified`); `Auto` uses the units only once it has passed, so a
    /// driver that miscompiles or rejects the cooperative kernel costs one failed check, not wrong
    /// images.
    pub(crate) fn check_matrix_units(
        &self,
        check: impl FnOnce() -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        self.matrix_units_check.get_or_init(check).clone()
    }

    /// [`Device::check_matrix_units`] for the matrix-unit attention
    /// (`ops::attention::attention_units_verified`), kept apart: a driver may compile one kernel
    /// right and the other wrong.
    pub(crate) fn check_attention_units(
        &self,
        check: impl FnOnce() -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        self.attention_units_check.get_or_init(check).clone()
    }

    /// [`Device::check_matrix_units`] for the matrix-unit convolution
    /// (`ops::conv2d::conv_units_verified`), kept apart for the same reason.
    pub(crate) fn check_conv_units(
        &self,
        check: impl FnOnce() -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String> {
        self.conv_units_check.get_or_init(check).clone()
    }

    /// The storage type models use by default here: f16 where the device has f16 kernels, else f32.
    pub fn preferred_float(&self) -> DType {
        if self.caps().f16 { DType::F16 } else { DType::F32 }
    }

    /// Does this backend run `family`'s kernels on `dtype` storage?
    pub fn supports(&self, family: Family, dtype: DType) -> bool {
        self.imp().supports(family, dtype)
    }

    /// Same device (clones share it)?
    pub fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.backend, &other.backend)
    }

    pub(crate) fn alloc(&self, bytes: u64, what: &str) -> Result<Storage> {
        self.imp().alloc(bytes, what)
    }

    pub(crate) fn write(&self, dst: &Storage, bytes: &[u8]) -> Result<()> {
        self.imp().write(dst, bytes)
    }

    pub(crate) fn zero(&self, dst: &Storage, bytes: u64) -> Result<()> {
        self.imp().zero(dst, bytes)
    }

    pub(crate) fn read(&self, src: &Storage, bytes: u64) -> Result<Readback> {
        self.imp().read(src, bytes)
    }

    /// Runs one kernel: the contract is checked, then the backend records it.
    pub(crate) fn launch(&self, launch: &Launch) -> Result<()> {
        launch.check()?;
        if !self.supports(launch.family, launch.dtype) {
            return Err(Error::Unsupported {
                family: launch.family.name(),
                dtype: launch.dtype,
                backend: self.info().adapter.backend.clone(),
            });
        }
        self.imp().launch(launch)
    }

    /// Blocks until every submitted command has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.imp().synchronize()
    }

    /// Submits the kernels recorded so far. scalewise records consecutive dispatches and submits them
    /// before any upload, readback or wait, so callers only need this before using the queue
    /// themselves for work that must follow scalewise's.
    pub fn flush(&self) -> Result<()> {
        self.imp().flush()
    }

    /// Starts compiling, on background threads, the pipelines an earlier process with the same
    /// `workload` used on this adapter and driver (a manifest in the user's cache folder), and
    /// records this process's pipelines under `workload` when the device closes. Call it before the
    /// weights load so the compiles overlap the loading; a dispatch that needs a pipeline still
    /// compiling waits for it rather than compiling it twice. Name the workload by what decides the
    /// kernels (the model and the storage type). Nothing happens without a cache folder, on the first
    /// run of a workload, or on backends that keep no manifest (CUDA caches its modules on disk).
    pub fn prewarm_pipelines(&self, workload: &str) -> Prewarm {
        let started = std::time::Instant::now();
        let planned = self.imp().prewarm_plan(workload);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(planned);
        let threads = (0..workers)
            .filter_map(|worker| {
                let device = self.clone();
                std::thread::Builder::new()
                    .name(format!("scalewise-prewarm-{worker}"))
                    .spawn(move || {
                        let (mut compiled, mut failed) = (0, 0);
                        for index in (worker..planned).step_by(workers) {
                            match device.imp().prewarm_one(index) {
                                Ok(true) => compiled += 1,
                                Ok(false) => {}
                                // A key this build cannot compile (from another version's manifest)
                                // is only a missed speed-up.
                                Err(_) => failed += 1,
                            }
                        }
                        (compiled, failed, std::time::Instant::now())
                    })
                    .ok()
            })
            .collect();
        Prewarm { threads, planned, started }
    }

    /// Allocation statistics of the buffer pool (live, cached and peak bytes).
    pub fn pool_stats(&self) -> PoolStats {
        self.imp().pool_stats()
    }

    /// Releases every cached (unused) buffer back to the driver.
    /// What the launch path has done since the device opened: pipelines compiled (and the time it
    /// took), dispatches, submissions and blocking waits. Differences between two snapshots count a
    /// piece of work (`bench generate` reports them per generation).
    pub fn launch_stats(&self) -> LaunchStats {
        self.imp().launch_stats()
    }

    pub fn trim_pool(&self) {
        self.imp().trim_pool()
    }

    /// Starts recording the duration of every dispatch (GPU timestamps where available).
    pub fn start_profiling(&self) -> Result<()> {
        self.imp().start_profiling()
    }

    /// Dispatches recorded since [`Device::start_profiling`] (0 when not profiling): the index the
    /// next dispatch's entry will have in [`Device::finish_profiling`]'s list.
    pub fn profiled_dispatches(&self) -> Result<usize> {
        self.imp().profiled_dispatches()
    }

    /// Stops recording and returns one entry per dispatch since [`Device::start_profiling`].
    pub fn finish_profiling(&self) -> Result<Vec<DispatchTiming>> {
        self.imp().finish_profiling()
    }
}

pub(crate) fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Gpu { what: "locking device state".into(), msg: "a thread panicked while holding the lock".into() }
}
