//! `scalewise generate` end to end on the tiny PyTorch fixtures, VAR and M-VAR: outputs, the greedy
//! parity through the CLI, and bad input (clear error, non-zero exit, no output file touched).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scalewise::DType;
use scalewise::weights::StateDict;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/var").join(name)
}

fn mvar_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mvar").join(name)
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scalewise-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalewise")).args(args).output().expect("the scalewise binary runs")
}

fn generate(var: &Path, vae: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--var", var.to_str().unwrap(), "--vae", vae.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tokens_json(path: &Path) -> Vec<Vec<u32>> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(json["tokens"].clone()).unwrap()
}

#[test]
fn generate_writes_image_tokens_and_every_scale() {
    let dir = scratch("outputs");
    let out = dir.join("out.png");
    let tokens = dir.join("tokens.json");
    let scales = dir.join("scales");
    let result = generate(
        &fixture("tiny_var.pth"),
        &fixture("tiny_vae.pth"),
        &[
            "--class",
            "3",
            "--seed",
            "7",
            "--batch",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--dump-tokens",
            tokens.to_str().unwrap(),
            "--every-scale",
            scales.to_str().unwrap(),
        ],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(stderr(&result).contains("scale  6/6"), "progress on stderr: {}", stderr(&result));
    assert_eq!(&std::fs::read(&out).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let sides = [1, 2, 3, 4, 5, 6];
    let dumped = tokens_json(&tokens);
    assert_eq!(dumped.iter().map(Vec::len).collect::<Vec<_>>(), sides.map(|s| s * s));
    assert!(dumped.iter().flatten().all(|&t| t < 64));
    for (i, side) in sides.iter().enumerate() {
        assert!(scales.join(format!("scale_{i:02}_{side}x{side}.png")).is_file(), "scale {i} image");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn greedy_cli_run_matches_pytorch_tokens() {
    // The golden greedy run: labels [0, 1], cfg 2.5, top-k 1. A batch row's result does not depend on
    // the batch, so class 0 alone gives the first row's tokens.
    let golden = StateDict::load(fixture("golden.safetensors")).unwrap();
    let cfg = golden.metadata["greedy_cfg"].clone();
    let label = golden.get("greedy.labels").unwrap().data[0] as u32;
    let dir = scratch("greedy");
    let tokens = dir.join("tokens.json");
    let result = generate(
        &fixture("tiny_var.pth"),
        &fixture("tiny_vae.pth"),
        &[
            "--no-f16",
            "--quiet",
            "--class",
            &label.to_string(),
            "--cfg",
            &cfg,
            "--top-k",
            "1",
            "--out",
            dir.join("out.png").to_str().unwrap(),
            "--dump-tokens",
            tokens.to_str().unwrap(),
        ],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    for (si, got) in tokens_json(&tokens).iter().enumerate() {
        let want = &golden.get(&format!("greedy.tokens.{si}")).unwrap().data;
        let want: Vec<u32> = want[..got.len()].iter().map(|&v| v as u32).collect();
        assert_eq!(got, &want, "scale {si}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_fails_clearly_without_touching_the_output() {
    let dir = scratch("bad");
    let out = dir.join("out.png");
    std::fs::write(&out, b"the user's file").unwrap();
    let (var, vae) = (fixture("tiny_var.pth"), fixture("tiny_vae.pth"));
    let truncated = dir.join("truncated.pth");
    std::fs::write(&truncated, &std::fs::read(&var).unwrap()[..100_000]).unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 12345678}").unwrap();
    let old = dir.join("pre2024.safetensors");
    let mut sd = StateDict::load(&var).unwrap();
    for i in 0..2 {
        sd.remove(&format!("blocks.{i}.attn.scale_mul_1H11"));
    }
    sd.save_safetensors(&old, DType::F32).unwrap();
    let o = out.to_str().unwrap();
    let cases: Vec<(PathBuf, PathBuf, Vec<&str>, &str)> = vec![
        (vae.clone(), vae.clone(), vec!["--class", "1"], "pass it as --vae"),
        (var.clone(), var.clone(), vec!["--class", "1"], "pass it as --var"),
        (truncated.clone(), vae.clone(), vec!["--class", "1"], "truncated"),
        (corrupt.clone(), vae.clone(), vec!["--class", "1"], "corrupt.safetensors"),
        (old.clone(), vae.clone(), vec!["--class", "1"], "pre-April-2024"),
        (var.clone(), vae.clone(), vec!["--class", "10"], "class 10 is outside 0..=9"),
        (var.clone(), vae.clone(), vec!["--class", "1", "--cfg", "-0.5"], "--cfg must be"),
        (var.clone(), vae.clone(), vec!["--class", "1", "--top-p", "1.5"], "--top-p must be in [0, 1]"),
        (
            var.clone(),
            vae.clone(),
            vec!["--class", "1", "--top-k", "65"],
            "--top-k 65 is above this model's vocabulary of 64",
        ),
        (dir.join("missing.pth"), vae.clone(), vec!["--class", "1"], "no such file"),
    ];
    for (var, vae, mut extra, message) in cases {
        extra.extend(["--out", o]);
        let result = generate(&var, &vae, &extra);
        let err = stderr(&result);
        assert!(!result.status.success(), "{extra:?} should fail");
        assert!(err.contains(message), "{extra:?}: expected {message:?} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"the user's file", "{extra:?} touched the output");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 4, "no temporary files left: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_1000_class_model_takes_imagenet_names() {
    use scalewise_support::synthetic::{tiny_imagenet, vae_state_dict, var_state_dict};
    let dir = scratch("imagenet");
    // The official label space (1000 classes, no names in the file) at a tiny width.
    let (var_shape, vae_shape) = tiny_imagenet();
    let (var, vae) = (dir.join("var.safetensors"), dir.join("vae.safetensors"));
    var_state_dict(&var_shape, 3).unwrap().save_safetensors(&var, DType::F32).unwrap();
    vae_state_dict(&vae_shape, 4).unwrap().save_safetensors(&vae, DType::F32).unwrap();

    // By name in any case, and mixed with a number: the dumped tokens (first image) equal those of
    // the numbers, and a neighbouring class's differ (the label reaches the model).
    let (named, numbered, other) = (dir.join("named.json"), dir.join("numbered.json"), dir.join("other.json"));
    for (classes, tokens) in [("Golden Retriever,0", &named), ("207,0", &numbered), ("208,0", &other)] {
        let out = dir.join("out.png");
        let args = ["--class", classes, "--seed", "5", "--out", out.to_str().unwrap()];
        let result =
            generate(&var, &vae, &[&args[..], &["--quiet", "--dump-tokens", tokens.to_str().unwrap()]].concat());
        assert!(result.status.success(), "{classes}: {}", stderr(&result));
    }
    assert_eq!(tokens_json(&named), tokens_json(&numbered));
    assert_ne!(tokens_json(&named), tokens_json(&other), "class 208 gave class 207's tokens");

    // A partial name fails with the classes it could mean.
    let result = generate(&var, &vae, &["--class", "retriever", "--out", dir.join("x.png").to_str().unwrap()]);
    let err = stderr(&result);
    assert!(!result.status.success());
    assert!(err.contains("did you mean") && err.contains("207 \"golden retriever\""), "{err}");
    assert!(!dir.join("x.png").exists());

    // `scalewise classes` lists them from the file without a GPU, filtered by words.
    let listed = run(&["classes", "--var", var.to_str().unwrap(), "golden"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "207  golden retriever");
    let all = run(&["classes", "--imagenet"]);
    assert!(all.status.success(), "{}", stderr(&all));
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 1000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mvar_checkpoints_take_every_flag() {
    let dir = scratch("mvar-outputs");
    let (out, tokens, scales) = (dir.join("out.png"), dir.join("tokens.json"), dir.join("scales"));
    let run_with = |seed: &str, tokens: &Path, extra: &[&str]| {
        let mut args = vec![
            "--class",
            "3,1",
            "--seed",
            seed,
            "--batch",
            "3",
            "--cfg",
            "2",
            "--top-k",
            "20",
            "--top-p",
            "0.9",
            "--smooth",
            "--out",
            out.to_str().unwrap(),
            "--dump-tokens",
            tokens.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        generate(&mvar_fixture("tiny_mvar_cos.pth"), &fixture("tiny_vae.pth"), &args)
    };
    let result = run_with("7", &tokens, &["--every-scale", scales.to_str().unwrap()]);
    let err = stderr(&result);
    assert!(result.status.success(), "{err}");
    assert!(err.contains("model: M-VAR depth 2 width 64 (cosine attention, "), "the model line: {err}");
    assert!(err.contains("scale  6/6") && err.contains("mamba"), "progress with the Mamba time: {err}");
    assert_eq!(&std::fs::read(&out).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let sides = [1, 2, 3, 4, 5, 6];
    let dumped = tokens_json(&tokens);
    assert_eq!(dumped.iter().map(Vec::len).collect::<Vec<_>>(), sides.map(|s| s * s));
    assert!(dumped.iter().flatten().all(|&t| t < 64));
    for (i, side) in sides.iter().enumerate() {
        assert!(scales.join(format!("scale_{i:02}_{side}x{side}.png")).is_file(), "scale {i} image");
    }
    // The seed reaches the sampler: the same seed repeats the tokens, another changes them.
    let (again, other) = (dir.join("again.json"), dir.join("other.json"));
    assert!(run_with("7", &again, &["--quiet"]).status.success());
    assert!(run_with("8", &other, &["--quiet"]).status.success());
    assert_eq!(tokens_json(&again), dumped);
    assert_ne!(tokens_json(&other), dumped, "seed 8 repeated seed 7's tokens");

    // `scalewise classes` reads an M-VAR checkpoint too (10 classes without names).
    let listed = run(&["classes", "--var", mvar_fixture("tiny_mvar_plain.pth").to_str().unwrap()]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("10 classes have no names"), "{listed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn greedy_mvar_cli_runs_match_pytorch_tokens() {
    // The golden greedy runs of both attention variants: two labels, cfg 2.5, top-k 1; the dump
    // holds the first image's tokens, the first row of each golden scale.
    let golden = StateDict::load(mvar_fixture("golden.safetensors")).unwrap();
    let cfg = golden.metadata["greedy_cfg"].clone();
    let dir = scratch("mvar-greedy");
    for variant in ["cos", "plain"] {
        let labels: Vec<String> = golden
            .get(&format!("{variant}.greedy.labels"))
            .unwrap()
            .data
            .iter()
            .map(|&l| (l as u32).to_string())
            .collect();
        let tokens = dir.join(format!("{variant}.json"));
        let result = generate(
            &mvar_fixture(&format!("tiny_mvar_{variant}.pth")),
            &fixture("tiny_vae.pth"),
            &[
                "--no-f16",
                "--quiet",
                "--class",
                &labels.join(","),
                "--cfg",
                &cfg,
                "--top-k",
                "1",
                "--out",
                dir.join("out.png").to_str().unwrap(),
                "--dump-tokens",
                tokens.to_str().unwrap(),
            ],
        );
        assert!(result.status.success(), "{variant}: {}", stderr(&result));
        let dumped = tokens_json(&tokens);
        assert_eq!(dumped.len(), 6, "{variant}");
        for (si, got) in dumped.iter().enumerate() {
            let want = &golden.get(&format!("{variant}.greedy.tokens.{si}")).unwrap().data;
            assert_eq!(want.len(), 2 * got.len(), "{variant}: scale {si} holds two images");
            let want: Vec<u32> = want[..got.len()].iter().map(|&v| v as u32).collect();
            assert_eq!(got, &want, "{variant}: scale {si}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--demo mvar` runs the built-in M-VAR (`--demo` alone and no model flag, the VAR), by class name,
/// and an unknown demo name is refused before anything is written.
#[test]
fn demo_flag_chooses_the_built_in_var_or_mvar() {
    let dir = scratch("demo-flag");
    let out = dir.join("out.png");
    let tokens = dir.join("tokens.json");
    let demo = |extra: &[&str]| {
        let mut args = vec!["generate", "--class", "red_disc", "--seed", "2", "--out", out.to_str().unwrap()];
        args.extend_from_slice(&["--dump-tokens", tokens.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let result = run(&args);
        assert!(result.status.success(), "{extra:?}: {}", stderr(&result));
        (stderr(&result), tokens_json(&tokens))
    };
    let (mvar_log, mvar_tokens) = demo(&["--demo", "mvar"]);
    assert!(mvar_log.contains("model: demo M-VAR depth 4 width 256 (cosine attention, "), "{mvar_log}");
    assert!(mvar_log.contains("mamba"), "the M-VAR progress shows the Mamba time: {mvar_log}");
    let (var_log, var_tokens) = demo(&["--demo"]);
    assert!(var_log.contains("model: demo VAR depth 4 width 256 ("), "{var_log}");
    let (default_log, default_tokens) = demo(&[]);
    assert!(default_log.contains("model: demo VAR depth "), "{default_log}");
    assert_eq!(default_tokens, var_tokens, "no model flag is the VAR demo");
    assert_ne!(mvar_tokens, var_tokens, "M-VAR and VAR are different models");
    assert_eq!(mvar_tokens.iter().map(Vec::len).sum::<usize>(), 204);

    std::fs::remove_file(&out).unwrap();
    let refused = run(&["generate", "--demo", "mvar2", "--class", "1", "--out", out.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    assert!(stderr(&refused).contains("the built-in ones are var and mvar"), "{}", stderr(&refused));
    assert!(!out.exists(), "nothing written");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pipelines a run compiled are recorded in the cache folder and compiled ahead, on background
/// threads, by the next run of the same model: every pipeline is compiled once, ahead or on first
/// use, and the image is the same. A manifest with junk lines only loses its speed-up.
#[test]
fn a_second_run_compiles_its_pipelines_ahead() {
    let dir = scratch("prewarm");
    let cache = dir.join("cache");
    let run_cached = |out: &str| {
        let out = dir.join(out);
        let result = Command::new(env!("CARGO_BIN_EXE_scalewise"))
            .args(["generate", "--demo", "--class", "2", "--seed", "4", "--out", out.to_str().unwrap()])
            .env("SCALEWISE_CACHE_DIR", &cache)
            .output()
            .expect("the scalewise binary runs");
        let err = stderr(&result);
        assert!(result.status.success(), "{err}");
        let line = err.lines().find(|l| l.starts_with("launch path: ")).unwrap_or_else(|| panic!("{err}")).to_owned();
        let number = |before: &str| -> usize {
            let at = line.find(before).unwrap_or_else(|| panic!("{before:?} in {line}"));
            line[..at].split_whitespace().last().unwrap().parse().unwrap()
        };
        // "N pipelines compiled on first use ..., A of P compiled ahead"
        let first_use = number(" pipelines compiled on first use");
        let ahead = number(" of ");
        let planned: usize = line[line.find(" of ").unwrap() + 4..].split_whitespace().next().unwrap().parse().unwrap();
        (first_use, ahead, planned, std::fs::read(out).unwrap())
    };
    let (compiled, ahead, planned, image) = run_cached("first.png");
    assert!(compiled > 10 && ahead == 0 && planned == 0, "a first run compiles on first use");
    let (first_use, ahead, planned, again) = run_cached("second.png");
    assert_eq!(planned, compiled, "the second run plans what the first compiled");
    assert_eq!(first_use + ahead, compiled, "each pipeline compiled once, ahead or on first use");
    assert!(ahead > 0);
    assert_eq!(again, image);

    let manifest = std::fs::read_dir(cache.join("wgpu"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pipelines"))
        .expect("a manifest in the cache folder");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    // Matmul has no subgroup flavour, so its line is valid for any adapter.
    text.push_str("matmul f32 0 no_such_entry rrrw\nmatmul f99 0 x rw\n\u{1F600} garbage\n");
    std::fs::write(&manifest, text).unwrap();
    let (first_use, ahead, planned, third) = run_cached("third.png");
    assert_eq!(planned, compiled + 1, "the well-formed line with an unknown entry is planned, then fails");
    assert_eq!(first_use + ahead, compiled);
    assert_eq!(third, image);
    let _ = std::fs::remove_dir_all(&dir);
}
