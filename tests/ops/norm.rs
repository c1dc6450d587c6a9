//! LayerNorm, AdaLN modulation, RMSNorm, GroupNorm and softmax against their float64 references.

use crate::common::{Rng, Seeded, Tol, assert_close, dtypes, upload};
use scalewise::Device;
use scalewise::ops::{self, reference_values as stored};

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

            // Mamba-2's gated form: rms_norm(x * silu(z)), the gate and the product stored as the
            // silu and mul kernels store them.
            let z = stored(&rng.vec(rows * cols, 4.0), dtype);
            let gate = stored(&z.iter().map(|&v| (v as f64 / (1.0 + (-v as f64).exp())) as f32).collect::<Vec<_>>(), dtype);
            let gated = stored(&x.iter().zip(&gate).map(|(&a, &g)| a * g).collect::<Vec<_>>(), dtype);
            let tz = upload(device, &[rows, cols], &z, dtype);
            for weight in [Some(&w), None] {
                let tw = weight.map(|w| upload(device, &[cols], w, dtype));
                let got = ops::gated_rms_norm(&tx, &tz, tw.as_ref(), 1e-5).unwrap();
                let want = ops::norm::reference::gated_rms_norm(&gated, cols, weight.map(|w| w.as_slice()), 1e-5);
                let what = format!("{config} {dtype} gated_rms_norm {rows}x{cols} weight {}", weight.is_some());
                assert_close(&got.to_vec_f32().unwrap(), &want, tol, &what);
            }
            let wrong = upload(device, &[rows, cols + 1], &vec![0.0; rows * (cols + 1)], dtype);
            let err = ops::gated_rms_norm(&tx, &wrong, None, 1e-5).unwrap_err();
            assert!(matches!(err, scalewise::Error::ShapeMismatch { op: "gated_rms_norm", .. }), "{err:?}");
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
