//! Every core op against its float64 reference: random shapes that are not multiples of the tile
//! sizes, seeded random inputs, NaN-poisoned outputs, f32 and f16, with and without subgroups.

mod common;

use common::{Rng, Seeded, Tol, assert_close, dtypes};
use scalewise::ops::{self, MatmulAlgorithm, matmul::MatmulOptions, reference_values as stored};
use scalewise::{DType, Device, Tensor};

fn upload(device: &Device, shape: &[usize], data: &[f32], dtype: DType) -> Tensor {
    Tensor::from_f32(device, shape, data, dtype).expect("upload")
}

backend_tests! {
    fn matmul_matches_reference_on_ragged_shapes(device: &Device, config: &str) {
        let mut rng = Rng::for_config("matmul", config);
        for dtype in dtypes(device) {
            for trial in 0..6 {
                let batch = rng.range(1, 3);
                let (m, k, n) = (rng.range(1, 150), rng.range(1, 150), rng.range(1, 150));
                let transpose_b = trial % 2 == 1;
                let b_shared = trial % 3 == 0;
                let with_bias = trial % 4 != 2;
                let a = stored(&rng.vec(batch * m * k, 1.0), dtype);
                let b_batch = if b_shared { 1 } else { batch };
                let b = stored(&rng.vec(b_batch * k * n, 1.0), dtype);
                let bias = stored(&rng.vec(n, 1.0), dtype);
                let ta = upload(device, &[batch, m, k], &a, dtype);
                let b_shape: Vec<usize> = match (b_shared, transpose_b) {
                    (true, false) => vec![k, n],
                    (true, true) => vec![n, k],
                    (false, false) => vec![batch, k, n],
                    (false, true) => vec![batch, n, k],
                };
                let tb = upload(device, &b_shape, &b, dtype);
                let tbias = upload(device, &[n], &bias, dtype);
                let want = ops::matmul::reference::matmul(
                    &a,
                    &b,
                    with_bias.then_some(&bias[..]),
                    batch,
                    m,
                    k,
                    n,
                    transpose_b,
                    b_shared,
                );
                for algorithm in [MatmulAlgorithm::Tiled, MatmulAlgorithm::Naive] {
                    let options = MatmulOptions { transpose_b, bias: with_bias.then_some(&tbias), algorithm };
                    let out = ops::matmul_with(&ta, &tb, &options).expect("matmul");
                    assert_eq!(out.shape(), [batch, m, n]);
                    let what = format!(
                        "{config} {dtype} {algorithm:?} b{batch} {m}x{k}x{n} t={transpose_b} shared={b_shared}"
                    );
                    assert_close(&out.to_vec_f32().unwrap(), &want, Tol::for_dtype(dtype, (k as f64).sqrt()), &what);
                }
            }
        }
    }
}

backend_tests! {
    fn linear_is_x_times_weight_transposed_plus_bias(device: &Device, config: &str) {
        let mut rng = Rng::for_config("linear", config);
        for dtype in dtypes(device) {
            let (b, l, k, n) = (2, rng.range(1, 70), rng.range(1, 90), rng.range(1, 130));
            let x = stored(&rng.vec(b * l * k, 1.0), dtype);
            let w = stored(&rng.vec(n * k, 1.0), dtype);
            let bias = stored(&rng.vec(n, 1.0), dtype);
            let out = ops::linear(
                &upload(device, &[b, l, k], &x, dtype),
                &upload(device, &[n, k], &w, dtype),
                Some(&upload(device, &[n], &bias, dtype)),
            )
            .unwrap();
            assert_eq!(out.shape(), [b, l, n]);
            let want = ops::matmul::reference::matmul(&x, &w, Some(&bias), 1, b * l, k, n, true, true);
            assert_close(
                &out.to_vec_f32().unwrap(),
                &want,
                Tol::for_dtype(dtype, (k as f64).sqrt()),
                &format!("{config} {dtype} linear"),
            );
        }
    }
}

backend_tests! {
    fn layer_norm_with_and_without_affine(device: &Device, config: &str) {
        let mut rng = Rng::for_config("layer_norm", config);
        for dtype in dtypes(device) {
            for cols in [1, 3, rng.range(4, 255), rng.range(257, 1100)] {
                let rows = rng.range(1, 9);
                // An offset mean checks the two-pass variance.
                let x: Vec<f32> = stored(&rng.vec(rows * cols, 2.0).iter().map(|v| v + 3.0).collect::<Vec<_>>(), dtype);
                let w = stored(&rng.vec(cols, 1.5), dtype);
                let b = stored(&rng.vec(cols, 1.0), dtype);
                let tx = upload(device, &[rows, cols], &x, dtype);
                let (tw, tb) = (upload(device, &[cols], &w, dtype), upload(device, &[cols], &b, dtype));
                let plain = ops::layer_norm(&tx, None, None, 1e-6).unwrap();
                let want = ops::norm::reference::layer_norm(&x, cols, None, None, 1e-6);
                let tol = Tol::for_dtype(dtype, 10.0);
                assert_close(
                    &plain.to_vec_f32().unwrap(),
                    &want,
                    tol,
                    &format!("{config} {dtype} layer_norm {rows}x{cols}"),
                );
                let affine = ops::layer_norm(&tx, Some(&tw), Some(&tb), 1e-5).unwrap();
                let want = ops::norm::reference::layer_norm(&x, cols, Some(&w), Some(&b), 1e-5);
                assert_close(
                    &affine.to_vec_f32().unwrap(),
                    &want,
                    tol,
                    &format!("{config} {dtype} layer_norm affine {rows}x{cols}"),
                );
            }
        }
    }
}

backend_tests! {
    fn adaln_modulation_fused_and_alone(device: &Device, config: &str) {
        let mut rng = Rng::for_config("adaln", config);
        for dtype in dtypes(device) {
            let (batch, tokens, cols) = (rng.range(1, 3), rng.range(1, 20), rng.range(2, 300));
            let x = stored(&rng.vec(batch * tokens * cols, 2.0), dtype);
            let scale = stored(&rng.vec(batch * cols, 0.5), dtype);
            let shift = stored(&rng.vec(batch * cols, 0.5), dtype);
            let tx = upload(device, &[batch, tokens, cols], &x, dtype);
            let ts = upload(device, &[batch, cols], &scale, dtype);
            let th = upload(device, &[batch, cols], &shift, dtype);
            let tol = Tol::for_dtype(dtype, 10.0);
            let fused = ops::adaln_layer_norm(&tx, &ts, &th, 1e-6).unwrap();
            let want = ops::norm::reference::modulate(&x, cols, &scale, &shift, batch, Some(1e-6));
            assert_close(&fused.to_vec_f32().unwrap(), &want, tol, &format!("{config} {dtype} adaln_layer_norm"));
            let alone = ops::modulate(&tx, &ts, &th).unwrap();
            let want = ops::norm::reference::modulate(&x, cols, &scale, &shift, batch, None);
            assert_close(&alone.to_vec_f32().unwrap(), &want, tol, &format!("{config} {dtype} modulate"));
        }
    }
}

backend_tests! {
    fn rms_norm_matches_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("rms_norm", config);
        for dtype in dtypes(device) {
            let (rows, cols) = (rng.range(1, 7), rng.range(1, 700));
            let x = stored(&rng.vec(rows * cols, 3.0), dtype);
            let w = stored(&rng.vec(cols, 1.0), dtype);
            let tx = upload(device, &[rows, cols], &x, dtype);
            let tol = Tol::for_dtype(dtype, 10.0);
            let got = ops::rms_norm(&tx, Some(&upload(device, &[cols], &w, dtype)), 1e-5).unwrap();
            let want = ops::norm::reference::rms_norm(&x, cols, Some(&w), 1e-5);
            assert_close(&got.to_vec_f32().unwrap(), &want, tol, &format!("{config} {dtype} rms_norm {rows}x{cols}"));
            let got = ops::rms_norm(&tx, None, 1e-5).unwrap();
            let want = ops::norm::reference::rms_norm(&x, cols, None, 1e-5);
            assert_close(&got.to_vec_f32().unwrap(), &want, tol, &format!("{config} {dtype} rms_norm plain"));
        }
    }
}

backend_tests! {
    fn group_norm_matches_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("group_norm", config);
        for dtype in dtypes(device) {
            for (groups, per_group) in [(1, 3), (4, 5), (32, 2)] {
                let channels = groups * per_group;
                let (n, h, w) = (rng.range(1, 2), rng.range(1, 13), rng.range(1, 11));
                let spatial = h * w;
                let x =
                    stored(&rng.vec(n * channels * spatial, 2.0).iter().map(|v| v - 1.0).collect::<Vec<_>>(), dtype);
                let wt = stored(&rng.vec(channels, 1.0), dtype);
                let bs = stored(&rng.vec(channels, 1.0), dtype);
                let got = ops::group_norm(
                    &upload(device, &[n, channels, h, w], &x, dtype),
                    groups,
                    Some(&upload(device, &[channels], &wt, dtype)),
                    Some(&upload(device, &[channels], &bs, dtype)),
                    1e-6,
                )
                .unwrap();
                let want = ops::norm::reference::group_norm(&x, channels, spatial, groups, Some(&wt), Some(&bs), 1e-6);
                let what = format!("{config} {dtype} group_norm n{n} c{channels} g{groups} {h}x{w}");
                assert_close(&got.to_vec_f32().unwrap(), &want, Tol::for_dtype(dtype, 10.0), &what);
            }
        }
    }
}

backend_tests! {
    fn softmax_matches_reference_including_large_logits(device: &Device, config: &str) {
        let mut rng = Rng::for_config("softmax", config);
        for dtype in dtypes(device) {
            for cols in [1, rng.range(2, 200), rng.range(300, 4100)] {
                let rows = rng.range(1, 5);
                // Logits of magnitude 30 overflow exp() without the max subtraction.
                let x = stored(&rng.vec(rows * cols, 30.0), dtype);
                let tx = upload(device, &[rows, cols], &x, dtype);
                for scale in [1.0f32, 0.125] {
                    let got = ops::softmax_scaled(&tx, scale).unwrap();
                    let want = ops::norm::reference::softmax(&x, cols, scale as f64);
                    let what = format!("{config} {dtype} softmax {rows}x{cols} scale {scale}");
                    assert_close(&got.to_vec_f32().unwrap(), &want, Tol::for_dtype(dtype, 1e-2), &what);
                }
            }
        }
    }
}

backend_tests! {
    fn activations_and_binary_ops_match_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("elementwise", config);
        for dtype in dtypes(device) {
            let (rows, cols) = (rng.range(1, 40), rng.range(1, 300));
            let x = stored(&rng.vec(rows * cols, 6.0), dtype);
            let y = stored(&rng.vec(rows * cols, 2.0), dtype);
            let bias = stored(&rng.vec(cols, 2.0), dtype);
            let tx = upload(device, &[rows, cols], &x, dtype);
            let ty = upload(device, &[rows, cols], &y, dtype);
            let tbias = upload(device, &[cols], &bias, dtype);
            let tol = Tol::for_dtype(dtype, 4.0);
            let check = |got: Tensor, want: Vec<f64>, op: &str| {
                assert_close(&got.to_vec_f32().unwrap(), &want, tol, &format!("{config} {dtype} {op} {rows}x{cols}"));
            };
            check(ops::gelu_tanh(&tx).unwrap(), ops::elementwise::reference::gelu_tanh(&x), "gelu_tanh");
            check(ops::silu(&tx).unwrap(), ops::elementwise::reference::silu(&x), "silu");
            check(ops::add(&tx, &ty).unwrap(), ops::elementwise::reference::add(&x, &y), "add");
            check(ops::mul(&tx, &ty).unwrap(), ops::elementwise::reference::mul(&x, &y), "mul");
            check(ops::add(&tx, &tbias).unwrap(), ops::elementwise::reference::add(&x, &bias), "add broadcast");
            check(ops::mul(&tx, &tbias).unwrap(), ops::elementwise::reference::mul(&x, &bias), "mul broadcast");
        }
    }
}

backend_tests! {
    fn gelu_and_silu_stay_finite_at_extremes(device: &Device, config: &str) {
        let x = [-1e4f32, -90.0, -20.0, 0.0, 20.0, 90.0, 1e4];
        let t = upload(device, &[x.len()], &x, DType::F32);
        let tol = Tol::for_dtype(DType::F32, 1.0);
        assert_close(
            &ops::gelu_tanh(&t).unwrap().to_vec_f32().unwrap(),
            &ops::elementwise::reference::gelu_tanh(&x),
            tol,
            config,
        );
        let silu = ops::silu(&t).unwrap().to_vec_f32().unwrap();
        assert_close(&silu, &ops::elementwise::reference::silu(&x), tol, config);
    }
}

backend_tests! {
    fn embedding_gathers_rows_and_poisons_bad_ids(device: &Device, config: &str) {
        let mut rng = Rng::for_config("embedding", config);
        for dtype in dtypes(device) {
            let (vocab, dim) = (rng.range(2, 300), rng.range(1, 70));
            let table = stored(&rng.vec(vocab * dim, 1.0), dtype);
            let mut ids: Vec<u32> = (0..rng.range(1, 50)).map(|_| rng.range(0, vocab - 1) as u32).collect();
            ids.push(vocab as u32); // out of range: a NaN row
            let tids = Tensor::from_u32(device, &[ids.len()], &ids).unwrap();
            let out = ops::embedding(&tids, &upload(device, &[vocab, dim], &table, dtype)).unwrap();
            assert_eq!(out.shape(), [ids.len(), dim]);
            let want = ops::embedding::reference::embedding(&ids, &table, dim);
            assert_close(
                &out.to_vec_f32().unwrap(),
                &want,
                Tol { atol: 0.0, rtol: 0.0 },
                &format!("{config} {dtype} embedding"),
            );
        }
    }
}
