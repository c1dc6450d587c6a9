//! Bad input gets typed errors naming the values, never a panic or a wgpu validation abort.

mod common;

use common::{full_device, portable_device, skip};
use scalewise::ops::{self, matmul::MatmulOptions};
use scalewise::{BackendChoice, DType, Device, DeviceOptions, Error, Tensor};

fn tensor(device: &Device, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(device, shape, &vec![0.5; n], DType::F32).unwrap()
}

#[test]
fn matmul_shape_mismatch_names_both_shapes() {
    let device = full_device();
    let err = ops::matmul(&tensor(device, &[3, 5]), &tensor(device, &[4, 2])).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert!(text.contains("[3, 5]") && text.contains("[4, 2]"), "{text}");
    let err = ops::linear(&tensor(device, &[2, 3]), &tensor(device, &[4, 3]), Some(&tensor(device, &[5]))).unwrap_err();
    assert!(err.to_string().contains("[5]"), "{err}");
    let err = ops::matmul_with(&tensor(device, &[2, 3, 4]), &tensor(device, &[3, 4, 2]), &MatmulOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
}

#[test]
fn dtype_mismatch_is_typed() {
    let device = full_device();
    let a = tensor(device, &[2, 2]);
    let ids = Tensor::from_u32(device, &[2], &[0, 1]).unwrap();
    assert!(matches!(ops::silu(&ids).unwrap_err(), Error::UnsupportedDType { .. }));
    assert!(matches!(ops::embedding(&a, &a).unwrap_err(), Error::UnsupportedDType { .. }));
    // An f32 / f16 mixture needs an f16 tensor, which needs SHADER_F16.
    if !device.caps().f16 {
        skip("errors::dtype_mismatch_is_typed (f32 + f16)", "the adapter has no SHADER_F16");
        return;
    }
    let b = Tensor::from_f32(device, &[2, 2], &[1.0; 4], DType::F16).unwrap();
    let err = ops::add(&a, &b).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { lhs: DType::F32, rhs: DType::F16, .. }), "{err:?}");
}

#[test]
fn f16_without_shader_f16_is_a_missing_feature() {
    let portable = portable_device();
    let err = Tensor::from_f32(portable, &[2], &[1.0, 2.0], DType::F16).unwrap_err();
    assert!(matches!(err, Error::MissingFeature { feature: "SHADER_F16", .. }), "{err:?}");
}

#[test]
fn invalid_parameters_are_rejected() {
    let device = full_device();
    let x = tensor(device, &[2, 6, 3, 3]);
    let err = ops::group_norm(&x, 4, None, None, 1e-6).unwrap_err().to_string();
    assert!(err.contains("4 groups") && err.contains("6 channels"), "{err}");
    assert!(ops::group_norm(&x, 0, None, None, 1e-6).is_err());
    assert!(ops::layer_norm(&tensor(device, &[2, 3]), None, None, f32::NAN).is_err());
    assert!(ops::layer_norm(&tensor(device, &[2, 3]), Some(&tensor(device, &[4])), None, 1e-5).is_err());
    assert!(
        ops::adaln_layer_norm(&tensor(device, &[2, 3, 4]), &tensor(device, &[1, 4]), &tensor(device, &[2, 4]), 1e-6)
            .is_err()
    );
    assert!(ops::add(&tensor(device, &[2, 3]), &tensor(device, &[2])).is_err());
    assert!(ops::softmax(&tensor(device, &[3, 0])).is_err());
    let t = tensor(device, &[4, 5]);
    assert!(t.slice(1, 3..7).is_err());
    assert!(t.slice(2, 0..1).is_err());
    assert!(Tensor::concat(&[&t, &tensor(device, &[4, 6])], 0).is_err());
    assert!(Tensor::concat(&[], 0).is_err());
    assert!(Tensor::from_f32(device, &[2, 2], &[1.0; 3], DType::F32).is_err());
}

#[test]
fn shapes_and_offsets_that_overflow_are_typed_errors() {
    let device = full_device();
    let invalid = |r: scalewise::Result<Tensor>| matches!(r, Err(Error::InvalidArgument { .. }));
    // 2^64 elements wrap to 0 in release builds: without the check, a 4-byte buffer of that shape.
    assert!(invalid(Tensor::empty(device, &[1 << 33, 1 << 31], DType::F32)));
    // Empty, yet the dimensions after the first multiply past usize (a copy would count 2^80).
    assert!(invalid(Tensor::empty(device, &[0, 1 << 40, 1 << 40], DType::F32)));
    let err = Tensor::from_f32(device, &[0, 1 << 40, 1 << 40], &[], DType::F32).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }) && err.to_string().contains("overflows"), "{err:?}");
    let empty = Tensor::empty(device, &[0, 1 << 20, 1 << 20], DType::F32).unwrap();
    assert!(invalid(empty.reshape(&[0, 1 << 40, 1 << 40])));
    let wide = Tensor::empty(device, &[1, usize::MAX / 2, 0], DType::F32).unwrap();
    assert!(invalid(Tensor::concat(&[&wide, &wide, &wide], 1)));
    // start + len wrapping past usize::MAX must not pass the bounds check.
    let cache = tensor(device, &[2, 4]);
    let err = cache.write_slice(0, usize::MAX, &tensor(device, &[1, 4])).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    let err = ops::add_repeat(&tensor(device, &[2, 3]), &tensor(device, &[3]), usize::MAX).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

#[test]
fn tensors_beyond_the_adapter_limits_are_typed_errors() {
    let device = full_device();
    let caps = device.caps();
    // Larger than any buffer: refused before anything is allocated.
    let elements = (caps.max_buffer_bytes / 4 + 1) as usize;
    let err = Tensor::empty(device, &[elements], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit_name: "max_buffer_size", .. }), "{err:?}");
    // A buffer that exists but is larger than one storage binding: refused at dispatch.
    if caps.max_arg_bytes < caps.max_buffer_bytes && caps.max_arg_bytes <= 1 << 28 {
        let elements = (caps.max_arg_bytes / 4 + 64) as usize;
        let big = Tensor::empty(device, &[elements], DType::F32).unwrap();
        let err = ops::silu(&big).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit_name: "max_storage_buffer_binding_size", .. }), "{err:?}");
    }
}

#[test]
fn missing_adapter_says_what_to_install() {
    let options = DeviceOptions { adapter_name: Some("no-such-gpu-anywhere".into()), ..DeviceOptions::default() };
    let err = Device::new(&options).unwrap_err();
    assert!(matches!(err, Error::NoAdapter { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("mesa-vulkan-drivers") && text.contains("no-such-gpu-anywhere"), "{text}");
}

#[test]
fn cuda_without_the_feature_is_a_typed_error() {
    let err = Device::new(&DeviceOptions { backend: BackendChoice::Cuda, ..DeviceOptions::default() }).unwrap_err();
    if cfg!(feature = "cuda") {
        assert!(matches!(err, Error::CudaUnavailable(_)), "{err:?}");
    } else {
        assert!(matches!(err, Error::CudaNotCompiled), "{err:?}");
    }
    assert!("quantum".parse::<BackendChoice>().is_err());
}

#[test]
fn a_lost_device_fails_every_later_operation() {
    // A private device: destroying it must not disturb the other tests.
    let device = Device::new(&DeviceOptions::from_env().unwrap()).unwrap();
    let t = tensor(&device, &[4, 4]);
    device.wgpu().expect("a wgpu device").0.destroy();
    let err = ops::silu(&t).unwrap_err();
    assert!(matches!(err, Error::DeviceLost(_)), "{err:?}");
    assert!(matches!(t.to_vec_f32().unwrap_err(), Error::DeviceLost(_)));
}

#[test]
fn backends_say_which_families_and_dtypes_they_run() {
    use scalewise::kernels::Family;
    for device in [full_device(), portable_device()] {
        let f16 = device.caps().f16;
        assert!(device.supports(Family::Matmul, DType::F32));
        assert_eq!(device.supports(Family::Matmul, DType::F16), f16);
        // The sampler and the scan's carry pass are f32-only families; copies also move u32.
        assert!(!device.supports(Family::Sample, DType::F16));
        assert!(!device.supports(Family::ScanCarry, DType::U32));
        assert!(device.supports(Family::Copy, DType::U32));
    }
}

#[test]
fn first_launches_from_several_threads_agree() {
    // A private device, so every pipeline is compiled here, by four threads at once.
    let device = Device::new(&DeviceOptions::from_env().unwrap()).unwrap();
    let x = tensor(&device, &[33, 17]);
    let runs: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| ops::softmax(&ops::gelu_tanh(&x).unwrap()).unwrap().to_vec_f32().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().expect("no thread panics")).collect()
    });
    assert!(runs.iter().all(|r| r == &runs[0] && r.iter().all(|v| v.is_finite())));
}

#[test]
fn a_weight_above_the_binding_limit_is_refused_by_name_before_it_is_read() {
    use scalewise::nn::Loader;
    use scalewise::weights::StateDict;
    let device = full_device();
    let limit = device.caps().max_arg_bytes.min(device.caps().max_buffer_bytes);
    // Just above the limit in f32, half of it in f16 (M-VAR d32's ada_lin against lavapipe's 128 MiB).
    let rows = (limit / 4 / 1024 + 1) as usize;
    let mut sd = StateDict::new();
    sd.insert("blocks.0.ada_lin.1.weight", &[rows, 1024], vec![0.25; rows * 1024]).unwrap();
    let err = Loader::new(device, &sd, DType::F32).tensor("blocks.0.ada_lin.1.weight", &[rows, 1024]).err();
    let text = err.expect("an f32 weight above the limit").to_string();
    assert!(text.contains("blocks.0.ada_lin.1.weight") && text.contains("f16 weights"), "{text}");
    if device.caps().f16 {
        let lp = Loader::new(device, &sd, DType::F16);
        let t = lp.tensor("blocks.0.ada_lin.1.weight", &[rows, 1024]).expect("fits in f16");
        assert_eq!(t.shape(), &[rows, 1024]);
        lp.finish().unwrap();
    } else {
        skip("the f16 half of the check", "no SHADER_F16");
    }
}
