//! The scalewise command line: device information, VAR and M-VAR generation and benchmarks.

/// `println!` that returns an [`out::StdoutError`] instead of panicking when standard output is
/// closed or full.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}

/// `eprintln!` without its panic: a closed or full standard error (`2>&1 | head -3`) loses the
/// progress and notes, but the run goes on and writes its outputs.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod generate;
mod out;
mod shader_stats;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use generate::check_input_file;
use scalewise::MatrixUnits;
use scalewise::error::shown_path;
use scalewise::kernels::Family;
use scalewise::ops::MatmulAlgorithm;
use scalewise::{BackendChoice, DType, Device, DeviceOptions};
use scalewise_cli::bench::{
    self, AttentionBenchConfig, AttentionCase, MatmulBenchConfig, MatmulShape, ScanBenchConfig,
};
use scalewise_cli::peaks::{self, PeaksConfig};

#[derive(Parser)]
#[command(name = "scalewise", version, about = "Cross-vendor GPU kernels for next-scale image generators")]
struct Cli {
    #[command(flatten)]
    device: DeviceArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DeviceArgs {
    /// auto, vulkan, metal, dx12, gl, cuda or cuda-cpu (default: WGPU_BACKEND, else auto). cuda needs a
    /// build with `--features cuda`; cuda-cpu runs the CUDA kernels on the CPU (slow; for testing).
    #[arg(long, global = true)]
    backend: Option<BackendChoice>,
    /// Pick the adapter whose name contains this text (default: WGPU_ADAPTER_NAME).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Do not use f16 kernels even where SHADER_F16 exists.
    #[arg(long, global = true)]
    no_f16: bool,
    /// Do not use subgroup kernels even where SUBGROUP exists.
    #[arg(long, global = true)]
    no_subgroups: bool,
}

impl DeviceArgs {
    fn open(&self) -> anyhow::Result<Device> {
        Ok(Device::new(&self.options()?)?)
    }

    fn options(&self) -> anyhow::Result<DeviceOptions> {
        let mut options = DeviceOptions::from_env()?;
        if let Some(backend) = self.backend {
            options.backend = backend;
        }
        if let Some(adapter) = &self.adapter {
            options.adapter_name = Some(adapter.clone());
        }
        options.allow_f16 &= !self.no_f16;
        options.allow_subgroups &= !self.no_subgroups;
        Ok(options)
    }
}

/// How weights files are read (generate, convert, classes).
#[derive(Args)]
pub(crate) struct WeightsArgs {
    /// Load weights holding NaN or infinity instead of refusing them, for inspecting broken
    /// checkpoints: a generation stops at the first scale whose logits are not finite, and a broken
    /// VAE gives blank images.
    #[arg(long)]
    pub(crate) allow_non_finite: bool,
    /// The most host memory, in MiB, one weights file may expand to (independently, a file never
    /// expands to more than 8 times its own size).
    #[arg(long, value_name = "MIB")]
    pub(crate) max_weights_mib: Option<u64>,
}

impl WeightsArgs {
    fn options(&self) -> scalewise::weights::LoadOptions {
        let defaults = scalewise::weights::LoadOptions::default();
        scalewise::weights::LoadOptions {
            max_bytes: self.max_weights_mib.map_or(defaults.max_bytes, |m| m.saturating_mul(1 << 20)),
            allow_non_finite: self.allow_non_finite,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show the adapter, backend, driver, active features, key limits and kernel variants.
    Info,
    /// Generate images with a VAR or M-VAR model and its VQVAE (class-conditional, coarse to fine).
    Generate(generate::GenerateArgs),
    /// Convert a checkpoint (.pth or safetensors) to safetensors, optionally as f16 (half the size).
    Convert(ConvertArgs),
    /// List a model's classes (id and name), optionally only those matching a search.
    Classes(ClassesArgs),
    /// Benchmark kernels on this device.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Compile every kernel variant for an AMD GPU on RADV's null device (no GPU needed): VGPRs,
    /// spills, LDS, waves per SIMD per entry point, plus barriers and workgroup-memory words per FMA.
    ShaderStats(shader_stats::ShaderStatsArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// The checkpoint to read (torch.save .pth or safetensors).
    input: PathBuf,
    /// The safetensors file to write (atomically).
    output: PathBuf,
    /// Store the tensors as f16 instead of f32.
    #[arg(long)]
    f16: bool,
    #[command(flatten)]
    weights: WeightsArgs,
}

#[derive(Args)]
struct ClassesArgs {
    /// A VAR or M-VAR checkpoint (default: the demo model). 1000-class models without names of
    /// their own get ImageNet's.
    #[arg(long, value_name = "FILE", conflicts_with = "imagenet")]
    var: Option<PathBuf>,
    /// The ImageNet names (the official checkpoints' classes) without loading a file.
    #[arg(long)]
    imagenet: bool,
    /// Only the classes matching every one of these words: a word matches the names containing it,
    /// or the class with that number.
    search: Vec<String>,
    #[command(flatten)]
    weights: WeightsArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Square matmuls: tiled vs naive, f32 and f16; GFLOP/s per size.
    Matmul(MatmulArgs),
    /// Dense flash attention vs GRAT-B and GRAT-X: time, TFLOP/s over attended pairs, speedup
    /// against the dense kernel and against the density bound.
    Attention(AttentionArgs),
    /// The selective scan: time and GB/s against the bytes-moved model, vs a per-step loop.
    Scan(ScanArgs),
    /// One whole VAR or M-VAR generation with random weights of an official shape: per-scale and
    /// total time, transformer / Mamba / sampling / decode split, peak GPU memory; for M-VAR the
    /// carried Mamba state against the official recomputed prefix, end to end.
    Generate(generate::GenerateBenchArgs),
    /// Many demo generations in one process: resident memory and GPU pool size sampled after each,
    /// every image compared with the first of the same seed and class. Fails if memory grows past
    /// --max-growth-mib after the warm-up or an image differs.
    Soak(SoakArgs),
    /// The demo model with f32 and with f16 weights on this device, same seeds and classes: how many
    /// tokens per scale and how many images agree.
    Precision(PrecisionArgs),
    /// The device's own limits, to quote kernels against: an f32 FMA loop (TFLOP/s), a vec4 copy
    /// (GB/s) and the gap between back-to-back tiny dispatches (us). wgpu backends only.
    Peaks(PeaksArgs),
    /// Peak host memory while loading a synthetic checkpoint of an official shape (written to a
    /// temporary .pth first): streamed tensor by tensor, and with --eager also read whole first.
    Load(LoadArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// var or mvar.
    #[arg(long, default_value = "mvar", value_parser = ["var", "mvar"])]
    model: String,
    /// Official depth (M-VAR d24 is 1.55B parameters, a 6.2 GB file).
    #[arg(long, default_value_t = 24)]
    depth: usize,
    /// f16 or f32 weights on the device (default f16 where the device has SHADER_F16).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// Also load the file the old way (the whole state_dict in host memory, then uploaded).
    #[arg(long)]
    eager: bool,
    /// Where to write the synthetic checkpoint (a new file; removed afterwards).
    #[arg(long, default_value = "bench-results/synthetic-load.pth")]
    file: PathBuf,
    #[arg(long, default_value = "bench-results/load.json")]
    json: PathBuf,
}

#[derive(Args)]
struct PrecisionArgs {
    /// Seeds per class.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3])]
    seeds: Vec<u64>,
    #[arg(long, default_value = "bench-results/precision.json")]
    json: PathBuf,
}

#[derive(Args)]
struct SoakArgs {
    #[arg(long, default_value_t = 200)]
    generations: usize,
    /// Distinct (seed, class) pairs, cycled.
    #[arg(long, default_value_t = 5)]
    distinct: usize,
    /// Generations before the memory baseline.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// The most resident memory may grow after the warm-up, in MiB.
    #[arg(long, default_value_t = 8)]
    max_growth_mib: u64,
    /// f16 or f32 weights (default f16 where the device has SHADER_F16).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    #[arg(long, default_value = "bench-results/soak.json")]
    json: PathBuf,
}

#[derive(Args)]
struct ScanArgs {
    /// Shapes BxDxNxL (G = 1).
    #[arg(long, value_delimiter = ',', default_values = ["1x1536x16x2048", "8x2048x16x4096", "2x2048x64x680"], value_parser = parse_scan_shape)]
    shapes: Vec<[usize; 4]>,
    #[arg(long, value_delimiter = ',', default_values = ["f32", "f16"], value_parser = parse_dtype)]
    dtype: Vec<DType>,
    /// Run the per-step baseline up to this sequence length.
    #[arg(long, default_value_t = 2048)]
    naive_max_length: usize,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The device's measured copy bandwidth in GB/s, to print each result as a fraction of it.
    #[arg(long, value_parser = parse_positive)]
    copy_gbps: Option<f64>,
    /// Also time SSD's recurrent and chunked matrix forms at M-VAR d16's shape.
    #[arg(long)]
    ssd_forms: bool,
    #[arg(long, default_value = "bench-results/scan.json")]
    json: PathBuf,
}

fn parse_scan_shape(s: &str) -> Result<[usize; 4], String> {
    let dims: Result<Vec<usize>, _> = s.split('x').map(str::parse).collect();
    match dims.ok().and_then(|d| <[usize; 4]>::try_from(d).ok()) {
        Some(d) if !d.contains(&0) => Ok(d),
        _ => Err(format!("shape {s:?} must be BxDxNxL with sizes above 0")),
    }
}

#[derive(Args)]
struct PeaksArgs {
    /// FMA probe: workgroups of 256 threads.
    #[arg(long, default_value_t = PeaksConfig::default().fma_workgroups, value_parser = clap::value_parser!(u32).range(1..))]
    fma_workgroups: u32,
    /// FMA probe: iterations of 32 FMAs per thread [default: 4096, fewer where a run would take
    /// over half a second, as on a CPU adapter]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    fma_iters: Option<u32>,
    /// Copy probe: MiB read and written (capped by the adapter's binding limit).
    #[arg(long, default_value_t = PeaksConfig::default().copy_bytes >> 20, value_parser = clap::value_parser!(u64).range(1..))]
    copy_mib: u64,
    /// Dispatch-gap probe: empty dispatches in one pass.
    #[arg(long, default_value_t = PeaksConfig::default().dispatches)]
    dispatches: u32,
    #[arg(long, default_value_t = PeaksConfig::default().iterations)]
    iters: usize,
    #[arg(long, default_value_t = PeaksConfig::default().warmup)]
    warmup: usize,
    #[arg(long, default_value = "bench-results/peaks.json")]
    json: PathBuf,
}

#[derive(Args)]
struct AttentionArgs {
    /// Token grids: HxW for images, TxHxW for video (e.g. 64x64,8x12x20); 32x32,64x64 when neither
    /// this nor --kv-steps is given.
    #[arg(long, value_delimiter = ',', value_parser = parse_grid)]
    grids: Vec<Vec<usize>>,
    /// KV-cache steps ROWSxKEYS (e.g. 1x680,16x680: VAR's scales attending their cache), each timed
    /// with the blocks splitting their keys and, beside it, on a device that does not.
    #[arg(long, value_delimiter = ',', value_parser = parse_kv_step)]
    kv_steps: Vec<(usize, usize)>,
    /// Text tokens after the image tokens (all valid).
    #[arg(long, default_value_t = 0)]
    text: usize,
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    heads: usize,
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    #[arg(long, value_delimiter = ',', default_values = ["f32"], value_parser = parse_dtype)]
    dtype: Vec<DType>,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Skip the dense baseline above this many tokens.
    #[arg(long, default_value_t = 1 << 20)]
    dense_max_tokens: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/attention.json")]
    json: PathBuf,
}

fn parse_kv_step(s: &str) -> Result<(usize, usize), String> {
    match s.split_once('x').map(|(r, k)| (r.parse::<usize>(), k.parse::<usize>())) {
        Some((Ok(rows), Ok(keys))) if rows > 0 && keys > 0 => Ok((rows, keys)),
        _ => Err(format!("KV step {s:?} must be ROWSxKEYS with both above 0")),
    }
}

fn parse_grid(s: &str) -> Result<Vec<usize>, String> {
    let dims: Result<Vec<usize>, _> = s.split('x').map(str::parse).collect();
    match dims {
        Ok(d) if (2..=3).contains(&d.len()) && !d.contains(&0) => {
            // The kernels count tokens in u32.
            let tokens = d.iter().try_fold(1u32, |n, &axis| u32::try_from(axis).ok().and_then(|a| n.checked_mul(a)));
            tokens.map(|_| d).ok_or_else(|| format!("grid {s:?} has more than {} tokens", u32::MAX))
        }
        _ => Err(format!("grid {s:?} must be HxW or TxHxW with sizes above 0")),
    }
}

#[derive(Args)]
struct MatmulArgs {
    /// Comma-separated square sizes (n x n x n); 128,256,512 when neither this nor --linear is given.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Comma-separated Linear-like shapes MxKxN: an M x K input times an N x K weight, transposed
    /// (e.g. 2x1024x1024 for the conditioning of one image with guidance); run after the sizes.
    #[arg(long, value_delimiter = ',', value_parser = parse_linear_shape)]
    linear: Vec<MatmulShape>,
    /// Kernels to time: tiled, wide, skinny (shapes of at most 8 rows), naive, cooperative (f16 on
    /// matrix units, where the device has them), auto.
    #[arg(long, value_delimiter = ',', value_parser = parse_matmul_algorithm,
          default_values = ["tiled", "wide", "skinny", "naive", "cooperative", "auto"])]
    kernels: Vec<MatmulAlgorithm>,
    /// Storage types to measure (f16 is skipped without SHADER_F16).
    #[arg(long, value_delimiter = ',', default_values = ["f32", "f16"], value_parser = parse_dtype)]
    dtype: Vec<DType>,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Largest size (cube root of M x K x N) at which the naive baseline also runs.
    #[arg(long, default_value_t = 1024)]
    naive_max: usize,
    /// The device's f32 FMA peak in GFLOP/s, to print each result as a fraction of it.
    #[arg(long, value_parser = parse_positive)]
    peak_gflops: Option<f64>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/matmul.json")]
    json: PathBuf,
}

fn parse_linear_shape(s: &str) -> Result<MatmulShape, String> {
    let dims: Vec<usize> = s
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s:?} is not MxKxN: {e}"))?;
    match dims[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok(MatmulShape { m, k, n, transpose_b: true }),
        _ => Err(format!("{s:?} is not MxKxN with three sizes above 0")),
    }
}

fn parse_matmul_algorithm(s: &str) -> Result<MatmulAlgorithm, String> {
    MatmulAlgorithm::KERNELS
        .into_iter()
        .chain([MatmulAlgorithm::Auto])
        .find(|&a| bench::algorithm_name(a) == s)
        .ok_or_else(|| format!("unknown kernel {s:?} (expected tiled, wide, skinny, naive, cooperative or auto)"))
}

/// Refuses a list flag naming one entry twice: `--dtype f32,f32` printed the row twice, the second
/// as a ratio against itself.
fn refuse_repeats<T: PartialEq>(flag: &str, list: &[T], show: impl Fn(&T) -> String) -> anyhow::Result<()> {
    for (i, item) in list.iter().enumerate() {
        anyhow::ensure!(!list[..i].contains(item), "{flag} lists {} twice", show(item));
    }
    Ok(())
}

/// A rate or peak given by the user, which results are divided by: finite and above 0.
fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number above 0")),
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        other => Err(format!("unknown dtype {other:?} (expected f32 or f16)")),
    }
}

/// `scalewise classes`: no GPU; the checkpoint is read on the CPU (the whole file: the loader has no
/// header-only mode) for its shapes and metadata.
fn list_classes(args: &ClassesArgs) -> anyhow::Result<()> {
    let loaded;
    let (names, count): (&[String], usize) = if args.imagenet {
        (scalewise::labels::imagenet(), scalewise::labels::IMAGENET_CLASSES)
    } else {
        let sd = match &args.var {
            Some(path) => {
                check_input_file("--var", path)?;
                scalewise::weights::StateDict::load_with(path, &args.weights.options())?
            }
            None => scalewise_cli::demo::var_state_dict()?,
        };
        loaded = scalewise::generate::Transformer::infer_config(&sd)?;
        (loaded.class_names.as_deref().unwrap_or_default(), loaded.num_classes)
    };
    if names.is_empty() {
        outln!("this model's {count} classes have no names: use the numbers 0..={}", count.saturating_sub(1))?;
        return Ok(());
    }
    let ids = scalewise::labels::search(names, count, &args.search.join(" "));
    anyhow::ensure!(!ids.is_empty(), "no class name contains {:?}", args.search.join(" "));
    for id in ids {
        // Names come from the file: escaped, so they cannot move the cursor or spoof lines. A closed
        // pipe (`| head`) ends the listing quietly, as for every command.
        outln!("{id:>4}  {}", scalewise::error::shown(&names[id]))?;
    }
    Ok(())
}

/// On a headless Linux machine (no XDG_RUNTIME_DIR), Mesa's implicit Vulkan layer
/// VK_LAYER_MESA_device_select probes for a Wayland display while the adapters are enumerated, and
/// libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." twice before
/// anything else. The layer only reorders GPUs (scalewise ranks adapters itself), so there it is
/// switched off, unless the user asked for its selection (MESA_VK_DEVICE_SELECT, DRI_PRIME).
fn quiet_headless_vulkan_probe() {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let runtime_dir_ok = var("XDG_RUNTIME_DIR").is_some_and(|dir| Path::new(&dir).is_dir());
    if cfg!(target_os = "linux")
        && !runtime_dir_ok
        && var("NODEVICE_SELECT").is_none()
        && var("MESA_VK_DEVICE_SELECT").is_none()
        && var("DRI_PRIME").is_none()
    {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// The exit status for a closed standard output: what a shell reports for a process killed by
/// SIGPIPE (128 + 13), as `yes | head -1` gives, so scripts with `pipefail` see the same.
const CLOSED_PIPE_EXIT: u8 = 141;

fn main() -> ExitCode {
    quiet_headless_vulkan_probe();
    #[cfg(unix)]
    signals::clean_up_on_termination();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let stdout = error.chain().find_map(|e| e.downcast_ref::<out::StdoutError>());
            if stdout.is_some_and(out::StdoutError::is_closed_pipe) {
                // The reader went away (`| head`): quietly, as other Unix tools end.
                return ExitCode::from(CLOSED_PIPE_EXIT);
            }
            // A closed or full stderr loses the message but must not turn the error into a panic.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Interrupted runs leave nothing behind: SIGINT, SIGTERM and SIGHUP are taken by one thread, which
/// removes this process's partial files (`scalewise::output`'s registry: staged outputs, the
/// synthetic checkpoint of `bench load`) and then dies of the same signal, so the exit status still
/// says how the process ended (130 or 143 in a shell).
#[cfg(unix)]
mod signals {
    use std::mem::MaybeUninit;

    const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

    /// Must run before any other thread exists: threads inherit the signal mask of the thread that
    /// starts them, and a signal must reach the waiting thread, never another one (where its default
    /// action would kill the process with the partial files still there).
    pub(crate) fn clean_up_on_termination() {
        // SAFETY: plain libc calls on a local signal set; no other thread exists yet.
        unsafe {
            // Past `ulimit -f` a write then fails with EFBIG, which the writer's error path reports
            // and cleans up after, instead of SIGXFSZ killing the process with its partial file.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut set = empty_set();
            for signal in HANDLED {
                // A signal ignored by whoever started us (`nohup`, a background job of a
                // non-interactive shell) stays ignored.
                let mut current = MaybeUninit::<libc::sigaction>::zeroed();
                if libc::sigaction(signal, std::ptr::null(), current.as_mut_ptr()) == 0
                    && current.assume_init().sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                libc::sigaddset(&mut set, signal);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return;
            }
            let waiter = std::thread::Builder::new().name("signals".into()).spawn(move || wait(set));
            if waiter.is_err() {
                // Without the thread the signals keep their default action.
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            }
        }
    }

    fn wait(set: libc::sigset_t) {
        let mut signal = 0;
        // SAFETY: sigwait on a set built by clean_up_on_termination.
        while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
        // Held until the process ends: no file is created or committed after the clean-up.
        let _partials = scalewise::output::remove_partials();
        // SAFETY: restores the default action and delivers the signal to this thread, which
        // terminates the process as the signal would have without the clean-up.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            let mut one = empty_set();
            libc::sigaddset(&mut one, signal);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
            libc::raise(signal);
        }
        // Not reached; should the signal not end the process, end it as a shell would report.
        std::process::exit(128 + signal);
    }

    fn empty_set() -> libc::sigset_t {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            set.assume_init()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { device, command } = cli;
    // Convert, classes and shader-stats need no GPU; the others open the device first.
    match command {
        Command::Convert(args) => convert(&args),
        Command::Classes(args) => list_classes(&args),
        Command::Info => info(&device.open()?),
        Command::Generate(args) => {
            // Arguments and output targets first: a bad one is refused before the device opens.
            let outputs = generate::check_args(&args)?;
            generate::generate(&device.open()?, &args, outputs)
        }
        Command::Bench(BenchCommand::Generate(args)) => generate::bench_generate(&device.open()?, &args),
        Command::Bench(BenchCommand::Matmul(args)) => bench_matmul(&device.open()?, &args),
        Command::Bench(BenchCommand::Attention(args)) => bench_attention(&device, &args),
        Command::Bench(BenchCommand::Scan(args)) => bench_scan(&device.open()?, &args),
        Command::Bench(BenchCommand::Soak(args)) => bench_soak(&device.open()?, &args),
        Command::Bench(BenchCommand::Precision(args)) => bench_precision(&device.open()?, &args),
        Command::Bench(BenchCommand::Load(args)) => bench_load(&device.open()?, &args),
        Command::Bench(BenchCommand::Peaks(args)) => bench_peaks(&device.open()?, &args),
        Command::ShaderStats(args) => shader_stats::run(&args),
    }
}

fn convert(args: &ConvertArgs) -> anyhow::Result<()> {
    check_input_file("input", &args.input)?;
    anyhow::ensure!(!generate::same_existing_file(&args.input, &args.output), "the output must differ from the input");
    // The target is checked (and its temporary file created) before the input is read.
    let mut staged = scalewise::output::StagedOutput::create(&args.output)?;
    let sd = scalewise::weights::StateDict::load_with(&args.input, &args.weights.options())?;
    sd.check_finite()?;
    let dtype = if args.f16 { DType::F16 } else { DType::F32 };
    staged.write_all(&sd.to_safetensors_bytes(dtype)?)?;
    staged.commit()?;
    outln!("wrote {} tensors ({dtype}) to {}", sd.len(), shown_path(&args.output))?;
    let wide = if args.f16 { sd.beyond_f16() } else { Vec::new() };
    if !wide.is_empty() {
        let names: Vec<_> = wide.iter().take(5).map(|key| scalewise::error::shown(key)).collect();
        let more = if wide.len() > 5 { format!(" and {} more", wide.len() - 5) } else { String::new() };
        errln!("kept in f32, for values beyond f16's range: {}{more}", names.join(", "));
    }
    // Integer and bool buffers are not weights and are left out; say which, in case one was meant to be.
    if !sd.skipped.is_empty() {
        const SHOWN: usize = 5;
        let mut names: Vec<String> = sd
            .skipped
            .iter()
            .take(SHOWN)
            .map(|(key, t)| format!("{} ({} {:?})", scalewise::error::shown(key), t.dtype, t.shape))
            .collect();
        if sd.skipped.len() > SHOWN {
            names.push(format!("and {} more", sd.skipped.len() - SHOWN));
        }
        let count = sd.skipped.len();
        let noun = if count == 1 { "tensor that is" } else { "tensors that are" };
        errln!("left out {count} {noun} not floating point: {}", names.join(", "));
    }
    Ok(())
}

fn info(device: &Device) -> anyhow::Result<()> {
    let info = device.info();
    let a = &info.adapter;
    outln!("adapter   {}", a.name)?;
    outln!("backend   {}", a.backend)?;
    outln!("type      {}", a.device_type)?;
    outln!("driver    {} {}", a.driver, a.driver_info)?;
    outln!("pci ids   vendor {:#06x} device {:#06x}", a.vendor_id, a.device_id)?;
    let c = info.caps;
    let on = |b: bool| if b { "yes" } else { "no" };
    outln!("features  f16 {}  subgroups {}  timestamps {}", on(c.f16), on(c.subgroups), on(c.timestamps))?;
    if c.subgroups {
        outln!("subgroups size {}..{}", c.subgroup_sizes.0, c.subgroup_sizes.1)?;
    }
    outln!("cpu adapter {}", on(c.is_cpu))?;
    let units = match c.matrix_units {
        MatrixUnits::Native if info.cuda.is_some() => "tensor cores (matmul_coop: mma.sync)",
        MatrixUnits::Native => "cooperative matrices, 16x16x16 f16 -> f32 (matmul_coop, experimental in wgpu)",
        MatrixUnits::Emulated => "emulated in plain WGSL (tests only)",
        MatrixUnits::None => "none (f16 matmuls on the scalar kernels)",
    };
    outln!("matrix units {units}")?;
    if info.cuda.is_none() {
        let listed = &info.adapter.cooperative_matrices;
        let listed = if listed.is_empty() { "none".to_string() } else { listed.join(", ") };
        outln!("  cooperative matrices listed by the adapter: {listed}")?;
    }
    if c.matrix_units == MatrixUnits::Native {
        match scalewise::ops::matmul::matrix_units_verified(device) {
            Ok(()) => outln!("  self-check          passed: f16 matmuls use them")?,
            Err(reason) => outln!("  self-check          FAILED, f16 matmuls stay on the scalar kernels: {reason}")?,
        }
        match scalewise::ops::attention_units_verified(device) {
            Ok(()) => outln!("  attention check     passed: f16 attention of 32+ rows per block uses them")?,
            Err(reason) => outln!("  attention check     FAILED, f16 attention stays on the scalar kernel: {reason}")?,
        }
        match scalewise::ops::conv_units_verified(device) {
            Ok(()) => outln!("  conv2d check        passed: f16 convolutions of 64+ channels use them")?,
            Err(reason) => {
                outln!("  conv2d check        FAILED, f16 convolutions stay on the implicit GEMM: {reason}")?
            }
        }
    }
    if let Some(cuda) = &info.cuda {
        outln!("cuda      {}", cuda.executor)?;
        if let Some((major, minor)) = cuda.compute_capability {
            outln!("  compute capability  {major}.{minor} (sm_{major}{minor})")?;
        }
        if let Some((major, minor)) = cuda.nvrtc_version {
            outln!("  NVRTC               {major}.{minor}")?;
        }
        if let Some(total) = cuda.total_memory {
            outln!("  memory              {}", bytes(total))?;
        }
        outln!("  tensor cores        {}", on(cuda.tensor_cores))?;
    }
    outln!("limits")?;
    outln!("  buffer                      {}", bytes(c.max_buffer_bytes))?;
    outln!("  kernel argument             {}", bytes(c.max_arg_bytes))?;
    outln!("  workgroup memory            {}", bytes(c.shared_memory_bytes as u64))?;
    outln!("  threads per workgroup       {}", c.max_threads_per_group)?;
    outln!("  workgroups per dimension    {}", c.max_groups_per_dim)?;
    outln!("  storage buffers per kernel  {}", c.max_storage_args)?;
    outln!("kernel variants")?;
    for (what, variant) in info.kernel_variants() {
        outln!("  {what:<32} {variant}")?;
    }
    let (runs, missing): (Vec<Family>, Vec<Family>) =
        Family::ALL.iter().partition(|f| f.dtypes().iter().any(|&dtype| device.supports(**f, dtype)));
    let names = |list: &[Family]| list.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
    outln!("kernel families  {}", names(&runs))?;
    if !missing.is_empty() {
        outln!("not on this backend  {}", names(&missing))?;
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB ({n})", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB ({n})", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB ({n})", n as f64 / 1024.0)
    }
}

fn bench_peaks(device: &Device, args: &PeaksArgs) -> anyhow::Result<()> {
    results_target("--json", &args.json)?;
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    let config = PeaksConfig {
        fma_workgroups: args.fma_workgroups,
        fma_iters: args.fma_iters.unwrap_or(PeaksConfig::default().fma_iters),
        fit_fma_iters: args.fma_iters.is_none(),
        copy_bytes: args.copy_mib.checked_mul(1 << 20).context("--copy-mib is too large")?,
        dispatches: args.dispatches,
        warmup: args.warmup,
        iterations: args.iters,
    };
    let info = device.info();
    outln!("peaks on {} ({}), best of {} runs (the gap: median)", info.adapter.name, info.adapter.backend, args.iters)?;
    let rows = peaks::peaks(device, &config)?;
    report(&args.json, &peaks::peaks_json(device, &config, &rows), || {
        outln!("{:>13} {:>11} {:>14}  what", "probe", "median ms", "value")?;
        for r in &rows {
            outln!("{:>13} {:>11.3} {:>9.3} {:<4}  {}", r.probe, r.median_ms, r.value, r.unit, r.detail)?;
        }
        Ok(())
    })
}

fn bench_matmul(device: &Device, args: &MatmulArgs) -> anyhow::Result<()> {
    results_target("--json", &args.json)?;
    anyhow::ensure!(!args.sizes.contains(&0), "--sizes must list sizes above 0");
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    anyhow::ensure!(!args.kernels.is_empty(), "--kernels must list at least one kernel");
    refuse_repeats("--sizes", &args.sizes, usize::to_string)?;
    refuse_repeats("--linear", &args.linear, MatmulShape::label)?;
    refuse_repeats("--kernels", &args.kernels, |&k| bench::algorithm_name(k))?;
    refuse_repeats("--dtype", &args.dtype, DType::to_string)?;
    let config = MatmulBenchConfig {
        shapes: if args.sizes.is_empty() && args.linear.is_empty() {
            MatmulBenchConfig::default().shapes
        } else {
            args.sizes.iter().map(|&size| MatmulShape::square(size)).chain(args.linear.iter().copied()).collect()
        },
        dtypes: args.dtype.clone(),
        algorithms: args.kernels.clone(),
        naive_max_size: args.naive_max,
        warmup: args.warmup,
        iterations: args.iters,
    };
    let info = device.info();
    outln!("matmul on {} ({}), median of {} runs", info.adapter.name, info.adapter.backend, args.iters)?;
    let rows = bench::matmul(device, &config)?;
    report(&args.json, &bench::matmul_json(device, &rows), || print_matmul(args, &rows))
}

fn print_matmul(args: &MatmulArgs, rows: &[bench::MatmulBenchRow]) -> anyhow::Result<()> {
    outln!(
        "{:>16} {:>5} {:>15} {:>11} {:>11} {:>9} {:>9}",
        "shape",
        "dtype",
        "kernel",
        "median ms",
        "GFLOP/s",
        "vs tiled",
        "vs naive"
    )?;
    let versus = |r: &bench::MatmulBenchRow, baseline: MatmulAlgorithm| {
        rows.iter()
            .find(|o| o.shape == r.shape && o.dtype == r.dtype && o.algorithm == baseline)
            .map(|o| format!("{:.2}x", o.median_ms / r.median_ms))
            .unwrap_or_else(|| "-".into())
    };
    for r in rows {
        let peak = args.peak_gflops.map(|p| format!("  {:.1}% of peak", 100.0 * r.gflops / p)).unwrap_or_default();
        let kernel = if r.algorithm == MatmulAlgorithm::Auto {
            format!("auto ({})", bench::algorithm_name(r.kernel))
        } else {
            bench::algorithm_name(r.algorithm)
        };
        outln!(
            "{:>16} {:>5} {:>15} {:>11.3} {:>11.2} {:>9} {:>9}{peak}",
            r.shape.label(),
            r.dtype.to_string(),
            kernel,
            r.median_ms,
            r.gflops,
            versus(r, MatmulAlgorithm::Tiled),
            versus(r, MatmulAlgorithm::Naive),
        )?;
    }
    if let Some(first) = rows.first() {
        outln!("timing: {:?}", first.timing)?;
    }
    Ok(())
}

fn bench_attention(device_args: &DeviceArgs, args: &AttentionArgs) -> anyhow::Result<()> {
    results_target("--json", &args.json)?;
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    refuse_repeats("--grids", &args.grids, |g| g.iter().map(usize::to_string).collect::<Vec<_>>().join("x"))?;
    refuse_repeats("--kv-steps", &args.kv_steps, |(rows, keys)| format!("{rows}x{keys}"))?;
    refuse_repeats("--dtype", &args.dtype, DType::to_string)?;
    let device = &device_args.open()?;
    let grids = if args.grids.is_empty() && args.kv_steps.is_empty() {
        vec![vec![32, 32], vec![64, 64]]
    } else {
        args.grids.clone()
    };
    let config = AttentionBenchConfig {
        cases: grids.iter().map(|g| AttentionCase { grid: g.clone(), text: args.text }).collect(),
        heads: args.heads,
        head_dim: args.head_dim,
        dtypes: args.dtype.clone(),
        dense_max_tokens: args.dense_max_tokens,
        warmup: args.warmup,
        iterations: args.iters,
    };
    bench::kv_steps_fit(device, &args.kv_steps, &config)?;
    let info = device.info();
    outln!(
        "attention on {} ({}): {} heads, head_dim {}, {} text tokens, median of {} runs",
        info.adapter.name,
        info.adapter.backend,
        args.heads,
        args.head_dim,
        args.text,
        args.iters
    )?;
    let rows = bench::attention(device, &config)?;
    let mut json = bench::attention_json(device, &rows);
    // Measured before anything is printed: a closed standard output then loses no measurement.
    let mut steps = Vec::new();
    if !args.kv_steps.is_empty() {
        let one_slice = Device::new(&DeviceOptions { allow_key_split: false, ..device_args.options()? })?;
        steps = bench::kv_steps(device, &one_slice, &args.kv_steps, &config)?;
        json["kv_steps"] = bench::kv_steps_json(&steps);
    }
    report(&args.json, &json, || print_attention(&rows, &steps))
}

fn print_attention(rows: &[bench::AttentionBenchRow], steps: &[bench::KvStepRow]) -> anyhow::Result<()> {
    outln!(
        "{:>12} {:>5} {:>14} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "grid",
        "dtype",
        "kernel",
        "median ms",
        "TFLOP/s",
        "speedup",
        "bound",
        "of bound"
    )?;
    for r in rows {
        let grid = r.grid.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
        let opt = |v: Option<f64>, suffix: &str| v.map_or("-".into(), |v| format!("{v:.2}{suffix}"));
        outln!(
            "{:>12} {:>5} {:>14} {:>11.3} {:>9.4} {:>9} {:>9.1} {:>9}",
            grid,
            r.dtype.to_string(),
            r.kernel,
            r.median_ms,
            r.tflops,
            opt(r.speedup_vs_dense, "x"),
            r.density_bound,
            opt(r.bound_fraction().map(|f| f * 100.0), "%")
        )?;
    }
    if steps.is_empty() {
        return Ok(());
    }
    outln!("KV-cache steps: ROWS new queries per head over KEYS cached keys")?;
    outln!(
        "{:>6} {:>6} {:>5} {:>7} {:>7} {:>11} {:>9}",
        "rows",
        "keys",
        "dtype",
        "block_q",
        "slices",
        "median ms",
        "speedup"
    )?;
    for r in steps {
        outln!(
            "{:>6} {:>6} {:>5} {:>7} {:>7} {:>11.3} {:>8.2}x",
            r.rows,
            r.keys,
            r.dtype.to_string(),
            r.block_q,
            r.key_slices,
            r.median_ms,
            r.speedup_vs_one_slice
        )?;
    }
    Ok(())
}

fn bench_scan(device: &Device, args: &ScanArgs) -> anyhow::Result<()> {
    results_target("--json", &args.json)?;
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    refuse_repeats("--shapes", &args.shapes, |s| s.map(|d| d.to_string()).join("x"))?;
    refuse_repeats("--dtype", &args.dtype, DType::to_string)?;
    let config = ScanBenchConfig {
        shapes: args.shapes.clone(),
        dtypes: args.dtype.clone(),
        naive_max_length: args.naive_max_length,
        warmup: args.warmup,
        iterations: args.iters,
    };
    let info = device.info();
    outln!("selective scan on {} ({}), median of {} runs", info.adapter.name, info.adapter.backend, args.iters)?;
    let rows = bench::scan(device, &config)?;
    let mut json = bench::scan_json(device, &rows);
    // Measured before anything is printed: a closed standard output then loses no measurement.
    let mut forms = Vec::new();
    if args.ssd_forms {
        for &dtype in &args.dtype {
            if dtype == DType::F16 && !device.caps().f16 {
                continue;
            }
            forms.push(bench::ssd_forms(device, dtype, args.warmup, args.iters)?);
        }
        json["ssd_forms"] = forms
            .iter()
            .map(|f| {
                serde_json::json!({
                    "shape_b_l_h_p_n": f.shape, "dtype": f.dtype.to_string(),
                    "recurrent_ms": f.recurrent_ms,
                    "chunked_matrix_ms": f.matrix_ms.iter().map(|(q, ms)| serde_json::json!({"chunk": q, "ms": ms})).collect::<Vec<_>>(),
                    "matrix_products_lower_bound_ms": f.matrix_products_lower_bound_ms,
                })
            })
            .collect();
    }
    report(&args.json, &json, || print_scan(args, &rows, &forms))
}

fn print_scan(args: &ScanArgs, rows: &[bench::ScanBenchRow], forms: &[bench::SsdFormComparison]) -> anyhow::Result<()> {
    outln!(
        "{:>20} {:>5} {:>9} {:>11} {:>10} {:>9}",
        "B x D x N x L",
        "dtype",
        "kernel",
        "median ms",
        "GB/s",
        "speedup"
    )?;
    for r in rows {
        let shape = r.shape.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
        if let Some(why) = &r.skipped {
            outln!("{shape:>20} {:>5} skipped: {why}", r.dtype.to_string())?;
            continue;
        }
        let chunked = rows.iter().find(|c| c.shape == r.shape && c.dtype == r.dtype && c.kernel == "chunked");
        let speedup = chunked
            .filter(|_| r.kernel == "per-step")
            .map_or("-".into(), |c| format!("{:.1}x", r.median_ms / c.median_ms));
        let fraction = args.copy_gbps.map(|c| format!("  {:.1}% of copy", 100.0 * r.gbps / c)).unwrap_or_default();
        outln!(
            "{shape:>20} {:>5} {:>9} {:>11.3} {:>10.2} {:>9}{fraction}",
            r.dtype.to_string(),
            r.kernel,
            r.median_ms,
            r.gbps,
            speedup
        )?;
    }
    for f in forms {
        let matrix: Vec<String> =
            f.matrix_ms.iter().map(|(q, ms)| format!("chunked matrix Q={q} {ms:.3} ms")).collect();
        outln!(
            "SSD (B, L, H, P, N) = {:?} {}: recurrent {:.3} ms, {}, matrix-form products alone (Q=256) {:.3} ms",
            f.shape,
            f.dtype,
            f.recurrent_ms,
            matrix.join(", "),
            f.matrix_products_lower_bound_ms
        )?;
    }
    Ok(())
}

fn bench_soak(device: &Device, args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.generations) && args.warmup < args.generations,
        "--generations must be in 1..=1000000 and above --warmup"
    );
    // Each pair is generated once to take its image and then again to compare: fewer generations
    // than twice the pairs would leave some, or all, never compared.
    anyhow::ensure!(
        args.distinct >= 1 && args.distinct.saturating_mul(2) <= args.generations,
        "--distinct {} must be at least 1 and at most half of --generations ({}), so that every pair repeats",
        args.distinct,
        args.generations
    );
    results_target("--json", &args.json)?;
    let config = bench::SoakConfig {
        generations: args.generations,
        distinct: args.distinct,
        warmup: args.warmup,
        dtype: args.dtype,
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    outln!(
        "soak: {} demo generations on {}, {} distinct seeds",
        args.generations,
        device.info().adapter.name,
        args.distinct
    )?;
    outln!("{:>10} {:>10} {:>14} {:>14} {:>9}", "generation", "RSS MiB", "pool live MiB", "pool cache MiB", "ms")?;
    let every = (args.generations / 20).max(1);
    // The soak goes on when standard output fails (its results go to --json), with the first
    // failure kept for the end.
    let mut progress = Ok(());
    let result = bench::soak(device, &config, |s| {
        if progress.is_ok() && (s.generation % every == 0 || s.generation + 1 == args.generations) {
            progress = outln!(
                "{:>10} {:>10} {:>14.2} {:>14.2} {:>9.0}",
                s.generation,
                s.rss_bytes.map_or("-".into(), |b| format!("{:.1}", mib(b))),
                mib(s.pool_live_bytes),
                mib(s.pool_cached_bytes),
                s.wall_ms
            );
        }
    })?;
    let rss_growth = result.rss_growth(args.warmup);
    let pool_growth = result.pool_growth(args.warmup);
    let walls: Vec<f64> = result.samples.iter().map(|s| s.wall_ms).collect();
    let json = serde_json::json!({
        "adapter": device.info().adapter.name,
        "generations": args.generations, "distinct": args.distinct, "warmup": args.warmup,
        "rss_growth_bytes": rss_growth, "pool_growth_bytes": pool_growth,
        "compared": result.compared, "mismatches": result.mismatches,
        "wall_ms": walls,
        "rss_bytes": result.samples.iter().map(|s| s.rss_bytes).collect::<Vec<_>>(),
        "pool_bytes": result.samples.iter().map(|s| s.pool_live_bytes + s.pool_cached_bytes).collect::<Vec<_>>(),
    });
    report(&args.json, &json, || {
        progress?;
        outln!(
            "after the {} warm-up generations: RSS {} MiB, GPU pool {} MiB; {} of {} repeated generations bit-identical",
            args.warmup,
            rss_growth.map_or("n/a".into(), |g| format!("{:+.2}", g as f64 / (1 << 20) as f64)),
            pool_growth.map_or("n/a".into(), |g| format!("{:+.2}", g as f64 / (1 << 20) as f64)),
            result.compared - result.mismatches.len(),
            result.compared
        )?;
        Ok(())
    })?;
    anyhow::ensure!(
        result.mismatches.is_empty(),
        "generations {:?} differ from the first of their seed",
        result.mismatches
    );
    if let Some(growth) = rss_growth {
        anyhow::ensure!(
            growth
                <= i64::try_from(args.max_growth_mib).ok().and_then(|mib| mib.checked_mul(1 << 20)).unwrap_or(i64::MAX),
            "resident memory grew by {:.1} MiB after the warm-up (limit {} MiB)",
            growth as f64 / (1 << 20) as f64,
            args.max_growth_mib
        );
    }
    Ok(())
}

fn bench_precision(device: &Device, args: &PrecisionArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.seeds.is_empty() && args.seeds.len() <= 1000, "--seeds must list 1 to 1000 seeds");
    refuse_repeats("--seeds", &args.seeds, u64::to_string)?;
    results_target("--json", &args.json)?;
    let r = bench::precision(device, &args.seeds)?;
    let json = serde_json::json!({
        "adapter": device.info().adapter.name, "seeds": args.seeds, "runs": r.runs,
        "scales": r.scales.iter().map(|(side, equal, total)| serde_json::json!({"side": side, "equal": equal, "total": total})).collect::<Vec<_>>(),
        "identical_tokens": r.identical_tokens, "identical_images": r.identical_images,
    });
    report(&args.json, &json, || {
        outln!("demo model, f32 vs f16 weights on {}: {} generations each", device.info().adapter.name, r.runs)?;
        outln!("{:>5} {:>7} {:>16}", "scale", "side", "tokens agreeing")?;
        for (i, (side, equal, total)) in r.scales.iter().enumerate() {
            outln!("{i:>5} {side:>7} {:>9.1}% of {total}", 100.0 * *equal as f64 / (*total).max(1) as f64)?;
        }
        outln!(
            "whole token sequences equal: {} of {}; final images bit-identical: {} of {}",
            r.identical_tokens,
            r.runs,
            r.identical_images,
            r.runs
        )?;
        Ok(())
    })
}

fn bench_load(device: &Device, args: &LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=64).contains(&args.depth), "--depth must be in 1..=64");
    results_target("--json", &args.json)?;
    results_target("--file", &args.file)?;
    anyhow::ensure!(!args.file.exists(), "--file {} exists; the benchmark writes a new file", shown_path(&args.file));
    anyhow::ensure!(
        !generate::same_file(&args.file, &args.json),
        "--file and --json name the same file {}",
        shown_path(&args.file)
    );
    create_parent(&args.file)?;
    let model = if args.model == "var" { bench::BenchModel::Var } else { bench::BenchModel::Mvar };
    let config = bench::LoadBenchConfig {
        model,
        depth: args.depth,
        dtype: args.dtype.unwrap_or(device.preferred_float()),
        file: args.file.clone(),
        keep: false,
        eager: args.eager,
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    outln!("writing a synthetic {} d{} checkpoint to {} ...", args.model, args.depth, shown_path(&args.file))?;
    let r = bench::load(device, &config)?;
    // Each measure as a line of the table and as JSON.
    let row = |name: &str, m: &bench::LoadMeasure| {
        let peak = m.peak_rss_growth;
        let host = peak.map(|p| if device.caps().is_cpu { p.saturating_sub(m.gpu_bytes) } else { p });
        let line = format!(
            "{name:>9}: {:6.1} s, peak RSS growth {} GiB, model on the device {:.2} GiB, host memory beyond the device's {} GiB",
            m.seconds,
            peak.map_or("n/a".into(), |p| format!("{:.2}", gib(p))),
            gib(m.gpu_bytes),
            host.map_or("n/a".into(), |h| format!("{:.2}", gib(h))),
        );
        let json = serde_json::json!({"seconds": m.seconds, "peak_rss_growth_bytes": peak, "device_bytes": m.gpu_bytes, "host_beyond_device_bytes": host});
        (line, json)
    };
    let (streamed_line, streamed) = row("streamed", &r.streamed);
    let (eager_line, eager) = r.eager.as_ref().map(|m| row("eager", m)).unzip();
    let json = serde_json::json!({
        "adapter": device.info().adapter.name, "cpu_adapter": device.caps().is_cpu,
        "model": args.model, "depth": args.depth, "dtype": config.dtype.to_string(),
        "file_bytes": r.file_bytes, "tensors": r.tensors, "parameters": r.parameters,
        "largest_tensor_f32_bytes": r.largest_tensor_bytes, "streamed": streamed, "eager": eager,
    });
    report(&args.json, &json, || {
        outln!(
            "{} tensors, {:.2}B parameters, {:.2} GiB file, largest tensor {:.0} MiB in f32; {} weights on {} ({})",
            r.tensors,
            r.parameters as f64 / 1e9,
            gib(r.file_bytes),
            r.largest_tensor_bytes as f64 / (1 << 20) as f64,
            config.dtype,
            device.info().adapter.name,
            if device.caps().is_cpu { "a CPU adapter: its GPU memory is host memory" } else { "GPU memory separate" },
        )?;
        for line in std::iter::once(&streamed_line).chain(&eager_line) {
            outln!("{line}")?;
        }
        Ok(())
    })
}

/// Checks an output's target before a benchmark runs, so a bad path fails at once rather than after
/// the measurements. Nothing is created: a refused run leaves no folder behind. A missing folder is
/// made when the results are written ([`create_parent`]); here its nearest existing ancestor must be
/// a folder.
pub(crate) fn results_target(flag: &str, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && std::fs::symlink_metadata(dir).is_err()
    {
        let existing = dir.ancestors().skip(1).find(|a| a.as_os_str().is_empty() || std::fs::metadata(a).is_ok());
        let existing = match existing {
            Some(a) if !a.as_os_str().is_empty() => a,
            _ => Path::new("."),
        };
        anyhow::ensure!(existing.is_dir(), "{flag} {}: {} is not a folder", shown_path(path), shown_path(existing));
        // The folders will be made inside it: a test folder made and removed proves that they can be.
        let test = existing.join(format!(".scalewise-test-{}", std::process::id()));
        std::fs::create_dir(&test)
            .with_context(|| format!("{flag} {}: cannot make folders in {}", shown_path(path), shown_path(existing)))?;
        let _ = std::fs::remove_dir(&test);
        return Ok(());
    }
    scalewise::output::check_target(path).with_context(|| flag.to_string())?;
    Ok(())
}

/// Creates the folder `path` lies in, where missing.
pub(crate) fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", shown_path(dir)))?;
    }
    Ok(())
}

/// Writes a benchmark's JSON results atomically (creating the folder first) and says where.
pub(crate) fn write_results(path: &Path, json: &serde_json::Value) -> anyhow::Result<()> {
    create_parent(path)?;
    scalewise::output::write_atomic(path, serde_json::to_string_pretty(json)?.as_bytes())?;
    outln!("wrote {}", shown_path(path))?;
    Ok(())
}

/// Prints a benchmark's table (`print`) and writes its JSON results, the file whatever became of
/// the table: a closed or full standard output (`| head -1`) must not lose the measurements. A
/// failed write is the error reported before a failed print.
pub(crate) fn report(
    path: &Path,
    json: &serde_json::Value,
    print: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let printed = print();
    write_results(path, json).and(printed)
}
