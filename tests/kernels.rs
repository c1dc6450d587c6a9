//! The kernel contract, checked with naga alone (no GPU): every WGSL variant validates (the portable
//! ones without f16 or subgroups), each family's params struct matches its WGSL struct member for
//! member, and its declared specialisation constants are exactly the module's overrides.

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
            if let Err(e) = validate(&source, capabilities) {
                panic!("{family}{}: {e}", variant.suffix());
            }
            count += 1;
        }
    }
    assert!(count >= Family::ALL.len(), "only {count} variants validated");
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
