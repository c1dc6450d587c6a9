//! M-VAR: parity with scripts/mvar_reference.py (a float64 PyTorch model written from the spec, with
//! float16-rounded weights saved by torch.save under the official key names) for both attention
//! variants: the Mamba-2 layer alone, teacher-forced logits of every scale and a greedy generation;
//! the carried Mamba state against the official recompute-the-prefix inference on random weights; and
//! the checkpoints the loader must refuse; and the same comparisons through `generate::Pipeline`,
//! which drives M-VAR with VAR's generation loop. Regenerate the fixtures with
//! `python scripts/mvar_reference.py --out tests/fixtures/mvar`.

use std::path::PathBuf;

use crate::common::{Rng, Seeded, Tol, assert_close, assert_weights_error, full_device};
use scalewise::generate::{GenerateOptions, Pipeline, Transformer};
use scalewise::nn::mvar::{MvarState, is_mvar};
use scalewise::nn::{Mamba2Block, Mamba2Dims, MvarConfig, MvarModel, ScaleHistory, VarModel, VqVae};
use scalewise::ops::sample::{SampleOptions, sample_tokens};
use scalewise::weights::{HostTensor, StateDict};
use scalewise::{DType, Device, Error, Tensor};
use scalewise_support::synthetic::{MvarShape, mvar_state_dict};

const VARIANTS: [&str; 2] = ["cos", "plain"];

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

fn golden() -> &'static StateDict {
    static GOLDEN: std::sync::OnceLock<StateDict> = std::sync::OnceLock::new();
    GOLDEN.get_or_init(|| StateDict::load(fixture("mvar/golden.safetensors")).expect("golden fixture loads"))
}

fn g(key: &str) -> &'static HostTensor {
    golden().get(key).unwrap_or_else(|| panic!("golden fixture lacks {key}"))
}

fn want(key: &str) -> Vec<f64> {
    g(key).data.iter().map(|&v| v as f64).collect()
}

fn ids(key: &str) -> Vec<u32> {
    g(key).data.iter().map(|&v| v as u32).collect()
}

fn checkpoint(variant: &str) -> StateDict {
    StateDict::load(fixture(&format!("mvar/tiny_mvar_{variant}.pth"))).expect("fixture loads")
}

/// The VQVAE of the VAR fixtures, which the M-VAR fixtures were made with (kept f32: the f16 runs
/// measure the transformer's error alone).
fn tiny_vae(device: &Device) -> VqVae {
    VqVae::from_state_dict(device, &StateDict::load(fixture("var/tiny_vae.pth")).unwrap(), DType::F32).unwrap()
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0f64, |m, v| m.max(v.abs()))
}

/// f32 end-to-end tolerance: errors relative to the tensor's magnitude.
fn tol32(want: &[f64]) -> Tol {
    Tol { atol: 2e-6 * max_abs(want).max(1.0), rtol: 1e-5 }
}

/// What a run of the scales produced: per scale the (B, n) token ids and the (2B, n, V) logits.
struct Run {
    tokens: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
    state: MvarState,
}

/// Runs every scale with CFG (conditional labels, then the null class): teacher-forced with `forced`
/// tokens, else greedy (top-k 1 on the guided logits, ramp cfg * si / (scales - 1)). The loop of
/// generate::Pipeline with M-VAR in VAR's place.
fn run_scales(
    model: &MvarModel,
    vae: &VqVae,
    labels: &[u32],
    cfg: f32,
    history: ScaleHistory,
    forced: Option<&[Vec<u32>]>,
) -> Run {
    let config = &model.config.base;
    let device = model.device();
    let batch = labels.len();
    let mut rows = labels.to_vec();
    rows.extend(std::iter::repeat_n(config.num_classes as u32, batch));
    let conditions = model.conditions(&rows).unwrap();
    let mut state = model.new_state(rows.len(), history);
    let scales = config.patch_nums.len();
    let side = config.latent_side();
    let mut f_hat = Tensor::zeros(device, &[batch, config.cvae, side, side], DType::F32).unwrap();
    let mut x = model.first_input(&conditions).unwrap();
    let (mut tokens, mut logits_per_scale) = (Vec::new(), Vec::new());
    for (si, &pn) in config.patch_nums.iter().enumerate() {
        let logits = model.forward(&x, &conditions, &mut state).unwrap();
        let ids = match forced {
            Some(forced) => Tensor::from_u32(device, &[batch, pn * pn], &forced[si]).unwrap(),
            None => {
                let options = SampleOptions {
                    cfg: Some(cfg),
                    cfg_ratio: si as f32 / (scales - 1) as f32,
                    top_k: 1,
                    step: si as u32,
                    ..Default::default()
                };
                sample_tokens(&logits, &options).unwrap().ids
            }
        };
        f_hat = vae.accumulate(&f_hat, &vae.lookup(&ids, pn).unwrap(), si, scales).unwrap();
        if si + 1 < scales {
            let next = vae.next_token_map(&f_hat, config.patch_nums[si + 1]).unwrap();
            x = model.scale_input(si + 1, &next, true).unwrap();
        }
        tokens.push(ids.to_vec_u32().unwrap());
        logits_per_scale.push(logits.to_vec_f32().unwrap());
    }
    Run { tokens, logits: logits_per_scale, state }
}

#[test]
fn tiny_checkpoints_load_with_inferred_hyperparameters() {
    for variant in VARIANTS {
        let sd = checkpoint(variant);
        assert!(is_mvar(&sd), "{variant}");
        let config = MvarConfig::infer(&sd).unwrap();
        let c = &config.base;
        assert_eq!((c.depth, c.width, c.heads, c.head_dim, c.mlp_hidden), (2, 64, 1, 64, 256), "{variant}");
        assert_eq!((c.num_classes, c.vocab, c.cvae, c.shared_adaln), (10, 64, 8, false), "{variant}");
        // No metadata in a .pth: the schedule comes from the block-diagonal attn_bias_for_masking.
        assert_eq!(c.patch_nums, [1, 2, 3, 4, 5, 6], "{variant}");
        assert_eq!(config.cosine_attention, variant == "cos");
        let mamba = Mamba2Dims { d_model: 64, d_inner: 128, d_state: 64, n_heads: 2, n_groups: 1, d_conv: 4 };
        assert_eq!(config.mamba, mamba, "{variant}");
        assert_eq!((mamba.in_proj_rows(), mamba.conv_channels()), (386, 256));
        // Per block: qkv 3C^2, q/v biases 2C, proj C^2 + C, FFN 8C^2 + 5C, AdaLN 9C^2 + 9C, Mamba-2
        // (in_proj 386C, conv 256 * 5, dt_bias / A_log / D 3 * 2, norm 128, out_proj 128C), and the
        // temperature with cosine attention. Then class table 11C, pos_start C, pos_1LC 91C,
        // lvl_embed 6C, word_embed 8C + C, head AdaLN 2C^2 + 2C, head 64C + 64.
        let w = 64;
        let block = 21 * w * w + 17 * w + 386 * w + 256 * 5 + 6 + 128 + 128 * w + usize::from(variant == "cos");
        assert_eq!(c.parameters, 2 * block + (11 + 1 + 91 + 6 + 8 + 1 + 2 + 64) * w + 2 * w * w + 64, "{variant}");
    }
}

#[test]
fn the_mamba_layer_matches_pytorch() {
    let device = full_device();
    let block = Mamba2Block::from_state_dict(device, &checkpoint("cos"), "blocks.0.mamba.", 1, DType::F32).unwrap();
    let x = g("mamba.in");
    let x = Tensor::from_f32(device, &x.shape, &x.data, DType::F32).unwrap();
    let (out, _) = block.forward(&x, None).unwrap();
    let w = want("mamba.out");
    assert_close(&out.to_vec_f32().unwrap(), &w, tol32(&w), "Mamba-2 layer");
}

backend_tests! {
    fn teacher_forced_logits_match_pytorch(device: &Device, config: &str) {
        let vae = tiny_vae(device);
        let labels = ids("tf.labels");
        let tokens: Vec<Vec<u32>> = (0..6).map(|si| ids(&format!("tf.tokens.{si}"))).collect();
        let mut runs = vec![(DType::F32, ScaleHistory::CarryState), (DType::F32, ScaleHistory::RecomputePrefix)];
        if device.caps().f16 {
            runs.push((DType::F16, ScaleHistory::CarryState));
        }
        for variant in VARIANTS {
            let sd = checkpoint(variant);
            for &(dtype, history) in &runs {
                let model = MvarModel::from_state_dict(device, &sd, dtype).unwrap();
                let run = run_scales(&model, &vae, &labels, 0.0, history, Some(&tokens));
                for (si, logits) in run.logits.iter().enumerate() {
                    let w = want(&format!("{variant}.tf.logits.{si}"));
                    let err = logits.iter().zip(&w).fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
                    let what = format!("{config} {variant} {dtype} {history:?}: logits of scale {si}");
                    // Reported with --nocapture.
                    eprintln!("{what}: max |err| {err:.2e} (max |logit| {:.1})", max_abs(&w));
                    let tol = match dtype {
                        // Activations stored as f16 (weights are f16-exact). VAR's parity test allows
                        // 2e-3 of the logits' range; each M-VAR block stores six more f16
                        // intermediates in its Mamba-2 layer (in_proj, conv, scan, gate, norm, out_proj),
                        // and errors here reach 2.3e-3 of the range (cos, scale 2).
                        DType::F16 => Tol { atol: 4e-3 * max_abs(&w), rtol: 0.0 },
                        _ => tol32(&w),
                    };
                    assert_close(logits, &w, tol, &what);
                }
            }
        }
    }
}

backend_tests! {
    fn greedy_generation_reproduces_pytorch_tokens(device: &Device, config: &str) {
        let vae = tiny_vae(device);
        let cfg = golden().metadata["greedy_cfg"].parse::<f32>().unwrap();
        for variant in VARIANTS {
            let model = MvarModel::from_state_dict(device, &checkpoint(variant), DType::F32).unwrap();
            let labels = ids(&format!("{variant}.greedy.labels"));
            let run = run_scales(&model, &vae, &labels, cfg, ScaleHistory::CarryState, None);
            for (si, tokens) in run.tokens.iter().enumerate() {
                assert_eq!(tokens, &ids(&format!("{variant}.greedy.tokens.{si}")), "{config} {variant}: scale {si}");
            }
        }
    }
}

/// A random M-VAR of a tiny shape (2 heads, ragged schedule) whose branches all weigh in: the AdaLN
/// gammas are lifted by 0.5 and dt set to 0.34..0.55, so a state carried wrongly moves the logits.
fn random_mvar(cosine_attention: bool, seed: u64) -> StateDict {
    let shape = MvarShape {
        depth: 2,
        width: 128,
        num_classes: 10,
        vocab: 64,
        cvae: 8,
        patch_nums: vec![1, 2, 3, 5, 7],
        cosine_attention,
    };
    let mut sd = mvar_state_dict(&shape, seed).unwrap();
    let c = shape.width;
    for i in 0..shape.depth {
        let key = format!("blocks.{i}.ada_lin.1.bias");
        let mut bias = sd.remove(&key).unwrap().data;
        bias[..3 * c].iter_mut().for_each(|v| *v += 0.5);
        sd.insert(key, &[9 * c], bias).unwrap();
        let key = format!("blocks.{i}.mamba.dt_bias");
        let heads = sd.get(&key).unwrap().data.len();
        let dt_bias: Vec<f32> = (0..heads).map(|h| -0.9 + 0.2 * h as f32).collect();
        sd.insert(key, &[heads], dt_bias).unwrap();
    }
    sd
}

#[test]
fn carried_state_equals_recomputing_the_prefix() {
    let device = full_device();
    let vae = tiny_vae(device);
    for cosine in [true, false] {
        let mut rng = Rng::for_test(&format!("carried_state_equals_recomputing_the_prefix::{cosine}"));
        let model = MvarModel::from_state_dict(device, &random_mvar(cosine, rng.next_u64()), DType::F32).unwrap();
        let labels = [rng.range(0, 10) as u32, rng.range(0, 10) as u32];
        let carried = run_scales(&model, &vae, &labels, 3.0, ScaleHistory::CarryState, None);
        let recomputed = run_scales(&model, &vae, &labels, 3.0, ScaleHistory::RecomputePrefix, None);
        // Each Mamba layer steps through the 88 tokens once instead of 1 + 5 + 14 + 39 + 88.
        assert_eq!((carried.state.len, carried.state.mamba_token_steps), (88, 88));
        assert_eq!((recomputed.state.len, recomputed.state.mamba_token_steps), (88, 147));
        for si in 0..5 {
            let w: Vec<f64> = recomputed.logits[si].iter().map(|&v| v as f64).collect();
            let what = format!("cosine {cosine}: logits of scale {si}, carried vs recomputed");
            assert_close(&carried.logits[si], &w, tol32(&w), &what);
            assert_eq!(carried.tokens[si], recomputed.tokens[si], "cosine {cosine}: greedy tokens of scale {si}");
        }
        // The tokens are not all alike (a degenerate model would make the comparison empty).
        let last = &carried.tokens[4];
        assert!(last.iter().any(|&t| t != last[0]), "cosine {cosine}: the last scale's tokens are all {}", last[0]);
    }
}

fn invalid_message(err: Error) -> String {
    match err {
        Error::InvalidArgument { op, msg } => format!("{op}: {msg}"),
        other => panic!("expected InvalidArgument, got {other}"),
    }
}

#[test]
fn var_and_mvar_checkpoints_are_told_apart() {
    let var = StateDict::load(fixture("var/tiny_var.pth")).unwrap();
    assert!(!is_mvar(&var));
    let msg = invalid_message(MvarConfig::infer(&var).unwrap_err());
    assert!(msg.contains("VAR checkpoint, not M-VAR") && msg.contains("VarModel"), "{msg}");
    let msg = invalid_message(VarModel::from_state_dict(full_device(), &checkpoint("cos"), DType::F32).err().unwrap());
    assert!(msg.contains("M-VAR checkpoint") && msg.contains("MvarModel"), "{msg}");
    let vae = StateDict::load(fixture("var/tiny_vae.pth")).unwrap();
    let msg = invalid_message(MvarConfig::infer(&vae).unwrap_err());
    assert!(msg.contains("VQVAE"), "{msg}");
}

#[test]
fn a_mix_of_var_and_mvar_blocks_is_refused_in_one_error() {
    let mut sd = checkpoint("plain");
    let mamba: Vec<String> = sd.keys().filter(|k| k.starts_with("blocks.1.mamba.")).map(str::to_string).collect();
    assert_eq!(mamba.len(), 8);
    for key in mamba {
        sd.remove(&key);
    }
    let msg = invalid_message(MvarConfig::infer(&sd).unwrap_err());
    assert!(
        msg.contains("a mix of VAR and M-VAR blocks")
            && msg.contains("blocks 0 have")
            && msg.contains("blocks 1 have none"),
        "{msg}"
    );
}

#[test]
fn mamba_layers_with_several_groups_are_refused_naming_ngroups() {
    let mut sd = checkpoint("cos");
    // ngroups 2: B and C of 2 * 64 channels each.
    let (rows, channels) = (2 * 128 + 4 * 64 + 2, 128 + 4 * 64);
    for i in 0..2 {
        sd.insert(format!("blocks.{i}.mamba.in_proj.weight"), &[rows, 64], vec![0.01; rows * 64]).unwrap();
        sd.insert(format!("blocks.{i}.mamba.conv1d.weight"), &[channels, 1, 4], vec![0.1; channels * 4]).unwrap();
        sd.insert(format!("blocks.{i}.mamba.conv1d.bias"), &[channels], vec![0.0; channels]).unwrap();
    }
    let msg = invalid_message(MvarConfig::infer(&sd).unwrap_err());
    assert!(msg.contains("ngroups = 2") && msg.contains("ngroups 1"), "{msg}");
}

#[test]
fn every_missing_or_misshaped_mamba_key_is_listed_in_one_error() {
    let mut sd = checkpoint("cos");
    for key in ["blocks.0.mamba.D", "blocks.1.mamba.norm.weight", "blocks.1.mamba.conv1d.bias"] {
        sd.remove(key).unwrap();
    }
    sd.insert("blocks.1.mamba.out_proj.weight", &[64, 100], vec![0.0; 6400]).unwrap();
    sd.insert("blocks.0.mamba.dt_proj.bias", &[2], vec![0.0; 2]).unwrap();
    let err = MvarModel::from_state_dict(full_device(), &sd, DType::F32).err().unwrap();
    assert_weights_error(
        err,
        &["blocks.0.mamba.D", "blocks.1.mamba.conv1d.bias", "blocks.1.mamba.norm.weight"],
        &["blocks.0.mamba.dt_proj.bias"],
        &[("blocks.1.mamba.out_proj.weight", &[64, 128], &[64, 100])],
    );
}

// ---------------------------------------------------------------------------------------------
// Generation through generate::Pipeline (VAR's loop: CFG, sampling, f_hat, previews, step_forced)

fn pipeline(device: &Device, variant: &str) -> Pipeline {
    Pipeline::new(MvarModel::from_state_dict(device, &checkpoint(variant), DType::F32).unwrap(), tiny_vae(device))
        .unwrap()
}

/// Mamba token-steps per layer on the fixtures' schedule 1..6 (91 tokens): once each when carried,
/// the prefix sums 1 + 5 + 14 + 30 + 55 + 91 when recomputed.
fn token_steps(history: ScaleHistory) -> usize {
    match history {
        ScaleHistory::CarryState => 91,
        ScaleHistory::RecomputePrefix => 196,
    }
}

#[test]
fn the_pipeline_loads_either_transformer_from_its_keys() {
    let device = full_device();
    let vae = fixture("var/tiny_vae.pth");
    for (file, name) in [
        ("mvar/tiny_mvar_cos.pth", "M-VAR d2, cosine attention"),
        ("mvar/tiny_mvar_plain.pth", "M-VAR d2, plain attention"),
        ("var/tiny_var.pth", "VAR d2"),
    ] {
        let pipeline = Pipeline::load(device, fixture(file), &vae, Some(DType::F32)).unwrap();
        assert_eq!(pipeline.transformer.to_string(), name, "{file}");
        assert_eq!(matches!(pipeline.transformer, Transformer::Mvar(_)), name.starts_with("M-VAR"), "{file}");
        let sd = StateDict::load(fixture(file)).unwrap();
        assert_eq!(&Transformer::infer_config(&sd).unwrap(), pipeline.config(), "{file}");
    }
    // A mix of VAR and M-VAR blocks is one error from the M-VAR inference, whichever way round.
    let mut sd = checkpoint("cos");
    let mamba: Vec<String> = sd.keys().filter(|k| k.starts_with("blocks.1.mamba.")).map(str::to_string).collect();
    for key in mamba {
        sd.remove(&key);
    }
    let err = Transformer::from_state_dict(device, &sd, DType::F32).err().expect("a mixed checkpoint");
    let msg = invalid_message(err);
    assert!(msg.contains("a mix of VAR and M-VAR blocks"), "{msg}");
    assert!(invalid_message(Transformer::infer_config(&sd).unwrap_err()).contains("a mix"));
}

backend_tests! {
    fn pipeline_greedy_generation_reproduces_pytorch_tokens(device: &Device, config: &str) {
        let cfg = golden().metadata["greedy_cfg"].parse::<f32>().unwrap();
        for variant in VARIANTS {
            let pipeline = pipeline(device, variant);
            let labels: Vec<usize> = ids(&format!("{variant}.greedy.labels")).iter().map(|&l| l as usize).collect();
            for history in [ScaleHistory::CarryState, ScaleHistory::RecomputePrefix] {
                let options = GenerateOptions {
                    labels: labels.clone(),
                    cfg,
                    top_k: 1,
                    top_p: 0.0,
                    seed: 12345,
                    profile_stages: false,
                    scale_history: history,
                    ..Default::default()
                };
                let mut generation = pipeline.start(&options).unwrap();
                let steps = generation.by_ref().collect::<scalewise::Result<Vec<_>>>().unwrap();
                for (si, step) in steps.iter().enumerate() {
                    let want = ids(&format!("{variant}.greedy.tokens.{si}"));
                    assert_eq!(step.tokens, want, "{config} {variant} {history:?}: scale {si}");
                }
                assert_eq!(generation.mamba_token_steps(), Some(token_steps(history)), "{variant} {history:?}");
                let images = generation.decode().unwrap();
                assert_eq!(images.len(), labels.len());
            }
        }
    }
}

#[test]
fn pipeline_teacher_forced_logits_match_pytorch() {
    let device = full_device();
    let labels: Vec<usize> = ids("tf.labels").iter().map(|&l| l as usize).collect();
    for variant in VARIANTS {
        let pipeline = pipeline(device, variant);
        for history in [ScaleHistory::CarryState, ScaleHistory::RecomputePrefix] {
            // cfg > 0 keeps the unconditional half, whose logits the fixture holds too; forced
            // tokens skip the sampling.
            let options = GenerateOptions {
                labels: labels.clone(),
                cfg: 1.0,
                keep_logits: true,
                profile_stages: false,
                scale_history: history,
                ..Default::default()
            };
            let mut generation = pipeline.start(&options).unwrap();
            for si in 0..generation.scales() {
                let step = generation.step_forced(&ids(&format!("tf.tokens.{si}"))).unwrap();
                let w = want(&format!("{variant}.tf.logits.{si}"));
                let what = format!("{variant} {history:?}: logits of scale {si}");
                assert_close(&step.logits.expect("kept logits"), &w, tol32(&w), &what);
            }
            assert_eq!(generation.mamba_token_steps(), Some(token_steps(history)), "{variant} {history:?}");
        }
    }
}

#[test]
fn mamba_time_is_measured_apart_with_previews_and_smooth_mode() {
    let device = full_device();
    let pipeline = pipeline(device, "plain");
    let _profiling = crate::var::PROFILING.lock().unwrap_or_else(|e| e.into_inner());
    let options = GenerateOptions {
        labels: vec![4, 9],
        seed: 3,
        cfg: 3.0,
        top_k: 20,
        top_p: 0.9,
        smooth: true,
        preview_every_scale: true,
        profile_stages: true,
        ..Default::default()
    };
    let mut generation = pipeline.start(&options).unwrap();
    let size = pipeline.image_size();
    let mut last = None;
    for step in generation.by_ref() {
        let step = step.unwrap();
        let images = step.images.expect("a preview for every scale");
        assert_eq!(images.len(), 2, "scale {}", step.index);
        assert!(images.iter().all(|i| (i.width, i.height) == (size, size)));
        let t = step.times;
        for (stage, ms) in [
            ("attention/FFN", t.transformer_ms),
            ("mamba", t.mamba_ms),
            ("sampling", t.sampling_ms),
            ("accumulate", t.accumulate_ms),
            ("decode", t.decode_ms),
        ] {
            assert!(ms > 0.0 && ms.is_finite(), "scale {}: {stage} {ms} ms", step.index);
        }
        last = Some(images);
    }
    assert_eq!(last.unwrap(), generation.decode().unwrap(), "the last preview is the result");
    assert_eq!(device.profiled_dispatches().unwrap(), 0, "stage timing leaves no profiler running");
    // Timing and previews change nothing: the same generation unprofiled gives the same images.
    let plain = GenerateOptions { preview_every_scale: false, profile_stages: false, ..options };
    let (images, _) = pipeline.generate(&plain).unwrap();
    assert_eq!(images, generation.decode().unwrap());
}

#[test]
fn max_batch_counts_the_mamba_buffers_of_each_scale_history() {
    use scalewise::nn::var::PATCH_NUMS_256;
    use scalewise_support::synthetic::{VaeShape, vae_state_dict};
    let device = full_device();
    // One layer of width 256 on the 256px schedule (680 tokens): Mamba-2's in_proj output, 1160
    // wide, is the largest buffer per image: over the 256 tokens of the last scale with the carried
    // state, over all 680 when the prefix is recomputed.
    let shape = MvarShape {
        depth: 1,
        width: 256,
        num_classes: 4,
        vocab: 16,
        cvae: 8,
        patch_nums: PATCH_NUMS_256.to_vec(),
        cosine_attention: false,
    };
    let vae = VaeShape { ch: 32, ch_mult: vec![1, 1], blocks_per_level: 1, vocab: 16, cvae: 8, phi_convs: 4 };
    let model = MvarModel::from_state_dict(device, &mvar_state_dict(&shape, 5).unwrap(), DType::F32).unwrap();
    assert_eq!(model.config.mamba.in_proj_rows(), 1160);
    let pipeline =
        Pipeline::new(model, VqVae::from_state_dict(device, &vae_state_dict(&vae, 6).unwrap(), DType::F32).unwrap())
            .unwrap();
    let caps = device.caps();
    let limit = caps.max_arg_bytes.min(caps.max_buffer_bytes);
    let expect = |tokens: u64| (limit / (2 * tokens * 1160 * 4)).min(scalewise::generate::MAX_BATCH as u64) as usize;
    let carried = pipeline.max_batch_with(true, ScaleHistory::CarryState);
    let recomputed = pipeline.max_batch_with(true, ScaleHistory::RecomputePrefix);
    assert_eq!((carried, recomputed), (expect(256), expect(680)), "limit {limit} bytes");
    assert_eq!(pipeline.max_batch(true), carried, "the default history is the carried state");
    let options = |batch: usize, scale_history| GenerateOptions {
        labels: vec![1; batch],
        scale_history,
        profile_stages: false,
        ..Default::default()
    };
    let err = pipeline.start(&options(recomputed + 1, ScaleHistory::RecomputePrefix)).err().unwrap().to_string();
    assert!(err.contains(&format!("at most {recomputed}")), "{err}");
    if recomputed < carried {
        pipeline.validate(&options(recomputed + 1, ScaleHistory::CarryState)).unwrap();
    }
}
