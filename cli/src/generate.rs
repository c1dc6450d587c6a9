//! `scalewise generate` and `scalewise bench generate`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use clap::Args;
use scalewise::demo::DemoModel;
use scalewise::error::shown_path;
use scalewise::generate::{GenerateOptions, MAX_BATCH, Pipeline, ScaleStep, Transformer};
use scalewise::image::Image;
use scalewise::nn::ScaleHistory;
use scalewise::output::StagedOutput;
use scalewise::{DType, Device};
use scalewise_cli::bench::{self, BenchTransformer, GenerateBenchConfig};
use scalewise_support::synthetic::{MvarShape, VaeShape, VarShape};

#[derive(Args)]
pub struct GenerateArgs {
    /// Transformer checkpoint, VAR or M-VAR (told apart by its keys): the official var_d*.pth or
    /// M-VAR d*.pth, or safetensors with the same keys.
    #[arg(long, value_name = "FILE", requires = "vae", conflicts_with = "demo")]
    var: Option<PathBuf>,
    /// Multi-scale VQVAE checkpoint: vae_ch160v4096z32.pth, or safetensors with the same keys.
    #[arg(long, value_name = "FILE", requires = "var", conflicts_with = "demo")]
    vae: Option<PathBuf>,
    /// A small demo model built into scalewise: var (the default when no --var/--vae is given; also
    /// plain --demo) or mvar (M-VAR: attention inside each scale, Mamba-2 across scales). Both share
    /// the demo VQVAE and classes.
    #[arg(long, value_name = "MODEL", num_args = 0..=1, default_missing_value = "var", value_parser = parse_demo)]
    demo: Option<DemoModel>,
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
    /// Keep the K most likely tokens (1 = argmax, 0 = off; default min(900, vocabulary)).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling mass in [0, 1] (0 or 1: off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// The official "more smooth" mode (Gumbel-softmax mixtures of codebook vectors).
    #[arg(long)]
    smooth: bool,
    /// Images to generate, at least as many as the classes (which repeat to fill it) [default: one
    /// per class]
    #[arg(long)]
    batch: Option<usize>,
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
    #[command(flatten)]
    weights: super::WeightsArgs,
}

fn parse_demo(name: &str) -> Result<DemoModel, String> {
    name.parse().map_err(|e: scalewise::Error| e.to_string())
}

/// Proof that [`check_args`] passed: every output target of the run was proved writable before
/// the model loads (a file staged there and removed again: see [`probe`]), so that a bad target is
/// refused before any work. Nothing is created while the model runs, so an interrupted run leaves
/// nothing behind; the files are staged, written and renamed into place only once everything is
/// computed, and only when all of them could be written.
pub struct Outputs {
    _checked: (),
}

/// The run's output files with their flags (the `--every-scale` files come with the schedule).
fn output_files(args: &GenerateArgs) -> Vec<(&'static str, &Path)> {
    let mut files = vec![("--out", args.out.as_path())];
    files.extend(args.dump_tokens.as_deref().map(|p| ("--dump-tokens", p)));
    files
}

/// Proves `path` writable as an output of `flag`: stages a file there ([`StagedOutput::create`]
/// checks the target) and removes it again.
fn probe(flag: &str, path: &Path) -> anyhow::Result<()> {
    drop(StagedOutput::create(path).with_context(|| flag.to_string())?);
    Ok(())
}

/// The `--every-scale` folder while its files are written: created by this run when it did not
/// exist, and removed again (when still empty) if writing fails.
struct ScalesFolder<'a> {
    path: &'a Path,
    created: bool,
    committed: bool,
}

impl ScalesFolder<'_> {
    /// Makes the folder, or takes the one found there: a real folder, never a symbolic link (one
    /// planted while the model ran would send the images elsewhere).
    fn open(path: &Path) -> anyhow::Result<ScalesFolder<'_>> {
        let flag = "--every-scale";
        match std::fs::create_dir(path) {
            Ok(()) => Ok(ScalesFolder { path, created: true, committed: false }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => Ok(ScalesFolder { path, created: false, committed: false }),
                _ => anyhow::bail!("{flag} {}: is no longer a folder (it changed during the run)", shown_path(path)),
            },
            Err(e) => Err(e).with_context(|| format!("{flag}: creating the folder {}", shown_path(path))),
        }
    }
}

impl Drop for ScalesFolder<'_> {
    fn drop(&mut self) {
        if !self.committed && self.created {
            let _ = std::fs::remove_dir(self.path);
        }
    }
}

/// Fails early, before the device opens and the model loads, on everything that can be checked
/// without the model: numbers, input files and every output target (staged here).
pub fn check_args(args: &GenerateArgs) -> anyhow::Result<Outputs> {
    ensure!(args.cfg.is_finite() && args.cfg >= 0.0, "--cfg must be a finite number >= 0, got {}", args.cfg);
    ensure!((0.0..=1.0).contains(&args.top_p), "--top-p must be in [0, 1], got {}", args.top_p);
    if let Some(batch) = args.batch {
        ensure!((1..=MAX_BATCH).contains(&batch), "--batch must be between 1 and {MAX_BATCH}, got {batch}");
        ensure!(
            batch >= args.classes.len(),
            "--batch {batch} is fewer than the {} classes given: one image per class at least",
            args.classes.len()
        );
    }
    ensure!(
        args.classes.len() <= MAX_BATCH,
        "--class lists {} classes; a batch holds at most {MAX_BATCH}",
        args.classes.len()
    );
    for (flag, path) in [("--var", &args.var), ("--vae", &args.vae)] {
        if let Some(path) = path {
            check_input_file(flag, path)?;
        }
    }
    // The demo's weights are built in: read with neither limit nor check, so the flags would do nothing.
    if args.var.is_none() {
        ensure!(
            args.weights.max_weights_mib.is_none() && !args.weights.allow_non_finite,
            "--max-weights-mib and --allow-non-finite apply to --var/--vae files, not the built-in demo"
        );
    }
    let targets = output_files(args);
    for (i, (flag, path)) in targets.iter().enumerate() {
        if let Some((other, _)) = targets[..i].iter().find(|(_, p)| same_file(p, path)) {
            anyhow::bail!("{flag} and {other} name the same file {}", shown_path(path));
        }
    }
    check_outputs_spare_inputs(&targets, &inputs(args))?;
    if let Some(folder) = &args.every_scale
        && let Some((flag, _)) = targets.iter().find(|(_, p)| same_file(p, folder))
    {
        anyhow::bail!("--every-scale and {flag} name the same path {}", shown_path(folder));
    }
    for (flag, path) in &targets {
        probe(flag, path)?;
    }
    if let Some(path) = &args.every_scale {
        check_scales_folder(path)?;
    }
    Ok(Outputs { _checked: () })
}

/// An input checkpoint: a readable regular file (a directory, FIFO or device is named as such; a
/// FIFO would otherwise block the loader).
pub fn check_input_file(flag: &str, path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{flag} {}: no such file", shown_path(path))
        }
        Err(e) => anyhow::bail!("{flag} {}: {e}", shown_path(path)),
        Ok(m) if m.is_dir() => anyhow::bail!("{flag} {}: is a directory, not a checkpoint file", shown_path(path)),
        Ok(m) if !m.is_file() => {
            anyhow::bail!("{flag} {}: not a regular file (a FIFO, socket or device)", shown_path(path))
        }
        Ok(_) => std::fs::File::open(path).map(drop).with_context(|| format!("{flag} {}", shown_path(path))),
    }
}

/// The checkpoint files a run reads, with their flags.
fn inputs(args: &GenerateArgs) -> Vec<(&'static str, &Path)> {
    [("--var", &args.var), ("--vae", &args.vae)].into_iter().filter_map(|(f, p)| Some((f, p.as_deref()?))).collect()
}

/// Refuses an output that would replace one of the run's input files (which exist: checked by
/// [`check_input_file`]), whatever path names it (a symbolic link to the input, or the input named
/// through another folder).
pub fn check_outputs_spare_inputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> anyhow::Result<()> {
    for (out_flag, out) in outputs {
        if let Some((in_flag, _)) = inputs.iter().find(|(_, input)| same_existing_file(out, input)) {
            anyhow::bail!("{out_flag} {} would replace the {in_flag} file it reads", shown_path(out));
        }
    }
    Ok(())
}

/// Whether two paths that both exist lead to the same file (symbolic links followed).
pub fn same_existing_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(ma), Ok(mb)) => {
            use std::os::unix::fs::MetadataExt;
            (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y),
        _ => false,
    }
}

/// Whether two output paths name the same file (same folder after resolving it, same name).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()), p.file_name().map(|n| n.to_owned()))
    };
    resolve(a) == resolve(b)
}

/// Checks the `--every-scale` folder: an existing folder, or one that can be made (made and removed
/// again here; it is made for good when the images are written). Its files are checked once the
/// model's schedule is known.
fn check_scales_folder(path: &Path) -> anyhow::Result<()> {
    let flag = "--every-scale";
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            anyhow::bail!("{flag} {}: is a symbolic link; name the folder itself", shown_path(path))
        }
        Ok(_) => anyhow::bail!("{flag} {}: exists and is not a folder", shown_path(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(path).with_context(|| format!("{flag}: creating the folder {}", shown_path(path)))?;
            std::fs::remove_dir(path).with_context(|| format!("{flag}: removing the test folder {}", shown_path(path)))
        }
        Err(e) => anyhow::bail!("{flag} {}: {e}", shown_path(path)),
    }
}

/// The file `--every-scale` writes for scale `index` of side `side`.
fn scale_file(dir: &Path, index: usize, side: usize) -> PathBuf {
    dir.join(format!("scale_{index:02}_{side}x{side}.png"))
}

struct Progress {
    enabled: bool,
    terminal: bool,
    /// Show the Mamba-2 layers' time (M-VAR) apart from the rest of the transformer.
    mamba: bool,
}

impl Progress {
    fn scale(&self, step: &ScaleStep) {
        if !self.enabled {
            return;
        }
        const WIDTH: usize = 20;
        let done = (step.index + 1) * WIDTH / step.scales;
        let t = step.times;
        let mamba = if self.mamba { format!("  mamba {:7.1} ms", t.mamba_ms) } else { String::new() };
        let line = format!(
            "[{}{}] scale {:>2}/{} {:>3}x{:<3} transformer {:7.1} ms{mamba}  sampling {:6.1} ms  accumulate {:6.1} ms",
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

/// `scalewise generate`: arguments and output targets are checked by [`check_args`] (in `main`,
/// before the device opens), then the model loads, the generation runs, and only then are the
/// staged outputs written and renamed into place.
pub fn generate(device: &Device, args: &GenerateArgs, _checked: Outputs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // The pipelines this model used in an earlier run compile on background threads while its
    // weights load (the model and the storage type decide the kernels).
    let workload = match (&args.var, &args.vae) {
        (Some(var), Some(vae)) => Pipeline::workload(var, vae, device.preferred_float()),
        _ => args.demo.unwrap_or_default().workload(device.preferred_float()),
    };
    let prewarm = device.prewarm_pipelines(&workload);
    let pipeline = match (&args.var, &args.vae) {
        (Some(var), Some(vae)) => {
            Pipeline::load_with(device, var, vae, None, &args.weights.options()).context("loading the model")?
        }
        _ => {
            let demo = args.demo.unwrap_or_default();
            scalewise_cli::demo::pipeline(demo, device, None)
                .with_context(|| format!("loading the {} demo model", demo.family()))?
        }
    };
    let load_s = started.elapsed().as_secs_f64();
    let config = pipeline.config();
    let classes = args.classes.iter().map(|c| config.resolve_class(c)).collect::<scalewise::Result<Vec<_>>>()?;
    if let Some(k) = args.top_k {
        ensure!(k <= config.vocab, "--top-k {k} is above this model's vocabulary of {} tokens", config.vocab);
    }
    let batch = args.batch.unwrap_or(classes.len());
    let max_batch = pipeline.max_batch(args.cfg > 0.0);
    ensure!(
        batch <= max_batch,
        "--batch {batch}: this model runs at most {max_batch} images at once on this adapter ({})",
        device.info().adapter.name
    );
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
    let scale_files: Vec<PathBuf> = match &args.every_scale {
        Some(folder) => config.patch_nums.iter().enumerate().map(|(i, &side)| scale_file(folder, i, side)).collect(),
        None => Vec::new(),
    };
    let others = output_files(args);
    for path in &scale_files {
        if let Some((flag, _)) = others.iter().find(|(_, p)| same_file(p, path)) {
            anyhow::bail!("--every-scale would write {} over the {flag} file", shown_path(path));
        }
        check_outputs_spare_inputs(&[("--every-scale", path)], &inputs(args))?;
        // In a folder that exists already (one this run makes is empty until the end).
        if path.parent().is_some_and(Path::is_dir) {
            probe("--every-scale", path)?;
        }
    }
    let mvar = match &pipeline.transformer {
        Transformer::Var(_) => None,
        Transformer::Mvar(model) => Some(model.config.cosine_attention),
    };
    if !args.quiet {
        errln!(
            "model: {}{} depth {} width {} ({}{:.2}M parameters, {} classes), {}px, {} weights, loaded in {load_s:.1} s",
            if args.var.is_none() { "demo " } else { "" },
            pipeline.transformer.kind(),
            config.depth,
            config.width,
            match mvar {
                None => "",
                Some(true) => "cosine attention, ",
                Some(false) => "plain attention, ",
            },
            config.parameters as f64 / 1e6,
            config.num_classes,
            pipeline.image_size(),
            pipeline.transformer.dtype(),
        );
    }
    let progress = Progress { enabled: !args.quiet, terminal: std::io::stderr().is_terminal(), mamba: mvar.is_some() };
    let started = std::time::Instant::now();
    let work_before = device.launch_stats();
    let mut generation = pipeline.start(&options)?;
    device.synchronize()?;
    let startup_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut previews = Vec::new();
    let mut totals = scalewise::generate::StageTimes::default();
    for step in generation.by_ref() {
        let step = step?;
        progress.scale(&step);
        totals += step.times;
        if let Some(images) = step.images {
            previews.push(images);
        }
    }
    device.synchronize()?;
    let scales_done = std::time::Instant::now();
    let images = generation.decode()?;
    let decode_ms = scales_done.elapsed().as_secs_f64() * 1e3;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let scales_ms = wall_ms - startup_ms - decode_ms;

    // Everything is computed: stage and fill every file, check every target again (one that became
    // unwritable during the run fails it with nothing replaced), then rename them into place.
    ensure!(
        previews.len() == scale_files.len(),
        "the generation decoded {} of {} scales",
        previews.len(),
        scale_files.len()
    );
    let mut image = StagedOutput::create(&args.out).context("--out")?;
    image.write_all(&Image::square_grid(&images)?.to_png()?)?;
    let mut tokens = None;
    if let Some(path) = &args.dump_tokens {
        let first: Vec<Vec<u32>> =
            generation.tokens().iter().zip(&config.patch_nums).map(|(ids, side)| ids[..side * side].to_vec()).collect();
        let mut staged = StagedOutput::create(path).context("--dump-tokens")?;
        staged.write_all(serde_json::to_string(&serde_json::json!({ "tokens": first }))?.as_bytes())?;
        tokens = Some(staged);
    }
    let mut folder = args.every_scale.as_deref().map(ScalesFolder::open).transpose()?;
    let mut scales = Vec::with_capacity(scale_files.len());
    for (path, images) in scale_files.iter().zip(&previews) {
        let mut staged = StagedOutput::create(path).context("--every-scale")?;
        staged.write_all(&Image::square_grid(images)?.to_png()?)?;
        scales.push(staged);
    }
    for staged in std::iter::once(&image).chain(&tokens).chain(&scales) {
        staged.check()?;
    }
    image.commit()?;
    for staged in tokens.into_iter().chain(scales) {
        staged.commit()?;
    }
    if let Some(folder) = &mut folder {
        folder.committed = true;
    }
    if !args.quiet {
        // The wall clock in three parts that add up to it; the per-stage GPU times are the scales'
        // own, and pipeline compiles (on first use) fall inside whichever part first needed them.
        let work = device.launch_stats() - work_before;
        let ahead = prewarm.join();
        errln!(
            "generated {batch} image(s) in {wall_ms:.0} ms: start-up {startup_ms:.0} ms, scales {scales_ms:.0} ms (GPU: \
             transformer {:.1} ms{}, sampling {:.1} ms, accumulate {:.1} ms{}), final decode {decode_ms:.0} ms; wrote {}",
            totals.transformer_ms,
            if mvar.is_some() { format!(", mamba {:.1} ms", totals.mamba_ms) } else { String::new() },
            totals.sampling_ms,
            totals.accumulate_ms,
            if totals.decode_ms > 0.0 { format!(", previews {:.1} ms", totals.decode_ms) } else { String::new() },
            shown_path(&args.out)
        );
        errln!(
            "launch path: {} pipelines compiled on first use (inside the times above), {} of {} compiled ahead on \
             background threads in {:.0} ms while the model loaded; {} dispatches, {} submissions, {} drains of the \
             GPU, {} waits with work still queued",
            work.pipelines_compiled - work.prewarmed,
            ahead.compiled,
            ahead.planned,
            ahead.wall_ms,
            work.dispatches,
            work.submits,
            work.drains,
            work.overlapped_waits
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct GenerateBenchArgs {
    /// var or mvar (M-VAR: timed with its Mamba-2 state carried and with the prefix recomputed).
    #[arg(long, default_value = "var", value_parser = ["var", "mvar"])]
    model: String,
    /// Depth of the random model (VAR 16, 20, 24, 30; M-VAR 16, 20, 24, 32: the official shapes;
    /// smaller for software GPUs).
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
        (1..=64).contains(&args.depth) && (32..=1024).contains(&args.vae_ch) && args.vae_ch.is_multiple_of(32),
        "--depth must be in 1..=64 and --vae-ch a multiple of 32 in 32..=1024"
    );
    ensure!(
        (1..=MAX_BATCH).contains(&args.batch) && args.iters >= 1,
        "--batch must be in 1..={MAX_BATCH} and --iters at least 1"
    );
    ensure!(args.cfg.is_finite() && args.cfg >= 0.0, "--cfg must be a finite number >= 0, got {}", args.cfg);
    super::results_target("--json", &args.json)?;
    // f16 on a device without SHADER_F16 fails with a typed error when the weights are uploaded.
    let dtype = args.dtype.unwrap_or(device.preferred_float());
    // clap admits only "var" and "mvar".
    let (transformer, name) = if args.model == "var" {
        (BenchTransformer::Var(VarShape::official(args.depth)), format!("VAR d{}", args.depth))
    } else {
        let shape = MvarShape::official(args.depth);
        let attention = if shape.cosine_attention { "cosine" } else { "plain" };
        (BenchTransformer::Mvar(shape), format!("M-VAR d{}, {attention} attention", args.depth))
    };
    let config = GenerateBenchConfig {
        transformer,
        vae: VaeShape { ch: args.vae_ch, ..VaeShape::official() },
        batch: args.batch,
        cfg: args.cfg,
        dtype,
        warmup: args.warmup,
        iterations: args.iters,
    };
    let r = bench::generate(device, &config)?;
    // The results are written whatever happens to the printing (a closed or full stdout).
    let json = bench::generate_json(device, &config, &r);
    super::report(&args.json, &json, || print_generate_bench(&name, args, dtype, &r))
}

/// `bench generate`'s tables: per scale, per run, the launch path.
fn print_generate_bench(
    name: &str,
    args: &GenerateBenchArgs,
    dtype: scalewise::DType,
    r: &bench::GenerateBenchResult,
) -> anyhow::Result<()> {
    outln!(
        "{name} ({:.0}M parameters) + VQVAE ch {}, {}px, batch {}, cfg {}, {dtype}, {:?}",
        r.parameters as f64 / 1e6,
        args.vae_ch,
        r.image_size,
        args.batch,
        args.cfg,
        r.timing
    )?;
    let first = &r.runs[0];
    match r.runs.as_slice() {
        [carried, recomputed] => {
            outln!(
                "{:>5} {:>8} | {:>29} | {:>29} | {:>11} {:>13}",
                "",
                "",
                "carried state",
                "recomputed prefix",
                "",
                ""
            )?;
            outln!(
                "{:>5} {:>8} | {:>14} {:>14} | {:>14} {:>14} | {:>11} {:>13}",
                "scale",
                "tokens",
                "attn+FFN ms",
                "mamba ms",
                "attn+FFN ms",
                "mamba ms",
                "sampling ms",
                "accumulate ms"
            )?;
            for (i, ((side, c), (_, p))) in carried.scales.iter().zip(&recomputed.scales).enumerate() {
                outln!(
                    "{:>5} {:>8} | {:>14.2} {:>14.2} | {:>14.2} {:>14.2} | {:>11.2} {:>13.2}",
                    i,
                    format!("{side}x{side}"),
                    c.transformer_ms,
                    c.mamba_ms,
                    p.transformer_ms,
                    p.mamba_ms,
                    c.sampling_ms,
                    c.accumulate_ms
                )?;
            }
            for run in [carried, recomputed] {
                let t = run.totals();
                outln!(
                    "{}: GPU attention/FFN/rest {:.1} ms, Mamba-2 {:.1} ms ({} token-steps per layer), sampling {:.1} ms, \
                     accumulate {:.1} ms; end to end median {:.1} ms, min {:.1} ms",
                    match run.history {
                        Some(ScaleHistory::RecomputePrefix) => "recomputed prefix",
                        _ => "carried state",
                    },
                    t.transformer_ms,
                    t.mamba_ms,
                    run.mamba_token_steps.unwrap_or(0),
                    t.sampling_ms,
                    t.accumulate_ms,
                    run.median_ms,
                    run.min_ms
                )?;
            }
            outln!(
                "end to end, recomputed prefix / carried state: {:.2}x (median), {:.2}x (min); Mamba-2 token-steps {} / {} \
                 per layer; decode {:.1} ms; peak GPU memory {:.1} MiB",
                recomputed.median_ms / carried.median_ms,
                recomputed.min_ms / carried.min_ms,
                recomputed.mamba_token_steps.unwrap_or(0),
                carried.mamba_token_steps.unwrap_or(0),
                r.decode_ms,
                r.peak_bytes as f64 / (1 << 20) as f64
            )?;
        }
        _ => {
            outln!(
                "{:>5} {:>8} {:>14} {:>12} {:>14}",
                "scale",
                "tokens",
                "transformer ms",
                "sampling ms",
                "accumulate ms"
            )?;
            for (i, (side, t)) in first.scales.iter().enumerate() {
                outln!(
                    "{:>5} {:>8} {:>14.2} {:>12.2} {:>14.2}",
                    i,
                    format!("{side}x{side}"),
                    t.transformer_ms,
                    t.sampling_ms,
                    t.accumulate_ms
                )?;
            }
            let totals = first.totals();
            outln!(
                "GPU total: transformer {:.1} ms, sampling {:.1} ms, accumulate {:.1} ms, decode {:.1} ms",
                totals.transformer_ms,
                totals.sampling_ms,
                totals.accumulate_ms,
                r.decode_ms
            )?;
            outln!(
                "end to end (unprofiled wall clock): median {:.1} ms, min {:.1} ms per batch; peak GPU memory {:.1} MiB",
                first.median_ms,
                first.min_ms,
                r.peak_bytes as f64 / (1 << 20) as f64
            )?;
        }
    }
    for run in &r.runs {
        let (f, s) = (&run.first_launch, &run.steady_launch);
        outln!(
            "{}first image {:.1} ms ({} pipelines compiled in {:.0} ms), steady state median {:.1} ms; per steady \
             generation: {} dispatches, {} submissions, {} drains of the GPU, {} waits with work still queued",
            match run.history {
                Some(ScaleHistory::RecomputePrefix) => "recomputed prefix: ",
                Some(ScaleHistory::CarryState) => "carried state: ",
                None => "",
            },
            run.first_ms,
            f.pipelines_compiled,
            f.compile_ms,
            run.median_ms,
            s.dispatches,
            s.submits,
            s.drains,
            s.overlapped_waits
        )?;
    }
    Ok(())
}
