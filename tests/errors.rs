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

/// A second device (its own wgpu device on the same adapter), for operands from elsewhere.
fn other_device() -> Device {
    Device::new(&DeviceOptions::from_env().unwrap()).unwrap()
}

fn on_another_device(r: scalewise::Result<impl std::fmt::Debug>) -> bool {
    matches!(&r, Err(Error::InvalidArgument { msg, .. }) if msg.contains("different devices"))
}

#[test]
fn operands_from_another_device_are_refused() {
    use scalewise::ops::scan::{SelectiveScan, SequenceLayout, SsdForm, SsdScan, selective_scan, ssd_scan};
    use scalewise::ops::{QkvHeads, qkv_attention, qkv_heads};
    let device = full_device();
    let other = other_device();
    let qkv = tensor(device, &[1, 1, 12]);
    let (k_cache, v_cache) = (tensor(device, &[1, 2, 1, 4]), tensor(device, &[1, 2, 1, 4]));
    let foreign_scale = tensor(&other, &[1]);
    let args = QkvHeads {
        qkv: &qkv,
        heads: 1,
        l2_norm: true,
        head_scale: &foreign_scale,
        k_cache: &k_cache,
        v_cache: &v_cache,
        start: 0,
    };
    assert!(on_another_device(qkv_heads(&args)));
    assert!(on_another_device(qkv_attention(&args, 1.0)));
    // Every f32 operand of the scans: A, D, delta_bias and the initial state.
    let (u, b) = (tensor(device, &[1, 2, 3]), tensor(device, &[1, 1, 1, 3]));
    let (a, d) = (tensor(device, &[2, 1]), tensor(device, &[2]));
    let (foreign_a, foreign_d, foreign_h0) =
        (tensor(&other, &[2, 1]), tensor(&other, &[2]), tensor(&other, &[1, 2, 1]));
    let scan = SelectiveScan {
        u: &u,
        delta: &u,
        a: &a,
        b: &b,
        c: &b,
        d_skip: Some(&d),
        z: None,
        delta_bias: Some(&d),
        delta_softplus: false,
        initial_state: None,
        reverse: false,
        layout: SequenceLayout::ChannelsMajor,
        chunk_len: None,
    };
    assert!(selective_scan(&scan).is_ok());
    assert!(on_another_device(selective_scan(&SelectiveScan { a: &foreign_a, ..scan }).map(|o| o.y)));
    assert!(on_another_device(selective_scan(&SelectiveScan { d_skip: Some(&foreign_d), ..scan }).map(|o| o.y)));
    assert!(on_another_device(selective_scan(&SelectiveScan { delta_bias: Some(&foreign_d), ..scan }).map(|o| o.y)));
    assert!(on_another_device(
        selective_scan(&SelectiveScan { initial_state: Some(&foreign_h0), ..scan }).map(|o| o.y)
    ));
    let ssd = SsdScan {
        x: &u,
        dt: &tensor(device, &[1, 1, 3]),
        a: &tensor(&other, &[1]),
        b: &b,
        c: &b,
        d_skip: None,
        dt_bias: None,
        dt_softplus: false,
        initial_state: None,
        reverse: false,
        layout: SequenceLayout::ChannelsMajor,
        chunk_len: None,
        form: SsdForm::Recurrent,
    };
    assert!(on_another_device(ssd_scan(&ssd).map(|o| o.y)));
}

#[test]
fn tensors_written_in_place_may_not_share_storage_with_another_operand() {
    use scalewise::ops::{QkvHeads, qkv_attention, qkv_heads};
    let device = full_device();
    let shares = |r: scalewise::Result<Tensor>| matches!(&r, Err(Error::InvalidArgument { msg, .. }) if msg.contains("share storage"));
    let qkv =
        Tensor::from_f32(device, &[1, 1, 12], &[1., 0., 0., 0., 0., 2., 0., 0., 5., 6., 7., 8.], DType::F32).unwrap();
    let scale = tensor(device, &[1]);
    let cache = Tensor::zeros(device, &[1, 3, 1, 4], DType::F32).unwrap();
    let other = Tensor::zeros(device, &[1, 3, 1, 4], DType::F32).unwrap();
    let args = QkvHeads {
        qkv: &qkv,
        heads: 1,
        l2_norm: false,
        head_scale: &scale,
        k_cache: &cache,
        v_cache: &cache,
        start: 0,
    };
    // One tensor as both caches: the values would overwrite the keys.
    assert!(shares(qkv_heads(&args)));
    assert!(shares(qkv_attention(&args, 1.0)));
    // A cache that is a view of qkv: the kernel would read what it writes.
    let view = qkv.reshape(&[1, 3, 1, 4]).unwrap();
    assert!(shares(qkv_heads(&QkvHeads { k_cache: &view, v_cache: &other, ..args })));
    assert!(shares(qkv_heads(&QkvHeads { k_cache: &other, v_cache: &view, ..args })));
    // Nothing was written, and the batch is healthy: the cache reads back as it was.
    assert_eq!(cache.to_vec_f32().unwrap(), [0.0; 12]);
    let q = qkv_heads(&QkvHeads { k_cache: &cache, v_cache: &other, ..args }).unwrap();
    assert_eq!(q.to_vec_f32().unwrap(), [1., 0., 0., 0.], "distinct caches are fine");
    assert_eq!(cache.to_vec_f32().unwrap()[..4], [0., 2., 0., 0.]);
    assert_eq!(other.to_vec_f32().unwrap()[..4], [5., 6., 7., 8.]);
}

#[test]
fn ssd_heads_must_divide_into_groups_in_every_form() {
    use scalewise::ops::scan::{SequenceLayout, SsdForm, SsdScan, ssd_scan};
    let device = full_device();
    // 3 heads of 2 channels, 2 groups of B and C.
    let (x, dt, a, bc) =
        (tensor(device, &[1, 6, 5]), tensor(device, &[1, 3, 5]), tensor(device, &[3]), tensor(device, &[1, 2, 4, 5]));
    for form in [SsdForm::Auto, SsdForm::Recurrent, SsdForm::ChunkedMatrix] {
        let s = SsdScan {
            x: &x,
            dt: &dt,
            a: &a,
            b: &bc,
            c: &bc,
            d_skip: None,
            dt_bias: None,
            dt_softplus: false,
            initial_state: None,
            reverse: false,
            layout: SequenceLayout::ChannelsMajor,
            chunk_len: None,
            form,
        };
        let err = ssd_scan(&s).map(|o| o.y).unwrap_err().to_string();
        assert!(err.contains("2 groups do not divide 3 heads"), "{form:?}: {err}");
    }
}

#[test]
fn a_guidance_that_overflows_is_refused() {
    use scalewise::ops::sample::{SampleOptions, sample_tokens};
    let device = full_device();
    let logits = Tensor::from_f32(device, &[2, 1, 3], &[2., 1., 0., 0., 0., 0.], DType::F32).unwrap();
    let options =
        |cfg: f32, cfg_ratio: f32| SampleOptions { cfg: Some(cfg), cfg_ratio, top_k: 1, ..Default::default() };
    // Each finite, their product is not.
    let err = sample_tokens(&logits, &options(3e38, 2.0)).map(|s| s.ids).unwrap_err().to_string();
    assert!(err.contains("guidance"), "{err}");
    assert_eq!(sample_tokens(&logits, &options(4.0, 0.5)).unwrap().ids.to_vec_u32().unwrap(), [0]);
}

#[test]
fn generation_refuses_a_huge_cfg_and_reports_non_finite_logits_by_scale() {
    use scalewise::generate::{GenerateOptions, MAX_CFG, Pipeline};
    use scalewise::nn::{VarModel, VqVae};
    use scalewise_support::synthetic::{tiny_imagenet, vae_state_dict, var_state_dict};
    let device = full_device();
    let (var, vae) = tiny_imagenet();
    let mut sd = var_state_dict(&var, 1).unwrap();
    // NaN logits from the first scale on: a NaN head (loaded on purpose).
    sd.allow_non_finite = true;
    sd.insert("head.weight", &[var.vocab, var.width], vec![f32::NAN; var.vocab * var.width]).unwrap();
    let model = VarModel::from_state_dict(device, &sd, DType::F32).unwrap();
    let vae = VqVae::from_state_dict(device, &vae_state_dict(&vae, 1).unwrap(), DType::F32).unwrap();
    let pipeline = Pipeline::new(model, vae).unwrap();
    let options = GenerateOptions { labels: vec![0], cfg: 0.0, top_k: 1, profile_stages: false, ..Default::default() };
    for cfg in [3e38, MAX_CFG * 2.0] {
        let err = pipeline.start(&GenerateOptions { cfg, ..options.clone() }).err().expect("refused").to_string();
        assert!(err.contains("cfg"), "{err}");
    }
    // Argmax over NaN finds no token: the sampler's id V becomes an error naming the scale.
    let err = pipeline.generate(&options).map(|(_, steps)| steps.len()).unwrap_err().to_string();
    assert!(err.contains("logits of scale 0 are not finite"), "{err}");
    let mut generation = pipeline.start(&GenerateOptions { profile_stages: true, ..options }).unwrap();
    assert!(generation.step().is_err());
    assert!(generation.step().is_err(), "no scale follows a failed one");
}

#[test]
fn models_refuse_conditions_caches_and_states_of_another_depth() {
    use scalewise::nn::{MvarModel, ScaleHistory, VarModel};
    use scalewise_support::synthetic::{MvarShape, mvar_state_dict, tiny_imagenet, var_state_dict};
    let device = full_device();
    let (shallow, _) = tiny_imagenet();
    let deep = scalewise_support::synthetic::VarShape { depth: 2, ..shallow.clone() };
    let load = |shape| VarModel::from_state_dict(device, &var_state_dict(shape, 1).unwrap(), DType::F32).unwrap();
    let (m1, m2) = (load(&shallow), load(&deep));
    let c2 = m2.conditions(&[0]).unwrap();
    let x = m2.first_input(&c2).unwrap();
    let refused = |r: scalewise::Result<Tensor>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(refused(m2.forward(&x, &m1.conditions(&[0]).unwrap(), &mut m2.new_cache(1).unwrap())));
    assert!(refused(m2.forward(&x, &c2, &mut m1.new_cache(1).unwrap())));
    assert!(refused(m1.forward(
        &m1.first_input(&m1.conditions(&[0]).unwrap()).unwrap(),
        &m1.conditions(&[0]).unwrap(),
        &mut m2.new_cache(1).unwrap()
    )));
    // A cache for other rows (the right depth) is a shape mismatch, as before.
    assert!(matches!(m2.forward(&x, &c2, &mut m2.new_cache(2).unwrap()), Err(Error::ShapeMismatch { .. })));
    assert!(m2.forward(&x, &c2, &mut m2.new_cache(1).unwrap()).is_ok());
    let shape = MvarShape {
        depth: 1,
        width: 64,
        num_classes: 10,
        vocab: 16,
        cvae: 4,
        patch_nums: vec![1, 2],
        cosine_attention: false,
    };
    let load = |shape: &MvarShape| {
        MvarModel::from_state_dict(device, &mvar_state_dict(shape, 1).unwrap(), DType::F32).unwrap()
    };
    let (m1, m2) = (load(&shape), load(&MvarShape { depth: 2, ..shape.clone() }));
    let c2 = m2.conditions(&[0]).unwrap();
    let x = m2.first_input(&c2).unwrap();
    for history in [ScaleHistory::CarryState, ScaleHistory::RecomputePrefix] {
        assert!(refused(m2.forward(&x, &m1.conditions(&[0]).unwrap(), &mut m2.new_state(1, history))));
        assert!(refused(m2.forward(&x, &c2, &mut m1.new_state(1, history))));
    }
}

#[test]
fn sizes_that_wrap_are_refused_by_the_op_that_takes_them() {
    use scalewise::nn::VqVae;
    use scalewise_support::synthetic::{tiny_imagenet, vae_state_dict};
    let device = full_device();
    let vae = VqVae::from_state_dict(device, &vae_state_dict(&tiny_imagenet().1, 1).unwrap(), DType::F32).unwrap();
    // (2^32)^2 wraps to 0 = the ids' length: refused by lookup itself, not by a reshape downstream.
    let ids = Tensor::from_u32(device, &[1, 0], &[]).unwrap();
    let err = vae.lookup(&ids, 1 << 32).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "VqVae::lookup", .. }), "{err:?}");
}

#[test]
fn linear_without_input_features_gives_the_bias_rows() {
    let device = full_device();
    let x = Tensor::zeros(device, &[2, 0], DType::F32).unwrap();
    let w = Tensor::zeros(device, &[3, 0], DType::F32).unwrap();
    let b = Tensor::from_f32(device, &[3], &[1., 2., 3.], DType::F32).unwrap();
    let y = ops::linear(&x, &w, Some(&b)).unwrap();
    assert_eq!(y.shape(), [2, 3]);
    assert_eq!(y.to_vec_f32().unwrap(), [1., 2., 3., 1., 2., 3.]);
    let y = ops::linear(&Tensor::zeros(device, &[2, 4, 0], DType::F32).unwrap(), &w, None).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), [0.0; 24]);
}

#[test]
fn groups_larger_than_the_grid_attend_as_the_whole_grid() {
    use scalewise::ops::{GroupedLayout, grouped_attention};
    let device = full_device();
    // Sides whose product overflows usize, and a group of 2^26 tokens: one group, one block each.
    let v = Tensor::from_f32(device, &[1, 1, 2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.], DType::F32).unwrap();
    for group in [[1 << 32, 1 << 32], [1 << 13, 1 << 13]] {
        let layout = GroupedLayout::image(1, 2).with_group(&group);
        let out = grouped_attention(&v, &tensor(device, &[1, 1, 2, 4]), &v, &layout, None).unwrap();
        // Equal keys: each query averages the two values.
        assert_eq!(out.to_vec_f32().unwrap(), [3., 4., 5., 6., 3., 4., 5., 6.], "{group:?}");
    }
}
