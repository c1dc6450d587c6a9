//! Weights files: safetensors and torch.save zip checkpoints into a StateDict, and StateDict::check.
//! Pure CPU: no GPU needed.
//!
//! tests/fixtures/tiny_state_dict.pth is written by scripts/make_pth_fixture.py (no torch needed), byte for
//! byte in torch.save's layout.

mod common;

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use scalewise::Error;
use scalewise::weights::{LoadOptions, SkippedTensor, StateDict, Weights, WeightsFile};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_state_dict.pth");

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(FIXTURE)
        .expect("tests/fixtures/tiny_state_dict.pth (regenerate: python3 scripts/make_pth_fixture.py)")
}

/// A file under the target's scratch directory for integration tests.
fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weights_tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_tensor(sd: &StateDict, key: &str, shape: &[usize], values: &[f32]) {
    let t = sd.get(key).unwrap_or_else(|| panic!("{key} missing; keys {:?}", sd.keys().collect::<Vec<_>>()));
    assert_eq!(t.shape, shape, "{key} shape");
    assert_eq!(t.data, values, "{key} values");
}

/// Err, never Ok, and the message names `path`.
fn assert_file_error(result: scalewise::Result<StateDict>, path: &Path) -> String {
    match result {
        Ok(sd) => panic!("{} loaded ({} tensors) but should not have", path.display(), sd.len()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
            msg
        }
    }
}

// ------------------------------------------------------------------------------------------- safetensors

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| f(v)).collect()
}

fn safetensors_file() -> Vec<u8> {
    let f32s = le_bytes(&[1.0f32, -2.5, 3.25, 0.0, 1e-8, -7.0], f32::to_le_bytes);
    let f16s = le_bytes(&[0.5f32, -1.0, 65504.0, 2f32.powi(-14)], |v| half::f16::from_f32(v).to_le_bytes());
    let bf16s = le_bytes(&[1.0f32, -0.375, 256.0, 3.0e38], |v| half::bf16::from_f32(v).to_le_bytes());
    let f64s = le_bytes(&[0.1f64, -1e300, 2.0], f64::to_le_bytes);
    let i64s = le_bytes(&[7i64], i64::to_le_bytes);
    let views = vec![
        ("blocks.0.attn.proj.weight", TensorView::new(Dtype::F32, vec![2, 3], &f32s).unwrap()),
        ("half.weight", TensorView::new(Dtype::F16, vec![4], &f16s).unwrap()),
        ("brain.weight", TensorView::new(Dtype::BF16, vec![2, 2], &bf16s).unwrap()),
        ("double.bias", TensorView::new(Dtype::F64, vec![3, 1], &f64s).unwrap()),
        ("bn.num_batches_tracked", TensorView::new(Dtype::I64, vec![], &i64s).unwrap()),
    ];
    let metadata = HashMap::from([
        ("patch_nums".to_string(), "1,2,3,4,5,6,8,10,13,16".to_string()),
        ("format".to_string(), "pt".to_string()),
    ]);
    safetensors::serialize(views, Some(metadata)).unwrap()
}

fn check_safetensors_contents(sd: &StateDict) {
    assert_eq!(sd.len(), 4);
    assert_tensor(sd, "blocks.0.attn.proj.weight", &[2, 3], &[1.0, -2.5, 3.25, 0.0, 1e-8, -7.0]);
    assert_tensor(sd, "half.weight", &[4], &[0.5, -1.0, 65504.0, 2f32.powi(-14)]);
    let big = half::bf16::from_f32(3.0e38).to_f32();
    assert_tensor(sd, "brain.weight", &[2, 2], &[1.0, -0.375, 256.0, big]);
    assert_tensor(sd, "double.bias", &[3, 1], &[0.1f64 as f32, f32::NEG_INFINITY, 2.0]);
    assert_eq!(sd.skipped.get("bn.num_batches_tracked"), Some(&SkippedTensor { dtype: "I64".into(), shape: vec![] }));
    assert_eq!(sd.metadata.get("patch_nums").map(String::as_str), Some("1,2,3,4,5,6,8,10,13,16"));
    assert_eq!(sd.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(sd.metadata.len(), 2);
}

#[test]
fn safetensors_round_trip() {
    let bytes = safetensors_file();
    check_safetensors_contents(&StateDict::from_safetensors_bytes(&bytes).unwrap());
    check_safetensors_contents(&StateDict::from_bytes(&bytes).unwrap());
    let path = scratch("round_trip.safetensors", &bytes);
    check_safetensors_contents(&StateDict::load(&path).unwrap());
    // The extension does not matter: content decides.
    let path = scratch("round_trip_named.pth", &bytes);
    check_safetensors_contents(&StateDict::load(&path).unwrap());
}

#[test]
fn safetensors_header_length_that_looks_like_a_pickle() {
    // A 640-byte header: the file starts 80 02 00 .., like a legacy torch pickle's PROTO 2.
    let mut header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
    header.resize(0x280, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend(f32_storage([1.5, -2.0]));
    assert_eq!(&bytes[..2], &[0x80, 0x02]);
    let path = scratch("pickle_like_length.safetensors", &bytes);
    assert_tensor(&StateDict::load(&path).unwrap(), "w", &[2], &[1.5, -2.0]);
    assert_tensor(&StateDict::from_bytes(&bytes).unwrap(), "w", &[2], &[1.5, -2.0]);
}

#[test]
fn safetensors_rejects_unconvertible_dtypes_by_key() {
    let fp8 = [0x38u8, 0xb8];
    let f32s = le_bytes(&[1.0f32], f32::to_le_bytes);
    let views = vec![
        ("ok.weight", TensorView::new(Dtype::F32, vec![1], &f32s).unwrap()),
        ("quant.weight", TensorView::new(Dtype::F8_E4M3, vec![2], &fp8).unwrap()),
    ];
    let bytes = safetensors::serialize(views, None).unwrap();
    match StateDict::from_safetensors_bytes(&bytes) {
        Err(Error::WeightsDType { key, dtype, .. }) => {
            assert_eq!(key, "quant.weight");
            assert_eq!(dtype, "F8_E4M3");
        }
        other => panic!("expected WeightsDType, got {other:?}"),
    }
    let path = scratch("fp8.safetensors", &bytes);
    let msg = StateDict::load(&path).unwrap_err().to_string();
    assert!(msg.contains("quant.weight") && msg.contains("F8_E4M3") && msg.contains("fp8.safetensors"), "{msg}");
}

#[test]
fn safetensors_truncated_or_corrupt_never_loads() {
    let bytes = safetensors_file();
    for len in 0..bytes.len() {
        assert!(StateDict::from_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes loaded");
        assert!(StateDict::from_safetensors_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes loaded");
    }
    for len in (0..bytes.len()).step_by(37) {
        let path = scratch("truncated.safetensors", &bytes[..len]);
        assert_file_error(StateDict::load(&path), &path);
    }
    // A header length far beyond the file, and one beyond the format's limit.
    for header_len in [u64::MAX, 1 << 40, bytes.len() as u64] {
        let mut bad = bytes.clone();
        bad[..8].copy_from_slice(&header_len.to_le_bytes());
        assert!(StateDict::from_safetensors_bytes(&bad).is_err(), "header length {header_len}");
    }
    // Extra bytes after the data are not a valid file either.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0; 16]);
    assert!(StateDict::from_safetensors_bytes(&padded).is_err());
    // Any single corrupted byte: Ok or Err, never a panic.
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0xa5;
        let _ = StateDict::from_bytes(&bad);
    }
}

// ------------------------------------------------------------------------------------------------- .pth

fn check_fixture_contents(sd: &StateDict) {
    assert_eq!(sd.len(), 8, "keys {:?}", sd.keys().collect::<Vec<_>>());
    assert_tensor(sd, "layer.weight", &[2, 3], &[-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
    assert_tensor(sd, "layer.tail", &[2], &[1.0, 1.5]);
    assert_tensor(sd, "layer.bias", &[2], &[0.25, -0.25]);
    // Stored as the transpose of [[1, 2, 3], [4, 5, 6]] with stride (1, 3).
    assert_tensor(sd, "proj.weight", &[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_tensor(sd, "embed.weight", &[2, 2], &[0.5, -2.0, 3.140625, 2f32.powi(-10)]);
    assert_tensor(sd, "norm.scale", &[3], &[1.0, -0.375, 256.0]);
    assert_tensor(sd, "temperature", &[], &[0.125]);
    assert_tensor(sd, "bn.running_mean", &[2], &[0.1f64 as f32, 0.2f64 as f32]);
    assert_eq!(sd.skipped.len(), 1);
    assert_eq!(sd.skipped.get("bn.num_batches_tracked"), Some(&SkippedTensor { dtype: "I64".into(), shape: vec![] }));
    assert!(sd.metadata.is_empty());
    // Skipped buffers are invisible to check.
    sd.check("bn.", &[("running_mean", vec![2], true)]).unwrap();
}

#[test]
fn pth_fixture_loads_exactly() {
    check_fixture_contents(&StateDict::load(FIXTURE).unwrap());
    let bytes = fixture_bytes();
    assert!(bytes.len() < 4096, "the fixture should stay small");
    check_fixture_contents(&StateDict::from_pth_bytes(&bytes).unwrap());
    check_fixture_contents(&StateDict::from_bytes(&bytes).unwrap());
}

#[test]
fn pth_truncated_files_fail_naming_the_file() {
    let bytes = fixture_bytes();
    for len in 0..bytes.len() {
        assert!(StateDict::from_pth_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes loaded");
        assert!(StateDict::from_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes loaded");
    }
    for len in (0..bytes.len()).step_by(29).chain([bytes.len() - 1]) {
        let path = scratch(&format!("truncated_{len}.pth"), &bytes[..len]);
        assert_file_error(StateDict::load(&path), &path);
        std::fs::remove_file(&path).unwrap();
    }
}

/// The bytes of `name` inside the fixture's archive and where they start.
fn record_span(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    let file = archive.by_name(name).unwrap();
    let start = file.data_start().unwrap() as usize;
    start..start + file.size() as usize
}

#[test]
fn pth_corrupt_bytes_fail_and_never_panic() {
    let bytes = fixture_bytes();
    let pkl = record_span(&bytes, "archive/data.pkl");
    let storage = record_span(&bytes, "archive/data/2");
    let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    let eocd = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    // data.pkl bytes (opcodes, lengths, strings), storage bytes (caught by the CRC), directory structure.
    let targets = [
        pkl.start,
        pkl.start + 1,
        pkl.start + 40,
        pkl.start + pkl.len() / 2,
        pkl.end - 1,
        storage.start,
        storage.end - 1,
        central,
        central + 20,
        eocd,
        eocd + 16,
    ];
    for at in targets {
        let mut bad = bytes.clone();
        bad[at] ^= 0xff;
        let path = scratch(&format!("corrupt_{at}.pth"), &bad);
        let msg = assert_file_error(StateDict::load(&path), &path);
        assert!(!msg.is_empty());
        std::fs::remove_file(&path).unwrap();
    }
    // Every single-byte corruption anywhere: Ok (bytes nobody reads, such as alignment padding) or Err,
    // never a panic.
    for at in 0..bytes.len() {
        for flip in [0xffu8, 0x01, 0x80] {
            let mut bad = bytes.clone();
            bad[at] ^= flip;
            let _ = StateDict::from_pth_bytes(&bad);
        }
    }
}

#[test]
fn garbage_and_foreign_files_fail_naming_the_file() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut garbage = vec![0u8; 8192];
    for b in &mut garbage {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let mut zip_like = b"PK\x03\x04".to_vec();
    zip_like.extend_from_slice(&garbage[..4000]);
    let mut safetensors_like = 200u64.to_le_bytes().to_vec();
    safetensors_like.push(b'{');
    safetensors_like.extend_from_slice(&garbage[..4000]);
    let legacy = [0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let cases: [(&str, &[u8]); 6] = [
        ("garbage.bin", &garbage),
        ("empty.pth", &[]),
        ("zip_like.pth", &zip_like),
        ("safetensors_like.safetensors", &safetensors_like),
        ("legacy.pth", &legacy),
        ("text.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n"),
    ];
    for (name, bytes) in cases {
        let path = scratch(name, bytes);
        let msg = assert_file_error(StateDict::load(&path), &path);
        if name == "legacy.pth" {
            assert!(msg.contains("legacy"), "{msg}");
        }
        assert!(matches!(StateDict::load(&path), Err(Error::WeightsFile { .. })));
        assert!(StateDict::from_bytes(bytes).is_err());
        assert!(StateDict::from_pth_bytes(bytes).is_err());
        assert!(StateDict::from_safetensors_bytes(bytes).is_err());
    }
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weights_tests/does_not_exist.pth");
    assert_file_error(StateDict::load(&missing), &missing);
}

// ------------------------------------------------------------------- hand-made pickles in a torch archive

use scalewise_support::torch_file::{self as p, f32_storage, torch_archive};

#[test]
fn pth_strided_views_parameters_and_skipped_kinds() {
    // A (2, 3, 4) tensor of 0..24 permuted to (4, 2, 3): stride (1, 12, 4).
    let permuted = p::tensor("FloatStorage", "0", 24, 0, &[4, 2, 3], &[1, 12, 4]);
    // An expanded scalar: stride 0.
    let expanded = p::tensor("FloatStorage", "1", 1, 0, &[3, 2], &[0, 0]);
    // An nn.Parameter around a slice with an offset.
    let mut parameter = p::global("torch._utils", "_rebuild_parameter");
    parameter.extend_from_slice(&p::tuple(&[
        p::tensor("FloatStorage", "0", 24, 5, &[2, 2], &[4, 1]),
        vec![0x88],
        p::ordered_dict(),
    ]));
    parameter.push(b'R');
    let mask = p::tensor("BoolStorage", "2", 4, 0, &[2, 2], &[2, 1]);
    let extra = p::int(42);
    let pkl = p::dict(&[
        ("permuted", permuted),
        ("expanded", expanded),
        ("param", parameter),
        ("mask", mask),
        ("_extra_state", extra),
    ]);
    let archive = torch_archive(
        &pkl,
        &[("0", f32_storage((0..24).map(|i| i as f32))), ("1", f32_storage([2.5])), ("2", vec![1, 0, 0, 1])],
    );
    let sd = StateDict::from_pth_bytes(&archive).unwrap();
    let mut want = Vec::new();
    for i in 0..4 {
        for j in 0..2 {
            for k in 0..3 {
                want.push((i + 12 * j + 4 * k) as f32);
            }
        }
    }
    assert_tensor(&sd, "permuted", &[4, 2, 3], &want);
    assert_tensor(&sd, "expanded", &[3, 2], &[2.5; 6]);
    assert_tensor(&sd, "param", &[2, 2], &[5.0, 6.0, 9.0, 10.0]);
    assert_eq!(sd.skipped["mask"], SkippedTensor { dtype: "BOOL".into(), shape: vec![2, 2] });
    assert_eq!(sd.skipped["_extra_state"].dtype, "object");
    assert_eq!(sd.len(), 3);
    // Streamed from a file, tensor by tensor: the same values, views included.
    let path = scratch("strided.pth", &archive);
    let file = WeightsFile::open(&path, &LoadOptions::default()).unwrap();
    assert_same_contents(&file, &sd);
    assert_eq!(file.skipped, sd.skipped);
}

/// Every tensor of `file`, read one at a time, equals the eagerly loaded `sd`'s.
fn assert_same_contents(file: &WeightsFile, sd: &StateDict) {
    assert_eq!(file.keys().collect::<Vec<_>>(), sd.keys().collect::<Vec<_>>());
    for key in sd.keys() {
        let want = sd.get(key).unwrap();
        assert_eq!(Weights::shape(file, key), Some(want.shape.as_slice()), "{key}");
        assert_eq!(file.read(key).unwrap().as_ref(), want.data.as_slice(), "{key}");
    }
    assert_eq!(Weights::metadata(file), &sd.metadata);
}

#[test]
fn streamed_files_read_what_the_eager_loader_reads() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    for name in ["tiny_state_dict.pth", "var/tiny_var.pth", "var/tiny_vae.pth", "var/golden.safetensors"] {
        let path = Path::new(fixtures).join(name);
        let sd = StateDict::load(&path).unwrap();
        let file = WeightsFile::open(&path, &LoadOptions::default()).unwrap();
        assert_same_contents(&file, &sd);
        assert_eq!(file.read_all().unwrap().keys().count(), sd.len());
    }
    let path = scratch("streamed.safetensors", &safetensors_file());
    assert_same_contents(&WeightsFile::open(&path, &LoadOptions::default()).unwrap(), &StateDict::load(&path).unwrap());
    // The limits apply when the file is opened, before anything is read.
    let tight = LoadOptions { max_bytes: 8, ..Default::default() };
    let err = WeightsFile::open(Path::new(fixtures).join("var/tiny_var.pth"), &tight).err().expect("a tight limit");
    assert!(err.to_string().contains("LoadOptions::max_bytes"), "{err}");
    let bomb = Path::new(fixtures).join("../bad_inputs/stride0_bomb.pth");
    let err = WeightsFile::open(&bomb, &LoadOptions::default()).err().expect("the stride-0 bomb");
    assert!(err.to_string().contains("8 times the file's size"), "{err}");
}

/// (what, data.pkl, storage records, expected text in the error)
type BadCase = (&'static str, Vec<u8>, Vec<(&'static str, Vec<u8>)>, &'static str);

#[test]
fn pth_bad_views_and_types_are_errors() {
    let storage = || vec![("0", f32_storage([1.0, 2.0, 3.0, 4.0]))];
    let cases: Vec<BadCase> = vec![
        ("past the end", p::tensor("FloatStorage", "0", 4, 0, &[5], &[1]), storage(), "reaches past"),
        ("offset past the end", p::tensor("FloatStorage", "0", 4, 3, &[2], &[1]), storage(), "reaches past"),
        ("strided past the end", p::tensor("FloatStorage", "0", 4, 0, &[2, 2], &[3, 1]), storage(), "reaches past"),
        ("huge expansion", p::tensor("FloatStorage", "0", 4, 0, &[1 << 30, 1 << 30], &[0, 0]), storage(), "expand"),
        // Within the file's budget, but more than 4 times its storage (and above the small-view floor).
        ("view expansion", p::tensor("FloatStorage", "0", 4, 0, &[5000], &[0]), storage(), "more than 4 times"),
        ("missing storage", p::tensor("FloatStorage", "9", 4, 0, &[4], &[1]), storage(), "archive/data/9"),
        ("rank mismatch", p::tensor("FloatStorage", "0", 4, 0, &[2, 2], &[1]), storage(), "rank"),
        ("negative stride", p::tensor("FloatStorage", "0", 4, 3, &[2], &[-1]), storage(), "negative"),
    ];
    for (what, tensor, storages, needle) in cases {
        let archive = torch_archive(&p::dict(&[("w", tensor)]), &storages);
        let msg = StateDict::from_pth_bytes(&archive).expect_err(what).to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // Many views, each within its own bound, that together expand a tiny file far beyond its size.
    let views: Vec<(String, Vec<u8>)> =
        (0..300).map(|i| (format!("w{i}"), p::tensor("FloatStorage", "0", 4, 0, &[4096], &[0]))).collect();
    let entries: Vec<(&str, Vec<u8>)> = views.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let archive = torch_archive(&p::dict(&entries), &storage());
    let msg = StateDict::from_pth_bytes(&archive).expect_err("300 expanded views").to_string();
    assert!(msg.contains("8 times the file's size"), "{msg}");
    // The configurable limit applies whatever the file's size.
    let archive = torch_archive(&p::dict(&[("w", p::tensor("FloatStorage", "0", 4, 0, &[4], &[1]))]), &storage());
    let tight = scalewise::weights::LoadOptions { max_bytes: 8, ..Default::default() };
    let msg = StateDict::from_bytes_with(&archive, &tight).expect_err("a limit of 8 bytes").to_string();
    assert!(msg.contains("LoadOptions::max_bytes"), "{msg}");
    let complex = p::tensor("ComplexFloatStorage", "0", 2, 0, &[2], &[1]);
    let archive = torch_archive(&p::dict(&[("c", complex)]), &storage());
    match StateDict::from_pth_bytes(&archive) {
        Err(Error::WeightsDType { key, dtype, .. }) => {
            assert_eq!((key.as_str(), dtype.as_str()), ("c", "ComplexFloatStorage"))
        }
        other => panic!("expected WeightsDType, got {other:?}"),
    }
}

#[test]
fn pth_training_checkpoints_yield_their_state_dict() {
    let bytes = fixture_bytes();
    let mut archive = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
    let mut pkl = Vec::new();
    archive.by_name("archive/data.pkl").unwrap().read_to_end(&mut pkl).unwrap();
    let mut storages = Vec::new();
    for key in 0..8 {
        let mut data = Vec::new();
        archive.by_name(&format!("archive/data/{key}")).unwrap().read_to_end(&mut data).unwrap();
        storages.push((key.to_string(), data));
    }
    let storages: Vec<(&str, Vec<u8>)> = storages.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    // The fixture's pickle without PROTO and STOP: an expression leaving the OrderedDict on the stack.
    assert_eq!((&pkl[..2], pkl[pkl.len() - 1]), (&[0x80u8, 2][..], b'.'));
    let state_dict = pkl[2..pkl.len() - 1].to_vec();

    let mut optimizer = p::global("torch.optim.adamw", "AdamW");
    optimizer.extend_from_slice(b")\x81");
    let wrapped = p::dict(&[("epoch", p::int(3)), ("optimizer", optimizer), ("model", state_dict.clone())]);
    check_fixture_contents(&StateDict::from_pth_bytes(&torch_archive(&wrapped, &storages)).unwrap());

    let mut inner = vec![b'}', b'('];
    inner.extend_from_slice(&p::str("module"));
    inner.extend_from_slice(&state_dict);
    inner.push(b'u');
    let nested = p::dict(&[("args", p::ordered_dict()), ("state_dict", inner)]);
    check_fixture_contents(&StateDict::from_pth_bytes(&torch_archive(&nested, &storages)).unwrap());

    let no_weights = p::dict(&[("epoch", p::int(3)), ("ema", state_dict)]);
    let msg = StateDict::from_pth_bytes(&torch_archive(&no_weights, &storages)).unwrap_err().to_string();
    assert!(msg.contains("no tensors") && msg.contains("\"ema\""), "{msg}");
}

#[test]
fn pth_hostile_pickles_are_errors_not_crashes() {
    let mut deep = vec![0x80, 2, b')'];
    deep.extend(std::iter::repeat_n(0x85u8, 200_000)); // TUPLE1 nested 200k deep
    deep.push(b'.');
    let mut fanout = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..20_000 {
        fanout.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]); // x = (x, x)
    }
    fanout.push(b'.');
    let cyclic = vec![0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.'];
    // One long argument list reused by many calls: work must stay linear in the pickle's length.
    let mut reused_pairs = vec![0x80, 2, b']', b'q', 0, b'('];
    reused_pairs.extend(std::iter::repeat_n([b'N', b'N', 0x86], 50_000).flatten());
    reused_pairs.extend_from_slice(b"eccollections\nOrderedDict\nq\x01");
    reused_pairs.extend(std::iter::repeat_n([b'h', 1, b'h', 0, 0x85, b'R', b'0'], 50_000).flatten());
    reused_pairs.extend_from_slice(b")."); // root: a tuple
    let mut reused_args = vec![0x80, 2, b'('];
    reused_args.extend(std::iter::repeat_n(b'N', 100_000));
    reused_args.extend_from_slice(b"tq\x00cfoo\nbar\nq\x01");
    reused_args.extend(std::iter::repeat_n([b'h', 1, b'h', 0, b'R', b'0'], 100_000).flatten());
    reused_args.extend_from_slice(b")."); // root: a tuple
    let mut huge_string = vec![0x80, 2, b'X'];
    huge_string.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut huge_long = vec![0x80, 2, 0x8b];
    huge_long.extend_from_slice(&i32::MAX.to_le_bytes());
    // 9 MiB of nested empty lists: 64 MiB of them once took 5 GB of the machine's memory.
    let mut nested = vec![0x80, 2];
    nested.extend(std::iter::repeat_n([b']', b'a'], 9 << 19).flatten());
    nested.push(b'.');
    let cases: [(&str, Vec<u8>, &str); 12] = [
        ("nested lists", nested, "bytes of pickle"),
        ("deep", deep, "tuple"),
        ("reused pairs", reused_pairs, "hostile"),
        ("reused args", reused_args, "tuple"),
        ("fanout", fanout, "tuple"),
        ("cyclic", cyclic, "list"),
        ("huge string", huge_string, "bytes"),
        ("huge long", huge_long, "bytes"),
        ("no stop", vec![0x80, 2, b'}'], "STOP"),
        ("unknown opcode", vec![0x80, 2, b'i', b'.'], "opcode 0x69"),
        ("bad memo", vec![0x80, 2, b'h', 7, b'.'], "memo"),
        ("exec attempt", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.".to_vec(), "os.system"),
    ];
    for (what, pkl, needle) in cases {
        let msg = StateDict::from_pth_bytes(&torch_archive(&pkl, &[])).expect_err(what).to_string();
        assert!(msg.contains(needle) && msg.contains("<memory>"), "{what}: {msg}");
    }
}

#[test]
fn pth_compressed_or_torchscript_archives_are_explained() {
    use zip::write::SimpleFileOptions;
    let pkl = p::dict(&[]);
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("model/data.pkl", options).unwrap();
    w.write_all(&pkl).unwrap();
    w.start_file("model/constants.pkl", options).unwrap();
    w.write_all(&pkl).unwrap();
    let script = w.finish().unwrap().into_inner();
    let msg = StateDict::from_pth_bytes(&script).unwrap_err().to_string();
    assert!(msg.contains("TorchScript"), "{msg}");

    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("other/readme.txt", options).unwrap();
    w.write_all(b"hello").unwrap();
    let foreign = w.finish().unwrap().into_inner();
    let msg = StateDict::from_pth_bytes(&foreign).unwrap_err().to_string();
    assert!(msg.contains("data.pkl"), "{msg}");

    // An empty state_dict is a valid (empty) file.
    let sd = StateDict::from_pth_bytes(&torch_archive(&pkl, &[])).unwrap();
    assert!(sd.is_empty() && sd.skipped.is_empty());
}

// ----------------------------------------------------------------------------------------------- check

#[test]
fn check_reports_missing_unexpected_and_misshaped_together() {
    let mut sd = StateDict::new();
    let mut put = |key: &str, shape: &[usize]| {
        sd.insert(key, shape, vec![0.0; shape.iter().product()]).unwrap();
    };
    put("decoder.conv_in.weight", &[64, 32, 3, 3]);
    put("decoder.conv_in.bias", &[64]);
    put("decoder.mid.block_1.norm1.weight", &[64]);
    put("decoder.mid.block_1.norm1.bias", &[64]);
    put("decoder.mid.block_1.conv1.weight", &[64, 64, 1, 1]); // mis-shaped: 3x3 expected
    put("decoder.mid.attn_1.q.weight", &[64, 64, 1, 1]); // unexpected: the model fuses qkv
    put("decoder.norm_out.weight", &[64]);
    put("encoder.conv_in.weight", &[64, 3, 3, 3]); // outside the prefix
    put("quantize.embedding.weight", &[16, 32]);
    let expected = [
        ("conv_in.weight", vec![64, 32, 3, 3], true),
        ("conv_in.bias", vec![64], true),
        ("mid.block_1.norm1.weight", vec![64], true),
        ("mid.block_1.norm1.bias", vec![64], true),
        ("mid.block_1.conv1.weight", vec![64, 64, 3, 3], true),
        ("mid.attn_1.qkv.weight", vec![192, 64, 1, 1], true), // missing
        ("norm_out.weight", vec![64], true),
        ("norm_out.bias", vec![64], true), // missing
        ("conv_out.bias", vec![3], false), // optional and absent: fine
    ];
    let err = sd.check("decoder.", &expected).unwrap_err();
    assert!(matches!(&err, Error::Weights { prefix, .. } if prefix == "decoder."), "{err:?}");
    let msg = common::assert_weights_error(
        err,
        &["decoder.mid.attn_1.qkv.weight", "decoder.norm_out.bias"],
        &["decoder.mid.attn_1.q.weight"],
        &[("decoder.mid.block_1.conv1.weight", &[64, 64, 3, 3], &[64, 64, 1, 1])],
    );
    assert!(!msg.contains("encoder.") && !msg.contains("quantize."), "{msg}");
}

/// A FIFO, a directory and a device are refused at once by name. Opening a FIFO used to block until
/// a writer came (the app's load never finished); the test gives each open ten seconds on a thread.
#[cfg(unix)]
#[test]
fn files_that_are_not_regular_are_refused_without_blocking() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weights_tests");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.pth");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let folder = dir.join("folder.pth");
    std::fs::create_dir_all(&folder).unwrap();
    for (path, want) in
        [(fifo.clone(), "not a regular file"), (folder, "is a directory"), ("/dev/zero".into(), "not a regular file")]
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let opened = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(WeightsFile::open(&opened, &LoadOptions::default()).map(|_| ()).map_err(|e| e.to_string()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("opening {} blocked", path.display()));
        let err = result.expect_err("not a checkpoint");
        assert!(err.contains(want), "{}: {err}", path.display());
    }
    let _ = std::fs::remove_file(&fifo);
}
