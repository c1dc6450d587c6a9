//! The VQVAE's resampling against float64 references: bicubic upsampling from every VAR scale to the
//! 16 x 16 latent, area downsampling back to every scale, nearest x2, on random shapes; typed errors.

use crate::common::{Rng, Seeded, Tol, assert_close, dtypes};
use scalewise::ops::reference_values as stored;
use scalewise::ops::resample::{self, downsample_area, upsample_bicubic, upsample_nearest2x};
use scalewise::{DType, Device, Tensor};

/// The token-map side lengths of VAR's 10 scales (the last, 16, is the latent).
const VAR_SCALES: [usize; 9] = [1, 2, 3, 4, 5, 6, 8, 10, 13];

/// Inputs [[1, 2], [3, 4]] and [[1, 0], [0, 0]] and their 2x2 -> 4x4 bicubic upsamplings,
/// computed by hand (see [`bicubic_weights_match_hand_computed_values`]).
fn hand_computed_bicubic() -> [([f32; 4], Vec<f64>); 2] {
    let want_ramp = vec![
        0.68359375, 1.015625, 1.5625, 1.89453125, // 0.7890625 + L
        1.34765625, 1.6796875, 2.2265625, 2.55859375, // 1.453125 + L
        2.44140625, 2.7734375, 3.3203125, 3.65234375, // 2.546875 + L
        3.10546875, 3.4375, 3.984375, 4.31640625, // 3.2109375 + L
    ];
    let column = [1.10546875, 0.7734375, 0.2265625, -0.10546875];
    let want_impulse: Vec<f64> = (0..16).map(|i| column[i / 4] * column[i % 4]).collect();
    [([1.0, 2.0, 3.0, 4.0], want_ramp), ([1.0, 0.0, 0.0, 0.0], want_impulse)]
}

#[test]
fn bicubic_weights_match_hand_computed_values() {
    // Keys' kernel with a = -0.75: W(d) = 1.25|d|^3 - 2.25|d|^2 + 1 for |d| <= 1,
    // -0.75|d|^3 + 3.75|d|^2 - 6|d| + 3 for 1 < |d| < 2. For t = 0.75 the taps at distances
    // 1.75, 0.75, 0.25, 1.25 weigh:
    //   W(1.75) = -0.75 * 5.359375 + 3.75 * 3.0625 - 10.5 + 3 = -0.03515625
    //   W(0.75) = 1.25 * 0.421875 - 2.25 * 0.5625 + 1          =  0.26171875
    //   W(0.25) = 1.25 * 0.015625 - 2.25 * 0.0625 + 1          =  0.87890625
    //   W(1.25) = -0.75 * 1.953125 + 3.75 * 1.5625 - 7.5 + 3   = -0.10546875   (sum 1)
    let keys = resample::reference::keys_cubic;
    for (d, want) in [(1.75, -0.03515625), (0.75, 0.26171875), (0.25, 0.87890625), (1.25, -0.10546875), (2.0, 0.0)] {
        assert!((keys(d) - want).abs() < 1e-15, "W({d}) = {} != {want}", keys(d));
    }
    // 2 -> 4, align_corners = false: src = (dst + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
    //   dst 0: floor -1, t 0.75, taps -2, -1, 0, 1 -> clamped 0, 0, 0, 1:
    //          in[0] (-0.03515625 + 0.26171875 + 0.87890625) + in[1] (-0.10546875) = 1.10546875 in[0] - 0.10546875 in[1]
    //   dst 1: floor 0, t 0.25, taps -1, 0, 1, 2 -> 0, 0, 1, 1:
    //          in[0] (-0.10546875 + 0.87890625) + in[1] (0.26171875 - 0.03515625) = 0.7734375 in[0] + 0.2265625 in[1]
    //   dst 2, 3: the mirror images (0.2265625, 0.7734375), (-0.10546875, 1.10546875).
    // So a ramp [0, 1] becomes L = [-0.10546875, 0.2265625, 0.7734375, 1.10546875], and the linear
    // input [[1, 2], [3, 4]] (1 + col + 2 row) becomes 1 + L[col] + 2 L[row], and the impulse
    // [[1, 0], [0, 0]] the outer product of the first column: `hand_computed_bicubic`.
    let exact = Tol { atol: 1e-12, rtol: 0.0 };
    let reference = |x: &[f32]| resample::reference::upsample_bicubic(x, 1, 2, 2, 4, 4);
    let as_f32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
    let [(ramp, want_ramp), (impulse, want_impulse)] = hand_computed_bicubic();
    assert_close(&as_f32(&reference(&ramp)), &want_ramp, exact, "reference, ramp");
    assert_close(&as_f32(&reference(&impulse)), &want_impulse, exact, "reference, impulse");
}

backend_tests! {
    fn bicubic_kernel_matches_hand_computed_values(device: &Device, config: &str) {
        for (x, want) in hand_computed_bicubic() {
            let t = Tensor::from_f32(device, &[1, 1, 2, 2], &x, DType::F32).unwrap();
            let got = upsample_bicubic(&t, 4, 4).unwrap().to_vec_f32().unwrap();
            assert_close(&got, &want, Tol::for_dtype(DType::F32, 4.0), &format!("{config}: {x:?} 2x2 -> 4x4"));
        }
        // A 1 x 1 input gives a constant (the weights sum to 1 over the clamped taps).
        let one = Tensor::from_f32(device, &[1, 2, 1, 1], &[0.75, -3.0], DType::F32).unwrap();
        let got = upsample_bicubic(&one, 5, 3).unwrap().to_vec_f32().unwrap();
        let want: Vec<f64> = (0..30).map(|i| if i < 15 { 0.75 } else { -3.0 }).collect();
        assert_close(&got, &want, Tol::for_dtype(DType::F32, 1.0), &format!("{config}: 1x1 -> 5x3"));
    }
}

#[derive(Clone, Copy, Debug)]
enum Resample {
    Bicubic,
    Area,
    Nearest2x,
}

/// Runs one resampling of a random (B, C, in_h, in_w) input against its reference.
#[allow(clippy::too_many_arguments)]
fn check_resample(
    device: &Device,
    rng: &mut Rng,
    dtype: DType,
    op: Resample,
    (batch, channels): (usize, usize),
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    what: &str,
) {
    let planes = batch * channels;
    let x = stored(&rng.vec(planes * in_h * in_w, 1.0), dtype);
    let t = Tensor::from_f32(device, &[batch, channels, in_h, in_w], &x, dtype).unwrap();
    let (got, want) = match op {
        Resample::Bicubic => (
            upsample_bicubic(&t, out_h, out_w),
            resample::reference::upsample_bicubic(&x, planes, in_h, in_w, out_h, out_w),
        ),
        Resample::Area => (
            downsample_area(&t, out_h, out_w),
            resample::reference::downsample_area(&x, planes, in_h, in_w, out_h, out_w),
        ),
        Resample::Nearest2x => {
            (upsample_nearest2x(&t), resample::reference::upsample_nearest2x(&x, planes, in_h, in_w))
        }
    };
    let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.shape(), [batch, channels, out_h, out_w], "{what}");
    assert_eq!(got.dtype(), dtype, "{what}");
    // Bicubic overshoots by up to about 1.4x the input range.
    assert_close(&got.to_vec_f32().unwrap(), &want, Tol::for_dtype(dtype, 2.0), what);
}

backend_tests! {
    fn bicubic_from_every_var_scale_to_the_latent(device: &Device, config: &str) {
        let mut rng = Rng::for_config("bicubic_var_scales", config);
        for dtype in dtypes(device) {
            for pn in VAR_SCALES {
                let bc = (rng.range(1, 2), rng.range(1, 5));
                let what = format!("{config} {dtype} bicubic {bc:?} {pn}x{pn} -> 16x16");
                check_resample(device, &mut rng, dtype, Resample::Bicubic, bc, (pn, pn), (16, 16), &what);
            }
        }
    }
}

backend_tests! {
    fn area_from_the_latent_to_every_var_scale(device: &Device, config: &str) {
        let mut rng = Rng::for_config("area_var_scales", config);
        for dtype in dtypes(device) {
            for pn in VAR_SCALES {
                let bc = (rng.range(1, 2), rng.range(1, 5));
                let what = format!("{config} {dtype} area {bc:?} 16x16 -> {pn}x{pn}");
                check_resample(device, &mut rng, dtype, Resample::Area, bc, (16, 16), (pn, pn), &what);
            }
        }
    }
}

backend_tests! {
    fn resampling_random_shapes(device: &Device, config: &str) {
        let mut rng = Rng::for_config("resample_random", config);
        for dtype in dtypes(device) {
            for _ in 0..4 {
                let bc = (rng.range(1, 3), rng.range(1, 7));
                let input = (rng.range(1, 23), rng.range(1, 23));
                // Any output size: bicubic also samples down (no antialias), area also repeats up.
                let output = (rng.range(1, 29), rng.range(1, 29));
                for op in [Resample::Bicubic, Resample::Area] {
                    let what = format!("{config} {dtype} {op:?} {bc:?} {input:?} -> {output:?}");
                    check_resample(device, &mut rng, dtype, op, bc, input, output, &what);
                }
                let doubled = (2 * input.0, 2 * input.1);
                let what = format!("{config} {dtype} nearest2x {bc:?} {input:?}");
                check_resample(device, &mut rng, dtype, Resample::Nearest2x, bc, input, doubled, &what);
            }
        }
    }
}
