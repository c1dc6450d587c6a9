//! `scalewise shader-stats` on RADV's null device (AMD gfx1100, no GPU needed): every family and
//! variant compiles, nothing spills, and each kernel stays within its VGPR budget, so a change that
//! costs registers (and so occupancy on a real GPU) fails here.
//!
//! RADV comes with Mesa's `mesa-vulkan-drivers` (installed by scripts/lib/vulkan.sh). Without it the
//! test prints a SKIP line and passes, except in CI (CI=true), where a missing RADV is a failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use scalewise::device::wgsl::variants;
use scalewise::kernels::Family;

/// VGPR budgets on gfx1100 per (family, entry point), for every variant: the most any variant used
/// when measured (Mesa 22.3.6, 2026-12-01) plus 16. Raise one only with a reason in the commit.
const VGPR_BUDGETS: &[(&str, &str, u32)] = &[
    ("matmul", "matmul_tiled", 52),
    ("matmul", "matmul_naive", 28),
    ("matmul", "matmul_wide", 124),
    ("matmul", "matmul_skinny", 52),
    // The emulation (the only flavour Mesa 22.3 compiles): 96. The cooperative-matrix flavour, on
    // Mesa 25.0.7's RADV for navi31 (gfx1100): 108, 0 spills, 10 waves, 32 v_wmma_f32_16x16x16_f16.
    ("matmul_coop", "matmul_coop", 124),
    ("norm", "layer_norm", 28),
    ("norm", "rms_norm", 28),
    ("norm", "gated_rms_norm", 28),
    ("norm", "group_norm", 28),
    ("norm", "softmax", 28),
    ("norm", "modulate", 28),
    // Query rows in registers (32 dimensions of q and of the output per thread, none in scratch): 120 measured.
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
    ("ssd", "ssd_chunk_states", 100),
    ("ssd", "ssd_chunk_outputs", 64),
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
/// loop), and at least this many waves per SIMD (to hide memory latency).
/// Attention is held to 1 FMA per word, what it reaches: each k or v component read meets one q or p
/// component of the thread's row. The 4 needs several query rows per thread, whose q would
/// not fit in registers nor, beside the K and V tiles, in WebGPU's default 16 KiB of workgroup memory.
const GEMM_TARGETS: &[(&str, &str, f64, f64)] = &[
    ("matmul", "matmul_wide", 4.0, 8.0),
    ("conv2d", "conv2d_gemm", 4.0, 8.0),
    ("attention", "flash_attention", 1.0, 8.0),
    ("attention", "grouped_attention", 1.0, 8.0),
    ("qkv_heads", "qkv_attention", 1.0, 8.0),
];

#[test]
fn every_kernel_compiles_for_rdna3_without_spills_within_its_vgpr_budget() {
    let dir = std::env::temp_dir().join(format!("scalewise-shader-stats-{}", std::process::id()));
    let json_path = dir.join("shader-stats.json");
    let out = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .args(["shader-stats", "--target", "gfx1100", "--json"])
        .arg(&json_path)
        .output()
        .expect("the scalewise binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("apt-get install") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "RADV is required in CI (scripts/lib/vulkan.sh installs mesa-vulkan-drivers):\n{stderr}"
        );
        // Past libtest's capture (which only takes print! and eprint!), so the skip shows in a passing run.
        let _ = writeln!(std::io::stderr(), "SKIP shader_stats: {}", stderr.trim());
        return;
    }
    assert!(out.status.success(), "shader-stats failed:\n{stderr}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON report")).expect("valid JSON");
    let _ = std::fs::remove_dir_all(&dir);
    let kernels = report["kernels"].as_array().expect("kernels");

    // Every family and variant compiled (entry points per variant: at least one), but for the ones
    // the driver cannot compile (the cooperative-matrix flavours of the matrix-unit families before Mesa 24.1), which
    // the report lists with the reason and this test reports as a skip.
    let skipped = report["skipped"].as_array().expect("skipped");
    let same = |k: &serde_json::Value, family: Family, variant: &scalewise::device::wgsl::Variant| {
        k["family"] == family.name() && k["dtype"] == variant.dtype.to_string() && k["subgroups"] == variant.subgroups
    };
    for &family in Family::ALL {
        for variant in variants(family) {
            if let Some(skip) = skipped.iter().find(|k| same(k, family, &variant)) {
                assert!(
                    family.uses_matrix_units() && variant.subgroups,
                    "{family}{} skipped: {}",
                    variant.suffix(),
                    skip["reason"]
                );
                let _ =
                    writeln!(std::io::stderr(), "SKIP shader_stats {family}{}: {}", variant.suffix(), skip["reason"]);
                continue;
            }
            let compiled = kernels.iter().any(|k| same(k, family, &variant));
            assert!(compiled, "{family}{} has no compiled entry point", variant.suffix());
        }
    }

    // The attention entries were also compiled as KV-cache steps, whose blocks split their keys: the
    // code the defaults fold away is held to the same budgets.
    for entry in ["flash_attention", "qkv_attention"] {
        let split = kernels.iter().filter(|k| k["entry"] == entry && k["launch"].is_string()).count();
        assert!(split > 0, "{entry} has no KV-step launch in the report");
    }

    let budgets: BTreeMap<(&str, &str), u32> = VGPR_BUDGETS.iter().map(|&(f, e, b)| ((f, e), b)).collect();
    let mut failures = Vec::new();
    for k in kernels {
        let family = k["family"].as_str().unwrap();
        let entry = k["entry"].as_str().unwrap();
        let label = format!(
            "{family}[{}{}] {entry}",
            k["dtype"].as_str().unwrap(),
            if k["subgroups"] == true { ",sg" } else { "" }
        );
        // A launch configuration other than the defaults (the KV-cache steps of the attention entries).
        let label = match k["launch"].as_str() {
            Some(launch) => format!("{label} @{launch}"),
            None => label,
        };
        let stat = |name: &str| k[name].as_f64().unwrap_or_else(|| panic!("{label}: no {name} in the report"));
        if stat("spilled_vgprs") > 0.0 || stat("spilled_sgprs") > 0.0 {
            failures.push(format!("{label}: spills {} VGPRs, {} SGPRs", stat("spilled_vgprs"), stat("spilled_sgprs")));
        }
        // Scratch without spills: a private array indexed where the compiler could not resolve the
        // index, kept in memory for the whole kernel (the attention output once was: 33 KiB a wave).
        if stat("scratch_bytes") > 0.0 {
            failures.push(format!("{label}: {} bytes of scratch memory per wave", stat("scratch_bytes")));
        }
        let vgprs = stat("vgprs");
        match budgets.get(&(family, entry)) {
            Some(&budget) if vgprs > f64::from(budget) => {
                failures.push(format!("{label}: {vgprs} VGPRs, over its budget of {budget}"))
            }
            Some(_) => {}
            None => failures.push(format!("{label}: no VGPR budget (measured {vgprs}); add one to VGPR_BUDGETS")),
        }
        // A block that splits its keys is launched for few query rows: its grid (batch x heads
        // workgroups) is far below a GPU's capacity, so waves per SIMD do not bind it.
        let splits_keys = k["constants"]["KV_SPLIT"].as_f64().is_some_and(|s| s > 1.0);
        if let Some(&(_, _, least, waves)) = GEMM_TARGETS.iter().find(|&&(f, e, _, _)| f == family && e == entry) {
            if stat("waves_per_simd") < waves && !splits_keys {
                failures.push(format!("{label}: {} waves per SIMD, under {waves}", stat("waves_per_simd")));
            }
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
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
