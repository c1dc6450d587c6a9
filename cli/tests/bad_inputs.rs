//! The bad-input corpus (RELIABILITY.md): one test per class of fault a hostile or careless user can
//! produce, each asserting a non-zero exit, one clear message, no panic, and that the files already
//! in place (the user's `out.png`, device nodes, symlink targets) are untouched, with no temporary
//! file left behind. The hand-made hostile files live in `tests/bad_inputs/` (see its README); the
//! rest are derived at run time from the tiny fixtures, so the corpus stays small.
#![cfg(unix)]

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scalewise::DType;
use scalewise::weights::StateDict;
use scalewise_support::torch_file::{self as p, f32_storage, torch_archive};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/var").join(name)
}

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/bad_inputs").join(name)
}

/// A fresh folder holding the user's existing `out.png`.
struct Scratch {
    dir: PathBuf,
}

const USERS_FILE: &[u8] = b"the user's file";

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("scalewise-bad-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("out.png"), USERS_FILE).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn out(&self) -> String {
        self.path("out.png").to_str().unwrap().to_string()
    }

    /// The user's file is as it was and nothing but `expected` files lie in the folder.
    fn assert_untouched(&self, case: &str, expected: &[&str]) {
        assert_eq!(std::fs::read(self.path("out.png")).unwrap(), USERS_FILE, "{case}: out.png was touched");
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).chain(["out.png".to_string()]).collect();
        want.sort();
        assert_eq!(names, want, "{case}: files left in the folder");
    }

    fn save(&self, name: &str, sd: &StateDict) -> PathBuf {
        let path = self.path(name);
        sd.save_safetensors(&path, DType::F32).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalewise")).args(args).output().expect("the scalewise binary runs")
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs and checks a failing case: exit code 1, `needle` in a single-line message, no panic.
fn fails(case: &str, args: &[&str], needle: &str) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{case}: exit status {:?}, stderr: {err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{case}: panic: {err}");
    assert!(err.contains(needle), "{case}: expected {needle:?} in: {err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error_lines.len(), 1, "{case}: one error line expected: {err}");
    assert!(err.len() < 2000, "{case}: a {}-byte message", err.len());
    err
}

fn generate_args<'a>(var: &'a str, vae: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["generate", "--var", var, "--vae", vae, "--quiet"];
    args.extend_from_slice(extra);
    args
}

fn tiny() -> (String, String) {
    (fixture("tiny_var.pth").to_str().unwrap().into(), fixture("tiny_vae.pth").to_str().unwrap().into())
}

#[test]
fn formerly_panicking_inputs_are_errors() {
    let s = Scratch::new("panics");
    let (var, vae) = tiny();
    let mut sd = StateDict::load(fixture("tiny_vae.pth")).unwrap();
    sd.remove("decoder.up.0.block.0.conv1.weight");
    sd.insert("decoder.up.0.block.0.conv1.weight", &[], vec![1.0]).unwrap();
    let zero_d = s.save("zero_d_vae.safetensors", &sd);
    let out = s.out();
    fails(
        "0-d decoder conv",
        &generate_args(&var, path_str(&zero_d), &["--class", "1", "--out", &out]),
        "expected a 4-dimensional conv weight",
    );
    for batch in ["2305843009213693952", "1000000000", "10000000"] {
        fails(
            &format!("--batch {batch}"),
            &generate_args(&var, &vae, &["--class", "1", "--batch", batch, "--out", &out]),
            "--batch must be between 1 and 4096",
        );
    }
    // Three classes in a batch of two made three images without a word.
    fails(
        "--batch below the classes",
        &generate_args(&var, &vae, &["--class", "1,2,3", "--batch", "2", "--out", &out]),
        "fewer than the 3 classes",
    );
    s.assert_untouched("panics", &["zero_d_vae.safetensors"]);
}

#[test]
fn memory_bombs_are_refused_before_allocating() {
    let s = Scratch::new("bombs");
    let (var, vae) = tiny();
    let out = s.out();
    // The committed 10 KB file whose 64 tensors all view one 4-byte storage with stride 0 (16 GiB if
    // materialised), and one whose views each stay small but add up far beyond the file.
    for (file, needle) in
        [("stride0_bomb.pth", "8 times the file's size"), ("many_views.pth", "8 times the file's size")]
    {
        let bomb = corpus(file);
        fails(file, &generate_args(path_str(&bomb), &vae, &["--class", "1", "--out", &out]), needle);
        let converted = s.path("converted.safetensors");
        fails(&format!("convert {file}"), &["convert", path_str(&bomb), path_str(&converted)], needle);
        fails(&format!("classes {file}"), &["classes", "--var", path_str(&bomb)], needle);
    }
    // The configurable limit.
    fails(
        "--max-weights-mib 0",
        &generate_args(&var, &vae, &["--class", "1", "--max-weights-mib", "0", "--out", &out]),
        "raise the limit",
    );
    // The demo's weights are built in: the limit would silently do nothing.
    fails(
        "--max-weights-mib with the demo",
        &["generate", "--demo", "--class", "1", "--max-weights-mib", "3", "--out", &out],
        "not the built-in demo",
    );
    fails(
        "bench scan 2^32 tokens",
        &["bench", "scan", "--shapes", "1x1x1x4294967296", "--json", path_str(&s.path("scan.json"))],
        "above this adapter's",
    );
    fails(
        "bench matmul 2^20",
        &["bench", "matmul", "--sizes", "1048576", "--json", path_str(&s.path("mm.json"))],
        "above this adapter's",
    );
    fails(
        "bench peaks 2^20 x 256 FMA threads",
        &["bench", "peaks", "--fma-workgroups", "1048576", "--json", path_str(&s.path("peaks.json"))],
        "over the binding limit",
    );
    s.assert_untouched("bombs", &[]);
}

#[test]
fn output_targets_are_checked_before_the_model_loads() {
    let s = Scratch::new("outputs");
    let (var, vae) = tiny();
    let out = s.out();
    // A planted symlink at the output: its target is never written.
    let victim = s.path("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let link = s.path("link.png");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    fails("symlink --out", &generate_args(&var, &vae, &["--class", "1", "--out", path_str(&link)]), "symbolic link");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // A device node (as root, the old code replaced /dev/null with a PNG).
    fails("device --out", &generate_args(&var, &vae, &["--class", "1", "--out", "/dev/null"]), "not a regular file");
    fails(
        "device --dump-tokens",
        &generate_args(&var, &vae, &["--class", "1", "--out", &out, "--dump-tokens", "/dev/null"]),
        "not a regular file",
    );
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "/dev/null was replaced");
    // A directory, a missing folder, a read-only file.
    let folder = s.path("folder");
    std::fs::create_dir(&folder).unwrap();
    fails(
        "directory --out",
        &generate_args(&var, &vae, &["--class", "1", "--out", path_str(&folder)]),
        "is a directory",
    );
    let nowhere = s.path("missing/out.png");
    fails(
        "missing folder",
        &generate_args(&var, &vae, &["--class", "1", "--out", path_str(&nowhere)]),
        "does not exist",
    );
    let readonly = s.path("readonly.png");
    std::fs::write(&readonly, b"keep").unwrap();
    let mut perms = std::fs::metadata(&readonly).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&readonly, perms).unwrap();
    fails("read-only --out", &generate_args(&var, &vae, &["--class", "1", "--out", path_str(&readonly)]), "read-only");
    // A bad second target leaves the first untouched (it used to be written first).
    fails(
        "bad --dump-tokens",
        &generate_args(&var, &vae, &["--class", "1", "--out", &out, "--dump-tokens", path_str(&folder)]),
        "is a directory",
    );
    // A path ending in a separator names no file: it used to pass the early checks and fail only at
    // its rename, after --out had replaced the user's file.
    let keep = s.path("keep.png");
    std::fs::write(&keep, b"the user's file").unwrap();
    let tokens = format!("{}/", s.path("tokens").display());
    fails(
        "--dump-tokens ends in a separator",
        &generate_args(&var, &vae, &["--class", "1", "--out", path_str(&keep), "--dump-tokens", &tokens]),
        "name a file",
    );
    assert_eq!(std::fs::read(&keep).unwrap(), b"the user's file");
    let file = s.path("victim.txt");
    fails(
        "--every-scale names a file",
        &generate_args(&var, &vae, &["--class", "1", "--out", &out, "--every-scale", path_str(&file)]),
        "not a folder",
    );
    fails(
        "--out and --dump-tokens the same",
        &generate_args(&var, &vae, &["--class", "1", "--out", &out, "--dump-tokens", &out]),
        "name the same file",
    );
    // A scales folder this run would have created is removed again when the run fails.
    let scales = s.path("new-scales");
    fails(
        "--every-scale with a bad class",
        &generate_args(&var, &vae, &["--class", "99", "--out", &out, "--every-scale", path_str(&scales)]),
        "class 99 is outside",
    );
    assert!(!scales.exists(), "the scales folder was left behind");
    // An existing scale file that is a symlink is refused before the generation.
    let existing = s.path("scales");
    std::fs::create_dir(&existing).unwrap();
    std::os::unix::fs::symlink(&victim, existing.join("scale_00_1x1.png")).unwrap();
    fails(
        "symlink in --every-scale",
        &generate_args(&var, &vae, &["--class", "1", "--out", &out, "--every-scale", path_str(&existing)]),
        "symbolic link",
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 1, "temporary files left in the scales folder");
    // Targets are checked before the model loads: with a model file that would fail to load, the bad
    // target is what is reported.
    fails(
        "target before model",
        &generate_args(path_str(&corpus("stride0_bomb.pth")), &vae, &["--class", "1", "--out", path_str(&folder)]),
        "is a directory",
    );
    s.assert_untouched("outputs", &["folder", "keep.png", "link.png", "readonly.png", "scales", "victim.txt"]);
}

#[test]
fn outputs_never_replace_the_inputs_or_each_other() {
    let s = Scratch::new("clashes");
    let (tiny_var, tiny_vae) = tiny();
    // The user's own copies of the checkpoints, one also reached through a symbolic link.
    let var = s.path("var.pth");
    let vae = s.path("vae.pth");
    std::fs::copy(&tiny_var, &var).unwrap();
    std::fs::copy(&tiny_vae, &vae).unwrap();
    let link = s.path("link.pth");
    std::os::unix::fs::symlink(&var, &link).unwrap();
    let (var_s, vae_s, link_s) = (path_str(&var), path_str(&vae), path_str(&link));
    let out = s.out();
    fails("--out is --var", &generate_args(var_s, vae_s, &["--class", "1", "--out", var_s]), "would replace the --var");
    fails(
        "--out is --var through a link",
        &generate_args(link_s, vae_s, &["--class", "1", "--out", var_s]),
        "would replace the --var",
    );
    fails(
        "--dump-tokens is --vae",
        &generate_args(var_s, vae_s, &["--class", "1", "--out", &out, "--dump-tokens", vae_s]),
        "would replace the --vae",
    );
    fails("convert through a link", &["convert", link_s, var_s, "--f16"], "must differ from the input");
    // --every-scale naming the --dump-tokens file: once, the folder was made, the image written over
    // out.png, and only then the tokens' target found to be a folder.
    let same = s.path("same");
    let same_s = path_str(&same);
    fails(
        "--every-scale is --dump-tokens",
        &generate_args(
            var_s,
            vae_s,
            &["--class", "1", "--out", &out, "--dump-tokens", same_s, "--every-scale", same_s],
        ),
        "name the same path",
    );
    // A token dump named like one of the scale files would have been written over by it.
    let scales = s.path("scales");
    std::fs::create_dir(&scales).unwrap();
    let clash = scales.join("scale_00_1x1.png");
    fails(
        "--dump-tokens inside --every-scale",
        &generate_args(
            var_s,
            vae_s,
            &["--class", "1", "--out", &out, "--dump-tokens", path_str(&clash), "--every-scale", path_str(&scales)],
        ),
        "over the --dump-tokens file",
    );
    assert_eq!(std::fs::read_dir(&scales).unwrap().count(), 0, "files left in the scales folder");
    assert_eq!(std::fs::read(&var).unwrap(), std::fs::read(&tiny_var).unwrap(), "the --var file changed");
    assert_eq!(std::fs::read(&vae).unwrap(), std::fs::read(&tiny_vae).unwrap(), "the --vae file changed");
    s.assert_untouched("clashes", &["link.pth", "scales", "vae.pth", "var.pth"]);
}

#[test]
fn inputs_that_are_not_regular_files_are_named() {
    let s = Scratch::new("inputs");
    let (_, vae) = tiny();
    let out = s.out();
    let folder = s.path("a-folder");
    std::fs::create_dir(&folder).unwrap();
    fails(
        "directory --var",
        &generate_args(path_str(&folder), &vae, &["--class", "1", "--out", &out]),
        "is a directory",
    );
    let fifo = s.path("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
    if made {
        fails(
            "FIFO --var",
            &generate_args(path_str(&fifo), &vae, &["--class", "1", "--out", &out]),
            "not a regular file",
        );
    } else {
        let _ = writeln!(std::io::stderr(), "SKIP the FIFO case: mkfifo is not available");
    }
    fails(
        "missing --var",
        &generate_args(path_str(&s.path("nope.pth")), &vae, &["--class", "1", "--out", &out]),
        "no such file",
    );
    let mut expected = vec!["a-folder"];
    if made {
        expected.push("fifo");
    }
    s.assert_untouched("inputs", &expected);
}

#[test]
fn non_finite_weights_are_refused_by_name() {
    let s = Scratch::new("nonfinite");
    let (var, vae) = tiny();
    let out = s.out();
    let mut bad_var = StateDict::load(&var).unwrap();
    let poison = |sd: &mut StateDict, key: &str, value: f32| {
        let t = sd.remove(key).unwrap_or_else(|| panic!("{key} in the fixture"));
        let mut data = t.data;
        let middle = data.len() / 2;
        data[middle] = value;
        sd.insert(key, &t.shape, data).unwrap();
    };
    poison(&mut bad_var, "blocks.1.ffn.fc1.weight", f32::NAN);
    let nan_var = s.save("nan_var.safetensors", &bad_var);
    let mut temperature = StateDict::load(&var).unwrap();
    poison(&mut temperature, "blocks.0.attn.scale_mul_1H11", f32::NAN);
    let nan_temperature = s.save("nan_temperature.safetensors", &temperature);
    let mut bad_vae = StateDict::load(&vae).unwrap();
    poison(&mut bad_vae, "decoder.conv_out.weight", f32::INFINITY);
    let inf_vae = s.save("inf_vae.safetensors", &bad_vae);
    fails(
        "NaN in the VAR",
        &generate_args(path_str(&nan_var), &vae, &["--class", "1", "--out", &out]),
        "blocks.1.ffn.fc1.weight (1 of",
    );
    fails(
        "NaN temperature",
        &generate_args(path_str(&nan_temperature), &vae, &["--class", "1", "--out", &out]),
        "blocks.0.attn.scale_mul_1H11",
    );
    fails(
        "Inf in the VAE",
        &generate_args(&var, path_str(&inf_vae), &["--class", "1", "--out", &out]),
        "decoder.conv_out.weight",
    );
    // convert uses no key, so it checks them all (it copied the NaN into its output once).
    let converted = s.path("converted.safetensors");
    let err = fails("convert a NaN", &["convert", path_str(&nan_var), path_str(&converted)], "fc1.weight (1 of");
    assert!(!err.contains("attn_bias_for_masking"), "VAR's mask of 0 and -inf is not a fault: {err}");
    // A finite value beyond f16's range was stored as an infinity: that tensor now stays f32.
    let mut wide = StateDict::load(&var).unwrap();
    poison(&mut wide, "head.bias", 1e5);
    let wide = s.save("wide.safetensors", &wide);
    let result = run(&["convert", path_str(&wide), path_str(&converted), "--f16"]);
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success() && err.contains("kept in f32") && err.contains("head.bias"), "{err}");
    let half = StateDict::load(&converted).unwrap();
    assert!(half.get("head.bias").unwrap().data.contains(&1e5), "head.bias kept its 1e5");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&converted) * 10 < size(&wide) * 6, "the other tensors are f16: about half the bytes");
    std::fs::remove_file(&converted).unwrap();
    s.assert_untouched(
        "nonfinite",
        &["inf_vae.safetensors", "nan_temperature.safetensors", "nan_var.safetensors", "wide.safetensors"],
    );
    let result = run(&["convert", path_str(&nan_var), path_str(&converted), "--allow-non-finite"]);
    assert!(result.status.success(), "--allow-non-finite converts: {}", String::from_utf8_lossy(&result.stderr));
    std::fs::remove_file(&converted).unwrap();
    // The opt-out loads them; the NaN then reaches the logits, and the generation stops at the first
    // scale without a token (before, a default top-k drew arbitrary tokens from NaN and wrote an
    // image), writing nothing.
    let forced = s.path("forced.png");
    let result = run(&generate_args(
        path_str(&nan_var),
        &vae,
        &["--class", "1", "--allow-non-finite", "--out", path_str(&forced)],
    ));
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert!(err.contains("the logits of scale 0 are not finite"), "{err}");
    assert!(!forced.exists(), "an image was written from NaN logits");
}

#[test]
fn sizes_from_files_use_checked_arithmetic() {
    use scalewise_support::synthetic::{VarShape, var_state_dict};
    let s = Scratch::new("arithmetic");
    let (_, vae) = tiny();
    let out = s.out();
    // A schedule whose squares wrap around to the model's real token count (2^32 squared is 0 mod
    // 2^64): 1 + 2^64 wraps to 1 + 0.
    let shape = VarShape {
        depth: 1,
        width: 32,
        heads: 2,
        num_classes: 10,
        vocab: 64,
        cvae: 4,
        patch_nums: vec![1, 2],
        shared_adaln: false,
    };
    for sides in ["[1, 4294967296]", "[1, 9223372036854775808]"] {
        let mut sd = var_state_dict(&shape, 1).unwrap();
        sd.metadata.insert("patch_nums".into(), sides.into());
        let file = s.save("wrapped.safetensors", &sd);
        fails(
            sides,
            &generate_args(path_str(&file), &vae, &["--class", "1", "--out", &out]),
            "sides must be in 1..=4096",
        );
    }
    // A VQVAE with 70 decoder levels would shift the image size out of range.
    let mut sd = StateDict::load(&vae).unwrap();
    let conv = sd.get("decoder.up.0.block.0.conv1.weight").unwrap().clone();
    for i in 0..70 {
        sd.insert(format!("decoder.up.{i}.block.0.conv1.weight"), &conv.shape, conv.data.clone()).unwrap();
    }
    let deep = s.save("deep_vae.safetensors", &sd);
    let (var, _) = tiny();
    fails("70 decoder levels", &generate_args(&var, path_str(&deep), &["--class", "1", "--out", &out]), "at most 12");
    s.assert_untouched("arithmetic", &["deep_vae.safetensors", "wrapped.safetensors"]);
}

#[test]
fn messages_are_short_escaped_and_name_the_fault() {
    let s = Scratch::new("messages");
    let (var, vae) = tiny();
    let out = s.out();
    // 100k unexpected keys: the error lists a few and counts the rest.
    let mut sd = StateDict::load(&var).unwrap();
    for i in 0..100_000 {
        sd.insert(format!("extra.{i}"), &[1], vec![0.0]).unwrap();
    }
    let noisy = s.save("noisy.safetensors", &sd);
    let err = fails("100k keys", &generate_args(path_str(&noisy), &vae, &["--class", "1", "--out", &out]), "more");
    assert!(err.contains("and 99988 more"), "{err}");
    // Names with terminal escapes and line breaks, as keys and as class names, are printed escaped.
    let mut sd = StateDict::load(&var).unwrap();
    sd.insert("evil\u{1b}[2J\nerror: fake", &[1], vec![0.0]).unwrap();
    let evil = s.save("evil_key.safetensors", &sd);
    let err = fails("escape in a key", &generate_args(path_str(&evil), &vae, &["--class", "1", "--out", &out]), "evil");
    assert!(!err.contains('\u{1b}') && err.lines().count() == 1, "{err:?}");
    let mut sd = StateDict::load(&var).unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("class{i}\u{1b}[31m\nred")).collect();
    sd.metadata.insert("class_names".into(), serde_json::to_string(&names).unwrap());
    let evil_names = s.save("evil_names.safetensors", &sd);
    let listed = run(&["classes", "--var", path_str(&evil_names)]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(!stdout.contains('\u{1b}') && stdout.lines().count() == 10, "{stdout:?}");
    // A wrong-rank tensor says what rank it expected (it used to say "expected [0, 0]").
    let mut sd = StateDict::load(&var).unwrap();
    let t = sd.remove("class_emb.weight").unwrap();
    sd.insert("class_emb.weight", &[1, t.shape[0], t.shape[1]], t.data).unwrap();
    let rank = s.save("rank.safetensors", &sd);
    let err =
        fails("3-d class_emb", &generate_args(path_str(&rank), &vae, &["--class", "1", "--out", &out]), "2 dimensions");
    assert!(!err.contains("[0, 0]"), "{err}");
    // Safetensors header faults name the tensor.
    for (file, needle) in [
        (
            "offsets_mismatch.safetensors",
            "tensor b: data_offsets [4, 12] hold 8 bytes but dtype F32 with shape [3] needs 12",
        ),
        ("overlap.safetensors", "tensor a: its data starts at byte 0 where byte 4 was expected after tensor b"),
        ("bad_dtype.safetensors", "tensor \"a\" has dtype F128"),
    ] {
        fails(file, &generate_args(path_str(&corpus(file)), &vae, &["--class", "1", "--out", &out]), needle);
    }
    s.assert_untouched(
        "messages",
        &["evil_key.safetensors", "evil_names.safetensors", "noisy.safetensors", "rank.safetensors"],
    );
}

#[test]
fn a_headless_machine_gets_no_spurious_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("error"), "stderr of a successful `info`: {err}");
}

/// M-VAR checkpoints go through the same door as VAR's (`--var`): one that mixes VAR and M-VAR
/// blocks, whichever way round, or has no blocks at all, is one line naming the fault, before
/// anything is written; M-VAR given as the VQVAE, and flags outside the M-VAR model's range, too.
#[test]
fn mvar_checkpoints_mixed_with_var_or_without_blocks_are_refused() {
    let s = Scratch::new("mvar");
    let mvar_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mvar/tiny_mvar_cos.pth");
    let mvar = StateDict::load(&mvar_path).unwrap();
    let (var, vae) = tiny();
    let out = s.out();
    // M-VAR without block 1's Mamba-2 layer.
    let mut sd = mvar.clone();
    let block1: Vec<String> = sd.keys().filter(|k| k.starts_with("blocks.1.mamba.")).map(str::to_string).collect();
    for key in &block1 {
        sd.remove(key);
    }
    let half = s.save("half_mvar.safetensors", &sd);
    // VAR with M-VAR's Mamba-2 layer grafted onto block 0.
    let mut sd = StateDict::load(&var).unwrap();
    for key in mvar.keys().filter(|k| k.starts_with("blocks.0.mamba.")) {
        let t = mvar.get(key).unwrap();
        sd.insert(key, &t.shape, t.data.clone()).unwrap();
    }
    let grafted = s.save("grafted_var.safetensors", &sd);
    // Neither: everything but the blocks.
    let mut sd = mvar.clone();
    let blocks: Vec<String> = sd.keys().filter(|k| k.starts_with("blocks.")).map(str::to_string).collect();
    for key in &blocks {
        sd.remove(key);
    }
    let headless = s.save("no_blocks.safetensors", &sd);
    let m = path_str(&mvar_path);
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            "M-VAR missing a Mamba layer",
            generate_args(path_str(&half), &vae, &["--class", "1", "--out", &out]),
            "a mix of VAR and M-VAR blocks: blocks 0 have a Mamba-2 layer (mamba.*) but blocks 1 have none",
        ),
        (
            "VAR with a Mamba layer",
            generate_args(path_str(&grafted), &vae, &["--class", "1", "--out", &out]),
            "a mix of VAR and M-VAR blocks: blocks 0 have a Mamba-2 layer (mamba.*) but blocks 1 have none",
        ),
        (
            "no blocks",
            generate_args(path_str(&headless), &vae, &["--class", "1", "--out", &out]),
            "no transformer blocks",
        ),
        ("M-VAR as the VQVAE", generate_args(m, m, &["--class", "1", "--out", &out]), "pass it as --var"),
        ("class out of range", generate_args(m, &vae, &["--class", "10", "--out", &out]), "class 10 is outside 0..=9"),
        (
            "top-k above the vocabulary",
            generate_args(m, &vae, &["--class", "1", "--top-k", "65", "--out", &out]),
            "--top-k 65 is above this model's vocabulary of 64",
        ),
    ];
    for (case, args, needle) in cases {
        fails(case, &args, needle);
    }
    fails("classes of a mixed checkpoint", &["classes", "--var", path_str(&grafted)], "a mix of VAR and M-VAR blocks");
    s.assert_untouched("mvar", &["grafted_var.safetensors", "half_mvar.safetensors", "no_blocks.safetensors"]);
}

/// Regenerates the hand-made files of `tests/bad_inputs/` (run with `--ignored` after changing them).
#[test]
#[ignore = "writes tests/bad_inputs/; run by hand"]
fn write_corpus() {
    let one = || vec![("0", f32_storage([1.0]))];
    // 64 views of 1024 x 1024 stride-0 elements over one 4-byte storage: 256 MiB each, 16 GiB in all.
    let views: Vec<(String, Vec<u8>)> =
        (0..64).map(|i| (format!("w{i}"), p::tensor("FloatStorage", "0", 1, 0, &[1024, 1024], &[0, 0]))).collect();
    let entries: Vec<(&str, Vec<u8>)> = views.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    std::fs::write(corpus("stride0_bomb.pth"), torch_archive(&p::dict(&entries), &one())).unwrap();
    // 300 views of 4096 elements: each within the per-view floor, 4.9 MB in all from 45 KB.
    let views: Vec<(String, Vec<u8>)> =
        (0..300).map(|i| (format!("v{i}"), p::tensor("FloatStorage", "0", 1, 0, &[4096], &[0]))).collect();
    let entries: Vec<(&str, Vec<u8>)> = views.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    std::fs::write(corpus("many_views.pth"), torch_archive(&p::dict(&entries), &one())).unwrap();
    let safetensors = |header: &str, data: usize| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    };
    let files = [
        (
            "offsets_mismatch.safetensors",
            safetensors(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[3],"data_offsets":[4,12]}}"#,
                12,
            ),
        ),
        (
            "overlap.safetensors",
            safetensors(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                8,
            ),
        ),
        ("bad_dtype.safetensors", safetensors(r#"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#, 16)),
    ];
    for (name, bytes) in files {
        std::fs::write(corpus(name), bytes).unwrap();
    }
}

#[test]
fn refused_benchmarks_name_the_flag_and_create_no_folder() {
    let s = Scratch::new("bench");
    let cases: [(&[&str], i32, &str); 16] = [
        (&["bench", "matmul", "--sizes", "0"], 1, "--sizes"),
        (&["bench", "peaks", "--fma-iters", "0"], 2, "--fma-iters"),
        (&["bench", "matmul", "--sizes", "0", "--json", "new/a/x.json"], 1, "--sizes"),
        (&["bench", "matmul", "--sizes", "8", "--json", "out.png/x.json"], 1, "out.png is not a folder"),
        (&["bench", "matmul", "--sizes", "8", "--peak-gflops", "0"], 2, "not a finite number above 0"),
        (&["bench", "matmul", "--sizes", "8", "--peak-gflops", "NaN"], 2, "not a finite number above 0"),
        (&["bench", "scan", "--copy-gbps", "inf"], 2, "not a finite number above 0"),
        (&["bench", "peaks", "--copy-mib", "0"], 2, "--copy-mib"),
        (&["bench", "attention", "--heads", "0"], 2, "--heads"),
        (&["bench", "soak", "--distinct", "3", "--generations", "4", "--warmup", "0"], 1, "--distinct 3"),
        (&["bench", "load", "--file", "x.bin", "--json", "x.bin"], 1, "--file and --json name the same file"),
        // Grids whose token count wrapped to a small number and surfaced as a misleading kv_len error.
        (&["bench", "attention", "--grids", "4294967296x4294967296"], 2, "more than 4294967295 tokens"),
        (&["bench", "attention", "--grids", "65536x65536"], 2, "more than 4294967295 tokens"),
        (&["bench", "attention", "--grids", "65535x65535", "--text", "200000"], 1, "u32 token count"),
        // A duplicate printed its row twice, the second as a ratio against itself.
        (&["bench", "matmul", "--sizes", "8", "--dtype", "f32,f32"], 1, "--dtype lists f32 twice"),
        // The queries of a KV step were not checked: a terabyte asked of the allocator (an abort).
        (&["bench", "attention", "--kv-steps", "4294967296x1", "--iters", "1", "--warmup", "0"], 1, "the queries"),
    ];
    for (args, code, needle) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_scalewise"))
            .current_dir(&s.dir)
            .args(args)
            .output()
            .expect("the scalewise binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: expected {needle:?} in {err}");
        // Neither the default bench-results/ nor a --json folder is made for a refused run.
        s.assert_untouched(&format!("{args:?}"), &[]);
    }
}

#[test]
fn a_run_killed_while_generating_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader};
    let s = Scratch::new("killed");
    let (tokens, scales) = (s.path("tokens.json"), s.path("scales"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .args(["generate", "--demo", "--class", "1", "--batch", "32", "--out", &s.out()])
        .args(["--dump-tokens", path_str(&tokens), "--every-scale", path_str(&scales)])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the scalewise binary runs");
    // The model line comes once the weights are loaded: the scales, 32 decodes of every scale and the
    // final decode are still to run. Staged outputs used to exist from the start, as empty temporary
    // files and the new scales folder, and a kill left them there.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let loaded = lines.by_ref().map_while(Result::ok).any(|line| line.starts_with("model:"));
    assert!(loaded, "no model line on stderr");
    child.kill().unwrap();
    if child.wait().unwrap().success() {
        // Only a GPU far faster than any today could get here: nothing was interrupted to check.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP a_run_killed_while_generating_leaves_nothing_behind: the run finished before the kill"
        );
        return;
    }
    s.assert_untouched("killed", &[]);
}

#[test]
fn a_checkpoint_write_that_fails_midway_leaves_no_partial_file() {
    // A file-size limit stands in for a full disk: `bench load` writes a multi-GB checkpoint, and a
    // failed write used to leave everything written so far. SIGXFSZ ignored, so the write fails with
    // EFBIG instead of killing the process.
    let s = Scratch::new("partial");
    let exe = env!("CARGO_BIN_EXE_scalewise");
    let out = Command::new("sh")
        .current_dir(&s.dir)
        .args(["-c", "trap '' XFSZ; ulimit -f 20480; exec \"$0\" bench load --model var --depth 16 --file synth.pth --json load.json"])
        .arg(exe)
        .output()
        .expect("sh runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("synth.pth") && err.contains("too large") && !err.contains("panicked"), "{err}");
    s.assert_untouched("a failed checkpoint write", &[]);
}

#[test]
fn a_random_model_larger_than_host_memory_is_refused_before_it_is_drawn() {
    // VAR d64's random weights are 72 GiB of f32; drawing them used to end in the allocator's abort
    // (exit 134) or the OOM killer.
    let available_gib = scalewise_cli::bench::available_host_bytes().map(|bytes| bytes >> 30);
    match available_gib {
        Some(gib) if gib < 70 => {}
        other => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIP a_random_model_larger_than_host_memory: {other:?} GiB available, enough to draw VAR d64"
            );
            return;
        }
    }
    let s = Scratch::new("host-memory");
    let out = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .current_dir(&s.dir)
        .args(["bench", "generate", "--depth", "64", "--json", "bg.json"])
        .output()
        .expect("the scalewise binary runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("GiB of host memory") && err.contains("width 4096"), "{err}");
    s.assert_untouched("VAR d64 on a small host", &[]);
}

/// `scalewise ARGS` in `dir` with its standard output `stdout`.
fn run_in(dir: &Path, args: &[&str], stdout: impl Into<std::process::Stdio>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .current_dir(dir)
        .args(args)
        .stdout(stdout)
        .output()
        .expect("the scalewise binary runs")
}

#[test]
fn a_closed_or_full_standard_output_is_an_error_not_a_panic() {
    let s = Scratch::new("stdout");
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    // A full output: one error line, exit 1 (println! panicked: exit 101).
    let (var, _) = tiny();
    for args in [&["info"][..], &["classes", "--imagenet"], &["convert", &var, "conv.st"]] {
        let out = run_in(&s.dir, args, full());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot write to standard output") && !err.contains("panicked"), "{args:?}: {err}");
    }
    // A closed pipe (`| head -1`): a quiet exit with SIGPIPE's status, and the measurements are
    // still written to --json.
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .current_dir(&s.dir)
        .args(["bench", "matmul", "--sizes", "1,2,3,4", "--iters", "1", "--warmup", "0", "--kernels", "naive"])
        .args(["--json", "m.json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the scalewise binary runs");
    // As `| head -1` does: the first line read (the header, before the measurements), then closed.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    assert!(first.starts_with("matmul on"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(err.is_empty(), "a closed pipe is not an error to report: {err}");
    assert!(s.path("m.json").is_file(), "the results were lost with the standard output");
    // bench generate measured for its whole run and then lost its JSON to the full stdout.
    let args =
        ["bench", "generate", "--depth", "1", "--vae-ch", "32", "--iters", "1", "--warmup", "0", "--json", "g.json"];
    let out = run_in(&s.dir, &args, full());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.path("g.json").is_file(), "bench generate's results were lost with the standard output");
    // A full standard error (`2>&1 | head` closes it the same way) loses the progress, not the run:
    // eprintln! panicked at the first progress line.
    let out = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .current_dir(&s.dir)
        .args(["generate", "--demo", "--class", "red_disc", "--seed", "1", "--out", "g.png"])
        .stdout(std::process::Stdio::null())
        .stderr(full())
        .output()
        .expect("the scalewise binary runs");
    assert_eq!(out.status.code(), Some(0), "a full stderr stopped the generation");
    assert!(s.path("g.png").is_file(), "the image was not written");
    s.assert_untouched("stdout", &["conv.st", "m.json", "g.json", "g.png"]);
}

/// Runs `scalewise ARGS` in `dir`, waits for a file matching `started` to appear there, sends it
/// `signal`; returns the exit status, `None` when the run ended before the signal.
fn interrupted(
    dir: &Path,
    args: &[&str],
    started: impl Fn(&str) -> bool,
    signal: i32,
) -> Option<std::process::ExitStatus> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalewise"))
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the scalewise binary runs");
    let begun = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let _ = writeln!(std::io::stderr(), "SKIP {args:?}: the run ended ({status}) before the signal");
            return None;
        }
        let names = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        if names.into_iter().any(|name| started(&name)) {
            break;
        }
        assert!(begun.elapsed().as_secs() < 60, "{args:?}: nothing appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    Some(child.wait().unwrap())
}

#[test]
fn an_interrupted_run_leaves_no_partial_file() {
    use std::os::unix::process::ExitStatusExt;
    let s = Scratch::new("interrupted");
    // A 256 MiB checkpoint (sparse: zeros), so the conversion is still running when the signal comes.
    let elements: u64 = 64 << 20;
    let header =
        format!("{{\"w\":{{\"dtype\":\"F32\",\"shape\":[{elements}],\"data_offsets\":[0,{}]}}}}", 4 * elements);
    let header = format!("{header:<width$}", width = header.len().next_multiple_of(8));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let big = s.path("big.safetensors");
    std::fs::write(&big, &bytes).unwrap();
    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(bytes.len() as u64 + 4 * elements).unwrap();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // The staged output (`.conv.st.<hex>.tmp`) exists from the start: it used to stay behind.
        let staged = |name: &str| name.starts_with(".conv.st.");
        match interrupted(&s.dir, &["convert", path_str(&big), "conv.st"], staged, signal) {
            Some(status) => assert_eq!(status.signal(), Some(signal), "convert: {status}"),
            None => std::fs::remove_file(s.path("conv.st")).unwrap(),
        }
        s.assert_untouched(&format!("convert, signal {signal}"), &["big.safetensors"]);
    }
    // `bench load`'s synthetic checkpoint (GBs) stayed too, and the next run refused to start.
    let args = ["bench", "load", "--model", "var", "--depth", "16", "--file", "synth.pth", "--json", "l.json"];
    match interrupted(&s.dir, &args, |name| name == "synth.pth", libc::SIGTERM) {
        Some(status) => assert_eq!(status.signal(), Some(libc::SIGTERM), "bench load: {status}"),
        None => std::fs::remove_file(s.path("l.json")).unwrap(),
    }
    s.assert_untouched("bench load, SIGTERM", &["big.safetensors"]);
    // Past `ulimit -f` the write fails with EFBIG (SIGXFSZ ignored) and is reported: the signal
    // killed the process silently and left its partial temporary.
    let (var, _) = tiny();
    let out = Command::new("sh")
        .current_dir(&s.dir)
        .args(["-c", "ulimit -f 8; exec \"$0\" convert \"$1\" o.st", env!("CARGO_BIN_EXE_scalewise"), &var])
        .output()
        .expect("sh runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("o.st") && err.contains("too large"), "{err}");
    s.assert_untouched("ulimit -f", &["big.safetensors"]);
}

#[test]
fn a_file_another_user_owns_in_a_sticky_folder_is_refused_before_the_run() {
    // In a sticky folder (like /tmp) only the file's owner may replace it, whatever its mode: the
    // rename failed at the end, after --out had been replaced. Needs root to set up (a file of
    // another user) and setpriv to run as that other user.
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    if !root || !setpriv {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP a_file_another_user_owns_in_a_sticky_folder: needs root and setpriv (root {root}, setpriv {setpriv})"
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("other-owner");
    let sticky = s.path("shared");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = sticky.join("theirs.json");
    std::fs::write(&theirs, b"root's").unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out_png = sticky.join("new.png");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_scalewise")])
        .args(["generate", "--demo", "--class", "1", "--quiet", "--out", path_str(&out_png)])
        .args(["--dump-tokens", path_str(&theirs)])
        .env("SCALEWISE_CACHE_DIR", "off")
        .output()
        .expect("setpriv runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("theirs.json") && err.contains("is sticky") && !err.contains("model:"), "{err}");
    assert!(!out_png.exists(), "--out was written before the refusal");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"root's");
    assert_eq!(std::fs::read_dir(&sticky).unwrap().count(), 1, "files left in the sticky folder");
}

#[test]
fn paths_in_messages_are_escaped() {
    let s = Scratch::new("escaped-paths");
    let (var, vae) = tiny();
    let escape = "nope\n\u{1b}[31mX";
    let out = s.path(&format!("{escape}/x.png"));
    let title = s.path("v\u{1b}]0;title\u{7}.pth");
    let under_a_file = s.path("out.png").join(escape).join("x.json");
    for (case, args) in [
        ("--out", generate_args(&var, &vae, &["--class", "1", "--out", path_str(&out)])),
        ("--var", generate_args(path_str(&title), &vae, &["--class", "1"])),
        ("convert", vec!["convert", &var, path_str(&out)]),
        ("bench --json", vec!["bench", "matmul", "--sizes", "8", "--json", path_str(&under_a_file)]),
    ] {
        let err = fails(case, &args, "\\u{1b}");
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{7}') && err.trim_end().lines().count() == 1,
            "{case}: {err:?}"
        );
    }
    s.assert_untouched("escaped paths", &[]);
}

#[test]
fn environment_values_that_are_not_utf8_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let junk = std::ffi::OsStr::from_bytes(b"vulk\xffan");
    for name in ["WGPU_BACKEND", "WGPU_ADAPTER_NAME", "SCALEWISE_DISABLE"] {
        let out = Command::new(env!("CARGO_BIN_EXE_scalewise")).arg("info").env(name, junk).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(name) && err.contains("not UTF-8"), "{name}: {err}");
    }
}

/// A damaged entry of the kernel cache (a module truncated by a crash or a full disk, or garbage) is
/// rebuilt and replaced, where it used to fail that kernel in every later run: `info` on the CUDA
/// CPU shim self-checks the tensor-core kernels, whose modules it loads from the cache folder. (The
/// GPU backend's cubins take the same path: a cubin the driver refuses is compiled afresh.)
#[test]
fn damaged_kernel_cache_entries_are_rebuilt() {
    let s = Scratch::new("damaged-kernel-cache");
    let cache = s.path("cache");
    let info = || {
        Command::new(env!("CARGO_BIN_EXE_scalewise"))
            .args(["--backend", "cuda-cpu", "info"])
            .env("SCALEWISE_CACHE_DIR", &cache)
            .output()
            .expect("the scalewise binary runs")
    };
    let first = info();
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    if !first.status.success() && err.contains("not compiled with CUDA support") {
        // `cargo test -p scalewise-cli` alone; the README's test command builds the CUDA backend in.
        eprintln!("SKIP bad_inputs::damaged_kernel_cache_entries_are_rebuilt: {}", err.trim());
        return;
    }
    assert!(first.status.success(), "{err}");
    let report = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(report.contains("passed: f16 matmuls use them"), "{report}");
    let modules: Vec<PathBuf> = std::fs::read_dir(cache.join("cuda-cpu"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "so"))
        .collect();
    assert!(modules.len() >= 2, "{modules:?}");
    for (i, module) in modules.iter().enumerate() {
        let damage: &[u8] = if i % 2 == 0 { b"" } else { b"\x7fELF, but not a shared object" };
        std::fs::write(module, damage).unwrap();
    }
    let second = info();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&second.stdout), report, "the same self-checks pass: {err}");
    for module in &modules {
        let bytes = std::fs::read(module).unwrap();
        assert!(bytes.len() > 1000 && bytes.starts_with(b"\x7fELF"), "{} not rebuilt", module.display());
    }
}
