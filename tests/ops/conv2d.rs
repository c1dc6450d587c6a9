//! conv2d (tiled, implicit GEMM, naive and on matrix units) with k = 1, 3, 5, 7 on shapes that are not multiples of the tiles, against
//! the float64 reference; typed errors for bad arguments (the VQVAE's other ops' errors included).

use crate::common::{Rng, Seeded, Tol, assert_close, dtypes, full_device};
use scalewise::ops::conv2d::{self, Conv2dAlgorithm, Conv2dOptions, conv2d, conv2d_with};
use scalewise::ops::reference_values as stored;
use scalewise::ops::resample::{downsample_area, upsample_bicubic, upsample_nearest2x};
use scalewise::{DType, Device, Error, MatrixUnits, Tensor};

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    batch: usize,
    cin: usize,
    cout: usize,
    height: usize,
    width: usize,
    k: usize,
    bias: bool,
}

fn check_conv(device: &Device, rng: &mut Rng, dtype: DType, case: ConvCase, algorithm: Conv2dAlgorithm, what: &str) {
    let ConvCase { batch, cin, cout, height, width, k, bias } = case;
    let x = stored(&rng.vec(batch * cin * height * width, 1.0), dtype);
    // Weights scaled as a trained layer's would be, so outputs stay near 1 whatever the fan-in.
    let w = stored(&rng.vec(cout * cin * k * k, 1.7 / ((cin * k * k) as f32).sqrt()), dtype);
    let b = stored(&rng.vec(cout, 0.5), dtype);
    let up = |v: &[f32], shape: &[usize]| Tensor::from_f32(device, shape, v, dtype).unwrap();
    let (tx, tw, tb) = (up(&x, &[batch, cin, height, width]), up(&w, &[cout, cin, k, k]), up(&b, &[cout]));
    let options = Conv2dOptions { bias: bias.then_some(&tb), algorithm };
    let result = conv2d_with(&tx, &tw, &options);
    if algorithm == Conv2dAlgorithm::Cooperative {
        // The matrix units multiply f16 and exist only on some devices (the full test device
        // emulates them, the CUDA CPU shim models tensor cores): each refusal is typed and says why.
        let refusal = if dtype != DType::F16 {
            Some("f16 (the matrix units multiply f16)")
        } else if device.caps().matrix_units == MatrixUnits::None {
            Some("matrix units")
        } else {
            None
        };
        if let Some(reason) = refusal {
            let err = result.expect_err("the cooperative conv must be refused here");
            assert!(
                matches!(err, Error::UnsupportedDType { .. } | Error::MissingFeature { .. })
                    && err.to_string().contains(reason),
                "{what}: {err}"
            );
            return;
        }
    }
    let got = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.shape(), [batch, cout, height, width], "{what}");
    let want = conv2d::reference::conv2d(&x, &w, bias.then_some(&b[..]), batch, cin, height, width, k);
    assert_close(&got.to_vec_f32().unwrap(), &want, Tol::for_dtype(dtype, 2.0), what);
}

backend_tests! {
    fn conv2d_matches_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("conv2d", config);
        for dtype in dtypes(device) {
            // Fixed cases: channels above the 32-channel block and the input-channel chunk and not
            // multiples of either, planes smaller than, equal to and larger than one 16 x 8 tile.
            let mut cases = vec![
                ConvCase { batch: 2, cin: 37, cout: 45, height: 11, width: 19, k: 3, bias: true },
                ConvCase { batch: 1, cin: 40, cout: 33, height: 9, width: 17, k: 1, bias: false },
                ConvCase { batch: 1, cin: 7, cout: 3, height: 8, width: 16, k: 5, bias: true },
                ConvCase { batch: 1, cin: 5, cout: 65, height: 3, width: 2, k: 3, bias: false },
                ConvCase { batch: 1, cin: 3, cout: 6, height: 10, width: 13, k: 7, bias: true },
                // The implicit GEMM's shapes: Cout past one 128-row tile, H * W past one 128-pixel
                // tile, Cin * k * k not a multiple of its K step. Under Auto, the 3 rows past 131's
                // full tile (and 160's 32) run on the direct kernel from channel 128, in a second
                // launch beside the GEMM's. The cooperative kernel's 64-row and 64-pixel blocks are
                // ragged on all of them (160 is two and a half blocks, 5 * 29 pixels end inside one),
                // its 32-deep K steps on the first (603 = 67 * 9).
                ConvCase { batch: 2, cin: 67, cout: 131, height: 12, width: 11, k: 3, bias: true },
                ConvCase { batch: 1, cin: 64, cout: 70, height: 5, width: 29, k: 1, bias: false },
                ConvCase { batch: 2, cin: 64, cout: 160, height: 5, width: 9, k: 3, bias: true },
            ];
            for _ in 0..4 {
                cases.push(ConvCase {
                    batch: rng.range(1, 2),
                    cin: rng.range(1, 48),
                    cout: rng.range(1, 48),
                    height: rng.range(1, 21),
                    width: rng.range(1, 21),
                    k: [1, 3, 3, 5][rng.range(0, 3)],
                    bias: rng.range(0, 1) == 0,
                });
            }
            for case in cases {
                for algorithm in Conv2dAlgorithm::KERNELS.into_iter().chain([Conv2dAlgorithm::Auto]) {
                    let what = format!("{config} {dtype} {algorithm:?} {case:?}");
                    check_conv(device, &mut rng, dtype, case, algorithm, &what);
                }
            }
        }
    }
}

backend_tests! {
    fn auto_takes_the_matrix_units_only_where_a_cooperative_conv_runs(device: &Device, config: &str) {
        // Real units (cooperative matrices, tensor cores, the CUDA CPU shim's model of them) whose
        // self-check passed; never the emulation (wgpu_full). The check passes wherever the kernel
        // runs, emulated or not, and says why it cannot run elsewhere.
        let check = scalewise::ops::conv_units_verified(device);
        match device.caps().matrix_units {
            MatrixUnits::None => assert_eq!(check, Err("the device has no matrix units".into()), "{config}"),
            _ => assert_eq!(check, Ok(()), "{config}"),
        }
        let runs_here = device.caps().matrix_units == MatrixUnits::Native && check.is_ok();
        for dtype in dtypes(device) {
            let want = if dtype == DType::F16 && runs_here {
                Conv2dAlgorithm::Cooperative
            } else {
                Conv2dAlgorithm::ImplicitGemm
            };
            let choose = |cin, cout, pixels| Conv2dAlgorithm::choose(device, dtype, cin, cout, pixels);
            assert_eq!(choose(160, 160, 256 * 256), want, "{config} {dtype}");
            assert_eq!(choose(160, 3, 256 * 256), Conv2dAlgorithm::Tiled, "{config} {dtype}");
            // An image whose 64-pixel blocks would pass the grid's limit along x keeps the GEMM.
            let past = 64 * (device.caps().max_groups_per_dim as usize + 1);
            assert_eq!(choose(160, 160, past), Conv2dAlgorithm::ImplicitGemm, "{config} {dtype}");
        }
    }
}

#[test]
fn conv2d_default_is_the_tiled_kernel_and_equals_naive() {
    assert_eq!(Conv2dOptions::default().algorithm, Conv2dAlgorithm::Auto, "the default conv2d chooses by shape");
    // The implicit GEMM only where both sides have 64 channels or more (the decoder's body); on the
    // matrix units only where the device has real ones (the full test device emulates them, which
    // Auto never takes).
    let device = full_device();
    let choose = |dtype, cin, cout| Conv2dAlgorithm::choose(device, dtype, cin, cout, 64 * 64);
    for dtype in dtypes(device) {
        assert_eq!(choose(dtype, 160, 160), Conv2dAlgorithm::ImplicitGemm, "{dtype}");
        assert_eq!(choose(dtype, 64, 64), Conv2dAlgorithm::ImplicitGemm, "{dtype}");
        assert_eq!(choose(dtype, 160, 3), Conv2dAlgorithm::Tiled, "{dtype}");
        assert_eq!(choose(dtype, 32, 128), Conv2dAlgorithm::Tiled, "{dtype}");
    }
    let mut rng = Rng::for_test("conv2d_default");
    let (cin, cout, h, w) = (20, 35, 18, 33);
    let x = Tensor::from_f32(device, &[1, cin, h, w], &rng.vec(cin * h * w, 1.0), DType::F32).unwrap();
    let wt = Tensor::from_f32(device, &[cout, cin, 3, 3], &rng.vec(cout * cin * 9, 0.1), DType::F32).unwrap();
    let bias = Tensor::from_f32(device, &[cout], &rng.vec(cout, 1.0), DType::F32).unwrap();
    let tiled = conv2d(&x, &wt, Some(&bias)).unwrap().to_vec_f32().unwrap();
    let naive = conv2d_with(&x, &wt, &Conv2dOptions { bias: Some(&bias), algorithm: Conv2dAlgorithm::Naive })
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let want: Vec<f64> = naive.iter().map(|&v| v as f64).collect();
    assert_close(&tiled, &want, Tol::for_dtype(DType::F32, 2.0), "tiled vs naive");
}

#[test]
fn bad_vqvae_arguments_are_typed_errors() {
    let device = full_device();
    let t = |shape: &[usize]| Tensor::zeros(device, shape, DType::F32).unwrap();
    let conv = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| conv2d(x, w, b).expect_err("an error");
    let x = t(&[1, 4, 6, 5]);
    assert!(conv2d(&x, &t(&[8, 4, 3, 3]), Some(&t(&[8]))).is_ok());

    let e = conv(&t(&[4, 6, 5]), &t(&[8, 4, 3, 3]), None);
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("[4, 6, 5]"), "{e}");
    let e = conv(&x, &t(&[8, 3, 3, 3]), None);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("[1, 4, 6, 5]") && e.to_string().contains("[8, 3, 3, 3]"), "{e}");
    assert!(e.to_string().contains("4 input channels"), "{e}");
    let e = conv(&x, &t(&[8, 4, 3]), None);
    assert!(matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains("[8, 4, 3]"), "{e}");
    let e = conv(&x, &t(&[8, 4, 3, 1]), None);
    assert!(matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains("3 x 1"), "{e}");
    for k in [2, 4, 9] {
        let e = conv(&x, &t(&[8, 4, k, k]), None);
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains(&format!("size {k}")), "{e}");
    }
    let e = conv(&x, &t(&[8, 4, 3, 3]), Some(&t(&[4])));
    assert!(matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains("[8]"), "{e}");
    assert!(e.to_string().contains("[4]"), "{e}");
    let e = conv(&x, &t(&[8, 4, 3, 3]), Some(&t(&[1, 8])));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    if device.caps().f16 {
        let half = Tensor::zeros(device, &[8, 4, 3, 3], DType::F16).unwrap();
        assert!(matches!(conv(&x, &half, None), Error::DTypeMismatch { .. }));
    }
    let ids = Tensor::from_u32(device, &[1, 1, 2, 2], &[0, 1, 2, 3]).unwrap();
    assert!(matches!(conv(&ids, &t(&[1, 1, 1, 1]), None), Error::DTypeMismatch { .. }));

    let e = upsample_bicubic(&t(&[4, 4]), 8, 8).expect_err("2-D input");
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("[4, 4]"), "{e}");
    let e = downsample_area(&t(&[1, 2, 0, 4]), 2, 2).expect_err("empty plane");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let e = downsample_area(&x, 0, 3).expect_err("zero output");
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("0 x 3"), "{e}");
    let e = upsample_nearest2x(&t(&[1, 2, 3, 4, 5])).expect_err("5-D input");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(matches!(upsample_bicubic(&ids, 4, 4), Err(Error::UnsupportedDType { .. })));
    // Empty batches are fine and dispatch nothing.
    assert_eq!(upsample_bicubic(&t(&[0, 3, 2, 2]), 5, 5).unwrap().shape(), [0, 3, 5, 5]);
    assert_eq!(conv2d(&t(&[0, 4, 6, 5]), &t(&[8, 4, 3, 3]), None).unwrap().shape(), [0, 8, 6, 5]);
    // An empty batch with an output side whose windows, (in + 1) * out, overflow.
    let e = upsample_bicubic(&t(&[0, 1, 2, 2]), usize::MAX / 2, 1).expect_err("a window past usize");
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("in_h * out_h"), "{e}");
}
