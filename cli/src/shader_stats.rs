//! `scalewise shader-stats`: every kernel family, variant and entry point compiled by a real GPU
//! compiler without the GPU (AMD's ACO through RADV's null device), with its register, spill, LDS
//! and occupancy statistics, beside static counts from naga's IR.
//!
//! Each WGSL module is composed as the wgpu backend composes it, its overrides take their default
//! values (what a launch without constants gets; the attention entries also get the constants of
//! KV-cache steps, whose blocks split their keys), and naga writes the SPIR-V with the options wgpu
//! uses on Vulkan (index clamping, no buffer bounds checks under robust buffer access 2, bounded
//! loops, no workgroup zero-initialisation, which the library switches off).

mod counts;
mod radv;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use scalewise::DType;
use scalewise::device::wgsl::{compose, variants};
use scalewise::error::shown_path;
use scalewise::kernels::Family;
use serde_json::json;

pub use radv::RadvError;

#[derive(Args)]
pub struct ShaderStatsArgs {
    /// The AMD GPU family RADV compiles for (RADV_FORCE_FAMILY): gfx1100 (RDNA3), gfx1030 (RDNA2),
    /// gfx90a (CDNA2), ...
    #[arg(long, default_value = "gfx1100")]
    target: String,
    #[arg(long, default_value = "bench-results/shader-stats.json")]
    json: PathBuf,
    /// The RADV driver's manifest (an ICD JSON file) to compile with, e.g. a newer Mesa unpacked
    /// beside the system's (default: the system's radeon_icd*.json).
    #[arg(long)]
    icd: Option<PathBuf>,
}

/// Refuses a `--target` that is no GPU family name as RADV_FORCE_FAMILY spells them (gfx1100,
/// navi21: letters, digits and `_`), so that what reaches the child's environment and the messages
/// is never a terminal escape or a line break. Checked here rather than by clap, whose message would
/// echo the value unescaped.
fn check_target_name(target: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !target.is_empty() && target.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "--target {}: not a GPU family name (letters, digits and _, such as gfx1100)",
        scalewise::error::shown(target)
    );
    Ok(())
}

/// Attention entry points compiled again with the constants of VAR-d16's KV-cache steps (head_dim
/// 64, ROWS new queries over KEYS keys, tiled for this RDNA3 target), as launched: the first two
/// split their keys (`AttentionTiles::key_slices`), code the defaults (one slice) fold away; the
/// last is the last scale's.
const KV_STEP_ENTRIES: &[(Family, &str)] =
    &[(Family::Attention, "flash_attention"), (Family::QkvHeads, "qkv_attention")];
const KV_STEPS: &[(usize, usize)] = &[(1, 680), (16, 680), (256, 680)];

/// Entry points on the scalar attention machinery (attention_tile.wgsl), whose default row is
/// compiled with the constants the host launches for many rows (`MANY_ROWS`) on this target, in
/// the variant's flavour: its rows per thread and exchange differ with subgroups, and its overrides'
/// defaults are the launch without them.
const TILE_ENTRIES: &[(Family, &str)] = &[
    (Family::Attention, "flash_attention"),
    (Family::Attention, "grouped_attention"),
    (Family::QkvHeads, "qkv_attention"),
];
const MANY_ROWS: (usize, usize) = (256, 680);

/// Entry points on the matrix-unit attention machinery (attention_coop.wgsl), whose default row is
/// compiled with the tiles the host launches for many rows at head_dim 64 on this target (both
/// flavours: the emulation's virtual subgroups take the same tiles).
const COOP_TILE_ENTRIES: &[(Family, &str)] = &[
    (Family::AttentionCoop, "flash_attention"),
    (Family::AttentionCoop, "grouped_attention"),
    (Family::QkvAttentionCoop, "qkv_attention"),
];

/// The limits attention tiles are sized for: RDNA3's 64 KiB of LDS per workgroup, 1024 invocations,
/// subgroups of 32 or 64 lanes (`subgroups`: whether the variant uses them).
fn rdna3_caps(subgroups: bool) -> scalewise::Caps {
    scalewise::Caps {
        f16: true,
        subgroups,
        subgroup_sizes: (32, 64),
        timestamps: true,
        shared_memory_bytes: 65536,
        max_threads_per_group: 1024,
        max_groups_per_dim: 65535,
        max_storage_args: 16,
        max_arg_bytes: 1 << 31,
        max_buffer_bytes: 1 << 31,
        is_cpu: false,
        matrix_units: scalewise::MatrixUnits::Native,
        attention: scalewise::AttentionDesign::RowsInRegisters,
        attention_key_split: true,
        attention_staged_scores: true,
        attention_staged_key_slices: true,
    }
}

/// The named launch configurations `entry` of `family` is compiled with in a variant with or without
/// `subgroups`: the defaults (for the attention machinery's entries, the launch of many rows), then
/// the KV steps of the attention entries.
fn launches(
    family: Family,
    entry: &str,
    subgroups: bool,
) -> anyhow::Result<Vec<(Option<String>, naga::back::PipelineConstants)>> {
    let caps = rdna3_caps(subgroups);
    let named = |constants: scalewise::kernels::Constants| -> naga::back::PipelineConstants {
        constants.values().iter().map(|&(name, value)| (name.to_string(), value.as_f64())).collect()
    };
    let launch = |rows: usize, keys: usize| -> anyhow::Result<naga::back::PipelineConstants> {
        Ok(named(scalewise::ops::attention_tiles_for(&caps, 64, rows, keys)?.constants(family, 64)))
    };
    let defaults = if TILE_ENTRIES.contains(&(family, entry)) {
        launch(MANY_ROWS.0, MANY_ROWS.1)?
    } else if COOP_TILE_ENTRIES.contains(&(family, entry)) {
        let tiles = scalewise::ops::coop_attention_tiles_for(&caps, 64, MANY_ROWS.0)
            .ok_or_else(|| anyhow::anyhow!("no matrix-unit attention tiles fit {} bytes", caps.shared_memory_bytes))?;
        named(tiles.constants(family, 64))
    } else {
        naga::back::PipelineConstants::default()
    };
    let mut out = vec![(None, defaults)];
    if KV_STEP_ENTRIES.contains(&(family, entry)) {
        for &(rows, keys) in KV_STEPS {
            out.push((Some(format!("kv{rows}x{keys}")), launch(rows, keys)?));
        }
    }
    Ok(out)
}

/// One compiled entry point.
struct Kernel {
    family: Family,
    dtype: DType,
    subgroups: bool,
    entry: String,
    /// The launch configuration, where not the defaults (`launches`), and its constants.
    launch: Option<String>,
    constants: naga::back::PipelineConstants,
    workgroup_size: [u32; 3],
    stats: radv::PipelineStats,
    counts: counts::StaticCounts,
}

impl Kernel {
    fn label(&self) -> String {
        let variant = if self.subgroups { format!("{},sg", self.dtype) } else { self.dtype.to_string() };
        match &self.launch {
            Some(launch) => format!("{}[{variant}] {} @{launch}", self.family, self.entry),
            None => format!("{}[{variant}] {}", self.family, self.entry),
        }
    }

    /// A statistic by RADV's name for it.
    fn stat(&self, name: &str) -> Option<f64> {
        self.stats.statistics.iter().find(|s| s.name == name).map(|s| s.value.as_f64())
    }
}

/// Set in the child process that compiles: the parent gave it RADV's environment.
const CHILD: &str = "SCALEWISE_SHADER_STATS_CHILD";

/// Runs the command in a child process with RADV's environment (the ICD alone, the forced family).
///
/// A child, because Mesa reads that environment when Vulkan loads (setting it in a running process
/// is unsound once threads exist), and because RADV aborts the process on a family name it does not
/// know, or on an internal compiler error: the parent turns that into an error message.
pub fn run(args: &ShaderStatsArgs) -> anyhow::Result<()> {
    check_target_name(&args.target)?;
    if std::env::var_os(CHILD).is_some() {
        return measure(args);
    }
    crate::results_target("--json", &args.json)?;
    let icd = match &args.icd {
        Some(icd) if icd.is_file() => icd.clone(),
        Some(icd) if icd.is_dir() => anyhow::bail!("--icd {}: is a folder; name its radeon_icd*.json", shown_path(icd)),
        Some(icd) => anyhow::bail!("--icd {}: no such file", shown_path(icd)),
        None => radv::find_icd()?,
    };
    let exe = std::env::current_exe().context("locating the scalewise executable")?;
    let out = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(radv::environment(&icd, &args.target))
        .env(CHILD, "1")
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::piped())
        .output()
        .context("starting the shader-stats child process")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Forwarded as is (the child's messages are its own); a closed or full stderr loses them but must
    // not panic the parent.
    let forward = || {
        let _ = std::io::stderr().lock().write_all(&out.stderr);
    };
    match out.status.code() {
        Some(0) => {
            forward();
            Ok(())
        }
        // The child has printed its error already (or, for a closed standard output, nothing: its
        // exit code says so).
        Some(code) => {
            forward();
            std::process::exit(code)
        }
        None if stderr.contains("Unknown family") => {
            Err(RadvError::UnknownTarget { target: args.target.clone() }.into())
        }
        None => Err(RadvError::Aborted { status: out.status.to_string(), stderr: stderr.trim().to_string() }.into()),
    }
}

fn measure(args: &ShaderStatsArgs) -> anyhow::Result<()> {
    let radv = radv::Radv::open(&args.target)?;
    let mut kernels = Vec::new();
    let mut skipped = Vec::new();
    for &family in Family::ALL {
        for variant in variants(family) {
            let label = format!("{family}{}", variant.suffix());
            let native_coop = family.uses_matrix_units() && variant.subgroups;
            if native_coop && !radv.cooperative_matrix {
                let reason = format!(
                    "{} lacks VK_KHR_cooperative_matrix (RADV has it for RDNA3 from Mesa 24.1)",
                    radv.driver.trim()
                );
                skipped.push((family, variant, reason));
                continue;
            }
            let source = compose(family, variant);
            let module = naga::front::wgsl::parse_str(&source)
                .map_err(|e| anyhow::anyhow!("{label}: {}", e.emit_to_string(&source)))?;
            let mut capabilities = Capabilities::empty();
            capabilities.set(Capabilities::SHADER_FLOAT16, variant.dtype == DType::F16);
            capabilities.set(Capabilities::SUBGROUP, variant.subgroups);
            capabilities.set(Capabilities::COOPERATIVE_MATRIX, native_coop);
            let info = Validator::new(ValidationFlags::all(), capabilities)
                .validate(&module)
                .map_err(|e| anyhow::anyhow!("{label}: {}", e.emit_to_string(&source)))?;
            for entry in module.entry_points.iter().filter(|e| e.stage == naga::ShaderStage::Compute) {
                for (launch, constants) in launches(family, &entry.name, variant.subgroups)? {
                    let (workgroup_size, stats, counts) = compile(&radv, &module, &info, &entry.name, &constants)
                        .with_context(|| format!("{label} {} {launch:?}: compiling for {}", entry.name, args.target))?;
                    kernels.push(Kernel {
                        family,
                        dtype: variant.dtype,
                        subgroups: variant.subgroups,
                        entry: entry.name.clone(),
                        launch,
                        constants: constants.clone(),
                        workgroup_size,
                        stats,
                        counts,
                    });
                }
            }
        }
    }
    let mut json = report_json(&radv, &args.target, &kernels);
    json["skipped"] = skipped
        .iter()
        .map(|(family, variant, reason)| {
            json!({"family": family.name(), "dtype": variant.dtype.to_string(), "subgroups": variant.subgroups,
                   "reason": reason})
        })
        .collect();
    crate::report(&args.json, &json, || {
        print_table(&radv, &args.target, &kernels)?;
        for (family, variant, reason) in &skipped {
            outln!("skipped {family}{}: {reason}", variant.suffix())?;
        }
        Ok(())
    })
}

/// Applies `constants` (the defaults for the rest) to `entry`, writes its SPIR-V and compiles it on
/// RADV.
fn compile(
    radv: &radv::Radv,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
    constants: &naga::back::PipelineConstants,
) -> anyhow::Result<([u32; 3], radv::PipelineStats, counts::StaticCounts)> {
    let stage = naga::ShaderStage::Compute;
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(module, info, Some((stage, entry)), constants)?;
    let index = module.entry_points.iter().position(|e| e.name == entry).context("entry point vanished")?;
    let counts = counts::count(&module, &info, index);
    let options = naga::back::spv::Options {
        lang_version: radv.spirv_version,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Unchecked,
            image_load: naga::proc::BoundsCheckPolicy::Unchecked,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: true,
        // Bindings keep their WGSL group and binding numbers as set and binding.
        fake_missing_bindings: true,
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions { shader_stage: stage, entry_point: entry.to_string() };
    let spirv = naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))?;
    let entry_info = info.get_entry_point(index);
    let bindings: Vec<radv::Binding> = module
        .global_variables
        .iter()
        .filter(|&(handle, _)| !entry_info[handle].is_empty())
        .filter_map(|(_, var)| {
            let binding = var.binding.as_ref()?;
            Some(radv::Binding {
                set: binding.group,
                binding: binding.binding,
                uniform: var.space == naga::AddressSpace::Uniform,
            })
        })
        .collect();
    let stats = radv.compile(&spirv, entry, &bindings)?;
    Ok((module.entry_points[index].workgroup_size, stats, counts))
}

fn number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.fract() == 0.0 => format!("{v}"),
        Some(v) => format!("{v:.1}"),
        None => "-".to_string(),
    }
}

fn words_per_fma(kernel: &Kernel) -> String {
    if kernel.counts.inner_loops.is_empty() {
        return "-".to_string();
    }
    kernel.counts.inner_loops.iter().map(|l| format!("{:.2}", l.words_per_fma())).collect::<Vec<_>>().join(" ")
}

fn print_table(radv: &radv::Radv, target: &str, kernels: &[Kernel]) -> anyhow::Result<()> {
    outln!("{} ({target}), {}; statistics from VK_KHR_pipeline_executable_properties", radv.device_name, radv.driver)?;
    outln!(
        "{:<44} {:>4} {:>5} {:>5} {:>6} {:>6} {:>7} {:>6} {:>5} {:>6} {:>8} {:>5} {:>4} {:>6}  words/FMA",
        "kernel",
        "wave",
        "VGPR",
        "SGPR",
        "spillV",
        "spillS",
        "scratch",
        "LDS",
        "waves",
        "instrs",
        "inv.thru",
        "barr",
        "tile",
        "wgmem"
    )?;
    for k in kernels {
        outln!(
            "{:<44} {:>4} {:>5} {:>5} {:>6} {:>6} {:>7} {:>6} {:>5} {:>6} {:>8} {:>5} {:>4} {:>6}  {}",
            k.label(),
            k.stats.subgroup_size,
            number(k.stat("VGPRs")),
            number(k.stat("SGPRs")),
            number(k.stat("Spilled VGPRs")),
            number(k.stat("Spilled SGPRs")),
            number(k.stat("Scratch size")),
            number(k.stat("LDS size")),
            number(k.stat("Subgroups per SIMD")),
            number(k.stat("Instructions")),
            number(k.stat("Inverse Throughput")),
            k.counts.barriers,
            k.counts.tile_barriers.map_or("-".to_string(), |n| n.to_string()),
            k.counts.workgroup_bytes,
            words_per_fma(k),
        )?;
    }
    outln!(
        "wave: subgroup size; scratch: bytes of scratch memory per wave (private arrays the compiler could \
         not keep in registers, and spills); LDS and wgmem: bytes (RADV's allocation, the WGSL variables used); waves: \
         subgroups per SIMD (occupancy); inv.thru: ACO's estimated inverse throughput; barr: barrier \
         sites; tile: barrier sites per key tile of an attention kernel; words/FMA: workgroup-memory words read per FMA in each GEMM-like inner loop (the innermost loops \
         that read workgroup memory and multiply two different values, with the functions they call; not \
         the attention's once-per-block merges of its key slices)"
    )?;
    Ok(())
}

fn statistic_json(value: radv::Value) -> serde_json::Value {
    match value {
        radv::Value::Bool(b) => json!(b),
        radv::Value::Int(v) => json!(v),
        radv::Value::UInt(v) => json!(v),
        radv::Value::Float(v) => json!(v),
    }
}

fn report_json(radv: &radv::Radv, target: &str, kernels: &[Kernel]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = kernels
        .iter()
        .map(|k| {
            let statistics: serde_json::Map<String, serde_json::Value> =
                k.stats.statistics.iter().map(|s| (s.name.clone(), statistic_json(s.value))).collect();
            let loops: Vec<serde_json::Value> = k
                .counts
                .inner_loops
                .iter()
                .map(|l| {
                    json!({"function": l.function, "words": l.words, "fmas": l.fmas,
                           "words_per_fma": l.words_per_fma()})
                })
                .collect();
            json!({
                "family": k.family.name(),
                "dtype": k.dtype.to_string(),
                "subgroups": k.subgroups,
                "entry": k.entry,
                "launch": k.launch,
                "constants": k.constants.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "workgroup_size": k.workgroup_size,
                "subgroup_size": k.stats.subgroup_size,
                "vgprs": k.stat("VGPRs"),
                "sgprs": k.stat("SGPRs"),
                "spilled_vgprs": k.stat("Spilled VGPRs"),
                "spilled_sgprs": k.stat("Spilled SGPRs"),
                "scratch_bytes": k.stat("Scratch size"),
                "lds_bytes": k.stat("LDS size"),
                "waves_per_simd": k.stat("Subgroups per SIMD"),
                "instructions": k.stat("Instructions"),
                "barriers": k.counts.barriers,
                "tile_barriers": k.counts.tile_barriers,
                "workgroup_bytes": k.counts.workgroup_bytes,
                "inner_loops": loops,
                "statistics": statistics,
            })
        })
        .collect();
    json!({
        "target": target,
        "device": radv.device_name,
        "driver": radv.driver,
        "source": "VK_KHR_pipeline_executable_properties",
        "kernels": rows,
    })
}
