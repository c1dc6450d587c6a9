//! GELU, SiLU, add and mul (with broadcasting) against their float64 references.

use crate::common::{Rng, Seeded, Tol, assert_close, dtypes, upload};
use scalewise::ops::{self, reference_values as stored};
use scalewise::{DType, Device, Tensor};

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
            for copies in [1, 2, rng.range(3, 5)] {
                let got = ops::add_repeat(&tx, &tbias, copies).unwrap();
                assert_eq!(got.shape(), [rows * copies, cols]);
                let want = ops::elementwise::reference::add_repeat(&x, &bias, copies);
                check(got, want, &format!("add_repeat x{copies}"));
            }
        }
    }
}

#[test]
fn add_repeat_refuses_zero_copies_and_scalars() {
    let device = crate::common::full_device();
    let t = upload(device, &[2, 3], &[1.0; 6], DType::F32);
    let err = ops::add_repeat(&t, &t, 0).unwrap_err();
    assert!(matches!(err, scalewise::Error::InvalidArgument { op: "add_repeat", .. }), "{err:?}");
    let scalar = upload(device, &[], &[1.0], DType::F32);
    let err = ops::add_repeat(&scalar, &scalar, 2).unwrap_err();
    assert!(matches!(err, scalewise::Error::InvalidArgument { op: "add_repeat", .. }), "{err:?}");
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
