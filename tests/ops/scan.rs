//! Selective scan and SSD against the float64 recurrence: random shapes with L not a multiple of any
//! chunk, small and large D x N, groups, with and without z / delta_bias / D, initial and final
//! states, reverse, f16 storage, both layouts, single-pass and chunked; pieces equal the whole.

use crate::common::{
    Rng, Seeded, Tol, WGPU_FULL, assert_close, dtypes, from_tokens_major, full_device, to_tokens_major,
};
use scalewise::ops::reference_values as stored;
use scalewise::ops::scan::reference::{ScanReference, scan};
use scalewise::ops::scan::{ScanOutput, SelectiveScan, SequenceLayout, SsdForm, SsdScan, selective_scan, ssd_scan};
use scalewise::{DType, Device, Error, Tensor};

#[derive(Clone, Copy)]
struct Case {
    batch: usize,
    channels: usize,
    length: usize,
    groups: usize,
    n_state: usize,
    heads: Option<usize>, // Some(H): SSD with H heads
    form: SsdForm,
    dtype: DType,
    layout: SequenceLayout,
    z: bool,
    bias: bool,
    skip: bool,
    softplus: bool,
    initial: bool,
    reverse: bool,
    chunk_len: Option<usize>,
}

fn random_case(rng: &mut Rng, dtype: DType, ssd: bool) -> Case {
    let groups = rng.range(1, 3);
    let heads = ssd.then(|| groups * rng.range(1, 3));
    let channels = match heads {
        Some(h) => h * rng.range(1, 9),
        None => groups * rng.range(1, 50),
    };
    let length = rng.range(1, 140);
    Case {
        batch: rng.range(1, 2),
        channels,
        length,
        groups,
        n_state: [1, 3, 16, 64][rng.range(0, 3)],
        heads,
        form: [SsdForm::Recurrent, SsdForm::ChunkedMatrix][rng.range(0, 1)],
        dtype,
        layout: if rng.range(0, 1) == 0 { SequenceLayout::ChannelsMajor } else { SequenceLayout::TokensMajor },
        z: !ssd && rng.range(0, 1) == 0,
        bias: rng.range(0, 1) == 0,
        skip: rng.range(0, 1) == 0,
        softplus: rng.range(0, 3) != 0,
        initial: rng.range(0, 1) == 0,
        reverse: rng.range(0, 2) == 0,
        chunk_len: [None, Some(rng.range(1, 40)), Some(length)][rng.range(0, 2)],
    }
}

/// Runs one case on the GPU and against the reference.
fn check(device: &Device, rng: &mut Rng, case: &Case, what: &str) {
    let Case { batch, channels: d, length: l, groups: g, n_state: n, dtype, .. } = *case;
    let heads = case.heads.unwrap_or(d);
    let u = stored(&rng.vec(batch * d * l, 1.0), dtype);
    // With softplus, raw delta around its knee; without, delta is already a positive step. A is
    // negative, so the state decays as in a trained model.
    let raw = rng.vec(batch * heads * l, 1.5);
    let delta: Vec<f32> = if case.softplus {
        raw.iter().map(|v| v - 0.5).collect()
    } else {
        raw.iter().map(|v| v.abs() * 0.5 + 0.01).collect()
    };
    let delta = stored(&delta, dtype);
    let a_len = if case.heads.is_some() { heads } else { d * n };
    let a: Vec<f32> = rng.vec(a_len, 1.0).iter().map(|v| -(v.abs() * 1.9 + 0.1)).collect();
    let bm = stored(&rng.vec(batch * g * n * l, 1.0), dtype);
    let cm = stored(&rng.vec(batch * g * n * l, 1.0), dtype);
    let skip = rng.vec(heads, 1.0);
    let z = stored(&rng.vec(batch * d * l, 2.0), dtype);
    let bias: Vec<f32> = rng.vec(heads, 0.5).iter().map(|v| if case.softplus { *v } else { v.abs() }).collect();
    let h0 = rng.vec(batch * d * n, 1.0);
    let tokens = case.layout == SequenceLayout::TokensMajor;
    let seq = |x: &[f32], ch: usize| -> Tensor {
        let (data, shape) =
            if tokens { (to_tokens_major(x, batch, ch, l), [batch, l, ch]) } else { (x.to_vec(), [batch, ch, l]) };
        Tensor::from_f32(device, &shape, &data, dtype).unwrap()
    };
    // B, C: (B, G, N, L) viewed as (B, G*N, L) for the transpose.
    let bc = |x: &[f32]| -> Tensor {
        let (data, shape) = if tokens {
            (to_tokens_major(x, batch, g * n, l), [batch, l, g, n])
        } else {
            (x.to_vec(), [batch, g, n, l])
        };
        Tensor::from_f32(device, &shape, &data, dtype).unwrap()
    };
    let f32t = |x: &[f32], shape: &[usize]| Tensor::from_f32(device, shape, x, DType::F32).unwrap();
    let (tu, tdelta, tb, tc, tz) = (seq(&u, d), seq(&delta, heads), bc(&bm), bc(&cm), seq(&z, d));
    let ta = if case.heads.is_some() { f32t(&a, &[heads]) } else { f32t(&a, &[d, n]) };
    let (tskip, tbias, th0) = (f32t(&skip, &[heads]), f32t(&bias, &[heads]), f32t(&h0, &[batch, d, n]));
    let out: ScanOutput = match case.heads {
        None => selective_scan(&SelectiveScan {
            u: &tu,
            delta: &tdelta,
            a: &ta,
            b: &tb,
            c: &tc,
            d_skip: case.skip.then_some(&tskip),
            z: case.z.then_some(&tz),
            delta_bias: case.bias.then_some(&tbias),
            delta_softplus: case.softplus,
            initial_state: case.initial.then_some(&th0),
            reverse: case.reverse,
            layout: case.layout,
            chunk_len: case.chunk_len,
        }),
        Some(_) => ssd_scan(&SsdScan {
            x: &tu,
            dt: &tdelta,
            a: &ta,
            b: &tb,
            c: &tc,
            d_skip: case.skip.then_some(&tskip),
            dt_bias: case.bias.then_some(&tbias),
            dt_softplus: case.softplus,
            initial_state: case.initial.then_some(&th0),
            reverse: case.reverse,
            layout: case.layout,
            chunk_len: case.chunk_len,
            form: case.form,
        }),
    }
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (want_y, want_state) = scan(&ScanReference {
        batch,
        channels: d,
        length: l,
        groups: g,
        n_state: n,
        channels_per_head: d / heads,
        a_per_head: case.heads.is_some(),
        u: &u,
        delta: &delta,
        a: &a,
        b: &bm,
        c: &cm,
        d_skip: case.skip.then_some(&skip[..]),
        z: case.z.then_some(&z[..]),
        delta_bias: case.bias.then_some(&bias[..]),
        softplus: case.softplus,
        initial_state: case.initial.then_some(&h0[..]),
        reverse: case.reverse,
    });
    let mut y = out.y.to_vec_f32().unwrap();
    if tokens {
        y = from_tokens_major(&y, batch, d, l);
    }
    let magnitude = (n as f64).sqrt() * 2.0;
    assert_close(&y, &want_y, Tol::for_dtype(dtype, magnitude), &format!("{what}: y"));
    // States are f32 whatever the storage type.
    let state_tol = Tol::for_dtype(DType::F32, magnitude);
    assert_close(&out.final_state.to_vec_f32().unwrap(), &want_state, state_tol, &format!("{what}: final state"));
}

fn describe(case: &Case) -> String {
    format!(
        "{} B{} D{} L{} G{} N{} heads {:?} {:?} {:?} z{} bias{} skip{} softplus{} h0{} rev{} chunk {:?}",
        case.dtype,
        case.batch,
        case.channels,
        case.length,
        case.groups,
        case.n_state,
        case.heads,
        case.form,
        case.layout,
        case.z,
        case.bias,
        case.skip,
        case.softplus,
        case.initial,
        case.reverse,
        case.chunk_len
    )
}

backend_tests! {
    fn selective_scan_matches_the_recurrence(device: &Device, config: &str) {
        let mut rng = Rng::for_config("selective_scan", config);
        for dtype in dtypes(device) {
            for _ in 0..8 {
                let case = random_case(&mut rng, dtype, false);
                check(device, &mut rng, &case, &format!("{config} {}", describe(&case)));
            }
        }
    }
}

backend_tests! {
    fn ssd_scan_matches_the_recurrence(device: &Device, config: &str) {
        let mut rng = Rng::for_config("ssd_scan", config);
        for dtype in dtypes(device) {
            for _ in 0..6 {
                let case = random_case(&mut rng, dtype, true);
                for form in [SsdForm::Recurrent, SsdForm::ChunkedMatrix] {
                    let case = Case { form, ..case };
                    check(device, &mut rng, &case, &format!("{config} {}", describe(&case)));
                }
            }
        }
    }

    /// The chunked form at M-VAR's Mamba-2 head (head_dim 64, d_state 64) and at head dims past one
    /// group of 64 columns (each a workgroup of both chunk kernels), not multiples of 4, with a state
    /// size that is not either; chunks past one 32-step stage of the states' kernel, one 32-step block
    /// of outputs and one 32-key tile. The last two cases are fixed so that every seed covers it all:
    /// M-VAR's head at its default chunk of 64 (two blocks, two key tiles, the carried state in three
    /// slices of 31 states), and head dim 255 over chunks of 80 with a 10-step last chunk (four column
    /// groups, the last 63 wide; three blocks and three stages) from an initial state.
    fn ssd_chunked_matches_the_recurrence_on_wide_heads(device: &Device, config: &str) {
        let mut rng = Rng::for_config("ssd_wide_heads", config);
        let random = |rng: &mut Rng| (rng.range(20, 170), rng.range(9, 80));
        for (head_dim, n_state, heads, (length, chunk), initial) in [
            (64, 64, 2, random(&mut rng), None),
            (rng.range(65, 130), 13, 1, random(&mut rng), None),
            (rng.range(190, 256), 64, 1, random(&mut rng), None),
            (64, 64, 2, (150, 64), Some(true)),
            (255, 64, 1, (170, 80), Some(true)),
        ] {
            let base = random_case(&mut rng, DType::F32, true);
            let case = Case {
                channels: heads * head_dim,
                heads: Some(heads),
                groups: 1,
                n_state,
                length,
                form: SsdForm::ChunkedMatrix,
                chunk_len: Some(chunk),
                initial: initial.unwrap_or(base.initial),
                ..base
            };
            check(device, &mut rng, &case, &format!("{config} {}", describe(&case)));
        }
    }
}

#[test]
fn every_flag_combination_on_a_chunked_scan() {
    let mut rng = Rng::for_test("scan_flags");
    let (name, device) = (WGPU_FULL, full_device());
    for bits in 0..64u32 {
        let case = Case {
            batch: 2,
            channels: 6,
            length: 37,
            groups: 2,
            n_state: 5,
            heads: None,
            form: SsdForm::Auto,
            dtype: DType::F32,
            layout: SequenceLayout::ChannelsMajor,
            z: bits & 1 != 0,
            bias: bits & 2 != 0,
            skip: bits & 4 != 0,
            softplus: bits & 8 != 0,
            initial: bits & 16 != 0,
            reverse: bits & 32 != 0,
            chunk_len: Some(8),
        };
        check(device, &mut rng, &case, &format!("{name} {}", describe(&case)));
    }
}

backend_tests! {
    fn scanning_in_pieces_with_carried_state_equals_scanning_whole(device: &Device, config: &str) {
        let mut rng = Rng::for_config("scan_pieces", config);
        let (batch, d, l, g, n) = (2, 12, 50, 3, 16);
        let shape_seq = [batch, d, l];
        let up = |x: Vec<f32>, shape: &[usize]| Tensor::from_f32(device, shape, &x, DType::F32).unwrap();
        let u = up(rng.vec(batch * d * l, 1.0), &shape_seq);
        let delta = up(rng.vec(batch * d * l, 1.0), &shape_seq);
        let a = up(rng.vec(d * n, 1.0).iter().map(|v| -(v.abs() + 0.2)).collect(), &[d, n]);
        let b = up(rng.vec(batch * g * n * l, 1.0), &[batch, g, n, l]);
        let c = up(rng.vec(batch * g * n * l, 1.0), &[batch, g, n, l]);
        let z = up(rng.vec(batch * d * l, 1.0), &shape_seq);
        for reverse in [false, true] {
            let whole_args = SelectiveScan {
                u: &u,
                delta: &delta,
                a: &a,
                b: &b,
                c: &c,
                d_skip: None,
                z: Some(&z),
                delta_bias: None,
                delta_softplus: true,
                initial_state: None,
                reverse,
                layout: SequenceLayout::ChannelsMajor,
                chunk_len: None,
            };
            let whole = selective_scan(&whole_args).unwrap();
            // Three pieces (one scale at a time, as M-VAR does), in processing order.
            let cuts = [0, 17, 18, l];
            let mut ranges: Vec<_> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
            if reverse {
                ranges.reverse();
            }
            let mut state: Option<Tensor> = None;
            let mut pieces = vec![None; ranges.len()];
            for (k, range) in ranges.iter().enumerate() {
                let s = |t: &Tensor, dim| t.slice(dim, range.clone()).unwrap();
                let (pu, pd, pb, pc, pz) = (s(&u, 2), s(&delta, 2), s(&b, 3), s(&c, 3), s(&z, 2));
                let piece = SelectiveScan {
                    u: &pu,
                    delta: &pd,
                    b: &pb,
                    c: &pc,
                    z: Some(&pz),
                    initial_state: state.as_ref(),
                    ..whole_args
                };
                let out = selective_scan(&piece).unwrap();
                state = Some(out.final_state);
                pieces[k] = Some(out.y);
            }
            if reverse {
                pieces.reverse();
            }
            let pieces: Vec<Tensor> = pieces.into_iter().map(Option::unwrap).collect();
            let joined = Tensor::concat(&pieces.iter().collect::<Vec<_>>(), 2).unwrap();
            let want: Vec<f64> = whole.y.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
            let tol = Tol::for_dtype(DType::F32, 4.0);
            assert_close(&joined.to_vec_f32().unwrap(), &want, tol, &format!("{config} reverse={reverse}: y"));
            let want: Vec<f64> = whole.final_state.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
            assert_close(
                &state.unwrap().to_vec_f32().unwrap(),
                &want,
                tol,
                &format!("{config} reverse={reverse}: state"),
            );
        }
    }
}

#[test]
fn bad_scan_arguments_are_typed_errors() {
    let device = full_device();
    let t = |shape: &[usize], fill: f32| {
        Tensor::from_f32(device, shape, &vec![fill; shape.iter().product()], DType::F32).unwrap()
    };
    let (u, bc) = (t(&[1, 6, 5], 0.5), t(&[1, 2, 4, 5], 0.5));
    let run = |a: &Tensor, b: &Tensor| {
        selective_scan(&SelectiveScan {
            u: &u,
            delta: &u,
            a,
            b,
            c: b,
            d_skip: None,
            z: None,
            delta_bias: None,
            delta_softplus: false,
            initial_state: None,
            reverse: false,
            layout: SequenceLayout::ChannelsMajor,
            chunk_len: None,
        })
        .map(drop)
    };
    let err = |a: &Tensor, b: &Tensor| run(a, b).expect_err("an error").to_string();
    assert!(run(&t(&[6, 4], -1.0), &bc).is_ok());
    let e = err(&t(&[6, 65], -1.0), &t(&[1, 2, 65, 5], 0.5));
    assert!(e.contains("N = 65"), "{e}");
    let e = err(&t(&[6, 4], -1.0), &t(&[1, 4, 4, 5], 0.5));
    assert!(e.contains("4 groups") && e.contains("6 channels"), "{e}");
    let mut bad_a = vec![-1.0f32; 24];
    bad_a[13] = f32::INFINITY;
    let e = err(&Tensor::from_f32(device, &[6, 4], &bad_a, DType::F32).unwrap(), &bc);
    assert!(e.contains("A[13]") && e.contains("inf"), "{e}");
    let e = err(&t(&[6, 3], -1.0), &bc);
    assert!(e.contains("[6, 4]") && e.contains("[6, 3]"), "{e}");
    let e = err(&t(&[6, 4], -1.0), &t(&[1, 2, 4, 6], 0.5));
    assert!(e.contains("[1, 2, 4, 5]"), "{e}");
    let ssd = |x: &Tensor| {
        ssd_scan(&SsdScan {
            x,
            dt: &t(&[1, 4, 5], 0.5),
            a: &t(&[4], -1.0),
            b: &bc,
            c: &bc,
            d_skip: None,
            dt_bias: None,
            dt_softplus: true,
            initial_state: None,
            reverse: false,
            layout: SequenceLayout::ChannelsMajor,
            chunk_len: None,
            form: SsdForm::Auto,
        })
    };
    let six = ssd(&t(&[1, 6, 5], 0.5));
    assert!(matches!(six, Err(Error::InvalidArgument { .. })), "6 channels cannot be 4 heads");
    // Zero channels are a multiple of 4 heads, but leave no head dimension (a division by zero once).
    let none = ssd(&t(&[1, 0, 5], 0.5));
    assert!(matches!(none, Err(Error::InvalidArgument { .. })), "0 channels have no head dimension");
}

backend_tests! {
    fn causal_conv1d_matches_reference_and_carries_state(device: &Device, config: &str) {
        use scalewise::ops::conv1d::{CausalConv1d, causal_conv1d, reference};
        let mut rng = Rng::for_config("conv1d", config);
        for dtype in dtypes(device) {
            for _ in 0..6 {
                let (batch, channels, length, width) =
                    (rng.range(1, 2), rng.range(1, 40), rng.range(1, 30), rng.range(1, 4));
                let (with_bias, with_state, silu) = (rng.range(0, 1) == 0, rng.range(0, 1) == 0, rng.range(0, 1) == 0);
                let tokens = rng.range(0, 1) == 0;
                let layout = if tokens { SequenceLayout::TokensMajor } else { SequenceLayout::ChannelsMajor };
                let x = stored(&rng.vec(batch * channels * length, 1.0), dtype);
                let w = stored(&rng.vec(channels * width, 1.0), dtype);
                let bias = stored(&rng.vec(channels, 1.0), dtype);
                let state = stored(&rng.vec(batch * channels * (width - 1), 1.0), dtype);
                let up = |v: &[f32], shape: &[usize]| Tensor::from_f32(device, shape, v, dtype).unwrap();
                let tx = if tokens {
                    up(&to_tokens_major(&x, batch, channels, length), &[batch, length, channels])
                } else {
                    up(&x, &[batch, channels, length])
                };
                let (tw, tbias) = (up(&w, &[channels, 1, width]), up(&bias, &[channels]));
                let tstate = (width > 1).then(|| up(&state, &[batch, channels, width - 1]));
                let out = causal_conv1d(&CausalConv1d {
                    x: &tx,
                    weight: &tw,
                    bias: with_bias.then_some(&tbias),
                    state: if with_state { tstate.as_ref() } else { None },
                    silu,
                    layout,
                })
                .unwrap();
                let (want_y, want_state) = reference::causal_conv1d(
                    &x,
                    batch,
                    channels,
                    &w,
                    with_bias.then_some(&bias[..]),
                    (with_state && width > 1).then_some(&state[..]),
                    silu,
                );
                let mut y = out.y.to_vec_f32().unwrap();
                if tokens {
                    y = from_tokens_major(&y, batch, channels, length);
                }
                let what = format!("{config} {dtype} conv1d B{batch} C{channels} L{length} W{width} {layout:?}");
                assert_close(&y, &want_y, Tol::for_dtype(dtype, 4.0), &what);
                if width > 1 {
                    assert_close(&out.state.to_vec_f32().unwrap(), &want_state, Tol { atol: 0.0, rtol: 0.0 }, &what);
                }
            }
        }
    }
}

#[test]
fn causal_conv1d_in_pieces_equals_whole_even_for_pieces_shorter_than_the_kernel() {
    use scalewise::ops::conv1d::{CausalConv1d, causal_conv1d};
    let mut rng = Rng::for_test("conv1d_pieces");
    let (name, device) = (WGPU_FULL, full_device());
    let (batch, channels, length) = (2, 5, 23);
    let up = |v: Vec<f32>, shape: &[usize]| Tensor::from_f32(device, shape, &v, DType::F32).unwrap();
    let x = up(rng.vec(batch * length * channels, 1.0), &[batch, length, channels]);
    let w = up(rng.vec(channels * 4, 1.0), &[channels, 4]);
    let bias = up(rng.vec(channels, 1.0), &[channels]);
    let run = |x: &Tensor, state: Option<&Tensor>| {
        causal_conv1d(&CausalConv1d {
            x,
            weight: &w,
            bias: Some(&bias),
            state,
            silu: true,
            layout: SequenceLayout::TokensMajor,
        })
        .unwrap()
    };
    let whole = run(&x, None);
    let mut state: Option<Tensor> = None;
    let mut pieces = Vec::new();
    for range in [0..1, 1..3, 3..4, 4..13, 13..23] {
        let out = run(&x.slice(1, range).unwrap(), state.as_ref());
        state = Some(out.state);
        pieces.push(out.y);
    }
    let joined = Tensor::concat(&pieces.iter().collect::<Vec<_>>(), 1).unwrap();
    let want: Vec<f64> = whole.y.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
    assert_close(&joined.to_vec_f32().unwrap(), &want, Tol::for_dtype(DType::F32, 4.0), name);
    assert_eq!(state.unwrap().to_vec_f32().unwrap(), whole.state.to_vec_f32().unwrap());
}
