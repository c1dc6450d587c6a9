//! `scalewise shader-stats` on RADV's null device (AMD gfx1100, no GPU needed): every family and
//! variant compiles, nothing spills, and each kernel stays within its VGPR budget, so a change that
//! costs registers (and so occupancy on a real GPU) fails here.
//!
//! RADV comes with Mesa's `mesa-vulkan-drivers` (installed by scripts/lib/vulkan.sh). Without it the
//! test prints a SKIP line and passes, except in CI (CI=true), where a missing RADV is a failure. The
//! cooperative-matrix flavours need a newer RADV than Debian 12's: scripts/lib/radv_coop.sh unpacks
//! one and the second test compiles them with it (a SKIP without it, a failure in CI).

use std::io::Write;
use std::process::Command;

use scalewise::device::wgsl::variants;
use scalewise::kernels::Family;

/// VGPR budgets on gfx1100 per (family, entry point), for every variant: the most any variant used
/// when measured (Mesa 22.3.6, 2026-12-01) plus 16. Raise one only with a reason in the commit.
const VGPR_BUDGETS: &[(&str, &str, u32)] = &[
    // 8 x 8 outputs per thread, four teams splitting K (2026-12-04): 120 measured, 12 waves (36 with
    // 4 x 4 per thread, at 2 FMAs per workgroup word instead of 4).
    ("matmul", "matmul_tiled", 136),
    ("matmul", "matmul_naive", 28),
    ("matmul", "matmul_wide", 124),
    ("matmul", "matmul_skinny", 52),
    // The emulation (the only flavour Mesa 22.3 compiles): 96. The cooperative-matrix flavour, on
    // Mesa 25.0.7's RADV for navi31 (gfx1100): 108, 0 spills, 10 waves, 32 v_wmma_f32_16x16x16_f16.
    ("matmul_coop", "matmul_coop", 124),
    // The same block on conv2d's operands, im2col gathered where it is staged (2026-12-04): 96 in the
    // emulation; the cooperative-matrix flavour on Mesa 25.0.7 for navi31: 108, 0 spills, 10 waves.
    ("conv2d_coop", "matmul_coop", 124),
    ("norm", "layer_norm", 28),
    ("norm", "rms_norm", 28),
    ("norm", "gated_rms_norm", 28),
    ("norm", "group_norm", 28),
    ("norm", "softmax", 28),
    ("norm", "modulate", 28),
    // Query rows in registers (32 dimensions of q and of the output per thread, none in scratch): 120
    // measured; 96 with four rows per thread (subgroups, 2026-12-04); 108 without subgroups since
    // 2026-12-05 (four rows per thread, staged scores: q leaves the registers).
    ("attention", "flash_attention", 136),
    ("attention", "grouped_attention", 136),
    ("attention", "permute_tokens", 28),
    // The emulation (the only flavour Mesa 22.3 compiles): 72, 32 output columns per thread in
    // registers (with 64, 36 VGPRs and the columns in 18 KiB of scratch). The cooperative-matrix
    // flavour, on Mesa 25.0.7's RADV for navi31: 96, 0 spills, no scratch.
    ("attention_coop", "flash_attention", 88),
    ("attention_coop", "grouped_attention", 88),
    ("attention_coop", "permute_tokens", 28),
    // The same machinery under qkv_attention.wgsl's hooks (the new keys normalised in the f16 stage).
    ("qkv_attention_coop", "qkv_attention", 88),
    ("scan", "scan_chunk_totals", 64),
    ("scan", "scan_chunk_outputs", 52),
    ("ssd", "ssd_cumsum", 28),
    // 8 x 8 register blocks of a 64 x 64 block of the state, four teams splitting the chunk's steps
    // (2026-12-04): 96 measured, 16 waves; 120 and 12 on Mesa 25.0.7 (108 and 14 with 4 x 4 blocks, at 2
    // FMAs per workgroup word instead of 4; 84 with one output per step and thread, at 0.5).
    ("ssd", "ssd_chunk_states", 124),
    // 8 x 8 register blocks of a 32-step x 64-column block, four teams splitting K, and 4 x 2 scores
    // per key tile (2026-12-04): 108 measured, 8 waves, bound by LDS (20 KiB); 144-168 on Mesa 25.0.7,
    // still 8 waves (108 before, with 4 rows x 4 columns of every 64-column group per thread; 48 with
    // one row and P / 16 columns per thread, at 1-2 workgroup words per FMA instead of 0.25-0.75).
    ("ssd", "ssd_chunk_outputs", 124),
    ("scan_carry", "scan_carry", 28),
    ("conv1d", "conv1d", 28),
    ("conv1d", "conv1d_state", 28),
    ("elementwise", "add", 28),
    ("elementwise", "mul", 28),
    ("elementwise", "gelu_tanh", 28),
    ("elementwise", "silu", 28),
    ("embedding", "embedding", 28),
    ("embedding", "embedding_channels_first", 28),
    ("copy", "copy_block", 28),
    ("copy", "transpose_last2", 28),
    ("cast_to_f16", "cast_f32_to_store", 28),
    ("cast_to_f32", "cast_store_to_f32", 28),
    ("resample", "upsample_bicubic", 52),
    ("resample", "downsample_area", 28),
    ("resample", "upsample_nearest2x", 28),
    ("conv2d", "conv2d_tiled", 64),
    ("conv2d", "conv2d_naive", 28),
    ("conv2d", "conv2d_gemm", 124),
    ("sample", "philox_words", 28),
    ("sample", "sample", 40),
    ("sample", "gumbel_softmax", 40),
    ("qkv_heads", "qkv_heads", 28),
    ("qkv_heads", "qkv_attention", 136),
    ("residual", "gated_residual", 28),
];

/// GEMM-like kernels held to issue 15's targets: at least this many FMAs per workgroup-memory word in
/// their innermost loops (below it the workgroup-memory bandwidth, not the FMA units, bounds the
/// loop), in the variant without subgroups and in the one with them, and at least this many waves
/// per SIMD (to hide memory latency), in the variant without subgroups and in the one with them.
/// Both scalar matmul tiles hold 8 x 8 outputs per thread: the 64 x 64 one (for grids too small for
/// 128 x 128 blocks) by four teams splitting K since 2026-12-04 (4 x 4 per thread before, 2 FMAs).
/// Attention without subgroups puts four query rows on each thread and stages their scores
/// (2026-12-05): a tile's scores are a GEMM of the staged queries and keys, 4 rows x 4 keys per
/// thread (2 FMAs per word), and each v word meets four probabilities (4); before, with one row
/// per thread, each k or v word met one q or p component (1). Its stages (the block's queries, 16
/// KiB at head_dim 64) held its 128 threads to 6 waves (29 KiB of LDS; 8 with one row per thread at
/// 16.5 KiB); since 2026-12-05 (later) two key slices of 128 threads share them: 10 waves at 29.5
/// KiB. With subgroups, its blocks of many rows put four query rows on
/// each thread (their partial scores meet through shuffles): 4 FMAs per word (2026-12-04; two rows,
/// 2 FMAs, from 2026-12-03). Four rows take their keys one at a time, with no tile of scores held
/// (which at 4 x 8 keys had taken 132 VGPRs with 5 spilled): 96 VGPRs at head_dim 64. Blocks that
/// split their keys keep one row per thread (1 FMA per word in either variant), as their waves are
/// exempt below.
/// SSD's chunk states take 8 x 8 blocks of a 64-state x 64-column block of a head's state, four teams
/// of 64 threads splitting the chunk's steps: 4 FMAs per word (2026-12-04; 4 x 4 blocks over the whole
/// head gave 2). ssd_chunk_outputs is held to what its scores give (4 x 2 per thread, 8 FMAs per 6
/// words: its causal tiles are 32 rows deep); its products into the output take 8 x 8 blocks as the
/// states' (4 FMAs per word, 2026-12-04).
const GEMM_TARGETS: &[(&str, &str, f64, f64, f64, f64)] = &[
    ("matmul", "matmul_wide", 4.0, 4.0, 8.0, 8.0),
    ("matmul", "matmul_tiled", 4.0, 4.0, 8.0, 8.0),
    ("conv2d", "conv2d_gemm", 4.0, 4.0, 8.0, 8.0),
    ("ssd", "ssd_chunk_states", 4.0, 4.0, 8.0, 8.0),
    ("ssd", "ssd_chunk_outputs", 1.3, 1.3, 8.0, 8.0),
    ("attention", "flash_attention", 2.0, 4.0, 8.0, 8.0),
    ("attention", "grouped_attention", 2.0, 4.0, 8.0, 8.0),
    ("qkv_heads", "qkv_attention", 2.0, 4.0, 8.0, 8.0),
];

/// The matrix-unit kernels' waves per SIMD (issue 15: at least 8 for matmul and attention), in both
/// flavours. The attention's stages were 37.5 KiB over two wave64s (4 waves); with four threads per
/// query row, 40.5 KiB (rows padded) over four: 8 (2026-12-03); 39.5 KiB without the row maxima's
/// exchange (2026-12-04).
const MATRIX_UNIT_WAVES: &[(&str, &str, f64)] = &[
    ("matmul_coop", "matmul_coop", 8.0),
    ("conv2d_coop", "matmul_coop", 8.0),
    ("attention_coop", "flash_attention", 8.0),
    ("attention_coop", "grouped_attention", 8.0),
    ("qkv_attention_coop", "qkv_attention", 8.0),
];

/// Barrier sites per key tile of the attention kernels (issue 15: at most 3 for flash attention), by
/// family and whether the variant has subgroups. The scalar kernel has 2 with subgroups (its rows'
/// partial scores meet through shuffles) and 3 without (through workgroup memory; since 2026-12-05
/// the staged scores' barrier, the rows four per thread); its fused QKV
/// entry has one more, where it L2-normalises the new keys in the staged tile (L2_NORM, on in
/// shader-stats' launch). Each had one more until 2026-12-04, when the rows began to mask padding
/// keys by the tile's key count instead of reading the key table after the load barrier. The
/// matrix-unit kernel has 4 in both flavours, the least for fragments whose layout is opaque: the
/// staged keys and values, the stored scores, the stored weights and the stored product P V each need
/// one. It had 6, with two exchanges per tile, and its fused QKV entry 7, until 2026-12-04; that entry
/// now normalises new keys as it stages them.
const TILE_BARRIERS: &[(&str, bool, f64)] = &[
    ("attention", true, 2.0),
    ("attention", false, 3.0),
    ("qkv_heads", true, 3.0),
    ("qkv_heads", false, 4.0),
    ("attention_coop", true, 4.0),
    ("attention_coop", false, 4.0),
    ("qkv_attention_coop", true, 4.0),
    ("qkv_attention_coop", false, 4.0),
];

/// An attention kernel over its barrier sites per key tile in `TILE_BARRIERS`; an entry point that
/// streams key tiles must report them.
fn tile_barrier_failures(k: &serde_json::Value, failures: &mut Vec<String>) {
    let streams_keys = ["flash_attention", "grouped_attention", "qkv_attention"].iter().any(|&e| k["entry"] == e);
    let Some(&(_, _, most)) = TILE_BARRIERS.iter().find(|&&(f, sg, _)| k["family"] == f && k["subgroups"] == sg) else {
        return;
    };
    match k["tile_barriers"].as_f64() {
        None if streams_keys => failures.push(format!("{}: no barrier count per key tile", label(k))),
        Some(n) if n > most => failures.push(format!("{}: {n} barrier sites per key tile, over {most}", label(k))),
        _ => {}
    }
}

/// A matrix-unit kernel under its waves per SIMD in `MATRIX_UNIT_WAVES`.
fn matrix_unit_wave_failures(k: &serde_json::Value, failures: &mut Vec<String>) {
    if let Some(&(_, _, waves)) = MATRIX_UNIT_WAVES.iter().find(|&&(f, e, _)| k["family"] == f && k["entry"] == e)
        && stat(k, "waves_per_simd") < waves
    {
        failures.push(format!("{}: {} waves per SIMD, under {waves}", label(k), stat(k, "waves_per_simd")));
    }
}

/// VGPR budgets of the cooperative-matrix flavours, compiled by Mesa 25.0.7's RADV (Debian 12's
/// backports; scripts/lib/radv_coop.sh) for navi31 (gfx1100), measured 2026-12-03, plus 16: matmul_coop
/// 108 (conv2d_coop's, the same block, 108 on 2026-12-04), attention_coop and qkv_attention_coop 96,
/// permute_tokens 48 (this Mesa allocates more
/// registers where occupancy does not suffer).
const NATIVE_COOP_BUDGETS: &[(&str, &str, u32)] = &[
    ("matmul_coop", "matmul_coop", 124),
    ("conv2d_coop", "matmul_coop", 124),
    ("attention_coop", "flash_attention", 112),
    ("attention_coop", "grouped_attention", 112),
    ("attention_coop", "permute_tokens", 64),
    ("qkv_attention_coop", "qkv_attention", 112),
];

/// Runs `scalewise shader-stats` with `args` and returns its JSON report, or the failed run's stderr.
/// `run` names the run's temporary folder (the tests run in parallel in one process).
fn shader_stats(run: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let dir = std::env::temp_dir().join(format!("scalewise-shader-stats-{}-{run}", std::process::id()));
    let json_path = dir.join("shader-stats.json");
    let out = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .arg("shader-stats")
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("the scalewise binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let report =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON report")).expect("valid JSON");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

fn same_variant(k: &serde_json::Value, family: Family, variant: &scalewise::device::wgsl::Variant) -> bool {
    k["family"] == family.name() && k["dtype"] == variant.dtype.to_string() && k["subgroups"] == variant.subgroups
}

/// The kernel's label as shader-stats prints it.
fn label(k: &serde_json::Value) -> String {
    let family = k["family"].as_str().unwrap();
    let entry = k["entry"].as_str().unwrap();
    let label = format!(
        "{family}[{}{}] {entry}",
        k["dtype"].as_str().unwrap(),
        if k["subgroups"] == true { ",sg" } else { "" }
    );
    // A launch configuration other than the defaults (the KV-cache steps of the attention entries).
    match k["launch"].as_str() {
        Some(launch) => format!("{label} @{launch}"),
        None => label,
    }
}

fn stat(k: &serde_json::Value, name: &str) -> f64 {
    k[name].as_f64().unwrap_or_else(|| panic!("{}: no {name} in the report", label(k)))
}

/// Spills and scratch memory of one kernel, and its VGPRs against `budgets` where `budgets` is given.
fn register_failures(k: &serde_json::Value, budgets: Option<&[(&str, &str, u32)]>, failures: &mut Vec<String>) {
    let label = label(k);
    if stat(k, "spilled_vgprs") > 0.0 || stat(k, "spilled_sgprs") > 0.0 {
        let (v, s) = (stat(k, "spilled_vgprs"), stat(k, "spilled_sgprs"));
        failures.push(format!("{label}: spills {v} VGPRs, {s} SGPRs"));
    }
    // Scratch without spills: a private array indexed where the compiler could not resolve the
    // index, kept in memory for the whole kernel (the attention output once was: 33 KiB a wave).
    if stat(k, "scratch_bytes") > 0.0 {
        failures.push(format!("{label}: {} bytes of scratch memory per wave", stat(k, "scratch_bytes")));
    }
    let Some(budgets) = budgets else { return };
    let vgprs = stat(k, "vgprs");
    match budgets.iter().find(|&&(f, e, _)| k["family"] == f && k["entry"] == e) {
        Some(&(_, _, budget)) if vgprs > f64::from(budget) => {
            failures.push(format!("{label}: {vgprs} VGPRs, over its budget of {budget}"))
        }
        Some(_) => {}
        None => failures.push(format!("{label}: no VGPR budget (measured {vgprs}); add one")),
    }
}

/// Reports a skip past libtest's capture (which only takes print! and eprint!), so that it shows in a
/// passing run.
fn skip(what: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP {what}: {reason}");
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

#[test]
fn every_kernel_compiles_for_rdna3_without_spills_within_its_vgpr_budget() {
    let report = match shader_stats("system", &["--target", "gfx1100"]) {
        Ok(report) => report,
        Err(stderr) if stderr.contains("apt-get install") => {
            assert!(!in_ci(), "RADV is required in CI (scripts/lib/vulkan.sh installs mesa-vulkan-drivers):\n{stderr}");
            return skip("shader_stats", stderr.trim());
        }
        Err(stderr) => panic!("shader-stats failed:\n{stderr}"),
    };
    let kernels = report["kernels"].as_array().expect("kernels");

    // Every family and variant compiled (entry points per variant: at least one), but for the ones
    // the driver cannot compile (the cooperative-matrix flavours of the matrix-unit families before
    // Mesa 24.1, which the next test compiles on a newer RADV), which the report lists with the reason
    // and this test reports as a skip.
    let skipped = report["skipped"].as_array().expect("skipped");
    for &family in Family::ALL {
        for variant in variants(family) {
            if let Some(reason) = skipped.iter().find(|k| same_variant(k, family, &variant)) {
                let suffix = variant.suffix();
                assert!(
                    family.uses_matrix_units() && variant.subgroups,
                    "{family}{suffix} skipped: {}",
                    reason["reason"]
                );
                skip(&format!("shader_stats {family}{suffix}"), &reason["reason"].to_string());
                continue;
            }
            let compiled = kernels.iter().any(|k| same_variant(k, family, &variant));
            assert!(compiled, "{family}{} has no compiled entry point", variant.suffix());
        }
    }

    // The attention entries were also compiled as KV-cache steps, whose blocks split their keys: the
    // code the defaults fold away is held to the same budgets.
    for entry in ["flash_attention", "qkv_attention"] {
        let split = kernels.iter().filter(|k| k["entry"] == entry && k["launch"].is_string()).count();
        assert!(split > 0, "{entry} has no KV-step launch in the report");
    }

    let mut failures = Vec::new();
    for k in kernels {
        register_failures(k, Some(VGPR_BUDGETS), &mut failures);
        matrix_unit_wave_failures(k, &mut failures);
        tile_barrier_failures(k, &mut failures);
        let label = label(k);
        // A block of one row per thread that splits its keys is launched for few query rows: its
        // grid (batch x heads workgroups) is far below a GPU's capacity, so waves per SIMD do not
        // bind it. (Staged scores split theirs in blocks of many rows, and meet the targets.)
        let constant = |name: &str| k["constants"][name].as_f64();
        let splits_keys = constant("KV_SPLIT").is_some_and(|s| s > 1.0) && constant("ROWS") == Some(1.0);
        if let Some(&(_, _, plain, with_subgroups, plain_waves, subgroup_waves)) =
            GEMM_TARGETS.iter().find(|&&(f, e, ..)| k["family"] == f && k["entry"] == e)
        {
            let waves = if k["subgroups"] == true { subgroup_waves } else { plain_waves };
            if stat(k, "waves_per_simd") < waves && !splits_keys {
                failures.push(format!("{label}: {} waves per SIMD, under {waves}", stat(k, "waves_per_simd")));
            }
            // Blocks that split their keys keep one row per thread: 1 FMA per word in either variant.
            let least = match () {
                _ if splits_keys => 1.0,
                _ if k["subgroups"] == true => with_subgroups,
                _ => plain,
            };
            let loops = k["inner_loops"].as_array().unwrap_or_else(|| panic!("{label}: no inner_loops in the report"));
            if loops.is_empty() {
                failures.push(format!("{label}: no GEMM-like inner loop found"));
            }
            for l in loops {
                let fmas_per_word = 1.0 / l["words_per_fma"].as_f64().expect("words_per_fma");
                if fmas_per_word < least {
                    failures.push(format!("{label}: {fmas_per_word:.2} FMAs per workgroup word, under {least}"));
                }
            }
        }
    }

    // Where a row's partial scores meet through subgroup shuffles, their workgroup-memory exchange and
    // its barriers are gone: fewer barrier sites than the same launch of the variant without subgroups.
    let exchanges: Vec<_> =
        kernels.iter().filter(|k| k["constants"]["SUBGROUP_EXCHANGE"].as_f64().is_some_and(|e| e > 0.0)).collect();
    assert!(!exchanges.is_empty(), "no attention launch sums its partial scores through subgroups");
    for k in exchanges {
        let same_launch = |p: &&serde_json::Value| {
            p["subgroups"] == false && ["family", "entry", "dtype", "launch"].iter().all(|&f| p[f] == k[f])
        };
        let Some(plain) = kernels.iter().find(same_launch) else {
            failures.push(format!("{}: no launch without subgroups to compare with", label(k)));
            continue;
        };
        if stat(k, "barriers") >= stat(plain, "barriers") {
            failures.push(format!(
                "{}: {} barrier sites, not fewer than without subgroups ({})",
                label(k),
                stat(k, "barriers"),
                stat(plain, "barriers")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The cooperative-matrix flavours, which Debian 12's RADV cannot compile, on the newer RADV that
/// scripts/lib/radv_coop.sh unpacks (SCALEWISE_RADV_COOP_ICD), which lists the units: each compiles
/// within its VGPR budget; nothing in that run spills or uses scratch.
#[test]
fn cooperative_matrix_kernels_compile_for_rdna3_on_a_newer_radv() {
    const TEST: &str = "shader_stats cooperative-matrix flavours";
    let Some(icd) = std::env::var_os("SCALEWISE_RADV_COOP_ICD") else {
        assert!(!in_ci(), "CI needs SCALEWISE_RADV_COOP_ICD (scripts/test sources scripts/lib/radv_coop.sh)");
        return skip(TEST, "SCALEWISE_RADV_COOP_ICD is not set (scripts/test sets it on Debian 12)");
    };
    let icd = icd.to_str().expect("a UTF-8 path").to_owned();
    // navi31 is gfx1100 under the name newer Mesas take.
    let report = shader_stats("coop", &["--target", "navi31", "--icd", &icd])
        .unwrap_or_else(|e| panic!("shader-stats failed:\n{e}"));
    let kernels = report["kernels"].as_array().expect("kernels");
    let skipped = report["skipped"].as_array().expect("skipped");
    assert!(skipped.is_empty(), "this RADV skipped {skipped:?}");
    // Every native flavour compiled (the system RADV's test accepts their skips).
    for &family in Family::ALL.iter().filter(|f| f.uses_matrix_units()) {
        for variant in variants(family).into_iter().filter(|v| v.subgroups) {
            let compiled = kernels.iter().any(|k| same_variant(k, family, &variant));
            assert!(compiled, "{family}{} has no compiled entry point", variant.suffix());
        }
    }
    // The native flavours within their budgets; every kernel of the run without spills or scratch.
    let mut failures = Vec::new();
    for k in kernels {
        let is_native =
            k["subgroups"] == true && Family::ALL.iter().any(|f| f.uses_matrix_units() && k["family"] == f.name());
        register_failures(k, is_native.then_some(NATIVE_COOP_BUDGETS), &mut failures);
        matrix_unit_wave_failures(k, &mut failures);
        tile_barrier_failures(k, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
