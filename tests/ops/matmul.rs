//! Batched matmul and Linear against the float64 reference on ragged shapes, f32 and f16.

use crate::common::{Rng, Seeded, Tol, assert_close, dtypes, upload};
use scalewise::Device;
use scalewise::ops::{self, MatmulAlgorithm, matmul::MatmulOptions, reference_values as stored};

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
