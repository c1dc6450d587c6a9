//! Tensor storage: upload/download, views, slice/concat along every dimension, in-place writes
//! into a preallocated (KV-cache-like) tensor, dtype conversion.

mod common;

use common::{Rng, Seeded, dtypes, full_device};
use scalewise::ops::reference_values as stored;
use scalewise::{DType, Device, Tensor};

/// Row-major index helpers for a reference slice/concat on host data.
fn host_slice(data: &[f32], shape: &[usize], dim: usize, start: usize, len: usize) -> Vec<f32> {
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let mut out = Vec::new();
    for o in 0..outer {
        let base = (o * shape[dim] + start) * inner;
        out.extend_from_slice(&data[base..base + len * inner]);
    }
    out
}

backend_tests! {
    fn round_trips_every_dtype_including_odd_f16_lengths(device: &Device, config: &str) {
        let mut rng = Rng::for_config("round_trip", config);
        for dtype in dtypes(device) {
            for n in [1, 3, 257] {
                let data = stored(&rng.vec(n, 100.0), dtype);
                let t = Tensor::from_f32(device, &[n], &data, dtype).unwrap();
                assert_eq!(t.to_vec_f32().unwrap(), data, "{config} {dtype} n={n}");
            }
        }
        let ids: Vec<u32> = (0..37).map(|_| rng.next_u64() as u32).collect();
        assert_eq!(Tensor::from_u32(device, &[37], &ids).unwrap().to_vec_u32().unwrap(), ids);
    }
}

#[test]
fn async_readback_polls_until_ready() {
    let device = full_device();
    let data: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let t = Tensor::from_f32(device, &[10, 100], &data, DType::F32).unwrap();
    let pending = t.read_async().unwrap();
    let mut spins = 0;
    while !pending.is_ready() {
        spins += 1;
        assert!(spins < 1_000_000, "readback never completed");
        std::thread::yield_now();
    }
    assert_eq!(pending.wait_f32().unwrap(), data);
}

#[test]
fn reshape_is_a_view_and_checks_the_element_count() {
    let device = full_device();
    let t = Tensor::from_f32(device, &[2, 6], &[1.0; 12], DType::F32).unwrap();
    let v = t.reshape(&[3, 4]).unwrap();
    assert_eq!(v.shape(), [3, 4]);
    assert_eq!(v.to_vec_f32().unwrap(), vec![1.0; 12]);
    let err = t.reshape(&[5, 2]).unwrap_err().to_string();
    assert!(err.contains("[2, 6]") && err.contains("[5, 2]"), "{err}");
}

backend_tests! {
    fn slice_and_concat_along_every_dimension(device: &Device, config: &str) {
        let mut rng = Rng::for_config("slice_concat", config);
        for dtype in dtypes(device).into_iter().chain([DType::U32]) {
            let shape = [rng.range(1, 4), rng.range(2, 7), rng.range(1, 5), rng.range(1, 9)];
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32).collect(); // exact in f16 below 2048
            let t = match dtype {
                DType::U32 => Tensor::from_u32(device, &shape, &data.iter().map(|&v| v as u32).collect::<Vec<_>>()),
                _ => Tensor::from_f32(device, &shape, &data, dtype),
            }
            .unwrap();
            let read = |t: &Tensor| -> Vec<f32> {
                match dtype {
                    DType::U32 => t.to_vec_u32().unwrap().into_iter().map(|v| v as f32).collect(),
                    _ => t.to_vec_f32().unwrap(),
                }
            };
            for dim in 0..4 {
                let len = shape[dim];
                let cut = rng.range(0, len);
                let head = t.slice(dim, 0..cut).unwrap();
                let tail = t.slice(dim, cut..len).unwrap();
                assert_eq!(read(&head), host_slice(&data, &shape, dim, 0, cut), "{config} {dtype} head dim {dim}");
                assert_eq!(
                    read(&tail),
                    host_slice(&data, &shape, dim, cut, len - cut),
                    "{config} {dtype} tail dim {dim}"
                );
                let joined = Tensor::concat(&[&head, &tail], dim).unwrap();
                assert_eq!(joined.shape(), shape);
                assert_eq!(read(&joined), data, "{config} {dtype} concat dim {dim}");
            }
        }
    }
}

backend_tests! {
    fn write_slice_appends_into_a_preallocated_cache(device: &Device, config: &str) {
        let mut rng = Rng::for_config("write_slice", config);
        for dtype in dtypes(device) {
            // A (batch, heads, max_len, head_dim) cache filled one step at a time along dim 2.
            let (b, h, max_len, d) = (2, 3, 11, 5);
            let cache = Tensor::zeros(device, &[b, h, max_len, d], dtype).unwrap();
            let mut want = vec![0.0f32; b * h * max_len * d];
            let mut pos = 0;
            for step_len in [1, 4, 6] {
                let step = stored(&rng.vec(b * h * step_len * d, 1.0), dtype);
                let ts = Tensor::from_f32(device, &[b, h, step_len, d], &step, dtype).unwrap();
                cache.write_slice(2, pos, &ts).unwrap();
                for o in 0..b * h {
                    for j in 0..step_len {
                        for i in 0..d {
                            want[(o * max_len + pos + j) * d + i] = step[(o * step_len + j) * d + i];
                        }
                    }
                }
                pos += step_len;
            }
            assert_eq!(cache.to_vec_f32().unwrap(), want, "{config} {dtype}");
            let overflow = Tensor::zeros(device, &[b, h, 2, d], dtype).unwrap();
            assert!(cache.write_slice(2, 10, &overflow).is_err(), "writing past the end must fail");
        }
    }
}

backend_tests! {
    fn converts_between_f32_and_f16(device: &Device, config: &str) {
        let mut rng = Rng::for_config("to_dtype", config);
        if !device.caps().f16 {
            // Without SHADER_F16 the check is that the conversion is refused.
            let t = Tensor::from_f32(device, &[3], &[1.0, 2.0, 3.0], DType::F32).unwrap();
            let err = t.to_dtype(DType::F16).unwrap_err();
            assert!(matches!(err, scalewise::Error::MissingFeature { .. }), "{config}: {err}");
            return;
        }
        let data = rng.vec(301, 50.0);
        let t = Tensor::from_f32(device, &[301], &data, DType::F32).unwrap();
        let half = t.to_dtype(DType::F16).unwrap();
        assert_eq!(half.dtype(), DType::F16);
        assert_eq!(half.to_vec_f32().unwrap(), stored(&data, DType::F16), "{config}");
        assert_eq!(half.to_dtype(DType::F32).unwrap().to_vec_f32().unwrap(), stored(&data, DType::F16));
    }
}

#[test]
fn pool_reuses_freed_buffers() {
    let device = full_device();
    let before = device.pool_stats();
    for _ in 0..5 {
        let t = Tensor::zeros(device, &[1000, 37], DType::F32).unwrap();
        drop(t);
    }
    let after = device.pool_stats();
    assert!(after.reused >= before.reused + 4, "{before:?} -> {after:?}");
}

#[test]
fn launch_stats_count_compiles_dispatches_submits_and_drains() {
    let device = common::full_device();
    let x = scalewise::Tensor::from_f32(device, &[3, 5], &[0.5; 15], scalewise::DType::F32).unwrap();
    // Other tests share the device: count at least this test's own work.
    let before = device.launch_stats();
    let y = scalewise::ops::silu(&x).unwrap();
    let z = scalewise::ops::silu(&y).unwrap();
    let values = z.to_vec_f32().unwrap();
    let after = device.launch_stats();
    assert_eq!(values.len(), 15);
    let done = after - before;
    assert!(done.dispatches >= 2, "{done:?}");
    // The read waited: a drain, or an overlapped wait when another test had submitted work meanwhile.
    assert!(done.submits >= 1 && done.drains + done.overlapped_waits >= 1, "{done:?}");
    // Running it again dispatches again (other tests may compile pipelines meanwhile: not counted here).
    let warm = device.launch_stats();
    let again = scalewise::ops::silu(&x).unwrap();
    again.to_vec_f32().unwrap();
    assert!(device.launch_stats().dispatches > warm.dispatches);
    assert!(after.pipelines_compiled >= 1 && after.compile_ms > 0.0, "{after:?}");
}

#[test]
fn uploads_and_clears_between_kernels_join_the_pending_submission() {
    // A device of its own, so no other test's work is counted.
    let device = scalewise::Device::new(&common::wgpu_options()).expect("a wgpu device");
    let n = 4099;
    let x = scalewise::Tensor::from_f32(&device, &[n], &vec![0.5; n], DType::F32).unwrap();
    let before = device.launch_stats();
    let y = scalewise::ops::silu(&x).unwrap();
    // x's buffer goes back to the pool while the recorded silu still has to read it; the next
    // tensors of its size may take it over. Their upload and clear must land after the silu, and
    // neither may force a submission of their own.
    drop(x);
    let w = scalewise::Tensor::from_f32(&device, &[n], &vec![3.0; n], DType::F32).unwrap();
    let z = scalewise::Tensor::zeros(&device, &[n], DType::F32).unwrap();
    let sum = scalewise::ops::add(&y, &w).unwrap();
    let recorded = device.launch_stats() - before;
    assert_eq!(recorded.submits, 0, "an upload or clear between kernels submitted: {recorded:?}");
    let silu = 0.5 / (1.0 + (-0.5f32).exp());
    assert!(y.to_vec_f32().unwrap().iter().all(|&v| (v - silu).abs() < 1e-6), "silu read the later upload");
    assert!(w.to_vec_f32().unwrap().iter().all(|&v| v == 3.0));
    assert!(z.to_vec_f32().unwrap().iter().all(|&v| v == 0.0));
    assert!(sum.to_vec_f32().unwrap().iter().all(|&v| (v - (silu + 3.0)).abs() < 1e-6));
}

#[test]
fn write_slice_refuses_a_source_sharing_the_destination_storage() {
    let device = full_device();
    let x = Tensor::from_f32(device, &[4], &[1., 2., 3., 4.], DType::F32).unwrap();
    let err = x.write_slice(0, 0, &x.reshape(&[4]).unwrap()).unwrap_err().to_string();
    assert!(err.contains("share storage"), "{err}");
    let clone = x.clone();
    assert!(x.write_slice(0, 1, &clone.reshape(&[4]).unwrap().slice(0, 0..2).unwrap()).is_ok(), "a copy is fine");
    // The pending batch was not poisoned: an unrelated op reads back.
    let y = scalewise::ops::add(&x, &x).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [2., 2., 4., 8.]);
}

#[test]
fn split_sizes_that_wrap_past_usize_are_refused() {
    let device = full_device();
    let x = Tensor::from_f32(device, &[1], &[1.0], DType::F32).unwrap();
    // usize::MAX + 2 wraps to 1, the dimension's length.
    let err = x.split(0, [usize::MAX, 2]).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("do not add up"), "{err}");
}
