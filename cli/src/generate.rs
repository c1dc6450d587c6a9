//! `scalewise generate` and `scalewise bench generate`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use clap::Args;
use scalewise::generate::{GenerateOptions, Pipeline, ScaleStep};
use scalewise::image::Image;
use scalewise::output::write_atomic;
use scalewise::{DType, Device};
use scalewise_cli::bench::{self, GenerateBenchConfig};
use scalewise_support::synthetic::{VaeShape, VarShape};

#[derive(Args)]
pub struct GenerateArgs {
    /// VAR transformer checkpoint: the official var_d*.pth, or safetensors with the same keys.
    #[arg(long, value_name = "FILE", requires = "vae", conflicts_with = "demo")]
    var: Option<PathBuf>,
    /// Multi-scale VQVAE checkpoint: vae_ch160v4096z32.pth, or safetensors with the same keys.
    #[arg(long, value_name = "FILE", requires = "var", conflicts_with = "demo")]
    vae: Option<PathBuf>,
    /// The small demo model built into scalewise (the default when no --var/--vae is given).
    #[arg(long)]
    demo: bool,
    /// Class(es): a number 0..num_classes-1 or a class name (the model's own names, else ImageNet's
    /// for 1000-class models; `scalewise classes` lists them); several (comma separated) make a
    /// batch, repeated to fill --batch.
    #[arg(long = "class", value_name = "N|NAME", value_delimiter = ',', required = true)]
    classes: Vec<String>,
    /// Random seed: the same seed gives the same image on any GPU.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Classifier-free guidance, ramped linearly over the scales (0 turns it off).
    #[arg(long, default_value_t = 4.0, allow_negative_numbers = true)]
    cfg: f32,
    /// Keep the K most likely tokens (1 = argmax; default min(900, vocabulary)).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling mass in [0, 1] (0 or 1: off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// The official "more smooth" mode (Gumbel-softmax mixtures of codebook vectors).
    #[arg(long)]
    smooth: bool,
    /// Images to generate (the classes repeat to fill it).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The final image (a grid when the batch has several).
    #[arg(long, default_value = "out.png", value_name = "FILE")]
    out: PathBuf,
    /// Write {"tokens": [[scale 0], [scale 1], ...]} (row-major ids of the first image) here.
    #[arg(long, value_name = "FILE")]
    dump_tokens: Option<PathBuf>,
    /// Decode after every scale and write scale_XX_PxP.png files into this directory.
    #[arg(long, value_name = "DIR")]
    every_scale: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Fails early, before any GPU work, on what can be checked without the model.
fn check_args(args: &GenerateArgs) -> anyhow::Result<()> {
    ensure!(args.cfg.is_finite() && args.cfg >= 0.0, "--cfg must be a finite number >= 0, got {}", args.cfg);
    ensure!((0.0..=1.0).contains(&args.top_p), "--top-p must be in [0, 1], got {}", args.top_p);
    ensure!(args.batch >= 1, "--batch must be at least 1");
    for (flag, path) in [("--var", &args.var), ("--vae", &args.vae)] {
        if let Some(path) = path {
            ensure!(path.is_file(), "{flag} {}: no such file", path.display());
        }
    }
    let parent = |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf);
    for (flag, path) in [("--out", Some(&args.out)), ("--dump-tokens", args.dump_tokens.as_ref())] {
        if let Some(dir) = path.and_then(|p| parent(p)) {
            ensure!(dir.is_dir(), "{flag}: the directory {} does not exist", dir.display());
        }
    }
    if let Some(dir) = &args.every_scale {
        ensure!(!dir.is_file(), "--every-scale {} is a file, not a directory", dir.display());
    }
    Ok(())
}

struct Progress {
    enabled: bool,
    terminal: bool,
}

impl Progress {
    fn scale(&self, step: &ScaleStep) {
        if !self.enabled {
            return;
        }
        const WIDTH: usize = 20;
        let done = (step.index + 1) * WIDTH / step.scales;
        let t = step.times;
        let line = format!(
            "[{}{}] scale {:>2}/{} {:>3}x{:<3} transformer {:7.1} ms  sampling {:6.1} ms  accumulate {:6.1} ms",
            "#".repeat(done),
            " ".repeat(WIDTH - done),
            step.index + 1,
            step.scales,
            step.side,
            step.side,
            t.transformer_ms,
            t.sampling_ms,
            t.accumulate_ms,
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}");
            if step.index + 1 == step.scales {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

pub fn generate(device: &Device, args: &GenerateArgs) -> anyhow::Result<()> {
    check_args(args)?;
    let started = std::time::Instant::now();
    let pipeline = match (&args.var, &args.vae) {
        (Some(var), Some(vae)) => Pipeline::load(device, var, vae, None).context("loading the model")?,
        _ => scalewise::demo::pipeline(device, None).context("loading the demo model")?,
    };
    let load_s = started.elapsed().as_secs_f64();
    let config = &pipeline.var.config;
    let classes = args.classes.iter().map(|c| config.resolve_class(c)).collect::<scalewise::Result<Vec<_>>>()?;
    let batch = args.batch.max(classes.len());
    let options = GenerateOptions {
        labels: (0..batch).map(|i| classes[i % classes.len()]).collect(),
        seed: args.seed,
        cfg: args.cfg,
        top_k: args.top_k.unwrap_or(900.min(config.vocab)),
        top_p: args.top_p,
        smooth: args.smooth,
        preview_every_scale: args.every_scale.is_some(),
        ..GenerateOptions::default()
    };
    pipeline.validate(&options)?;
    if !args.quiet {
        eprintln!(
            "model: {}VAR depth {} width {} ({:.2}M parameters, {} classes), {}px, {} weights, loaded in {load_s:.1} s",
            if args.var.is_none() { "demo " } else { "" },
            config.depth,
            config.width,
            config.parameters as f64 / 1e6,
            config.num_classes,
            pipeline.image_size(),
            pipeline.var.dtype,
        );
    }
    let progress = Progress { enabled: !args.quiet, terminal: std::io::stderr().is_terminal() };
    let started = std::time::Instant::now();
    let mut generation = pipeline.start(&options)?;
    let mut previews = Vec::new();
    let mut totals = scalewise::generate::StageTimes::default();
    for step in generation.by_ref() {
        let step = step?;
        progress.scale(&step);
        totals += step.times;
        if let Some(images) = step.images {
            previews.push((step.index, step.side, images));
        }
    }
    let images = generation.decode()?;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;

    // Everything is computed; only now are files written (each atomically).
    Image::square_grid(&images).save_png(&args.out)?;
    if let Some(path) = &args.dump_tokens {
        let first: Vec<Vec<u32>> =
            generation.tokens().iter().zip(&config.patch_nums).map(|(ids, side)| ids[..side * side].to_vec()).collect();
        let json = serde_json::json!({ "tokens": first });
        write_atomic(path, serde_json::to_string(&json)?.as_bytes())?;
    }
    if let Some(dir) = &args.every_scale {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (index, side, images) in &previews {
            let path = dir.join(format!("scale_{index:02}_{side}x{side}.png"));
            Image::square_grid(images).save_png(&path)?;
        }
    }
    if !args.quiet {
        eprintln!(
            "generated {batch} image(s) in {wall_ms:.0} ms (GPU: transformer {:.1} ms, sampling {:.1} ms, accumulate {:.1} \
             ms{}); wrote {}",
            totals.transformer_ms,
            totals.sampling_ms,
            totals.accumulate_ms,
            if totals.decode_ms > 0.0 { format!(", previews {:.1} ms", totals.decode_ms) } else { String::new() },
            args.out.display()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct GenerateBenchArgs {
    /// VAR depth of the random model (16, 20, 24, 30: the official shapes; smaller for software GPUs).
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// VQVAE base width (160 official).
    #[arg(long, default_value_t = 160)]
    vae_ch: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 1.5)]
    cfg: f32,
    /// f16 or f32 weights (default f16 where the device has SHADER_F16).
    #[arg(long, value_parser = super::parse_dtype)]
    dtype: Option<DType>,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value = "bench-results/generate.json")]
    json: PathBuf,
}

pub fn bench_generate(device: &Device, args: &GenerateBenchArgs) -> anyhow::Result<()> {
    ensure!(
        args.depth >= 1 && args.vae_ch >= 32 && args.vae_ch.is_multiple_of(32),
        "--depth >= 1, --vae-ch a multiple of 32"
    );
    ensure!(args.batch >= 1 && args.iters >= 1, "--batch and --iters must be at least 1");
    // f16 on a device without SHADER_F16 fails with a typed error when the weights are uploaded.
    let dtype = args.dtype.unwrap_or(device.preferred_float());
    let config = GenerateBenchConfig {
        var: VarShape::official(args.depth),
        vae: VaeShape { ch: args.vae_ch, ..VaeShape::official() },
        batch: args.batch,
        cfg: args.cfg,
        dtype,
        warmup: args.warmup,
        iterations: args.iters,
    };
    let r = bench::generate(device, &config)?;
    println!(
        "VAR d{} ({:.0}M parameters) + VQVAE ch {}, {}px, batch {}, cfg {}, {dtype}, {:?}",
        args.depth,
        r.var_parameters as f64 / 1e6,
        args.vae_ch,
        r.image_size,
        args.batch,
        args.cfg,
        r.timing
    );
    println!("{:>5} {:>8} {:>14} {:>12} {:>14}", "scale", "tokens", "transformer ms", "sampling ms", "accumulate ms");
    for (i, (side, t)) in r.scales.iter().enumerate() {
        println!(
            "{:>5} {:>8} {:>14.2} {:>12.2} {:>14.2}",
            i,
            format!("{side}x{side}"),
            t.transformer_ms,
            t.sampling_ms,
            t.accumulate_ms
        );
    }
    let totals = r.totals();
    println!(
        "GPU total: transformer {:.1} ms, sampling {:.1} ms, accumulate {:.1} ms, decode {:.1} ms",
        totals.transformer_ms, totals.sampling_ms, totals.accumulate_ms, r.decode_ms
    );
    println!(
        "end to end (unprofiled wall clock): median {:.1} ms, min {:.1} ms per batch; peak GPU memory {:.1} MiB",
        r.median_ms,
        r.min_ms,
        r.peak_bytes as f64 / (1 << 20) as f64
    );
    super::write_atomically(&args.json, &serde_json::to_string_pretty(&bench::generate_json(device, &config, &r))?)?;
    println!("wrote {}", args.json.display());
    Ok(())
}
