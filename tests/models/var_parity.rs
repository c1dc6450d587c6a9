//! Parity with PyTorch: golden fixtures made by scripts/var_reference.py (a float64 PyTorch model
//! written from the spec, with float16-rounded weights saved by torch.save) for the VQVAE primitives,
//! teacher-forced logits of a tiny VAR + VQVAE, and a greedy generation.
//! Regenerate with `python scripts/var_reference.py --out tests/fixtures/var`.

use std::path::PathBuf;

use crate::common::{Tol, assert_close, full_device};
use scalewise::generate::{GenerateOptions, Pipeline};
use scalewise::nn::vqvae::{AttnBlock, phi_index};
use scalewise::nn::{VarModel, VqVae};
use scalewise::ops::{downsample_area, group_norm, upsample_bicubic};
use scalewise::weights::{HostTensor, StateDict};
use scalewise::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/var").join(name)
}

fn golden() -> &'static StateDict {
    static GOLDEN: std::sync::OnceLock<StateDict> = std::sync::OnceLock::new();
    GOLDEN.get_or_init(|| StateDict::load(fixture("golden.safetensors")).expect("golden fixture loads"))
}

fn g(key: &str) -> &'static HostTensor {
    golden().get(key).unwrap_or_else(|| panic!("golden fixture lacks {key}"))
}

fn upload(device: &Device, key: &str) -> Tensor {
    let t = g(key);
    Tensor::from_f32(device, &t.shape, &t.data, DType::F32).unwrap()
}

fn want(key: &str) -> Vec<f64> {
    g(key).data.iter().map(|&v| v as f64).collect()
}

fn ids(key: &str) -> Vec<u32> {
    g(key).data.iter().map(|&v| v as u32).collect()
}

fn meta(key: &str) -> serde_json::Value {
    let text = golden().metadata.get(key).unwrap_or_else(|| panic!("golden metadata lacks {key}"));
    serde_json::from_str(text).unwrap()
}

const PRIMITIVE_SCALES: [usize; 10] = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];

/// f32 end-to-end tolerance: errors relative to the tensor's magnitude.
fn tol32(want: &[f64]) -> Tol {
    let magnitude = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    Tol { atol: 2e-6 * magnitude.max(1.0), rtol: 1e-5 }
}

backend_tests! {
    fn bicubic_and_area_match_pytorch_on_every_scale(device: &Device, config: &str) {
        for pn in PRIMITIVE_SCALES {
            let up = upsample_bicubic(&upload(device, &format!("bicubic.in.{pn}")), 16, 16).unwrap();
            let w = want(&format!("bicubic.out.{pn}"));
            assert_close(&up.to_vec_f32().unwrap(), &w, tol32(&w), &format!("{config}: bicubic {pn} -> 16"));
            let down = downsample_area(&upload(device, "area.in"), pn, pn).unwrap();
            let w = want(&format!("area.out.{pn}"));
            assert_close(&down.to_vec_f32().unwrap(), &w, tol32(&w), &format!("{config}: area 16 -> {pn}"));
        }
    }
}

#[test]
fn phi_tables_match_the_official_argmin() {
    let table10: Vec<usize> = g("phi_table.10").data.iter().map(|&v| v as usize).collect();
    assert_eq!(table10, (0..10).map(|si| phi_index(si, 10, 4)).collect::<Vec<_>>());
    assert_eq!(table10, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
    let table6: Vec<usize> = g("phi_table.6").data.iter().map(|&v| v as usize).collect();
    assert_eq!(table6, (0..6).map(|si| phi_index(si, 6, 4)).collect::<Vec<_>>());
}

backend_tests! {
    fn group_norm_and_attention_block_match_pytorch(device: &Device, config: &str) {
        let x = upload(device, "group_norm.in");
        let out = group_norm(
            &x,
            32,
            Some(&upload(device, "group_norm.weight")),
            Some(&upload(device, "group_norm.bias")),
            1e-6,
        )
        .unwrap();
        let w = want("group_norm.out");
        assert_close(&out.to_vec_f32().unwrap(), &w, tol32(&w), &format!("{config}: group norm"));

        let block = AttnBlock::from_state_dict(device, golden(), "attn_block.", 64, DType::F32).unwrap();
        let out = block.forward(&upload(device, "attn_block.in")).unwrap();
        let w = want("attn_block.out");
        assert_close(&out.to_vec_f32().unwrap(), &w, tol32(&w), &format!("{config}: attention block"));
    }
}

fn tiny_pipeline(device: &Device, dtype: DType) -> Pipeline {
    let var = VarModel::from_state_dict(device, &StateDict::load(fixture("tiny_var.pth")).unwrap(), dtype).unwrap();
    let vae = VqVae::from_state_dict(device, &StateDict::load(fixture("tiny_vae.pth")).unwrap(), dtype).unwrap();
    Pipeline::new(var, vae).unwrap()
}

/// (decoder output + 1) / 2 clamped, as the fixture's images are.
fn to_unit(raw: &[f32]) -> Vec<f32> {
    raw.iter().map(|v| (v.clamp(-1.0, 1.0) + 1.0) * 0.5).collect()
}

#[test]
fn tiny_checkpoints_load_with_inferred_hyperparameters() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, DType::F32);
    let c = pipeline.config();
    assert_eq!((c.depth, c.width, c.heads, c.head_dim, c.mlp_hidden), (2, 64, 2, 32, 256));
    assert_eq!((c.num_classes, c.vocab, c.cvae), (10, 64, 8));
    assert_eq!(c.patch_nums, serde_json::from_value::<Vec<usize>>(meta("patch_nums")).unwrap());
    // Per block: qkv 3C^2, q/v biases 2C, proj C^2 + C, MLP 8C^2 + 5C, AdaLN 6C^2 + 6C, 2 temperatures.
    // Then class table 11C, pos_start C, pos_1LC 91C, lvl_embed 6C, word_embed 8C + C, head AdaLN
    // 2C^2 + 2C, head 64C + 64.
    let w = 64;
    let block = 18 * w * w + 14 * w + 2;
    assert_eq!(c.parameters, 2 * block + (11 + 1 + 91 + 6 + 8 + 1 + 2 + 64) * w + 2 * w * w + 64);
    let v = &pipeline.vae.config;
    assert_eq!((v.vocab, v.cvae, v.phi_convs, v.blocks_per_level), (64, 8, 4, 2));
    assert_eq!(v.level_channels, [64, 32]);
    assert_eq!(v.attn_levels, [1]);
    assert_eq!(pipeline.image_size(), 12);
}

backend_tests! {
    fn teacher_forced_logits_fhat_and_image_match_pytorch(device: &Device, config: &str) {
        let mut dtypes = vec![DType::F32];
        if device.caps().f16 {
            dtypes.push(DType::F16);
        }
        for dtype in dtypes {
            let pipeline = tiny_pipeline(device, dtype);
            let labels: Vec<usize> = ids("tf.labels").iter().map(|&l| l as usize).collect();
            let options = GenerateOptions { labels, cfg: 1.0, top_k: 0, keep_logits: true, ..Default::default() };
            let mut generation = pipeline.start(&options).unwrap();
            for si in 0..generation.scales() {
                let step = generation.step_forced(&ids(&format!("tf.tokens.{si}"))).unwrap();
                let w = want(&format!("tf.logits.{si}"));
                let tol = match dtype {
                    // Activations stored as f16 (weights are f16-exact): about 1e-3 of the logits' range.
                    DType::F16 => Tol { atol: 2e-3 * w.iter().fold(0f64, |m, v| m.max(v.abs())), rtol: 0.0 },
                    _ => tol32(&w),
                };
                let logits = step.logits.unwrap();
                let err = logits.iter().zip(&w).fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
                let range = w.iter().fold(0f64, |m, v| m.max(v.abs()));
                // Reported with --nocapture (BENCHMARKS.md quotes these).
                eprintln!("{config} {dtype}: scale {si} logits max |err| {err:.2e} (max |logit| {range:.1})");
                assert_close(&logits, &w, tol, &format!("{config} {dtype}: logits of scale {si}"));
            }
            let w = want("tf.fhat");
            let f_hat = generation.f_hat().to_dtype(DType::F32).unwrap().to_vec_f32().unwrap();
            let tol = if dtype == DType::F16 { Tol { atol: 5e-3, rtol: 2e-3 } } else { tol32(&w) };
            assert_close(&f_hat, &w, tol, &format!("{config} {dtype}: f_hat"));
            let raw = generation.decode_raw().unwrap().to_dtype(DType::F32).unwrap().to_vec_f32().unwrap();
            let w = want("tf.image");
            let tol = if dtype == DType::F16 { Tol { atol: 2e-2, rtol: 0.0 } } else { tol32(&w) };
            assert_close(&to_unit(&raw), &w, tol, &format!("{config} {dtype}: decoded image"));
        }
    }
}

backend_tests! {
    fn greedy_generation_reproduces_pytorch_tokens_and_image(device: &Device, config: &str) {
        let pipeline = tiny_pipeline(device, DType::F32);
        let labels: Vec<usize> = ids("greedy.labels").iter().map(|&l| l as usize).collect();
        let cfg = meta("greedy_cfg").as_f64().unwrap() as f32;
        let options = GenerateOptions { labels, cfg, top_k: 1, top_p: 0.0, seed: 12345, ..Default::default() };
        let mut generation = pipeline.start(&options).unwrap();
        for step in generation.by_ref() {
            let step = step.unwrap();
            assert_eq!(
                step.tokens,
                ids(&format!("greedy.tokens.{}", step.index)),
                "{config}: tokens of scale {}",
                step.index
            );
        }
        let raw = generation.decode_raw().unwrap().to_vec_f32().unwrap();
        let w = want("greedy.image");
        assert_close(&to_unit(&raw), &w, tol32(&w), &format!("{config}: greedy image"));
    }
}
