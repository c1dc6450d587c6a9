//! Batched matmul and Linear against the float64 reference on ragged shapes, f32 and f16.

use crate::common::{Rng, Seeded, Tol, assert_close, dtypes, upload};
use scalewise::kernels::size;
use scalewise::ops::elementwise::reference::gelu_tanh_f64;
use scalewise::ops::{self, GatedResidual, MatmulAlgorithm, matmul::MatmulOptions, reference_values as stored};
use scalewise::{DType, Device, MatrixUnits};

backend_tests! {
    fn matmul_matches_reference_on_ragged_shapes(device: &Device, config: &str) {
        let mut rng = Rng::for_config("matmul", config);
        for dtype in dtypes(device) {
            for trial in 0..8 {
                let batch = rng.range(1, 3);
                // The first trials have few rows (the skinny kernel's shapes), one of them a K of
                // several of its chunks; the rest straddle the 64 and 128 tiles.
                let m = if trial < 3 { rng.range(1, 9) } else { rng.range(1, 150) };
                let k = if trial == 1 { rng.range(257, 700) } else { rng.range(1, 150) };
                let n = rng.range(1, 150);
                let transpose_b = trial % 2 == 1;
                let b_shared = trial % 3 == 0;
                let with_bias = trial % 4 != 2;
                let gelu = trial % 3 == 1;
                // The gated residual on every other trial: one gate row per batch entry, or (with a
                // shared b, where the batch is folded into the rows) per 1..m rows.
                let gated = trial % 2 == 0;
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
                let mut want = ops::matmul::reference::matmul(
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
                let rows = if b_shared { batch * m } else { m };
                let gate_rows = if b_shared && rng.range(0, 2) == 0 { 1 } else { m };
                let residual = stored(&rng.vec(batch * m * n, 1.0), dtype);
                let gate = stored(&rng.vec(batch * m / gate_rows * n, 1.0), dtype);
                let tresidual = upload(device, &[batch, m, n], &residual, dtype);
                let tgate = upload(device, &[batch * m / gate_rows, n], &gate, dtype);
                if gelu {
                    want = want.into_iter().map(gelu_tanh_f64).collect();
                }
                if gated {
                    want = ops::matmul::reference::gated_residual(&want, &residual, &gate, n, gate_rows);
                }
                let gated_residual = gated.then_some(GatedResidual { x: &tresidual, gate: &tgate });
                for algorithm in MatmulAlgorithm::KERNELS.into_iter().chain([MatmulAlgorithm::Auto]) {
                    let options =
                        MatmulOptions { transpose_b, bias: with_bias.then_some(&tbias), algorithm, gelu, gated_residual };
                    let result = ops::matmul_with(&ta, &tb, &options);
                    if algorithm == MatmulAlgorithm::Skinny && rows > size::SKINNY_ROWS as usize {
                        let err = result.expect_err("the skinny kernel refuses more rows than it holds");
                        assert!(err.to_string().contains("at most 8 rows"), "{err}");
                        continue;
                    }
                    if algorithm == MatmulAlgorithm::Cooperative && device.caps().matrix_units == MatrixUnits::None {
                        let err = result.expect_err("no matrix units");
                        assert!(err.to_string().contains("matrix units"), "{err}");
                        continue;
                    }
                    if algorithm == MatmulAlgorithm::Cooperative && dtype != DType::F16 {
                        let err = result.expect_err("the matrix units multiply f16");
                        assert!(err.to_string().contains("unsupported dtype f32"), "{err}");
                        continue;
                    }
                    let out = result.expect("matmul");
                    assert_eq!(out.shape(), [batch, m, n]);
                    let what = format!(
                        "{config} {dtype} {algorithm:?} b{batch} {m}x{k}x{n} t={transpose_b} shared={b_shared} gelu={gelu} gated={gated}/{gate_rows}"
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
            // Each tensor uploaded once; the three Linear forms share the float64 reference.
            let (tx, tw, tbias) = (upload(device, &[b, l, k], &x, dtype), upload(device, &[n, k], &w, dtype), upload(device, &[n], &bias, dtype));
            let linear = ops::matmul::reference::matmul(&x, &w, Some(&bias), 1, b * l, k, n, true, true);
            let check = |got: scalewise::Tensor, want: &[f64], what: &str| {
                assert_eq!(got.shape(), [b, l, n], "{what}");
                let tol = Tol::for_dtype(dtype, (k as f64).sqrt());
                assert_close(&got.to_vec_f32().unwrap(), want, tol, &format!("{config} {dtype} {what}"));
            };
            check(ops::linear(&tx, &tw, Some(&tbias)).unwrap(), &linear, "linear");
            let gelu: Vec<f64> = linear.iter().copied().map(gelu_tanh_f64).collect();
            check(ops::linear_gelu(&tx, &tw, Some(&tbias)).unwrap(), &gelu, "linear_gelu");
            // The block's gated residual: x + gate[b] * linear(h), one gate row per batch entry.
            let residual = stored(&rng.vec(b * l * n, 1.0), dtype);
            let gate = stored(&rng.vec(b * n, 1.0), dtype);
            let tresidual = upload(device, &[b, l, n], &residual, dtype);
            let tgate = upload(device, &[b, n], &gate, dtype);
            let gated = ops::matmul::reference::gated_residual(&linear, &residual, &gate, n, l);
            let fused = ops::linear_gated_residual(&tx, &tw, Some(&tbias), &tresidual, &tgate).unwrap();
            check(fused, &gated, "linear_gated_residual");
            // A gate whose rows do not divide the output's rows is a shape error, not a wrong result.
            let bad_gate = upload(device, &[b * l + 1, n], &vec![0.0; (b * l + 1) * n], dtype);
            let err = ops::linear_gated_residual(&tx, &tw, None, &tresidual, &bad_gate)
                .expect_err("a gate of b * l + 1 rows");
            assert!(err.to_string().contains("dividing the output"), "{err}");
        }
    }
}

backend_tests! {
    fn auto_runs_skinny_for_few_rows_and_wide_where_its_grid_fills_a_gpu(device: &Device, config: &str) {
        let choose = |batch, rows, n, transpose_b| MatmulAlgorithm::choose(device, DType::F32, batch, rows, n, transpose_b);
        // A Linear on a CFG pair of tokens (the conditioning), and on the first scales of a batch.
        assert_eq!(choose(1, 2, 1024, true), MatmulAlgorithm::Skinny, "{config}");
        assert_eq!(choose(1, 8, 4096, true), MatmulAlgorithm::Skinny, "{config}");
        // Few rows against a K x N b would read b across its rows: the tiled kernel.
        assert_eq!(choose(1, 2, 1024, false), MatmulAlgorithm::Tiled, "{config}");
        // 512 x 4096 is 128 wide tiles: wide everywhere.
        assert_eq!(choose(1, 512, 4096, true), MatmulAlgorithm::Wide, "{config}");
        assert_eq!(choose(16, 256, 256, false), MatmulAlgorithm::Wide, "{config}");
        // 512 x 1024 is only 32 wide tiles: a GPU gets the 64 x 64 kernel's 128 workgroups, a CPU
        // adapter (no idle units to fill) the wide tile.
        let cpu = device.caps().is_cpu;
        let want = if cpu { MatmulAlgorithm::Wide } else { MatmulAlgorithm::Tiled };
        assert_eq!(choose(1, 512, 1024, true), want, "{config} (CPU adapter: {cpu})");
        // Under half a wide tile's rows: the 64 x 64 kernel on any device.
        assert_eq!(choose(1, 40, 1024, true), MatmulAlgorithm::Tiled, "{config}");
        // f16 goes to the matrix units where the device has them, never to their emulation; f32
        // never does (the units multiply f16); a skinny Linear stays skinny.
        let units = device.caps().matrix_units;
        let f16 = MatmulAlgorithm::choose(device, DType::F16, 1, 512, 1024, true);
        assert_eq!(f16 == MatmulAlgorithm::Cooperative, units == MatrixUnits::Native, "{config} {units:?}: {f16:?}");
        assert_eq!(MatmulAlgorithm::choose(device, DType::F16, 1, 2, 1024, true), MatmulAlgorithm::Skinny, "{config}");
        // The self-check that `Auto` waits for passes wherever the units (or their emulation) exist.
        let verified = ops::matmul::matrix_units_verified(device);
        assert_eq!(verified.is_ok(), units != MatrixUnits::None && device.caps().f16, "{config} {units:?}: {verified:?}");
    }
}

backend_tests! {
    fn cooperative_matmul_matches_reference_over_three_column_blocks(device: &Device, config: &str) {
        // The emulation shares a block out three ways by its column (4 subgroups of 32 lanes, 2 of
        // 64, 1 of 128), so products of at least three 64-wide column blocks take all three; the
        // ragged test above reaches three blocks only on some draws.
        if device.caps().matrix_units == MatrixUnits::None || !device.caps().f16 {
            let test = format!("ops::matmul::cooperative_matmul_matches_reference_over_three_column_blocks::{config}");
            crate::common::skip(&test, "no matrix units (or no f16) on this device");
            return;
        }
        let mut rng = Rng::for_config("cooperative_matmul", config);
        let dtype = DType::F16;
        for transpose_b in [false, true] {
            let (batch, m, k, n) = (2, rng.range(65, 140), rng.range(33, 120), rng.range(129, 200));
            let a = stored(&rng.vec(batch * m * k, 1.0), dtype);
            let b = stored(&rng.vec(batch * k * n, 1.0), dtype);
            let bias = stored(&rng.vec(n, 1.0), dtype);
            let ta = upload(device, &[batch, m, k], &a, dtype);
            let b_shape = if transpose_b { [batch, n, k] } else { [batch, k, n] };
            let tb = upload(device, &b_shape, &b, dtype);
            let tbias = upload(device, &[n], &bias, dtype);
            let want = ops::matmul::reference::matmul(&a, &b, Some(&bias), batch, m, k, n, transpose_b, false);
            let options = MatmulOptions {
                transpose_b,
                bias: Some(&tbias),
                algorithm: MatmulAlgorithm::Cooperative,
                ..Default::default()
            };
            let out = ops::matmul_with(&ta, &tb, &options).expect("cooperative matmul");
            let what = format!("{config} cooperative b{batch} {m}x{k}x{n} t={transpose_b}");
            assert_close(&out.to_vec_f32().unwrap(), &want, Tol::for_dtype(dtype, (k as f64).sqrt()), &what);
        }
    }
}
