//! Mamba-1 and Mamba-2 blocks from state_dicts with the mamba_ssm key names: against a float64
//! reference composed from the op references, and processed in pieces with carried state (one
//! "scale" at a time) against processed whole.

use crate::common::{Rng, Seeded, Tol, WGPU_FULL, assert_close, from_tokens_major, full_device, skip, to_tokens_major};
use scalewise::nn::{Mamba1Block, Mamba2Block, MambaState};
use scalewise::ops::conv1d::reference::causal_conv1d;
use scalewise::ops::matmul::reference::matmul;
use scalewise::ops::scan::reference::{ScanReference, scan};
use scalewise::weights::StateDict;
use scalewise::{DType, Device, Error, Tensor};

fn f32s(x: Vec<f64>) -> Vec<f32> {
    x.into_iter().map(|v| v as f32).collect()
}

/// x (rows, k) @ w (n, k)^T + bias.
fn linear_ref(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize) -> Vec<f32> {
    let (rows, n) = (x.len() / k, w.len() / k);
    f32s(matmul(x, w, bias, 1, rows, k, n, true, true))
}

/// Columns [start, start + width) of a (rows, total) matrix.
fn columns(x: &[f32], total: usize, start: usize, width: usize) -> Vec<f32> {
    x.chunks(total).flat_map(|row| row[start..start + width].to_vec()).collect()
}

fn silu(v: f32) -> f64 {
    v as f64 / (1.0 + (-(v as f64)).exp())
}

fn put(sd: &mut StateDict, rng: &mut Rng, key: &str, shape: &[usize], scale: f32) {
    sd.insert(key, shape, rng.vec(shape.iter().product(), scale)).unwrap();
}

struct Mamba1Dims {
    d_model: usize,
    d_inner: usize,
    n: usize,
    rank: usize,
    width: usize,
}

fn mamba1_state_dict(rng: &mut Rng, p: &str, d: &Mamba1Dims) -> StateDict {
    let mut sd = StateDict::new();
    put(&mut sd, rng, &format!("{p}in_proj.weight"), &[2 * d.d_inner, d.d_model], 0.4);
    put(&mut sd, rng, &format!("{p}conv1d.weight"), &[d.d_inner, 1, d.width], 0.5);
    put(&mut sd, rng, &format!("{p}conv1d.bias"), &[d.d_inner], 0.2);
    put(&mut sd, rng, &format!("{p}x_proj.weight"), &[d.rank + 2 * d.n, d.d_inner], 0.4);
    put(&mut sd, rng, &format!("{p}dt_proj.weight"), &[d.d_inner, d.rank], 0.5);
    put(&mut sd, rng, &format!("{p}dt_proj.bias"), &[d.d_inner], 1.0);
    // A_log = log(1..=N) per row, as mamba_ssm initialises it, plus noise.
    let a_log: Vec<f32> = (0..d.d_inner * d.n).map(|i| ((i % d.n + 1) as f32).ln() + rng.uniform(0.1)).collect();
    sd.insert(format!("{p}A_log"), &[d.d_inner, d.n], a_log).unwrap();
    put(&mut sd, rng, &format!("{p}D"), &[d.d_inner], 1.0);
    put(&mut sd, rng, &format!("{p}out_proj.weight"), &[d.d_model, d.d_inner], 0.4);
    sd
}

fn mamba1_reference(sd: &StateDict, p: &str, d: &Mamba1Dims, x: &[f32], batch: usize, length: usize) -> Vec<f64> {
    let w = |name: &str| sd.get(&format!("{p}{name}")).unwrap().data.clone();
    let xz = linear_ref(x, &w("in_proj.weight"), None, d.d_model);
    let xs = columns(&xz, 2 * d.d_inner, 0, d.d_inner);
    let z = columns(&xz, 2 * d.d_inner, d.d_inner, d.d_inner);
    let (conv, _) = causal_conv1d(
        &from_tokens_major(&xs, batch, d.d_inner, length),
        batch,
        d.d_inner,
        &w("conv1d.weight"),
        Some(&w("conv1d.bias")),
        None,
        true,
    );
    let u = to_tokens_major(&f32s(conv), batch, d.d_inner, length);
    let dbc = linear_ref(&u, &w("x_proj.weight"), None, d.d_inner);
    let total = d.rank + 2 * d.n;
    let delta = linear_ref(&columns(&dbc, total, 0, d.rank), &w("dt_proj.weight"), None, d.rank);
    let a: Vec<f32> = w("A_log").iter().map(|v| -v.exp()).collect();
    let cm = |x: &[f32], ch| from_tokens_major(x, batch, ch, length);
    let (y, _) = scan(&ScanReference {
        batch,
        channels: d.d_inner,
        length,
        groups: 1,
        n_state: d.n,
        channels_per_head: 1,
        a_per_head: false,
        u: &cm(&u, d.d_inner),
        delta: &cm(&delta, d.d_inner),
        a: &a,
        b: &cm(&columns(&dbc, total, d.rank, d.n), d.n),
        c: &cm(&columns(&dbc, total, d.rank + d.n, d.n), d.n),
        d_skip: Some(&w("D")),
        z: Some(&cm(&z, d.d_inner)),
        delta_bias: Some(&w("dt_proj.bias")),
        softplus: true,
        initial_state: None,
        reverse: false,
    });
    let y = to_tokens_major(&f32s(y), batch, d.d_inner, length);
    matmul(&y, &w("out_proj.weight"), None, 1, batch * length, d.d_inner, d.d_model, true, true)
}

struct Mamba2Dims {
    d_model: usize,
    heads: usize,
    head_dim: usize,
    groups: usize,
    n: usize,
    width: usize,
}

impl Mamba2Dims {
    fn d_inner(&self) -> usize {
        self.heads * self.head_dim
    }
}

fn mamba2_state_dict(rng: &mut Rng, p: &str, d: &Mamba2Dims) -> StateDict {
    let (di, gn) = (d.d_inner(), d.groups * d.n);
    let mut sd = StateDict::new();
    put(&mut sd, rng, &format!("{p}in_proj.weight"), &[2 * di + 2 * gn + d.heads, d.d_model], 0.4);
    put(&mut sd, rng, &format!("{p}conv1d.weight"), &[di + 2 * gn, 1, d.width], 0.5);
    put(&mut sd, rng, &format!("{p}conv1d.bias"), &[di + 2 * gn], 0.2);
    put(&mut sd, rng, &format!("{p}dt_bias"), &[d.heads], 1.0);
    let a_log: Vec<f32> = (0..d.heads).map(|_| rng.uniform(1.0).abs() * 2.0).collect();
    sd.insert(format!("{p}A_log"), &[d.heads], a_log).unwrap();
    put(&mut sd, rng, &format!("{p}D"), &[d.heads], 1.0);
    let norm: Vec<f32> = rng.vec(di, 0.3).iter().map(|v| v + 1.0).collect();
    sd.insert(format!("{p}norm.weight"), &[di], norm).unwrap();
    put(&mut sd, rng, &format!("{p}out_proj.weight"), &[d.d_model, di], 0.4);
    sd
}

fn mamba2_reference(sd: &StateDict, p: &str, d: &Mamba2Dims, x: &[f32], batch: usize, length: usize) -> Vec<f64> {
    let w = |name: &str| sd.get(&format!("{p}{name}")).unwrap().data.clone();
    let (di, gn) = (d.d_inner(), d.groups * d.n);
    let total = 2 * di + 2 * gn + d.heads;
    let proj = linear_ref(x, &w("in_proj.weight"), None, d.d_model);
    let z = columns(&proj, total, 0, di);
    let xbc = columns(&proj, total, di, di + 2 * gn);
    let dt = columns(&proj, total, 2 * di + 2 * gn, d.heads);
    let (conv, _) = causal_conv1d(
        &from_tokens_major(&xbc, batch, di + 2 * gn, length),
        batch,
        di + 2 * gn,
        &w("conv1d.weight"),
        Some(&w("conv1d.bias")),
        None,
        true,
    );
    let conv = to_tokens_major(&f32s(conv), batch, di + 2 * gn, length);
    let cm = |x: &[f32], ch| from_tokens_major(x, batch, ch, length);
    let a: Vec<f32> = w("A_log").iter().map(|v| -v.exp()).collect();
    let (y, _) = scan(&ScanReference {
        batch,
        channels: di,
        length,
        groups: d.groups,
        n_state: d.n,
        channels_per_head: d.head_dim,
        a_per_head: true,
        u: &cm(&columns(&conv, di + 2 * gn, 0, di), di),
        delta: &cm(&dt, d.heads),
        a: &a,
        b: &cm(&columns(&conv, di + 2 * gn, di, gn), gn),
        c: &cm(&columns(&conv, di + 2 * gn, di + gn, gn), gn),
        d_skip: Some(&w("D")),
        z: None,
        delta_bias: Some(&w("dt_bias")),
        softplus: true,
        initial_state: None,
        reverse: false,
    });
    let y = to_tokens_major(&f32s(y), batch, di, length);
    // Gated RMSNorm per group of di / groups channels, after the gate.
    let norm = w("norm.weight");
    let per_group = di / d.groups;
    let mut normed = vec![0.0f32; y.len()];
    for (row, (yr, zr)) in y.chunks(di).zip(z.chunks(di)).enumerate() {
        for g in 0..d.groups {
            let gated: Vec<f64> =
                (0..per_group).map(|i| yr[g * per_group + i] as f64 * silu(zr[g * per_group + i])).collect();
            let rms = 1.0 / (gated.iter().map(|v| v * v).sum::<f64>() / per_group as f64 + 1e-5).sqrt();
            for (i, v) in gated.iter().enumerate() {
                let c = g * per_group + i;
                normed[row * di + c] = (v * rms * norm[c] as f64) as f32;
            }
        }
    }
    matmul(&normed, &w("out_proj.weight"), None, 1, batch * length, di, d.d_model, true, true)
}

/// Runs a block over `lengths`-sized pieces, carrying state; returns the concatenated output.
fn in_pieces(
    forward: impl Fn(&Tensor, Option<&MambaState>) -> scalewise::Result<(Tensor, MambaState)>,
    x: &Tensor,
    lengths: &[usize],
) -> Tensor {
    let mut state = None;
    let mut start = 0;
    let mut outputs = Vec::new();
    for &len in lengths {
        let (y, next) = forward(&x.slice(1, start..start + len).unwrap(), state.as_ref()).unwrap();
        state = Some(next);
        outputs.push(y);
        start += len;
    }
    Tensor::concat(&outputs.iter().collect::<Vec<_>>(), 1).unwrap()
}

fn as_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect()
}

backend_tests! {
    fn mamba1_block_matches_reference_and_pieces_equal_whole(device: &Device, config: &str) {
        let mut rng = Rng::for_config("mamba1_block", config);
        let d_model = rng.range(4, 24);
        let dims =
            Mamba1Dims { d_model, d_inner: 2 * d_model, n: rng.range(2, 16), rank: d_model.div_ceil(16), width: 4 };
        let p = "layers.3.mixer.";
        let sd = mamba1_state_dict(&mut rng, p, &dims);
        let block = Mamba1Block::from_state_dict(device, &sd, p, DType::F32).unwrap();
        assert_eq!(
            (block.d_model, block.d_inner, block.d_state, block.dt_rank, block.d_conv),
            (d_model, 2 * d_model, dims.n, dims.rank, 4)
        );
        let (batch, lengths) = (2, [1, 4, 9, 16]);
        let length: usize = lengths.iter().sum();
        let x = rng.vec(batch * length * d_model, 1.0);
        let tx = Tensor::from_f32(device, &[batch, length, d_model], &x, DType::F32).unwrap();
        let (whole, _) = block.forward(&tx, None).unwrap();
        let want = mamba1_reference(&sd, p, &dims, &x, batch, length);
        let tol = Tol::for_dtype(DType::F32, 10.0);
        assert_close(&whole.to_vec_f32().unwrap(), &want, tol, &format!("{config} mamba1"));
        let pieces = in_pieces(|x, s| block.forward(x, s), &tx, &lengths);
        assert_close(
            &pieces.to_vec_f32().unwrap(),
            &as_f64(&whole),
            Tol::for_dtype(DType::F32, 10.0),
            &format!("{config} mamba1 pieces"),
        );
    }
}

backend_tests! {
    fn mamba2_block_matches_reference_and_pieces_equal_whole(device: &Device, config: &str) {
        let mut rng = Rng::for_config("mamba2_block", config);
        for groups in [1, 2] {
            let dims = Mamba2Dims {
                d_model: rng.range(4, 20),
                heads: 2 * rng.range(1, 2),
                head_dim: rng.range(2, 8),
                groups,
                n: rng.range(2, 16),
                width: 4,
            };
            let p = "blocks.0.ssm.";
            let sd = mamba2_state_dict(&mut rng, p, &dims);
            let block = Mamba2Block::from_state_dict(device, &sd, p, groups, DType::F32).unwrap();
            assert_eq!((block.n_heads, block.head_dim, block.d_state), (dims.heads, dims.head_dim, dims.n));
            let (batch, lengths) = (2, [1, 4, 9, 16, 25]);
            let length: usize = lengths.iter().sum();
            let x = rng.vec(batch * length * dims.d_model, 1.0);
            let tx = Tensor::from_f32(device, &[batch, length, dims.d_model], &x, DType::F32).unwrap();
            let (whole, _) = block.forward(&tx, None).unwrap();
            let want = mamba2_reference(&sd, p, &dims, &x, batch, length);
            let what = format!("{config} mamba2 groups {groups}");
            assert_close(&whole.to_vec_f32().unwrap(), &want, Tol::for_dtype(DType::F32, 10.0), &what);
            let pieces = in_pieces(|x, s| block.forward(x, s), &tx, &lengths);
            assert_close(
                &pieces.to_vec_f32().unwrap(),
                &as_f64(&whole),
                Tol::for_dtype(DType::F32, 10.0),
                &format!("{what} pieces"),
            );
        }
    }
}

#[test]
fn f16_blocks_track_f32_blocks() {
    let mut rng = Rng::for_test("mamba_f16");
    let (name, device) = (WGPU_FULL, full_device());
    if !device.caps().f16 {
        skip("mamba::f16_blocks_track_f32_blocks", "the adapter has no SHADER_F16");
        return;
    }
    let dims = Mamba1Dims { d_model: 16, d_inner: 32, n: 16, rank: 1, width: 4 };
    let sd = mamba1_state_dict(&mut rng, "", &dims);
    let x = rng.vec(40 * 16, 1.0);
    let run = |dtype| {
        let block = Mamba1Block::from_state_dict(device, &sd, "", dtype).unwrap();
        let tx = Tensor::from_f32(device, &[1, 40, 16], &x, dtype).unwrap();
        block.forward(&tx, None).unwrap().0.to_vec_f32().unwrap()
    };
    let want: Vec<f64> = run(DType::F32).iter().map(|&v| v as f64).collect();
    // f16 storage of every activation between ops: a few roundings deep.
    assert_close(&run(DType::F16), &want, Tol { atol: 2e-2, rtol: 2e-2 }, name);
}

#[test]
fn state_dict_problems_are_listed_together() {
    let mut rng = Rng::for_test("mamba_keys");
    let device = full_device();
    let dims = Mamba1Dims { d_model: 8, d_inner: 16, n: 4, rank: 1, width: 4 };
    let mut sd = mamba1_state_dict(&mut rng, "m.", &dims);
    let mut broken = StateDict::new();
    for key in sd.keys().map(str::to_string).collect::<Vec<_>>() {
        if key == "m.D" {
            continue;
        }
        let t = sd.get(&key).unwrap().clone();
        let shape = if key == "m.x_proj.weight" { vec![t.data.len() / 2, 2] } else { t.shape.clone() };
        broken.insert(key, &shape, t.data).unwrap();
    }
    broken.insert("m.mystery", &[1], vec![0.0]).unwrap();
    let err = Mamba1Block::from_state_dict(device, &broken, "m.", DType::F32).err().expect("an error");
    let text = err.to_string();
    assert!(matches!(err, Error::Weights { .. }), "{err:?}");
    assert!(
        text.contains("missing m.D") && text.contains("unexpected m.mystery") && text.contains("m.x_proj.weight"),
        "{text}"
    );
    // Non-finite A_log (A = -exp(A_log) overflows) is refused at load.
    sd.insert("m.A_log", &[16, 4], vec![100.0; 64]).unwrap();
    let err = Mamba1Block::from_state_dict(device, &sd, "m.", DType::F32).err().expect("an error").to_string();
    assert!(err.contains("not finite"), "{err}");
}
