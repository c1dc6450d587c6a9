//! The kernel contract, checked with naga alone (no GPU): every WGSL variant validates (the portable
//! ones without f16 or subgroups), translates to HLSL and MSL as wgpu's DX12 and Metal backends
//! translate it, each family's params struct matches its WGSL struct member for member, and its
//! declared specialisation constants are exactly the module's overrides.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use scalewise::DType;
use scalewise::device::wgsl::{Variant, compose, variants};
use scalewise::kernels::{ConstType, Family, ParamsLayout};

fn parse(source: &str) -> Result<naga::Module, String> {
    naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))
}

fn validate(source: &str, capabilities: Capabilities) -> Result<(), String> {
    let module = parse(source)?;
    Validator::new(ValidationFlags::all(), capabilities).validate(&module).map_err(|e| e.emit_to_string(source))?;
    Ok(())
}

#[test]
fn every_variant_validates() {
    let mut count = 0;
    for &family in Family::ALL {
        for variant in variants(family) {
            let source = compose(family, variant);
            let mut capabilities = Capabilities::empty();
            if variant.dtype == DType::F16 {
                capabilities |= Capabilities::SHADER_FLOAT16;
            }
            if variant.subgroups {
                capabilities |= Capabilities::SUBGROUP;
            }
            if family.uses_matrix_units() && variant.subgroups {
                capabilities |= Capabilities::COOPERATIVE_MATRIX;
            }
            if let Err(e) = validate(&source, capabilities) {
                panic!("{family}{}: {e}", variant.suffix());
            }
            count += 1;
        }
    }
    assert!(count >= Family::ALL.len(), "only {count} variants validated");
}

/// The limits attention tiles are sized for on a DX12 or Metal GPU: 32 KiB of workgroup memory (what
/// wgpu exposes on both), 1024 invocations, subgroups of `subgroup_sizes` where the variant uses them.
fn caps_of(subgroups: bool, subgroup_sizes: (u32, u32)) -> scalewise::Caps {
    scalewise::Caps {
        f16: true,
        subgroups,
        subgroup_sizes,
        timestamps: true,
        shared_memory_bytes: 32768,
        max_threads_per_group: 1024,
        max_groups_per_dim: 65535,
        max_storage_args: 31,
        max_arg_bytes: 1 << 30,
        max_buffer_bytes: 1 << 30,
        is_cpu: false,
        matrix_units: scalewise::MatrixUnits::None,
        attention: scalewise::AttentionDesign::RowsInRegisters,
        attention_key_split: true,
        attention_staged_scores: true,
        attention_staged_key_slices: true,
    }
}

/// The constants `entry` of `family` is launched with on a device with `caps`: the defaults, and for
/// the scalar attention machinery's entries the tiles of a many-row call and of a one-row KV-cache
/// step at head_dim 64 (the overrides size its workgroup arrays and pick its code paths).
fn launches(family: Family, entry: &str, caps: &scalewise::Caps) -> Vec<naga::back::PipelineConstants> {
    let mut out = vec![naga::back::PipelineConstants::default()];
    let tiled = matches!(
        (family, entry),
        (Family::Attention, "flash_attention" | "grouped_attention") | (Family::QkvHeads, "qkv_attention")
    );
    if tiled {
        for (rows, keys) in [(256, 680), (1, 680)] {
            let tiles = scalewise::ops::attention_tiles_for(caps, 64, rows, keys).expect("tiles fit 32 KiB");
            out.push(
                tiles.constants(family, 64).values().iter().map(|&(name, v)| (name.to_string(), v.as_f64())).collect(),
            );
        }
    }
    out
}

/// Every kernel wgpu may run on DX12 or Metal, translated with the options those backends use: DX12
/// takes shader model 6.2 where it has f16 or subgroups (DXC) and 5.1 for the portable variants (FXC);
/// Metal takes MSL 2.4 (macOS 12). The matrix-unit kernels' native flavour is Vulkan's alone. A
/// kernel naga cannot write for a backend would fail there when its pipeline is created, on machines
/// no test here runs on. What this cannot see: whether DXC, FXC or Apple's compiler then accept the
/// text (naga writes f16 and wave intrinsics even for shader model 5.1; the portable variants have
/// none, see `portable_variants_need_neither_f16_nor_subgroups`).
#[test]
fn every_kernel_translates_for_dx12_and_metal() {
    let mut failures = Vec::new();
    let mut translated = 0;
    for &family in Family::ALL {
        for variant in variants(family).into_iter().filter(|v| !(family.uses_matrix_units() && v.subgroups)) {
            let source = compose(family, variant);
            let module = parse(&source).unwrap_or_else(|e| panic!("{family}{}: {e}", variant.suffix()));
            let mut capabilities = Capabilities::empty();
            capabilities.set(Capabilities::SHADER_FLOAT16, variant.dtype == DType::F16);
            capabilities.set(Capabilities::SUBGROUP, variant.subgroups);
            let info = Validator::new(ValidationFlags::all(), capabilities)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{family}{}: {}", variant.suffix(), e.emit_to_string(&source)));
            let shader_model = if variant.dtype == DType::F16 || variant.subgroups {
                naga::back::hlsl::ShaderModel::V6_2
            } else {
                naga::back::hlsl::ShaderModel::V5_1
            };
            let entries = module.entry_points.iter().filter(|e| e.stage == naga::ShaderStage::Compute);
            for entry in entries {
                let stage_entry = Some((naga::ShaderStage::Compute, entry.name.clone()));
                // The subgroup ranges wgpu reports: DX12 32-64 (NVIDIA, AMD), 8-32 (Intel), 64-128
                // (Adreno); Metal 4-64 whatever the GPU (wgpu-hal's Metal adapter).
                let ranges = [("DX12", (32, 64)), ("DX12", (8, 32)), ("DX12", (64, 128)), ("Metal", (4, 64))];
                for (backend, sizes) in ranges {
                    for constants in launches(family, &entry.name, &caps_of(variant.subgroups, sizes)) {
                        let label = format!("{backend} {family}{} {} {constants:?}", variant.suffix(), entry.name);
                        let overridden = naga::back::pipeline_constants::process_overrides(
                            &module,
                            &info,
                            Some((naga::ShaderStage::Compute, &entry.name)),
                            &constants,
                        );
                        let (module, info) = match overridden {
                            Ok(done) => done,
                            Err(e) => {
                                failures.push(format!("{label}: overrides: {e}"));
                                continue;
                            }
                        };
                        let written = if backend == "DX12" {
                            let options = naga::back::hlsl::Options {
                                shader_model,
                                fake_missing_bindings: true,
                                zero_initialize_workgroup_memory: true,
                                restrict_indexing: true,
                                force_loop_bounding: true,
                                ..Default::default()
                            };
                            let pipeline = naga::back::hlsl::PipelineOptions { entry_point: stage_entry.clone() };
                            let mut hlsl = String::new();
                            naga::back::hlsl::Writer::new(&mut hlsl, &options, &pipeline)
                                .write(&module, &info, None)
                                .map(|_| hlsl.len())
                                .map_err(|e| e.to_string())
                        } else {
                            let options = naga::back::msl::Options {
                                lang_version: (2, 4),
                                fake_missing_bindings: true,
                                zero_initialize_workgroup_memory: true,
                                force_loop_bounding: true,
                                ..Default::default()
                            };
                            let pipeline = naga::back::msl::PipelineOptions {
                                entry_point: stage_entry.clone(),
                                ..Default::default()
                            };
                            naga::back::msl::write_string(&module, &info, &options, &pipeline)
                                .map(|(msl, _)| msl.len())
                                .map_err(|e| e.to_string())
                        };
                        match written {
                            Ok(len) if len > 0 => translated += 1,
                            Ok(_) => failures.push(format!("{label}: empty output")),
                            Err(e) => failures.push(format!("{label}: {e}")),
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} translations failed:\n{}", failures.len(), failures.join("\n"));
    assert!(translated >= 3 * Family::ALL.len(), "only {translated} translations");
}

#[test]
fn portable_variants_need_neither_f16_nor_subgroups() {
    for &family in Family::ALL {
        for variant in variants(family).into_iter().filter(|v| !v.subgroups && v.dtype != DType::F16) {
            let source = compose(family, variant);
            if let Err(e) = validate(&source, Capabilities::empty()) {
                panic!("{family}{} needs an optional capability: {e}", variant.suffix());
            }
        }
    }
}

#[test]
fn subgroup_variants_are_rejected_without_the_capability() {
    // Guards the test above: validation without capabilities really does reject subgroup code.
    let family = *Family::ALL.iter().find(|f| f.uses_reductions()).expect("a family with subgroup variants");
    let source = compose(family, Variant { dtype: DType::F32, subgroups: true });
    assert!(validate(&source, Capabilities::empty()).is_err());
}

/// SPIR-V opcodes and the capability of SPV_KHR_cooperative_matrix.
const OP_CAPABILITY: u32 = 17;
const CAPABILITY_COOPERATIVE_MATRIX: u32 = 6022;
const OP_CONSTANT: u32 = 43;
const OP_TYPE_COOPERATIVE_MATRIX: u32 = 4456;
const OP_COOPERATIVE_MATRIX_LOAD: u32 = 4457;
const OP_COOPERATIVE_MATRIX_STORE: u32 = 4458;
const OP_COOPERATIVE_MATRIX_MUL_ADD: u32 = 4459;

/// Instructions of a SPIR-V module as (opcode, operands).
fn instructions(words: &[u32]) -> Vec<(u32, &[u32])> {
    let mut out = Vec::new();
    let mut at = 5; // the header
    while at < words.len() {
        let (count, opcode) = ((words[at] >> 16) as usize, words[at] & 0xffff);
        assert!(count > 0 && at + count <= words.len(), "malformed SPIR-V at word {at}");
        out.push((opcode, &words[at + 1..at + count]));
        at += count;
    }
    out
}

/// A native cooperative module's SPIR-V for `entry`, as wgpu's Vulkan backend writes it, with the
/// given pipeline constants.
fn cooperative_spirv(native: &str, entry: &str, constants: &[(&str, f64)]) -> Vec<u32> {
    let module = parse(native).expect("parses");
    let capabilities = Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP | Capabilities::COOPERATIVE_MATRIX;
    let info = Validator::new(ValidationFlags::all(), capabilities).validate(&module).expect("validates");
    let constants: naga::back::PipelineConstants = constants.iter().map(|&(name, v)| (name.to_string(), v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &constants,
    )
    .expect("overrides");
    let options = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
    let pipeline =
        naga::back::spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: entry.into() };
    naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline)).expect("SPIR-V")
}

/// (use, layout) of every OpCooperativeMatrixLoadKHR, the layouts of the stores, and the number of
/// OpCooperativeMatrixMulAddKHR, asserting the module declares the capability.
fn cooperative_operations(words: &[u32]) -> (Vec<(u32, u32)>, Vec<u32>, usize) {
    let ops = instructions(words);
    assert!(
        ops.iter().any(|&(op, operands)| op == OP_CAPABILITY && operands == [CAPABILITY_COOPERATIVE_MATRIX]),
        "no CooperativeMatrixKHR capability"
    );
    // Ids of constants and of the matrix types' uses (OpTypeCooperativeMatrixKHR: result, component
    // type, scope, rows, columns, use; all but the result and component type are constant ids).
    let constants: std::collections::HashMap<u32, u32> = ops
        .iter()
        .filter(|(op, operands)| *op == OP_CONSTANT && operands.len() == 3)
        .map(|(_, operands)| (operands[1], operands[2]))
        .collect();
    let uses: std::collections::HashMap<u32, u32> = ops
        .iter()
        .filter(|(op, _)| *op == OP_TYPE_COOPERATIVE_MATRIX)
        .map(|(_, operands)| (operands[0], constants[&operands[5]]))
        .collect();
    let (mut loads, mut stores, mut products) = (Vec::new(), Vec::new(), 0);
    for (op, operands) in &ops {
        match *op {
            // result type, result, pointer, layout, stride
            OP_COOPERATIVE_MATRIX_LOAD => loads.push((uses[&operands[0]], constants[&operands[3]])),
            // pointer, object, layout, stride
            OP_COOPERATIVE_MATRIX_STORE => stores.push(constants[&operands[2]]),
            OP_COOPERATIVE_MATRIX_MUL_ADD => products += 1,
            _ => {}
        }
    }
    (loads, stores, products)
}

const ROW_MAJOR: u32 = 0;
const COLUMN_MAJOR: u32 = 1;
const USE_A: u32 = 0;
const USE_B: u32 = 1;

#[test]
fn cooperative_attention_emits_spirv_matrix_instructions() {
    // As for the matmul below: the native attention_coop and qkv_attention_coop validate only with the
    // capability, and every entry's SPIR-V multiplies on the matrix units with the layouts the
    // emulation reads: Q and the weights row-major (A), K column-major (K^T) and V row-major (B),
    // products stored row-major.
    let families = [
        (Family::AttentionCoop, ["flash_attention", "grouped_attention"].as_slice()),
        (Family::QkvAttentionCoop, ["qkv_attention"].as_slice()),
    ];
    for (family, entries) in families {
        let native = compose(family, Variant { dtype: DType::F16, subgroups: true });
        assert!(
            validate(&native, Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP).is_err(),
            "{family}: the native flavour validated without COOPERATIVE_MATRIX"
        );
        let emulated = compose(family, Variant { dtype: DType::F16, subgroups: false });
        validate(&emulated, Capabilities::SHADER_FLOAT16).expect("the emulation needs only f16");
        assert!(!emulated.contains("coop_mat16x16") && !emulated.contains("enable wgpu_cooperative_matrix;"));
        for &entry in entries {
            let words = cooperative_spirv(&native, entry, &[]);
            let (loads, stores, products) = cooperative_operations(&words);
            assert!(products >= 1, "{entry}: no OpCooperativeMatrixMulAddKHR");
            assert!(loads.iter().all(|&(u, layout)| u != USE_A || layout == ROW_MAJOR), "{entry}: A loads {loads:?}");
            let b_layouts = loads.contains(&(USE_B, COLUMN_MAJOR)) && loads.contains(&(USE_B, ROW_MAJOR));
            assert!(b_layouts, "{entry}: {loads:?}");
            assert!(!stores.is_empty() && stores.iter().all(|&l| l == ROW_MAJOR), "{entry}: stores {stores:?}");
        }
    }
}

#[test]
fn cooperative_matmul_emits_spirv_matrix_instructions() {
    // Lavapipe has no cooperative matrices, so the native kernel cannot run here: check what can be
    // checked without the hardware. It validates only with the capability, and its SPIR-V (as wgpu's
    // Vulkan backend would write it) multiplies on the matrix units, with the layouts the emulation
    // reads: A fragments and stores row-major, B row-major, or column-major from the [col][k] stage of
    // a transposed B. The emulated flavour needs no capability.
    let native = compose(Family::MatmulCoop, Variant { dtype: DType::F16, subgroups: true });
    assert!(
        validate(&native, Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP).is_err(),
        "the native flavour validated without COOPERATIVE_MATRIX"
    );
    let emulated = compose(Family::MatmulCoop, Variant { dtype: DType::F16, subgroups: false });
    validate(&emulated, Capabilities::SHADER_FLOAT16).expect("the emulation needs only f16");
    assert!(!emulated.contains("coop_mat16x16") && !emulated.contains("enable wgpu_cooperative_matrix;"));

    for b_transposed in [false, true] {
        let words = cooperative_spirv(&native, "matmul_coop", &[("B_TRANSPOSED", f64::from(u8::from(b_transposed)))]);
        let (loads, stores, products) = cooperative_operations(&words);
        assert!(products >= 1, "no OpCooperativeMatrixMulAddKHR");
        assert!(!stores.is_empty() && stores.iter().all(|&l| l == ROW_MAJOR), "an accumulator not stored row-major");
        for &(u, layout) in &loads {
            match u {
                USE_A => assert_eq!(layout, ROW_MAJOR, "an A fragment that is not loaded row-major"),
                USE_B => {}
                other => panic!("a fragment of use {other} loaded"),
            }
        }
        let want = if b_transposed { COLUMN_MAJOR } else { ROW_MAJOR };
        assert!(
            loads.contains(&(USE_B, want)),
            "B_TRANSPOSED={b_transposed}: B loaded with layouts {:?}",
            loads.iter().filter(|(u, _)| *u == USE_B).collect::<Vec<_>>()
        );
    }
}

#[test]
fn cooperative_conv_emits_spirv_matrix_instructions() {
    // conv2d_coop is matmul_coop's block on conv2d's operands: the native flavour validates only with
    // the capability, and its SPIR-V multiplies on the matrix units with the weight (A) and im2col(x)
    // (B, K x N as a convolution's B always is) loaded row-major, products stored row-major.
    let native = compose(Family::Conv2dCoop, Variant { dtype: DType::F16, subgroups: true });
    assert!(
        validate(&native, Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP).is_err(),
        "the native flavour validated without COOPERATIVE_MATRIX"
    );
    let emulated = compose(Family::Conv2dCoop, Variant { dtype: DType::F16, subgroups: false });
    validate(&emulated, Capabilities::SHADER_FLOAT16).expect("the emulation needs only f16");
    assert!(!emulated.contains("coop_mat16x16") && !emulated.contains("enable wgpu_cooperative_matrix;"));
    for ksize in [1.0, 3.0] {
        let words = cooperative_spirv(&native, "matmul_coop", &[("KSIZE", ksize), ("HAS_BIAS", 1.0)]);
        let (loads, stores, products) = cooperative_operations(&words);
        assert!(products >= 1, "KSIZE {ksize}: no OpCooperativeMatrixMulAddKHR");
        assert!(loads.contains(&(USE_A, ROW_MAJOR)) && loads.contains(&(USE_B, ROW_MAJOR)), "{loads:?}");
        // (The column-major B load of a transposed B stays in the module behind the false constant.)
        assert!(loads.iter().all(|&(u, layout)| u != USE_A || layout == ROW_MAJOR), "KSIZE {ksize}: loads {loads:?}");
        assert!(!stores.is_empty() && stores.iter().all(|&l| l == ROW_MAJOR), "KSIZE {ksize}: stores {stores:?}");
    }
}

/// (member, byte offset) of the WGSL struct `name`, from naga's layouter.
fn wgsl_layout(module: &naga::Module, name: &str) -> Option<(Vec<(String, usize)>, usize)> {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).expect("layout");
    module.types.iter().find_map(|(handle, ty)| match &ty.inner {
        naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(name) => {
            let _ = handle;
            Some((
                members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize)).collect(),
                *span as usize,
            ))
        }
        _ => None,
    })
}

fn show(fields: &[(String, usize)]) -> String {
    fields.iter().map(|(n, o)| format!("  {o:>4} {n}")).collect::<Vec<_>>().join("\n")
}

/// The Rust struct's fields against the WGSL struct's members: same names, same offsets, in order,
/// and the Rust bytes cover the WGSL struct once padded to 16 (uniform buffers are).
fn compare(family: Family, rust: &ParamsLayout, module: &naga::Module) -> Result<(), String> {
    let Some((wgsl, wgsl_size)) = wgsl_layout(module, rust.struct_name) else {
        return Err(format!("{family}: the WGSL module has no struct {}", rust.struct_name));
    };
    let rust_fields: Vec<(String, usize)> = rust.fields.iter().map(|&(n, o)| (n.to_string(), o)).collect();
    if rust_fields != wgsl || rust.size.div_ceil(16) * 16 < wgsl_size {
        return Err(format!(
            "{family}: {} differs between Rust (size {}) and WGSL (size {wgsl_size})\nRust:\n{}\nWGSL:\n{}",
            rust.struct_name,
            rust.size,
            show(&rust_fields),
            show(&wgsl)
        ));
    }
    Ok(())
}

#[test]
fn params_structs_match_the_wgsl_structs() {
    for &family in Family::ALL {
        let module = parse(&compose(family, variants(family)[0])).expect("parses");
        if let Err(e) = compare(family, family.params_layout(), &module) {
            panic!("{e}");
        }
    }
}

#[test]
fn a_shifted_member_is_reported_with_both_layouts() {
    // Guards the test above: a WGSL struct with a member inserted fails, and the message shows both.
    let family = Family::Elementwise;
    let source = compose(family, variants(family)[0]).replace("    n: u32,\n", "    n: u32,\n    extra: u32,\n");
    let err = compare(family, family.params_layout(), &parse(&source).expect("parses")).unwrap_err();
    assert!(err.contains("Rust:") && err.contains("WGSL:") && err.contains("extra") && err.contains("rhs_n"), "{err}");
}

#[test]
fn declared_constants_are_exactly_the_overrides() {
    for &family in Family::ALL {
        let module = parse(&compose(family, variants(family)[0])).expect("parses");
        let mut overrides: Vec<(String, ConstType)> = module
            .overrides
            .iter()
            .map(|(_, o)| {
                let ty = match module.types[o.ty].inner {
                    naga::TypeInner::Scalar(naga::Scalar::BOOL) => ConstType::Bool,
                    naga::TypeInner::Scalar(naga::Scalar::U32) => ConstType::U32,
                    ref other => panic!("{family}: override {:?} of unsupported type {other:?}", o.name),
                };
                (o.name.clone().unwrap_or_default(), ty)
            })
            .collect();
        let mut declared: Vec<(String, ConstType)> =
            family.constants().iter().map(|&(n, t)| (n.to_string(), t)).collect();
        overrides.sort_by(|a, b| a.0.cmp(&b.0));
        declared.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(declared, overrides, "{family}: declared constants (left) vs WGSL overrides (right)");
    }
}
