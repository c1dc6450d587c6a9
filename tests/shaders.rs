//! Validates every WGSL variant with naga alone (no GPU): the full variants with every capability,
//! and the portable variants with neither f16 nor subgroups, which proves they use neither.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use scalewise::DType;
use scalewise::shaders::ALL_FAMILIES;

fn validate(source: &str, capabilities: Capabilities) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    Validator::new(ValidationFlags::all(), capabilities).validate(&module).map_err(|e| e.emit_to_string(source))?;
    Ok(())
}

#[test]
fn every_variant_validates() {
    let mut count = 0;
    for family in ALL_FAMILIES {
        for variant in family.variants() {
            let source = family.compose(variant);
            let mut capabilities = Capabilities::empty();
            if variant.dtype == DType::F16 {
                capabilities |= Capabilities::SHADER_FLOAT16;
            }
            if variant.subgroups {
                capabilities |= Capabilities::SUBGROUP;
            }
            if let Err(e) = validate(&source, capabilities) {
                panic!("{}{}: {e}", family.name, variant.suffix());
            }
            count += 1;
        }
    }
    assert!(count >= 14, "only {count} variants validated");
}

#[test]
fn portable_variants_need_neither_f16_nor_subgroups() {
    for family in ALL_FAMILIES {
        for variant in family.variants().into_iter().filter(|v| !v.subgroups && v.dtype != DType::F16) {
            let source = family.compose(variant);
            if let Err(e) = validate(&source, Capabilities::empty()) {
                panic!("{}{} needs an optional capability: {e}", family.name, variant.suffix());
            }
        }
    }
}

#[test]
fn subgroup_variants_are_rejected_without_the_capability() {
    // Guards the test above: validation without capabilities really does reject subgroup code.
    let family = ALL_FAMILIES.iter().find(|f| f.has_subgroup_variant()).expect("a family with subgroup variants");
    let source = family.compose(scalewise::shaders::Variant { dtype: DType::F32, subgroups: true });
    assert!(validate(&source, Capabilities::empty()).is_err());
}
