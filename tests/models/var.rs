//! The VAR-specific kernels and the model plumbing around them: the fused qkv split with cosine
//! normalisation into a KV cache, the AdaLN-gated residual, the last-two-dims transpose and the
//! Gumbel-softmax of smooth mode against float64 references on ragged shapes; the Phi table; the
//! checkpoint loaders on synthetic state_dicts with the official key names; and the behaviour of a
//! generation (determinism, batch independence, options, teacher forcing) on a tiny random pipeline.

use crate::common::{Rng, Seeded, Tol, assert_close, assert_weights_error, dtypes, full_device};
use scalewise::generate::{GenerateOptions, Pipeline};
use scalewise::nn::var::META_PATCH_NUMS;
use scalewise::nn::vqvae::phi_index;
use scalewise::nn::{VarConfig, VarModel, VqVae, VqVaeConfig};
use scalewise::ops::attention::reference as attention_ref;
use scalewise::ops::sample::{gumbel_softmax, reference as sample_ref};
use scalewise::ops::transformer::reference as transformer_ref;
use scalewise::ops::{
    AttentionAlgorithm, QkvHeads, attention_tiles, coop_attention_tiles_for, gated_residual, qkv_attention,
    qkv_attention_with, qkv_heads, reference_values,
};
use scalewise::{AttentionDesign, DType, Device, Error, MatrixUnits, Tensor};
use scalewise_support::synthetic::{VaeShape, VarShape, vae_state_dict, var_state_dict};

fn upload(device: &Device, shape: &[usize], data: &[f32], dtype: DType) -> Tensor {
    Tensor::from_f32(device, shape, data, dtype).expect("upload")
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0f64, |m, v| m.max(v.abs()))
}

// ---------------------------------------------------------------------------------------------
// qkv_heads

const K_SENTINEL: f32 = 7.5;
const V_SENTINEL: f32 = -3.25;

backend_tests! {
    fn qkv_heads_matches_the_reference_and_fills_only_the_new_cache_rows(device: &Device, config: &str) {
        let mut rng = Rng::for_config("qkv_heads", config);
        for dtype in dtypes(device) {
            for dim in [32, 64, 24, rng.range(1, 100)] {
                for l2_norm in [true, false] {
                    let (batch, tokens, heads) = (rng.range(1, 3), rng.range(1, 7), rng.range(1, 3));
                    let start = rng.range(0, 5);
                    let cap = start + tokens + rng.range(1, 3);
                    let rows = batch * tokens;
                    let width = heads * dim;
                    let mut data = rng.vec(rows * 3 * width, 2.0);
                    if l2_norm && rng.range(0, 1) == 1 {
                        // A zero q and k head: F.normalize's eps keeps it 0, not NaN.
                        let h = rng.range(0, heads - 1);
                        for part in 0..2 {
                            let base = part * width + h * dim;
                            data[base..base + dim].fill(0.0);
                        }
                    }
                    let head_scale: Vec<f32> = (0..heads).map(|_| 1.0 + 19.0 * rng.uniform(1.0).abs()).collect();
                    let what = format!(
                        "{config} {dtype} b{batch} t{tokens} h{heads} d{dim} cap{cap} start{start} l2 {l2_norm}"
                    );
                    let qkv = upload(device, &[batch, tokens, 3 * width], &data, dtype);
                    let scale = upload(device, &[heads], &head_scale, DType::F32);
                    let cache_shape = [batch, cap, heads, dim];
                    let cache_len = batch * cap * width;
                    let k_cache = upload(device, &cache_shape, &vec![K_SENTINEL; cache_len], dtype);
                    let v_cache = upload(device, &cache_shape, &vec![V_SENTINEL; cache_len], dtype);
                    let q = qkv_heads(&QkvHeads {
                        qkv: &qkv,
                        heads,
                        l2_norm,
                        head_scale: &scale,
                        k_cache: &k_cache,
                        v_cache: &v_cache,
                        start,
                    })
                    .expect("qkv_heads");
                    assert_eq!(q.shape(), [batch, tokens, heads, dim], "{what}");
                    assert_eq!(q.dtype(), dtype, "{what}");

                    let stored = reference_values(&data, dtype);
                    let [want_q, want_k, want_v] =
                        transformer_ref::qkv_heads(&stored, rows, heads, dim, l2_norm, &head_scale);
                    let got_q = q.to_vec_f32().unwrap();
                    assert_close(&got_q, &want_q, Tol::for_dtype(dtype, max_abs(&want_q)), &format!("{what}: q"));

                    let got_k = k_cache.to_vec_f32().unwrap();
                    let got_v = v_cache.to_vec_f32().unwrap();
                    let k_tol = Tol::for_dtype(dtype, max_abs(&want_k));
                    let row_len = width;
                    for b in 0..batch {
                        for t in 0..cap {
                            let span = (b * cap + t) * row_len..(b * cap + t + 1) * row_len;
                            let (k_row, v_row) = (&got_k[span.clone()], &got_v[span]);
                            if (start..start + tokens).contains(&t) {
                                let r = b * tokens + (t - start);
                                let src = r * row_len..(r + 1) * row_len;
                                let what = format!("{what}: cache row b{b} t{t}");
                                assert_close(k_row, &want_k[src.clone()], k_tol, &format!("{what} k"));
                                // V is a plain copy: exact.
                                let want_v_row: Vec<f32> = want_v[src].iter().map(|&v| v as f32).collect();
                                assert_eq!(v_row, want_v_row, "{what} v");
                            } else {
                                assert!(
                                    k_row.iter().all(|&v| v == K_SENTINEL) && v_row.iter().all(|&v| v == V_SENTINEL),
                                    "{what}: cache row b{b} t{t} outside {start}..{} was written",
                                    start + tokens
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One qkv_attention case over the calls of `steps` new tokens each: each attends the earlier calls'
/// cached keys (read from the cache) and its own (normalised in the tile). Keys and queries are
/// rounded to the storage type as the cache holds them, exactly as qkv_heads followed by attention
/// would see them; the caches are poisoned and must hold exactly the calls' rows afterwards.
/// `check_step(step, tokens, start, what)` runs before each call.
fn check_qkv_attention(
    device: &Device,
    config: &str,
    rng: &mut Rng,
    (dtype, dim, l2_norm): (DType, usize, bool),
    steps: &[usize],
    algorithm: AttentionAlgorithm,
    check_step: impl Fn(usize, usize, usize, &str),
) {
    let (batch, heads) = (rng.range(1, 2), rng.range(1, 3));
    let total: usize = steps.iter().sum();
    let cap = total + rng.range(0, 2);
    let width = heads * dim;
    let head_scale: Vec<f32> = (0..heads).map(|_| 1.0 + 9.0 * rng.uniform(1.0).abs()).collect();
    let softmax_scale = if l2_norm { 1.0 } else { 1.0 / (dim as f32).sqrt() };
    let what = format!("{config} {algorithm:?} {dtype} b{batch} h{heads} d{dim} steps {steps:?} cap{cap} l2 {l2_norm}");
    let scale = upload(device, &[heads], &head_scale, DType::F32);
    let cache_shape = [batch, cap, heads, dim];
    let k_cache = upload(device, &cache_shape, &vec![K_SENTINEL; batch * cap * width], dtype);
    let v_cache = upload(device, &cache_shape, &vec![V_SENTINEL; batch * cap * width], dtype);
    // The reference cache (b, token, h, d), as stored.
    let mut want_k = vec![f64::NAN; batch * cap * width];
    let mut want_v = vec![f64::NAN; batch * cap * width];
    let mut start = 0;
    for (step, &tokens) in steps.iter().enumerate() {
        let rows = batch * tokens;
        let data = rng.vec(rows * 3 * width, 2.0);
        let qkv = upload(device, &[batch, tokens, 3 * width], &data, dtype);
        let args =
            QkvHeads { qkv: &qkv, heads, l2_norm, head_scale: &scale, k_cache: &k_cache, v_cache: &v_cache, start };
        check_step(step, tokens, start, &what);
        let out = qkv_attention_with(&args, softmax_scale, algorithm).expect("qkv_attention");
        assert_eq!(out.shape(), [batch, tokens, heads, dim], "{what}");

        let stored = reference_values(&data, dtype);
        let [q, k, v] = transformer_ref::qkv_heads(&stored, rows, heads, dim, l2_norm, &head_scale);
        let as_stored = |x: &[f64]| reference_values(&x.iter().map(|&x| x as f32).collect::<Vec<_>>(), dtype);
        let (q, k) = (as_stored(&q), as_stored(&k));
        for b in 0..batch {
            for t in 0..tokens {
                let src = (b * tokens + t) * width;
                let dst = (b * cap + start + t) * width;
                for i in 0..width {
                    want_k[dst + i] = k[src + i] as f64;
                    want_v[dst + i] = v[src + i];
                }
            }
        }
        let kv_len = start + tokens;
        let mut want_out = vec![0.0; rows * width];
        for b in 0..batch {
            for h in 0..heads {
                let gather = |src: &[f32], rows: usize, row0: usize, stride: usize| -> Vec<f32> {
                    (0..rows)
                        .flat_map(|t| {
                            let base = (row0 + t * stride) * width + h * dim;
                            src[base..base + dim].to_vec()
                        })
                        .collect()
                };
                let to_f32 = |x: &[f64]| x.iter().map(|&x| x as f32).collect::<Vec<_>>();
                let qh = gather(&q, tokens, b * tokens, 1);
                let kh = gather(&to_f32(&want_k), kv_len, b * cap, 1);
                let vh = gather(&to_f32(&want_v), kv_len, b * cap, 1);
                let o = attention_ref::masked_attention(&qh, &kh, &vh, dim, softmax_scale as f64, |_, _| true);
                for t in 0..tokens {
                    let dst = ((b * tokens + t) * heads + h) * dim;
                    want_out[dst..dst + dim].copy_from_slice(&o[t * dim..(t + 1) * dim]);
                }
            }
        }
        let got = out.to_vec_f32().unwrap();
        let tol = Tol::for_dtype(dtype, max_abs(&want_out).max(1.0));
        assert_close(&got, &want_out, tol, &format!("{what}: output of call {step}"));
        start += tokens;
    }
    let got_k = k_cache.to_vec_f32().unwrap();
    let got_v = v_cache.to_vec_f32().unwrap();
    for b in 0..batch {
        for t in 0..cap {
            let span = (b * cap + t) * width..(b * cap + t + 1) * width;
            let (k_row, v_row) = (&got_k[span.clone()], &got_v[span.clone()]);
            let row = format!("{what}: cache row b{b} t{t}");
            if t < total {
                assert_close(k_row, &want_k[span.clone()], Tol::for_dtype(dtype, 1.0), &format!("{row} k"));
                let want_v_row: Vec<f32> = want_v[span].iter().map(|&v| v as f32).collect();
                assert_eq!(v_row, want_v_row, "{row} v: a plain copy");
            } else {
                assert!(
                    k_row.iter().all(|&v| v == K_SENTINEL) && v_row.iter().all(|&v| v == V_SENTINEL),
                    "{row} past {total} was written"
                );
            }
        }
    }
}

backend_tests! {
    /// The fused split-and-attend over three calls on the kernel `Auto` picks.
    fn qkv_attention_matches_the_reference_and_fills_the_cache_over_three_calls(device: &Device, config: &str) {
        let mut rng = Rng::for_config("qkv_attention", config);
        for dtype in dtypes(device) {
            for dim in [64, 24, rng.range(1, 100)] {
                for l2_norm in [true, false] {
                    // Ragged: the second call has new keys on both sides of a key-tile edge; the third
                    // is a KV-cache step of few rows, whose block splits its keys (ops::attention_tiles):
                    // its new keys are normalised by the slice's tile loads and cached by the workgroup
                    // that owns them as queries.
                    let steps = [rng.range(1, 9), rng.range(17, 40), rng.range(1, 5)];
                    let caps = device.caps();
                    let key_split = |step: usize, tokens: usize, start: usize, what: &str| {
                        if step == 2 && caps.attention == AttentionDesign::RowsInRegisters && caps.attention_key_split {
                            let tiles = attention_tiles(device, dim, tokens, start + tokens).unwrap();
                            assert!(tiles.key_slices > 1, "{what}: the last call is not split: {tiles:?}");
                        }
                    };
                    let case = (dtype, dim, l2_norm);
                    check_qkv_attention(device, config, &mut rng, case, &steps, AttentionAlgorithm::Auto, key_split);
                }
            }
        }
    }

    /// The same on the matrix units (cooperative matrices, or their emulation on `wgpu_full`): a first
    /// call of few rows (one 32-row block, mostly padding), a second of 33-90 rows (two blocks; its new
    /// keys across key-tile edges), a KV-cache step of 1-4 rows; head dims padded to 32 and not.
    fn qkv_attention_on_matrix_units_matches_the_reference(device: &Device, config: &str) {
        let test = format!("models::var::qkv_attention_on_matrix_units_matches_the_reference::{config}");
        let caps = device.caps();
        // Refused (f32, or no units) before anything is written.
        let (heads, dim, cap) = (2, 40, 8);
        let x = upload(device, &[1, 3, 3 * heads * dim], &vec![0.5; 3 * 3 * heads * dim], DType::F32);
        let scale = upload(device, &[heads], &[1.0; 2], DType::F32);
        let k_cache = upload(device, &[1, cap, heads, dim], &vec![K_SENTINEL; cap * heads * dim], DType::F32);
        let v_cache = upload(device, &[1, cap, heads, dim], &vec![V_SENTINEL; cap * heads * dim], DType::F32);
        let (head_scale, l2_norm) = (&scale, true);
        let args = QkvHeads { qkv: &x, heads, l2_norm, head_scale, k_cache: &k_cache, v_cache: &v_cache, start: 0 };
        let err = qkv_attention_with(&args, 1.0, AttentionAlgorithm::Cooperative).unwrap_err();
        let untouched = k_cache.to_vec_f32().unwrap().iter().all(|&x| x == K_SENTINEL);
        assert!(untouched, "{config}: a refused call wrote the cache");
        if caps.matrix_units == MatrixUnits::None || !caps.f16 {
            assert!(matches!(err, Error::MissingFeature { .. }), "{config}: {err:?}");
            crate::common::skip(&test, "no matrix units (or no f16) on this device: checked the typed error only");
            return;
        }
        assert!(matches!(err, Error::UnsupportedDType { .. }), "{config}: {err:?}");
        let mut rng = Rng::for_config("qkv_attention_coop", config);
        let fits = |dim| coop_attention_tiles_for(&caps, dim, 64).is_some();
        let dims: Vec<usize> = [64, 40, rng.range(1, 31)].into_iter().filter(|&d| fits(d)).collect();
        let all_fit = dims.len() == 3 || caps.attention == AttentionDesign::ScoreTiles;
        assert!(all_fit, "{config}: only head dims {dims:?} fit");
        for dim in dims {
            for l2_norm in [true, false] {
                let steps = [rng.range(1, 9), rng.range(33, 90), rng.range(1, 5)];
                let case = (DType::F16, dim, l2_norm);
                let algorithm = AttentionAlgorithm::Cooperative;
                check_qkv_attention(device, config, &mut rng, case, &steps, algorithm, |_, _, _, _| {});
            }
        }
    }
}

#[test]
fn qkv_heads_rejects_mismatched_caches_and_scales() {
    let device = full_device();
    let (batch, tokens, heads, dim) = (2, 3, 2, 8);
    let qkv =
        upload(device, &[batch, tokens, 3 * heads * dim], &vec![0.5; batch * tokens * 3 * heads * dim], DType::F32);
    let scale = upload(device, &[heads], &[1.0; 2], DType::F32);
    let cache = |cap: usize| Tensor::zeros(device, &[batch, cap, heads, dim], DType::F32).unwrap();
    let run = |k: &Tensor, v: &Tensor, head_scale: &Tensor, heads: usize, start: usize| {
        qkv_heads(&QkvHeads { qkv: &qkv, heads, l2_norm: true, head_scale, k_cache: k, v_cache: v, start })
    };
    // Exactly full is fine; one token more is not.
    assert!(run(&cache(5), &cache(5), &scale, heads, 2).is_ok());
    let err = run(&cache(5), &cache(5), &scale, heads, 3).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "qkv_heads", .. }), "{err:?}");
    // Caches of different capacities are refused even when both have room for the new tokens
    // (each would need its own row stride).
    for (k_cap, v_cap) in [(8, 4), (4, 8)] {
        let err = run(&cache(k_cap), &cache(v_cap), &scale, heads, 1).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { op: "qkv_heads", .. }), "{err:?}");
    }
    let wrong_scale = upload(device, &[3], &[1.0; 3], DType::F32);
    let err = run(&cache(8), &cache(8), &wrong_scale, heads, 0).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "qkv_heads", .. }), "{err:?}");
    // The fused op checks the same shapes, and its softmax scale.
    let (k, v) = (cache(5), cache(5));
    let fused = |start: usize, softmax_scale: f32| {
        let args = QkvHeads { qkv: &qkv, heads, l2_norm: true, head_scale: &scale, k_cache: &k, v_cache: &v, start };
        qkv_attention(&args, softmax_scale)
    };
    assert!(fused(2, 1.0).is_ok());
    let err = fused(3, 1.0).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "qkv_attention", .. }), "{err:?}");
    let err = fused(0, f32::NAN).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "qkv_attention", .. }), "{err:?}");
    let err = run(&cache(8), &cache(8), &scale, 5, 0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "qkv_heads", .. }), "{err:?}");
    assert!(err.to_string().contains("heads (5)"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// gated_residual

backend_tests! {
    fn gated_residual_matches_the_reference_on_ragged_shapes(device: &Device, config: &str) {
        let mut rng = Rng::for_config("gated_residual", config);
        for dtype in dtypes(device) {
            for rank in [3, 3, 3, 2, 4] {
                let batch = rng.range(1, 3);
                let channels = [rng.range(1, 300), 1, 257][rng.range(0, 2)];
                let middle: Vec<usize> = (0..rank - 2).map(|_| rng.range(1, 9)).collect();
                let shape: Vec<usize> = std::iter::once(batch).chain(middle).chain([channels]).collect();
                let n: usize = shape.iter().product();
                let per_batch = n / batch;
                let (x, y, g) = (rng.vec(n, 3.0), rng.vec(n, 2.0), rng.vec(batch * channels, 1.5));
                let out = gated_residual(
                    &upload(device, &shape, &x, dtype),
                    &upload(device, &shape, &y, dtype),
                    &upload(device, &[batch, channels], &g, dtype),
                )
                .expect("gated_residual");
                assert_eq!(out.shape(), shape.as_slice());
                let (x, y, g) = (reference_values(&x, dtype), reference_values(&y, dtype), reference_values(&g, dtype));
                let want: Vec<f64> = (0..n)
                    .map(|i| x[i] as f64 + y[i] as f64 * g[(i / per_batch) * channels + i % channels] as f64)
                    .collect();
                let tol = Tol::for_dtype(dtype, max_abs(&want));
                assert_close(&out.to_vec_f32().unwrap(), &want, tol, &format!("{config} {dtype} {shape:?}"));
            }
        }
    }
}

#[test]
fn gated_residual_shape_errors_are_typed() {
    let device = full_device();
    let t = |shape: &[usize]| Tensor::zeros(device, shape, DType::F32).unwrap();
    let x = t(&[2, 5, 7]);
    let cases = [
        (t(&[2, 5, 6]), t(&[2, 7])),
        (t(&[2, 5, 7]), t(&[2, 6])),
        (t(&[2, 5, 7]), t(&[1, 7])),
        (t(&[2, 5, 7]), t(&[7])),
        (t(&[2, 5, 7]), t(&[2, 5, 7])),
    ];
    for (y, gate) in cases {
        let err = gated_residual(&x, &y, &gate).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { op: "gated_residual", .. }), "{:?} {:?}: {err:?}", y, gate);
    }
    let err = gated_residual(&t(&[7]), &t(&[7]), &t(&[1, 7])).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    if device.caps().f16 {
        let half = Tensor::zeros(device, &[2, 7], DType::F16).unwrap();
        let err = gated_residual(&x, &x, &half).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// transpose_last2

backend_tests! {
    fn transpose_last2_matches_the_reference_for_every_dtype(device: &Device, config: &str) {
        let mut rng = Rng::for_config("transpose_last2", config);
        let mut kinds = dtypes(device);
        kinds.push(DType::U32);
        for dtype in kinds {
            let sizes = |rng: &mut Rng| [1, rng.range(2, 40), rng.range(1, 70)][rng.range(0, 2)];
            let mut shapes: Vec<Vec<usize>> =
                (0..5).map(|_| vec![rng.range(1, 3), sizes(&mut rng), sizes(&mut rng)]).collect();
            shapes.push(vec![1, 1, 1]);
            shapes.push(vec![3, 37, 29]);
            shapes.push(vec![rng.range(1, 50), rng.range(1, 50)]);
            shapes.push(vec![2, 2, rng.range(1, 9), rng.range(1, 9)]);
            for shape in shapes {
                let rank = shape.len();
                let (m, n) = (shape[rank - 2], shape[rank - 1]);
                let outer = shape[..rank - 2].iter().product::<usize>();
                let total = outer * m * n;
                let bits: Vec<u32> = (0..total).map(|_| rng.next_u64() as u32).collect();
                let (input, host): (Tensor, Vec<u32>) = match dtype {
                    DType::U32 => (Tensor::from_u32(device, &shape, &bits).unwrap(), bits.clone()),
                    _ => {
                        let data = rng.vec(total, 100.0);
                        let stored = reference_values(&data, dtype);
                        (upload(device, &shape, &data, dtype), stored.iter().map(|v| v.to_bits()).collect())
                    }
                };
                let bits_of = |t: &Tensor| -> Vec<u32> {
                    match dtype {
                        DType::U32 => t.to_vec_u32().unwrap(),
                        _ => t.to_vec_f32().unwrap().iter().map(|v| v.to_bits()).collect(),
                    }
                };
                let out = input.transpose_last2().expect("transpose_last2");
                let mut want_shape = shape.clone();
                want_shape.swap(rank - 2, rank - 1);
                assert_eq!(out.shape(), want_shape.as_slice(), "{config} {dtype} {shape:?}");
                assert_eq!(out.dtype(), dtype);
                let got = bits_of(&out);
                for o in 0..outer {
                    for i in 0..m {
                        for j in 0..n {
                            assert_eq!(
                                got[(o * n + j) * m + i],
                                host[(o * m + i) * n + j],
                                "{config} {dtype} {shape:?}: element ({o}, {j}, {i})"
                            );
                        }
                    }
                }
                // Twice is the identity, and the input is untouched.
                let back = out.transpose_last2().unwrap();
                assert_eq!(back.shape(), shape.as_slice());
                assert_eq!(bits_of(&back), host, "{config} {dtype} {shape:?}: twice");
                assert_eq!(bits_of(&input), host, "{config} {dtype} {shape:?}: the input changed");
            }
        }
        let err = Tensor::zeros(device, &[5], DType::F32).unwrap().transpose_last2().unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "transpose_last2", .. }), "{err:?}");
        let empty = Tensor::zeros(device, &[2, 0, 3], DType::F32).unwrap().transpose_last2().unwrap();
        assert_eq!(empty.shape(), [2, 3, 0]);
    }
}

// ---------------------------------------------------------------------------------------------
// gumbel_softmax

/// First-order bound on the relative error of each GPU probability of one row, from the f32
/// arithmetic of the kernel under WGSL's accuracy rules: u = (w + 0.5) / 2^24 rounds to f32
/// (2^-25 for u >= 0.5), log has 2^-21 absolute error on [0.5, 2] and 3 ULP elsewhere, exp
/// 3 + 2|x| ULP. An error dz_i in z_i moves ln p_i by dz_i - sum_j p_j dz_j.
fn gumbel_row_tolerance(row: &[f32], mul: f32, tau: f32, key: [u32; 2], token: u32, batch_row: u32) -> Vec<f64> {
    let ulp = f64::powi(2.0, -23);
    let (mul, tau) = (mul as f64, tau as f64);
    let mut z = vec![f64::NEG_INFINITY; row.len()];
    let mut dz = vec![0.0; row.len()];
    for (c, &x) in row.iter().enumerate() {
        if x == f32::NEG_INFINITY {
            continue;
        }
        let word = sample_ref::philox4x32_10([token, batch_row, c as u32, 1], key)[0];
        let u = ((word >> 8) as f64 + 0.5) / (1u64 << 24) as f64;
        let a = -u.ln();
        let g = -a.ln();
        let da = f64::powi(2.0, -25) / u + f64::powi(2.0, -21) + 4.0 * ulp * a;
        let dg = da / a + f64::powi(2.0, -21) + 4.0 * ulp * g.abs();
        let xm = x as f64 * mul;
        z[c] = (xm + g) / tau;
        dz[c] = (2.0 * ulp * xm.abs() + dg) / tau + 2.0 * ulp * z[c].abs();
    }
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let total: f64 = e.iter().sum();
    let shared: f64 = e.iter().zip(&dz).map(|(e, d)| e / total * d).sum();
    z.iter().zip(&dz).map(|(&zi, &d)| d + shared + (8.0 + 3.0 * (zi - max).abs()) * ulp + 1e-6).collect()
}

backend_tests! {
    fn gumbel_softmax_matches_the_reference_rows(device: &Device, config: &str) {
        let mut rng = Rng::for_config("gumbel_softmax", config);
        let mut masked = 0;
        for (vocab, tau, mul) in [
            (rng.range(1, 60), 1.0, 1.0),
            (257, 0.27, 1.0 + rng.uniform(1.0).abs()),
            (rng.range(300, 700), 0.0135, 1.95),
            (rng.range(2, 40), 0.005, 1.5),
        ] {
            let (batch, tokens) = (rng.range(1, 2), rng.range(1, 4));
            let rows = batch * tokens;
            let mut logits = rng.vec(rows * vocab, 4.0);
            for row in logits.chunks_mut(vocab) {
                // About a third removed, never the whole row; sometimes all but one.
                let keep = rng.range(0, vocab - 1);
                let all_but_one = rng.range(0, 5) == 0;
                for (c, v) in row.iter_mut().enumerate() {
                    if c != keep && (all_but_one || rng.range(0, 2) == 0) {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            let (seed, step) = (rng.next_u64(), rng.range(0, 20) as u32);
            let what = format!("{config} V={vocab} b{batch} t{tokens} tau {tau} mul {mul} seed {seed} step {step}");
            let input = upload(device, &[batch, tokens, vocab], &logits, DType::F32);
            let probs = gumbel_softmax(&input, mul, tau, seed, step).expect("gumbel_softmax");
            assert_eq!(probs.shape(), [batch, tokens, vocab], "{what}");
            let got = probs.to_vec_f32().unwrap();
            let key = sample_ref::draw_key(seed, step);
            for r in 0..rows {
                let (token, batch_row) = ((r % tokens) as u32, (r / tokens) as u32);
                let row = &logits[r * vocab..(r + 1) * vocab];
                let got_row = &got[r * vocab..(r + 1) * vocab];
                let want = sample_ref::gumbel_softmax_row(row, mul, tau, key, token, batch_row);
                let rel = gumbel_row_tolerance(row, mul, tau, key, token, batch_row);
                for c in 0..vocab {
                    let what = format!("{what} row {r} element {c}");
                    if row[c] == f32::NEG_INFINITY {
                        assert_eq!(got_row[c], 0.0, "{what}: a removed logit must have probability exactly 0");
                        masked += 1;
                        continue;
                    }
                    let (g, w) = (got_row[c] as f64, want[c]);
                    assert!(g.is_finite() && g >= 0.0, "{what}: {g}");
                    let tol = w * rel[c].exp_m1() + 1e-9;
                    assert!((g - w).abs() <= tol, "{what}: got {g} want {w} (|err| {:.3e} > {tol:.3e})", (g - w).abs());
                }
                let sum: f64 = got_row.iter().map(|&p| p as f64).sum();
                assert!((sum - 1.0).abs() <= 2e-5 + vocab as f64 * 6e-8, "{what} row {r}: sums to {sum}");
            }
        }
        assert!(masked > 0, "{config}: no -inf logit exercised");
    }
}

backend_tests! {
    fn gumbel_softmax_is_deterministic_per_seed_and_step(device: &Device, config: &str) {
        let mut rng = Rng::for_config("gumbel_determinism", config);
        let (batch, tokens, vocab) = (2, 3, 300);
        let logits = rng.vec(batch * tokens * vocab, 1.0);
        let input = upload(device, &[batch, tokens, vocab], &logits, DType::F32);
        let run = |seed: u64, step: u32| gumbel_softmax(&input, 1.2, 0.5, seed, step).unwrap().to_vec_f32().unwrap();
        let base = run(42, 3);
        let again = run(42, 3);
        assert!(
            base.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{config}: same seed and step, different output"
        );
        for (seed, step) in [(42, 4), (43, 3)] {
            let other = run(seed, step);
            let diff = base.iter().zip(&other).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff > 0.05, "{config}: seed {seed} step {step} barely changes the output (max diff {diff})");
        }
        // A batch row's noise does not depend on the batch size.
        let first = upload(device, &[1, tokens, vocab], &logits[..tokens * vocab], DType::F32);
        let alone = gumbel_softmax(&first, 1.2, 0.5, 42, 3).unwrap().to_vec_f32().unwrap();
        assert_eq!(alone, base[..tokens * vocab], "{config}: batch row 0 depends on the batch size");
    }
}

#[test]
fn gumbel_softmax_invalid_arguments_are_typed() {
    let device = full_device();
    let input = upload(device, &[1, 2, 5], &[0.5; 10], DType::F32);
    for (mul, tau, needle) in [
        (1.0, 0.0, "tau"),
        (1.0, -0.5, "-0.5"),
        (1.0, f32::NAN, "NaN"),
        (1.0, f32::INFINITY, "inf"),
        (f32::NAN, 1.0, "mul"),
        (f32::INFINITY, 1.0, "mul"),
    ] {
        let err = gumbel_softmax(&input, mul, tau, 0, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "gumbel_softmax", .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err} should mention {needle:?}");
    }
    let flat = upload(device, &[2, 5], &[0.5; 10], DType::F32);
    let err = gumbel_softmax(&flat, 1.0, 1.0, 0, 0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("[2, 5]"), "{err:?}");
    let ids = Tensor::from_u32(device, &[1, 1, 2], &[0, 1]).unwrap();
    assert!(matches!(gumbel_softmax(&ids, 1.0, 1.0, 0, 0).unwrap_err(), Error::UnsupportedDType { .. }));
    let empty = Tensor::zeros(device, &[2, 0, 5], DType::F32).unwrap();
    assert_eq!(gumbel_softmax(&empty, 1.0, 1.0, 0, 0).unwrap().shape(), [2, 0, 5]);
}

backend_tests! {
    /// Seed 0, step 180488: the Philox word of (token 0, batch row 0, element 2) has its top 24 bits all
    /// set, so u = (2^24 - 1 + 0.5) / 2^24 = 1 - 2^-25, which is below 1 in the float64 reference but
    /// rounds to exactly 1.0 in f32. A draw of this kind happens once in 2^24 unfiltered elements (a few
    /// percent of smooth-mode 256px images).
    fn gumbel_softmax_stays_finite_when_the_uniform_rounds_to_one(device: &Device, config: &str) {
        let (seed, step, hit) = (0u64, 180_488u32, 2usize);
        let key = sample_ref::draw_key(seed, step);
        assert_eq!(sample_ref::philox4x32_10([0, 0, hit as u32, 1], key)[0] >> 8, 0xFF_FFFF, "fixture draw");
        let vocab = 16;
        let logits: Vec<f32> = (0..vocab).map(|c| 0.1 * c as f32).collect();
        let want = sample_ref::gumbel_softmax_row(&logits, 1.0, 0.27, key, 0, 0);
        assert!(want.iter().all(|p| p.is_finite()), "reference");
        let input = upload(device, &[1, 1, vocab], &logits, DType::F32);
        let got = gumbel_softmax(&input, 1.0, 0.27, seed, step).unwrap().to_vec_f32().unwrap();
        assert!(got.iter().all(|p| p.is_finite()), "{config}: probabilities {got:?} (reference {want:?})");
        let sum: f32 = got.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{config}: sums to {sum}");
    }
}

// ---------------------------------------------------------------------------------------------
// Phi table

#[test]
fn phi_index_follows_the_official_table() {
    assert_eq!((0..10).map(|si| phi_index(si, 10, 4)).collect::<Vec<_>>(), [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
    for scales in [1, 2, 6, 10, 14] {
        for si in 0..scales {
            assert_eq!(phi_index(si, scales, 1), 0, "1 conv, scale {si} of {scales}");
            assert_eq!(phi_index(si, scales, 0), 0, "0 convs, scale {si} of {scales}");
        }
    }
    // The argmin over evenly spaced ticks: from the first conv to the last, never backwards.
    for scales in [2, 3, 6, 10, 13, 14] {
        for convs in [2, 3, 4, 6] {
            let table: Vec<usize> = (0..scales).map(|si| phi_index(si, scales, convs)).collect();
            assert_eq!(table[0], 0, "{scales} scales {convs} convs: {table:?}");
            assert_eq!(table[scales - 1], convs - 1, "{scales} scales {convs} convs: {table:?}");
            assert!(table.windows(2).all(|w| w[0] <= w[1]), "{scales} scales {convs} convs: {table:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loaders on synthetic checkpoints

fn var_shape(shared_adaln: bool) -> VarShape {
    VarShape {
        depth: 2,
        width: 64,
        heads: 2,
        num_classes: 5,
        vocab: 32,
        cvae: 8,
        patch_nums: vec![1, 2, 3],
        shared_adaln,
    }
}

fn vae_shape() -> VaeShape {
    VaeShape { ch: 32, ch_mult: vec![1, 2], blocks_per_level: 1, vocab: 32, cvae: 8, phi_convs: 4 }
}

fn check_var_config(config: &VarConfig, shape: &VarShape) {
    assert_eq!(config.depth, shape.depth);
    assert_eq!(config.width, shape.width);
    assert_eq!(config.heads, shape.heads);
    assert_eq!(config.head_dim, shape.width / shape.heads);
    assert_eq!(config.mlp_hidden, 4 * shape.width);
    assert_eq!(config.num_classes, shape.num_classes);
    assert_eq!(config.vocab, shape.vocab);
    assert_eq!(config.cvae, shape.cvae);
    assert_eq!(config.patch_nums, shape.patch_nums);
    assert_eq!(config.shared_adaln, shape.shared_adaln);
}

#[test]
fn inferred_configs_equal_the_synthetic_shapes() {
    let other_var = VarShape {
        depth: 3,
        width: 48,
        heads: 3,
        num_classes: 7,
        vocab: 20,
        cvae: 4,
        patch_nums: vec![1, 3, 4],
        shared_adaln: true,
    };
    for shape in [var_shape(false), var_shape(true), other_var] {
        let sd = var_state_dict(&shape, 11).unwrap();
        check_var_config(&VarConfig::infer(&sd).unwrap(), &shape);
        // Without the metadata a non-official schedule cannot be recovered: the error says how to store it.
        let mut bare = sd.clone();
        bare.metadata.remove(META_PATCH_NUMS);
        let err = VarConfig::infer(&bare).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert!(err.to_string().contains(META_PATCH_NUMS), "{err}");
        // A schedule of the right token count that does not grow coarse to fine (it loaded, then
        // failed mid-generation once, or generated from a shuffled schedule).
        let mut shuffled = sd.clone();
        let mut sides = shape.patch_nums.clone();
        sides.reverse();
        shuffled.metadata.insert(META_PATCH_NUMS.into(), serde_json::to_string(&sides).unwrap());
        let err = VarConfig::infer(&shuffled).unwrap_err();
        assert!(err.to_string().contains("sides must increase"), "{err}");
    }
    let other_vae = VaeShape { ch: 32, ch_mult: vec![1, 1, 2], blocks_per_level: 2, vocab: 20, cvae: 4, phi_convs: 1 };
    for (shape, channels) in [(vae_shape(), vec![32, 64]), (other_vae, vec![32, 32, 64])] {
        let config = VqVaeConfig::infer(&vae_state_dict(&shape, 12).unwrap()).unwrap();
        assert_eq!(config.vocab, shape.vocab);
        assert_eq!(config.cvae, shape.cvae);
        assert_eq!(config.phi_convs, shape.phi_convs);
        assert_eq!(config.level_channels, channels);
        assert_eq!(config.blocks_per_level, shape.blocks_per_level);
        assert_eq!(config.attn_levels, [channels.len() - 1]);
        assert!(config.mid_attention);
        assert_eq!(config.upscale(), 1 << (channels.len() - 1));
    }
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 1);
    check_var_config(pipeline.config(), &var_shape(false));
    assert_eq!(pipeline.image_size(), 6);
}

#[test]
fn class_names_come_from_metadata_else_imagenet_for_1000_classes() {
    use scalewise::nn::var::META_CLASS_NAMES;
    let imagenet = VarShape { num_classes: 1000, ..var_shape(false) };
    let mut sd = var_state_dict(&imagenet, 5).unwrap();
    let config = VarConfig::infer(&sd).unwrap();
    assert_eq!(config.class_names.as_deref(), Some(scalewise::labels::imagenet()));
    assert_eq!(config.class_name(207), "golden retriever");
    assert_eq!(config.resolve_class("golden retriever").unwrap(), 207);
    // Names in the file win, and must number the classes.
    let own: Vec<String> = (0..1000).map(|i| format!("thing {i}")).collect();
    sd.metadata.insert(META_CLASS_NAMES.into(), serde_json::to_string(&own).unwrap());
    assert_eq!(VarConfig::infer(&sd).unwrap().class_name(207), "thing 207");
    sd.metadata.insert(META_CLASS_NAMES.into(), serde_json::to_string(&own[..999]).unwrap());
    let err = VarConfig::infer(&sd).unwrap_err().to_string();
    assert!(err.contains("999 names for 1000 classes"), "{err}");
    // Other class counts stay unnamed: numbers only.
    let config = VarConfig::infer(&var_state_dict(&var_shape(false), 5).unwrap()).unwrap();
    assert_eq!(config.class_names, None);
    assert_eq!(config.class_name(3), "3");
    assert!(config.resolve_class("tench").unwrap_err().to_string().contains("no names"));
}

#[test]
fn checkpoint_mixups_name_the_right_flag() {
    let device = full_device();
    let vae = vae_state_dict(&vae_shape(), 1).unwrap();
    let var = var_state_dict(&var_shape(false), 2).unwrap();
    let err = VarModel::from_state_dict(device, &vae, DType::F32).err().expect("a VQVAE is not a VAR");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("VQVAE checkpoint") && text.contains("--vae"), "{text}");
    let err = VqVae::from_state_dict(device, &var, DType::F32).err().expect("a VAR is not a VQVAE");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("transformer checkpoint (VAR or M-VAR") && text.contains("--var"), "{text}");
}

#[test]
fn empty_or_oversized_dimensions_are_refused_before_anything_is_allocated() {
    let device = full_device();
    let shape = vae_shape();
    // An empty codebook would make the Phi convs' channels, and with them every later shape, 0.
    let mut vae = vae_state_dict(&shape, 1).unwrap();
    let vocab = vae.remove("quantize.embedding.weight").unwrap().shape[0];
    vae.insert("quantize.embedding.weight", &[vocab, 0], Vec::new()).unwrap();
    let err = VqVae::from_state_dict(device, &vae, DType::F32).err().expect("an empty codebook");
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("codebook"), "{err}");
    // 2^17 channels: a 2 MB codebook whose Phi convs would be 618 GB of placeholder zeros once one of
    // them is missing. The size is refused before a byte of them exists.
    let mut vae = vae_state_dict(&shape, 1).unwrap();
    vae.remove("quantize.embedding.weight").unwrap();
    vae.insert("quantize.embedding.weight", &[4, 1 << 17], vec![0.0; 4 << 17]).unwrap();
    vae.remove("quantize.quant_resi.qresi_ls.0.weight").unwrap();
    vae.insert("quantize.quant_resi.qresi_ls.0.weight", &[1], vec![0.0]).unwrap();
    let err = VqVae::from_state_dict(device, &vae, DType::F32).err().expect("a terabyte of Phi weights");
    assert!(matches!(err, Error::TooLarge { .. }) && err.to_string().contains("qresi_ls.0.weight"), "{err}");
    // A VAR whose class table is 0 wide would pass any head count (0 is a multiple of everything).
    let mut var = var_state_dict(&var_shape(false), 2).unwrap();
    let rows = var.remove("class_emb.weight").unwrap().shape[0];
    var.insert("class_emb.weight", &[rows, 0], Vec::new()).unwrap();
    let err = VarModel::from_state_dict(device, &var, DType::F32).err().expect("a VAR of width 0");
    assert!(err.to_string().contains("class_emb.weight") && err.to_string().contains("neither empty"), "{err}");
}

#[test]
fn pre_april_2024_checkpoints_are_recognised() {
    let device = full_device();
    let shape = var_shape(false);
    let mut sd = var_state_dict(&shape, 3).unwrap();
    for i in 0..shape.depth {
        assert!(sd.remove(&format!("blocks.{i}.attn.scale_mul_1H11")).is_some());
    }
    let err = VarModel::from_state_dict(device, &sd, DType::F32).err().expect("an old upload");
    assert!(err.to_string().contains("pre-April-2024"), "{err}");
}

#[test]
fn one_weights_error_lists_every_problem() {
    let device = full_device();
    let mut sd = var_state_dict(&var_shape(false), 4).unwrap();
    assert!(sd.remove("blocks.1.ffn.fc2.bias").is_some());
    sd.insert("blocks.0.attn.extra_bias", &[64], vec![0.0; 64]).unwrap();
    sd.insert("head.bias", &[33], vec![0.0; 33]).unwrap();
    let err = VarModel::from_state_dict(device, &sd, DType::F32).err().expect("a broken VAR");
    assert_weights_error(
        err,
        &["blocks.1.ffn.fc2.bias"],
        &["blocks.0.attn.extra_bias"],
        &[("head.bias", &[32], &[33])],
    );

    let mut sd = vae_state_dict(&vae_shape(), 5).unwrap();
    assert!(sd.remove("decoder.norm_out.bias").is_some());
    sd.insert("decoder.extra.weight", &[3], vec![0.0; 3]).unwrap();
    sd.insert("post_quant_conv.bias", &[9], vec![0.0; 9]).unwrap();
    let err = VqVae::from_state_dict(device, &sd, DType::F32).err().expect("a broken VQVAE");
    let missing = ["decoder.norm_out.bias"];
    assert_weights_error(err, &missing, &["decoder.extra.weight"], &[("post_quant_conv.bias", &[8], &[9])]);
}

#[test]
fn vae_training_leftovers_are_ignored() {
    let device = full_device();
    let shape = vae_shape();
    let mut sd = vae_state_dict(&shape, 6).unwrap();
    sd.insert("encoder.conv_in.weight", &[32, 3, 3, 3], vec![0.1; 32 * 27]).unwrap();
    sd.insert("encoder.conv_in.bias", &[32], vec![0.0; 32]).unwrap();
    sd.insert("quant_conv.weight", &[8, 8, 3, 3], vec![0.0; 8 * 8 * 9]).unwrap();
    sd.insert("quant_conv.bias", &[8], vec![0.0; 8]).unwrap();
    sd.insert("quantize.ema_vocab_hit_SV", &[4, 32], vec![1.0; 128]).unwrap();
    let vae = VqVae::from_state_dict(device, &sd, DType::F32).expect("a full training checkpoint loads");
    assert_eq!(vae.config, VqVaeConfig::infer(&vae_state_dict(&shape, 6).unwrap()).unwrap());
}

#[test]
fn pipeline_rejects_a_vae_of_another_codebook() {
    let device = full_device();
    let vae = || VqVae::from_state_dict(device, &vae_state_dict(&vae_shape(), 7).unwrap(), DType::F32).unwrap();
    let var = |shape: VarShape| VarModel::from_state_dict(device, &var_state_dict(&shape, 8).unwrap(), DType::F32);
    let err = Pipeline::new(var(VarShape { vocab: 48, ..var_shape(false) }).unwrap(), vae()).err().expect("vocab");
    assert!(matches!(err, Error::InvalidArgument { op: "Pipeline", .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("48") && text.contains("32 x 8") && text.contains("not trained together"), "{text}");
    let err = Pipeline::new(var(VarShape { cvae: 16, ..var_shape(false) }).unwrap(), vae()).err().expect("cvae");
    assert!(err.to_string().contains("16 channels"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Generation on a tiny random pipeline

fn tiny_pipeline(device: &Device, shared_adaln: bool, seed: u64) -> Pipeline {
    let var = var_state_dict(&var_shape(shared_adaln), seed).unwrap();
    let vae = vae_state_dict(&vae_shape(), seed + 1000).unwrap();
    Pipeline::new(
        VarModel::from_state_dict(device, &var, DType::F32).unwrap(),
        VqVae::from_state_dict(device, &vae, DType::F32).unwrap(),
    )
    .unwrap()
}

fn options(labels: Vec<usize>, seed: u64) -> GenerateOptions {
    GenerateOptions { labels, seed, cfg: 2.0, top_k: 0, top_p: 0.0, profile_stages: false, ..Default::default() }
}

#[test]
fn default_options_suit_a_small_codebook_and_oversized_batches_are_refused_early() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 21);
    // The official top-k 900 on a 32-token codebook keeps every token, like top-k 0.
    let defaults = GenerateOptions { profile_stages: false, ..GenerateOptions::default() };
    pipeline.validate(&defaults).expect("the defaults validate on any model");
    let all = GenerateOptions { top_k: 0, ..defaults.clone() };
    assert_eq!(run(&pipeline, &defaults).tokens, run(&pipeline, &all).tokens);
    // A batch beyond what the adapter binds is one error naming the largest batch, before any allocation.
    let max = pipeline.max_batch(true);
    assert!((1..=scalewise::generate::MAX_BATCH).contains(&max), "{max}");
    let too_many = GenerateOptions { labels: vec![0; scalewise::generate::MAX_BATCH + 1], ..defaults };
    let err = pipeline.start(&too_many).err().expect("an oversized batch").to_string();
    assert!(err.contains(&format!("at most {max}")), "{err}");
}

struct Run {
    tokens: Vec<Vec<u32>>,
    f_hat: Vec<f32>,
    raw: Vec<f32>,
    images: Vec<scalewise::image::Image>,
}

fn run(pipeline: &Pipeline, options: &GenerateOptions) -> Run {
    let mut generation = pipeline.start(options).unwrap();
    let steps = generation.by_ref().collect::<scalewise::Result<Vec<_>>>().unwrap();
    let tokens: Vec<Vec<u32>> = steps.into_iter().map(|s| s.tokens).collect();
    assert_eq!(tokens, generation.tokens());
    let f_hat = generation.f_hat().to_vec_f32().unwrap();
    assert!(f_hat.iter().all(|v| v.is_finite()), "f_hat is not finite");
    let raw = generation.decode_raw().unwrap().to_vec_f32().unwrap();
    assert!(raw.iter().all(|v| v.is_finite()), "decoded image is not finite");
    Run { tokens, f_hat, raw, images: generation.decode().unwrap() }
}

/// The device's profiler is shared: tests that profile hold this so they don't run at the same time
/// (tests of one binary run in parallel threads on the same devices).
pub(crate) static PROFILING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn shared_adaln_checkpoints_load_and_generate() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, true, 21);
    assert!(pipeline.config().shared_adaln);
    let result = run(&pipeline, &options(vec![1, 4], 5));
    let sides = &pipeline.config().patch_nums;
    for (tokens, side) in result.tokens.iter().zip(sides) {
        assert_eq!(tokens.len(), 2 * side * side);
        assert!(tokens.iter().all(|&t| t < 32), "{tokens:?}");
    }
    assert_eq!(result.images.len(), 2);
    assert!(result.images.iter().all(|i| i.width == 6 && i.height == 6));
    // The per-block ada_gss is used: changing one block's changes the result.
    let mut sd = var_state_dict(&var_shape(true), 21).unwrap();
    let gss = sd.remove("blocks.1.ada_gss").unwrap();
    sd.insert("blocks.1.ada_gss", &gss.shape, gss.data.iter().map(|v| v + 0.5).collect()).unwrap();
    let vae = VqVae::from_state_dict(device, &vae_state_dict(&vae_shape(), 1021).unwrap(), DType::F32).unwrap();
    let changed = Pipeline::new(VarModel::from_state_dict(device, &sd, DType::F32).unwrap(), vae).unwrap();
    assert_ne!(bits(&run(&changed, &options(vec![1, 4], 5)).raw), bits(&result.raw), "ada_gss has no effect");
}

backend_tests! {
    fn same_seed_same_generation_and_other_seeds_differ(device: &Device, config: &str) {
        let pipeline = tiny_pipeline(device, false, 31);
        let first = run(&pipeline, &options(vec![2, 0], 77));
        let second = run(&pipeline, &options(vec![2, 0], 77));
        assert_eq!(first.tokens, second.tokens, "{config}: tokens");
        assert_eq!(bits(&first.f_hat), bits(&second.f_hat), "{config}: f_hat");
        assert_eq!(bits(&first.raw), bits(&second.raw), "{config}: decoder output");
        assert_eq!(first.images, second.images, "{config}: images");
        let other = run(&pipeline, &options(vec![2, 0], 78));
        assert_ne!(other.tokens, first.tokens, "{config}: seed 78 repeats seed 77's tokens");
        let same = other.tokens.concat().iter().zip(first.tokens.concat()).filter(|(a, b)| **a == *b).count();
        assert!(same * 2 < first.tokens.concat().len(), "{config}: {same} tokens repeat for another seed");
    }
}

#[test]
fn top_k_one_ignores_the_seed() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 41);
    let greedy = |seed| run(&pipeline, &GenerateOptions { top_k: 1, top_p: 0.9, ..options(vec![3, 1], seed) });
    let (a, b) = (greedy(1), greedy(0xDEAD_BEEF));
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(bits(&a.raw), bits(&b.raw));
}

#[test]
fn a_batch_rows_stream_does_not_depend_on_the_batch_size() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 51);
    let (a, b) = (3, 1);
    let pair = run(&pipeline, &options(vec![a, b], 99));
    let single = run(&pipeline, &options(vec![a], 99));
    for (si, (both, one)) in pair.tokens.iter().zip(&single.tokens).enumerate() {
        let n = one.len();
        assert_eq!(both[..n], one[..], "scale {si}: the first image's tokens changed with a second image");
    }
    assert_eq!(pair.images[0], single.images[0]);
}

#[test]
fn smooth_mode_is_deterministic_and_feeds_soft_tokens() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 61);
    let smooth = GenerateOptions { smooth: true, top_k: 20, top_p: 0.95, ..options(vec![0, 4], 5) };
    let a = run(&pipeline, &smooth);
    let b = run(&pipeline, &smooth);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(bits(&a.f_hat), bits(&b.f_hat));
    let hard = run(&pipeline, &GenerateOptions { smooth: false, ..smooth.clone() });
    // The first scale samples from identical logits with the same stream either way.
    assert_eq!(a.tokens[0], hard.tokens[0]);
    let diff = a.f_hat.iter().zip(&hard.f_hat).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff > 1e-3, "smooth f_hat equals the hard one (max diff {diff})");
}

#[test]
fn previews_come_for_every_scale_at_the_image_size() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 71);
    let size = pipeline.image_size();
    assert_eq!(size, 3 * 2);
    let _profiling = PROFILING.lock().unwrap_or_else(|e| e.into_inner());
    let preview = GenerateOptions { preview_every_scale: true, profile_stages: true, ..options(vec![1, 2, 3], 8) };
    let mut generation = pipeline.start(&preview).unwrap();
    let mut last = None;
    for step in generation.by_ref() {
        let step = step.unwrap();
        let images = step.images.expect("a preview for every scale");
        assert_eq!(images.len(), 3, "scale {}", step.index);
        for image in &images {
            assert_eq!((image.width, image.height, image.rgb.len()), (size, size, 3 * size * size));
        }
        // Every stage ran kernels, so each has time (GPU timestamps on lavapipe, else the wall clock).
        let t = step.times;
        for (stage, ms) in [
            ("transformer", t.transformer_ms),
            ("sampling", t.sampling_ms),
            ("accumulate", t.accumulate_ms),
            ("decode", t.decode_ms),
        ] {
            assert!(ms > 0.0 && ms.is_finite(), "scale {}: {stage} {ms} ms", step.index);
        }
        assert_eq!(t.mamba_ms, 0.0, "scale {}: VAR has no Mamba layers to time", step.index);
        last = Some(images);
    }
    assert_eq!(last.unwrap(), generation.decode().unwrap(), "the last preview is the result");
    assert_eq!(device.profiled_dispatches().unwrap(), 0, "stage timing leaves no profiler running");
    let plain = run(&pipeline, &options(vec![1, 2, 3], 8));
    assert_eq!(plain.images, generation.decode().unwrap(), "previews change the result");
}

/// Reduced previews (the app's): every scale but the last decodes f_hat at its own token-map side,
/// a smaller image; the last is the exact result, and the result is unchanged.
#[test]
fn reduced_previews_decode_each_scale_at_its_own_side() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 71);
    let size = pipeline.image_size();
    let latent = pipeline.config().latent_side();
    let up = size / latent;
    let preview = GenerateOptions { preview_every_scale: true, preview_reduced: true, ..options(vec![1, 2, 3], 8) };
    let mut generation = pipeline.start(&preview).unwrap();
    let mut last = None;
    for step in generation.by_ref() {
        let step = step.unwrap();
        let images = step.images.expect("a preview for every scale");
        let want = if step.index + 1 == step.scales { size } else { step.side * up };
        for image in &images {
            assert_eq!((image.width, image.height), (want, want), "scale {}", step.index);
        }
        last = Some(images);
    }
    assert_eq!(last.unwrap(), generation.decode().unwrap(), "the last preview is the exact result");
    let plain = run(&pipeline, &options(vec![1, 2, 3], 8));
    assert_eq!(plain.images, generation.decode().unwrap(), "previews change the result");
}

#[test]
fn invalid_options_are_named() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 81);
    let good = options(vec![0, 4], 0);
    assert!(pipeline.start(&good).is_ok());
    assert!(pipeline.start(&GenerateOptions { top_k: 32, top_p: 1.0, cfg: 0.0, ..good.clone() }).is_ok());
    // Top-k above the 32-token vocabulary keeps every token (the official default 900 on any codebook).
    assert!(pipeline.start(&GenerateOptions { top_k: 33, ..good.clone() }).is_ok());
    for (bad, needle) in [
        (GenerateOptions { labels: vec![0, 5], ..good.clone() }, "class 5"),
        (GenerateOptions { cfg: -1.0, ..good.clone() }, "-1"),
        (GenerateOptions { cfg: f32::NAN, ..good.clone() }, "NaN"),
        (GenerateOptions { cfg: f32::INFINITY, ..good.clone() }, "cfg"),
        (GenerateOptions { top_p: 1.5, ..good.clone() }, "1.5"),
        (GenerateOptions { top_p: -0.1, ..good.clone() }, "-0.1"),
        (GenerateOptions { labels: vec![], ..good.clone() }, "empty"),
    ] {
        let err = pipeline.start(&bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert!(matches!(err, Error::InvalidArgument { op: "generate", .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err} should mention {needle:?}");
    }
}

#[test]
fn the_iterator_walks_the_schedule_and_then_stops() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 91);
    let mut generation = pipeline.start(&options(vec![2], 3)).unwrap();
    assert_eq!((generation.scales(), generation.completed(), generation.is_done()), (3, 0, false));
    let steps: Vec<_> = generation.by_ref().map(|s| s.unwrap()).collect();
    assert_eq!(steps.iter().map(|s| s.side).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(steps.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(steps.iter().all(|s| s.scales == 3 && s.images.is_none() && s.logits.is_none()));
    assert!(generation.is_done() && generation.completed() == 3);
    assert!(generation.next().is_none());
    let err = generation.step().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("3 scales"), "{err:?}");
    assert!(generation.step_forced(&[0; 9]).is_err());
}

#[test]
fn concurrent_profiled_generations_on_one_device_finish_with_their_own_results() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 91);
    let profiled =
        |seed| GenerateOptions { profile_stages: true, preview_every_scale: true, ..options(vec![1, 3], seed) };
    let _profiling = PROFILING.lock().unwrap_or_else(|e| e.into_inner());
    let alone: Vec<Run> = (0..3).map(|seed| run(&pipeline, &profiled(seed))).collect();
    // Three threads share the device (and its one profiler): no failure, the same tokens and images.
    let together: Vec<Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|seed| {
                scope.spawn({
                    let pipeline = &pipeline;
                    move || run(pipeline, &profiled(seed))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a generation thread")).collect()
    });
    for (seed, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!((&a.tokens, &a.images), (&t.tokens, &t.images), "seed {seed}");
    }
}

#[test]
fn teacher_forcing_checks_its_ids_and_replays_a_sampled_run() {
    let device = full_device();
    let pipeline = tiny_pipeline(device, false, 101);
    let opts = options(vec![4, 2], 17);
    let sampled = run(&pipeline, &opts);

    // Another seed: only the forced ids (not the sampler) can reproduce the sampled run.
    let other_seed = options(vec![4, 2], 18);
    assert_ne!(run(&pipeline, &other_seed).tokens, sampled.tokens, "the seed matters here");
    let mut forced = pipeline.start(&other_seed).unwrap();
    let err = forced.step_forced(&[0; 3]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("needs 2 ids") && err.to_string().contains("got 3"), "{err}");
    let err = forced.step_forced(&[0, 32]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("32"), "{err:?}");
    // Rejected ids leave the generation where it was.
    assert_eq!(forced.completed(), 0);
    for (si, tokens) in sampled.tokens.iter().enumerate() {
        let step = forced.step_forced(tokens).unwrap();
        assert_eq!((step.index, &step.tokens), (si, tokens));
    }
    assert_eq!(bits(&forced.f_hat().to_vec_f32().unwrap()), bits(&sampled.f_hat), "replayed f_hat");
    assert!(forced.step_forced(&sampled.tokens[2]).is_err(), "a fourth scale");
}
